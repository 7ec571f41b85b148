// 2D convolution, NCHW, groups = 1, and its gradients, all as implicit GEMM: the im2col
// matrix is never materialised, each tile loader computes its source index on the fly.
//   forward      Y[o, p]  = act(Σ_k W[o, k] · im2col(X)[k, p] + bias[o] + R[o, p])
//                M = O, N = pixels N·OH·OW, K = C·KH·KW
//   grad_input   dX[c, p] = Σ_k W[k, c] · G[k, p], a transposed convolution gathered per
//                stride phase (see grad_input), M = C, N = input pixels, K = O·taps
//   grad_weight  dW[o, k] = Σ_p G[o, p] · im2col(X)[k, p], M = O, N = C·KH·KW, K = pixels,
//                split over pixel ranges (grid z) into f32 partials that reduce_splits sums
// Why implicit GEMM: every staged input element is reused by 64 output channels and every
// weight by 64 pixels from workgroup memory, the reuse a direct convolution lacks, without
// an explicit im2col buffer (KH·KW times the input: 189 MB for 320 channels at 128x128,
// over the binding limit). forward and grad_input walk K as channel blocks of 16 outside,
// kernel taps inside: a tap is a plain shift of the pixel grid, so the inner loop has no
// index division (kernel size and stride stay runtime values: one pipeline serves every
// conv shape), and the taps of one channel block reuse the same cache lines. A 1x1 stride-1
// conv is then exactly a GEMM over channels; a channel count that is not a multiple of 16
// (the RGB / latent stem convs) just runs shorter K slices.
// Tiling: an 8x8 workgroup computes a 64x64 block, each thread an 8x8 register tile (16
// FMAs per vec4 read from workgroup memory; this matters most on CPU adapters such as
// lavapipe, where every such read is a gather), staging 16-deep slices of both operands in
// workgroup memory; f32 accumulation whatever the storage type T.
const BM = 64u;
const BN = 64u;
const BK = 16u;

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

var<workgroup> As: array<vec4<f32>, 256>;  // [BK][BM], 4 rows per vec4
var<workgroup> Bs: array<vec4<f32>, 256>;  // [BK][BN], 4 columns per vec4
// grad_weight: per pixel of the current K slice, dY's offset, X's image offset and the
// top-left input coordinate of its receptive field (computed once per slice, not per thread)
var<workgroup> pxG: array<u32, BK>;
var<workgroup> pxX: array<u32, BK>;
var<workgroup> pxH: array<i32, BK>;
var<workgroup> pxW: array<i32, BK>;

// The 64 threads stage a 16x64 tile in one of two patterns, whichever makes neighbouring
// threads read the nearest addresses of the operand's source:
//   along M/N: thread t stages row/column t, looping over the K slice
//   along K:   thread t stages K index t % 16 of rows/columns t / 16, t / 16 + 4, ...
// Loops stop at the tile's valid extent (runtime bounds, which also keeps the compiled
// code small): entries past the matrix edge keep stale values that only reach discarded
// outputs, and mac() reads K entries below kValid only.
fn putA(kk: u32, m: u32, v: f32) { As[kk * 16u + m / 4u][m % 4u] = v; }
fn putB(kk: u32, n: u32, v: f32) { Bs[kk * 16u + n / 4u][n % 4u] = v; }

// acc[2i + h] holds row 8·ty + i, columns 8·tx + 4h .. 8·tx + 4h + 3.
fn mac(acc: ptr<function, array<vec4<f32>, 16>>, ty: u32, tx: u32, kValid: u32) {
  for (var kk = 0u; kk < kValid; kk++) {
    let a0 = As[kk * 16u + 2u * ty];
    let a1 = As[kk * 16u + 2u * ty + 1u];
    let b0 = Bs[kk * 16u + 2u * tx];
    let b1 = Bs[kk * 16u + 2u * tx + 1u];
    for (var i = 0u; i < 4u; i++) {
      (*acc)[2u * i] += a0[i] * b0;
      (*acc)[2u * i + 1u] += a0[i] * b1;
      (*acc)[2u * i + 8u] += a1[i] * b0;
      (*acc)[2u * i + 9u] += a1[i] * b1;
    }
  }
}

fn inside(ih: i32, iw: i32, h: u32, w: u32) -> bool {
  return ih >= 0 && ih < i32(h) && iw >= 0 && iw < i32(w);
}

