// Tensor creation: from host data, fill/arange, and the seeded counter-based RNG.
import { type Param, device, f32, i32 } from '../device.ts';
import { type DType, type HostArray, dtypeBytes } from '../dtype.ts';
import { Tensor, checkShape, numel, type Shape } from '../tensor.ts';
import { bindRange, grid1d } from './util.ts';
import { cast } from './shape.ts';
import { noGrad } from '../autograd.ts';

type HostData = ArrayLike<number> | HostArray;

/** Uploads host values (f16 tensors are converted on the GPU from an f32 upload). */
export function tensor(data: HostData, shape?: Shape, dtype: DType = 'f32'): Tensor {
  const s = shape ?? [data.length];
  checkShape(s);
  if (numel(s) !== data.length) throw new Error(`tensor: ${data.length} values do not fill shape [${s.join(', ')}]`);
  if (dtype === 'f16') {
    const t32 = tensor(data, s, 'f32');
    const t16 = noGrad(() => cast(t32, 'f16'));
    t32.dispose();
    return t16;
  }
  const arr = dtype === 'f32' ? Float32Array.from(data) : dtype === 'i32' ? Int32Array.from(data) : Uint32Array.from(data);
  const t = Tensor.empty(s, dtype);
  if (arr.length) device().write(t.storage.buffer, 0, arr);
  return t;
}

export async function readTensor(t: Tensor): Promise<HostArray> {
  if (t.dtype === 'f16') {
    const t32 = noGrad(() => cast(t, 'f32'));
    try {
      return await readTensor(t32);
    } finally {
      t32.dispose();
    }
  }
  const bytes = await device().read(t.storage.buffer, t.offset * dtypeBytes[t.dtype], t.size * 4);
  return t.dtype === 'f32' ? new Float32Array(bytes) : t.dtype === 'i32' ? new Int32Array(bytes) : new Uint32Array(bytes);
}

/** t = value + step * i (in place); integer tensors count in integers, wrapping like C. */
export function fillInto(t: Tensor, value: number, step = 0): Tensor {
  const n = t.size;
  const ct = t.dtype === 'f16' ? 'f32' : t.dtype;
  // Integer params wrap modulo 2^32 when written (Int32Array / Uint32Array semantics).
  const param = (x: number): Param => (ct === 'f32' ? f32(x) : ct === 'i32' ? i32(x) : x);
  // Past the binding limit, fill in chunks of bound sub-ranges.
  const chunk = Math.floor((device().maxBinding - 256) / 4 / 256) * 256;
  for (let start = 0; start < n; start += chunk) {
    const len = Math.min(chunk, n - start);
    const part = len === n ? t : t.view([len], t.offset + start);
    const r = bindRange(part);
    device().dispatch({
      kernel: 'fill',
      defines: { T: t.dtype, CT: ct },
      buffers: [r.binding],
      params: [len, r.elemOffset, param(value + step * start), param(step)],
      workgroups: grid1d(len),
    });
    if (part !== t) part.dispose();
  }
  return t;
}

export const full = (shape: Shape, value: number, dtype: DType = 'f32'): Tensor => fillInto(Tensor.empty(shape, dtype), value);
export const zeros = (shape: Shape, dtype: DType = 'f32'): Tensor => full(shape, 0, dtype);
export const ones = (shape: Shape, dtype: DType = 'f32'): Tensor => full(shape, 1, dtype);
export const zerosLike = (t: Tensor): Tensor => zeros(t.shape, t.dtype);
export const onesLike = (t: Tensor): Tensor => ones(t.shape, t.dtype);
export const arange = (n: number, dtype: DType = 'i32', start = 0, step = 1): Tensor => fillInto(Tensor.empty([n], dtype), start, step);

// ---- RNG -------------------------------------------------------------------------------
/**
 * A Philox stream: (seed, counter). Each draw uses the next counter value, so a run is
 * reproducible from the seed and independent of batch sizes or grid shapes.
 */
export class Generator {
  counter = 0;
  constructor(public seed = 0) {}
  manualSeed(seed: number): this {
    this.seed = seed;
    this.counter = 0;
    return this;
  }
  getState(): { seed: number; counter: number } {
    return { seed: this.seed, counter: this.counter };
  }
  setState(s: { seed: number; counter: number }): void {
    this.seed = s.seed;
    this.counter = s.counter;
  }
}

export const defaultGenerator = new Generator(0);
export const manualSeed = (seed: number): Generator => defaultGenerator.manualSeed(seed);

function draw(mode: 0 | 1, shape: Shape, a: number, b: number, dtype: DType, gen: Generator): Tensor {
  const t = Tensor.empty(shape, dtype);
  if (t.size === 0) return t;
  const stream = gen.counter++;
  const seed = BigInt.asUintN(64, BigInt(gen.seed));
  device().dispatch({
    kernel: 'rng',
    defines: { T: dtype },
    constants: { MODE: mode },
    buffers: [t.binding()],
    params: [t.size, 0, Number(seed & 0xffffffffn), Number(seed >> 32n), stream >>> 0, Math.floor(stream / 2 ** 32), f32(a), f32(b)],
    workgroups: grid1d(Math.ceil(t.size / 4), 64),
  });
  return t;
}

export const rand = (shape: Shape, opts: { low?: number; high?: number; dtype?: DType; generator?: Generator } = {}): Tensor =>
  draw(0, shape, opts.low ?? 0, opts.high ?? 1, opts.dtype ?? 'f32', opts.generator ?? defaultGenerator);

export const randn = (shape: Shape, opts: { mean?: number; std?: number; dtype?: DType; generator?: Generator } = {}): Tensor =>
  draw(1, shape, opts.mean ?? 0, opts.std ?? 1, opts.dtype ?? 'f32', opts.generator ?? defaultGenerator);
