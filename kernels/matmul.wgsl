// Batched C[b] = act(opA(A[b]) @ opB(B[b]) + bias), opX = transpose when TA/TB.
// Tiled: a 16x16 workgroup computes a 64x64 block of C, each thread a 4x4 register tile,
// staging 64x16 slices of A and B in workgroup memory (k-major so the inner loop reads
// both operands as contiguous vec4s). Accumulates in f32 whatever the storage type T.
// Batch strides of 0 broadcast an operand over the batch. ACT: 0 none, 1 relu, 2 gelu
// (erf), 3 gelu (tanh), 4 silu.
override TA: bool = false;
override TB: bool = false;
override HAS_BIAS: bool = false;
override ACT: u32 = 0u;

const BM = 64u;
const BN = 64u;
const BK = 16u;

struct Params {
  m: u32, n: u32, k: u32,
  strideA: u32, strideB: u32, strideC: u32,
  offA: u32, offB: u32, offC: u32, offBias: u32,
}

@group(0) @binding(0) var<storage, read> A: array<{{T}}>;
@group(0) @binding(1) var<storage, read> B: array<{{T}}>;
@group(0) @binding(2) var<storage, read> bias: array<{{T}}>;
@group(0) @binding(3) var<storage, read_write> C: array<{{T}}>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> As: array<vec4<f32>, 256>;  // [BK][BM/4]
var<workgroup> Bs: array<vec4<f32>, 256>;  // [BK][BN/4]

fn loadA(b: u32, row: u32, col: u32) -> f32 {  // element (row of C, k)
  if (row >= p.m || col >= p.k) { return 0.0; }
  let i = select(row * p.k + col, col * p.m + row, TA);
  return f32(A[p.offA + b * p.strideA + i]);
}
fn loadB(b: u32, row: u32, col: u32) -> f32 {  // element (k, col of C)
  if (row >= p.k || col >= p.n) { return 0.0; }
  let i = select(row * p.n + col, col * p.k + row, TB);
  return f32(B[p.offB + b * p.strideB + i]);
}

#include "common"

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let b = wid.z;
  let row0 = wid.y * BM;
  let col0 = wid.x * BN;
  let t = lid.y * 16u + lid.x;
  var acc: array<vec4<f32>, 4>;
  for (var k0 = 0u; k0 < p.k; k0 += BK) {
    // 256 threads stage 64x16 of A and 16x64 of B: one vec4 (4 rows / 4 cols) each.
    {
      let kk = t / 16u;          // 0..15
      let q = t % 16u;           // which group of 4
      As[kk * 16u + q] = vec4<f32>(loadA(b, row0 + q * 4u, k0 + kk), loadA(b, row0 + q * 4u + 1u, k0 + kk),
                                   loadA(b, row0 + q * 4u + 2u, k0 + kk), loadA(b, row0 + q * 4u + 3u, k0 + kk));
      Bs[kk * 16u + q] = vec4<f32>(loadB(b, k0 + kk, col0 + q * 4u), loadB(b, k0 + kk, col0 + q * 4u + 1u),
                                   loadB(b, k0 + kk, col0 + q * 4u + 2u), loadB(b, k0 + kk, col0 + q * 4u + 3u));
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      let a = As[kk * 16u + lid.y];
      let bv = Bs[kk * 16u + lid.x];
      acc[0] += a.x * bv;
      acc[1] += a.y * bv;
      acc[2] += a.z * bv;
      acc[3] += a.w * bv;
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let r = row0 + lid.y * 4u + i;
    if (r >= p.m) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let c = col0 + lid.x * 4u + j;
      if (c >= p.n) { continue; }
      var v = acc[i][j];
      if (HAS_BIAS) { v += f32(bias[p.offBias + c]); }
      C[p.offC + b * p.strideC + r * p.n + c] = {{T}}(activate(v, ACT));
    }
  }
}
