// The simplest correct normalisations and gathers: one thread per normalised row (a
// LayerNorm / RMSNorm token, or a GroupNorm (batch, group)) doing three straight passes over
// global memory (mean, variance, write), and one thread per output element for the embedding
// gather. Speed baselines of bench/norm.bench.ts (f32).
import { device, f32 } from '../../runtime/device.ts';
import { Tensor } from '../../runtime/tensor.ts';
import { grid1d } from '../../runtime/ops/util.ts';

export const naiveNormWGSL = /* wgsl */ `
// Row r holds len elements; element j of it scales by channel (r % groups) * (len / hw) + j / hw
// (LayerNorm / RMSNorm: groups = hw = 1, so the channel is j).
struct Params { rows: u32, len: u32, groups: u32, hw: u32, rms: u32, silu: u32, eps: f32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = gid.x + gid.y * nwg.x * 64u;
  if (r >= p.rows) { return; }
  let base = r * p.len;
  var mean = 0.0;
  if (p.rms == 0u) {
    for (var j = 0u; j < p.len; j++) { mean += x[base + j]; }
    mean /= f32(p.len);
  }
  var v = 0.0;
  for (var j = 0u; j < p.len; j++) { let d = x[base + j] - mean; v += d * d; }
  let inv = inverseSqrt(v / f32(p.len) + p.eps);
  let c0 = (r % p.groups) * (p.len / p.hw);
  for (var j = 0u; j < p.len; j++) {
    let c = c0 + j / p.hw;
    var o = (x[base + j] - mean) * inv * w[c];
    if (p.rms == 0u) { o += b[c]; }
    if (p.silu != 0u) { o = o / (1.0 + exp(-o)); }
    y[base + j] = o;
  }
}
`;

function naiveNorm(x: Tensor, w: Tensor, b: Tensor | null, rows: number, groups: number, hw: number, eps: number, silu: boolean): Tensor {
  const y = Tensor.empty(x.shape);
  device().dispatch({
    kernel: 'norm_naive',
    source: naiveNormWGSL,
    buffers: [x.binding(), w.binding(), (b ?? w).binding(), y.binding()],
    params: [rows, x.size / rows, groups, hw, b ? 0 : 1, silu ? 1 : 0, f32(eps)],
    workgroups: grid1d(rows, 64),
  });
  return y;
}

/** GroupNorm of a fresh f32 x [N, C, ...] with weight and bias [C], then SiLU when `silu`. */
export function naiveGroupNorm(x: Tensor, groups: number, w: Tensor, b: Tensor, eps: number, silu: boolean): Tensor {
  const [n, c] = x.shape;
  return naiveNorm(x, w, b, n * groups, groups, x.size / (n * c), eps, silu);
}

/** LayerNorm over the last axis of a fresh f32 x, weight and bias [D]. */
export const naiveLayerNorm = (x: Tensor, w: Tensor, b: Tensor, eps = 1e-5): Tensor => naiveNorm(x, w, b, x.size / x.shape.at(-1)!, 1, 1, eps, false);

/** RMSNorm over the last axis of a fresh f32 x, weight [D]. */
export const naiveRmsNorm = (x: Tensor, w: Tensor, eps = 1e-5): Tensor => naiveNorm(x, w, null, x.size / x.shape.at(-1)!, 1, 1, eps, false);

export const naiveGatherWGSL = /* wgsl */ `
struct Params { n: u32, d: u32 }
@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= p.n * p.d) { return; }
  y[i] = table[u32(ids[i / p.d]) * p.d + i % p.d];
}
`;

/** table[ids] for fresh i32 ids [n] (all in range) and an f32 table [V, D]: [n, D]. */
export function naiveEmbedding(ids: Tensor, table: Tensor): Tensor {
  const d = table.shape[1];
  const y = Tensor.empty([ids.size, d]);
  device().dispatch({ kernel: 'gather_naive', source: naiveGatherWGSL, buffers: [ids.binding(), table.binding(), y.binding()], params: [ids.size, d], workgroups: grid1d(y.size) });
  return y;
}
