// Fused scaled-dot-product attention, flash style: O = softmax(Q Kᵀ · scale + bias) V for
// Q [B, H, L, D] and K, V [B, H, S, D] (rows kvRows apart per (b, h): S, or a KV cache's
// capacity), never materialising the L x S scores.
//
// forward:     a workgroup owns BR = WG·RQ queries of one (b, h); each thread RQ of them
//              (rows i0 + r·WG + lid), holding q, the output row and the running max / sum
//              in registers. Tiles of BK keys and values are staged in workgroup memory
//              (coalesced) and every thread reads each staged row: all at the same address
//              (a broadcast), or with GROUP > 1 each lane of a group a share, exchanged by
//              subgroupShuffle. The RQ-row register tile reuses each element RQ times. Writes
//              O and the log-sum-exp per query (natural log) for the backward pass.
// backward_q:  FlashAttention-2 recomputation with the same tiling: Drow = rowsum(dO ∘ O),
//              P = exp(S - lse), dS = P ∘ (dO Vᵀ - Drow), dQ = scale · dS K. Writes Drow.
// backward_kv: the transpose: a thread owns RQ keys (k, v, dK, dV in registers) and streams
//              tiles of queries, dO, lse and Drow: dV = Pᵀ dO, dK = scale · dSᵀ Q.
// decode:      a few new queries against a KV cache: a workgroup per (query, CHUNK keys),
//              each thread a few keys and their (max, sum, unnormalised o), merged by a
//              tree in workgroup memory. With several chunks the partial triples go to a
//              scratch buffer and decode_combine merges them (split-K); with one chunk
//              decode writes O directly.
//
// Key j is visible from query i when j < S, keyPadding[b, j] != 0 (flag PAD) and, with
// flag CAUSAL, j <= i + causalOff (causalOff = S - L: the queries are the last L positions,
// as with a KV cache; for L == S this is torch's is_causal). Flag MASK adds mask[b, h, i, j]
// (strided; zero strides broadcast). The flags are runtime Params rather than override
// constants: their branches are uniform, and software adapters take seconds to compile each
// pipeline. A key whose biased score is below -1e30 (an additive -inf) gets zero weight; a
// query that sees no key outputs zeros with lse = -1e30·ln 2 (PyTorch gives NaN). Scores are kept in log2 units (q is pre-scaled by scale·log2 e) so
// the exponentials are exp2. Accumulation is f32 whatever the storage type T.
{{ENABLE}}
const D = {{HEAD_DIM}}u;  // a text define: private arrays cannot be override-sized
const D4 = D / 4u;
const RQ = {{RQ}}u;       // rows (queries, or keys in backward_kv) per thread
const GROUP = {{GROUP}}u; // lanes splitting the loads of each staged row (1: every lane loads it all)
const KL = (D4 + GROUP - 1u) / GROUP;  // vec4s of a staged row each lane loads
const WG = 64u;
const BR = WG * RQ;       // rows per workgroup
const BK = select(select(8u, 16u, D <= 128u), 32u, D <= 64u);  // staged keys (queries in backward_kv) per tile
const CHUNK = 512u;       // decode: keys per workgroup
const DK = CHUNK / WG;    // decode: keys per thread
const CAUSAL = 1u;
const PAD = 2u;
const MASK = 4u;
// Whether the loops that move whole rows between memory and registers (the prologues and
// epilogues) run to the constant D4 and get unrolled: on GPUs this keeps the rows in
// registers. Software adapters turn every unrolled load into per-lane branches,
// and their shader compiler's time grows with the square of the branch count, so they take
// the runtime bound P.d4 instead: the rows live in (cached) memory, the hot key loops stay
// unrolled, and compiling takes seconds instead of a minute.
override UNROLL_ROWS: bool = true;

const LOG2E = 1.4426950408889634;
const LN2 = 0.6931471805599453;
const MASKED = -3.0e38;  // score of an invisible key: exp2(MASKED - any finite max) == 0
const EMPTY = -1.0e30;   // running max before any visible key

