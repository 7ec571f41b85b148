// The VQ codebook ops: nearestCode, lookup, l2Normalize and quantize (LlamaGen's l2-normalised
// VectorQuantizer) against PyTorch (test/fixtures/gen_codebook.py: indices, straight-through
// output, losses and the gradients of z and the codebook), a float64 CPU argmin over a
// 16384 x 8 codebook (the split-codebook path, duplicate codes in different tiles and splits),
// and finite differences of a float64 CPU reference of the losses.
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import {
  type Tensor, add, concat, l2Normalize, lookup, mul, mulScalar, nearestCode, quantize, reshape, sum, tensor, tidy,
} from '../runtime/index.ts';
import { assertGradcheck, randomArray } from '../runtime/gradcheck.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { maxRelError, roundToF16 } from './ref/cpu.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

// Worst error per check, printed at the end (the numbers quoted in reports).
const noteWorst = errorReport();
function expectClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>, rtol: number): void {
  expect(Array.from(want).some((v) => v !== 0), `${what}: an all-zero reference proves nothing`).toBe(true);
  const err = maxRelError(got, want);
  noteWorst(what, err);
  expect(err, what).toBeLessThanOrEqual(rtol);
}

// ---- float64 CPU reference ----------------------------------------------------------------
/** F.normalize of one vector. */
function normalized(v: ArrayLike<number>): Float64Array {
  const n = Math.max(Math.sqrt(Array.from(v).reduce((a, x) => a + x * x, 0)), 1e-12);
  return Float64Array.from(v, (x) => x / n);
}

/** The vectors along axis 1 of z [N, C, ...spatial], in (n, spatial) order, normalised. */
function queryVectors(z: ArrayLike<number>, shape: readonly number[]): Float64Array[] {
  const [n, c] = shape;
  const s = numel(shape.slice(2));
  const out: Float64Array[] = [];
  for (let i = 0; i < n; i++) for (let j = 0; j < s; j++) out.push(normalized(Array.from({ length: c }, (_, k) => z[i * c * s + k * s + j])));
  return out;
}

const codeVectors = (w: ArrayLike<number>, k: number, c: number): Float64Array[] =>
  Array.from({ length: k }, (_, i) => normalized(Array.prototype.slice.call(w, i * c, (i + 1) * c)));

const dist2 = (a: Float64Array, b: Float64Array) => a.reduce((s, x, i) => s + (x - b[i]) ** 2, 0);

function cpuNearest(u: Float64Array[], e: Float64Array[]): number[] {
  return u.map((q) => {
    let best = Infinity;
    let arg = 0;
    e.forEach((code, k) => {
      const d = dist2(q, code);
      if (d < best) [best, arg] = [d, k];
    });
    return arg;
  });
}

/** LlamaGen's losses in float64: vq, commit (beta), entropy (compute_entropy_loss(-d), T). */
function cpuLosses(u: Float64Array[], e: Float64Array[], beta: number, temperature: number): { vq: number; commit: number; entropy: number } {
  const idx = cpuNearest(u, e);
  const c = e[0].length;
  const sq = u.reduce((s, q, r) => s + dist2(q, e[idx[r]]), 0) / (u.length * c);
  const avg = new Float64Array(e.length);
  let sampleEntropy = 0;
  for (const q of u) {
    const logits = e.map((code) => -(q.reduce((s, x) => s + x * x, 0) + code.reduce((s, x) => s + x * x, 0) - 2 * q.reduce((s, x, i) => s + x * code[i], 0)) / temperature);
    const m = Math.max(...logits);
    const z = logits.reduce((s, l) => s + Math.exp(l - m), 0);
    logits.forEach((l, k) => {
      const p = Math.exp(l - m) / z;
      sampleEntropy -= (p * (l - m - Math.log(z))) / u.length;
      avg[k] += p / u.length;
    });
  }
  const avgEntropy = -avg.reduce((s, p) => s + p * Math.log(p + 1e-5), 0);
  return { vq: sq, commit: beta * sq, entropy: sampleEntropy - avgEntropy };
}

