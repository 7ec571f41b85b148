// Token sampling (runtime/ops/sampling.ts): every draw against a float64 CPU sampler that
// takes the same Philox uniform (LlamaGen's CFG and temperature, HF's top-k / top-p, the
// inverse CDF in token order), empirical distributions against softmax (chi-square), the
// support of top-k and top-p, greedy decoding, seeding, CFG scale 1, f16 logits, views and
// writing into a decode loop's token buffer.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Generator, type SampleOptions, type Tensor, getDevice, sample, tensor, tensorCount, zeros } from '../runtime/index.ts';
import { randomArray } from '../runtime/gradcheck.ts';
import { philox4x32, roundToF16 } from './ref/cpu.ts';

type Opts = Omit<SampleOptions, 'generator' | 'out'>;

/**
 * The sampling distribution of one row in float64, and how close a top-p decision came to
 * its boundary (so that a float32 GPU may decide it alike).
 */
function cpuDistribution(cond: ArrayLike<number>, uncond: ArrayLike<number> | null, o: Opts): { p: Float64Array; margin: number } {
  const v = cond.length;
  const t = Math.max(o.temperature ?? 1, 1e-5);
  const l = Float64Array.from({ length: v }, (_, i) => (uncond ? uncond[i] + (cond[i] - uncond[i]) * o.cfgScale! : cond[i]) / t);
  const keep = new Array<boolean>(v).fill(true);
  const topK = o.topK ?? 0;
  if (topK > 0 && topK < v) {
    const kth = [...l].sort((a, b) => b - a)[topK - 1];
    l.forEach((x, i) => (keep[i] = x >= kth));
  }
  const softmax = () => {
    const m = Math.max(...l.filter((_, i) => keep[i]));
    const p = Float64Array.from(l, (x, i) => (keep[i] ? Math.exp(x - m) : 0));
    const z = p.reduce((a, b) => a + b, 0);
    return p.map((x) => x / z);
  };
  let margin = Infinity;
  const topP = o.topP ?? 1;
  if (topP < 1) {
    const p = softmax();
    const order = [...p.keys()].filter((i) => keep[i]).sort((a, b) => l[b] - l[a]);
    let before = 0; // HF: a token stays when the mass sorted before it is <= top_p
    for (const i of order) {
      margin = Math.min(margin, Math.abs(before - topP));
      keep[i] = before <= topP;
      before += p[i];
    }
  }
  return { p: softmax(), margin };
}

/** The uniform the kernel draws for `row` at generator step `step` (Philox counter (row, step), key seed). */
function uniform(seed: number, step: number, row: number): number {
  const w = philox4x32([row, step >>> 0, Math.floor(step / 2 ** 32), 0], [seed >>> 0, Math.floor(seed / 2 ** 32)]);
  return (w[0] >>> 8) / 16777216;
}

/** Inverse CDF in token order; margin: how close u came to a CDF step. */
function invCdf(p: Float64Array, u: number): { token: number; margin: number } {
  let c = 0;
  let margin = Infinity;
  let token = -1;
  p.forEach((x, i) => {
    if (x === 0) return;
    c += x;
    margin = Math.min(margin, Math.abs(c - u));
    if (token < 0 && c > u) token = i;
  });
  return { token, margin };
}

const rows = (data: ArrayLike<number>, v: number) => Array.from({ length: data.length / v }, (_, r) => Array.prototype.slice.call(data, r * v, (r + 1) * v) as number[]);
const argmax = (xs: number[]) => xs.reduce((best, x, i) => (x > xs[best] ? i : best), 0);

/** Draws `n` rows of the same logits row (cond, optional uncond after): token counts. */
async function histogram(cond: number[], uncond: number[] | null, n: number, o: Opts, seed: number): Promise<number[]> {
  const v = cond.length;
  const data = new Float32Array((uncond ? 2 : 1) * n * v);
  for (let r = 0; r < n; r++) {
    data.set(cond, r * v);
    if (uncond) data.set(uncond, (n + r) * v);
  }
  const logits = tensor(data, [data.length / v, v]);
  const tokens = sample(logits, { ...o, generator: new Generator(seed) });
  const counts = new Array<number>(v).fill(0);
  for (const t of await tokens.toArray()) counts[t]++;
  logits.dispose();
  tokens.dispose();
  return counts;
}

