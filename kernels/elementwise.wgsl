// Elementwise map over up to three broadcast inputs: out = EXPR(x0, x1, x2).
// Specialised by text: IN0_T..IN2_T / OUT_T storage types, CT the compute type, EXPR.
// Unused inputs are bound to input 0 and never read (NIN). Broadcasting and views are
// strides + element offsets; FAST skips the index arithmetic when all are contiguous. Otherwise
// the host merges axes (runtime/ops/util.ts coalesceAxes) and the index is divided over the
// `rank` axes left only (a division by a runtime value is a scalar loop per lane on llvmpipe).
// EXPR may use `i`, the output element's linear index; a chunk of a tensor past the
// binding limit (FAST only) is bound as its own range and starts at index `base`.
override NIN: u32 = 1u;
override FAST: bool = false;

struct Params {
  shape: array<vec4<u32>, 2>,   // output shape, rank padded to 8 with leading 1s
  s0: array<vec4<u32>, 2>,      // element strides of each input (0 on broadcast axes)
  s1: array<vec4<u32>, 2>,
  s2: array<vec4<u32>, 2>,
  n: u32,
  off0: u32, off1: u32, off2: u32, offOut: u32,
  alpha: f32, beta: f32,
  base: u32,
  rank: u32,  // axes 8 - rank .. 7 are in use
}

@group(0) @binding(0) var<storage, read> in0: array<{{IN0_T}}>;
@group(0) @binding(1) var<storage, read> in1: array<{{IN1_T}}>;
@group(0) @binding(2) var<storage, read> in2: array<{{IN2_T}}>;
@group(0) @binding(3) var<storage, read_write> out: array<{{OUT_T}}>;
@group(0) @binding(4) var<uniform> p: Params;

#include "common"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let li = gid.x + gid.y * nwg.x * 256u;
  if (li >= p.n) { return; }
  let i = p.base + li;
  var i0 = li; var i1 = li; var i2 = li;
  if (!FAST) {
    i0 = 0u; i1 = 0u; i2 = 0u;
    var r = li;
    for (var d = 7u; d >= 8u - p.rank && d < 8u; d--) {
      let ext = at8(p.shape, d);
      let k = r % ext;
      r = r / ext;
      i0 += k * at8(p.s0, d);
      i1 += k * at8(p.s1, d);
      i2 += k * at8(p.s2, d);
    }
  }
  let alpha = p.alpha;
  let beta = p.beta;
  let x0 = {{CT}}(in0[p.off0 + i0]);
  var x1 = {{CT}}(0);
  var x2 = {{CT}}(0);
  if (NIN > 1u) { x1 = {{CT}}(in1[p.off1 + i1]); }
  if (NIN > 2u) { x2 = {{CT}}(in2[p.off2 + i2]); }
  out[p.offOut + li] = {{OUT_T}}({{EXPR}});
}
