// Elementwise ops on kernels/elementwise.wgsl (one kernel, specialised by expression and
// types) with broadcasting, views and their gradients.
import { device, f32 } from '../device.ts';
import { type DType, isFloat } from '../dtype.ts';
import { record } from '../autograd.ts';
import { Tensor } from '../tensor.ts';
import { bindRange, broadcastShapes, broadcastStrides, coalesceAxes, grid1d, pad8 } from './util.ts';
import { sumTo } from './reduce.ts';

export interface MapOptions {
  dtype?: DType;
  /** compute type inside the kernel (default f32 unless every input and the output are integers) */
  ct?: 'f32' | 'i32' | 'u32';
  alpha?: number;
  beta?: number;
  /** output shape, when larger than the inputs' broadcast shape (inputs broadcast to it) */
  shape?: readonly number[];
}

/**
 * out = expr(x0, x1, x2) elementwise over broadcast inputs, with scalars `alpha`, `beta`
 * and `i`, the output element's linear index. Records no gradient: the ops below do.
 */
export function map(expr: string, inputs: Tensor[], opts: MapOptions = {}): Tensor {
  if (inputs.length < 1 || inputs.length > 3) throw new Error('map takes 1 to 3 inputs');
  for (const t of inputs) t.assertLive();
  const shape = broadcastShapes(...inputs.map((t) => t.shape), ...(opts.shape ? [opts.shape] : []));
  const dtype = opts.dtype ?? inputs[0].dtype;
  const out = Tensor.empty(shape, dtype);
  mapInto(out, expr, inputs, opts);
  return out;
}

/** map() writing into an existing tensor (which may be a view). */
export function mapInto(out: Tensor, expr: string, inputs: Tensor[], opts: MapOptions = {}): void {
  const dev = device();
  const n = out.size;
  if (n === 0) return;
  const all = [...inputs, out];
  const ct = opts.ct ?? (all.every((t) => !isFloat(t.dtype)) ? (out.dtype === 'u32' ? 'u32' : 'i32') : 'f32');
  const fast = inputs.every((t) => t.shape.join() === out.shape.join());
  const slots = [0, 1, 2].map((i) => inputs[i] ?? inputs[0]);
  const defines = {
    IN0_T: slots[0].dtype, IN1_T: slots[1].dtype, IN2_T: slots[2].dtype, OUT_T: out.dtype, CT: ct, EXPR: expr,
  };
  const constants = { NIN: inputs.length, FAST: fast ? 1 : 0 };
  const maxB = dev.maxBinding;
  const tooBig = all.some((t) => t.size * (t.dtype === 'f16' ? 2 : 4) > maxB - 256);
  // Past the binding limit, contiguous same-shape maps run in chunks of bound sub-ranges.
  const chunk = tooBig && fast ? Math.floor((maxB - 256) / 4 / 256) * 256 : n;
  for (let start = 0; start < n; start += chunk) {
    const len = Math.min(chunk, n - start);
    const part = (t: Tensor): Tensor => (chunk === n ? t : t.view([len], t.offset + start));
    const views = [...slots, out].map(part);
    const ranges = views.map(bindRange);
    const axes = fast ? { shape: [len], strides: [[], [], []] } : coalesceAxes(out.shape, slots.map((t) => broadcastStrides(t.shape, out.shape)));
    const strides = axes.strides.map((st) => pad8(st, 0));
    dev.dispatch({
      kernel: 'elementwise',
      defines,
      constants,
      buffers: ranges.map((r) => r.binding),
      params: [
        ...pad8(axes.shape, 1), ...strides[0], ...strides[1], ...strides[2],
        len, ranges[0].elemOffset, ranges[1].elemOffset, ranges[2].elemOffset, ranges[3].elemOffset,
        f32(opts.alpha ?? 0), f32(opts.beta ?? 0), start, axes.shape.length,
      ],
      workgroups: grid1d(len),
    });
    if (chunk !== n) for (const v of views) v.dispose();
  }
}

