// Batched matmul with transposes and a fused bias + activation epilogue (kernels/matmul.wgsl).
import { device } from '../device.ts';
import { record, needsGrad } from '../autograd.ts';
import { Tensor, numel } from '../tensor.ts';
import { bindRange, broadcastShapes } from './util.ts';
import { unary } from './elementwise.ts';
import { sum, sumTo } from './reduce.ts';
import { expand } from './shape.ts';

export type Activation = 'none' | 'relu' | 'gelu' | 'geluTanh' | 'silu';
const ACT: Record<Activation, number> = { none: 0, relu: 1, gelu: 2, geluTanh: 3, silu: 4 };

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  /** [N], added to every row */
  bias?: Tensor;
  act?: Activation;
}

/** Launches the kernel for a [batch..., M, K] x [batch..., K, N] product (no autograd). */
function launch(a: Tensor, b: Tensor, o: MatmulOptions): Tensor {
  if (a.rank < 2 || b.rank < 2) throw new Error(`matmul needs rank >= 2 operands, got [${a.shape}] and [${b.shape}]`);
  if (a.dtype !== b.dtype) throw new Error(`matmul: dtypes differ (${a.dtype} vs ${b.dtype})`);
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [m, k] = o.transA ? [ac, ar] : [ar, ac];
  const [kb, n] = o.transB ? [bc, br] : [br, bc];
  if (k !== kb)
    throw new Error(`matmul: inner dimensions differ: [${a.shape}]${o.transA ? 'ᵀ' : ''} x [${b.shape}]${o.transB ? 'ᵀ' : ''}`);
  if (o.bias && (o.bias.rank !== 1 || o.bias.shape[0] !== n)) throw new Error(`matmul: bias [${o.bias.shape}] must be [${n}]`);
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const batch = broadcastShapes(batchA, batchB);
  const nb = numel(batch);
  // An operand is either batched like the output or shared by every batch (stride 0).
  const strideOf = (t: Tensor, bs: number[]): number => {
    if (numel(bs) === nb && bs.length === batch.length) return t.shape.at(-1)! * t.shape.at(-2)!;
    if (numel(bs) === 1) return 0;
    throw new Error(`matmul: batch shapes [${batchA}] and [${batchB}] need expand() first`);
  };
  const sA = strideOf(a, batchA);
  const sB = strideOf(b, batchB);
  const out = Tensor.empty([...batch, m, n], a.dtype);
  if (out.size === 0) return out;
  const ra = bindRange(a);
  const rb = bindRange(b);
  const rbias = bindRange(o.bias ?? a);
  device().dispatch({
    kernel: 'matmul',
    defines: { T: a.dtype },
    constants: { TA: o.transA ? 1 : 0, TB: o.transB ? 1 : 0, HAS_BIAS: o.bias ? 1 : 0, ACT: ACT[o.act ?? 'none'] },
    buffers: [ra.binding, rb.binding, rbias.binding, out.binding()],
    params: [m, n, k, sA, sB, m * n, ra.elemOffset, rb.elemOffset, 0, rbias.elemOffset],
    workgroups: [Math.ceil(n / 64), Math.ceil(m / 64), nb],
  });
  return out;
}

/**
 * C = act(opA(a) @ opB(b) + bias). Batch axes broadcast; an operand without batch axes
 * is shared. With gradients on and an activation, the activation runs as its own op so
 * its backward sees the pre-activation.
 */
export function matmul(a: Tensor, b: Tensor, o: MatmulOptions = {}): Tensor {
  const act = o.act ?? 'none';
  const grad = needsGrad(a, b, o.bias);
  if (grad && act !== 'none') {
    const pre = matmul(a, b, { ...o, act: 'none' });
    const y = unary(act, pre);
    pre.dispose();
    return y;
  }
  // Fold a's batch into M when b is shared and a is not transposed: one big GEMM.
  let y: Tensor;
  if (!o.transA && a.rank > 2 && b.rank === 2) {
    const a2 = a.view([numel(a.shape.slice(0, -1)), a.shape.at(-1)!]);
    const y2 = launch(a2, b, o);
    a2.dispose();
    y = y2.view([...a.shape.slice(0, -1), y2.shape[1]]);
    y2.dispose();
  } else y = launch(a, b, o);
  if (!grad) return y;
  const ta = !!o.transA;
  const tb = !!o.transB;
  return record('matmul', y, [a, b, o.bias ?? null], [a, b], (g, [as, bs]) => {
    // dA = g opB(B)ᵀ, dB = opA(A)ᵀ g, written with the kernel's transposes (no copies).
    const da = ta ? mm(bs, g, tb, true) : mm(g, bs, false, !tb);
    const db = tb ? mm(g, as, true, ta) : mm(as, g, !ta, false);
    const gb = o.bias ? sum(g, g.shape.slice(0, -1).map((_, i) => i)) : null;
    return [sumTo(da, as.shape, true), sumTo(db, bs.shape, true), gb];
  });
}

function mm(x: Tensor, y: Tensor, transA: boolean, transB: boolean): Tensor {
  // Gradient products whose batch shapes differ (a shared operand) need both batched.
  if (x.rank !== y.rank && x.rank > 2 && y.rank > 2) {
    const big = x.rank > y.rank ? x : y;
    const batch = big.shape.slice(0, -2);
    const e = (t: Tensor) => (t === big ? t : expand(t, [...batch, ...t.shape.slice(-2)]));
    const ex = e(x), ey = e(y);
    const r = launch(ex, ey, { transA, transB });
    if (ex !== x) ex.dispose();
    if (ey !== y) ey.dispose();
    return r;
  }
  return launch(x, y, { transA, transB });
}

/** y = x Wᵀ + b with W [out, in], as torch.nn.functional.linear. */
export const linear = (x: Tensor, w: Tensor, b?: Tensor, act: Activation = 'none'): Tensor =>
  matmul(x, w, { transB: true, bias: b, act });
