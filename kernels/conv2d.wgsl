// 2D convolution, NCHW, groups = 1, and its gradients, all as implicit GEMM: the im2col
// matrix is never materialised, each tile loader computes its source index on the fly.
//   forward      Y[o, p]  = act(Σ_k W[o, k] · im2col(X)[k, p] + bias[o] + R[o, p])
//                M = O, N = pixels N·OH·OW, K = C·KH·KW
//   grad_input   dX[c, p] = Σ_k W[k, c] · G[k, p], a transposed convolution gathered per
//                stride phase (see grad_input), M = C, N = input pixels, K = O·taps
//   grad_weight  dW[o, k] = Σ_p G[o, p] · im2col(X)[k, p], M = O, N = C·KH·KW, K = pixels,
//                split over pixel ranges (grid z) into f32 partials that reduce_splits sums
// Why implicit GEMM: every staged input element is reused by up to 64 output channels and
// every weight by 128 or more pixels from workgroup memory, the reuse a direct convolution
// lacks, without an explicit im2col buffer (KH·KW times the input: 189 MB for 320 channels
// at 128x128, over the binding limit). forward and grad_input walk K as channel blocks of
// 16 outside, kernel taps inside: a tap is a plain shift of the pixel grid, so the inner
// loop has no index division (kernel size and stride stay runtime values: one pipeline per
// tile serves every conv shape), and the taps of one channel block reuse the same cache
// lines. A channel count that is not a multiple of 16 (the RGB / latent stem convs) just
// runs shorter K slices. (runtime/ops/conv.ts sends 1x1 stride-1 unpadded convs, plain
// GEMMs, to the matmul kernel instead.)
// Tiling: a WX x WY workgroup computes a BM x BN block, each thread an RM x RN register
// tile (RM·RN FMAs per RM/4 + RN/4 vec4 reads from workgroup memory; this matters most on
// CPU adapters such as lavapipe, where every such read is a gather), staging BK-deep slices
// of both operands in workgroup memory; f32 accumulation whatever the storage type T.
// runtime/ops/conv.ts picks the tile per call (measurements there): 64x128 (8x8 threads of
// 8x16) for wide layers, and for a small GEMM dimension (few output channels in forward /
// grad_weight, few input channels in grad_input, a small C·KH·KW in grad_weight) a flatter
// or narrower tile, so that lanes are not spent on rows or columns past the matrix edge.
const WX = {{WX}}u;
const WY = {{WY}}u;
const RM = {{RM}}u;  // multiples of 4: the operands are read as vec4
const RN = {{RN}}u;
const NT = WX * WY;  // threads, a multiple of BK
const BM = WY * RM;
const BN = WX * RN;
const BK = 16u;
const BM4 = BM / 4u;
const BN4 = BN / 4u;
const RM4 = RM / 4u;
const RN4 = RN / 4u;
const JN = BN / NT;  // columns of B each thread stages (BN is a multiple of NT)

struct Params {
  n: u32, c: u32, h: u32, w: u32,  // input
  o: u32, oh: u32, ow: u32,        // output
  kh: u32, kw: u32, stride: u32,
  padT: u32, padL: u32,            // bottom/right padding only shows in oh, ow
  off0: u32, off1: u32, off2: u32, off3: u32,  // element offsets of the read bindings, in order
  chunk: u32,                      // grad_weight: output pixels per split
  hasBias: u32, hasRes: u32, act: u32,  // forward epilogue; act is an activate() code
}
struct SplitParams { n: u32, splits: u32 }

// Entry points bind different variables to the same numbers (each gets its own layout).
// forward: x, w, bias, res -> y
@group(0) @binding(0) var<storage, read> x: array<{{T}}>;
@group(0) @binding(1) var<storage, read> wt: array<{{T}}>;
@group(0) @binding(2) var<storage, read> bias: array<{{T}}>;
@group(0) @binding(3) var<storage, read> res: array<{{T}}>;
@group(0) @binding(4) var<storage, read_write> y: array<{{T}}>;
@group(0) @binding(5) var<uniform> pf: Params;
// grad_input: dy, w -> dx
@group(0) @binding(0) var<storage, read> dyI: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> dx: array<{{T}}>;
@group(0) @binding(3) var<uniform> pgi: Params;
// grad_weight: x, dy -> partial sums [split, O, C·KH·KW]
@group(0) @binding(1) var<storage, read> dyW: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> part: array<f32>;
@group(0) @binding(3) var<uniform> pgw: Params;
// reduce_splits: partial sums -> dw
@group(0) @binding(0) var<storage, read> partIn: array<f32>;
@group(0) @binding(1) var<storage, read_write> dw: array<{{T}}>;
@group(0) @binding(2) var<uniform> ps: SplitParams;

