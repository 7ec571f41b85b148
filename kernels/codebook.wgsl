// Vector-quantiser codebook kernels (LlamaGen VectorQuantizer with l2_norm): queries are the
// C-vectors along axis 1 of z [N, C, ...spatial] (query r = (n, s): element c at
// n·C·S + c·S + s, S = spatial size; a [M, C] matrix is the case S = 1), codes the rows of
// the codebook W [K, C]. Both are l2-normalised as F.normalize (x / max(|x|, 1e-12)).
//   nearest        per split of the codebook, each query's best (distance, index):
//                  argmin_k |e_k|² - 2 u·e_k (|u|² is the same for every k), ties to the
//                  lowest k as torch.argmin. Normalises both sides on the fly.
//   pick           merges the splits' bests, in split order (ties to the lowest index)
//   lookup         out[n, :, s] = normalize(W[ids[r]]) (ids outside [0, K) give zeros)
//   normalize      y = x / max(|x|, eps) along the C axis of the same layout
//   normalize_grad dx = (g - y·(y·g)) / |x|  (g / eps where |x| <= eps: the clamp is constant)
//
// nearest: a workgroup owns WG·QPT queries (thread lid the queries base + lid + q·WG, so
// loads coalesce), held normalised in registers as CC4 vec4s each. The codes of its split
// pass through workgroup memory in tiles of TK rows (channels zero-padded to CC4·4); every
// code read from the tile serves the thread's QPT queries. Splits keep a GPU busy when there
// are few queries (256 tokens of one image) and many codes.
const WG = 64u;
const QPT = {{QPT}}u;  // queries per thread
const CC4 = {{CC4}}u;  // vec4s per (padded) vector: ceil(C / 4)
const TK = {{TK}}u;    // codes per tile
const EPS = 1e-12;

struct Params {
  m: u32,        // vectors (N·S)
  c: u32,        // C, the vector length
  k: u32,        // K, codes
  s: u32,        // S, the spatial size (stride of the C axis)
  offA: u32,     // element offset of z / x / ids in its binding
  offB: u32,     // element offset of W / g in its binding
  perSplit: u32, // codes per split (a multiple of TK)
  splits: u32,
}

// Bindings per entry point ((w) = written):
//   nearest         z0 codes1 bestIdx2(w) bestDist3(w)               params4
//   pick            ids0 (the splits' bestIdx) partDist1 bestIdx2(w)  params3
//   lookup          ids0 codes1 outC2(w)                              params3
//   normalize       z0 normOut1(w)                                    params2
//   normalize_grad  z0 g1 gradOut2(w)                                 params3
@group(0) @binding(0) var<storage, read> z: array<{{TZ}}>;
@group(0) @binding(1) var<storage, read> codes: array<{{TC}}>;
@group(0) @binding(2) var<storage, read_write> bestIdx: array<i32>;
@group(0) @binding(3) var<storage, read_write> bestDist: array<f32>;
@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> partDist: array<f32>;
@group(0) @binding(2) var<storage, read_write> outC: array<{{TC}}>;
@group(0) @binding(1) var<storage, read_write> normOut: array<{{TZ}}>;
@group(0) @binding(1) var<storage, read> g: array<{{TZ}}>;
@group(0) @binding(2) var<storage, read_write> gradOut: array<{{TZ}}>;
@group(0) @binding(2) var<uniform> p2: Params;
@group(0) @binding(3) var<uniform> p3: Params;
@group(0) @binding(4) var<uniform> p4: Params;

// Element offset of channel 0 of query r (channel c adds c·S).
fn vecBase(q: Params, r: u32) -> u32 { return q.offA + (r / q.s) * q.c * q.s + r % q.s; }

var<workgroup> tile: array<vec4<f32>, TK * CC4>;
var<workgroup> codeNorm: array<vec2<f32>, TK>;  // (1 / max(|w|, eps), |e|²)

