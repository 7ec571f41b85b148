// A tiny MLP (3 -> 16 -> 16 -> 1, tanh) trained with AdamW on the GPU against a float64 CPU
// implementation of the same steps (same init, data, schedule and AdamW math); resuming from
// saved model + optimiser state continues the loss curve bit for bit; and the Module helper
// (names, state dicts, safetensors round trips, errors).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Tensor, Generator, device, getDevice, mean, square, stack, sub, tanh, tensor, tensorCount, tidy } from '../runtime/index.ts';
import { Linear, Module, ModuleList, buildMeta, withBuild } from '../runtime/nn.ts';
import { AdamW, type LrSchedule, clipGradNorm, warmupCosine } from '../runtime/optim.ts';
import { seededRandom } from '../runtime/gradcheck.ts';
import { SafetensorsFile, bufferSource, serializeSafetensors } from '../runtime/safetensors.ts';
import { roundToF16 } from './ref/cpu.ts';
import { openSafetensors, saveSafetensors } from '../runtime/platform/node-fs.ts';

const [D, H, N] = [3, 16, 61];
const HP = { betas: [0.9, 0.99] as [number, number], eps: 1e-8, weightDecay: 0.05 };

class Mlp extends Module {
  readonly fc1 = this.module('fc1', new Linear(D, H));
  readonly fc2 = this.module('fc2', new Linear(H, H));
  readonly fc3 = this.module('fc3', new Linear(H, 1));
  forward(x: Tensor): Tensor {
    return tidy(() => this.fc3.forward(tanh(this.fc2.forward(tanh(this.fc1.forward(x))))));
  }
}

// ---- data and initial weights (f32 values, shared by the GPU and the CPU reference) ----------
const rnd = seededRandom(11);
const X = Float32Array.from({ length: N * D }, () => 2 * rnd() - 1);
const Y = Float32Array.from({ length: N }, (_, i) => Math.sin(2 * X[i * D]) + X[i * D + 1] * X[i * D + 2] - 0.5 * X[i * D + 2] ** 2);
const SHAPES: Record<string, number[]> = {
  'fc1.weight': [H, D], 'fc1.bias': [H], 'fc2.weight': [H, H], 'fc2.bias': [H], 'fc3.weight': [1, H], 'fc3.bias': [1],
};
// torch.nn.Linear's U(-1/sqrt(in), 1/sqrt(in))
const INIT: Record<string, Float32Array> = Object.fromEntries(
  Object.entries(SHAPES).map(([k, s]) => {
    const fanIn = k.startsWith('fc1') ? D : H;
    return [k, Float32Array.from({ length: s.reduce((a, b) => a * b, 1) }, () => (2 * rnd() - 1) / Math.sqrt(fanIn))];
  }),
);

function initialisedMlp(): Mlp {
  const m = new Mlp();
  const sd = Object.fromEntries(Object.entries(INIT).map(([k, v]) => [k, tensor(v, SHAPES[k])]));
  m.loadStateDict(sd);
  Object.values(sd).forEach((t) => t.dispose());
  return m;
}

/** One full-batch step: returns the loss before the update (on the GPU, not read back). */
function trainStep(m: Mlp, opt: AdamW, x: Tensor, y: Tensor, clip?: number): Tensor {
  const loss = tidy(() => {
    const l = mean(square(sub(m.forward(x), y)));
    l.backward();
    if (clip) clipGradNorm(m, clip).dispose();
    return l;
  });
  opt.step();
  opt.zeroGrad();
  return loss;
}

/** Reads a list of scalar losses back in one go (and disposes them). */
async function readLosses(ls: Tensor[]): Promise<Float32Array> {
  const s = stack(ls);
  ls.forEach((l) => l.dispose());
  const v = (await s.data()) as Float32Array;
  s.dispose();
  return v;
}

// ---- the float64 CPU reference -----------------------------------------------------------
type P64 = Record<string, Float64Array>;

