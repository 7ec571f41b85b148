// Embedding, GEGLU, SwiGLU, LlamaGen rotary embeddings, diffusers' timestep embedding and
// cross-entropy: against PyTorch (test/fixtures/gen_nn.py, which copies the reference
// formulas of LlamaGen gpt.py and diffusers), float64 CPU references with finite
// differences, and f16 storage. Shapes are small and odd.
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import {
  type Tensor, applyRotaryEmb, cast, crossEntropy, embedding, geglu, precomputeFreqsCis, precomputeFreqsCis2d, swiglu, tensor, timestepEmbedding,
} from '../runtime/index.ts';
import { assertGradcheck, randomArray, seededRandom } from '../runtime/gradcheck.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { erf, maxAbsError, maxRelError, roundToF16 } from './ref/cpu.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const layers = await openSafetensors(fixture('nn_layers.safetensors'));
const rope = await openSafetensors(fixture('nn_rope.safetensors'));
type File = typeof layers;
const load = async (f: File, k: string, dtype: 'f32' | 'f16' = 'f32') => tensor(await f.readF32(k), f.info(k).shape, dtype);
const loadI32 = async (f: File, k: string) => tensor(await f.readI32(k), f.info(k).shape, 'i32');

// Worst error per group, printed at the end (the numbers quoted in reports).
const noteWorst = errorReport();
function note(group: string, err: number, rtol: number): void {
  noteWorst(group, err);
  expect(err, group).toBeLessThanOrEqual(rtol);
}
async function expectClose(group: string, got: Tensor, want: ArrayLike<number>, rtol: number): Promise<void> {
  note(group, maxRelError(await got.data(), want), rtol);
}
const disposeAll = (...ts: (Tensor | null | undefined)[]) => ts.forEach((t) => t?.dispose());
const f16 = (a: ArrayLike<number>) => Float32Array.from(a, roundToF16);

// ---- embedding -----------------------------------------------------------------------------
/** Float64 gather and scatter-add: [y, dtable]. Ids outside [0, V) give zero rows and no gradient. */
function embeddingRef(ids: ArrayLike<number>, table: ArrayLike<number>, gy: ArrayLike<number> | null, vocab: number, dim: number) {
  const y = new Float64Array(ids.length * dim);
  const gt = new Float64Array(vocab * dim);
  Array.from(ids).forEach((id, i) => {
    if (id < 0 || id >= vocab) return;
    for (let d = 0; d < dim; d++) {
      y[i * dim + d] = table[id * dim + d];
      if (gy) gt[id * dim + d] += gy[i * dim + d];
    }
  });
  return [y, gt];
}

describe('embedding', () => {
  it('matches F.embedding and its weight gradient with repeated ids', async () => {
    const table = (await load(layers, 'embed.table')).requireGrad();
    const ids = await loadI32(layers, 'embed.ids');
    const y = embedding(ids, table);
    expect(y.shape).toEqual([3, 5, 7]);
    await expectClose('embedding forward', y, await layers.readF32('embed.y'), 0);
    const gy = await load(layers, 'embed.gy');
    y.backward(gy);
    await expectClose('embedding grad table', table.grad!, await layers.readF32('embed.gtable'), 1e-6);
    disposeAll(table, ids, y, gy);
  });

  it('large buckets, a vocabulary over one scan block, ids out of range; deterministic', async () => {
    const [vocab, dim, n] = [600, 5, 2000];
    const r = seededRandom(7);
    // a third of the ids are 7, some are out of range (-1 and vocab)
    const idv = Array.from({ length: n }, (_, i) => (i % 3 === 0 ? 7 : i % 97 === 1 ? -1 : i % 89 === 2 ? vocab : Math.floor(r() * vocab)));
    const tableData = Float32Array.from(randomArray(vocab * dim, 8));
    const gyData = Float32Array.from(randomArray(n * dim, 9));
    const [yRef, gRef] = embeddingRef(idv, tableData, gyData, vocab, dim);
    const ids = tensor(idv, [n], 'i32');
    const grads: Float32Array[] = [];
    for (let run = 0; run < 2; run++) {
      const table = tensor(tableData, [vocab, dim]).requireGrad();
      const gy = tensor(gyData, [n, dim]);
      const y = embedding(ids, table);
      await expectClose('embedding forward', y, yRef, 0);
      y.backward(gy);
      grads.push((await table.grad!.data()) as Float32Array);
      disposeAll(table, gy, y);
    }
    note('embedding grad table', maxRelError(grads[0], gRef), 1e-6);
    expect(grads[1]).toEqual(grads[0]); // same summation order every run
    ids.dispose();
  });

  it('f16 table', async () => {
    const [vocab, dim] = [13, 6];
    const idv = [12, 0, 5, 5, 3, 12, 12];
    const tableData = f16(randomArray(vocab * dim, 10));
    const gyData = f16(randomArray(idv.length * dim, 11));
    const [yRef, gRef] = embeddingRef(idv, tableData, gyData, vocab, dim);
    const [ids, table, gy] = [tensor(idv, [7], 'i32'), tensor(tableData, [vocab, dim], 'f16').requireGrad(), tensor(gyData, [7, dim], 'f16')];
    const y = embedding(ids, table);
    expect(y.dtype).toBe('f16');
    await expectClose('embedding f16 forward', y, yRef, 0);
    y.backward(gy);
    expect(table.grad!.dtype).toBe('f16');
    await expectClose('embedding f16 grad table', table.grad!, gRef, 1e-3);
    disposeAll(ids, table, gy, y);
  });

  it('finite differences', async () => {
    const idv = [2, 0, 2, 4, 2, 1];
    await assertGradcheck(
      'embedding',
      ([idsF, table]) => {
        const ids = cast(idsF, 'i32');
        const y = embedding(ids, table);
        ids.dispose();
        return y;
      },
      ([ids, table]) => embeddingRef(ids, table, null, 5, 3)[0],
      [{ shape: [2, 3], data: idv, grad: false }, { shape: [5, 3] }],
    );
  });
});

