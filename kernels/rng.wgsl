// Counter-based RNG: Philox4x32-10 (Salmon et al. 2011), as cuRAND and PyTorch use it.
// Thread t draws one block of 4 words for counter (t, stream lo, stream hi, 0) under key
// (seed lo, seed hi), so results depend only on (seed, stream, index), never on the grid.
// MODE 0: uniform in [a, b); MODE 1: normal with mean a, std b (Box-Muller on word pairs).
override MODE: u32 = 0u;

struct Params { n: u32, off: u32, seedLo: u32, seedHi: u32, streamLo: u32, streamHi: u32, a: f32, b: f32 }

@group(0) @binding(0) var<storage, read_write> out: array<{{T}}>;
@group(0) @binding(1) var<uniform> p: Params;

fn mulhilo(a: u32, b: u32) -> vec2<u32> {
  // 32x32 -> 64-bit product from 16-bit halves (WGSL has no u64)
  let a0 = a & 0xffffu; let a1 = a >> 16u;
  let b0 = b & 0xffffu; let b1 = b >> 16u;
  let lo0 = a0 * b0;
  let mid1 = a1 * b0;
  let mid2 = a0 * b1;
  let hi = a1 * b1;
  let mid = (lo0 >> 16u) + (mid1 & 0xffffu) + (mid2 & 0xffffu);
  let lo = (lo0 & 0xffffu) | (mid << 16u);
  let h = hi + (mid1 >> 16u) + (mid2 >> 16u) + (mid >> 16u);
  return vec2<u32>(h, lo);
}

fn philox(c0: vec4<u32>, k0: vec2<u32>) -> vec4<u32> {
  var c = c0;
  var k = k0;
  for (var r = 0; r < 10; r++) {
    let p0 = mulhilo(0xD2511F53u, c.x);
    let p1 = mulhilo(0xCD9E8D57u, c.z);
    c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
  }
  return c;
}

fn unit(w: u32) -> f32 { return f32(w >> 8u) * (1.0 / 16777216.0); }  // [0, 1), 24 bits

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = gid.x + gid.y * nwg.x * 64u;
  if (t * 4u >= p.n) { return; }
  let w = philox(vec4<u32>(t, p.streamLo, p.streamHi, 0u), vec2<u32>(p.seedLo, p.seedHi));
  var v: vec4<f32>;
  if (MODE == 0u) {
    v = p.a + (p.b - p.a) * vec4<f32>(unit(w.x), unit(w.y), unit(w.z), unit(w.w));
  } else {
    let r1 = sqrt(-2.0 * log(1.0 - unit(w.x)));  // 1 - u is in (0, 1]
    let r2 = sqrt(-2.0 * log(1.0 - unit(w.z)));
    let a1 = 6.283185307179586 * unit(w.y);
    let a2 = 6.283185307179586 * unit(w.w);
    v = p.a + p.b * vec4<f32>(r1 * cos(a1), r1 * sin(a1), r2 * cos(a2), r2 * sin(a2));
  }
  for (var j = 0u; j < 4u; j++) {
    if (t * 4u + j < p.n) { out[p.off + t * 4u + j] = {{T}}(v[j]); }
  }
}
