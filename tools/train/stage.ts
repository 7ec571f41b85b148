// What every stage of `layton-run train` shares: its options, where its checkpoints and its
// part live under the model root, the optimiser, one optimisation step, the pixel losses
// (L1 and a differentiable SSIM with tools/metrics.ts' convention) and the held-out
// reconstruction metrics.
import { join } from 'node:path';
import {
  AdamW, type Module, type Optimizer, type ParamsInput, type Tensor, abs, add, clipGradNorm, concat, conv2d, div, mean, mul, mulScalar, noGrad, reshape,
  slice, square, sub, tensor, tidy, warmupCosine, addScalar,
} from '../../runtime/index.ts';
import type { ModelFiles } from '../../models/checkpoint.ts';
import { type RgbImage, imagesToTensor, tensorToImages } from '../image.ts';
import { psnr, ssim } from '../metrics.ts';
import { modelDir, saveModelDir } from '../modeldir.ts';
import { World } from '../world.ts';

export interface StageOptions {
  root: string;
  steps?: number;
  batch?: number;
  seed?: number;
  resume?: boolean;
  log?: (line: string, final: boolean) => void;
}

/** The seed a stage uses when StageOptions.seed is not given (recorded in its summary). */
export const DEFAULT_SEED = 0;

/** The world every stage trains on (the default world: seed 0). */
export const trainWorld = (): World => new World();

/** `<root>/train/<stage>`: the stage's checkpoints and summary.json. */
export const stageDir = (root: string, stage: string): string => join(root, 'train', stage);

/** The stage that writes each part of a model root (for "train it first" errors). */
const PRODUCER: Record<string, string> = { vae: 'vae', vq: 'vq', unet: 'ldm', 'unet-consistency': 'consistency', controlnet: 'layton-stage1' };

