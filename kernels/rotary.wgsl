// Rotary position embedding as LlamaGen's apply_rotary_emb: each pair (x[2j], x[2j+1]) of
// the last axis of x [..., S, H, D] is multiplied by the complex number (cos, sin) that the
// table freqs [S, D/2, 2] (f32) holds for its position s and pair j:
//   y[2j] = x[2j]·cos - x[2j+1]·sin,   y[2j+1] = x[2j+1]·cos + x[2j]·sin
// INVERSE multiplies by the conjugate (the transpose), which is the backward.
override INVERSE: bool = false;
const WG = 256u;

struct Params {
  pairs: u32,  // elements of x / 2
  seq: u32,    // S
  heads: u32,  // H
  half: u32,   // D / 2
  offX: u32, offF: u32,  // element offsets of x and freqs in their bindings
}

@group(0) @binding(0) var<storage, read> x: array<{{T}}>;
@group(0) @binding(1) var<storage, read> freqs: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<{{T}}>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let k = gid.x + gid.y * nwg.x * WG;
  if (k >= p.pairs) { return; }
  let j = k % p.half;
  let s = k / (p.half * p.heads) % p.seq;
  let f = p.offF + (s * p.half + j) * 2u;
  let c = freqs[f];
  let sn = select(freqs[f + 1u], -freqs[f + 1u], INVERSE);
  let x0 = f32(x[p.offX + 2u * k]);
  let x1 = f32(x[p.offX + 2u * k + 1u]);
  y[2u * k] = {{T}}(x0 * c - x1 * sn);
  y[2u * k + 1u] = {{T}}(x1 * c + x0 * sn);
}