// ---- unary ops -------------------------------------------------------------------------
// Gradient expressions see x0 = upstream grad, x1 = input x, x2 = output y.
interface UnaryDef { f: string; df: string }
const UNARY = {
  neg: { f: '-x0', df: '-x0' },
  exp: { f: 'exp(x0)', df: 'x0 * x2' },
  log: { f: 'log(x0)', df: 'x0 / x1' },
  sqrt: { f: 'sqrt(x0)', df: 'x0 * 0.5 / x2' },
  rsqrt: { f: 'inverseSqrt(x0)', df: '-0.5 * x0 * x2 * x2 * x2' },
  abs: { f: 'abs(x0)', df: 'x0 * sign(x1)' },
  relu: { f: 'max(x0, 0.0)', df: 'select(0.0, x0, x1 > 0.0)' },
  sigmoid: { f: 'sigmoid_(x0)', df: 'x0 * x2 * (1.0 - x2)' },
  tanh: { f: 'tanh_(x0)', df: 'x0 * (1.0 - x2 * x2)' },
  silu: { f: 'silu_(x0)', df: 'x0 * silu_grad_(x1)' },
  gelu: { f: 'gelu_(x0)', df: 'x0 * gelu_grad_(x1)' },
  geluTanh: { f: 'gelu_tanh_(x0)', df: 'x0 * gelu_tanh_grad_(x1)' },
  sin: { f: 'sin(x0)', df: 'x0 * cos(x1)' },
  cos: { f: 'cos(x0)', df: '-x0 * sin(x1)' },
  square: { f: 'x0 * x0', df: '2.0 * x0 * x1' },
  reciprocal: { f: '1.0 / x0', df: '-x0 * x2 * x2' },
} satisfies Record<string, UnaryDef>;
export type UnaryOp = keyof typeof UNARY;
export const unaryOps = Object.keys(UNARY) as UnaryOp[];

export function unary(op: UnaryOp, x: Tensor): Tensor {
  if (!isFloat(x.dtype)) throw new Error(`${op} needs a float tensor, got [${x.shape.join(', ')}] ${x.dtype}`);
  const { f, df } = UNARY[op];
  const y = map(f, [x]);
  return record(op, y, [x], [x, y], (g, [xs, ys]) => [map(df, [g, xs, ys])]);
}

export const neg = (x: Tensor): Tensor => unary('neg', x);
export const exp = (x: Tensor): Tensor => unary('exp', x);
export const log = (x: Tensor): Tensor => unary('log', x);
export const sqrt = (x: Tensor): Tensor => unary('sqrt', x);
export const rsqrt = (x: Tensor): Tensor => unary('rsqrt', x);
export const abs = (x: Tensor): Tensor => unary('abs', x);
export const relu = (x: Tensor): Tensor => unary('relu', x);
export const sigmoid = (x: Tensor): Tensor => unary('sigmoid', x);
export const tanh = (x: Tensor): Tensor => unary('tanh', x);
export const silu = (x: Tensor): Tensor => unary('silu', x);
export const gelu = (x: Tensor): Tensor => unary('gelu', x);
export const geluTanh = (x: Tensor): Tensor => unary('geluTanh', x);
export const sin = (x: Tensor): Tensor => unary('sin', x);
export const cos = (x: Tensor): Tensor => unary('cos', x);
export const square = (x: Tensor): Tensor => unary('square', x);
export const reciprocal = (x: Tensor): Tensor => unary('reciprocal', x);

/** alpha * x + beta */
export function affine(x: Tensor, alpha: number, beta = 0): Tensor {
  const y = map('alpha * x0 + beta', [x], { alpha, beta });
  return record('affine', y, [x], [], (g) => [map('alpha * x0', [g], { alpha })]);
}
export const mulScalar = (x: Tensor, s: number): Tensor => affine(x, s, 0);
export const addScalar = (x: Tensor, s: number): Tensor => affine(x, 1, s);