// ---- GEGLU / SwiGLU ------------------------------------------------------------------------
const gelu = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));
const silu = (v: number) => v / (1 + Math.exp(-v));

function gegluRef(x: ArrayLike<number>, shape: number[]): Float64Array {
  const d = shape.at(-1)!;
  const h = d / 2;
  const y = new Float64Array(x.length / 2);
  for (let i = 0; i < y.length; i++) {
    const r = Math.floor(i / h);
    const k = i % h;
    y[i] = x[r * d + k] * gelu(x[r * d + h + k]);
  }
  return y;
}

describe('gated units', () => {
  it('GEGLU matches diffusers (hidden · gelu(gate))', async () => {
    const x = (await load(layers, 'geglu.x')).requireGrad();
    const y = geglu(x);
    expect(y.shape).toEqual([3, 4, 9]);
    await expectClose('geglu forward', y, await layers.readF32('geglu.y'), 1e-5);
    const gy = await load(layers, 'geglu.gy');
    y.backward(gy);
    await expectClose('geglu grad', x.grad!, await layers.readF32('geglu.gx'), 1e-5);
    disposeAll(x, y, gy);
  });

  it('SwiGLU matches silu(a) · b', async () => {
    const a = (await load(layers, 'swiglu.a')).requireGrad();
    const b = (await load(layers, 'swiglu.b')).requireGrad();
    const y = swiglu(a, b);
    await expectClose('swiglu forward', y, await layers.readF32('swiglu.y'), 1e-5);
    const gy = await load(layers, 'swiglu.gy');
    y.backward(gy);
    await expectClose('swiglu grad', a.grad!, await layers.readF32('swiglu.ga'), 1e-5);
    await expectClose('swiglu grad', b.grad!, await layers.readF32('swiglu.gb'), 1e-5);
    disposeAll(a, b, y, gy);
  });

  it('finite differences (GEGLU; SwiGLU with broadcasting)', async () => {
    const shape = [2, 3, 10];
    await assertGradcheck('geglu', ([x]) => geglu(x), ([x]) => gegluRef(x, shape), [{ shape, data: randomArray(60, 12, -3, 3) }]);
    await assertGradcheck(
      'swiglu',
      ([a, b]) => swiglu(a, b),
      ([a, b]) => Float64Array.from({ length: 60 }, (_, i) => silu(a[Math.floor(i / 20) * 5 + (i % 5)]) * b[i % 20]),
      [{ shape: [3, 1, 5], data: randomArray(15, 13, -4, 4) }, { shape: [4, 5] }],
    );
  });

  it('rejects an odd GEGLU width', () => {
    const x = tensor(new Float32Array(6), [2, 3]);
    expect(() => geglu(x)).toThrow(/geglu: the last axis of input x \[2, 3\] must have an even length/);
    x.dispose();
  });
});