/** Pearson's chi-square statistic of counts against probabilities (cells with p > 0). */
const chiSquare = (counts: number[], p: Float64Array, n: number) => counts.reduce((s, c, i) => (p[i] > 0 ? s + (c - n * p[i]) ** 2 / (n * p[i]) : s), 0);

let start = 0;
beforeAll(async () => {
  await getDevice();
  start = tensorCount();
});
afterAll(() => expect(tensorCount()).toBe(start));

describe('each draw equals the float64 CPU sampler at the same Philox uniform', () => {
  const [b, v] = [3, 20011];
  // flat: logits in [-4, 4]; spiky: plus 40 spikes in [6, 12] per row that hold most of the
  // mass, so that top-p boundaries fall between tokens of sizeable probability
  const logitsOf = (seed: number, spiky: boolean) => {
    const l = Array.from(randomArray(b * v, seed, -4, 4), Math.fround);
    const spikes = randomArray(2 * 40 * b, seed + 1);
    if (spiky) for (let i = 0; i < 40 * b; i++) l[Math.floor(i / 40) * v + Math.floor(spikes[2 * i] * v)] = Math.fround(6 + 6 * spikes[2 * i + 1]);
    return l;
  };
  it.each<[string, boolean, Opts]>([
    ['plain softmax, flat logits', false, {}],
    ['top-k 3000, flat logits', false, { topK: 3000 }],
    ['temperature 0.7', true, { temperature: 0.7 }],
    ['top-p 0.4', true, { topP: 0.4 }],
    ['CFG 4 + temperature 0.9 + top-k 2000 + top-p 0.9', true, { cfgScale: 4, temperature: 0.9, topK: 2000, topP: 0.9 }],
    ['CFG 1.5 + top-k 7', true, { cfgScale: 1.5, topK: 7 }],
  ])('%s (V = 20011, several steps)', async (_, spiky, o) => {
    const cfg = o.cfgScale !== undefined;
    const [cond, uncond] = [logitsOf(1, spiky), logitsOf(3, spiky)];
    const logits = tensor([...cond, ...(cfg ? uncond : [])], [(cfg ? 2 : 1) * b, v]);
    const dists = rows(cond, v).map((c, r) => cpuDistribution(c, cfg ? rows(uncond, v)[r] : null, o));
    for (const d of dists) expect(d.margin, 'the test data sits on a top-p boundary').toBeGreaterThan(1e-4);
    const seed = 2 ** 33 + 17; // both key words
    const gen = new Generator(seed);
    gen.counter = 2 ** 32 - 2; // steps past 32 bits use both counter words
    let checked = 0;
    for (let s = 0; s < 4; s++) {
      const step = gen.counter;
      const tokens = sample(logits, { ...o, generator: gen });
      expect(gen.counter).toBe(step + 1);
      expect(tokens.shape).toEqual([b]);
      expect(tokens.dtype).toBe('i32');
      const got = await tokens.toArray();
      tokens.dispose();
      got.forEach((token, r) => {
        const want = invCdf(dists[r].p, uniform(seed, step, r));
        if (want.margin < 2e-6) return; // the float32 CDF may round either way
        expect(token, `step ${step} row ${r}`).toBe(want.token);
        checked++;
      });
    }
    expect(checked).toBeGreaterThanOrEqual(10);
    logits.dispose();
  });
});

