// KV cache (runtime/kvcache.ts) and the decode kernel: appending keys and values position by
// position (or several at once) and attending with the new queries equals the matching rows of
// full causal attention, past one decode chunk (512 positions: split-K partials + combine), in
// f32 and f16; buffers are allocated once, nothing is read back, overflow is an error.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Tensor, attention, device, getDevice, manualSeed, noGrad, randn, slice, tensor, tensorCount, tidy } from '../runtime/index.ts';
import { KVCache } from '../runtime/kvcache.ts';
import { maxAbsError, maxRelError } from './ref/cpu.ts';

let start = 0;
beforeAll(async () => {
  await getDevice();
  start = tensorCount();
});
afterAll(() => expect(tensorCount()).toBe(start));

/** q, k, v [B, H, T, d] and the full causal attention output over them. */
async function sequence(B: number, H: number, T: number, d: number, dtype: 'f32' | 'f16' = 'f32') {
  manualSeed(B * 1000 + T);
  const [q, k, v] = [0, 1, 2].map(() => randn([B, H, T, d], { dtype }));
  const o = noGrad(() => attention(q, k, v, { causal: true }));
  const full = await o.data();
  o.dispose();
  return { q, k, v, full };
}

/** Rows [t0, t1) of every (b, h) of a [B·H, T, d] array. */
function rows(x: ArrayLike<number>, BH: number, T: number, d: number, t0: number, t1: number): number[] {
  const out: number[] = [];
  for (let bh = 0; bh < BH; bh++) for (let t = t0; t < t1; t++) for (let c = 0; c < d; c++) out.push(x[(bh * T + t) * d + c]);
  return out;
}