// ---- rotary embeddings -----------------------------------------------------------------------
/** Float64 apply_rotary_emb of x [B, S, H, D] with a (cos, sin) table [S, D/2, 2]. */
function ropeRef(x: ArrayLike<number>, [b, s, h, d]: number[], f: ArrayLike<number>): Float64Array {
  const y = new Float64Array(x.length);
  for (let i = 0; i < b * s * h; i++)
    for (let j = 0; j < d / 2; j++) {
      const pos = Math.floor(i / h) % s;
      const [c, sn] = [f[pos * d + 2 * j], f[pos * d + 2 * j + 1]];
      const [x0, x1] = [x[i * d + 2 * j], x[i * d + 2 * j + 1]];
      y[i * d + 2 * j] = x0 * c - x1 * sn;
      y[i * d + 2 * j + 1] = x1 * c + x0 * sn;
    }
  return y;
}

describe('rotary embeddings (LlamaGen)', () => {
  it.each(['table1d', 'table2d', 'table2d_base'])('%s: precompute_freqs_cis tables', async (name) => {
    const [n, elem, base, cls] = await rope.readI32(`${name}.cfg`);
    const t = name === 'table1d' ? precomputeFreqsCis(n, elem, base, cls) : precomputeFreqsCis2d(n, elem, base, cls);
    expect(t.shape).toEqual(rope.info(`${name}.freqs`).shape);
    note('rope tables (abs)', maxAbsError(await t.data(), await rope.readF32(`${name}.freqs`)), 1e-6);
    t.dispose();
  });

  it.each(['rope1d', 'rope2d'])('%s: apply_rotary_emb forward and gradient, class tokens included', async (name) => {
    const x = (await load(rope, `${name}.x`)).requireGrad();
    const freqs = await load(rope, `${name}.freqs`);
    const y = applyRotaryEmb(x, freqs);
    await expectClose('rope forward', y, await rope.readF32(`${name}.y`), 1e-6);
    const gy = await load(rope, `${name}.gy`);
    y.backward(gy);
    await expectClose('rope grad', x.grad!, await rope.readF32(`${name}.gx`), 1e-6);
    disposeAll(x, freqs, y, gy);
  });

  it('finite differences, and f16 storage', async () => {
    // The backward multiplies by the transpose, right for any table, not only rotations.
    const shape = [2, 3, 2, 6];
    await assertGradcheck('applyRotaryEmb', ([x, f]) => applyRotaryEmb(x, f), ([x, f]) => ropeRef(x, shape, f), [
      { shape },
      { shape: [3, 3, 2], grad: false },
    ]);
    const table = precomputeFreqsCis(5, 6, 10000, 0);
    const xData = f16(randomArray(2 * 5 * 3 * 6, 14, -2, 2));
    const x = tensor(xData, [2, 5, 3, 6], 'f16');
    const y = applyRotaryEmb(x, table);
    expect(y.dtype).toBe('f16');
    await expectClose('rope f16', y, ropeRef(xData, [2, 5, 3, 6], await table.data()), 1e-3);
    disposeAll(table, x, y);
  });

  it('checks the table against x', () => {
    const x = tensor(new Float32Array(2 * 4 * 8), [1, 2, 4, 8]);
    const t = precomputeFreqsCis(3, 8, 10000, 0);
    expect(() => applyRotaryEmb(x, t)).toThrow(/freqsCis \[3, 4, 2\] f32 must be f32 \[2, 4, 2\] for input x \[1, 2, 4, 8\]/);
    expect(() => precomputeFreqsCis2d(4, 10)).toThrow(/nElem 10 \(the head dimension\) must be a multiple of 4/);
    disposeAll(x, t);
  });
});

// ---- timestep embedding ----------------------------------------------------------------------
describe('timestep embedding (diffusers get_timestep_embedding)', () => {
  // PyTorch's float32 exp is off by one ulp on some frequencies; at t = 999 that moves the
  // argument by up to 6e-5, hence 1e-4 against PyTorch and 2e-6 against the exact reference.
  it.each(['temb', 'temb_sd', 'temb_odd', 'temb_scaled'])('%s matches diffusers', async (name) => {
    const [dim, flip, shift, scale, period] = await layers.readF32(`${name}.cfg`);
    const t = await load(layers, `${name}.t`);
    const y = timestepEmbedding(t, dim, { flipSinToCos: flip === 1, downscaleFreqShift: shift, scale, maxPeriod: period });
    expect(y.shape).toEqual([6, dim]);
    await expectClose('timestep vs PyTorch', y, await layers.readF32(`${name}.y`), 1e-4);
    disposeAll(t, y);
  });

  it('stays accurate for large arguments (range reduction), integer timesteps', async () => {
    const ts = [0, 3, 999, 4321, 9999, 20000];
    const dim = 64;
    const half = dim / 2;
    // diffusers' float32 steps, evaluated exactly: sin/cos of the float32 argument
    const want = new Float64Array(ts.length * dim);
    ts.forEach((tv, r) => {
      for (let k = 0; k < half; k++) {
        const f = Math.fround(Math.exp(Math.fround(Math.fround(Math.fround(-Math.log(10000)) * k) / half)));
        const a = Math.fround(Math.fround(tv * f) * 0.5);
        want[r * dim + k] = Math.cos(a);
        want[r * dim + half + k] = Math.sin(a);
      }
    });
    const t = tensor(ts, [ts.length], 'i32');
    const y = timestepEmbedding(t, dim, { flipSinToCos: true, downscaleFreqShift: 0, scale: 0.5 });
    note('timestep exact (abs)', maxAbsError(await y.data(), want), 2e-6);
    disposeAll(t, y);
  });
});