describe.each(['codebook_vq', 'codebook_entropy'])('quantize vs PyTorch (%s)', (name) => {
  it('indices exact; z_q, losses and the gradients of z and the codebook within 1e-4', async () => {
    const file = await openSafetensors(fixture(`${name}.safetensors`));
    const load = async (k: string) => tensor(await file.readF32(k), file.info(k).shape);
    const [beta, entropyWeight, entropyTemperature, a, b, c] = await file.readF32('cfg');
    const z = (await load('z')).requireGrad();
    const codebook = (await load('codebook')).requireGrad();
    const gy = await load('gy');
    const q = quantize(z, codebook, { beta, entropyWeight, entropyTemperature });
    expect(q.indices.shape).toEqual(file.info('indices').shape);
    expect(q.indices.dtype).toBe('i32');
    expect(await q.indices.toArray()).toEqual(Array.from(await file.readI32('indices')));
    expectClose('z_q (straight-through)', await q.zq.data(), await file.readF32('zq'), 1e-4);
    expectClose('vq_loss', await q.vqLoss.data(), await file.readF32('vq_loss'), 1e-4);
    expectClose('commit_loss', await q.commitLoss.data(), await file.readF32('commit_loss'), 1e-4);
    expect(q.entropyLoss !== undefined).toBe(entropyWeight > 0);
    if (q.entropyLoss) expectClose('entropy_loss', await q.entropyLoss.data(), await file.readF32('entropy_loss'), 1e-4);

    const loss = tidy(() => {
      let l = add(sum(mul(q.zq, gy)), add(mulScalar(q.vqLoss, a), mulScalar(q.commitLoss, b)));
      if (q.entropyLoss) l = add(l, mulScalar(q.entropyLoss, c));
      return l;
    });
    loss.backward();
    expectClose('grad z', await z.grad!.data(), await file.readF32('gz'), 1e-4);
    const gw = await codebook.grad!.data();
    expectClose('grad codebook', gw, await file.readF32('gcodebook'), 1e-4);
    if (!q.entropyLoss) {
      // only the chosen rows receive a gradient, and exactly zero elsewhere
      const chosen = new Set(await q.indices.toArray());
      const [k, cc] = codebook.shape;
      for (let r = 0; r < k; r++) if (!chosen.has(r)) for (let j = 0; j < cc; j++) expect(gw[r * cc + j]).toBe(0);
    }
    for (const t of [loss, q.zq, q.indices, q.vqLoss, q.commitLoss, q.entropyLoss, z, codebook, gy]) t?.dispose();
    await file.close();
  });
});