// Row data (Q, K, V, O and their gradients) is bound as vec4s: offQ .. offDO count vec4s.
struct Params {
  L: u32, S: u32, H: u32, kvRows: u32, flags: u32, d4: u32,
  offQ: u32, offK: u32, offV: u32, offPad: u32, offMask: u32, offO: u32, offDO: u32,
  padRow: u32, maskB: u32, maskH: u32, maskRow: u32,  // strides (elements); keys are contiguous
  causalOff: i32,
  scale: f32,
  nChunks: u32,
}

// Bindings 0-4 are common to the attention entry points; each entry point then has its
// own outputs and its uniform Params right after its last storage binding (entry points
// may give one binding number different variables).
@group(0) @binding(0) var<storage, read> Q: array<vec4<{{T}}>>;
@group(0) @binding(1) var<storage, read> K: array<vec4<{{T}}>>;
@group(0) @binding(2) var<storage, read> V: array<vec4<{{T}}>>;
@group(0) @binding(3) var<storage, read> pad: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<{{MASK_T}}>;
// forward, decode
@group(0) @binding(5) var<storage, read_write> O: array<vec4<{{T}}>>;
@group(0) @binding(6) var<storage, read_write> lseOut: array<f32>;  // forward
@group(0) @binding(6) var<storage, read_write> part: array<f32>;    // decode
@group(0) @binding(7) var<uniform> pF: Params;
// backward_q, backward_kv
@group(0) @binding(5) var<storage, read> Oin: array<vec4<{{T}}>>;           // backward_q
@group(0) @binding(5) var<storage, read_write> dK: array<vec4<{{T}}>>;      // backward_kv
@group(0) @binding(6) var<storage, read> dO: array<vec4<{{T}}>>;
@group(0) @binding(7) var<storage, read> lse: array<f32>;
@group(0) @binding(8) var<storage, read_write> Drow: array<f32>;     // written by backward_q
@group(0) @binding(9) var<storage, read_write> dQ: array<vec4<{{T}}>>;      // backward_q
@group(0) @binding(9) var<storage, read_write> dV: array<vec4<{{T}}>>;      // backward_kv
@group(0) @binding(10) var<uniform> pB: Params;
// decode_combine
@group(0) @binding(0) var<storage, read> partIn: array<f32>;
@group(0) @binding(1) var<storage, read_write> Oc: array<vec4<{{T}}>>;
@group(0) @binding(2) var<uniform> pC: Params;

var<private> P: Params;  // the entry point's Params, for the helpers
var<private> lane: u32;  // subgroup invocation id (GROUP > 1)

alias Rows = array<vec4<f32>, RQ * D4>;  // RQ rows of D in registers
alias Row = array<vec4<f32>, D4>;
alias Part = array<vec4<f32>, KL>;  // a lane's share of a staged row
alias PerRow = array<f32, RQ>;

var<workgroup> tileA: array<vec4<f32>, BK * D4>;  // K (forward, backward_q) or Q (backward_kv)
var<workgroup> tileB: array<vec4<f32>, BK * D4>;  // V or dO
var<workgroup> tileC: array<f32, BK>;             // key bias, or the queries' lse (log2)
var<workgroup> tileD: array<f32, BK>;             // backward_kv: the queries' Drow
var<workgroup> oTree: array<vec4<f32>, WG / 2u * D4>;  // decode's merge of per-thread results
var<workgroup> mlTree: array<vec2<f32>, WG / 2u>;

fn rowEnd() -> u32 { return select(P.d4, D4, UNROLL_ROWS); }

// Row `row` of a [rows, D] vec4 array starting at vec4 `base`, times s.
fn loadRow(buf: ptr<storage, array<vec4<{{T}}>>, read>, base: u32, row: u32, s: f32) -> Row {
  var x: Row;
  for (var c = 0u; c < rowEnd(); c++) { x[c] = vec4<f32>((*buf)[base + row * D4 + c]) * s; }
  return x;
}

// This thread's RQ rows (i0 + r·WG + lid, clamped to n - 1: rows past n compute unwritten copies).
fn loadRows(buf: ptr<storage, array<vec4<{{T}}>>, read>, base: u32, i0: u32, lid: u32, n: u32, s: f32) -> Rows {
  var x: Rows;
  for (var r = 0u; r < RQ; r++) {
    let row = loadRow(buf, base, min(i0 + r * WG + lid, n - 1u), s);
    for (var c = 0u; c < rowEnd(); c++) { x[r * D4 + c] = row[c]; }
  }
  return x;
}