#include "common"

var<workgroup> As: array<vec4<f32>, BK * BM4>;  // [BK][BM], 4 rows per vec4
var<workgroup> Bs: array<vec4<f32>, BK * BN4>;  // [BK][BN], 4 columns per vec4

// The NT threads stage a BK-deep tile in one of two patterns, whichever makes neighbouring
// threads read the nearest addresses of the operand's source:
//   along M/N: thread t stages rows/columns t, t + NT, ..., looping over the K slice
//   along K:   thread t stages K index t % 16 of rows/columns t / 16, t / 16 + NT / 16, ...
// Loops stop at the tile's valid extent (runtime bounds, which also keeps the compiled
// code small): entries past the matrix edge keep stale values that only reach discarded
// outputs, and mac() reads K entries below kValid only.
fn putA(kk: u32, m: u32, v: f32) { As[kk * BM4 + m / 4u][m % 4u] = v; }
fn putB(kk: u32, n: u32, v: f32) { Bs[kk * BN4 + n / 4u][n % 4u] = v; }

// acc[RN4·i + h] holds row RM·ty + i, columns RN·tx + 4h .. RN·tx + 4h + 3.
fn mac(acc: ptr<function, array<vec4<f32>, RM * RN4>>, ty: u32, tx: u32, kValid: u32) {
  for (var kk = 0u; kk < kValid; kk++) {
    var a: array<vec4<f32>, RM4>;
    var b: array<vec4<f32>, RN4>;
    for (var q = 0u; q < RM4; q++) { a[q] = As[kk * BM4 + RM4 * ty + q]; }
    for (var h = 0u; h < RN4; h++) { b[h] = Bs[kk * BN4 + RN4 * tx + h]; }
    for (var i = 0u; i < RM; i++) {
      for (var h = 0u; h < RN4; h++) { (*acc)[RN4 * i + h] += a[i / 4u][i % 4u] * b[h]; }
    }
  }
}

fn inside(ih: i32, iw: i32, h: u32, w: u32) -> bool {
  return ih >= 0 && ih < i32(h) && iw >= 0 && iw < i32(w);
}

@compute @workgroup_size(WX, WY)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let q = pf;
  let ohw = q.oh * q.ow;
  let P = q.n * ohw;
  let hw = q.h * q.w;
  let taps = q.kh * q.kw;
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  let mValid = min(BM, q.o - m0);
  let t = lid.y * WX + lid.x;
  // The im2col columns this thread stages: output pixels n0 + t + NT·j, fixed over the K loop.
  var ih0: array<i32, JN>;
  var iw0: array<i32, JN>;
  var xImg: array<u32, JN>;
  for (var j = 0u; j < JN; j++) {
    let pc = n0 + t + NT * j;
    let pix = pc % ohw;
    // a column past the last pixel gets a row that is never inside the input
    ih0[j] = select(-i32(q.kh), i32(pix / q.ow * q.stride) - i32(q.padT), pc < P);
    iw0[j] = i32(pix % q.ow * q.stride) - i32(q.padL);
    xImg[j] = q.off0 + pc / ohw * q.c * hw;
  }
  var acc: array<vec4<f32>, RM * RN4>;
  for (var c0 = 0u; c0 < q.c; c0 += BK) {
    let kValid = min(BK, q.c - c0);
    for (var r = 0u; r < q.kh; r++) {
      for (var s = 0u; s < q.kw; s++) {
        // W[o, c, r, s] along K (c)
        let kk = t % 16u;
        if (kk < kValid) {
          let wTap = q.off1 + (c0 + kk) * taps + r * q.kw + s;
          for (var m = t / 16u; m < mValid; m += NT / 16u) { putA(kk, m, f32(wt[wTap + (m0 + m) * q.c * taps])); }
        }
        // X[n, c, ih0 + r, iw0 + s] along pixels; zero in the padding
        for (var j = 0u; j < JN; j++) {
          let ih = ih0[j] + i32(r);
          let iw = iw0[j] + i32(s);
          let live = inside(ih, iw, q.h, q.w);
          let xPix = xImg[j] + u32(ih) * q.w + u32(iw);
          for (var k = 0u; k < kValid; k++) {
            var b = 0.0;
            if (live) { b = f32(x[xPix + (c0 + k) * hw]); }
            putB(k, t + NT * j, b);
          }
        }
        workgroupBarrier();
        mac(&acc, lid.y, lid.x, kValid);
        workgroupBarrier();
      }
    }
  }
  for (var j = 0u; j < RN; j++) {
    let p = n0 + lid.x * RN + j;
    if (p >= P) { break; }
    let base = p / ohw * q.o * ohw + p % ohw;
    for (var i = 0u; i < RM; i++) {
      let o = m0 + lid.y * RM + i;
      if (o >= q.o) { break; }
      let idx = base + o * ohw;
      var v = acc[RN4 * i + j / 4u][j % 4u];
      if (q.hasBias != 0u) { v += f32(bias[q.off2 + o]); }
      if (q.hasRes != 0u) { v += f32(res[q.off3 + idx]); }
      y[idx] = {{T}}(activate(v, q.act));
    }
  }
}

