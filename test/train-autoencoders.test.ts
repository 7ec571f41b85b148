// The vae and vq stages of `layton-run train` (tools/train/autoencoders.ts) on a few tiny
// steps, and the shared stage helpers (tools/train/stage.ts):
//  - ssimTensor equals tools/metrics.ts ssim (float64 CPU) and its gradient equals the CPU
//    metric's central finite difference along a random direction;
//  - each stage learns (last loss below the first), writes its part, and the part loaded by
//    loadVae / loadVQModel gives exactly the summary's held-out PSNR / SSIM (the in-memory
//    model's), with the VAE's scaling_factor = 1 / latent std and the VQ reconstructing its 16 px
//    input (scored resized to 32 px, as eval reconstruction does);
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
import { tokenizerCopy } from '../tools/train/data.ts';
import { trainVae, trainVq } from '../tools/train/autoencoders.ts';
import { heldoutReconstruction, ssimTensor } from '../tools/train/stage.ts';

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
    vq.dispose();
    expect(again.psnr).toBe(s.metrics.psnr);
    expect(again.ssim).toBe(s.metrics.ssim);
    const ids = new Set<number>();
    for (const t of kept) {
      for (const id of await t.data()) ids.add(id);
      t.dispose();
    }
    expect(s.metrics.codebook_usage).toBe(ids.size / 1024);
  });
});