// ---- cross-entropy ---------------------------------------------------------------------------
function crossEntropyRef(x: ArrayLike<number>, targets: number[], v: number, ignore = -100): number {
  let sum = 0;
  let count = 0;
  targets.forEach((t, r) => {
    if (t === ignore) return;
    const row = Array.from({ length: v }, (_, k) => x[r * v + k]);
    const m = Math.max(...row);
    sum += m + Math.log(row.reduce((a, e) => a + Math.exp(e - m), 0)) - row[t];
    count++;
  });
  return sum / count;
}

describe('cross-entropy', () => {
  it.each(['ce', 'ce_wide'])('%s matches F.cross_entropy with ignore_index', async (name) => {
    const logits = (await load(layers, `${name}.logits`)).requireGrad();
    const targets = await loadI32(layers, `${name}.targets`);
    const [ignoreIndex] = await layers.readI32(`${name}.cfg`);
    const loss = crossEntropy(logits, targets, { ignoreIndex });
    expect(loss.shape).toEqual([]);
    await expectClose('cross-entropy loss', loss, await layers.readF32(`${name}.loss`), 1e-6);
    const gy = await load(layers, `${name}.gy`);
    loss.backward(gy);
    await expectClose('cross-entropy grad', logits.grad!, await layers.readF32(`${name}.glogits`), 1e-5);
    disposeAll(logits, targets, loss, gy);
  });

  it('finite differences, with an ignored row and leading axes', async () => {
    const tv = [3, -100, 0, 6, 6, 2];
    await assertGradcheck(
      'crossEntropy',
      ([x]) => {
        const t = tensor(tv, [2, 3], 'i32');
        const l = crossEntropy(x, t);
        t.dispose();
        return l;
      },
      ([x]) => Float64Array.of(crossEntropyRef(x, tv, 7)),
      [{ shape: [2, 3, 7], data: randomArray(42, 15, -4, 4) }],
    );
  });

  it('f16 logits', async () => {
    const [n, v] = [5, 37];
    const xData = f16(randomArray(n * v, 16, -6, 6));
    const tv = [36, 0, 17, -100, 5];
    const x = tensor(xData, [n, v], 'f16').requireGrad();
    const t = tensor(tv, [n], 'i32');
    const loss = crossEntropy(x, t);
    await expectClose('cross-entropy f16', loss, [crossEntropyRef(xData, tv, v)], 1e-6);
    loss.backward();
    expect(x.grad!.dtype).toBe('f16');
    const g = Float64Array.from(await x.grad!.data());
    // each counted row of softmax - onehot sums to 0; the ignored row is 0
    for (let r = 0; r < n; r++) expect(Math.abs(g.subarray(r * v, r * v + v).reduce((a, e) => a + e, 0))).toBeLessThan(2e-3);
    expect(Array.from(g.subarray(3 * v, 4 * v)).every((e) => e === 0)).toBe(true);
    disposeAll(x, t, loss);
  });

  it('is NaN when every target is ignored or a target is out of range', async () => {
    const x = tensor(new Float32Array(8).fill(0.5), [2, 4]);
    for (const tv of [[-100, -100], [1, 4]]) {
      const t = tensor(tv, [2], 'i32');
      const loss = crossEntropy(x, t);
      expect(Number.isNaN(await loss.item())).toBe(true);
      disposeAll(t, loss);
    }
    const t3 = tensor([1, 2, 3], [3], 'i32');
    expect(() => crossEntropy(x, t3)).toThrow(/targets \[3\] must be \[2\] for logits \[2, 4\]/);
    disposeAll(x, t3);
  });
});