describe('nearestCode', () => {
  it('16384 x 8 codebook (split over workgroups), odd N, H, W, ties to the lowest index, vs a float64 argmin', async () => {
    const [k, c, shape] = [16384, 8, [3, 8, 7, 9]];
    const w = Float32Array.from(randomArray(k * c, 11));
    // duplicates in other tiles (of 256 codes) and splits than their original: the lower index must win
    for (const [dst, src] of [[16000, 300], [9001, 300], [5000, 4999], [255, 256]]) w.copyWithin(dst * c, src * c, (src + 1) * c);
    const z = Float32Array.from(randomArray(numel(shape), 12));
    // queries pointing exactly at duplicated codes (scaled, so they are not unit vectors)
    const s = 63;
    [[0, 300], [5, 4999], [62, 256]].forEach(([pos, code]) => {
      for (let j = 0; j < c; j++) z[Math.floor(pos / s) * c * s + j * s + (pos % s)] = 3 * w[code * c + j];
    });
    const zt = tensor(z, shape);
    const wt = tensor(w, [k, c]);
    const idx = nearestCode(zt, wt);
    expect(idx.shape).toEqual([3, 7, 9]);
    const got = await idx.toArray();
    const u = queryVectors(z, shape);
    const e = codeVectors(w, k, c);
    const want = cpuNearest(u, e);
    expect([got[0], got[5], got[62]]).toEqual([300, 4999, 255]);
    // a float32 near-tie (distances within 2e-6) may go either way; there are few
    let nearTies = 0;
    got.forEach((g, r) => {
      if (g === want[r]) return;
      expect(dist2(u[r], e[g]) - dist2(u[r], e[want[r]]), `query ${r}: ${g} instead of ${want[r]}`).toBeLessThan(2e-6);
      nearTies++;
    });
    expect(nearTies).toBeLessThanOrEqual(2);
    for (const t of [zt, wt, idx]) t.dispose();
  });

  it.each([
    ['[M, C] rows, C = 5 (padded to 8), one tile', [33, 5], 250],
    ['[N, C, L], C = 5, several tiles and splits', [2, 5, 41], 1000],
    ['C = 256 (one query per thread, long vectors)', [2, 256, 3, 5], 300],
    ['2175 queries (8 per thread), C = 8', [3, 8, 29, 25], 700],
  ])('%s', async (_, shape, k) => {
    const c = shape[1];
    const w = Float32Array.from(randomArray(k * c, k));
    const z = Float32Array.from(randomArray(numel(shape), k + 1));
    const [zt, wt] = [tensor(z, shape), tensor(w, [k, c])];
    const idx = nearestCode(zt, wt);
    expect(idx.shape).toEqual(shape.filter((_, i) => i !== 1));
    expect(await idx.toArray()).toEqual(cpuNearest(queryVectors(z, shape), codeVectors(w, k, c)));
    for (const t of [zt, wt, idx]) t.dispose();
  });

  it('f16 z and codebook give the f32 indices of the same values, and read views at unaligned offsets', async () => {
    const [k, c, shape] = [77, 8, [2, 8, 5]];
    const w = Array.from(randomArray(k * c, 5), roundToF16);
    const z = Array.from(randomArray(numel(shape) + 3, 6), roundToF16);
    const [z16, w16] = [tensor(z.slice(3), shape, 'f16'), tensor(w, [k, c], 'f16')];
    const zAll = tensor(z, [z.length]);
    const zView = zAll.view(shape, 3);
    const want = cpuNearest(queryVectors(z.slice(3), shape), codeVectors(w, k, c));
    const w32 = tensor(w, [k, c]);
    const [i16, iView] = [nearestCode(z16, w16), nearestCode(zView, w32)];
    expect(await i16.toArray()).toEqual(want);
    expect(await iView.toArray()).toEqual(want);
    for (const t of [z16, w16, w32, zAll, zView, i16, iView]) t.dispose();
  });

  it('names the argument at fault', () => {
    const [z, w, flat, ids] = [tensor([1, 2, 3, 4, 5, 6], [2, 3]), tensor([1, 2, 3, 4], [2, 2]), tensor([1, 2, 3, 4]), tensor([0, 1], [2])];
    expect(() => nearestCode(z, w)).toThrow(/nearestCode: z \[2, 3\] must be \[N, C, \.\.\.spatial\] with C = 2/);
    expect(() => nearestCode(z, flat)).toThrow(/codebook \[4\] must be \[K, C\]/);
    expect(() => lookup(ids, w)).toThrow(/lookup: indices \[2\] are f32; they must be i32/);
    for (const t of [z, w, flat, ids]) t.dispose();
  });
});