// Every thread needs all of staged row j. With GROUP lanes of a subgroup sharing the work,
// each loads vec4s lane % GROUP, + GROUP, ... (clamped past D4) and rowVec() fetches the
// rest from its neighbours with subgroupShuffle: on software adapters, which run each
// lane's memory access separately, that divides the loads of the hot loops by GROUP.
fn tilePart(t: ptr<workgroup, array<vec4<f32>, BK * D4>>, j: u32) -> Part {
  var x: Part;
  for (var k = 0u; k < KL; k++) { x[k] = (*t)[j * D4 + min(k * GROUP + lane % GROUP, D4 - 1u)]; }
  return x;
}

// Vec4 c of the row whose shares the group's lanes hold in x.
fn rowVec(x: ptr<function, Part>, c: u32) -> vec4<f32> {
  let v = (*x)[c / GROUP];
  return {{BCAST}};
}

// Dot products of each of the RQ rows of x with the staged row y.
fn dots(x: ptr<function, Rows>, y: ptr<function, Part>) -> PerRow {
  var a: PerRow;
  for (var r = 0u; r < RQ; r++) { a[r] = 0.0; }
  for (var c = 0u; c < D4; c++) {
    let yc = rowVec(y, c);
    for (var r = 0u; r < RQ; r++) { a[r] += dot((*x)[r * D4 + c], yc); }
  }
  return a;
}

// x[r] += a[r] · y for each of the RQ rows of x and the staged row y.
fn axpy(x: ptr<function, Rows>, a: PerRow, y: ptr<function, Part>) {
  for (var c = 0u; c < D4; c++) {
    let yc = rowVec(y, c);
    for (var r = 0u; r < RQ; r++) { (*x)[r * D4 + c] += a[r] * yc; }
  }
}

fn storeRows(out: ptr<storage, array<vec4<{{T}}>>, read_write>, base: u32, x: ptr<function, Rows>, s: PerRow, i0: u32, lid: u32, n: u32) {
  for (var r = 0u; r < RQ; r++) {
    let i = i0 + r * WG + lid;
    if (i >= n) { continue; }
    for (var c = 0u; c < rowEnd(); c++) { (*out)[base + i * D4 + c] = vec4<{{T}}>((*x)[r * D4 + c] * s[r]); }
  }
}

// 0 for a visible key j of batch b, MASKED for padding or past S.
fn keyBias(b: u32, j: u32) -> f32 {
  if (j >= P.S) { return MASKED; }
  if ((P.flags & PAD) != 0u && pad[P.offPad + b * P.padRow + j] == 0.0) { return MASKED; }
  return 0.0;
}

// Applies the causal and additive masks to a log2-unit score of query i, key j.
fn maskScore(s: f32, bh: u32, i: u32, j: u32) -> f32 {
  var a = s;
  if ((P.flags & CAUSAL) != 0u && i32(j) > i32(i) + P.causalOff) { a = MASKED; }
  if ((P.flags & MASK) != 0u) {  // uniform; rows past L (never written) read row L - 1
    a += LOG2E * f32(mask[P.offMask + (bh / P.H) * P.maskB + (bh % P.H) * P.maskH + min(i, P.L - 1u) * P.maskRow + j]);
  }
  return max(a, MASKED);
}

// Keys at or past this one are invisible to queries below iEnd. Loop bounds around
// barriers come from the uniform Params, not the private copy P, to stay provably uniform.
fn keyEnd(pu: Params, iEnd: u32) -> u32 {
  if ((pu.flags & CAUSAL) == 0u) { return pu.S; }
  return u32(clamp(i32(iEnd) + pu.causalOff, 0, i32(pu.S)));
}

// Stages keys [j0, j0 + BK) of one (b, h) and their bias: consecutive threads read consecutive vec4s.
fn stageKeys(bh: u32, j0: u32, lid: u32) {
  for (var e = lid; e < BK * D4; e += WG) {
    let j = j0 + e / D4;
    var kv = vec4<f32>(0.0);
    var vv = vec4<f32>(0.0);
    if (j < P.S) {
      let at = (bh * P.kvRows + j) * D4 + e % D4;
      kv = vec4<f32>(K[P.offK + at]);
      vv = vec4<f32>(V[P.offV + at]);
    }
    tileA[e] = kv;
    tileB[e] = vv;
  }
  if (lid < BK) { tileC[lid] = keyBias(bh / P.H, j0 + lid); }
}

