// Fused attention (runtime/ops/attention.ts, kernels/attention.wgsl): forward and dQ, dK, dV
// against PyTorch (test/fixtures/gen_attention.py: softmax(q kᵀ·scale + mask) v by hand in
// float64 and its autograd) for self and cross attention, causal, key-padding and additive
// masks, head dims 8, 16, 64 and 80, odd L and S, f32 and f16; finite differences of a
// float64 CPU reference; the GPU tuning (unrolled rows, 1-2 rows per thread) on this adapter;
// and O(L·d) memory at L = 16384.
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { type Tensor, attention, attentionTuning, device, noGrad, tensor, tidy } from '../runtime/index.ts';
import { assertGradcheck, randomArray } from '../runtime/gradcheck.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { maxRelError } from './ref/cpu.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

// Worst error per group, printed at the end (the numbers quoted in reports).
const noteWorst = errorReport();
async function expectClose(group: string, got: Tensor, want: ArrayLike<number>, rtol: number): Promise<void> {
  const err = maxRelError(await got.data(), want);
  noteWorst(group, err);
  expect(err, group).toBeLessThanOrEqual(rtol);
}

interface RefOptions { causal?: boolean; scale?: number; pad?: ArrayLike<number>; mask?: ArrayLike<number> }
/** Float64 attention rows [rows) of every (b, h), with the kernel's conventions; mask is [L, S]. */
function attentionRef(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, [B, H, L, S, d]: number[], o: RefOptions = {}, rows?: number[]): Float64Array {
  const scale = o.scale ?? 1 / Math.sqrt(d);
  const which = rows ?? Array.from({ length: L }, (_, i) => i);
  const out = new Float64Array(B * H * which.length * d);
  const s = new Float64Array(S);
  for (let bh = 0; bh < B * H; bh++) {
    const b = Math.floor(bh / H);
    which.forEach((i, n) => {
      let m = -Infinity;
      for (let j = 0; j < S; j++) {
        const visible = (!o.causal || j <= i + S - L) && (!o.pad || o.pad[b * S + j] !== 0);
        let a = 0;
        for (let c = 0; c < d; c++) a += q[(bh * L + i) * d + c] * k[(bh * S + j) * d + c];
        s[j] = visible ? a * scale + (o.mask ? o.mask[i * S + j] : 0) : -Infinity;
        m = Math.max(m, s[j]);
      }
      if (m === -Infinity) return; // sees no key: zeros
      let sum = 0;
      for (let j = 0; j < S; j++) sum += s[j] = Math.exp(s[j] - m);
      for (let c = 0; c < d; c++) {
        let a = 0;
        for (let j = 0; j < S; j++) a += s[j] * v[(bh * S + j) * d + c];
        out[((bh * which.length) + n) * d + c] = a / sum;
      }
    });
  }
  return out;
}

describe.each(['small', 'd64', 'd80'])('vs PyTorch (attention_%s)', async (group) => {
  const file = await openSafetensors(fixture(`attention_${group}.safetensors`));
  const cases = [...new Set<string>(file.keys().map((k: string) => k.split('.')[0]))].sort();
  const has = (c: string, k: string) => file.keys().includes(`${c}.${k}`);
  const read = (c: string, k: string) => file.readF32(`${c}.${k}`);
  const load = async (c: string, k: string, dtype: 'f32' | 'f16' = 'f32') => tensor(await read(c, k), file.info(`${c}.${k}`).shape, dtype);
  afterAll(() => file.close());

  it('has the generated cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(2);
  });

  it.each(cases)('%s: output and dQ, dK, dV', async (c) => {
    const [causal, scale, isF16] = await read(c, 'cfg');
    const dtype = isF16 ? 'f16' : 'f32';
    // f16 storage: inputs are exact f16 values, outputs and gradients round to 11 bits.
    const [otol, gtol] = isF16 ? [1e-3, 2e-3] : [1e-4, 1e-4];
    const [q, k, v] = await Promise.all(['q', 'k', 'v'].map((n) => load(c, n, dtype)));
    const go = await load(c, 'go', dtype);
    const keyPadding = has(c, 'pad') ? await load(c, 'pad') : undefined;
    const mask = has(c, 'mask') ? await load(c, 'mask') : undefined;
    for (const t of [q, k, v]) t.requireGrad();
    const o = attention(q, k, v, { causal: causal === 1, scale, keyPadding, mask });
    await expectClose(`${dtype} output`, o, await read(c, 'o'), otol);
    o.backward(go);
    await expectClose(`${dtype} dQ`, q.grad!, await read(c, 'gq'), gtol);
    await expectClose(`${dtype} dK`, k.grad!, await read(c, 'gk'), gtol);
    await expectClose(`${dtype} dV`, v.grad!, await read(c, 'gv'), gtol);
    for (const t of [q, k, v, go, o, keyPadding, mask]) t?.dispose();
  });
});

