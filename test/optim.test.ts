// Optimisers against PyTorch (test/fixtures/gen_optim.py: torch.optim.AdamW / SGD over given
// gradient sequences, torch.nn.utils.clip_grad_norm_), parameters and gradients that are
// views at unaligned offsets, f16 parameters, learning-rate schedules, state dicts and errors.
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Tensor, getDevice, tensor, tensorCount, tidy } from '../runtime/index.ts';
import {
  AdamW, type Optimizer, SGD, clipGradNorm, constantLr, optimizerStateFromTensors, optimizerStateToTensors, warmupCosine,
} from '../runtime/optim.ts';
import { randomArray } from '../runtime/gradcheck.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { maxRelError, roundToF16 } from './ref/cpu.ts';

const fx = await openSafetensors(fileURLToPath(new URL('./fixtures/optim.safetensors', import.meta.url)));
const shapeOf = (k: string) => fx.info(k).shape;
const load = async (k: string) => tensor(await fx.readF32(k), shapeOf(k));
/** Hyperparameters are stored in float64 (1 - beta2 from a float32 beta2 would be off by 1e-5). */
const readF64 = async (k: string) => new Float64Array((await fx.readRaw(k)).slice().buffer);
const STEPS = shapeOf('adamw.lr')[0];
const NPARAMS = 3;

const worst = new Map<string, number>();
function note(group: string, err: number, rtol: number): void {
  worst.set(group, Math.max(worst.get(group) ?? 0, err));
  expect(err, group).toBeLessThanOrEqual(rtol);
}

let start = 0;
beforeAll(async () => {
  await getDevice();
  start = tensorCount();
});
afterAll(async () => {
  console.log('max relative errors vs PyTorch (|gpu - torch| / max |torch|):\n' + [...worst].map(([k, v]) => `  ${k}: ${v.toExponential(2)}`).join('\n'));
  await fx.close();
  expect(tensorCount()).toBe(start);
});

/**
 * The fixture's parameters, the first one a view at an unaligned offset into a larger
 * buffer (the update must honour the offset and leave the neighbours alone): [params, host].
 */
async function fixtureParams(c: string): Promise<[Tensor[], Tensor]> {
  const p0 = await fx.readF32(`${c}.p0.init`);
  const hostData = new Float32Array(p0.length + 13).fill(7);
  hostData.set(p0, 5);
  const host = tensor(hostData);
  const params = [host.view(shapeOf(`${c}.p0.init`), 5), ...(await Promise.all([1, 2].map((i) => load(`${c}.p${i}.init`))))];
  return [params.map((p) => p.requireGrad()), host];
}

async function setGrads(c: string, params: Tensor[], k: number): Promise<void> {
  for (let i = 0; i < NPARAMS; i++) {
    const all = await fx.readF32(`${c}.p${i}.grads`);
    const n = params[i].size;
    const g = all.subarray(k * n, (k + 1) * n);
    params[i].grad = Number.isNaN(g[0]) ? null : tensor(g, params[i].shape); // NaN: torch had grad None
  }
}

async function runCase(c: string, make: (ps: Tensor[], hp: Float64Array, lrs: Float64Array) => Optimizer, states: string[]): Promise<void> {
  const hp = await readF64(`${c}.hp`);
  const lrs = await readF64(`${c}.lr`);
  const [params, host] = await fixtureParams(c);
  const opt = make(params, hp, lrs);
  for (let k = 0; k < STEPS; k++) {
    await setGrads(c, params, k);
    opt.step();
    opt.zeroGrad();
    for (let i = 0; i < NPARAMS; i++) {
      const n = params[i].size;
      note(`${c} parameters`, maxRelError(await params[i].data(), (await fx.readF32(`${c}.p${i}.traj`)).subarray(k * n, (k + 1) * n)), 1e-5);
    }
  }
  const sd = opt.stateDict();
  for (let i = 0; i < NPARAMS; i++) {
    expect(Object.keys(sd.state[String(i)].buffers).sort()).toEqual(states);
    for (const s of states) note(`${c} state`, maxRelError(await sd.state[String(i)].buffers[s].data(), await fx.readF32(`${c}.p${i}.${s}`)), 1e-5);
  }
  const hostData = await host.data();
  expect(Array.from(hostData.subarray(0, 5))).toEqual([7, 7, 7, 7, 7]);
  expect(Array.from(hostData.subarray(5 + params[0].size))).toEqual(new Array(8).fill(7));
  expect(params.every((p) => p.grad === null)).toBe(true);
  opt.dispose();
  params.forEach((p) => p.dispose());
  host.dispose();
}

