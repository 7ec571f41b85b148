// Batched C[b] = act(opA(A[b]) @ opB(B[b]) + bias (per column, or per row)), opX = transpose when TA/TB. Batch
// strides of 0 share an operand across the batch. Storage type T (f32|f16), f32 accumulation.
// act: 0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh), 4 silu.
//
// Tiling: register blocking; workgroup memory only for the epilogue. A workgroup is WX
// threads in a row; it owns TM rows x (WX * 4 * TN4) columns of C, and each thread owns all
// TM rows x TN4 groups of 4 columns (group j at column (wid.x * WX * TN4 + j * WX + lid.x) * 4,
// so neighbouring threads read neighbouring vec4s of B: coalesced on GPUs). K advances 4 at
// a time: per step a thread loads 4 * TN4 vec4s of B and does TM * TN4 * 16 FMAs. Rows depend
// on the workgroup only, so every lane of a subgroup needs the same TM x 4 block of A: with
// subgroups (GROUP = 8) each lane loads TM / GROUP rows of it and subgroupShuffle hands them
// round (right for any subgroup size that is a multiple of 8); without (GROUP = 1) each lane
// loads all TM rows, which on a GPU are broadcast loads served by L1.
//
// Why, measured on lavapipe (Mesa 25.0 llvmpipe, 8-wide AVX2 lanes, 2 cores), in GFLOPS of
// process CPU time (2 cores' worth; the machine is shared) at 1024^3 f32, where the naive
// one-thread-per-output kernel does 1: llvmpipe turns every storage or workgroup-memory load
// whose address varies per invocation (even one that is uniform in fact) into a per-lane
// scalar sequence with a mask test and a bounds check, about 13 instructions per element,
// while arithmetic and subgroup shuffles stay 8-wide. The kernel is bound by loads per FMA,
// so the lever is the register tile, not workgroup memory:
//   - the previous kernel, 64x64 workgroup tile staged in workgroup memory, 4x4 per thread:
//     3.5 (staging adds a per-lane store, a per-lane load and a barrier to every element);
//   - no workgroup memory, 4x4 / 8x8 / 12x12 per thread: 3.9 / 6.5 / 12;
//   - A through subgroupShuffle, 16x8 per thread: 17; with vec4 reads of B, 16x12: 24;
//   - K stepped by 4 with partial sums (one masked accumulator update per 4 FMAs) and
//     TM = 32, TN4 = 2 (32x8 per thread): 26-30; the same without subgroups: 9.
// TM and TN4 are capped by NIR's loop unroller: past 32x8 (16x4 when B cannot be read as
// vec4) the tile loops stay rolled, the accumulators become indexed memory and speed drops
// 3x. That is also why accumulators and B are vec4 and TB uses dot(): one NIR instruction
// per 4 lanes of work keeps the unrolled body under the limit.
// VEC_A / VEC_B read A / B through the vec4 views A4 / B4 (same buffers) when the
// contiguous axis is a multiple of 4 and the element offset is aligned; otherwise scalars.
{{ENABLE}}
override TA: bool = false;
override TB: bool = false;
override WX: u32 = 8u;
override VEC_A: bool = false;
override VEC_B: bool = false;
const TM = {{TM}}u;
const TN4 = {{TN4}}u;
const GROUP = {{GROUP}}u;
const TMG = TM / GROUP;  // rows of A each lane loads

struct Params {
  m: u32, n: u32, k: u32,
  strideA: u32, strideB: u32, strideC: u32,
  offA: u32, offB: u32, offC: u32, offBias: u32,
  hasBias: u32, act: u32,  // uniform values rather than overrides: fewer pipelines to compile
  // hasBias: 0 none, 1 bias[column] (linear), 2 bias[row] (conv2d's GEMM path: one per output channel)
}

@group(0) @binding(0) var<storage, read> A: array<{{T}}>;
@group(0) @binding(1) var<storage, read> B: array<{{T}}>;
@group(0) @binding(2) var<storage, read> bias: array<{{T}}>;
@group(0) @binding(3) var<storage, read_write> C: array<{{T}}>;
@group(0) @binding(4) var<storage, read> A4: array<vec4<{{T}}>>;
@group(0) @binding(5) var<storage, read> B4: array<vec4<{{T}}>>;
@group(0) @binding(6) var<uniform> p: Params;

var<workgroup> ctile: array<vec4<f32>, TM * TN4 * WX>;  // the C tile, for the epilogue

#include "common"

// Lane `lane`'s v: subgroupShuffle, or v itself when GROUP = 1 (BCAST).
fn bcast(v: vec4<f32>, lane: u32) -> vec4<f32> { return {{BCAST}}; }