/** Forward + backward of the MLP with MSE loss in float64: [loss, gradients]. */
function cpuLossGrad(p: P64): [number, P64] {
  const lin = (x: Float64Array, w: Float64Array, b: Float64Array, nin: number, nout: number) => {
    const y = new Float64Array(N * nout);
    for (let i = 0; i < N; i++) for (let o = 0; o < nout; o++) {
      let s = b[o];
      for (let k = 0; k < nin; k++) s += x[i * nin + k] * w[o * nin + k];
      y[i * nout + o] = s;
    }
    return y;
  };
  const x = Float64Array.from(X);
  const h1 = lin(x, p['fc1.weight'], p['fc1.bias'], D, H).map(Math.tanh);
  const h2 = lin(h1, p['fc2.weight'], p['fc2.bias'], H, H).map(Math.tanh);
  const out = lin(h2, p['fc3.weight'], p['fc3.bias'], H, 1);
  let loss = 0;
  const dout = out.map((o, i) => {
    loss += (o - Y[i]) ** 2;
    return (2 * (o - Y[i])) / N;
  });
  // backward of y = x Wᵀ + b: dW = dyᵀ x, db = Σ dy, dx = dy W
  const back = (dy: Float64Array, x: Float64Array, w: Float64Array, nin: number, nout: number) => {
    const dw = new Float64Array(nout * nin);
    const db = new Float64Array(nout);
    const dx = new Float64Array(N * nin);
    for (let i = 0; i < N; i++) for (let o = 0; o < nout; o++) {
      const g = dy[i * nout + o];
      db[o] += g;
      for (let k = 0; k < nin; k++) {
        dw[o * nin + k] += g * x[i * nin + k];
        dx[i * nin + k] += g * w[o * nin + k];
      }
    }
    return [dw, db, dx];
  };
  const [dw3, db3, dh2] = back(dout, h2, p['fc3.weight'], H, 1);
  const da2 = dh2.map((g, i) => g * (1 - h2[i] ** 2));
  const [dw2, db2, dh1] = back(da2, h1, p['fc2.weight'], H, H);
  const da1 = dh1.map((g, i) => g * (1 - h1[i] ** 2));
  const [dw1, db1] = back(da1, x, p['fc1.weight'], D, H);
  return [loss / N, { 'fc1.weight': dw1, 'fc1.bias': db1, 'fc2.weight': dw2, 'fc2.bias': db2, 'fc3.weight': dw3, 'fc3.bias': db3 }];
}

/** The losses of `steps` AdamW steps (torch's update order) in float64, and the loss after them. */
function cpuTrain(steps: number, schedule: LrSchedule): number[] {
  const p: P64 = Object.fromEntries(Object.entries(INIT).map(([k, v]) => [k, Float64Array.from(v)]));
  const m: P64 = Object.fromEntries(Object.entries(p).map(([k, v]) => [k, new Float64Array(v.length)]));
  const v: P64 = Object.fromEntries(Object.entries(p).map(([k, a]) => [k, new Float64Array(a.length)]));
  const [b1, b2] = HP.betas;
  const losses: number[] = [];
  for (let t = 1; t <= steps; t++) {
    const [loss, g] = cpuLossGrad(p);
    losses.push(loss);
    const lr = schedule.lrAt(t - 1);
    for (const k of Object.keys(p)) {
      for (let i = 0; i < p[k].length; i++) {
        p[k][i] *= 1 - lr * HP.weightDecay;
        m[k][i] = b1 * m[k][i] + (1 - b1) * g[k][i];
        v[k][i] = b2 * v[k][i] + (1 - b2) * g[k][i] ** 2;
        p[k][i] -= ((lr / (1 - b1 ** t)) * m[k][i]) / (Math.sqrt(v[k][i]) / Math.sqrt(1 - b2 ** t) + HP.eps);
      }
    }
  }
  losses.push(cpuLossGrad(p)[0]);
  return losses;
}

let start = 0;
let x: Tensor;
let y: Tensor;
beforeAll(async () => {
  await getDevice();
  start = tensorCount();
  x = tensor(X, [N, D]);
  y = tensor(Y, [N, 1]);
});
afterAll(() => {
  x.dispose();
  y.dispose();
  expect(tensorCount()).toBe(start);
});