// Masked log2-unit scores of this thread's queries (rows i + r·WG) against staged key j.
fn tileScores(q: ptr<function, Rows>, kr: ptr<function, Part>, bh: u32, i: u32, j0: u32, j: u32) -> PerRow {
  var a = dots(q, kr);
  // Without masks and inside S the masking is skipped by a uniform branch: a quarter of the
  // forward's time on software adapters.
  if (P.flags != 0u || j0 + BK > P.S) {
    let kb = tileC[j];
    for (var r = 0u; r < RQ; r++) { a[r] = maskScore(a[r] + kb, bh, i + r * WG, j0 + j); }
  }
  return a;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>, {{LANE}} sg: u32) {
  let lid = lid3.x;
  lane = sg;
  P = pF;
  let bh = wid.y;
  let i0 = wid.x * BR;
  var q = loadRows(&Q, P.offQ + bh * P.L * D4, i0, lid, P.L, P.scale * LOG2E);
  var o: Rows;
  var m: PerRow;
  var l: PerRow;
  for (var r = 0u; r < RQ; r++) {
    m[r] = EMPTY;
    l[r] = 0.0;
    for (var c = 0u; c < D4; c++) { o[r * D4 + c] = vec4<f32>(0.0); }
  }
  let kEnd = keyEnd(pF, min(i0 + BR, pF.L));
  for (var j0 = 0u; j0 < kEnd; j0 += BK) {
    stageKeys(bh, j0, lid);
    workgroupBarrier();
    var s: array<f32, RQ * BK>;
    var mx = m;
    for (var j = 0u; j < BK; j++) {
      var kr = tilePart(&tileA, j);
      let a = tileScores(&q, &kr, bh, i0 + lid, j0, j);
      for (var r = 0u; r < RQ; r++) {
        s[r * BK + j] = a[r];
        mx[r] = max(mx[r], a[r]);
      }
    }
    for (var r = 0u; r < RQ; r++) {
      let corr = exp2(m[r] - mx[r]);
      l[r] *= corr;
      for (var c = 0u; c < D4; c++) { o[r * D4 + c] *= corr; }
    }
    for (var j = 0u; j < BK; j++) {
      var pj: PerRow;
      for (var r = 0u; r < RQ; r++) {
        pj[r] = exp2(s[r * BK + j] - mx[r]);
        l[r] += pj[r];
      }
      var vr = tilePart(&tileB, j);
      axpy(&o, pj, &vr);
    }
    m = mx;
    workgroupBarrier();
  }
  var inv: PerRow;
  for (var r = 0u; r < RQ; r++) {
    inv[r] = select(0.0, 1.0 / l[r], l[r] > 0.0);
    let i = i0 + r * WG + lid;
    if (i < P.L) { lseOut[bh * P.L + i] = select(EMPTY, m[r] + log2(l[r]), l[r] > 0.0) * LN2; }
  }
  storeRows(&O, bh * P.L * D4, &o, inv, i0, lid, P.L);
}

@compute @workgroup_size(WG)
fn backward_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>, {{LANE}} sg: u32) {
  let lid = lid3.x;
  lane = sg;
  P = pB;
  let bh = wid.y;
  let i0 = wid.x * BR;
  let base = bh * P.L * D4;
  var q = loadRows(&Q, P.offQ + base, i0, lid, P.L, P.scale * LOG2E);
  var g = loadRows(&dO, P.offDO + base, i0, lid, P.L, 1.0);
  var o = loadRows(&Oin, P.offO + base, i0, lid, P.L, 1.0);
  var dq: Rows;
  var lse2: PerRow;
  var dd: PerRow;
  for (var r = 0u; r < RQ; r++) {
    var dr = 0.0;
    for (var c = 0u; c < D4; c++) {
      dr += dot(g[r * D4 + c], o[r * D4 + c]);
      dq[r * D4 + c] = vec4<f32>(0.0);
    }
    dd[r] = dr;
    let i = i0 + r * WG + lid;
    lse2[r] = lse[bh * P.L + min(i, P.L - 1u)] * LOG2E;
    if (i < P.L) { Drow[bh * P.L + i] = dr; }
  }
  let kEnd = keyEnd(pB, min(i0 + BR, pB.L));
  for (var j0 = 0u; j0 < kEnd; j0 += BK) {
    stageKeys(bh, j0, lid);
    workgroupBarrier();
    for (var j = 0u; j < BK; j++) {
      var kr = tilePart(&tileA, j);
      var vr = tilePart(&tileB, j);
      let s = tileScores(&q, &kr, bh, i0 + lid, j0, j);
      let dp = dots(&g, &vr);
      var ds: PerRow;
      for (var r = 0u; r < RQ; r++) { ds[r] = exp2(s[r] - lse2[r]) * (dp[r] - dd[r]); }
      axpy(&dq, ds, &kr);
    }
    workgroupBarrier();
  }
  var sc: PerRow;
  for (var r = 0u; r < RQ; r++) { sc[r] = P.scale; }
  storeRows(&dQ, base, &dq, sc, i0, lid, P.L);
}