describe('lookup and l2Normalize', () => {
  it('lookup gives normalised codes channel-first, zeros for ids outside [0, K)', async () => {
    const [k, c] = [6, 3];
    const w = Array.from(randomArray(k * c, 21));
    const ids = [4, 0, -1, 5, 5, 6];
    const [it_, wt] = [tensor(ids, [1, 2, 3], 'i32'), tensor(w, [k, c])];
    const out = lookup(it_, wt);
    expect(out.shape).toEqual([1, c, 2, 3]);
    const e = codeVectors(w, k, c);
    const want = new Float64Array(c * 6);
    ids.forEach((id, r) => {
      for (let j = 0; j < c; j++) want[j * 6 + r] = id >= 0 && id < k ? e[id][j] : 0;
    });
    expectClose('lookup', await out.data(), want, 1e-6);
    const ids2 = tensor(ids.slice(0, 2), [2], 'i32');
    const rows = lookup(ids2, wt);
    expect(rows.shape).toEqual([2, c]);
    expectClose('lookup', await rows.data(), [...e[4], ...e[0]], 1e-6);
    for (const t of [it_, ids2, wt, out, rows]) t.dispose();
  });

  it('lookup: the codebook gradient sums repeated ids (finite differences)', async () => {
    const [k, c, ids] = [5, 4, [3, 1, 3, 0, 3, 1, 2]];
    const idt = tensor(ids, [1, 7], 'i32');
    await assertGradcheck(
      'lookup',
      ([w]) => lookup(idt, w),
      ([w]) => {
        const e = codeVectors(w, k, c);
        const out = new Float64Array(c * ids.length);
        ids.forEach((id, r) => e[id].forEach((v, j) => (out[j * ids.length + r] = v)));
        return out;
      },
      [{ shape: [k, c] }],
    );
    idt.dispose();
  });

  it.each([
    ['along axis 1 of [2, 5, 3]', [2, 5, 3], 1],
    ['along the last axis of [4, 7]', [4, 7], -1],
  ])('l2Normalize %s (finite differences)', async (_, shape, axis) => {
    const a = axis < 0 ? shape.length + axis : axis;
    await assertGradcheck('l2Normalize', ([x]) => l2Normalize(x, axis), ([x]) => {
      const y = new Float64Array(x.length);
      const inner = numel(shape.slice(a + 1));
      for (let o = 0; o < numel(shape.slice(0, a)); o++)
        for (let i = 0; i < inner; i++) {
          const at = (j: number) => o * shape[a] * inner + j * inner + i;
          const v = normalized(Array.from({ length: shape[a] }, (_, j) => x[at(j)]));
          v.forEach((val, j) => (y[at(j)] = val));
        }
      return y;
    }, [{ shape }]);
  });

  it('l2Normalize of a zero vector is zero (F.normalize clamps the norm at 1e-12)', async () => {
    const x = tensor([0, 0, 0, 3, 4, 0], [2, 3]);
    const y = l2Normalize(x);
    expect(await y.toArray()).toEqual([0, 0, 0, 0.6000000238418579, 0.800000011920929, 0]);
    x.dispose();
    y.dispose();
  });
});

describe('quantize losses: finite differences of the float64 LlamaGen math', () => {
  const [k, c, shape] = [11, 4, [2, 4, 3]];
  const beta = 0.25;
  const temperature = 0.5;
  const ref = (xs: Float64Array[]) => cpuLosses(queryVectors(xs[0], shape), codeVectors(xs[1], k, c), beta, temperature);
  // Each loss against the inputs it differentiates: the stop-gradients make vq_loss a function
  // of the codebook alone and commit_loss one of z alone.
  const run = (pickLoss: (q: ReturnType<typeof quantize>) => Tensor) => ([z, w]: Tensor[]) => {
    const q = quantize(z, w, { beta, entropyWeight: 1, entropyTemperature: temperature });
    const out = tidy(() => pickLoss(q));
    for (const t of [q.zq, q.indices, q.vqLoss, q.commitLoss, q.entropyLoss]) if (t !== out) t?.dispose();
    return out;
  };
  it('vq_loss -> codebook', async () => {
    await assertGradcheck('vq_loss', run((q) => q.vqLoss), (xs) => Float64Array.of(ref(xs).vq), [{ shape, grad: false }, { shape: [k, c] }]);
  });
  it('commit_loss -> z', async () => {
    await assertGradcheck('commit_loss', run((q) => q.commitLoss), (xs) => Float64Array.of(ref(xs).commit), [{ shape }, { shape: [k, c], grad: false }]);
  });
  it('entropy_loss -> z and codebook', async () => {
    await assertGradcheck('entropy_loss', run((q) => q.entropyLoss!), (xs) => Float64Array.of(ref(xs).entropy), [{ shape }, { shape: [k, c] }]);
  });
});
