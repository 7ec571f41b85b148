// Shape ops: reshape and leading-axis slices are views; permute, general slices, concat,
// expand and casts copy through kernels/copy.wgsl.
import { device } from '../device.ts';
import { type DType } from '../dtype.ts';
import { record } from '../autograd.ts';
import { Tensor, numel, withView, type Shape } from '../tensor.ts';
import { bindRange, coalesceAxes, grid1d, normAxis, pad8, stridesOf } from './util.ts';
import { map } from './elementwise.ts';
import { full } from './create.ts';
import { sumTo } from './reduce.ts';

/** dst[shape] (strides ds) = src (strides ss), both starting at their tensor's offset. */
export function copyStrided(src: Tensor, ss: number[], dst: Tensor, ds: number[], shape: Shape): void {
  if (numel(shape) === 0) return;
  const c = coalesceAxes(shape, [ss, ds]);
  const [cs, cd] = c.strides;
  const inner = c.shape[c.shape.length - 1];
  const run = copyRun();
  const runs = Math.ceil(inner / run);
  const n = (numel(c.shape) / inner) * runs;
  const a = bindRange(src);
  const b = bindRange(dst);
  device().dispatch({
    kernel: 'copy',
    defines: { IN_T: src.dtype, OUT_T: dst.dtype },
    constants: { RUN: run },
    buffers: [a.binding, b.binding],
    params: [...pad8(c.shape, 1), ...pad8(cs, 0), ...pad8(cd, 0), n, a.elemOffset, b.elemOffset, c.shape.length, runs],
    workgroups: grid1d(n),
  });
}

/** Elements per thread of kernels/copy.wgsl (null: by adapter); exposed for tests and benchmarks. */
export const copyTuning: { run: number | null } = { run: null };

/**
 * Software adapters: 32, which took the GPT step's 53 copies (head permutes, their gradients,
 * concats) from 627 to 136 ms (8: 218, 16: 183); GPUs: 4, a conventional start, not measured.
 */
function copyRun(): number {
  if (copyTuning.run) return copyTuning.run;
  const a = device().adapterInfo;
  return a.isFallbackAdapter || a.architecture === 'software' ? 32 : 4;
}

function resolveShape(shape: Shape, size: number): number[] {
  const infer = shape.indexOf(-1);
  if (infer !== shape.lastIndexOf(-1)) throw new Error(`reshape: more than one -1 in [${shape.join(', ')}]`);
  const known = shape.reduce((a, d) => (d === -1 ? a : a * d), 1);
  const out = shape.map((d) => (d === -1 ? (known === 0 ? 0 : size / known) : d));
  if (numel(out) !== size || out.some((d) => !Number.isInteger(d) || d < 0))
    throw new Error(`reshape: cannot view ${size} elements as [${shape.join(', ')}]`);
  return out;
}

export function reshape(x: Tensor, shape: Shape): Tensor {
  const s = resolveShape(shape, x.size);
  const y = x.view(s);
  return record('reshape', y, [x], [], (g) => [g.view(x.shape)]);
}

/** A fresh copy whose storage starts at offset 0. */
export function contiguous(x: Tensor): Tensor {
  const y = map('x0', [x]);
  return record('contiguous', y, [x], [], (g) => [g.view(g.shape)]);
}

export function cast(x: Tensor, dtype: DType): Tensor {
  const y = Tensor.empty(x.shape, dtype);
  const st = stridesOf(x.shape);
  copyStrided(x, st, y, st, x.shape);
  return record('cast', y, [x], [], (g) => [cast(g, x.dtype)]);
}

export function permute(x: Tensor, perm: number[]): Tensor {
  if (perm.length !== x.rank || new Set(perm.map((p) => normAxis(p, x.rank))).size !== x.rank)
    throw new Error(`permute: [${perm.join(', ')}] is not a permutation of ${x.rank} axes`);
  const p = perm.map((a) => normAxis(a, x.rank));
  const shape = p.map((a) => x.shape[a]);
  const xs = stridesOf(x.shape);
  const y = Tensor.empty(shape, x.dtype);
  copyStrided(x, p.map((a) => xs[a]), y, stridesOf(shape), shape);
  const inv = new Array<number>(p.length);
  p.forEach((a, i) => (inv[a] = i));
  return record('permute', y, [x], [], (g) => [permute(g, inv)]);
}

