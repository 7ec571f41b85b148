// Reductions (sum, mean, max, min, argmax, argmin) over one axis or several, on kernels/reduce.wgsl.
import { device, f32 } from '../device.ts';
import { isFloat } from '../dtype.ts';
import { needsGrad, record } from '../autograd.ts';
import { Tensor, numel, withView } from '../tensor.ts';
import { bindRange, grid1d, normAxis } from './util.ts';
import { map } from './elementwise.ts';

const OPS = { sum: 0, max: 1, min: 2, argmax: 3, argmin: 4 } as const;
const WG = 64; // kernels/reduce.wgsl
type ROp = keyof typeof OPS;

function reduceAxis(op: ROp, x: Tensor, axis: number, keepDims: boolean, scale = 1): Tensor {
  x.assertLive();
  const a = normAxis(axis, x.rank);
  const outer = numel(x.shape.slice(0, a));
  const r = x.shape[a];
  const inner = numel(x.shape.slice(a + 1));
  if (r === 0 && op !== 'sum') throw new Error(`${op} over an empty axis ${axis} of [${x.shape.join(', ')}]`);
  const shape = keepDims ? x.shape.map((d, i) => (i === a ? 1 : d)) : x.shape.filter((_, i) => i !== a);
  const out = Tensor.empty(shape, op === 'argmax' || op === 'argmin' ? 'i32' : x.dtype);
  if (out.size === 0) return out;
  const src = bindRange(x);
  // A thread per output when axes are short or outputs many and adjacent in memory;
  // otherwise a workgroup per output (see kernels/reduce.wgsl).
  const columns = r <= WG || (inner >= WG && outer * inner >= 8192);
  device().dispatch({
    kernel: 'reduce',
    entry: columns ? 'columns' : 'rows',
    defines: { IN_T: x.dtype, OUT_T: out.dtype, ACC_T: isFloat(x.dtype) ? 'f32' : x.dtype },
    constants: { OP: OPS[op] },
    buffers: [src.binding, out.binding()],
    params: [outer, r, inner, src.elemOffset, f32(scale)],
    workgroups: grid1d(outer * inner, columns ? WG : 1),
  });
  return out;
}

function axesOf(x: Tensor, axis?: number | number[]): number[] {
  const list = axis === undefined ? x.shape.map((_, i) => i) : Array.isArray(axis) ? axis : [axis];
  return [...new Set(list.map((a) => normAxis(a, x.rank)))].sort((p, q) => q - p);
}

// Sum over the given axes without recording a gradient; keepDims-shaped.
function sumKept(x: Tensor, axes: number[]): Tensor {
  let y: Tensor = x;
  for (const a of axes) {
    const next = reduceAxis('sum', y, a, true);
    if (y !== x) y.dispose();
    y = next;
  }
  return y === x ? map('x0', [x]) : y;
}

/** Sum over `axis` (all axes by default). */
export function sum(x: Tensor, axis?: number | number[], keepDims = false): Tensor {
  return scaledSum('sum', x, axis, keepDims, 1);
}

export function mean(x: Tensor, axis?: number | number[], keepDims = false): Tensor {
  if (!isFloat(x.dtype)) throw new Error(`mean needs a float tensor, got [${x.shape.join(', ')}] ${x.dtype} (cast it first)`);
  const n = axesOf(x, axis).reduce((acc, a) => acc * x.shape[a], 1);
  return scaledSum('mean', x, axis, keepDims, 1 / n);
}

function scaledSum(name: string, x: Tensor, axis: number | number[] | undefined, keepDims: boolean, scale: number): Tensor {
  const axes = axesOf(x, axis);
  let kept = sumKept(x, axes);
  if (scale !== 1) {
    const s = map('x0 * alpha', [kept], { alpha: scale });
    kept.dispose();
    kept = s;
  }
  const keptShape = kept.shape;
  const res = kept.view(keepDims ? keptShape : x.shape.filter((_, i) => !axes.includes(i)));
  kept.dispose();
  return record(name, res, [x], [], (g) => [withView(g, keptShape, (gv) => map('x0 * alpha', [gv], { alpha: scale, shape: x.shape }))]);
}

/** Max / min values over one axis; the gradient goes to the first extremal element. */
export const max = (x: Tensor, axis: number, keepDims = false): Tensor => extremum('max', x, axis, keepDims);
export const min = (x: Tensor, axis: number, keepDims = false): Tensor => extremum('min', x, axis, keepDims);

function extremum(op: 'max' | 'min', x: Tensor, axis: number, keepDims: boolean): Tensor {
  const a = normAxis(axis, x.rank);
  const y = reduceAxis(op, x, a, keepDims);
  if (!needsGrad(x)) return y;
  const idx = reduceAxis(op === 'max' ? 'argmax' : 'argmin', x, a, true);
  const kept = x.shape.map((d, i) => (i === a ? 1 : d));
  const inner = numel(x.shape.slice(a + 1));
  const res = record(op, y, [x], [idx], (g, [ix]) => [
    // `i` is the kernel's output index: its position along the axis is (i / inner) % len
    withView(g, kept, (gv) => map(`select(0.0, x0, f32((i / ${inner}u) % ${x.shape[a]}u) == x1)`, [gv, ix], { shape: x.shape })),
  ]);
  idx.dispose();
  return res;
}

export const argmax = (x: Tensor, axis: number, keepDims = false): Tensor => reduceAxis('argmax', x, axis, keepDims);
export const argmin = (x: Tensor, axis: number, keepDims = false): Tensor => reduceAxis('argmin', x, axis, keepDims);

/**
 * Sums a broadcast gradient back to `shape` (the inverse of broadcasting).
 * `owned`: g may be consumed (disposed or returned as is).
 */
export function sumTo(g: Tensor, shape: readonly number[], owned = false): Tensor {
  if (g.shape.join() === shape.join()) return owned ? g : g.view(g.shape);
  const lead = g.rank - shape.length;
  let y = g;
  for (let i = g.rank - 1; i >= 0; i--) {
    const target = i < lead ? 1 : shape[i - lead];
    if (g.shape[i] !== target) {
      const next = reduceAxis('sum', y, i, true);
      if (y !== g) y.dispose();
      y = next;
    }
  }
  const res = y.view(shape);
  if (y !== g) y.dispose();
  if (owned) g.dispose();
  return res;
}
