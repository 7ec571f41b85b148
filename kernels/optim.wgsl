// Optimiser updates, one thread per element of a parameter tensor, and the global L2 norm
// of a set of gradients for clipping (torch.nn.utils.clip_grad_norm_). Entry points:
//   adamw:     torch.optim.AdamW: p *= 1 - lr*wd; m, v moving averages of g and g²;
//              p -= stepSize * m / (sqrt(v) / sqrt(1 - beta2^t) + eps), stepSize = lr / (1 - beta1^t)
//   sgd:       torch.optim.SGD: weight decay, then (MOMENTUM) the buffer `buf` with dampening
//              and nesterov; without MOMENTUM `buf` is bound to a placeholder and never touched
//   sumsq:     partial sums of g², one per workgroup of CHUNK elements, into partials[slot + workgroup]
//   clip_coef: sums `count` partials into coef = [norm, min(1, maxNorm / (norm + 1e-6))]
//   scale:     g *= coef[1], in place
// P_T / G_T are the parameter / gradient storage types; the state and the math are f32.
// Step-dependent scalars (bias corrections, 1 - beta) are computed on the host in float64.
override MOMENTUM: bool = false;
const WG = 256u;
const ITEMS = 16u;  // per thread in sumsq
const CHUNK = WG * ITEMS;

struct AdamParams {
  n: u32, offP: u32, offG: u32, offM: u32, offV: u32,
  decay: f32,        // 1 - lr * weight_decay
  beta1: f32, oneMinusBeta1: f32,
  beta2: f32, oneMinusBeta2: f32,
  stepSize: f32, bc2Sqrt: f32, eps: f32,
}
struct SgdParams {
  n: u32, offP: u32, offG: u32, offB: u32,
  first: u32,        // the momentum buffer starts as the first step's d_p (no dampening)
  nesterov: u32,
  lr: f32, wd: f32, momentum: f32, oneMinusDampening: f32,
}
struct NormParams { n: u32, offG: u32, slot: u32 }
struct CoefParams { count: u32, maxNorm: f32 }

// Entry points give binding numbers their own variables (each gets its own auto layout).
@group(0) @binding(0) var<storage, read_write> p: array<{{P_T}}>;
@group(0) @binding(1) var<storage, read> g: array<{{G_T}}>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<uniform> ap: AdamParams;
@group(0) @binding(3) var<uniform> sp: SgdParams;

@group(0) @binding(0) var<storage, read> gIn: array<{{G_T}}>;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<uniform> np: NormParams;
@group(0) @binding(0) var<storage, read> partialsIn: array<f32>;
@group(0) @binding(1) var<storage, read_write> coef: array<f32>;
@group(0) @binding(2) var<uniform> cp: CoefParams;
@group(0) @binding(0) var<storage, read_write> gOut: array<{{G_T}}>;
@group(0) @binding(1) var<storage, read> coefIn: array<f32>;

var<workgroup> red: array<f32, WG>;

fn reduceSum(x: f32, lid: u32) -> f32 {
  red[lid] = x;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  return red[0];
}

fn linearId(gid: vec3<u32>, nwg: vec3<u32>) -> u32 { return gid.x + gid.y * nwg.x * WG; }

@compute @workgroup_size(WG)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = linearId(gid, nwg);
  if (i >= ap.n) { return; }
  let gi = f32(g[ap.offG + i]);
  let mi = ap.beta1 * m[ap.offM + i] + ap.oneMinusBeta1 * gi;
  let vi = ap.beta2 * v[ap.offV + i] + ap.oneMinusBeta2 * gi * gi;
  m[ap.offM + i] = mi;
  v[ap.offV + i] = vi;
  let pi = f32(p[ap.offP + i]) * ap.decay;
  p[ap.offP + i] = {{P_T}}(pi - ap.stepSize * mi / (sqrt(vi) / ap.bc2Sqrt + ap.eps));
}

@compute @workgroup_size(WG)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = linearId(gid, nwg);
  if (i >= sp.n) { return; }
  let pi = f32(p[sp.offP + i]);
  var d = f32(g[sp.offG + i]) + sp.wd * pi;
  if (MOMENTUM) {
    var b = d;
    if (sp.first == 0u) { b = sp.momentum * m[sp.offB + i] + sp.oneMinusDampening * d; }
    m[sp.offB + i] = b;
    d = select(b, d + sp.momentum * b, sp.nesterov != 0u);
  }
  p[sp.offP + i] = {{P_T}}(pi - sp.lr * d);
}

@compute @workgroup_size(WG)
fn sumsq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let w = wid.x + wid.y * nwg.x;
  let start = w * CHUNK;
  var acc = 0.0;
  // adjacent threads read adjacent elements
  for (var k = 0u; k < ITEMS; k++) {
    let i = start + k * WG + lid;
    if (i < np.n) { let x = f32(gIn[np.offG + i]); acc += x * x; }
  }
  let s = reduceSum(acc, lid);
  if (lid == 0u && start < np.n) { partials[np.slot + w] = s; }
}

@compute @workgroup_size(WG)
fn clip_coef(@builtin(local_invocation_index) lid: u32) {
  var acc = 0.0;
  for (var k = lid; k < cp.count; k += WG) { acc += partialsIn[k]; }
  let norm = sqrt(reduceSum(acc, lid));
  if (lid == 0u) {
    coef[0] = norm;
    coef[1] = min(1.0, cp.maxNorm / (norm + 1e-6));
  }
}

@compute @workgroup_size(WG)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = linearId(gid, nwg);
  if (i >= np.n) { return; }
  gOut[np.offG + i] = {{G_T}}(f32(gOut[np.offG + i]) * coefIn[1]);
}
