// Strided copy with type conversion: out[offOut + sum(k*os)] = OUT_T(x[offIn + sum(k*is)])
// over every index k of `shape`. One kernel serves contiguous(), permute/transpose, slice,
// concat (copy into an offset view), expand and the f32<->f16 casts.
// The host (runtime/ops/shape.ts copyStrided) drops axes of extent 1 and merges axes that are
// contiguous in both strides, so a cast is one axis and a head permute three or four. A thread
// copies a run of up to RUN elements along the innermost axis (axis 7; the shape is padded on
// the left) and divides its index only over the `rank` axes left: on llvmpipe each integer
// division by a runtime value is a scalar loop over the lanes, and the former thread per element,
// dividing over all 8 axes, spent most of a copy's time there. GPUs take short runs (neighbouring
// threads then read nearby elements); runtime/ops/shape.ts picks RUN.
override RUN: u32 = 1u;

struct Params {
  shape: array<vec4<u32>, 2>,
  is: array<vec4<u32>, 2>,
  os: array<vec4<u32>, 2>,
  n: u32,     // threads: runs per innermost row x rows
  offIn: u32, offOut: u32,
  rank: u32,  // axes 8 - rank .. 7 are in use
  runs: u32,  // runs per innermost row: ceil(shape[7] / RUN)
}

@group(0) @binding(0) var<storage, read> x: array<{{IN_T}}>;
@group(0) @binding(1) var<storage, read_write> out: array<{{OUT_T}}>;
@group(0) @binding(2) var<uniform> p: Params;

#include "common"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = gid.x + gid.y * nwg.x * 256u;
  if (t >= p.n) { return; }
  var r = t / p.runs;
  let e0 = (t - r * p.runs) * RUN;
  let is0 = at8(p.is, 7u);
  let os0 = at8(p.os, 7u);
  var si = p.offIn + e0 * is0;
  var so = p.offOut + e0 * os0;
  for (var d = 6u; d >= 8u - p.rank && d < 8u; d--) {
    let ext = at8(p.shape, d);
    let k = r % ext;
    r = r / ext;
    si += k * at8(p.is, d);
    so += k * at8(p.os, d);
  }
  let count = min(RUN, at8(p.shape, 7u) - e0);
  for (var e = 0u; e < count; e++) {
    out[so] = {{OUT_T}}(x[si]);
    si += is0;
    so += os0;
  }
}
