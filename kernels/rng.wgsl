// Counter-based RNG: Philox4x32-10 (philox_ in common.wgsl).
// Thread t draws one block of 4 words for counter (t, stream lo, stream hi, 0) under key
// (seed lo, seed hi), so results depend only on (seed, stream, index), never on the grid.
// MODE 0: uniform in [a, b); MODE 1: normal with mean a, std b (Box-Muller on word pairs).
override MODE: u32 = 0u;

struct Params { n: u32, off: u32, seedLo: u32, seedHi: u32, streamLo: u32, streamHi: u32, a: f32, b: f32 }

@group(0) @binding(0) var<storage, read_write> out: array<{{T}}>;
@group(0) @binding(1) var<uniform> p: Params;

#include "common"

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = gid.x + gid.y * nwg.x * 64u;
  if (t * 4u >= p.n) { return; }
  let w = philox_(vec4<u32>(t, p.streamLo, p.streamHi, 0u), vec2<u32>(p.seedLo, p.seedHi));
  var v: vec4<f32>;
  if (MODE == 0u) {
    v = p.a + (p.b - p.a) * vec4<f32>(unit_(w.x), unit_(w.y), unit_(w.z), unit_(w.w));
  } else {
    let r1 = sqrt(-2.0 * log(1.0 - unit_(w.x)));  // 1 - u is in (0, 1]
    let r2 = sqrt(-2.0 * log(1.0 - unit_(w.z)));
    let a1 = 6.283185307179586 * unit_(w.y);
    let a2 = 6.283185307179586 * unit_(w.w);
    v = p.a + p.b * vec4<f32>(r1 * cos(a1), r1 * sin(a1), r2 * cos(a2), r2 * sin(a2));
  }
  for (var j = 0u; j < 4u; j++) {
    if (t * 4u + j < p.n) { out[p.off + t * 4u + j] = {{T}}(v[j]); }
  }
}