export function transpose(x: Tensor, a = -2, b = -1): Tensor {
  const p = x.shape.map((_, i) => i);
  const [i, j] = [normAxis(a, x.rank), normAxis(b, x.rank)];
  [p[i], p[j]] = [p[j], p[i]];
  return permute(x, p);
}

/** x[..., start:end, ...] along `axis` (a view when every axis before it has size 1). */
export function slice(x: Tensor, axis: number, start: number, end: number): Tensor {
  const a = normAxis(axis, x.rank);
  const len = x.shape[a];
  const s = start < 0 ? start + len : start;
  const e = Math.min(end < 0 ? end + len : end, len);
  if (!Number.isInteger(s) || s < 0 || s > e) throw new Error(`slice: [${start}:${end}] out of range for axis ${axis} of size ${len}`);
  const shape = x.shape.map((d, i) => (i === a ? e - s : d));
  const st = stridesOf(x.shape);
  let y: Tensor;
  if (x.shape.slice(0, a).every((d) => d === 1)) y = x.view(shape, x.offset + s * st[a]);
  else {
    y = Tensor.empty(shape, x.dtype);
    withView(x, x.shape, (v) => copyStrided(v, st, y, stridesOf(shape), shape), x.offset + s * st[a]);
  }
  return record('slice', y, [x], [], (g) => {
    const gx = full(x.shape, 0, g.dtype);
    withView(gx, gx.shape, (v) => copyStrided(g, stridesOf(g.shape), v, st, g.shape), s * st[a]);
    return [gx];
  });
}

export function concat(xs: Tensor[], axis: number): Tensor {
  if (!xs.length) throw new Error('concat of no tensors');
  const a = normAxis(axis, xs[0].rank);
  for (const x of xs)
    if (x.rank !== xs[0].rank || x.dtype !== xs[0].dtype || x.shape.some((d, i) => i !== a && d !== xs[0].shape[i]))
      throw new Error(`concat: [${x.shape.join(', ')}] ${x.dtype} does not match [${xs[0].shape.join(', ')}] ${xs[0].dtype} off axis ${axis}`);
  const shape = xs[0].shape.map((d, i) => (i === a ? xs.reduce((s, x) => s + x.shape[a], 0) : d));
  const y = Tensor.empty(shape, xs[0].dtype);
  const ys = stridesOf(shape);
  let at = 0;
  const starts: number[] = [];
  for (const x of xs) {
    starts.push(at);
    withView(y, y.shape, (dst) => copyStrided(x, stridesOf(x.shape), dst, ys, x.shape), at * ys[a]);
    at += x.shape[a];
  }
  return record('concat', y, xs, [], (g) => xs.map((x, i) => slice(g, a, starts[i], starts[i] + x.shape[a])));
}

export function stack(xs: Tensor[], axis = 0): Tensor {
  if (!xs.length) throw new Error('stack of no tensors');
  const a = normAxis(axis, xs[0].rank + 1);
  const parts = xs.map((x) => reshape(x, [...x.shape.slice(0, a), 1, ...x.shape.slice(a)]));
  const y = concat(parts, a);
  for (const p of parts) p.dispose();
  return y;
}

/** Broadcast x to `shape` (materialised). */
export function expand(x: Tensor, shape: Shape): Tensor {
  const lead = shape.length - x.rank;
  if (lead < 0 || x.shape.some((d, i) => d !== 1 && d !== shape[lead + i]))
    throw new Error(`expand: [${x.shape.join(', ')}] cannot be broadcast to [${shape.join(', ')}]`);
  const y = map('x0', [x], { shape });
  return record('expand', y, [x], [], (g) => [sumTo(g, x.shape)]);
}

export const unsqueeze = (x: Tensor, axis: number): Tensor => {
  const a = normAxis(axis, x.rank + 1);
  return reshape(x, [...x.shape.slice(0, a), 1, ...x.shape.slice(a)]);
};

export const flatten = (x: Tensor, from = 0): Tensor => reshape(x, [...x.shape.slice(0, from), -1]);

/** The same values without gradient history: a view that autograd sees as a constant. */
export const detach = (x: Tensor): Tensor => x.view(x.shape);