describe('KVCache', () => {
  it('one token at a time equals full causal attention each step, past one decode chunk', async () => {
    // Batch 2 as in classifier-free guidance; 600 positions take the decoder across 2 chunks.
    const [B, H, T, d] = [2, 3, 600, 16];
    const { q, k, v, full } = await sequence(B, H, T, d);
    const cache = new KVCache({ batch: B, heads: H, headDim: d, maxLen: T });
    const dev = device();
    const buffers = [cache.k[0].storage.buffer, cache.v[0].storage.buffer];
    const read = dev.read.bind(dev);
    let reads = 0;
    dev.read = (...a) => (reads++, read(...a));
    let err = 0;
    let createdAfterWarmup = 0;
    try {
      for (let t = 0; t < T; t++) {
        const o = tidy(() => {
          cache.append(slice(k, 2, t, t + 1), slice(v, 2, t, t + 1));
          return cache.attend(slice(q, 2, t, t + 1));
        });
        expect(cache.length).toBe(t + 1);
        if (t === 513) createdAfterWarmup = dev.pool.getStats().created;
        if (t % 47 === 0 || [511, 512, 513, T - 1].includes(t)) {
          const before = reads;
          const got = await o.data();
          expect(reads - before).toBe(1); // the test's own read-back, nothing inside append/attend
          reads = 0;
          err = Math.max(err, maxAbsError(got, rows(full, B * H, T, d, t, t + 1)));
        } else expect(reads).toBe(0);
        o.dispose();
      }
    } finally {
      dev.read = read;
    }
    console.log(`decode vs full causal attention, f32, ${T} steps: max abs error ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-5);
    // Preallocated once: the same buffers throughout; per-step temporaries come from the pool
    // (after the first steps of each chunk count).
    expect([cache.k[0].storage.buffer, cache.v[0].storage.buffer]).toEqual(buffers);
    expect(dev.pool.getStats().created).toBe(createdAfterWarmup);
    cache.dispose();
    for (const t of [q, k, v]) t.dispose();
  });

  it('appends several positions at once; the new queries are causal among themselves (f16, 2 layers)', async () => {
    const [B, H, T, d] = [1, 2, 560, 8];
    const { q, k, v, full } = await sequence(B, H, T, d, 'f16');
    const cache = new KVCache({ layers: 2, batch: B, heads: H, headDim: d, maxLen: 600, dtype: 'f16' });
    // Layer 1 holds other values and must not disturb layer 0.
    tidy(() => cache.append(randn([B, H, 3, d], { dtype: 'f16' }), randn([B, H, 3, d], { dtype: 'f16' }), 1));
    let err = 0;
    for (const [t0, t1] of [[0, 300], [300, 301], [301, 530], [530, 560]]) {
      const o = tidy(() => {
        cache.append(slice(k, 2, t0, t1), slice(v, 2, t0, t1));
        return cache.attend(slice(q, 2, t0, t1));
      });
      err = Math.max(err, maxRelError(await o.data(), rows(full, B * H, T, d, t0, t1)));
      o.dispose();
    }
    expect(cache.length).toBe(T);
    expect(cache.lengthOf(1)).toBe(3);
    console.log(`decode vs full causal attention, f16, chunks of new positions: max relative error ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-3);
    cache.dispose();
    for (const t of [q, k, v]) t.dispose();
  });

  it('key padding: decode steps equal full causal attention with keyPadding, past one decode chunk', async () => {
    // A padded prefix per sequence (as a caption's), the rest visible; the padding tensor spans
    // the capacity (int32, converted by the op) while the cache holds fewer positions.
    const [B, H, T, d, cap] = [2, 3, 530, 16, 540]; // the shapes of the first test: no new shader variants
    const { q, k, v } = await sequence(B, H, T, d);
    const pads = [[3, 7], [0, 2, 5, 6]];
    const padding = Int32Array.from({ length: B * cap }, (_, i) => (pads[Math.floor(i / cap)].includes(i % cap) ? 0 : 1));
    const keyPadding = tensor(padding, [B, cap], 'i32');
    const fullPad = slice(keyPadding, 1, 0, T);
    const full = noGrad(() => attention(q, k, v, { causal: true, keyPadding: fullPad }));
    const want = await full.data();
    const unpadded = noGrad(() => attention(q, k, v, { causal: true }));
    const cache = new KVCache({ batch: B, heads: H, headDim: d, maxLen: cap });
    tidy(() => cache.append(slice(k, 2, 0, 10), slice(v, 2, 0, 10)));
    let err = 0;
    for (const [t0, t1] of [[10, 11], [11, 12], [12, 520], [520, 521], [521, 530]]) {
      const o = tidy(() => {
        cache.append(slice(k, 2, t0, t1), slice(v, 2, t0, t1));
        return cache.attend(slice(q, 2, t0, t1), { keyPadding });
      });
      err = Math.max(err, maxAbsError(await o.data(), rows(want, B * H, T, d, t0, t1)));
      o.dispose();
    }
    console.log(`decode with key padding vs full attention with keyPadding: max abs error ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-5);
    // the padding matters for the rows compared
    expect(maxAbsError(rows(await unpadded.data(), B * H, T, d, 10, 20), rows(want, B * H, T, d, 10, 20))).toBeGreaterThan(1e-2);
    expect(() => tidy(() => cache.attend(slice(q, 2, 0, 1), { keyPadding: slice(keyPadding, 1, 0, 100) }))).toThrow(/keyPadding \[2, 100\] must be \[2, P\] .* P >= length 530/);
    for (const x of [q, k, v, keyPadding, fullPad, full, unpadded]) x.dispose();
    cache.dispose();
  });

  it('attends to every held position with causal: false, resets in place, and refuses overflow', async () => {
    const [B, H, d] = [1, 1, 4];
    const cache = new KVCache({ batch: B, heads: H, headDim: d, maxLen: 6 });
    const [q, k, v] = [0, 1, 2].map(() => randn([B, H, 6, d]));
    const t = (x: Tensor, a: number, b: number) => slice(x, 2, a, b);
    tidy(() => cache.append(t(k, 0, 4), t(v, 0, 4)));
    // Two queries that see all 4 positions: full (non-causal) attention over them.
    const o = tidy(() => cache.attend(t(q, 0, 2), { causal: false }));
    const want = tidy(() => attention(t(q, 0, 2), t(k, 0, 4), t(v, 0, 4)));
    expect(maxAbsError(await o.data(), await want.data())).toBeLessThanOrEqual(1e-6);
    expect(() => tidy(() => cache.append(t(k, 0, 3), t(v, 0, 3)))).toThrow(/3 new positions after 4 exceed maxLen 6 \(layer 0\)/);
    expect(() => cache.append(k, k, 1)).toThrow(/layer 1 out of range/);
    expect(() => tidy(() => cache.append(randn([B, H, 1, 8]), randn([B, H, 1, 8])))).toThrow(/k \[1, 1, 1, 8\] must be \[1, 1, n, 4\]/);
    const buffer = cache.k[0].storage.buffer;
    cache.reset();
    expect(cache.length).toBe(0);
    expect(() => tidy(() => cache.attend(t(q, 0, 1)))).toThrow(/layer 0 is empty/);
    tidy(() => cache.append(t(k, 0, 6), t(v, 0, 6)));
    expect(cache.k[0].storage.buffer).toBe(buffer);
    for (const x of [o, want, q, k, v]) x.dispose();
    cache.dispose();
    expect(() => cache.attend(q)).toThrow(/after dispose/);
  });
});
