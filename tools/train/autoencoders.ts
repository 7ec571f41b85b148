// The first two stages of `layton-run train layton`: the small AutoencoderKL (standing in for
// SDXL's VAE) and the VQ tokenizer trained as a VQ autoencoder (as the paper starts from
// LlamaGen's tokenizer), both on the procedural world.
//   vae  32 px images -> posterior -> sampled latent -> decoder; L1 + SSIM, MSE and edge terms + KL (SD's 1e-6
//        relative to the summed reconstruction loss); scaling_factor = 1 / std of the trained
//        latents (as SD set 0.18215), saved to <root>/vae/.
//   vq   the 16 px tokenizer copy -> encoder -> l2 codebook -> decoder that outputs the full 32 px
//        image (one more level than the encoder), so the "plain VQ decoder" baseline is compared
//        with Layton at the same size without resampling; LlamaGen's losses without the GAN
//        and LPIPS (the project's L1 + SSIM substitute), saved to <root>/vq/.
import {
  Generator, type Tensor, add, addScalar, exp, keep, mulScalar, noGrad, square, sub, sum, tensor, tidy, withBuild,
} from '../../runtime/index.ts';
import { AutoencoderKL, parseVaeConfig, vaeConfigJson } from '../../models/vae.ts';
import { CodebookUsage, VQModel, parseVQConfig, vqConfigJson } from '../../models/vq.ts';
import { imagesToTensor } from '../image.ts';
import { IMAGE_SIZE, TOKENIZER_SIZE, VAE_CONFIG, VQ_CONFIG } from './configs.ts';
import { tokenizerCopy, worldBatch } from './data.ts';
import { type StageSummary, generatorFor, runStage } from './loop.ts';
import { DEFAULT_SEED, type StageOptions, type PixelLossWeights, heldoutReconstruction, optimStep, pixelLoss, savePart, stageAdamW, stageDir, trainWorld } from './stage.ts';

/** Settings besides StageOptions (tests shrink them; the defaults are the shipped recipe's). */
export interface AutoencoderTuning {
  lr: number;
  /** AdamW's betas */
  betas: [number, number];
  warmup: number;
  checkpointEvery: number;
  /** held-out images the summary's PSNR / SSIM average over */
  evalImages: number;
  /** training batches whose latents set the VAE's scaling_factor */
  scaleBatches: number;
  /** weights of the reconstruction loss's terms next to L1 */
  loss: PixelLossWeights;
}

// ---- vae -----------------------------------------------------------------------------------

/**
 * 10-12 minutes on the 2-core software adapter when it runs alone (1.6-1.9 batch-8 steps/s).
 * The stage is step-bound: in a PyTorch model of it, 240 steps gave 19.8 dB and 400 gave 23.2,
 * while batch 4 at twice the steps or 8 latent channels did worse; at half the widths ([16, 32])
 * 900 steps gave 27.5 dB / SSIM 0.917 there. Here a [16, 32] step costs a third of a [32, 64]
 * one (1.28 against 0.40 steps/s), and 900 steps gave 26.3 dB / 0.895 with L1 + SSIM at lr 1e-3.
 * The vq stage's MSE and edge terms, lr 3e-3 and Adam's beta2 0.95 (VAE_TUNING) took the
 * model to 32.2 dB / 0.962 (lr 3e-3 with beta2 0.99 had done worse) and the project to
 * 31.2 dB / 0.955 (tools/train/pytorch/README.md). At 900 steps that recipe is chaotic: its
 * seeds spread over 30.1-32.2 dB in the model and rounding alone moved the project's run from
 * 31.2 to 29.8 dB; 1200 steps lift the model's weak seeds by 1.4-2.6 dB (EMA weights and a
 * cosine to zero did not help) and took the project's to 32.6 dB / 0.967, Layton's decoder
 * with it from 27.0 to 28.3 dB (README).
 */
export const VAE_DEFAULTS = { steps: 1200, batch: 8 };
const VAE_TUNING: AutoencoderTuning = { lr: 3e-3, betas: [0.9, 0.95], warmup: 30, checkpointEvery: 100, evalImages: 256, scaleBatches: 8, loss: { ssim: 0.2, mse: 1, edge: 0.3 } };
/** SD's KL weight, relative to the reconstruction loss summed over an image's values */
export const VAE_KL_WEIGHT = 1e-6;
/**
 * The posterior's initial log-variance (quant_conv's logvar biases): std e^-3 instead of about
 * 1, so the decoder sees the encoder's signal from the first step. With SD's tiny KL weight the
 * variance only shrinks anyway; a schedule of a few hundred steps should not be spent on that
 * (measured: with the default init the latent was still ~90% noise after 40 steps, PSNR 15.9 dB).
 */
const VAE_INIT_LOGVAR = -6;