// opA(A)[r, k..k+3], zero past K.
fn loadA(base: u32, r: u32, k: u32) -> vec4<f32> {
  if (!TA && VEC_A) { return vec4<f32>(A4[(base + r * p.k + k) / 4u]); }
  var v: vec4<f32>;
  for (var e = 0u; e < 4u; e++) {
    let kk = min(k + e, p.k - 1u);
    v[e] = select(0.0, f32(A[base + select(r * p.k + kk, kk * p.m + r, TA)]), k + e < p.k);
  }
  return v;
}

// B[k, c..c+3] (not TB), zero past K; columns past N repeat the last one (never stored).
fn loadBRow(base: u32, k: u32, c: u32) -> vec4<f32> {
  let kk = min(k, p.k - 1u);
  var v: vec4<f32>;
  if (VEC_B) {
    v = vec4<f32>(B4[(base + kk * p.n + c) / 4u]);
  } else {
    for (var e = 0u; e < 4u; e++) { v[e] = f32(B[base + kk * p.n + min(c + e, p.n - 1u)]); }
  }
  return select(vec4<f32>(0.0), v, k < p.k);
}

// opB(B)[k..k+3, c] = stored B[c, k..k+3] (TB), zero past K.
fn loadBCol(base: u32, k: u32, c: u32) -> vec4<f32> {
  if (VEC_B) { return vec4<f32>(B4[(base + c * p.k + k) / 4u]); }
  var v: vec4<f32>;
  for (var e = 0u; e < 4u; e++) {
    let kk = min(k + e, p.k - 1u);
    v[e] = select(0.0, f32(B[base + c * p.k + kk]), k + e < p.k);
  }
  return v;
}

@compute @workgroup_size(WX)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, {{LANE}} lane: u32) {
  let baseA = p.offA + wid.z * p.strideA;
  let baseB = p.offB + wid.z * p.strideB;
  let row0 = wid.y * TM;
  let group0 = lane - lane % GROUP;
  let cg0 = wid.x * WX * TN4 + lid.x;
  // Out-of-range rows and columns are clamped (their results are never stored), which keeps
  // every lane in the loop: subgroupShuffle needs them all.
  var rows: array<u32, TMG>;
  for (var q = 0u; q < TMG; q++) { rows[q] = min(row0 + q * GROUP + lane % GROUP, p.m - 1u); }
  var cols: array<u32, TN4>;
  for (var j = 0u; j < TN4; j++) { cols[j] = min(cg0 + j * WX, (p.n - 1u) / 4u) * 4u; }

  var acc: array<array<vec4<f32>, TN4>, TM>;
  for (var k = 0u; k < p.k; k += 4u) {
    var a: array<vec4<f32>, TMG>;
    for (var q = 0u; q < TMG; q++) { a[q] = loadA(baseA, rows[q], k); }
    // b[j][e]: row k + e of column group j, or with TB column cols[j] + e over k..k+3.
    var b: array<array<vec4<f32>, 4>, TN4>;
    for (var j = 0u; j < TN4; j++) {
      for (var e = 0u; e < 4u; e++) {
        if (TB) { b[j][e] = loadBCol(baseB, k, min(cols[j] + e, p.n - 1u)); }
        else { b[j][e] = loadBRow(baseB, k + e, cols[j]); }
      }
    }
    for (var i = 0u; i < TM; i++) {
      let ai = bcast(a[i / GROUP], group0 + i % GROUP);
      for (var j = 0u; j < TN4; j++) {
        if (TB) {
          acc[i][j] += vec4<f32>(dot(ai, b[j][0]), dot(ai, b[j][1]), dot(ai, b[j][2]), dot(ai, b[j][3]));
        } else {
          acc[i][j] += ai.x * b[j][0] + ai.y * b[j][1] + ai.z * b[j][2] + ai.w * b[j][3];
        }
      }
    }
  }

  // The epilogue goes through workgroup memory so that its bounds-checked, activated stores
  // are one rolled loop: unrolled per element they made llvmpipe's compile time 2-5x longer
  // (25 s of CPU for the f16 32x8 tile). It also makes the stores of C coalesced.
  for (var i = 0u; i < TM; i++) {
    for (var j = 0u; j < TN4; j++) { ctile[(i * TN4 + j) * WX + lid.x] = acc[i][j]; }
  }
  workgroupBarrier();
  let baseC = p.offC + wid.z * p.strideC;
  let col0 = wid.x * WX * TN4 * 4u;
  for (var e = lid.x; e < TM * TN4 * WX * 4u; e += WX) {
    // e = ((i * TN4 + j) * WX + thread) * 4 + component: row i, column (j * WX + thread) * 4 + component
    let r = row0 + e / (TN4 * WX * 4u);
    let c = col0 + e % (TN4 * WX * 4u);
    if (r < p.m && c < p.n) {
      var v = ctile[e / 4u][e % 4u];
      if (p.hasBias != 0u) { v += f32(bias[p.offBias + select(c, r, p.hasBias == 2u)]); }
      C[baseC + r * p.n + c] = {{T}}(activate(v, p.act));
    }
  }
}