// dX[c, ih, iw] = Σ W[o, c, r, s] · dY[o, oh, ow] over oh·S + r = ih + padT (same for w).
// Gathered per stride phase (grid z): input pixels with ih ≡ ph, iw ≡ pw (mod S) are
// reached only by taps r ≡ ph + padT, s ≡ pw + padL (mod S), for which oh = i + qh - rr
// exactly (ih = ph + S·i, r = r0 + S·rr, qh = (ph + padT) / S). So K stays dense for any
// stride: no tap that would land between output pixels is visited. A phase without taps
// (a 1x1 kernel with stride 2) writes zeros.
@compute @workgroup_size(WX, WY)
fn grad_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let q = pgi;
  let S = q.stride;
  let ph = wid.z / S;
  let pw = wid.z % S;
  let r0 = (ph + q.padT) % S;
  let s0 = (pw + q.padL) % S;
  let nr = select(0u, (q.kh - r0 + S - 1u) / S, r0 < q.kh);
  let ns = select(0u, (q.kw - s0 + S - 1u) / S, s0 < q.kw);
  let hp = select(0u, (q.h - ph + S - 1u) / S, ph < q.h);
  let wp = select(0u, (q.w - pw + S - 1u) / S, pw < q.w);
  let P = q.n * hp * wp;
  let ohw = q.oh * q.ow;
  let taps = q.kh * q.kw;
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  if (n0 >= P) { return; }  // the grid covers phase 0, the largest
  let mValid = min(BM, q.c - m0);
  let t = lid.y * WX + lid.x;
  var ohb: array<i32, JN>;
  var owb: array<i32, JN>;
  var gImg: array<u32, JN>;
  for (var j = 0u; j < JN; j++) {
    let pc = n0 + t + NT * j;
    // a column past the last pixel gets a row that is never inside the output
    ohb[j] = select(i32(q.oh + q.kh), i32(pc / wp % hp + (ph + q.padT) / S), pc < P);
    owb[j] = i32(pc % wp + (pw + q.padL) / S);
    gImg[j] = q.off0 + pc / (hp * wp) * q.o * ohw;
  }
  var acc: array<vec4<f32>, RM * RN4>;
  for (var o0 = 0u; o0 < q.o; o0 += BK) {
    let kValid = min(BK, q.o - o0);
    for (var rr = 0u; rr < nr; rr++) {
      for (var ss = 0u; ss < ns; ss++) {
        // W[o, c, r, s] as [o][c], along M (c)
        let wTap = q.off1 + (r0 + rr * S) * q.kw + s0 + ss * S;
        for (var m = t; m < mValid; m += NT) {
          let wc = wTap + (m0 + m) * taps;
          for (var k = 0u; k < kValid; k++) { putA(k, m, f32(wt[wc + (o0 + k) * q.c * taps])); }
        }
        // dY[n, o, oh, ow] along pixels; zero outside the output
        for (var j = 0u; j < JN; j++) {
          let oh = ohb[j] - i32(rr);
          let ow = owb[j] - i32(ss);
          let live = inside(oh, ow, q.oh, q.ow);
          let gPix = gImg[j] + u32(oh) * q.ow + u32(ow);
          for (var k = 0u; k < kValid; k++) {
            var b = 0.0;
            if (live) { b = f32(dyI[gPix + (o0 + k) * ohw]); }
            putB(k, t + NT * j, b);
          }
        }
        workgroupBarrier();
        mac(&acc, lid.y, lid.x, kValid);
        workgroupBarrier();
      }
    }
  }
  for (var j = 0u; j < RN; j++) {
    let p = n0 + lid.x * RN + j;
    if (p >= P) { break; }
    let ih = ph + p / wp % hp * S;
    let iw = pw + p % wp * S;
    let base = p / (hp * wp) * q.c * q.h * q.w + ih * q.w + iw;
    for (var i = 0u; i < RM; i++) {
      let c = m0 + lid.y * RM + i;
      if (c >= q.c) { break; }
      dx[base + c * q.h * q.w] = {{T}}(acc[RN4 * i + j / 4u][j % 4u]);
    }
  }
}