/** x ** e for a scalar exponent */
export function powScalar(x: Tensor, e: number): Tensor {
  const y = map('pow(x0, alpha)', [x], { alpha: e });
  return record('powScalar', y, [x], [x], (g, [xs]) => [map('x0 * alpha * pow(x1, alpha - 1.0)', [g, xs], { alpha: e })]);
}

export function clamp(x: Tensor, lo: number, hi: number): Tensor {
  const y = map('clamp(x0, alpha, beta)', [x], { alpha: lo, beta: hi });
  return record('clamp', y, [x], [x], (g, [xs]) => [map('select(0.0, x0, x1 >= alpha && x1 <= beta)', [g, xs], { alpha: lo, beta: hi })]);
}

// ---- binary ops ------------------------------------------------------------------------
function binaryGrad(name: string, a: Tensor, b: Tensor, y: Tensor, da: string | null, db: string | null): Tensor {
  return record(name, y, [a, b], [a, b], (g, [as, bs]) => [
    da === null ? null : sumTo(map(da, [g, as, bs]), as.shape, true),
    db === null ? null : sumTo(map(db, [g, as, bs]), bs.shape, true),
  ]);
}

export function add(a: Tensor, b: Tensor): Tensor {
  const y = map('x0 + x1', [a, b]);
  return record('add', y, [a, b], [], (g) => [sumTo(g, a.shape), sumTo(g, b.shape)]);
}
export function sub(a: Tensor, b: Tensor): Tensor {
  const y = map('x0 - x1', [a, b]);
  return record('sub', y, [a, b], [], (g) => [sumTo(g, a.shape), sumTo(map('-x0', [g]), b.shape, true)]);
}
export const mul = (a: Tensor, b: Tensor): Tensor => binaryGrad('mul', a, b, map('x0 * x1', [a, b]), 'x0 * x2', 'x0 * x1');
export const div = (a: Tensor, b: Tensor): Tensor => binaryGrad('div', a, b, map('x0 / x1', [a, b]), 'x0 / x2', '-x0 * x1 / (x2 * x2)');
export const pow = (a: Tensor, b: Tensor): Tensor =>
  binaryGrad('pow', a, b, map('pow(x0, x1)', [a, b]), 'x0 * x2 * pow(x1, x2 - 1.0)', 'x0 * pow(x1, x2) * log(x1)');
// On ties the gradient goes to the first argument (PyTorch splits it evenly).
export const maximum = (a: Tensor, b: Tensor): Tensor =>
  binaryGrad('maximum', a, b, map('max(x0, x1)', [a, b]), 'select(0.0, x0, x1 >= x2)', 'select(0.0, x0, x2 > x1)');
export const minimum = (a: Tensor, b: Tensor): Tensor =>
  binaryGrad('minimum', a, b, map('min(x0, x1)', [a, b]), 'select(0.0, x0, x1 <= x2)', 'select(0.0, x0, x2 < x1)');

/** cond ? a : b (cond nonzero), gradient flows to the chosen side. */
export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  const y = map('select(x2, x1, x0 != 0)', [cond, a, b], { dtype: a.dtype });
  return record('where', y, [null, a, b], [cond], (g, [c]) => [
    null,
    sumTo(map('select(0.0, x1, x0 != 0.0)', [c, g]), a.shape, true),
    sumTo(map('select(x1, 0.0, x0 != 0.0)', [c, g]), b.shape, true),
  ]);
}

type Cmp = 'gt' | 'ge' | 'lt' | 'le' | 'eq' | 'ne';
const CMP: Record<Cmp, string> = { gt: '>', ge: '>=', lt: '<', le: '<=', eq: '==', ne: '!=' };
/** 1.0 where the comparison holds, else 0.0 (no gradient). */
export const compare = (op: Cmp, a: Tensor, b: Tensor): Tensor => map(`select(0.0, 1.0, x0 ${CMP[op]} x1)`, [a, b], { dtype: 'f32' });