const fromLrs = (lrs: Float64Array) => ({ lrAt: (s: number) => lrs[s] });

describe('against torch.optim', () => {
  it('AdamW with a varying learning rate and a parameter skipped at one step', async () => {
    await runCase('adamw', (ps, [, b1, b2, eps, wd], lrs) => new AdamW(ps, { lr: fromLrs(lrs), betas: [b1, b2], eps, weightDecay: wd }), ['exp_avg', 'exp_avg_sq']);
  });

  it('AdamW with a large eps (added after the bias correction)', async () => {
    await runCase('adamw_eps', (ps, [lr, b1, b2, eps, wd]) => new AdamW(ps, { lr, betas: [b1, b2], eps, weightDecay: wd }), ['exp_avg', 'exp_avg_sq']);
  });

  for (const c of ['sgd_nesterov', 'sgd_dampening']) {
    it(`SGD: ${c}`, async () => {
      await runCase(c, (ps, [lr, , , , wd, momentum, dampening, nesterov]) => new SGD(ps, { lr, momentum, dampening, nesterov: nesterov === 1, weightDecay: wd }), ['momentum_buffer']);
    });
  }

  it('SGD without momentum (no state)', async () => {
    await runCase('sgd_plain', (ps, [lr, , , , wd]) => new SGD(ps, { lr, weightDecay: wd }), []);
  });

  it('clipGradNorm: total norm and clipped gradients, including an unaligned view', async () => {
    const maxes = await readF64('clip.max');
    const norms = await fx.readF32('clip.norm');
    for (let k = 0; k < maxes.length; k++) {
      const params = [0, 1, 2].map((i) => tensor(new Float32Array(shapeOf(`clip.g${i}`).reduce((a, b) => a * b, 1)), shapeOf(`clip.g${i}`)));
      const g0 = await fx.readF32('clip.g0');
      const host = tensor(Float32Array.from([3, ...g0, 3]));
      params[0].grad = host.view(shapeOf('clip.g0'), 1);
      for (const i of [1, 2]) params[i].grad = await load(`clip.g${i}`);
      const noGrad = tensor([1, 2]); // parameters without a gradient are skipped
      const norm = clipGradNorm([...params, noGrad], maxes[k]);
      expect(norm.shape).toEqual([]);
      note('clip norm', Math.abs((await norm.item()) - norms[k]) / norms[k], 1e-6);
      for (let i = 0; i < NPARAMS; i++) note('clip gradients', maxRelError(await params[i].grad!.data(), await fx.readF32(`clip.k${k}.g${i}`)), 1e-6);
      const h = await host.data();
      expect([h[0], h[h.length - 1]]).toEqual([3, 3]);
      [norm, noGrad, host, ...params].forEach((t) => t.dispose());
    }
  });
});

describe('f16 parameters', () => {
  it('AdamW keeps f32 state and rounds the updated parameter to f16', async () => {
    const n = 301;
    const p0 = Float32Array.from(randomArray(n, 1), roundToF16);
    const g = Float32Array.from(randomArray(n, 2));
    const p = tensor(p0, [n], 'f16').requireGrad();
    p.grad = tensor(g, [n], 'f16');
    const [lr, b1, b2, eps, wd] = [0.05, 0.9, 0.999, 1e-8, 0.1];
    const opt = new AdamW([p], { lr, betas: [b1, b2], eps, weightDecay: wd });
    opt.step();
    // one step from zero state: m = (1-b1) g, v = (1-b2) g², bias corrections 1-b1, 1-b2
    const g16 = Array.from(g, roundToF16);
    const exact = Array.from(p0, (x, i) => x * (1 - lr * wd) - (lr / (1 - b1)) * ((1 - b1) * g16[i]) / (Math.sqrt((1 - b2) * g16[i] ** 2) / Math.sqrt(1 - b2) + eps));
    const got = await p.data();
    // The f32 result rounded to f16 is within half an f16 ulp of the exact value, give or take
    // the f32 error at near ties (which these inputs on the f16 grid produce often).
    const ulp = (x: number) => 2 ** (Math.max(Math.floor(Math.log2(Math.abs(x))), -14) - 10);
    note('f16 AdamW parameter (f16 ulps)', Math.max(...exact.map((e, i) => Math.abs(got[i] - e) / ulp(e))), 0.501);
    expect(exact.filter((e, i) => got[i] === roundToF16(e)).length).toBeGreaterThan(0.95 * n);
    note('f16 AdamW exp_avg (f32)', maxRelError(await opt.stateDict().state['0'].buffers.exp_avg.data(), g16.map((x) => (1 - b1) * x)), 1e-6);
    expect(opt.stateDict().state['0'].buffers.exp_avg.dtype).toBe('f32');
    opt.dispose();
    p.dispose();
  });
});

