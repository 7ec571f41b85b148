// Normalisation of rows followed by a per-channel affine: GroupNorm, LayerNorm and RMSNorm,
// forward and backward. A row is what one mean / variance covers: a (sample, group) block
// of C/G channels x HW elements for GroupNorm, a vector along the last axis for LayerNorm
// and RMSNorm (G = 1, HW = 1). Element k of row r belongs to channel (r % G)·(len/HW) + k/HW.
//   y = act((x - mean)·rstd·w[c] + b[c]),  rstd = 1 / sqrt(var + eps),  act = SiLU or none
// RMS takes the mean as 0, so var is the mean of squares (LlamaGen / T5 RMSNorm).
// Statistics are f32 whatever the storage type T: Welford per thread, merged with Chan's
// formula across threads and chunks (as robust as two passes, in one).
//
// A row longer than one chunk is spread over several workgroups: fwd_stats / bwd_stats
// write per-chunk partials that forward / backward combine. With ONE_PASS (one chunk per
// row) forward / backward reduce the row themselves and the *_stats entries are not run.
//
// Backward, with xh = (x - mean)·rstd, d = dy·act'(pre) the gradient of the affine output,
// gh = d·w[c] the gradient of xh:
//   dx = rstd·(gh - mean(gh) - xh·mean(gh·xh))    (RMS: no mean(gh) term)
//   dw[c] = Σ d·xh,  db[c] = Σ d   over the samples and the channel's HW elements,
// reduced by affine_grad in splits of the (sample, element) range and summed by affine_reduce.
override RMS: bool = false;
override SILU: bool = false;
override HAS_W: bool = false;
override HAS_B: bool = false;
override ONE_PASS: bool = false;
// Workgroup size, a power of two: smaller for short rows, so that no lanes idle.
override WG: u32 = 256u;
// affine_grad: channels per workgroup (64 when HW = 1, so a warp reads 64 adjacent
// channels of one row; 1 otherwise, so it reads along the channel's HW elements)
override TC: u32 = 1u;
override RL: u32 = WG / TC;  // affine_grad: lanes per channel

struct Params {
  rows: u32,    // rows: samples·G (GroupNorm) or the product of the leading axes
  len: u32,     // elements per row
  groups: u32,  // G (1 for LayerNorm / RMSNorm)
  hw: u32,      // elements per channel within a row (1 for LayerNorm / RMSNorm)
  chunk: u32,   // row entries: elements per workgroup along a row; affine_*: (sample, element) positions per split
  chunks: u32,  // row entries: workgroups per row; affine_*: splits
  offX: u32, offW: u32, offB: u32, offG: u32,  // element offsets of x, w, b, dy in their bindings
  eps: f32,
}

// Bindings per entry point (each gets an auto layout of those it uses; (w) = written):
//   fwd_stats      x0 part1(w)                        params2
//   forward        x0 w1 b2 part3 y4(w) stats5(w)     params6
//   bwd_stats      x0 w1 b2 stats3 dy4 part5(w)       params6
//   backward       x0 w1 b2 stats3 dy4 part5 dx6(w)   params7
//   affine_grad    x0 w1 b2 stats3 dy4 part5(w)       params6
//   affine_reduce  part0 dw1(w) db2(w)                params3
// stats[row] = (mean, rstd). Absent w / b / part are bound to x and never read.
@group(0) @binding(0) var<storage, read> x: array<{{T}}>;
@group(0) @binding(1) var<storage, read> w: array<{{T}}>;
@group(0) @binding(2) var<storage, read> b: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> fwdPartOut: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> fwdPart: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<{{T}}>;
@group(0) @binding(5) var<storage, read_write> statsOut: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> stats: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> dy: array<{{T}}>;
@group(0) @binding(5) var<storage, read_write> partOut: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read> part: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> dx: array<{{T}}>;
@group(0) @binding(0) var<storage, read> affinePart: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read_write> dw: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> db: array<{{T}}>;
@group(0) @binding(2) var<uniform> p2: Params;
@group(0) @binding(3) var<uniform> p3: Params;
@group(0) @binding(6) var<uniform> p6: Params;
@group(0) @binding(7) var<uniform> p7: Params;

#include "common"

var<workgroup> red: array<vec2<f32>, WG>;
var<workgroup> mred: array<vec3<f32>, WG>;

// Moments (count, mean, M2) of the union of two sets (Chan et al.).
fn merge(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
  let n = a.x + b.x;
  if (n == 0.0) { return a; }
  let d = b.y - a.y;
  let f = b.x / n;
  return vec3<f32>(n, a.y + d * f, a.z + b.z + d * d * a.x * f);
}