describe('distributions', () => {
  it('20000 draws at temperature 1 follow softmax (chi-square, 6 degrees of freedom)', async () => {
    const l = [0.3, -1, 2, 0.5, 1.2, -0.4, 0];
    const n = 20000;
    const { p } = cpuDistribution(l, null, {});
    const counts = await histogram(l, null, n, {}, 77);
    // 22.46: the 0.999 quantile of chi-square(6)
    expect(chiSquare(counts, p, n)).toBeLessThan(22.46);
  });

  it('20000 draws with CFG, temperature, top-k and top-p follow the renormalised distribution', async () => {
    const cond = [1, 0.2, -0.5, 2.5, 0.7, -2, 1.9, 0.1, 1.4];
    const uncond = [0.5, 0.4, 0.1, 1.0, 0.9, 0.3, 1.2, -0.2, 0.6];
    const o: Opts = { cfgScale: 2, temperature: 1.3, topK: 6, topP: 0.9 };
    const n = 20000;
    const { p, margin } = cpuDistribution(cond, uncond, o);
    expect(margin).toBeGreaterThan(1e-3);
    const kept = [...p.keys()].filter((i) => p[i] > 0);
    expect(kept.length).toBe(4);
    const counts = await histogram(cond, uncond, n, o, 78);
    for (let i = 0; i < cond.length; i++) if (p[i] === 0) expect(counts[i], `token ${i} is filtered out`).toBe(0);
    // 16.27: the 0.999 quantile of chi-square(3)
    expect(chiSquare(counts, p, n)).toBeLessThan(16.27);
  });

  it('top-k restricts the support to the k largest (and keeps ties with the k-th)', async () => {
    const l = Array.from(randomArray(257, 9, -3, 3));
    const top5 = [...l.keys()].sort((a, b) => l[b] - l[a]).slice(0, 5).sort((a, b) => a - b);
    const counts = await histogram(l, null, 2000, { topK: 5, temperature: 4 }, 5);
    expect([...counts.keys()].filter((i) => counts[i] > 0)).toEqual(top5);
    const ties = [5, 4, 3, 0, 3, 1, 3, 2, -1, 0];
    const tied = await histogram(ties, null, 3000, { topK: 3 }, 6);
    expect([...tied.keys()].filter((i) => tied[i] > 0)).toEqual([0, 1, 2, 4, 6]);
  });

  it.each<[string, number[], Opts, number[]]>([
    ['p 0.8 keeps the tokens until the mass before them passes p', [0.5, 0.2, 0.15, 0.1, 0.05], { topP: 0.8 }, [0, 1, 2]],
    ['p 0.45 keeps the largest token alone', [0.5, 0.2, 0.15, 0.1, 0.05], { topP: 0.45 }, [0]],
    ['p 0 keeps the largest token', [0.2, 0.05, 0.4, 0.35], { topP: 0 }, [2]],
    ['p 0.9 on a permuted distribution', [0.05, 0.3, 0.1, 0.25, 0.2, 0.1], { topP: 0.9 }, [1, 2, 3, 4, 5]],
    ['after top-k 3 (renormalised: 0.59, 0.24, 0.18), p 0.7', [0.15, 0.5, 0.1, 0.2, 0.05], { topK: 3, topP: 0.7 }, [1, 3]],
  ])('top-p support equals the CPU nucleus: %s', async (_, probs, o, want) => {
    const l = probs.map(Math.log);
    const { p } = cpuDistribution(l, null, o);
    expect([...p.keys()].filter((i) => p[i] > 0)).toEqual(want);
    const counts = await histogram(l, null, 3000, o, 13);
    expect([...counts.keys()].filter((i) => counts[i] > 0)).toEqual(want);
  });
});

