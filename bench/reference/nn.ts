// The simplest correct gated units and cross-entropy: one thread per output element (GEGLU,
// SwiGLU) or per row (cross-entropy: max, sum of exponentials and the target's logit in
// straight loops, then one thread for the mean), every operand read from global memory.
// Speed baselines of bench/nn.bench.ts (f32).
import { device } from '../../runtime/device.ts';
import { Tensor } from '../../runtime/tensor.ts';
import { grid1d } from '../../runtime/ops/util.ts';

export const naiveGluWGSL = /* wgsl */ `
// y[r, c] = a[r, c] ∘ b[r, c] with a and b rows of x at element offsets offA, offB and row stride rs.
struct Params { n: u32, h: u32, rs: u32, offA: u32, offB: u32 }
@group(0) @binding(0) var<storage, read> xa: array<f32>;
@group(0) @binding(1) var<storage, read> xb: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

#include "common"

fn at(i: u32) -> u32 { return i / p.h * p.rs + i % p.h; }

@compute @workgroup_size(256)
fn geglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= p.n) { return; }
  y[i] = xa[p.offA + at(i)] * gelu_(xb[p.offB + at(i)]);
}

@compute @workgroup_size(256)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= p.n) { return; }
  y[i] = silu_(xa[p.offA + at(i)]) * xb[p.offB + at(i)];
}
`;

function glu(entry: 'geglu' | 'swiglu', a: Tensor, b: Tensor, h: number, rowStride: number, offB: number): Tensor {
  const rows = a.size / a.shape.at(-1)!;
  const y = Tensor.empty([...a.shape.slice(0, -1), h]);
  device().dispatch({
    kernel: 'glu_naive',
    source: naiveGluWGSL,
    entry,
    buffers: [a.binding(), b.binding(), y.binding()],
    params: [rows * h, h, rowStride, 0, offB],
    workgroups: grid1d(rows * h),
  });
  return y;
}

/** diffusers GEGLU of a fresh f32 x [..., 2H]: x[..., :H] · gelu(x[..., H:]). */
export function naiveGeglu(x: Tensor): Tensor {
  const d = x.shape.at(-1)!;
  return glu('geglu', x, x, d / 2, d, d / 2);
}

/** silu(a) · b for fresh f32 a, b of one shape. */
export function naiveSwiglu(a: Tensor, b: Tensor): Tensor {
  const d = a.shape.at(-1)!;
  return glu('swiglu', a, b, d, d, 0);
}

export const naiveCrossEntropyWGSL = /* wgsl */ `
struct Params { rows: u32, v: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;  // per row, then the mean at [rows]
@group(0) @binding(3) var<uniform> p: Params;
// mean: the row losses alone (an entry point's bindings are only those it uses)
@group(0) @binding(0) var<storage, read_write> lossAll: array<f32>;
@group(0) @binding(1) var<uniform> pm: Params;

@compute @workgroup_size(64)
fn rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = gid.x + gid.y * nwg.x * 64u;
  if (r >= p.rows) { return; }
  var m = x[r * p.v];
  for (var j = 1u; j < p.v; j++) { m = max(m, x[r * p.v + j]); }
  var s = 0.0;
  for (var j = 0u; j < p.v; j++) { s += exp(x[r * p.v + j] - m); }
  loss[r] = m + log(s) - x[r * p.v + u32(targets[r])];
}

@compute @workgroup_size(1)
fn mean() {
  var s = 0.0;
  for (var r = 0u; r < pm.rows; r++) { s += lossAll[r]; }
  lossAll[pm.rows] = s / f32(pm.rows);
}
`;

/** Mean cross-entropy of fresh f32 logits [N, V] against i32 targets [N] (all in range, none ignored). */
export function naiveCrossEntropy(logits: Tensor, targets: Tensor): Tensor {
  const [rows, v] = logits.shape;
  const loss = Tensor.empty([rows + 1]);
  const dev = device();
  const spec = { kernel: 'cross_entropy_naive', source: naiveCrossEntropyWGSL, params: [rows, v] };
  dev.dispatch({ ...spec, entry: 'rows', buffers: [logits.binding(), targets.binding(), loss.binding()], workgroups: grid1d(rows, 64) });
  dev.dispatch({ ...spec, entry: 'mean', buffers: [loss.binding()], workgroups: [1] });
  return loss;
}
