// Shared helpers for op implementations: strides, broadcasting, binding ranges, grids.
import { device, type Binding } from '../device.ts';
import { dtypeBytes, type DType } from '../dtype.ts';
import type { Shape, Tensor } from '../tensor.ts';

export const wgslType = (d: DType): string => d;

export function stridesOf(shape: Shape): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

export function broadcastShapes(...shapes: Shape[]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    let d = 1;
    for (const s of shapes) {
      const v = s[s.length - rank + i] ?? 1;
      if (v !== 1 && d !== 1 && v !== d)
        throw new Error(`shapes ${shapes.map((x) => `[${x.join(', ')}]`).join(' and ')} cannot be broadcast together`);
      if (v !== 1) d = v;
    }
    out.push(d);
  }
  return out;
}

/** Element strides of `shape` read as broadcast to `target` (0 on broadcast axes), right-aligned. */
export function broadcastStrides(shape: Shape, target: Shape): number[] {
  const st = stridesOf(shape);
  return target.map((d, i) => {
    const j = i - (target.length - shape.length);
    return j < 0 || shape[j] === 1 ? 0 : st[j];
  });
}

/**
 * An iteration over `shape` with one stride list per operand, simplified: axes of extent 1
 * dropped, and an axis merged into the next when every operand steps over it contiguously
 * (outer stride = inner stride x inner extent). Kernels that index by division (copy,
 * elementwise) then divide over fewer axes: on llvmpipe each division by a runtime value is a
 * scalar loop over the lanes. At least one axis remains.
 */
export function coalesceAxes(shape: readonly number[], strides: number[][]): { shape: number[]; strides: number[][] } {
  const out = { shape: [] as number[], strides: strides.map(() => [] as number[]) };
  shape.forEach((n, i) => {
    if (n === 1) return;
    const j = out.shape.length - 1;
    if (j >= 0 && strides.every((s, k) => out.strides[k][j] === s[i] * n)) {
      out.shape[j] *= n;
      strides.forEach((s, k) => (out.strides[k][j] = s[i]));
    } else {
      out.shape.push(n);
      strides.forEach((s, k) => out.strides[k].push(s[i]));
    }
  });
  if (!out.shape.length) return { shape: [1], strides: strides.map(() => [0]) };
  return out;
}

/** Pads a shape/stride list on the left to 8 entries (the kernels' fixed rank). */
export function pad8(v: readonly number[], fill: number): number[] {
  if (v.length > 8) throw new Error(`rank ${v.length} exceeds the supported 8`);
  return [...new Array<number>(8 - v.length).fill(fill), ...v];
}

/** A binding for a tensor starting at a 256-byte aligned offset, plus the element offset left over. */
export function bindRange(t: Tensor): { binding: Binding; elemOffset: number } {
  t.assertLive();
  const e = dtypeBytes[t.dtype];
  const start = t.offset * e;
  const aligned = Math.floor(start / 256) * 256;
  const rem = (start - aligned) / e;
  const size = Math.min(Math.max(4, Math.ceil(((rem + t.size) * e) / 4) * 4), t.storage.buffer.size - aligned);
  return { binding: { buffer: t.storage.buffer, offset: aligned, size }, elemOffset: rem };
}

/** The same bytes viewed as array<vec4<T>>: whole 16-byte units (pool buffers are multiples of 16). */
export function vec4View(b: Binding): Binding {
  const offset = b.offset ?? 0;
  return { buffer: b.buffer, offset, size: Math.min(Math.ceil((b.size ?? b.buffer.size - offset) / 16) * 16, b.buffer.size - offset) };
}

/** Workgroup grid covering n items of `per` each, folded into 2D past the per-dimension limit. */
export function grid1d(n: number, per = 256): [number, number] {
  const wg = Math.ceil(n / per);
  const max = device().limits.maxComputeWorkgroupsPerDimension;
  if (wg <= max) return [wg, 1];
  return [max, Math.ceil(wg / max)];
}

export function normAxis(axis: number, rank: number, what = 'axis'): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= rank) throw new Error(`${what} ${axis} out of range for rank ${rank}`);
  return a;
}
