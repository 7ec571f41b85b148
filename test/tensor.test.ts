// Tensors themselves: upload/readback per dtype, views and lifetimes, fill/arange, the
// Philox RNG against its CPU reference, f32<->f16 casts, and grids past 65535 workgroups.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Generator, Tensor, arange, cast, device, fillInto, full, getDevice, keep, manualSeed, map, mean, ones, rand, randn, sum, tensor,
  tensorCount, tidy, withView, zeros,
} from '../runtime/index.ts';
import { maxAbsError, philoxNormal, philoxUniform, roundToF16 } from './ref/cpu.ts';

let startTensors = 0;
let startBytes = 0;
beforeAll(async () => {
  await getDevice();
  startTensors = tensorCount();
  startBytes = device().pool.getStats().inUseBytes;
});
afterAll(() => {
  expect(tensorCount()).toBe(startTensors);
  expect(device().pool.getStats().inUseBytes).toBe(startBytes);
});

/** Reads and disposes. */
async function take(t: Tensor): Promise<number[]> {
  const v = await t.toArray();
  t.dispose();
  return v;
}

describe('upload and readback', () => {
  it('round-trips every dtype', async () => {
    expect(await take(tensor([1.5, -2.25, 3e-39, 1e38], [2, 2]))).toEqual([1.5, -2.25, Math.fround(3e-39), Math.fround(1e38)]);
    expect(await take(tensor([-2147483648, 2147483647, 0], [3], 'i32'))).toEqual([-2147483648, 2147483647, 0]);
    expect(await take(tensor([4294967295, 1, 0], [3], 'u32'))).toEqual([4294967295, 1, 0]);
    expect(await take(tensor([1.5, -65504, 0.1, 7], [4], 'f16'))).toEqual([1.5, -65504, roundToF16(0.1), 7]);
    const s = tensor([42], []);
    expect(s.shape).toEqual([]);
    expect(await s.item()).toBe(42);
    s.dispose();
    expect(await take(tensor([], [0, 3]))).toEqual([]);
  });

  it('rejects data that does not fill the shape, bad shapes and item() on a non-scalar', async () => {
    expect(() => tensor([1, 2, 3, 4, 5], [2, 3])).toThrow('tensor: 5 values do not fill shape [2, 3]');
    expect(() => tensor([1, 2], [2, -1])).toThrow('shape [2, -1] has an invalid dimension -1');
    const t = tensor([1, 2]);
    await expect(t.item()).rejects.toThrow('item() needs a one-element tensor, got [2]');
    t.dispose();
  });

  it('reads views at any element offset, f16 included', async () => {
    const t = tensor(Array.from({ length: 300 }, (_, i) => i));
    const v = t.view([2, 3], 77);
    expect(await take(v)).toEqual([77, 78, 79, 80, 81, 82]);
    const h = tensor(Array.from({ length: 300 }, (_, i) => i), [300], 'f16');
    expect(await take(h.view([3], 129))).toEqual([129, 130, 131]);
    t.dispose();
    h.dispose();
  });
});

