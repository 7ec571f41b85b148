// The vae and vq stages of `layton-run train` (tools/train/autoencoders.ts) on a few tiny
// steps, and the shared stage helpers (tools/train/stage.ts):
//  - ssimTensor equals tools/metrics.ts ssim (float64 CPU) and its gradient equals the CPU
//    metric's central finite difference along a random direction; pixelLoss with every term
//    (L1, SSIM, MSE, edges) the same against float64 CPU code;
//  - each stage learns (last loss below the first), writes its part, and the part loaded by
//    loadVae / loadVQModel gives exactly the summary's held-out PSNR / SSIM (the in-memory
//    model's), with the VAE's scaling_factor = 1 / latent std and the VQ reconstructing its 16 px
//    input (scored resized to 32 px, as eval reconstruction does), and its codebook usage the
//    distinct codes of the saved part's tokens, held-out and training, also when a process
//    resumes the finished stage;
//  - the VAE stage (the one drawing noise) interrupted after a checkpoint and resumed
//    continues on exactly the uninterrupted loss curve, its summary's time counting both processes.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { Generator, type Tensor, keep, mul, randn, seededRandom, sum, tensor, tidy } from '../runtime/index.ts';
import { loadVae } from '../models/vae.ts';
import { loadVQModel } from '../models/vq.ts';
import { imagesToTensor } from '../tools/image.ts';
import { ssim } from '../tools/metrics.ts';
import { modelDir } from '../tools/modeldir.ts';
import { IMAGE_SIZE, TOKENIZER_SIZE } from '../tools/train/configs.ts';
import { tokenizerCopy, worldBatch } from '../tools/train/data.ts';
import { trainVae, trainVq } from '../tools/train/autoencoders.ts';
import { DEFAULT_SEED, heldoutReconstruction, pixelLoss, ssimTensor, trainWorld } from '../tools/train/stage.ts';