describe('greedy, seeding, CFG', () => {
  it('top-k 1 and temperature 0 give the argmax (lowest index among ties), with and without CFG', async () => {
    const [b, v] = [4, 16411];
    const cond = Array.from(randomArray(b * v, 3, -5, 5), Math.fround);
    const uncond = Array.from(randomArray(b * v, 4, -5, 5), Math.fround);
    // row 3: the maximum twice, in different threads' ranges
    cond[3 * v + 9000] = 7;
    cond[3 * v + 200] = 7;
    const plain = tensor(cond, [b, v]);
    const both = tensor([...cond, ...uncond], [2 * b, v]);
    const want = rows(cond, v).map(argmax);
    expect(want[3]).toBe(200);
    const combined = rows(cond, v).map((c, r) => argmax(c.map((x, i) => Math.fround(uncond[r * v + i] + Math.fround(Math.fround(x - uncond[r * v + i]) * 3)))));
    const got = [
      sample(plain, { topK: 1 }),
      sample(plain, { temperature: 0, topP: 0.5 }),
      sample(both, { cfgScale: 3, topK: 1 }),
    ];
    expect(await got[0].toArray()).toEqual(want);
    expect(await got[1].toArray()).toEqual(want);
    expect(await got[2].toArray()).toEqual(combined);
    for (const t of [plain, both, ...got]) t.dispose();
  });

  it('a seed gives the same tokens every run; steps and seeds give others', async () => {
    const logits = tensor(new Float32Array(8 * 1000), [8, 1000]); // uniform: 1000 choices per row
    const run = async (g: Generator) => {
      const t = sample(logits, { generator: g, topP: 0.99 });
      const a = await t.toArray();
      t.dispose();
      return a;
    };
    const [g1, g2] = [new Generator(1234), new Generator(1234)];
    const first = await run(g1);
    expect(await run(g2)).toEqual(first);
    const second = await run(g1);
    expect(await run(g2)).toEqual(second);
    expect(second).not.toEqual(first);
    expect(await run(new Generator(1235))).not.toEqual(first);
    logits.dispose();
  });

  it('CFG scale 1 samples the conditional logits (same tokens, same seed)', async () => {
    const [b, v] = [3, 16411];
    // multiples of 1/64: uncond + (cond - uncond)·1 is exactly cond in float32
    const q = (x: number) => Math.round(x * 64) / 64;
    const cond = Array.from(randomArray(b * v, 7, -8, 8), q);
    const uncond = Array.from(randomArray(b * v, 8, -8, 8), q);
    const [c, cu] = [tensor(cond, [b, v]), tensor([...cond, ...uncond], [2 * b, v])];
    for (const o of [{}, { temperature: 0.9, topK: 50, topP: 0.9 }] as Opts[]) {
      const [x, y] = [sample(c, { ...o, generator: new Generator(3) }), sample(cu, { ...o, cfgScale: 1, generator: new Generator(3) })];
      expect(await y.toArray()).toEqual(await x.toArray());
      x.dispose();
      y.dispose();
    }
    c.dispose();
    cu.dispose();
  });
});

describe('inputs and outputs', () => {
  it('f16 logits and logits read through a view at an unaligned offset give the f32 tokens', async () => {
    const [b, v] = [3, 1001];
    const data = Array.from(randomArray((b + 1) * v, 10, -4, 4), roundToF16);
    const f32 = tensor(data.slice(v), [b, v]);
    const f16 = tensor(data.slice(v), [b, v], 'f16');
    const all = tensor(data, [b + 1, v]);
    const view = all.view([b, v], v); // starts 1001 elements in: not 256-byte aligned
    const o: Opts = { temperature: 0.8, topK: 100, topP: 0.95 };
    const results = [];
    for (const x of [f32, f16, view]) {
      const t = sample(x, { ...o, generator: new Generator(21) });
      results.push(await t.toArray());
      t.dispose();
    }
    expect(results[1]).toEqual(results[0]);
    expect(results[2]).toEqual(results[0]);
    for (const t of [f32, f16, all, view]) t.dispose();
  });

  it('writes into a token buffer slot per step (the decode loop), leaving the rest alone', async () => {
    const [b, v, steps] = [2, 509, 5];
    const logits = tensor(Array.from(randomArray(b * v, 11, -2, 2)), [b, v]);
    const buf = zeros([b, steps + 1], 'i32');
    const g = new Generator(99);
    for (let s = 0; s < steps; s++) expect(sample(logits, { generator: g, out: { tensor: buf, offset: s, stride: steps + 1 } })).toBe(buf);
    const want: number[][] = [[], []];
    const h = new Generator(99);
    for (let s = 0; s < steps; s++) {
      const t = sample(logits, { generator: h });
      (await t.toArray()).forEach((tok, r) => want[r].push(tok));
      t.dispose();
    }
    expect(await buf.toArray()).toEqual([...want[0], 0, ...want[1], 0]);
    for (const t of [logits, buf]) t.dispose();
  });

  it('names the argument at fault', () => {
    const [odd, ints, buf] = [tensor([1, 2, 3], [3, 1]), tensor([1, 2], [1, 2], 'i32'), zeros([2], 'i32')];
    expect(() => sample(odd, { cfgScale: 2 })).toThrow(/even number of rows/);
    expect(() => sample(ints)).toThrow(/sample: logits are i32/);
    expect(() => sample(odd, { topK: -1 })).toThrow(/topK -1/);
    expect(() => sample(odd, { temperature: -1 })).toThrow(/temperature -1/);
    expect(() => sample(odd, { out: { tensor: buf } })).toThrow(/does not fit out.tensor \[2\]/);
    for (const t of [odd, ints, buf]) t.dispose();
  });
});