@compute @workgroup_size(WG)
fn backward_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>, {{LANE}} sg: u32) {
  let lid = lid3.x;
  lane = sg;
  P = pB;
  let bh = wid.y;
  let b = bh / P.H;
  let j0 = wid.x * BR;
  let kvBase = bh * P.kvRows * D4;
  var k = loadRows(&K, P.offK + kvBase, j0, lid, P.S, P.scale * LOG2E);
  var v = loadRows(&V, P.offV + kvBase, j0, lid, P.S, 1.0);
  var dk: Rows;
  var dv: Rows;
  var kb: PerRow;
  for (var r = 0u; r < RQ; r++) {
    kb[r] = keyBias(b, j0 + r * WG + lid);
    for (var c = 0u; c < D4; c++) {
      dk[r * D4 + c] = vec4<f32>(0.0);
      dv[r * D4 + c] = vec4<f32>(0.0);
    }
  }
  // As in tileScores: masking only with masks or keys past S.
  let masked = P.flags != 0u || j0 + BR > P.S;
  // Causal: queries before iStart see none of this workgroup's keys.
  var iStart = 0u;
  if ((pB.flags & CAUSAL) != 0u) { iStart = u32(max(i32(j0) - pB.causalOff, 0)) / BK * BK; }
  for (var i0 = iStart; i0 < pB.L; i0 += BK) {
    for (var e = lid; e < BK * D4; e += WG) {
      let i = i0 + e / D4;
      var qv = vec4<f32>(0.0);
      var gv = vec4<f32>(0.0);
      if (i < P.L) {
        let at = (bh * P.L + i) * D4 + e % D4;
        qv = vec4<f32>(Q[P.offQ + at]);
        gv = vec4<f32>(dO[P.offDO + at]);
      }
      tileA[e] = qv;
      tileB[e] = gv;
    }
    if (lid < BK) {
      let i = i0 + lid;
      // A query past L gets lse = +3e38 so every P of it is exp2(-huge) == 0.
      tileC[lid] = select(-MASKED, lse[bh * P.L + i] * LOG2E, i < P.L);
      tileD[lid] = select(0.0, Drow[bh * P.L + i], i < P.L);
    }
    workgroupBarrier();
    for (var ii = 0u; ii < BK; ii++) {
      var qr = tilePart(&tileA, ii);
      var gr = tilePart(&tileB, ii);
      let s = dots(&k, &qr);
      let dp = dots(&v, &gr);
      let lse2 = tileC[ii];
      let dr = tileD[ii];
      var sm = s;
      if (masked) {
        for (var r = 0u; r < RQ; r++) { sm[r] = maskScore(s[r] + kb[r], bh, i0 + ii, j0 + r * WG + lid); }
      }
      var pr: PerRow;
      var ds: PerRow;
      for (var r = 0u; r < RQ; r++) {
        pr[r] = exp2(sm[r] - lse2);
        ds[r] = pr[r] * (dp[r] - dr);
      }
      axpy(&dv, pr, &gr);
      axpy(&dk, ds, &qr);
    }
    workgroupBarrier();
  }
  var sk: PerRow;
  var sv: PerRow;
  for (var r = 0u; r < RQ; r++) {
    sk[r] = P.scale;
    sv[r] = 1.0;
  }
  storeRows(&dK, bh * P.S * D4, &dk, sk, j0, lid, P.S);
  storeRows(&dV, bh * P.S * D4, &dv, sv, j0, lid, P.S);
}