describe('learning-rate schedules', () => {
  it('constant and warmup + cosine', () => {
    expect(constantLr(0.3).lrAt(12345)).toBe(0.3);
    const s = warmupCosine({ lr: 1, warmupSteps: 4, totalSteps: 24, minLr: 0.1 });
    expect([0, 1, 2, 3].map((k) => s.lrAt(k))).toEqual([0.25, 0.5, 0.75, 1]);
    expect(s.lrAt(4)).toBe(1);
    expect(s.lrAt(14)).toBeCloseTo(0.55, 12); // half way: (lr + minLr) / 2
    expect(s.lrAt(9)).toBeCloseTo(0.1 + 0.45 * (1 + Math.cos(Math.PI / 4)), 12);
    expect(s.lrAt(24)).toBeCloseTo(0.1, 12);
    expect(s.lrAt(1000)).toBeCloseTo(0.1, 12);
    for (let k = 4; k < 30; k++) expect(s.lrAt(k + 1)).toBeLessThanOrEqual(s.lrAt(k));
    expect(warmupCosine({ lr: 2, warmupSteps: 0, totalSteps: 10 }).lrAt(0)).toBe(2);
    expect(() => warmupCosine({ lr: 1, warmupSteps: 10, totalSteps: 10 })).toThrow(/totalSteps \(10\) must be an integer > warmupSteps \(10\)/);
    expect(() => warmupCosine({ lr: 1, warmupSteps: 1, totalSteps: 10, minLr: 2 })).toThrow(/minLr \(2\) must lie in \[0, lr = 1\]/);
  });

  it('the optimiser takes the rate of each step from the schedule', async () => {
    // SGD without momentum or decay: p -= lr(step) * g, so p after k steps of g = 1 is -Σ lr
    const p = tensor([0]).requireGrad();
    const s = warmupCosine({ lr: 1, warmupSteps: 2, totalSteps: 5 });
    const opt = new SGD([p], { lr: s });
    for (let k = 0; k < 4; k++) {
      expect(opt.lr).toBe(s.lrAt(k));
      p.grad = tensor([1]);
      opt.step();
      opt.zeroGrad();
    }
    expect((await p.data())[0]).toBeCloseTo(-[0, 1, 2, 3].reduce((a, k) => a + s.lrAt(k), 0), 6);
    opt.dispose();
    p.dispose();
  });
});