describe('lifetimes', () => {
  it('views share storage and keep it alive after the base is disposed', async () => {
    const t = tensor([1, 2, 3, 4, 5, 6], [2, 3]);
    const v = t.view([3, 2]);
    expect(v.storage).toBe(t.storage);
    t.dispose();
    expect(t.isDisposed).toBe(true);
    expect(await v.toArray()).toEqual([1, 2, 3, 4, 5, 6]);
    const bytes = device().pool.getStats().inUseBytes;
    v.dispose();
    expect(device().pool.getStats().inUseBytes).toBe(bytes - 256);
    v.dispose(); // a second dispose is a no-op
    expect(() => v.view([6])).toThrow('tensor [3, 2] f32 was used after dispose()');
  });

  it('tidy disposes everything but its result and kept tensors, also when fn throws', async () => {
    const n0 = tensorCount();
    let inner: Tensor | null = null;
    let kept: Tensor | null = null;
    const r = tidy(() => {
      inner = ones([3]);
      kept = keep(full([2], 7));
      const nested = tidy(() => [zeros([2]), ones([4])]);
      return { a: map('x0 * 2.0', [inner]), b: nested[1] };
    });
    expect(inner!.isDisposed).toBe(true);
    expect(await r.a.toArray()).toEqual([2, 2, 2]);
    expect(await r.b.toArray()).toEqual([1, 1, 1, 1]);
    expect(tensorCount()).toBe(n0 + 3);
    for (const t of [r.a, r.b, kept!]) t.dispose();
    expect(() =>
      tidy(() => {
        zeros([5]);
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(tensorCount()).toBe(n0);
    const w = tensor([1, 2, 3, 4]);
    expect(withView(w, [2, 2], (v) => v.shape)).toEqual([2, 2]);
    expect(tensorCount()).toBe(n0 + 1);
    w.dispose();
  });
});

describe('fill and arange', () => {
  it('fills every dtype, odd sizes past one workgroup, and views at unaligned offsets', async () => {
    expect(await take(full([3, 337], 2.5))).toEqual(new Array(1011).fill(2.5));
    expect(await take(full([5], -3, 'i32'))).toEqual([-3, -3, -3, -3, -3]);
    expect(await take(full([3], 65504, 'f16'))).toEqual([65504, 65504, 65504]);
    expect(await take(zeros([2, 2], 'u32'))).toEqual([0, 0, 0, 0]);
    const t = zeros([300]);
    withView(t, [5], (v) => fillInto(v, 9), 131);
    const got = await take(t);
    expect(got.slice(129, 138)).toEqual([0, 0, 9, 9, 9, 9, 9, 0, 0]);
    expect(got.filter((x) => x !== 0).length).toBe(5);
  });

  it('arange counts in every dtype', async () => {
    expect(await take(arange(1000))).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    expect(await take(arange(7, 'i32', 10, -3))).toEqual([10, 7, 4, 1, -2, -5, -8]);
    expect(await take(arange(5, 'f32', -1, 0.25))).toEqual([-1, -0.75, -0.5, -0.25, 0]);
    expect(await take(arange(4, 'f16', 0.5, 0.5))).toEqual([0.5, 1, 1.5, 2]);
    // integers count exactly past f32's 2^24 and wrap modulo 2^32
    expect(await take(arange(3, 'u32', 4294967294))).toEqual([4294967294, 4294967295, 0]);
    expect(await take(arange(3, 'i32', 16777217, -2))).toEqual([16777217, 16777215, 16777213]);
    expect(await take(full([2], -2147483647, 'i32'))).toEqual([-2147483647, -2147483647]);
  });
});

describe('RNG (Philox4x32-10)', () => {
  it('rand matches the CPU Philox reference bit for bit, stream after stream', async () => {
    manualSeed(42);
    const a = await take(rand([1001]));
    expect(a).toEqual(Array.from(philoxUniform(1001, 42, 0)));
    const b = await take(rand([7, 5], { low: -2, high: 2 }));
    expect(b).toEqual(Array.from(philoxUniform(35, 42, 1, -2, 2)));
    // a 64-bit seed uses both key words
    const g = new Generator(2 ** 40 + 3);
    g.counter = 2 ** 32 + 5; // and a stream number past 32 bits
    expect(await take(rand([9], { generator: g }))).toEqual(Array.from(philoxUniform(9, 2n ** 40n + 3n, 2 ** 32 + 5)));
    expect(g.counter).toBe(2 ** 32 + 6);
  });

  it('randn matches Box-Muller on the reference words within 1e-5', async () => {
    manualSeed(5);
    const n = await take(randn([1003]));
    expect(maxAbsError(n, philoxNormal(1003, 5, 0))).toBeLessThan(1e-5);
    const m = await take(randn([3, 7], { mean: 3, std: 0.5 }));
    expect(maxAbsError(m, philoxNormal(21, 5, 1, 3, 0.5))).toBeLessThan(1e-5);
  });

  it('has the right moments, repeats with the seed and differs across streams', async () => {
    const stats = (v: number[]) => {
      const mu = v.reduce((s, x) => s + x, 0) / v.length;
      return [mu, Math.sqrt(v.reduce((s, x) => s + (x - mu) ** 2, 0) / v.length)];
    };
    manualSeed(123);
    const u = await take(rand([200001]));
    const [mu, su] = stats(u);
    expect(Math.abs(mu - 0.5)).toBeLessThan(0.005);
    expect(Math.abs(su - Math.sqrt(1 / 12))).toBeLessThan(0.005);
    expect(u.every((x) => x >= 0 && x < 1)).toBe(true);
    const z = await take(randn([200001]));
    const [mz, sz] = stats(z);
    expect(Math.abs(mz)).toBeLessThan(0.01);
    expect(Math.abs(sz - 1)).toBeLessThan(0.01);
    manualSeed(123);
    expect(await take(rand([200001]))).toEqual(u);
    const again = await take(randn([200001]));
    expect(again).toEqual(z);
    // the next stream of the same seed, and the same stream of another seed, share no values
    const next = await take(rand([1000]));
    const other = await take(rand([1000], { generator: new Generator(124) }));
    const overlap = (p: number[], q: number[]) => p.filter((x, i) => x === q[i]).length;
    expect(overlap(next, u)).toBeLessThan(3);
    expect(overlap(other, u)).toBeLessThan(3);
    // f16 output: the f32 draws rounded to f16
    manualSeed(9);
    const h = await take(rand([50], { dtype: 'f16' }));
    expect(h).toEqual(Array.from(philoxUniform(50, 9, 0), roundToF16));
  });
});

describe('casts', () => {
  /** An f16 tensor whose bit patterns are given, packed two per u32 word. */
  function f16Bits(bits: number[]): Tensor {
    const words = Array.from({ length: Math.ceil(bits.length / 2) }, (_, i) => (bits[2 * i] | ((bits[2 * i + 1] ?? 0) << 16)) >>> 0);
    const u = tensor(words, [words.length], 'u32');
    const h = new Tensor([bits.length], 'f16', u.storage.retain());
    u.dispose();
    return h;
  }
  const decodeF16 = (b: number): number => {
    const e = (b >> 10) & 31;
    const m = b & 1023;
    const s = b & 0x8000 ? -1 : 1;
    if (e === 31) return m ? NaN : s * Infinity;
    return s * (e ? 2 ** (e - 15) * (1 + m / 1024) : 2 ** -14 * (m / 1024));
  };

  it('f16 -> f32 is exact for every finite f16 and keeps infinities', async () => {
    const bits = Array.from({ length: 65536 }, (_, i) => i).filter((b) => ((b >> 10) & 31) !== 31 || (b & 1023) === 0);
    const h = f16Bits(bits);
    const f = cast(h, 'f32');
    expect(await take(f)).toEqual(bits.map(decodeF16));
    h.dispose();
  });

  it('f32 -> f16 rounds to nearest, ties to even, on midpoints, subnormals and overflow', async () => {
    const vals: number[] = [0, -0, 65504, 65519.99, 65520, -65520, 1e-8, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 2 ** -14, 0.1, 1 / 3, 1e5];
    // midpoints between neighbouring f16 values (ties) and points just either side of them
    for (const base of [1, 2049 / 2048, 1000, 0.007, -3.5, 2 ** -20])
      for (let k = 0; k < 6; k++) {
        const lo = roundToF16(base) + k * (roundToF16(base * (1 + 2 ** -10)) - roundToF16(base));
        const hi = roundToF16(lo + (roundToF16(base * (1 + 2 ** -10)) - roundToF16(base)));
        const mid = (lo + hi) / 2;
        vals.push(mid, Math.fround(mid * (1 + 2 ** -20)), Math.fround(mid * (1 - 2 ** -20)));
      }
    const x = tensor(vals);
    const h = cast(x, 'f16');
    expect(h.dtype).toBe('f16');
    const want = vals.map((v) => roundToF16(Math.fround(v)));
    expect(await take(h)).toEqual(want);
    x.dispose();
  });

  it('float <-> integer casts truncate toward zero', async () => {
    const x = tensor([2.7, -2.7, 0.5, -0.5, 100.99]);
    expect(await take(cast(x, 'i32'))).toEqual([2, -2, 0, 0, 100]);
    const i = tensor([-5, 16777217], [2], 'i32');
    expect(await take(cast(i, 'f32'))).toEqual([-5, 16777216]);
    for (const t of [x, i]) t.dispose();
  });
});

describe('grids past 65535 workgroups per dimension', () => {
  it('elementwise and reduce fold their grids into 2D', async () => {
    const n = 65535 * 256 + 1000; // one more row of workgroups than fits in x
    const x = zeros([n]);
    const idx = map('i', [x], { dtype: 'u32' });
    x.dispose();
    for (const at of [0, 255, 65535 * 256 - 1, 65535 * 256, n - 1]) {
      const v = idx.view([1], at);
      expect(await v.item()).toBe(at);
      v.dispose();
    }
    idx.dispose();
    const y = ones([70001, 3]);
    const s = sum(y, 1);
    const m = mean(s);
    expect(await m.item()).toBe(3);
    const tail = s.view([2], 69999);
    expect(await tail.toArray()).toEqual([3, 3]);
    for (const t of [y, s, m, tail]) t.dispose();
  });
});
