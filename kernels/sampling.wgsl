// Next-token sampling from logits [rows (x2 with CFG), V], one workgroup per row, as LlamaGen's
// generate.py sample() with HF top_k_top_p_filtering:
//   l = logits[b] / temperature, with CFG l = uncond + (cond - uncond)·scale first (cond rows
//       are rows 0..rows-1, uncond rows rows..2·rows-1, as torch.split(logits, B)).
//   top-k: keep l >= the k-th largest l (ties at the threshold stay, as `logits < topk[..., -1]`)
//   top-p: of those, keep each token whose strictly larger tokens hold at most p of their
//          probability mass (HF keeps a token when the cumulative mass before it is <= p; tied
//          tokens are kept or dropped together here). The largest token always stays.
//   draw:  the inverse CDF, in token order, of softmax over the kept tokens at a Philox
//          uniform for counter (row, step) under key seed.
//   GREEDY: the lowest index of the largest l (argmax; temperature ignored).
// The thresholds are found without sorting: a logit's order-preserving u32 key is selected bit
// by bit, most significant first (radix selection, one counting or mass pass per bit over the
// row, which stays in global memory and the cache); bits that the smallest and largest
// candidates share are known, which skips passes.
override CFG: bool = false;
override GREEDY: bool = false;
// Threads per row, a power of two: fewer for short rows (each bit of a selection costs a
// reduction over them).
override WG: u32 = 256u;
const NONE = 0xffffffffu;

struct Params {
  rows: u32,        // B, the rows sampled
  v: u32,           // V, the vocabulary
  off: u32,         // element offset of the logits in their binding
  scale: f32,       // CFG scale
  temperature: f32,
  topK: u32,        // 0: off
  topP: f32,        // >= 1: off
  seedLo: u32, seedHi: u32, stepLo: u32, stepHi: u32,
  outOff: u32,      // token b goes to tokens[outOff + b·outStride]
  outStride: u32,
}

@group(0) @binding(0) var<storage, read> logits: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> tokens: array<i32>;
@group(0) @binding(2) var<uniform> p: Params;

#include "common"

var<workgroup> redF: array<f32, WG>;
var<workgroup> redU: array<u32, WG>;

fn logit(row: u32, v: u32) -> f32 {
  var l = f32(logits[p.off + row * p.v + v]);
  if (CFG) {
    let lu = f32(logits[p.off + (row + p.rows) * p.v + v]);
    l = lu + (l - lu) * p.scale;
  }
  return select(l / p.temperature, l, GREEDY);
}

// Order-preserving key: a < b as floats <=> key(a) < key(b) as u32 (-0 counts as +0).
fn key(x: f32) -> u32 {
  let b = bitcast<u32>(select(x, 0.0, x == 0.0));
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Reductions over the workgroup. Each starts with a barrier: every thread has read the
// previous result. workgroupUniformLoad hands every thread the result as a uniform value
// (loops that contain barriers may depend on it).
fn maxF(x: f32, lid: u32) -> f32 {
  workgroupBarrier();
  redF[lid] = x;
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lid < s) { redF[lid] = max(redF[lid], redF[lid + s]); }
  }
  return workgroupUniformLoad(&redF[0]);
}

fn sumF(x: f32, lid: u32) -> f32 {
  workgroupBarrier();
  redF[lid] = x;
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lid < s) { redF[lid] += redF[lid + s]; }
  }
  return workgroupUniformLoad(&redF[0]);
}

fn sumU(x: u32, lid: u32) -> u32 {
  workgroupBarrier();
  redU[lid] = x;
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lid < s) { redU[lid] += redU[lid + s]; }
  }
  return workgroupUniformLoad(&redU[0]);
}

fn minU(x: u32, lid: u32) -> u32 {
  workgroupBarrier();
  redU[lid] = x;
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lid < s) { redU[lid] = min(redU[lid], redU[lid + s]); }
  }
  return workgroupUniformLoad(&redU[0]);
}

// Where a search for the largest key with some property starts when every candidate lies in
// [lo, hi]: the bits they share, and how many bits below them are left to decide.
fn searchStart(lo: u32, hi: u32) -> vec2<u32> {
  let bits = 32u - countLeadingZeros(lo ^ hi);
  return vec2<u32>(lo & ~select((1u << bits) - 1u, 0xffffffffu, bits == 32u), bits);
}