describe('state and errors', () => {
  it('stateDict / loadStateDict carry on exactly, also through flat named tensors', async () => {
    const grads = [4, 5, 6, 7].map((s) => Float32Array.from(randomArray(37, s)));
    const step = (p: Tensor, opt: AdamW, g: Float32Array) => {
      p.grad = tensor(g, [37]);
      opt.step();
      opt.zeroGrad();
    };
    const pa = tensor(Float32Array.from(randomArray(37, 3)), [37]).requireGrad();
    const a = new AdamW([['w.x', pa]], { lr: 0.01, betas: [0.8, 0.9] });
    step(pa, a, grads[0]);
    step(pa, a, grads[1]);
    const { tensors, metadata } = optimizerStateToTensors(a.stateDict());
    expect(Object.keys(tensors).sort()).toEqual(['w.x.exp_avg', 'w.x.exp_avg_sq']);
    // a copy of the parameter and a fresh optimiser (default betas) restored from the flat state
    const pb = tensor(await pa.data(), [37]).requireGrad();
    const b = new AdamW([['w.x', pb]], { lr: 0.01 });
    b.loadStateDict(optimizerStateFromTensors(tensors, metadata));
    expect(b.hp).toEqual({ beta1: 0.8, beta2: 0.9, eps: 1e-8, weightDecay: 0.01 });
    expect(b.stepCount).toBe(2);
    // both go on in lockstep (b's state is a copy: sharing it would update it twice per step)
    for (const g of grads.slice(2)) {
      step(pa, a, g);
      step(pb, b, g);
    }
    expect(Array.from(await pb.data())).toEqual(Array.from(await pa.data()));
    [a, b].forEach((o) => o.dispose());
    [pa, pb].forEach((t) => t.dispose());
  });

  it('lrScale: each parameter at its own multiple of the rate (torch param groups with their own lr)', async () => {
    const grads = [4, 5, 6].map((s) => Float32Array.from(randomArray(37, s)));
    const init = Float32Array.from(randomArray(37, 3));
    const [pa, pb, ref] = [0, 1, 2].map(() => tensor(init, [37]).requireGrad());
    const lr = warmupCosine({ lr: 0.01, warmupSteps: 1, totalSteps: 3 });
    const scaled = new AdamW([['a', pa], ['b', pb]], { lr, lrScale: (n) => (n === 'a' ? 3 : 0) });
    const alone = new AdamW([['a', ref]], { lr: { lrAt: (k) => 3 * lr.lrAt(k) } });
    for (const g of grads) {
      for (const p of [pa, pb, ref]) p.grad = tensor(g, [37]);
      scaled.step();
      alone.step();
      scaled.zeroGrad();
      alone.zeroGrad();
    }
    expect(Array.from(await pa.data())).toEqual(Array.from(await ref.data()));
    expect(Array.from(await pb.data())).toEqual(Array.from(init));
    const bad = new SGD([['w', pb]], { lr: 0.1, lrScale: () => -1 });
    pb.grad = tensor(grads[0], [37]);
    expect(() => bad.step()).toThrow(/SGD: lrScale gave -1 for parameter 'w'/);
    bad.zeroGrad();
    [scaled, alone, bad].forEach((o) => o.dispose());
    [pa, pb, ref].forEach((t) => t.dispose());
  });

  it('reports bad arguments by name', () => {
    const p = tensor([1, 2, 3]).requireGrad();
    const q = tensor([1, 2]).requireGrad();
    expect(() => new AdamW([])).toThrow(/AdamW: got an empty parameter list/);
    expect(() => new AdamW([p, p])).toThrow(/parameter '1' is the same tensor as an earlier one/);
    expect(() => new AdamW([['a', p], ['a', q]])).toThrow(/parameter name 'a' appears twice/);
    expect(() => new AdamW([p], { betas: [0.9, 1] })).toThrow(/AdamW: beta2 = 1 is outside \[0, 1\)/);
    expect(() => new SGD([p], { lr: 0.1, nesterov: true })).toThrow(/nesterov needs momentum > 0 and dampening 0/);
    expect(() => new SGD([p], { lr: -1 })).toThrow(/learning rate must be >= 0, got -1/);
    const sgd = new SGD([['w', p]], { lr: 0.1, momentum: 0.9 });
    p.grad = tensor([1, 2]);
    expect(() => sgd.step()).toThrow(/SGD: parameter 'w' \[3\] has a gradient of shape \[2\]/);
    sgd.zeroGrad();
    const adam = new AdamW([['w', p]]);
    expect(() => adam.loadStateDict(sgd.stateDict())).toThrow(/AdamW.loadStateDict: the state is from SGD/);
    const other = new SGD([['v', q]], { lr: 0.1, momentum: 0.5 });
    q.grad = tensor([1, 1]);
    other.step();
    other.zeroGrad();
    expect(() => sgd.loadStateDict(other.stateDict())).toThrow(/state for 'v', which is not a parameter of this optimiser/);
    const plain = new SGD([['v', q]], { lr: 0.1 });
    expect(() => plain.loadStateDict(other.stateDict())).toThrow(/momentum cannot be switched on or off/);
    expect(() => clipGradNorm([p], 0)).toThrow(/clipGradNorm: maxNorm must be > 0, got 0/);
    [sgd, adam, other, plain].forEach((o) => o.dispose());
    [p, q].forEach((t) => t.dispose());
  });
});