describe('MLP training', () => {
  it('200 AdamW steps on the GPU follow the float64 CPU reference', async () => {
    const steps = 200;
    const schedule = warmupCosine({ lr: 2e-2, warmupSteps: 10, totalSteps: steps, minLr: 1e-3 });
    const m = initialisedMlp();
    const opt = new AdamW(m, { lr: schedule, ...HP });
    const ls = Array.from({ length: steps }, () => trainStep(m, opt, x, y));
    ls.push(tidy(() => mean(square(sub(m.forward(x), y)))));
    const got = await readLosses(ls);
    const want = cpuTrain(steps, schedule);
    const curve = Math.max(...want.map((w, i) => Math.abs(got[i] - w) / w));
    const final = Math.abs(got[steps] - want[steps]) / want[steps];
    console.log(`loss ${want[0].toFixed(4)} -> ${want[steps].toExponential(3)} (float64); GPU final ${got[steps].toExponential(3)}, ` +
      `relative error final ${final.toExponential(2)}, worst over the curve ${curve.toExponential(2)}`);
    expect(final).toBeLessThan(1e-4);
    expect(curve).toBeLessThan(1e-4);
    expect(want[0] / want[steps]).toBeGreaterThan(10);
    expect(got[0] / got[steps]).toBeGreaterThan(10);
    opt.dispose();
    m.dispose();
  });

  it('resuming from saved model and optimiser state continues the loss curve bit for bit', async () => {
    const [steps, cut] = [24, 11];
    const schedule = warmupCosine({ lr: 2e-2, warmupSteps: 5, totalSteps: steps, minLr: 1e-3 });
    // uninterrupted
    const m = initialisedMlp();
    const opt = new AdamW(m, { lr: schedule, ...HP });
    const full = await readLosses(Array.from({ length: steps }, () => trainStep(m, opt, x, y, 0.5)));
    opt.dispose();
    m.dispose();
    // interrupted: save, drop everything, restore into fresh objects (random init, no state), go on
    const dir = mkdtempSync(join(tmpdir(), 'layton-optim-'));
    try {
      const m1 = initialisedMlp();
      const opt1 = new AdamW(m1, { lr: schedule, ...HP });
      const before = await readLosses(Array.from({ length: cut }, () => trainStep(m1, opt1, x, y, 0.5)));
      await saveSafetensors(join(dir, 'model.safetensors'), await m1.toSafetensors());
      const os = await opt1.toSafetensors();
      await saveSafetensors(join(dir, 'optim.safetensors'), os.tensors, os.metadata);
      opt1.dispose();
      m1.dispose();

      const m2 = new Mlp();
      const opt2 = new AdamW(m2, { lr: schedule, betas: [0.5, 0.5], eps: 1, weightDecay: 0 }); // restored from the file
      const mf = await openSafetensors(join(dir, 'model.safetensors'));
      const of = await openSafetensors(join(dir, 'optim.safetensors'));
      await m2.loadSafetensors(mf);
      await opt2.loadSafetensors(of);
      await Promise.all([mf.close(), of.close()]);
      expect(opt2.stepCount).toBe(cut);
      expect(opt2.hp).toEqual({ beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.05 });
      const after = await readLosses(Array.from({ length: steps - cut }, () => trainStep(m2, opt2, x, y, 0.5)));
      expect(Array.from(before)).toEqual(Array.from(full.subarray(0, cut)));
      expect(Array.from(after)).toEqual(Array.from(full.subarray(cut)));
      expect(full[steps - 1]).toBeLessThan(full[0] / 2);
      opt2.dispose();
      m2.dispose();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('Module', () => {
  it('names parameters torch-style and loads state dicts with checks', async () => {
    class Net extends Module {
      readonly embed = this.param('embed', tensor([1, 2, 3, 4], [2, 2]));
      readonly layers = this.module('layers', new ModuleList([new Linear(2, 3), new Linear(3, 1, { bias: false })]));
    }
    const net = new Net();
    expect([...net.namedParameters()].map(([k, t]) => `${k}:${t.shape}`)).toEqual(['embed:2,2', 'layers.0.weight:3,2', 'layers.0.bias:3', 'layers.1.weight:1,3']);
    expect(net.parameters().every((t) => t.requiresGrad)).toBe(true);

    const sd = { embed: tensor([5, 6, 7, 8], [2, 2]), 'layers.0.weight': tensor([1, 2, 3, 4, 5, 6], [3, 2]), 'layers.0.bias': tensor([9, 8, 7], [3]) };
    expect(() => net.loadStateDict(sd)).toThrow(/loadStateDict: missing keys \[layers\.1\.weight\]$/);
    const w1 = tensor([1, 1, 1], [1, 3]);
    const bad = tensor([0, 0, 0], [3, 1]);
    expect(() => net.loadStateDict({ ...sd, 'layers.1.weight': w1, extra: bad })).toThrow(/unexpected keys \[extra\]/);
    expect(() => net.loadStateDict({ ...sd, 'layers.1.weight': bad })).toThrow(/'layers\.1\.weight' is \[3,1\] in the source but \[1,3\] in the module/);
    net.loadStateDict({ ...sd, extra: bad }, false); // non-strict: the unknown key is ignored, the missing one kept
    expect(await net.embed.toArray()).toEqual([5, 6, 7, 8]);
    expect(await net.layers.items[0].bias!.toArray()).toEqual([9, 8, 7]);
    [...Object.values(sd), w1, bad].forEach((t) => t.dispose());

    expect(() => tidy(() => new (class extends Module { a = this.param('a.b', tensor([1])) })())).toThrow(/'a\.b' is not a valid/);
    const before = tensorCount();
    net.dispose();
    expect(tensorCount()).toBe(before - 4);
  });

  it('safetensors round trip keeps f16 parameters f16, and checks shapes before loading', async () => {
    class Half extends Module {
      readonly w: Tensor;
      readonly b: Tensor;
      constructor(w: number[], b: number[]) {
        super();
        this.w = this.param('w', tensor(w, [w.length], 'f16'));
        this.b = this.param('b', tensor(b, [b.length]));
      }
    }
    const a = new Half([0.1, -2.5, 3], [1, 2]);
    const entries = await a.toSafetensors();
    expect([entries.w.dtype, entries.b.dtype]).toEqual(['F16', 'F32']);
    const file = await SafetensorsFile.open(bufferSource(Buffer.concat(serializeSafetensors(entries))));
    const b = new Half([0, 0, 0], [0, 0]);
    await b.loadSafetensors(file);
    expect(b.w.dtype).toBe('f16');
    expect(await b.w.toArray()).toEqual([roundToF16(0.1), -2.5, 3]);
    expect(await b.b.toArray()).toEqual([1, 2]);
    const c = new Half([0, 0, 0, 0], [5, 6]);
    await expect(c.loadSafetensors(file)).rejects.toThrow(/Half.loadWeights from .*: 'w' is \[3\] in the source but \[4\] in the module/);
    expect(await c.b.toArray()).toEqual([5, 6]); // nothing loaded
    [a, b, c].forEach((m) => m.dispose());
  });

  it('Linear draws torch.nn.Linear init from a seeded generator', async () => {
    const a = withBuild({ generator: new Generator(3) }, () => new Linear(7, 5));
    const b = withBuild({ generator: new Generator(3) }, () => new Linear(7, 5));
    const wa = await a.weight.toArray();
    expect(wa).toEqual(await b.weight.toArray());
    expect(Math.max(...wa.map(Math.abs))).toBeLessThanOrEqual(1 / Math.sqrt(7));
    expect(Math.max(...wa.map(Math.abs))).toBeGreaterThan(0.8 / Math.sqrt(7));
    expect(a.bias!.shape).toEqual([5]);
    a.dispose();
    b.dispose();
  });

  it('builds shape-only (meta) modules that count parameters without GPU memory and refuse use', () => {
    const inUse = device().pool.getStats().inUseBytes;
    const m = buildMeta(() => new ModuleList([new Linear(4096, 4096), new Linear(4096, 10, { bias: false })]));
    expect(device().pool.getStats().inUseBytes).toBe(inUse);
    expect(m.parameterCount()).toBe(4096 * 4096 + 4096 + 40960);
    expect(m.stateShapes()).toEqual({ '0.weight': [4096, 4096], '0.bias': [4096], '1.weight': [10, 4096] });
    expect(() => m.items[0].weight.binding()).toThrow(/shape-only/);
    m.dispose();
  });

  it('freezes and unfreezes parameters; withBuild sets the parameter dtype', () => {
    const m = new ModuleList([new Linear(3, 2), new Linear(2, 1)]);
    m.items[0].setTrainable(false);
    expect(m.trainableParameters().map(([k]) => k)).toEqual(['1.weight', '1.bias']);
    m.dispose();
    if (device().hasF16) {
      const h = withBuild({ dtype: 'f16' }, () => new Linear(3, 2));
      expect(h.weight.dtype).toBe('f16');
      h.dispose();
    }
  });
});
