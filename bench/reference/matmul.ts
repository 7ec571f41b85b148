// The simplest correct matmul: one thread per output element, a straight loop over K,
// both operands read from global memory. The speed baseline of bench/core.bench.ts and
// the independent reference of test/matmul-kernel.test.ts.
import { device } from '../../runtime/device.ts';
import { Tensor } from '../../runtime/tensor.ts';
import { grid1d } from '../../runtime/ops/util.ts';

export const naiveMatmulWGSL = /* wgsl */ `
override TA: bool = false;
override TB: bool = false;
struct Params { m: u32, n: u32, k: u32, batch: u32, strideA: u32, strideB: u32, hasBias: u32, act: u32 }
@group(0) @binding(0) var<storage, read> A: array<{{T}}>;
@group(0) @binding(1) var<storage, read> B: array<{{T}}>;
@group(0) @binding(2) var<storage, read> bias: array<{{T}}>;
@group(0) @binding(3) var<storage, read_write> C: array<{{T}}>;
@group(0) @binding(4) var<uniform> p: Params;

#include "common"

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= p.batch * p.m * p.n) { return; }
  let col = i % p.n;
  let row = i / p.n % p.m;
  let b = i / (p.m * p.n);
  var acc = 0.0;
  for (var k = 0u; k < p.k; k++) {
    let a = A[b * p.strideA + select(row * p.k + k, k * p.m + row, TA)];
    let w = B[b * p.strideB + select(k * p.n + col, col * p.k + k, TB)];
    acc += f32(a) * f32(w);
  }
  if (p.hasBias != 0u) { acc += f32(bias[col]); }
  C[i] = {{T}}(activate(acc, p.act));
}
`;

const ACT = { none: 0, relu: 1, gelu: 2, geluTanh: 3, silu: 4 } as const;

export interface NaiveMatmulOptions {
  transA?: boolean;
  transB?: boolean;
  bias?: Tensor;
  act?: keyof typeof ACT;
}

/**
 * opA(a) @ opB(b) (+ bias, activation) on the naive kernel, for fresh tensors a [batch?, M, K]
 * and b [batch?, K, N] (as stored before the transposes); a rank-2 operand is shared by every batch.
 */
export function naiveMatmul(a: Tensor, b: Tensor, o: NaiveMatmulOptions = {}): Tensor {
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [m, k] = o.transA ? [ac, ar] : [ar, ac];
  const n = o.transB ? br : bc;
  const batch = Math.max(a.rank === 3 ? a.shape[0] : 1, b.rank === 3 ? b.shape[0] : 1);
  const c = Tensor.empty(batch > 1 || a.rank === 3 || b.rank === 3 ? [batch, m, n] : [m, n], a.dtype);
  device().dispatch({
    kernel: 'matmul_naive',
    source: naiveMatmulWGSL,
    defines: { T: a.dtype },
    constants: { TA: o.transA ? 1 : 0, TB: o.transB ? 1 : 0 },
    buffers: [a.binding(), b.binding(), (o.bias ?? a).binding(), c.binding()],
    params: [m, n, k, batch, a.rank === 3 ? m * k : 0, b.rank === 3 ? k * n : 0, o.bias ? 1 : 0, ACT[o.act ?? 'none']],
    workgroups: grid1d(c.size),
  });
  return c;
}