/** An earlier stage's part `<root>/<part>` as ModelFiles; missing: an error naming the stage to run. */
export async function openPart(root: string, part: string): Promise<ModelFiles> {
  try {
    return await modelDir(join(root, part));
  } catch (e) {
    const by = PRODUCER[part];
    throw new Error(`${(e as Error).message}${by ? ` (run \`layton-run train ${by}\` with this --out first)` : ''}`);
  }
}

/** Writes a stage's part `<root>/<part>` (config.json + weights, each atomically). */
export const savePart = (root: string, part: string, config: object, module: Module, weightsName?: string): Promise<void> =>
  saveModelDir(join(root, part), config, module, weightsName);

export interface AdamWStageOptions {
  lr: number;
  /** the stage's total steps: the cosine decay ends there */
  steps: number;
  warmup?: number;
  /** final learning rate as a fraction of lr (default 0.1) */
  minLrRatio?: number;
  weightDecay?: number;
  betas?: [number, number];
  lrScale?: (name: string) => number;
}

/** AdamW with linear warmup then cosine decay over the stage (short test runs clamp the warmup). */
export function stageAdamW(params: ParamsInput, o: AdamWStageOptions): AdamW {
  const warmup = Math.min(o.warmup ?? 0, o.steps - 1);
  const schedule = warmupCosine({ lr: o.lr, warmupSteps: Math.max(0, warmup), totalSteps: Math.max(o.steps, warmup + 1), minLr: o.lr * (o.minLrRatio ?? 0.1) });
  return new AdamW(params, { lr: schedule, betas: o.betas ?? [0.9, 0.99], weightDecay: o.weightDecay ?? 0, lrScale: o.lrScale });
}

/**
 * One optimisation step: `lossFn` builds the scalar loss (and optional extra scalars to log)
 * inside a tidy scope, then backward, optional global-norm clipping of `opt`'s parameters,
 * the update, zeroed grads; returns the numbers read back.
 */
export async function optimStep(
  opt: Optimizer,
  lossFn: () => { loss: Tensor; extra?: Record<string, Tensor> },
  clip?: number,
): Promise<{ loss: number; [k: string]: number }> {
  const [names, kept] = tidy(() => {
    const r = lossFn();
    r.loss.backward();
    const extra = Object.entries(r.extra ?? {});
    return [['loss', ...extra.map(([k]) => k)], [r.loss, ...extra.map(([, t]) => t)]] as const;
  });
  if (clip) clipGradNorm(opt.params, clip).dispose();
  opt.step();
  opt.zeroGrad();
  const values = await Promise.all(kept.map((t) => t.item()));
  for (const t of kept) t.dispose();
  return Object.fromEntries(values.map((v, i) => [names[i], v])) as { loss: number };
}

/** mean |a - b| */
export const l1Loss = (a: Tensor, b: Tensor): Tensor => tidy(() => mean(abs(sub(a, b))));

/** mean (a - b)² */
export const mseLoss = (a: Tensor, b: Tensor): Tensor => tidy(() => mean(square(sub(a, b))));

const WIN = 11;
const SIGMA = 1.5;
const GAUSS = (() => {
  const g = Float32Array.from({ length: WIN }, (_, i) => Math.exp(-((i - (WIN - 1) / 2) ** 2) / (2 * SIGMA * SIGMA)));
  const s = g.reduce((x, y) => x + y, 0);
  return g.map((v) => v / s);
})();

/**
 * Mean SSIM of two image batches [B, C, H, W] in [-1, 1] (mapped to [0, 1]), differentiable:
 * the convention of tools/metrics.ts ssim (11x11 Gaussian σ 1.5, population statistics, valid
 * window positions only, mean over positions, channels and images). H, W >= 11.
 */
export function ssimTensor(a: Tensor, b: Tensor): Tensor {
  const [n, c, h, w] = a.shape;
  if (a.rank !== 4 || b.shape.join() !== a.shape.join()) throw new Error(`ssimTensor: expected two equal [B, C, H, W] batches, got [${a.shape}] and [${b.shape}]`);
  if (h < WIN || w < WIN) throw new Error(`ssimTensor: images are ${w}x${h}, the ${WIN}x${WIN} window needs at least ${WIN}x${WIN}`);
  return tidy(() => {
    const planes = (t: Tensor) => reshape(addScalar(mulScalar(t, 0.5), 0.5), [n * c, 1, h, w]);
    const x = planes(a);
    const y = planes(b);
    const m = n * c;
    // the five local moments in one separable blur (rows, then columns)
    const stacked = concat([x, y, mul(x, x), mul(y, y), mul(x, y)], 0);
    const blurred = conv2d(conv2d(stacked, tensor(GAUSS, [1, 1, 1, WIN])), tensor(GAUSS, [1, 1, WIN, 1]));
    const [mx, my, exx, eyy, exy] = [0, 1, 2, 3, 4].map((k) => slice(blurred, 0, k * m, (k + 1) * m));
    const mxy = mul(mx, my);
    const mx2 = mul(mx, mx);
    const my2 = mul(my, my);
    const num = mul(addScalar(mulScalar(mxy, 2), 0.01 ** 2), addScalar(mulScalar(sub(exy, mxy), 2), 0.03 ** 2));
    const den = mul(addScalar(add(mx2, my2), 0.01 ** 2), addScalar(sub(add(exx, eyy), add(mx2, my2)), 0.03 ** 2));
    return mean(div(num, den));
  });
}

/** Weights of pixelLoss's terms beside L1 (absent: 0). */
export interface PixelLossWeights {
  ssim?: number;
  mse?: number;
  edge?: number;
}

/**
 * Mean |Δ(pred - target)| over horizontal and vertical neighbours, summed over the two axes:
 * L1 of the images' finite differences. L1 and MSE are content with a soft edge in the right
 * place; this term charges its slope (the PyTorch model of the vq stage: at weight 0.3 the
 * GenEval checker read 0.44 of the held-out reconstructions against 0.37 without; 26.8 dB against 26.4).
 */
export function edgeLoss(pred: Tensor, target: Tensor): Tensor {
  const [, , h, w] = pred.shape;
  return tidy(() => {
    const d = sub(pred, target);
    return add(l1Loss(slice(d, 3, 1, w), slice(d, 3, 0, w - 1)), l1Loss(slice(d, 2, 1, h), slice(d, 2, 0, h - 1)));
  });
}

/** L1 + ssim · (1 - SSIM) (the stated LPIPS substitute) + mse · MSE + edge · edgeLoss, images [B, C, H, W] in [-1, 1]. */
export const pixelLoss = (pred: Tensor, target: Tensor, w: PixelLossWeights = {}): Tensor =>
  tidy(() => {
    let loss = l1Loss(pred, target);
    if (w.ssim) loss = add(loss, mulScalar(addScalar(ssimTensor(pred, target), -1), -w.ssim));
    if (w.mse) loss = add(loss, mulScalar(mseLoss(pred, target), w.mse));
    return w.edge ? add(loss, mulScalar(edgeLoss(pred, target), w.edge)) : loss;
  });

/**
 * PSNR and SSIM (tools/metrics.ts, per image, averaged) of `reconstruct` on the first `count`
 * held-out images of the world at `size`, `batch` at a time. reconstruct(images [B,3,size,size]
 * in [-1, 1], the same images on the host) returns images (of another size: resized bicubic to
 * `size`); it runs without gradients.
 */
export async function heldoutReconstruction(
  count: number,
  size: number,
  batch: number,
  reconstruct: (images: Tensor, truth: RgbImage[]) => Tensor,
  world: World = trainWorld(),
): Promise<{ psnr: number; ssim: number }> {
  let sp = 0;
  let ss = 0;
  for (let start = 0; start < count; start += batch) {
    const indices = Array.from({ length: Math.min(batch, count - start) }, (_, k) => start + k);
    const truth = indices.map((i) => world.sample('heldout', i, size).image);
    const x = imagesToTensor(truth);
    const y = noGrad(() => reconstruct(x, truth));
    x.dispose();
    // a VQ decoder's output (tokenizer_size) is scored resized to size, as eval reconstruction does
    const out = await tensorToImages(y, size);
    y.dispose();
    out.forEach((img, k) => {
      sp += psnr(img, truth[k]);
      ss += ssim(img, truth[k]);
    });
  }
  return { psnr: sp / count, ssim: ss / count };
}