@compute @workgroup_size(WG)
fn nearest(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let q = p4;
  let r0 = wid.x * WG * QPT + lid;
  // Queries past M are clamped to the last one (computed, never stored): every thread
  // stays in the loops, whose barriers need them all.
  var u: array<array<vec4<f32>, CC4>, QPT>;
  for (var i = 0u; i < QPT; i++) {
    let base = vecBase(q, min(r0 + i * WG, q.m - 1u));
    var ss = 0.0;
    for (var j = 0u; j < CC4; j++) {
      for (var e = 0u; e < 4u; e++) {
        let c = j * 4u + e;
        let v = select(0.0, f32(z[base + min(c, q.c - 1u) * q.s]), c < q.c);
        u[i][j][e] = v;
        ss += v * v;
      }
    }
    let inv = 1.0 / max(sqrt(ss), EPS);
    for (var j = 0u; j < CC4; j++) { u[i][j] *= inv; }
  }

  let k0 = wid.y * q.perSplit;
  let k1 = min(k0 + q.perSplit, q.k);
  var best: array<f32, QPT>;
  var bestK: array<u32, QPT>;
  for (var i = 0u; i < QPT; i++) {
    best[i] = 0x1.fffffep+127;
    bestK[i] = k0;
  }
  for (var kt = k0; kt < k1; kt += TK) {
    let n = min(TK, k1 - kt);
    workgroupBarrier();  // the previous tile is no longer read
    // Whole vec4s per thread: a component store into workgroup memory may be compiled as a
    // read-modify-write of the vector, which would race with the neighbouring thread's.
    for (var t = lid; t < TK * CC4; t += WG) {
      let kk = t / CC4;
      let row = q.offB + (kt + min(kk, n - 1u)) * q.c;
      var v: vec4<f32>;
      for (var e = 0u; e < 4u; e++) {
        let c = (t % CC4) * 4u + e;
        v[e] = select(0.0, f32(codes[row + min(c, q.c - 1u)]), kk < n && c < q.c);
      }
      tile[t] = v;
    }
    workgroupBarrier();
    for (var kk = lid; kk < TK; kk += WG) {
      var ss = 0.0;
      for (var j = 0u; j < CC4; j++) { ss += dot(tile[kk * CC4 + j], tile[kk * CC4 + j]); }
      let inv = 1.0 / max(sqrt(ss), EPS);
      codeNorm[kk] = vec2<f32>(inv, ss * inv * inv);
    }
    workgroupBarrier();
    for (var kk = 0u; kk < n; kk++) {
      // Explicitly zeroed: Dawn + lavapipe keep an uninitialised loop-local var's value
      // from the previous iteration.
      var dots = array<f32, QPT>();
      for (var j = 0u; j < CC4; j++) {
        let w = tile[kk * CC4 + j];
        for (var i = 0u; i < QPT; i++) { dots[i] += dot(u[i][j], w); }
      }
      let cn = codeNorm[kk];
      for (var i = 0u; i < QPT; i++) {
        let d = cn.y - 2.0 * cn.x * dots[i];
        if (d < best[i]) {
          best[i] = d;
          bestK[i] = kt + kk;
        }
      }
    }
  }
  for (var i = 0u; i < QPT; i++) {
    let r = r0 + i * WG;
    if (r < q.m) {
      bestIdx[wid.y * q.m + r] = i32(bestK[i]);
      bestDist[wid.y * q.m + r] = best[i];
    }
  }
}

@compute @workgroup_size(WG)
fn pick(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let q = p3;
  let r = gid.x + gid.y * nwg.x * WG;
  if (r >= q.m) { return; }
  var d = partDist[r];
  var k = ids[r];
  for (var sp = 1u; sp < q.splits; sp++) {
    let ds = partDist[sp * q.m + r];
    if (ds < d) {
      d = ds;
      k = ids[sp * q.m + r];
    }
  }
  bestIdx[r] = k;
}

@compute @workgroup_size(WG)
fn lookup(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let q = p3;
  let r = gid.x + gid.y * nwg.x * WG;
  if (r >= q.m) { return; }
  let id = ids[q.offA + r];
  let valid = id >= 0 && u32(id) < q.k;
  let row = q.offB + select(0u, u32(id), valid) * q.c;
  var ss = 0.0;
  for (var c = 0u; c < q.c; c++) { let v = f32(codes[row + c]); ss += v * v; }
  let inv = select(0.0, 1.0 / max(sqrt(ss), EPS), valid);
  let base = (r / q.s) * q.c * q.s + r % q.s;
  for (var c = 0u; c < q.c; c++) { outC[base + c * q.s] = {{TC}}(f32(codes[row + c]) * inv); }
}

@compute @workgroup_size(WG)
fn normalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let q = p2;
  let r = gid.x + gid.y * nwg.x * WG;
  if (r >= q.m) { return; }
  let base = vecBase(q, r);
  var ss = 0.0;
  for (var c = 0u; c < q.c; c++) { let v = f32(z[base + c * q.s]); ss += v * v; }
  let inv = 1.0 / max(sqrt(ss), EPS);
  let out = base - q.offA;
  for (var c = 0u; c < q.c; c++) { normOut[out + c * q.s] = {{TZ}}(f32(z[base + c * q.s]) * inv); }
}

@compute @workgroup_size(WG)
fn normalize_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let q = p3;
  let r = gid.x + gid.y * nwg.x * WG;
  if (r >= q.m) { return; }
  let base = vecBase(q, r);
  let gBase = base - q.offA + q.offB;
  var ss = 0.0;
  var xg = 0.0;
  for (var c = 0u; c < q.c; c++) {
    let v = f32(z[base + c * q.s]);
    ss += v * v;
    xg += v * f32(g[gBase + c * q.s]);
  }
  let norm = sqrt(ss);
  let inv = 1.0 / max(norm, EPS);
  // (y·g)·y / |x| = x·(x·g) / |x|³
  let proj = select(0.0, xg * inv * inv, norm > EPS);
  let out = base - q.offA;
  for (var c = 0u; c < q.c; c++) {
    gradOut[out + c * q.s] = {{TZ}}((f32(g[gBase + c * q.s]) - f32(z[base + c * q.s]) * proj) * inv);
  }
}