const note = errorReport();
const root = mkdtempSync(join(tmpdir(), 'layton-ae-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const quiet = () => {};
const ckptState = (dir: string): { losses: number[]; seconds: number } => {
  const name = readFileSync(join(dir, 'latest'), 'utf8').trim();
  return JSON.parse(readFileSync(join(dir, name, 'state.json'), 'utf8'));
};
const losses = (dir: string): number[] => ckptState(dir).losses;
const planes = (v: Float32Array, i: number, c: number, s: number) => ({ width: s, height: s, data: Float64Array.from(v.subarray(i * c * s * s, (i + 1) * c * s * s), (x) => x / 2 + 0.5) as unknown as Float32Array });

describe('stage helpers', () => {
  it('ssimTensor equals the CPU metric, and its gradient the metric\'s finite difference', async () => {
    const [n, c, s] = [2, 3, 14];
    const rnd = seededRandom(5);
    const a = Float32Array.from({ length: n * c * s * s }, () => rnd() * 2 - 1);
    // b: a blurred-ish copy of a plus noise, so SSIM is far from 0 and 1
    const b = a.map((x) => 0.7 * x + 0.3 * (rnd() * 2 - 1));
    const cpu = (x: Float32Array) => Array.from({ length: n }, (_, i) => ssim(planes(x, i, c, s), planes(b, i, c, s))).reduce((p, q) => p + q, 0) / n;
    const at = tensor(a, [n, c, s, s]).requireGrad();
    const bt = tensor(b, [n, c, s, s]);
    const dir = randn([n, c, s, s], { generator: new Generator(3) });
    const value = tidy(() => {
      const v = ssimTensor(at, bt);
      v.backward();
      return v;
    });
    const got = await value.item();
    const want = cpu(a);
    expect(want).toBeGreaterThan(0.3);
    expect(want).toBeLessThan(0.9);
    expect(note('ssimTensor value', Math.abs(got - want))).toBeLessThan(2e-6);
    const dv = (await dir.data()) as Float32Array;
    const eps = 1e-3;
    const fd = (cpu(a.map((x, k) => x + eps * dv[k])) - cpu(a.map((x, k) => x - eps * dv[k]))) / (2 * eps);
    const dot = tidy(() => sum(mul(at.grad!, dir)));
    const g = await dot.item();
    expect(note('ssimTensor grad', Math.abs(g - fd) / Math.abs(fd))).toBeLessThan(1e-3);
    for (const t of [value, dot, dir, at.grad!, at, bt]) t.dispose();
  });
  it('pixelLoss (L1 + SSIM + MSE + edge terms) equals float64 CPU code, and its gradient the finite difference', async () => {
    const [n, c, h, w] = [2, 3, 12, 13];
    const rnd = seededRandom(8);
    const a = Float32Array.from({ length: n * c * h * w }, () => rnd() * 2 - 1);
    const b = a.map((x) => 0.6 * x + 0.4 * (rnd() * 2 - 1));
    const wts = { ssim: 0.2, mse: 3, edge: 0.3 };
    const cpu = (x: Float64Array) => {
      let l1 = 0;
      let se = 0;
      let ex = 0;
      let ey = 0;
      const d = (i: number, y: number, xx: number) => x[(i * h + y) * w + xx] - b[(i * h + y) * w + xx];
      for (let i = 0; i < n * c; i++) {
        for (let y = 0; y < h; y++) {
          for (let xx = 0; xx < w; xx++) {
            l1 += Math.abs(d(i, y, xx));
            se += d(i, y, xx) ** 2;
            if (xx > 0) ex += Math.abs(d(i, y, xx) - d(i, y, xx - 1));
            if (y > 0) ey += Math.abs(d(i, y, xx) - d(i, y - 1, xx));
          }
        }
      }
      const s = Array.from({ length: n }, (_, i) => ssim(rect(x, i), rect(b, i))).reduce((p, q) => p + q, 0) / n;
      const nc = n * c;
      return l1 / (nc * h * w) + wts.ssim * (1 - s) + wts.mse * se / (nc * h * w) + wts.edge * (ex / (nc * h * (w - 1)) + ey / (nc * (h - 1) * w));
    };
    const rect = (v: Float32Array | Float64Array, i: number) => ({ width: w, height: h, data: Float64Array.from(v.subarray(i * c * h * w, (i + 1) * c * h * w), (x) => x / 2 + 0.5) as unknown as Float32Array });
    const at = tensor(a, [n, c, h, w]).requireGrad();
    const bt = tensor(b, [n, c, h, w]);
    const dir = randn([n, c, h, w], { generator: new Generator(4) });
    const value = tidy(() => {
      const v = pixelLoss(at, bt, wts);
      v.backward();
      return v;
    });
    const a64 = Float64Array.from(a);
    const want = cpu(a64);
    expect(note('pixelLoss value', Math.abs((await value.item()) - want) / want)).toBeLessThan(1e-5);
    const dv = (await dir.data()) as Float32Array;
    // |.| has kinks: a step of 1e-4 moved one difference across 0 (a 1e-3 error); float64 allows 1e-6
    const eps = 1e-6;
    const fd = (cpu(a64.map((x, k) => x + eps * dv[k])) - cpu(a64.map((x, k) => x - eps * dv[k]))) / (2 * eps);
    const dot = tidy(() => sum(mul(at.grad!, dir)));
    expect(note('pixelLoss grad', Math.abs((await dot.item()) - fd) / Math.abs(fd))).toBeLessThan(1e-5);
    for (const t of [value, dot, dir, at.grad!, at, bt]) t.dispose();
  });
});

describe('autoencoder stages', () => {
  const tune = { lr: 3e-3, warmup: 0, checkpointEvery: 2, evalImages: 2, scaleBatches: 1 };

  it('vae: learns, saves a part that reproduces its summary, and resumes onto the same curve', async () => {
    const steps = 4;
    const full = join(root, 'full');
    const s = await trainVae({ root: full, steps, batch: 2, log: quiet }, tune);
    const curve = losses(join(full, 'train', 'vae'));
    console.log('vae losses', curve);
    expect(curve).toHaveLength(steps);
    expect(curve[steps - 1]).toBeLessThan(curve[0] * 0.8);
    const cfg = JSON.parse(readFileSync(join(full, 'vae', 'config.json'), 'utf8'));
    expect(cfg.scaling_factor).toBeCloseTo(1 / s.metrics.latent_std, 12);
    expect(s.metrics.latent_std).toBeGreaterThan(0);

    const vae = await loadVae(await modelDir(join(full, 'vae')), { dtype: 'f32' });
    const again = await heldoutReconstruction(2, IMAGE_SIZE, 2, (x) => vae.forward(x));
    vae.dispose();
    expect(again.psnr).toBe(s.metrics.psnr);
    expect(again.ssim).toBe(s.metrics.ssim);

    // interrupted after step 3 (checkpoint at 2), then resumed
    const cut = join(root, 'cut');
    const stop = (line: string) => {
      if (line.includes(` 3/${steps} `)) throw new Error('interrupted');
    };
    await expect(trainVae({ root: cut, steps, batch: 2, log: stop }, tune)).rejects.toThrow('interrupted');
    expect(losses(join(cut, 'train', 'vae'))).toEqual(curve.slice(0, 2));
    const cutSeconds = ckptState(join(cut, 'train', 'vae')).seconds;
    expect(cutSeconds).toBeGreaterThan(0);
    const r = await trainVae({ root: cut, steps, batch: 2, log: quiet, resume: true }, tune);
    expect(r.resumed_from).toBe(2);
    expect(r.seconds).toBeGreaterThan(cutSeconds); // the summary's time counts the interrupted process's steps
    expect(losses(join(cut, 'train', 'vae'))).toEqual(curve); // bit for bit
    expect(r.metrics.psnr).toBe(s.metrics.psnr);
  });

  it('vq: learns, reconstructs the 16 px copy from its codes, saves a part that reproduces its summary', async () => {
    const steps = 4;
    const s = await trainVq({ root, steps, batch: 2, log: quiet }, tune);
    const curve = losses(join(root, 'train', 'vq'));
    console.log('vq losses', curve);
    expect(curve[steps - 1]).toBeLessThan(curve[0] * 0.8);
    expect(s.metrics.codebook_usage).toBeGreaterThan(0);

    const vq = await loadVQModel(await modelDir(join(root, 'vq')), { dtype: 'f32' });
    const kept: Tensor[] = [];
    const again = await heldoutReconstruction(2, IMAGE_SIZE, 2, (_x, truth) =>
      tidy(() => {
        const e = vq.encode(imagesToTensor(truth.map((img) => tokenizerCopy(img, TOKENIZER_SIZE))));
        expect(e.indices.shape).toEqual([2, TOKENIZER_SIZE / 2, TOKENIZER_SIZE / 2]);
        const y = vq.decode(e.quant);
        expect(y.shape).toEqual([2, 3, TOKENIZER_SIZE, TOKENIZER_SIZE]);
        kept.push(keep(e.indices));
        return y;
      }));
    expect(again.psnr).toBe(s.metrics.psnr);
    expect(again.ssim).toBe(s.metrics.ssim);
    const ids = new Set<number>();
    for (const t of kept) {
      for (const id of await t.data()) ids.add(id);
      t.dispose();
    }
    expect(s.metrics.codebook_usage).toBe(ids.size / 1024);

    // training usage: the first training batch's codes (evalImages = 2 = one batch), the same
    // when a process resumes the finished stage and takes no step
    const { images, small } = worldBatch(trainWorld(), 'train', DEFAULT_SEED, 0, 2, IMAGE_SIZE, TOKENIZER_SIZE);
    const trainIds = tidy(() => keep(vq.encode(small!).indices));
    const trainSet = new Set<number>(await trainIds.data());
    for (const t of [images, small!, trainIds]) t.dispose();
    vq.dispose();
    expect(s.metrics.train_codebook_usage).toBe(trainSet.size / 1024);
    const r = await trainVq({ root, steps, batch: 2, log: quiet, resume: true }, tune);
    expect(r.resumed_from).toBe(steps);
    expect(r.metrics).toEqual(s.metrics);
  });
});
