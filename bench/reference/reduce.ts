// The simplest correct row reductions: one thread per row, a straight loop over its
// elements, read from global memory. Speed baselines of bench/core.bench.ts (f32).
import { device } from '../../runtime/device.ts';
import { Tensor } from '../../runtime/tensor.ts';
import { grid1d } from '../../runtime/ops/util.ts';

export const naiveRowsWGSL = /* wgsl */ `
struct Params { rows: u32, d: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = gid.x + gid.y * nwg.x * 64u;
  if (r >= p.rows) { return; }
  var s = 0.0;
  for (var j = 0u; j < p.d; j++) { s += x[r * p.d + j]; }
  y[r] = s;
}

@compute @workgroup_size(64)
fn softmax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = gid.x + gid.y * nwg.x * 64u;
  if (r >= p.rows) { return; }
  var m = x[r * p.d];
  for (var j = 1u; j < p.d; j++) { m = max(m, x[r * p.d + j]); }
  var s = 0.0;
  for (var j = 0u; j < p.d; j++) { s += exp(x[r * p.d + j] - m); }
  for (var j = 0u; j < p.d; j++) { y[r * p.d + j] = exp(x[r * p.d + j] - m) / s; }
}
`;

function rows(entry: 'sum' | 'softmax', x: Tensor): Tensor {
  const d = x.shape.at(-1)!;
  const n = x.size / d;
  const y = Tensor.empty(entry === 'sum' ? x.shape.slice(0, -1) : x.shape);
  device().dispatch({ kernel: 'rows_naive', source: naiveRowsWGSL, entry, buffers: [x.binding(), y.binding()], params: [n, d], workgroups: grid1d(n, 64) });
  return y;
}

/** Sum over the last axis of a fresh f32 tensor. */
export const naiveRowSum = (x: Tensor): Tensor => rows('sum', x);
/** Softmax over the last axis of a fresh f32 tensor. */
export const naiveSoftmax = (x: Tensor): Tensor => rows('softmax', x);