fn wgMerge(v: vec3<f32>, lid: u32) -> vec3<f32> {
  mred[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { mred[lid] = merge(mred[lid], mred[lid + s]); }
    workgroupBarrier();
  }
  let r = mred[0];
  workgroupBarrier();
  return r;
}

fn wgSum(v: vec2<f32>, lid: u32) -> vec2<f32> {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

// The channel c of element k of a row as k advances by WG, without a division per step:
// r = k % hw, and each step adds (dc, dr) = (WG / hw, WG % hw) with a carry.
struct Channel { c: u32, r: u32, dc: u32, dr: u32, hw: u32 }
fn channelAt(q: Params, row: u32, k: u32) -> Channel {
  return Channel((row % q.groups) * (q.len / q.hw) + k / q.hw, k % q.hw, WG / q.hw, WG % q.hw, q.hw);
}
fn nextChannel(ch: ptr<function, Channel>) {
  (*ch).c += (*ch).dc;
  (*ch).r += (*ch).dr;
  if ((*ch).r >= (*ch).hw) {
    (*ch).r -= (*ch).hw;
    (*ch).c += 1u;
  }
}
fn chunkLen(q: Params, i: u32) -> u32 { return min(q.chunk, q.len - i * q.chunk); }
// The workgroup's (row, chunk): rows·chunks workgroups on a grid folded into 2D.
fn rowChunk(q: Params, wid: vec3<u32>, nwg: vec3<u32>) -> vec2<u32> {
  let g = wid.x + wid.y * nwg.x;
  return vec2<u32>(g / q.chunks, g % q.chunks);
}

fn weight(q: Params, c: u32) -> f32 {
  if (HAS_W) { return f32(w[q.offW + c]); }
  return 1.0;
}
fn affine(q: Params, c: u32, xh: f32) -> f32 {
  var v = xh * weight(q, c);
  if (HAS_B) { v += f32(b[q.offB + c]); }
  return v;
}

// (mean, M2) of elements [start, start + n) of a row (RMS: mean 0, M2 = Σ x²).
fn moments(q: Params, row: u32, start: u32, n: u32, lid: u32) -> vec2<f32> {
  let base = q.offX + row * q.len + start;
  var m = vec3<f32>(0.0);
  for (var k = lid; k < n; k += WG) {
    let v = f32(x[base + k]);
    if (RMS) {
      m.z += v * v;
    } else {
      m.x += 1.0;
      let d = v - m.y;
      m.y += d / m.x;
      m.z += d * (v - m.y);
    }
  }
  if (RMS) { return vec2<f32>(0.0, wgSum(vec2<f32>(m.z, 0.0), lid).x); }
  return wgMerge(m, lid).yz;
}

// (mean, rstd) of a row, from its elements (ONE_PASS) or its chunks' (mean, M2).
fn rowStats(q: Params, row: u32, lid: u32) -> vec2<f32> {
  var mom: vec2<f32>;
  if (ONE_PASS) {
    mom = moments(q, row, 0u, q.len, lid);
  } else {
    var m = vec3<f32>(0.0);
    for (var i = lid; i < q.chunks; i += WG) { m = merge(m, vec3<f32>(f32(chunkLen(q, i)), fwdPart[row * q.chunks + i])); }
    mom = wgMerge(m, lid).yz;
  }
  return vec2<f32>(mom.x, inverseSqrt(mom.y / f32(q.len) + q.eps));
}

@compute @workgroup_size(WG)
fn fwd_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let q = p2;
  let rc = rowChunk(q, wid, nwg);
  if (rc.x >= q.rows) { return; }
  let m = moments(q, rc.x, rc.y * q.chunk, chunkLen(q, rc.y), lid);
  if (lid == 0u) { fwdPartOut[rc.x * q.chunks + rc.y] = m; }
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let q = p6;
  let rc = rowChunk(q, wid, nwg);
  if (rc.x >= q.rows) { return; }
  let row = rc.x;
  let st = rowStats(q, row, lid);
  if (rc.y == 0u && lid == 0u) { statsOut[row] = st; }
  let start = rc.y * q.chunk;
  let end = start + chunkLen(q, rc.y);
  var ch = channelAt(q, row, start + lid);
  for (var k = start + lid; k < end; k += WG) {
    let i = row * q.len + k;
    var v = affine(q, ch.c, (f32(x[q.offX + i]) - st.x) * st.y);
    if (SILU) { v = silu_(v); }
    y[i] = {{T}}(v);
    nextChannel(&ch);
  }
}