// dW over the output pixels [z·chunk, (z+1)·chunk): dY is staged along K (pixels, where it
// is contiguous), X along N with each thread's columns (c, r, s) fixed. Splitting the long
// pixel reduction (N·OH·OW) over grid z gives small layers enough workgroups; the partial
// sums are added by reduce_splits. A K slice never crosses an output row, so its pixels'
// coordinates are the row's plus k: no per-pixel index table to read (an output narrower
// than 16 pixels just runs shorter slices).
@compute @workgroup_size(WX, WY)
fn grad_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let q = pgw;
  let taps = q.kh * q.kw;
  let K = q.c * taps;
  let ohw = q.oh * q.ow;
  let hw = q.h * q.w;
  let pStart = wid.z * q.chunk;
  let pEnd = min(q.n * ohw, pStart + q.chunk);
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  let mValid = min(BM, q.o - m0);
  let t = lid.y * WX + lid.x;
  var kr: array<i32, JN>;
  var ks: array<i32, JN>;
  var xCol: array<u32, JN>;
  for (var j = 0u; j < JN; j++) {
    let k = n0 + t + NT * j;
    let tap = k % taps;
    // a column past C·KH·KW gets a tap row that is never inside the input
    kr[j] = select(-i32(q.h + q.oh * q.stride), i32(tap / q.kw), k < K);
    ks[j] = i32(tap % q.kw);
    xCol[j] = k / taps * hw;
  }
  var acc: array<vec4<f32>, RM * RN4>;
  var p0 = pStart;
  while (p0 < pEnd) {
    let img = p0 / ohw;
    let oh = p0 % ohw / q.ow;
    let ow0 = p0 % q.ow;
    let kValid = min(min(BK, pEnd - p0), q.ow - ow0);
    // dY[n, o, oh, ow0 + k] along K (pixels)
    let kk = t % 16u;
    if (kk < kValid) {
      let g = q.off1 + img * q.o * ohw + p0 % ohw + kk;
      for (var m = t / 16u; m < mValid; m += NT / 16u) { putA(kk, m, f32(dyW[g + (m0 + m) * ohw])); }
    }
    // X[n, c, oh·S - padT + r, (ow0 + k)·S - padL + s] along N (c, r, s); zero in the padding
    let xImg = q.off0 + img * q.c * hw;
    let ihRow = i32(oh * q.stride) - i32(q.padT);
    let iwRow = i32(ow0 * q.stride) - i32(q.padL);
    for (var j = 0u; j < JN; j++) {
      let ih = ihRow + kr[j];
      let rowLive = ih >= 0 && ih < i32(q.h);
      let xRow = xImg + xCol[j] + u32(ih) * q.w;
      for (var k = 0u; k < kValid; k++) {
        let iw = iwRow + i32(k * q.stride) + ks[j];
        var b = 0.0;
        if (rowLive && iw >= 0 && iw < i32(q.w)) { b = f32(x[xRow + u32(iw)]); }
        putB(k, t + NT * j, b);
      }
    }
    workgroupBarrier();
    mac(&acc, lid.y, lid.x, kValid);
    workgroupBarrier();
    p0 += kValid;
  }
  for (var i = 0u; i < RM; i++) {
    let o = m0 + lid.y * RM + i;
    if (o >= q.o) { break; }
    for (var j = 0u; j < RN; j++) {
      let kc = n0 + lid.x * RN + j;
      if (kc >= K) { break; }
      part[(wid.z * q.o + o) * K + kc] = acc[RN4 * i + j / 4u][j % 4u];
    }
  }
}

@compute @workgroup_size(256)
fn reduce_splits(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= ps.n) { return; }
  var s = 0.0;
  for (var z = 0u; z < ps.splits; z++) { s += partIn[z * ps.n + i]; }
  dw[i] = {{T}}(s);
}