describe('gradients', () => {
  it('match finite differences of the float64 reference (causal cross-attention, key padding)', async () => {
    const [B, H, L, S, d] = [1, 2, 5, 7, 4];
    const pad = [1, 1, 0, 1, 1, 1, 0];
    const keyPadding = tensor(pad, [B, S]);
    await assertGradcheck(
      'attention',
      ([q, k, v]) => attention(q, k, v, { causal: true, keyPadding }),
      ([q, k, v]) => attentionRef(q, k, v, [B, H, L, S, d], { causal: true, pad }),
      [{ shape: [B, H, L, d] }, { shape: [B, H, S, d] }, { shape: [B, H, S, d] }],
      { rtol: 1e-5 },
    );
    keyPadding.dispose();
  });
});

describe('kernel settings', () => {
  // The software adapter picks several rows per thread, memory-resident rows and lane groups
  // of 8 sharing loads; GPUs pick unrolled register-resident rows, 1-2 rows per thread and,
  // without subgroups, no lane groups. All must agree with the reference.
  it.each([
    [1, true, 1],
    [2, true, 8],
    [3, false, 1],
  ] as const)('rowsPerThread %i, unrollRows %s, laneGroup %i', async (rows, unroll, group) => {
    const [B, H, L, S, d] = [2, 1, 70, 45, 8];
    const [qa, ka, va] = [L, S, S].map((n, i) => randomArray(B * H * n * d, 10 + i));
    const want = attentionRef(qa, ka, va, [B, H, L, S, d], { causal: true });
    attentionTuning.rowsPerThread = rows;
    attentionTuning.unrollRows = unroll;
    attentionTuning.laneGroup = group;
    try {
      const o = noGrad(() => tidy(() => attention(tensor(qa, [B, H, L, d]), tensor(ka, [B, H, S, d]), tensor(va, [B, H, S, d]), { causal: true })));
      await expectClose('f32 output (GPU settings)', o, want, 1e-5);
      o.dispose();
    } finally {
      attentionTuning.rowsPerThread = null;
      attentionTuning.unrollRows = null;
      attentionTuning.laneGroup = null;
    }
  });
});

describe('memory', () => {
  it('keeps O(L·d) memory at L = 16384, d = 64 (no L x L buffer) and matches float64 rows', async () => {
    const [L, d] = [16384, 64];
    const [qa, ka, va] = [1, 2, 3].map((seed) => randomArray(L * d, seed).map(Math.fround));
    const pool = device().pool;
    pool.trim();
    const before = pool.getStats();
    const o = noGrad(() => tidy(() => attention(tensor(qa, [1, 1, L, d]), tensor(ka, [1, 1, L, d]), tensor(va, [1, 1, L, d]))));
    const got = await o.data();
    const after = pool.getStats();
    // Everything the pool holds now (live + free-listed) is every buffer this op allocated.
    const held = after.inUseBytes + after.pooledBytes - before.inUseBytes - before.pooledBytes;
    console.log(`L=${L} d=${d}: ${after.created - before.created} buffers created, ${(held / 2 ** 20).toFixed(1)} MiB held; an L x L f32 score matrix is ${(L * L * 4) / 2 ** 30} GiB`);
    expect(held).toBeLessThan(64 * 2 ** 20);
    const rows = [0, 1, 4097, L - 1];
    const want = attentionRef(qa, ka, va, [1, 1, L, L, d], {}, rows);
    const gotRows = rows.flatMap((i) => Array.from(got.subarray(i * d, (i + 1) * d)));
    expect(maxRelError(gotRows, want)).toBeLessThanOrEqual(1e-4);
    o.dispose();
  });
});

describe('argument checks', () => {
  it('names the argument at fault', () => {
    tidy(() => {
      const q = tensor(new Float32Array(2 * 3 * 8), [1, 2, 3, 8]);
      const k = tensor(new Float32Array(2 * 5 * 8), [1, 2, 5, 8]);
      expect(() => attention(q, tensor(new Float32Array(2 * 5 * 4), [1, 2, 5, 4]), k)).toThrow(/k \[1, 2, 5, 4\] must be \[1, 2, S, 8\]/);
      expect(() => attention(q, k, tensor(new Float32Array(2 * 4 * 8), [1, 2, 4, 8]))).toThrow(/v \[1, 2, 4, 8\] must have k's shape/);
      const q6 = tensor(new Float32Array(6), [1, 1, 1, 6]);
      expect(() => attention(q6, q6, q6)).toThrow(/head dim 6 must be a multiple of 4/);
      expect(() => attention(q, k, k, { keyPadding: tensor([1, 1, 1], [1, 3]) })).toThrow(/keyPadding \[1, 3\] must be \[1, 5\]/);
      expect(() => attention(q, k, k, { mask: tensor(new Float32Array(15), [5, 3]) })).toThrow(/mask \[5, 3\] must be \[3, 5\]/);
      const m = tensor(new Float32Array(15), [3, 5]).requireGrad();
      expect(() => attention(q, k, k, { mask: m })).toThrow(/mask takes no gradient/);
      const unaligned = k.view([1, 2, 4, 8], 2);
      expect(() => attention(q, unaligned, unaligned)).toThrow(/k \[1, 2, 4, 8\] is a view at element offset 2, not a multiple of 4/);
    });
  });
});