/** A VAE for the stage: VAE_CONFIG's architecture, f32, seeded init with the posterior's noise turned down. */
async function initVae(seed: number): Promise<AutoencoderKL> {
  const config = parseVaeConfig(VAE_CONFIG, 'tools/train/configs.ts VAE_CONFIG');
  const vae = withBuild({ dtype: 'f32', generator: new Generator(seed) }, () => new AutoencoderKL(config));
  const bias = vae.quant_conv.bias!;
  const b = Float32Array.from((await bias.data()) as Float32Array);
  b.fill(VAE_INIT_LOGVAR, config.latentChannels);
  const t = tensor(b, bias.shape);
  vae.loadStateDict({ 'quant_conv.bias': t }, false);
  t.dispose();
  return vae;
}

/** The VAE stage's loss on one batch: {loss, rec, kl (per image)}; the posterior sample draws from `gen`. */
export function vaeLoss(vae: AutoencoderKL, images: Tensor, gen: Generator, weights: PixelLossWeights): { loss: Tensor; extra: { rec: Tensor; kl: Tensor } } {
  return tidy(() => {
    const posterior = vae.encode(images);
    const rec = pixelLoss(vae.decode(posterior.sample(gen)), images, weights);
    // KL(N(mean, var) || N(0, 1)) summed over an image's latent, averaged over the batch
    const kl = mulScalar(sum(add(square(posterior.mean), sub(exp(posterior.logvar), addScalar(posterior.logvar, 1)))), 0.5 / images.shape[0]);
    const values = images.size / images.shape[0];
    return { loss: add(rec, mulScalar(kl, VAE_KL_WEIGHT / values)), extra: { rec, kl } };
  });
}

/** Mean and std of posterior samples over `batches` training batches (drawn after the stage's steps, so fixed by the seed). */
async function latentStats(vae: AutoencoderKL, seed: number, from: number, batches: number, batch: number): Promise<{ mean: number; std: number }> {
  const world = trainWorld();
  let s = 0;
  let s2 = 0;
  let n = 0;
  for (let k = 0; k < batches; k++) {
    const { images } = worldBatch(world, 'train', seed, from + k, batch, IMAGE_SIZE);
    const z = noGrad(() => tidy(() => vae.encode(images).sample(generatorFor(seed, from + k))));
    images.dispose();
    const v = (await z.data()) as Float32Array;
    z.dispose();
    for (const x of v) {
      s += x;
      s2 += x * x;
    }
    n += v.length;
  }
  const mean = s / n;
  return { mean, std: Math.sqrt(Math.max(s2 / n - mean * mean, 0)) };
}

export async function trainVae(o: StageOptions, tune: Partial<AutoencoderTuning> = {}): Promise<StageSummary> {
  const t = { ...VAE_TUNING, ...tune };
  const steps = o.steps ?? VAE_DEFAULTS.steps;
  const batch = o.batch ?? VAE_DEFAULTS.batch;
  const seed = o.seed ?? DEFAULT_SEED;
  const vae = await initVae(seed);
  const config = vae.config;
  const opt = stageAdamW(vae, { lr: t.lr, steps, warmup: t.warmup, betas: t.betas });
  const world = trainWorld();
  try {
    return await runStage({
      name: 'vae',
      dir: stageDir(o.root, 'vae'),
      steps,
      seed,
      checkpointEvery: t.checkpointEvery,
      modules: { vae },
      optimizer: opt,
      resume: o.resume,
      log: o.log,
      async step(i, gen) {
        const { images } = worldBatch(world, 'train', seed, i, batch, IMAGE_SIZE);
        try {
          return await optimStep(opt, () => vaeLoss(vae, images, gen, t.loss));
        } finally {
          images.dispose();
        }
      },
      // the part is written here, before the summary: scaling_factor, then the held-out metrics
      async evaluate() {
        const { mean, std } = await latentStats(vae, seed, steps, t.scaleBatches, batch);
        config.scalingFactor = 1 / std;
        await savePart(o.root, 'vae', vaeConfigJson(config), vae);
        const m = await heldoutReconstruction(t.evalImages, IMAGE_SIZE, batch, (x) => vae.forward(x));
        return { psnr: m.psnr, ssim: m.ssim, latent_mean: mean, latent_std: std, scaling_factor: config.scalingFactor };
      },
    });
  } finally {
    vae.dispose();
    opt.dispose();
  }
}

// ---- vq ------------------------------------------------------------------------------------

/**
 * About 19 minutes on the software adapter (1.6 batch-8 steps/s at VQ_CONFIG's ch 32).
 * The VQ model reconstructs its own 16 px input, as LlamaGen's tokenizer does at 256 px (eval
 * scores the output resized to 32 px), with MSE and edge terms next to L1 + SSIM. In the PyTorch
 * model of the stage (tools/train/pytorch/README.md), 300 steps of the former recipe (a decoder
 * one level deeper, to 32 px; L1 + SSIM) gave 17.7 dB with every hue collapsed to pink; LlamaGen's
 * entropy loss (0.1) 18.8-18.9, + MSE 19.5, + the 16 px target 21.7 with the hues right. With MSE
 * and the 16 px target the entropy loss is no longer needed, and it made synonyms (VQ_CONFIG).
 * The stage is bound by its number of steps, not by width: at ch 64 the PyTorch model gave
 * 22.2 dB after 400 steps and 25.6 after 1000; at ch 32, whose step is 2x faster here, 1900 steps
 * in the same time gave 26.4 dB and 26.8 with the edge term (the project's 1800 without the
 * entropy loss: 27.0 dB / SSIM 0.913, the GenEval checker 0.713 through `eval geneval --reconstructed`).
 */