// (xh, d) of element k of a row: the normalised input and the gradient of the affine output.
fn elemGrad(q: Params, row: u32, k: u32, c: u32, st: vec2<f32>) -> vec2<f32> {
  let i = row * q.len + k;
  let xh = (f32(x[q.offX + i]) - st.x) * st.y;
  var d = f32(dy[q.offG + i]);
  if (SILU) { d *= silu_grad_(affine(q, c, xh)); }
  return vec2<f32>(xh, d);
}

// (Σ gh, Σ gh·xh) over elements [start, end) of a row.
fn gradSums(q: Params, row: u32, start: u32, end: u32, lid: u32) -> vec2<f32> {
  let st = stats[row];
  var acc = vec2<f32>(0.0);
  var ch = channelAt(q, row, start + lid);
  for (var k = start + lid; k < end; k += WG) {
    let e = elemGrad(q, row, k, ch.c, st);
    let gh = e.y * weight(q, ch.c);
    acc += vec2<f32>(gh, gh * e.x);
    nextChannel(&ch);
  }
  return wgSum(acc, lid);
}

@compute @workgroup_size(WG)
fn bwd_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let q = p6;
  let rc = rowChunk(q, wid, nwg);
  if (rc.x >= q.rows) { return; }
  let start = rc.y * q.chunk;
  let s = gradSums(q, rc.x, start, start + chunkLen(q, rc.y), lid);
  if (lid == 0u) { partOut[rc.x * q.chunks + rc.y] = s; }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let q = p7;
  let rc = rowChunk(q, wid, nwg);
  if (rc.x >= q.rows) { return; }
  let row = rc.x;
  var sums: vec2<f32>;
  if (ONE_PASS) {
    sums = gradSums(q, row, 0u, q.len, lid);
  } else {
    var acc = vec2<f32>(0.0);
    for (var i = lid; i < q.chunks; i += WG) { acc += part[row * q.chunks + i]; }
    sums = wgSum(acc, lid);
  }
  let mgh = select(sums.x / f32(q.len), 0.0, RMS);
  let mghx = sums.y / f32(q.len);
  let st = stats[row];
  let start = rc.y * q.chunk;
  let end = start + chunkLen(q, rc.y);
  var ch = channelAt(q, row, start + lid);
  for (var k = start + lid; k < end; k += WG) {
    let e = elemGrad(q, row, k, ch.c, st);
    dx[row * q.len + k] = {{T}}(st.y * (e.y * weight(q, ch.c) - mgh - e.x * mghx));
    nextChannel(&ch);
  }
}

// Workgroup (x: channel tile of TC, y: split): partial (Σ d·xh, Σ d) over the split's
// (sample, element) positions of each channel, lanes summed in workgroup memory.
@compute @workgroup_size(WG)
fn affine_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let q = p6;
  let cpg = q.len / q.hw;
  let nc = q.groups * cpg;
  let cl = lid % TC;
  let rl = lid / TC;
  let c = wid.x * TC + cl;
  let start = wid.y * q.chunk;
  let end = min(start + q.chunk, q.rows / q.groups * q.hw);
  var acc = vec2<f32>(0.0);
  if (c < nc) {
    let g = c / cpg;
    let k0 = c % cpg * q.hw;
    for (var j = start + rl; j < end; j += RL) {
      let row = j / q.hw * q.groups + g;
      let e = elemGrad(q, row, k0 + j % q.hw, c, stats[row]);
      acc += vec2<f32>(e.y * e.x, e.y);
    }
  }
  red[lid] = acc;
  workgroupBarrier();
  for (var s = RL / 2u; s > 0u; s >>= 1u) {
    if (rl < s) { red[lid] += red[lid + s * TC]; }
    workgroupBarrier();
  }
  if (rl == 0u && c < nc) { partOut[wid.y * nc + c] = red[lid]; }
}

@compute @workgroup_size(WG)
fn affine_reduce(@builtin(global_invocation_id) gid: vec3<u32>) {
  let q = p3;
  let nc = q.groups * (q.len / q.hw);
  let c = gid.x;
  if (c >= nc) { return; }
  var acc = vec2<f32>(0.0);
  for (var s = 0u; s < q.chunks; s++) { acc += affinePart[s * nc + c]; }
  dw[c] = {{T}}(acc.x);
  db[c] = {{T}}(acc.y);
}