// Mass exp(l - m) of the tokens with key >= t.
fn massFrom(row: u32, t: u32, m: f32, lid: u32) -> f32 {
  var s = 0.0;
  for (var v = lid; v < p.v; v += WG) {
    let l = logit(row, v);
    if (key(l) >= t) { s += exp(l - m); }
  }
  return sumF(s, lid);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= p.rows) { return; }
  let dst = p.outOff + row * p.outStride;

  var hi = -0x1.fffffep+127;
  var lo = 0x1.fffffep+127;
  for (var v = lid; v < p.v; v += WG) {
    let l = logit(row, v);
    hi = max(hi, l);
    lo = min(lo, l);
  }
  let m = maxF(hi, lid);

  if (GREEDY) {
    var first = NONE;
    for (var v = lid; v < p.v; v += WG) {
      if (logit(row, v) == m) {
        first = v;
        break;
      }
    }
    first = minU(first, lid);
    if (lid == 0u) { tokens[dst] = i32(select(first, 0u, first == NONE)); }
    return;
  }

  // Kept: key >= thr. top-k: the largest thr with at least k keys >= thr.
  let keyMax = key(m);
  var thr = key(-maxF(-lo, lid));
  if (p.topK > 0u && p.topK < p.v) {
    let start = searchStart(thr, keyMax);
    thr = start.x;
    for (var bit = start.y; bit > 0u; bit--) {
      let cand = thr | (1u << (bit - 1u));
      var n = 0u;
      for (var v = lid; v < p.v; v += WG) { n += select(0u, 1u, key(logit(row, v)) >= cand); }
      if (sumU(n, lid) >= p.topK) { thr = cand; }
    }
  }
  // top-p: the largest thr whose keys >= thr hold more than p of the top-k mass; the tokens
  // above it hold at most p, so it is the last token the nucleus needs.
  if (p.topP < 1.0) {
    let goal = p.topP * massFrom(row, thr, m, lid);
    let start = searchStart(thr, keyMax);
    var t = start.x;
    for (var bit = start.y; bit > 0u; bit--) {
      let cand = t | (1u << (bit - 1u));
      if (massFrom(row, max(cand, thr), m, lid) > goal) { t = cand; }
    }
    thr = max(t, thr);
  }

  // Draw at u·(kept mass): thread lid owns the tokens [v0, v1) and their kept mass s; an
  // inclusive scan of s over the threads finds the thread whose range holds that point, which
  // walks its tokens.
  let chunk = (p.v + WG - 1u) / WG;
  let v0 = min(lid * chunk, p.v);
  let v1 = min(v0 + chunk, p.v);
  var s = 0.0;
  for (var v = v0; v < v1; v++) {
    let l = logit(row, v);
    if (key(l) >= thr) { s += exp(l - m); }
  }
  workgroupBarrier();
  redF[lid] = s;
  workgroupBarrier();
  for (var off = 1u; off < WG; off <<= 1u) {
    var add = 0.0;
    if (lid >= off) { add = redF[lid - off]; }
    workgroupBarrier();
    redF[lid] += add;
    workgroupBarrier();
  }
  let incl = redF[lid];
  let excl = select(0.0, redF[max(lid, 1u) - 1u], lid > 0u);
  let u = unit_(philox_(vec4<u32>(row, p.stepLo, p.stepHi, 0u), vec2<u32>(p.seedLo, p.seedHi)).x);
  let at = u * redF[WG - 1u];
  // The first thread with mass whose inclusive sum passes `at`; if rounding leaves none, the
  // last thread with mass.
  let first = minU(select(NONE, lid, s > 0.0 && incl > at), lid);
  let lastRev = minU(select(NONE, WG - 1u - lid, s > 0.0), lid);
  let owner = select(select(WG - 1u - lastRev, 0u, lastRev == NONE), first, first != NONE);
  if (lid == owner) {
    var c = excl;
    var pick = v0;
    for (var v = v0; v < v1; v++) {
      let l = logit(row, v);
      if (key(l) >= thr) {
        pick = v;
        c += exp(l - m);
        if (c > at) { break; }
      }
    }
    tokens[dst] = i32(pick);
  }
}