// Grid: x = chunk of CHUNK keys, y = query row (b, h, i) of L (new queries per sequence).
// Thread t owns keys c0 + t + k·WG (k < DK; neighbouring threads read neighbouring rows):
// it scores them, keeps their (max, sum, unnormalised o) like one step of the online
// softmax, and a halving tree through workgroup memory merges the threads' triples.
@compute @workgroup_size(WG)
fn decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  P = pF;
  let row = wid.y;
  let bh = row / P.L;
  let i = row % P.L;
  let c0 = wid.x * CHUNK;
  let c1 = min(c0 + CHUNK, keyEnd(P, i + 1u));
  let kvBase = bh * P.kvRows * D4;
  var q = loadRow(&Q, P.offQ, row, P.scale * LOG2E);
  var s: array<f32, DK>;
  var m = EMPTY;
  for (var k = 0u; k < DK; k++) {
    let j = c0 + lid + k * WG;
    var a = MASKED;
    if (j < c1) {
      a = keyBias(bh / P.H, j);
      for (var c = 0u; c < D4; c++) { a += dot(q[c], vec4<f32>(K[P.offK + kvBase + j * D4 + c])); }
      a = maskScore(a, bh, i, j);
    }
    s[k] = a;
    m = max(m, a);
  }
  var l = 0.0;
  var o: Row;
  for (var c = 0u; c < D4; c++) { o[c] = vec4<f32>(0.0); }
  for (var k = 0u; k < DK; k++) {
    let j = c0 + lid + k * WG;
    if (j < c1) {
      let p = exp2(s[k] - m);
      l += p;
      for (var c = 0u; c < D4; c++) { o[c] += p * vec4<f32>(V[P.offV + kvBase + j * D4 + c]); }
    }
  }
  for (var h = WG / 2u; h > 0u; h >>= 1u) {
    if (lid >= h && lid < 2u * h) {
      mlTree[lid - h] = vec2<f32>(m, l);
      for (var c = 0u; c < D4; c++) { oTree[(lid - h) * D4 + c] = o[c]; }
    }
    workgroupBarrier();
    if (lid < h) {
      let other = mlTree[lid];
      let mm = max(m, other.x);
      let a = exp2(m - mm);
      let b = exp2(other.x - mm);
      l = l * a + other.y * b;
      for (var c = 0u; c < D4; c++) { o[c] = o[c] * a + oTree[lid * D4 + c] * b; }
      m = mm;
    }
    workgroupBarrier();
  }
  if (lid != 0u) { return; }
  if (P.nChunks == 1u) {
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var c = 0u; c < D4; c++) { O[P.offO + row * D4 + c] = vec4<{{T}}>(o[c] * inv); }
    return;
  }
  let at = (row * P.nChunks + wid.x) * (D + 2u);
  part[at] = m;
  part[at + 1u] = l;
  for (var c = 0u; c < D4; c++) {
    for (var e = 0u; e < 4u; e++) { part[at + 2u + c * 4u + e] = o[c][e]; }
  }
}

// Merges decode's per-chunk partials: one workgroup per query row.
@compute @workgroup_size(WG)
fn decode_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.y;
  let n = pC.nChunks;
  var m = EMPTY;
  for (var k = 0u; k < n; k++) { m = max(m, partIn[(row * n + k) * (D + 2u)]); }
  var l = 0.0;
  for (var k = 0u; k < n; k++) {
    let at = (row * n + k) * (D + 2u);
    l += partIn[at + 1u] * exp2(partIn[at] - m);
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  for (var c = lid; c < D4; c += WG) {
    var o = vec4<f32>(0.0);
    for (var k = 0u; k < n; k++) {
      let at = (row * n + k) * (D + 2u);
      let e = at + 2u + c * 4u;
      o += vec4<f32>(partIn[e], partIn[e + 1u], partIn[e + 2u], partIn[e + 3u]) * exp2(partIn[at] - m);
    }
    Oc[pC.offO + row * D4 + c] = vec4<{{T}}>(o * inv);
  }
}