@compute @workgroup_size(8, 8)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let q = pf;
  let ohw = q.oh * q.ow;
  let P = q.n * ohw;
  let hw = q.h * q.w;
  let taps = q.kh * q.kw;
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  let mValid = min(BM, q.o - m0);
  let t = lid.y * 8u + lid.x;
  // The im2col column this thread stages: one output pixel, fixed over the K loop.
  let pc = n0 + t;
  let pix = pc % ohw;
  let ih0 = i32(pix / q.ow * q.stride) - i32(q.padT);
  let iw0 = i32(pix % q.ow * q.stride) - i32(q.padL);
  let xImg = q.off0 + pc / ohw * q.c * hw;
  var acc: array<vec4<f32>, 16>;
  for (var c0 = 0u; c0 < q.c; c0 += BK) {
    let kValid = min(BK, q.c - c0);
    for (var r = 0u; r < q.kh; r++) {
      for (var s = 0u; s < q.kw; s++) {
        // W[o, c, r, s] along K (c)
        let kk = t % 16u;
        if (kk < kValid) {
          let wTap = q.off1 + (c0 + kk) * taps + r * q.kw + s;
          for (var m = t / 16u; m < mValid; m += 4u) { putA(kk, m, f32(wt[wTap + (m0 + m) * q.c * taps])); }
        }
        // X[n, c, ih0 + r, iw0 + s] along pixels; zero in the padding
        let ih = ih0 + i32(r);
        let iw = iw0 + i32(s);
        let live = pc < P && inside(ih, iw, q.h, q.w);
        let xPix = xImg + u32(ih) * q.w + u32(iw);
        for (var k = 0u; k < kValid; k++) {
          var b = 0.0;
          if (live) { b = f32(x[xPix + (c0 + k) * hw]); }
          putB(k, t, b);
        }
        workgroupBarrier();
        mac(&acc, lid.y, lid.x, kValid);
        workgroupBarrier();
      }
    }
  }
  for (var j = 0u; j < 8u; j++) {
    let p = n0 + lid.x * 8u + j;
    if (p >= P) { break; }
    let base = p / ohw * q.o * ohw + p % ohw;
    for (var i = 0u; i < 8u; i++) {
      let o = m0 + lid.y * 8u + i;
      if (o >= q.o) { break; }
      let idx = base + o * ohw;
      var v = acc[2u * i + j / 4u][j % 4u];
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
@compute @workgroup_size(8, 8)
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
  let t = lid.y * 8u + lid.x;
  let pc = n0 + t;
  let ohb = i32(pc / wp % hp + (ph + q.padT) / S);
  let owb = i32(pc % wp + (pw + q.padL) / S);
  let gImg = q.off0 + pc / (hp * wp) * q.o * ohw;
  var acc: array<vec4<f32>, 16>;
  for (var o0 = 0u; o0 < q.o; o0 += BK) {
    let kValid = min(BK, q.o - o0);
    for (var rr = 0u; rr < nr; rr++) {
      for (var ss = 0u; ss < ns; ss++) {
        // W[o, c, r, s] as [o][c], along M (c)
        let c = m0 + t;
        if (c < q.c) {
          let wTap = q.off1 + c * taps + (r0 + rr * S) * q.kw + s0 + ss * S;
          for (var k = 0u; k < kValid; k++) { putA(k, t, f32(wt[wTap + (o0 + k) * q.c * taps])); }
        }
        // dY[n, o, oh, ow] along pixels; zero outside the output
        let oh = ohb - i32(rr);
        let ow = owb - i32(ss);
        let live = pc < P && inside(oh, ow, q.oh, q.ow);
        let gPix = gImg + u32(oh) * q.ow + u32(ow);
        for (var k = 0u; k < kValid; k++) {
          var b = 0.0;
          if (live) { b = f32(dyI[gPix + (o0 + k) * ohw]); }
          putB(k, t, b);
        }
        workgroupBarrier();
        mac(&acc, lid.y, lid.x, kValid);
        workgroupBarrier();
      }
    }
  }
  for (var j = 0u; j < 8u; j++) {
    let p = n0 + lid.x * 8u + j;
    if (p >= P) { break; }
    let ih = ph + p / wp % hp * S;
    let iw = pw + p % wp * S;
    let base = p / (hp * wp) * q.c * q.h * q.w + ih * q.w + iw;
    for (var i = 0u; i < 8u; i++) {
      let c = m0 + lid.y * 8u + i;
      if (c >= q.c) { break; }
      dx[base + c * q.h * q.w] = {{T}}(acc[2u * i + j / 4u][j % 4u]);
    }
  }
}

// dW over the output pixels [z·chunk, (z+1)·chunk): dY is staged along K (pixels, where it
// is contiguous), X along N with each thread's column (c, r, s) fixed. Splitting the long
// pixel reduction (N·OH·OW) over grid z gives small layers enough workgroups; the partial
// sums are added by reduce_splits.
@compute @workgroup_size(8, 8)
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
  let t = lid.y * 8u + lid.x;
  let k = n0 + t;
  let tap = k % taps;
  let kr = i32(tap / q.kw);
  let ks = i32(tap % q.kw);
  let xCol = k / taps * hw;
  var acc: array<vec4<f32>, 16>;
  for (var p0 = pStart; p0 < pEnd; p0 += BK) {
    let kValid = min(BK, pEnd - p0);
    if (t < kValid) {
      let p = p0 + t;
      let img = p / ohw;
      let pix = p % ohw;
      pxG[t] = q.off1 + img * q.o * ohw + pix;
      pxX[t] = q.off0 + img * q.c * hw;
      pxH[t] = i32(pix / q.ow * q.stride) - i32(q.padT);
      pxW[t] = i32(pix % q.ow * q.stride) - i32(q.padL);
    }
    workgroupBarrier();
    // dY[n, o, pixel] along K (pixels)
    let kk = t % 16u;
    if (kk < kValid) {
      for (var m = t / 16u; m < mValid; m += 4u) { putA(kk, m, f32(dyW[pxG[kk] + (m0 + m) * ohw])); }
    }
    // X[n, c, ih + r, iw + s] along N (c, r, s); zero in the padding
    if (k < K) {
      for (var j = 0u; j < kValid; j++) {
        let ih = pxH[j] + kr;
        let iw = pxW[j] + ks;
        var b = 0.0;
        if (inside(ih, iw, q.h, q.w)) { b = f32(x[pxX[j] + xCol + u32(ih) * q.w + u32(iw)]); }
        putB(j, t, b);
      }
    }
    workgroupBarrier();
    mac(&acc, lid.y, lid.x, kValid);
    workgroupBarrier();
  }
  for (var i = 0u; i < 8u; i++) {
    let o = m0 + lid.y * 8u + i;
    if (o >= q.o) { break; }
    for (var j = 0u; j < 8u; j++) {
      let kc = n0 + lid.x * 8u + j;
      if (kc >= K) { break; }
      part[(wid.z * q.o + o) * K + kc] = acc[2u * i + j / 4u][j % 4u];
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
