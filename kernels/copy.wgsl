// Strided copy with type conversion: out[offOut + sum(k*os)] = OUT_T(x[offIn + sum(k*is)])
// over every index k of `shape`. One kernel serves contiguous(), permute/transpose, slice,
// concat (copy into an offset view), expand and the f32<->f16 casts.
struct Params {
  shape: array<vec4<u32>, 2>,
  is: array<vec4<u32>, 2>,
  os: array<vec4<u32>, 2>,
  n: u32, offIn: u32, offOut: u32,
}

@group(0) @binding(0) var<storage, read> x: array<{{IN_T}}>;
@group(0) @binding(1) var<storage, read_write> out: array<{{OUT_T}}>;
@group(0) @binding(2) var<uniform> p: Params;

#include "common"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= p.n) { return; }
  var r = i;
  var si = p.offIn;
  var so = p.offOut;
  for (var d = 7; d >= 0; d--) {
    let du = u32(d);
    let ext = at8(p.shape, du);
    let k = r % ext;
    r = r / ext;
    si += k * at8(p.is, du);
    so += k * at8(p.os, du);
  }
  out[so] = {{OUT_T}}(x[si]);
}