export const VQ_DEFAULTS = { steps: 1800, batch: 8 };
const VQ_TUNING: AutoencoderTuning = { lr: 1e-3, betas: [0.9, 0.95], warmup: 30, checkpointEvery: 100, evalImages: 256, scaleBatches: 0, loss: { ssim: 0.2, mse: 1, edge: 0.3 } };

/** The VQ stage's loss on one batch: reconstruction of the tokenizer copy from its codes + vq + commitment (+ entropy). */
export function vqLoss(vq: VQModel, small: Tensor, weights: PixelLossWeights): { loss: Tensor; extra: { rec: Tensor; vq: Tensor; commit: Tensor }; indices: Tensor } {
  return tidy(() => {
    const e = vq.encode(small);
    const rec = pixelLoss(vq.decode(e.quant), small, weights);
    const { vqLoss: v, commitLoss: c, entropyLoss } = e.losses;
    const loss = add(add(rec, v), entropyLoss ? add(c, entropyLoss) : c);
    return { loss, extra: { rec, vq: v, commit: c }, indices: e.indices };
  });
}

export async function trainVq(o: StageOptions, tune: Partial<AutoencoderTuning> = {}): Promise<StageSummary> {
  const t = { ...VQ_TUNING, ...tune };
  const steps = o.steps ?? VQ_DEFAULTS.steps;
  const batch = o.batch ?? VQ_DEFAULTS.batch;
  const seed = o.seed ?? DEFAULT_SEED;
  const config = parseVQConfig(VQ_CONFIG, 'tools/train/configs.ts VQ_CONFIG');
  const vq = withBuild({ dtype: 'f32', generator: new Generator(seed) }, () => new VQModel(config));
  const opt = stageAdamW(vq, { lr: t.lr, steps, warmup: t.warmup, betas: t.betas });
  const world = trainWorld();
  // the fraction of codes used over the last 16 steps' tokens (host side, for the progress line)
  const usage = new CodebookUsage(config.codebookSize, 16 * batch * (TOKENIZER_SIZE / 2) ** 2);
  try {
    return await runStage({
      name: 'vq',
      dir: stageDir(o.root, 'vq'),
      steps,
      seed,
      checkpointEvery: t.checkpointEvery,
      modules: { vq },
      optimizer: opt,
      resume: o.resume,
      log: o.log,
      async step(i) {
        const { images, small } = worldBatch(world, 'train', seed, i, batch, IMAGE_SIZE, TOKENIZER_SIZE);
        let indices: Tensor | undefined;
        try {
          const r = await optimStep(opt, () => {
            const l = vqLoss(vq, small!, t.loss);
            indices = keep(l.indices);
            return l;
          });
          return { ...r, usage: usage.update((await indices!.data()) as Int32Array) };
        } finally {
          for (const x of [images, small, indices]) x?.dispose();
        }
      },
      async evaluate() {
        await savePart(o.root, 'vq', vqConfigJson(config), vq, 'model.safetensors');
        // fraction of the codebook used by evalImages images' tokens (consumes the index tensors)
        const usageOf = async (ids: Tensor[]): Promise<number> => {
          const u = new CodebookUsage(config.codebookSize, t.evalImages * (TOKENIZER_SIZE / 2) ** 2);
          let used = 0;
          for (const x of ids) {
            used = u.update((await x.data()) as Int32Array);
            x.dispose();
          }
          return used;
        };
        const held: Tensor[] = [];
        const m = await heldoutReconstruction(t.evalImages, IMAGE_SIZE, batch, (_x, truth) =>
          tidy(() => {
            const e = vq.encode(imagesToTensor(truth.map((img) => tokenizerCopy(img, TOKENIZER_SIZE))));
            held.push(keep(e.indices));
            return vq.decode(e.quant);
          }));
        const heldUsage = await usageOf(held);
        // the same count of training images (the first batches): measured here, not from the
        // steps' window, so that a process resuming a finished stage reports it too
        const train: Tensor[] = [];
        for (let k = 0; k * batch < t.evalImages; k++) {
          const { images, small } = worldBatch(world, 'train', seed, k, Math.min(batch, t.evalImages - k * batch), IMAGE_SIZE, TOKENIZER_SIZE);
          train.push(tidy(() => keep(vq.encode(small!).indices)));
          for (const x of [images, small]) x?.dispose();
        }
        const trainUsage = await usageOf(train);
        return { psnr: m.psnr, ssim: m.ssim, codebook_usage: heldUsage, train_codebook_usage: trainUsage };
      },
    });
  } finally {
    vq.dispose();
    opt.dispose();
  }
}
