// The diffusion stages of the Layton recipe (`layton-run train ldm|consistency|layton-stage1|layton-stage2`):
//   ldm            a UNet (UNET_CONFIG) as a latent diffusion model on the frozen VAE's latents:
//                  DDPM loss (v, SCHEDULER_CONFIG) at uniform timesteps, the empty prompt. -> <root>/unet/, scheduler/
//   consistency    that LDM made a few-step model (standing in for Hyper-SD / TLCM): fine-tuned
//                  to predict x0 at the decode timesteps (see trainConsistency). -> <root>/unet-consistency/
//   layton-stage1  the LADD control branch (ControlNet.from_unet, zero convs) on the frozen
//                  consistency UNet, diffusion loss given the frozen VQ tokens' features C.
//                                                        -> <root>/controlnet/, layton.json, scheduler/
//   layton-stage2  the branch again, supervised in pixels through 1- or 2-step decoding and the
//                  frozen VAE decoder (L1 + (1 - SSIM): LPIPS's weights cannot be had here). -> <root>/controlnet/
// A model root's decoder UNet is unet-consistency/ when present (tools/modeldir.ts laytonDir); the LDM stays in
// unet/ so the consistency stage can be re-run from it.
// All randomness of step i (posterior samples, timesteps, noise, the 1-or-2-step choice) comes
// from the step's generator, in a fixed order, so resumed runs follow the same loss curve.
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type Generator, type Tensor, Generator as Philox, mean, mul, mulScalar, noGrad, rand, randn, square, sub, tensor, tidy, withBuild,
} from '../../runtime/index.ts';
import { readConfig } from '../../models/checkpoint.ts';
import { LaddBranch, controlNetConfigJson, isZeroConvParameter } from '../../models/controlnet.ts';
import { Layton, laytonConfigJson, loadLayton, parseLaytonConfig } from '../../models/layton.ts';
import { type AlphaScheduler, fromConfig } from '../../models/schedulers.ts';
import { UNet2DConditionModel, loadUNet, parseUNetConfig, unetConfigJson } from '../../models/unet.ts';
import { type AutoencoderKL, loadVae } from '../../models/vae.ts';
import { loadVQModel } from '../../models/vq.ts';
import { imagesToTensor } from '../image.ts';
import { laytonDir, saveModelDir } from '../modeldir.ts';
import { writeFileAtomic } from '../../runtime/platform/node-fs.ts';
import { CONTROLNET_OPTIONS, LAYTON_CONFIG, SCHEDULER_CONFIG, UNET_CONFIG } from './configs.ts';
import { type WorldBatch, tokenizerCopy, worldBatch } from './data.ts';
import { type StageSummary, runStage } from './loop.ts';
import {
  DEFAULT_SEED, type StageOptions, heldoutReconstruction, mseLoss, openPart, optimStep, type PixelLossWeights, pixelLoss, savePart, stageAdamW, stageDir, trainWorld,
} from './stage.ts';

/**
 * Per-stage defaults for this 2-core software adapter. Measured at batch 8 on the default
 * configs (UNet [32, 64], VAE [16, 32]), machine otherwise idle, 40-step runs with today's
 * kernels: ldm 0.66 s a step, consistency 0.67, stage 1 0.73, stage 2 1.12 (half the steps
 * 2-step): ldm, consistency and stage 1 about 6.6, 2.2 and 2.4 minutes (vae and vq about 10
 * and 18). At the former widths (UNet [64, 128], VAE [32, 64]) a step
 * cost 2.1-3.7x as much (ldm 0.40 it/s, stage 2 0.38) and 160 ldm steps gave about the held-out x0
 * MSE that 160 narrow ones do (0.89 / 0.15 against 0.69 / 0.16 at t = 999 / 499): these stages are
 * bound by steps too, so the narrow models train 3-4x the steps in about the same time.
 *
 * zeroConvLrScale: the branch's zero convs (isZeroConvParameter) train at this multiple of lr.
 * They start at 0, and the branch behind them gets no gradient until they grow; at lr itself
 * they ended both stages (380 Adam steps) at a mean |w| of 0.004-0.009, a tenth of a fresh 1x1
 * conv's, and the residuals they let through carried positions and brightness but not hue
 * (stage 2: 17.14 dB / SSIM 0.586 on 64 held-out images). At 10x: stage 1 14.70 dB (was 12.96),
 * stage 2 20.88 / 0.744, the same steps and seed; stage 2 at 30x (from that stage 1) 21.24 /
 * 0.762, with the lower loss in every tenth of the run. Stage 2's loss was still falling at its
 * end at lr 2e-4: at 4e-4, the zero convs' rate kept (15x), 1-step 25.09 -> 25.66 dB and SSIM
 * 0.844 -> 0.860 on 64 held-out images, 2-step 25.65 / 0.850 -> 26.12 / 0.864 (the same stage 1);
 * at 8e-4 (zero convs 7.5x, the same rate again) 26.07 / 0.871 and 26.39 / 0.873, with the lower
 * loss in every tenth of the run. Stage 2 has 1800 steps, 100 of them taken from stage 1 (300 ->
 * 200), whose branch stage 2 retrains in pixels anyway: 74 minutes of `train layton` at the step
 * times above; the machine of 2026-12-07's last run stepped 25-35% faster (vae 0.52 s, ldm 0.47,
 * consistency 0.47, vq 0.41, stage 1 0.53, stage 2 0.84) and took 54.6. 2600 steps there (65
 * minutes) were worse, not better: the loss stalled at 0.46 over the last 40% of the run where
 * 1800 steps fell to 0.32 as the rate decayed, and the 256 held-out images gave 25.68 dB / SSIM
 * 0.886 against 27.03 / 0.909 (the rate, held high for longer, is at the stage's edge).
 * twoStep 0.55: 1- and 2-step tied at 0.5 before zero terminal SNR (configs.ts), which takes the
 * first step's noise leak away but not the second's.
 */
export const DIFFUSION_DEFAULTS = {
  ldm: { steps: 600, batch: 8, lr: 5e-4, warmup: 20 },
  consistency: { steps: 200, batch: 8, lr: 3e-4, warmup: 10 },
  'layton-stage1': { steps: 200, batch: 8, lr: 3e-4, warmup: 10, zeroConvLrScale: 10 },
  /** twoStep: the fraction of steps that decode in 2 steps (else 1) */
  'layton-stage2': { steps: 1800, batch: 8, lr: 8e-4, warmup: 10, twoStep: 0.55, zeroConvLrScale: 7.5 },
} as const;
type DiffusionStage = keyof typeof DIFFUSION_DEFAULTS;

/** Knobs beyond StageOptions (tests use tiny parts; the CLI uses the defaults). */
export interface DiffusionStageConfig {
  /** ldm: the UNet's config.json (default UNET_CONFIG) */
  unet?: Record<string, unknown>;
  /** layton-stage1: LaddBranch.fromUnet options (default CONTROLNET_OPTIONS) */
  controlnet?: Parameters<typeof LaddBranch.fromUnet>[1];
  /** layton.json (default LAYTON_CONFIG): its image size (all stages), decode timesteps (consistency), written by stage 1 */
  layton?: Record<string, unknown>;
  lr?: number;
  /** layton-stage1/2: the zero convs' multiple of lr (default DIFFUSION_DEFAULTS') */
  zeroConvLrScale?: number;
  checkpointEvery?: number;
  /** held-out images evaluated at the end (default 64; 0: none) */
  evalImages?: number;
}

const GRAD_CLIP = 1;
const EVAL_BATCH = 16;
/** The evaluation's noise: fixed, so stage summaries compare across runs and reload checks. */
const EVAL_SEED = 12345;

// Layton.emptyPrompt reads only the UNet's config and the image size; calling it on just those
// keeps one definition of the prompt the LDM is trained with and Layton decodes with.
const emptyPrompt = (unet: UNet2DConditionModel, imageSize: number, batch: number) =>
  Layton.prototype.emptyPrompt.call({ unet, config: { imageSize } } as unknown as Layton, batch);

/** n uniforms in [0, 1) from the generator's next stream (read back: timesteps and choices are host numbers). */
async function uniforms(gen: Generator, n: number): Promise<number[]> {
  const u = rand([n], { generator: gen });
  const v = Array.from(await u.data() as Float32Array);
  u.dispose();
  return v;
}

/** The frozen VAE's scaled latents of images [B, 3, S, S]: a posterior sample (gen), or its mean without one. */
export function encodeLatents(vae: AutoencoderKL, images: Tensor, gen?: Generator): Tensor {
  return noGrad(() => tidy(() => {
    const post = vae.encode(images);
    try {
      return mulScalar(gen ? post.sample(gen) : post.mode(), vae.config.scalingFactor);
    } finally {
      post.dispose();
    }
  }));
}

/**
 * The diffusion loss of model output `pred` for latents noised with `noise` at timesteps `ts`:
 * 'target' is the MSE against the scheduler's training target (v here); 'x0' weights each
 * sample so that the loss is the MSE of the implied x0 estimate ((1-a)/a for epsilon, 1-a for
 * v, 1 for sample prediction).
 */
export function diffusionLoss(sched: AlphaScheduler, pred: Tensor, latents: Tensor, noise: Tensor, ts: number[], space: 'target' | 'x0'): Tensor {
  return tidy(() => {
    const target = sched.trainingTarget(latents, noise, ts);
    if (space === 'target') return mseLoss(pred, target);
    const w = ts.map((t) => {
      const a = sched.alphasCumprod[t];
      return sched.config.prediction_type === 'epsilon' ? (1 - a) / a : sched.config.prediction_type === 'v_prediction' ? 1 - a : 1;
    });
    return mean(mul(square(sub(pred, target)), tensor(w, [ts.length, 1, 1, 1])));
  });
}

/** The LDM / consistency loss of `unet` on latents at timesteps ts (noise drawn from gen). */
export function unetLoss(unet: UNet2DConditionModel, sched: AlphaScheduler, latents: Tensor, ts: number[], gen: Generator, space: 'target' | 'x0', imageSize: number): Tensor {
  return tidy(() => {
    const noise = randn(latents.shape, { generator: gen });
    const zt = sched.addNoise(latents, noise, ts);
    const { states, added } = emptyPrompt(unet, imageSize, ts.length);
    return diffusionLoss(sched, unet.forward(zt, tensor(ts, [ts.length]), states, { added }), latents, noise, ts, space);
  });
}

/** Stage 1's loss: the branch's training-target MSE at timesteps ts given the tokens' features (noise from gen). */
export function stage1Loss(m: Layton, ids: Tensor, latents: Tensor, ts: number[], gen: Generator): Tensor {
  return tidy(() => {
    const noise = randn(latents.shape, { generator: gen });
    const zt = m.scheduler.addNoise(latents, noise, ts);
    const { states, added } = m.emptyPrompt(ts.length);
    const pred = m.branch.forward(zt, tensor(ts, [ts.length]), states, m.features(ids), { added, conditioningScale: m.config.conditioningScale });
    return diffusionLoss(m.scheduler, pred, latents, noise, ts, 'target');
  });
}

/**
 * Stage 2's pixel loss, L1 + (1 - SSIM) + 3 MSE + 0.3 edge L1 (the stated LPIPS substitute). The MSE
 * term is the VQ stage's finding (autoencoders.ts): trained with L1 + SSIM alone, the VQ decoder and
 * then this branch both kept positions and brightness but let hues drift (blue objects came out
 * dark, white ones yellow), and an MSE term weighted 3 gained the most there. The edge term
 * (stage.ts edgeLoss) is the VQ stage's too: it made that decoder's shapes sharper at no cost in PSNR.
 * SSIM weighs 1, not the other stages' 0.2: the decode from noise leaves grain on flat
 * backgrounds, which SSIM charges heavily there (grain of 3 levels in 255 alone gives SSIM 0.87 on a
 * flat patch) and L1/MSE hardly; at 1, 1000 steps at lr 8e-4 gave 26.22 dB / SSIM 0.883 on 64
 * held-out images against 26.07 / 0.871 at 0.2 (2-step 26.46 / 0.886 against 26.39 / 0.873); at 2.5,
 * 1400 steps on the 256 of `eval reconstruction`, 27.23 / 0.906 against 27.36 / 0.903 at 1 (2-step
 * 27.34 / 0.905 against 27.44 / 0.902): the SSIM that the VQ decoder's 0.913 asks for, for 0.1 dB.
 */
export const STAGE2_PIXEL_LOSS: PixelLossWeights = { ssim: 2.5, mse: 3, edge: 0.3 };

/**
 * Stage 2's loss: tokens -> `steps`-step decode from noise drawn from gen (TLCM's stop-gradient
 * before the last step) -> frozen VAE decoder -> STAGE2_PIXEL_LOSS against the full-size images.
 */
export function stage2Loss(m: Layton, ids: Tensor, images: Tensor, steps: number, gen: Generator): Tensor {
  return tidy(() => {
    const noise = randn([ids.shape[0], ...m.latentShape], { generator: gen });
    const z0 = m.denoise(m.features(ids), { steps, generator: gen, noise, stopGradientBeforeLast: true });
    return pixelLoss(m.decodeLatents(z0), images, STAGE2_PIXEL_LOSS);
  });
}

/** PSNR / SSIM of Layton's 1- and 2-step reconstructions of the first `count` held-out world images (fixed noise). */
export async function laytonMetrics(m: Layton, count: number): Promise<Record<string, number>> {
  const world = trainWorld();
  const { imageSize, tokenizerSize } = m.config;
  const out: Record<string, number> = {};
  for (const steps of [1, 2]) {
    let batchNo = 0;
    const r = await heldoutReconstruction(count, imageSize, EVAL_BATCH, (_x, truth) => tidy(() => {
      const small = imagesToTensor(truth.map((img) => tokenizerCopy(img, tokenizerSize)));
      return m.decode(m.tokenize(small), { steps, generator: new Philox(EVAL_SEED + batchNo++) });
    }), world);
    const tag = steps === 1 ? '' : '_2step';
    out[`psnr${tag}`] = r.psnr;
    out[`ssim${tag}`] = r.ssim;
  }
  return out;
}

/** Held-out x0 MSE (scaled latents) of the UNet alone at each timestep (fixed images and noise): how well one step from there would decode. */
export async function x0Metrics(unet: UNet2DConditionModel, vae: AutoencoderKL, sched: AlphaScheduler, imageSize: number, timesteps: number[], count: number): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  if (!count) return out;
  const world = trainWorld();
  const images = imagesToTensor(Array.from({ length: count }, (_, i) => world.sample('heldout', i, imageSize).image));
  const latents = encodeLatents(vae, images);
  images.dispose();
  for (const t of timesteps) {
    const l = noGrad(() => unetLoss(unet, sched, latents, new Array(count).fill(t), new Philox(EVAL_SEED), 'x0', imageSize));
    out[`x0_mse_t${t}`] = await l.item();
    l.dispose();
  }
  latents.dispose();
  return out;
}

const settings = (stage: DiffusionStage, o: StageOptions, x: DiffusionStageConfig) => {
  const d = DIFFUSION_DEFAULTS[stage];
  const steps = o.steps ?? d.steps;
  const batch = o.batch ?? d.batch;
  if (!Number.isInteger(batch) || batch < 1) throw new Error(`${stage}: batch must be a positive integer, got ${batch}`);
  return {
    steps, batch, seed: o.seed ?? DEFAULT_SEED, dir: stageDir(o.root, stage), evalImages: x.evalImages ?? 64, checkpointEvery: x.checkpointEvery ?? 100,
    lr: x.lr ?? d.lr, warmup: d.warmup,
  };
};

const loadScheduler = async (root: string): Promise<AlphaScheduler> =>
  fromConfig(await readConfig(await openPart(root, 'scheduler'), 'scheduler_config.json'), { where: join(root, 'scheduler', 'scheduler_config.json') }) as AlphaScheduler;

const writeJson = (path: string, o: object) => writeFileAtomic(path, [new TextEncoder().encode(JSON.stringify(o, null, 2) + '\n')]);

/** The decode timesteps of the default Layton (all step counts): what the consistency UNet is trained at. */
const decodeTimesteps = (layton: Record<string, unknown>): number[] =>
  [...new Set(Object.values(parseLaytonConfig(layton).decodeTimesteps).flat())].sort((a, b) => b - a);

/** ldm and consistency: one UNet trained on VAE latents, at the timesteps and in the loss space `how` says. */
async function trainUNetStage(
  stage: 'ldm' | 'consistency', o: StageOptions, x: DiffusionStageConfig,
  how: { init: () => Promise<UNet2DConditionModel>; timestep: (u: number) => number; space: 'target' | 'x0'; part: string },
): Promise<StageSummary> {
  const s = settings(stage, o, x);
  const vae = (await loadVae(await openPart(o.root, 'vae'), { dtype: 'f32' })).setTrainable(false);
  const parts: { dispose(): void }[] = [vae];
  try {
    const sched = await loadScheduler(o.root);
    const unet = await how.init();
    parts.push(unet);
    const imageSize = parseLaytonConfig(x.layton ?? LAYTON_CONFIG, 'layton config').imageSize;
    const opt = stageAdamW(unet.trainableParameters(), { lr: s.lr, steps: s.steps, warmup: s.warmup });
    parts.push(opt);
    const world = trainWorld();
    const probe = decodeTimesteps(x.layton ?? LAYTON_CONFIG);
    const summary = await runStage({
      name: stage, dir: s.dir, steps: s.steps, seed: s.seed, checkpointEvery: s.checkpointEvery, modules: { unet }, optimizer: opt, resume: o.resume, log: o.log,
      async step(i, gen) {
        const b = worldBatch(world, 'train', s.seed, i, s.batch, imageSize);
        const latents = encodeLatents(vae, b.images, gen);
        b.images.dispose();
        try {
          const ts = (await uniforms(gen, s.batch)).map(how.timestep);
          return await optimStep(opt, () => ({ loss: unetLoss(unet, sched, latents, ts, gen, how.space, imageSize) }), GRAD_CLIP);
        } finally {
          latents.dispose();
        }
      },
      evaluate: () => x0Metrics(unet, vae, sched, imageSize, probe, Math.min(s.evalImages, EVAL_BATCH)),
    });
    await savePart(o.root, how.part, unetConfigJson(unet.config), unet);
    return summary;
  } finally {
    for (const p of parts) p.dispose();
  }
}

/** Trains the LDM from scratch (UNET_CONFIG, seeded init); writes <root>/unet/ and <root>/scheduler/ (SCHEDULER_CONFIG). */
export async function trainLdm(o: StageOptions, x: DiffusionStageConfig = {}): Promise<StageSummary> {
  await openPart(o.root, 'vae'); // before writing anything
  const sched = fromConfig(SCHEDULER_CONFIG) as AlphaScheduler;
  await saveScheduler(o.root, sched);
  const n = sched.config.num_train_timesteps;
  return trainUNetStage('ldm', o, x, {
    part: 'unet',
    space: 'target',
    timestep: (u) => Math.min(n - 1, Math.floor(u * n)),
    init: async () => withBuild({ generator: new Philox(o.seed ?? DEFAULT_SEED) }, () => new UNet2DConditionModel(parseUNetConfig(x.unet ?? UNET_CONFIG, 'UNET_CONFIG'))),
  });
}

async function saveScheduler(root: string, sched: AlphaScheduler): Promise<void> {
  await mkdir(join(root, 'scheduler'), { recursive: true });
  await writeJson(join(root, 'scheduler', 'scheduler_config.json'), sched.toJson());
}

/**
 * The few-step ("consistency") UNet: the LDM fine-tuned to predict x0 directly at the decode
 * timesteps ([999] and [999, 499]: each sample at one of them, chosen uniformly), with the x0
 * MSE taken through the scheduler's parameterisation (so it stays a diffusers UNet of that prediction_type).
 * Why this and not LCM consistency distillation: the Layton decoder evaluates the UNet only at
 * those timesteps, from pure noise or from its own re-noised first estimate, so an accurate x0
 * there is exactly what it needs; it costs one forward + backward per step, where distillation
 * needs a teacher ODE step and an EMA target forward besides (about 2x the time per step, for a
 * target that only approaches this one through many skipped-step hops), and it fits ~10 minutes
 * here. The unconditional x0 at t = 999 is the data mean; the control branch (stages 1 and 2)
 * supplies the content. Writes <root>/unet-consistency/; <root>/unet/ keeps the LDM.
 */
export async function trainConsistency(o: StageOptions, x: DiffusionStageConfig = {}): Promise<StageSummary> {
  const ts = decodeTimesteps(x.layton ?? LAYTON_CONFIG);
  return trainUNetStage('consistency', o, x, {
    part: 'unet-consistency',
    space: 'x0',
    timestep: (u) => ts[Math.min(ts.length - 1, Math.floor(u * ts.length))],
    init: async () => (await loadUNet(await openPart(o.root, 'unet'), { dtype: 'f32' })).setTrainable(true),
  });
}

/** Where stage 1 keeps its own copy of the branch (stage 2 starts from it, so re-running stage 2 never trains on its own output). */
const stage1Branch = (root: string) => join(stageDir(root, 'layton-stage1'), 'controlnet');

/** Stage 1 and 2: the control branch of `m` trained with `loss`; evaluation; the branch saved. */
async function trainBranchStage(
  stage: 'layton-stage1' | 'layton-stage2', o: StageOptions, x: DiffusionStageConfig, m: Layton,
  /** draws the step's host-side numbers; returns the loss thunk (run inside optimStep), extra numbers to log, tensors to free after */
  prepare: (gen: Generator, ids: Tensor, b: WorldBatch, batch: number) => Promise<{ loss: () => Tensor; extra?: Record<string, number>; free?: Tensor[] }>,
): Promise<StageSummary> {
  const s = settings(stage, o, x);
  const zs = x.zeroConvLrScale ?? DIFFUSION_DEFAULTS[stage].zeroConvLrScale;
  const opt = stageAdamW(m.branch.trainableParameters(), { lr: s.lr, steps: s.steps, warmup: s.warmup, lrScale: (n) => (isZeroConvParameter(n) ? zs : 1) });
  try {
    const world = trainWorld();
    const { imageSize, tokenizerSize } = m.config;
    const summary = await runStage({
      name: stage, dir: s.dir, steps: s.steps, seed: s.seed, checkpointEvery: s.checkpointEvery, modules: { controlnet: m.controlnet }, optimizer: opt,
      resume: o.resume, log: o.log,
      async step(i, gen) {
        const b = worldBatch(world, 'train', s.seed, i, s.batch, imageSize, tokenizerSize);
        const ids = m.tokenize(b.small!);
        b.small!.dispose();
        const free = [ids, b.images];
        try {
          const r = await prepare(gen, ids, b, s.batch);
          free.push(...(r.free ?? []));
          return { ...(await optimStep(opt, () => ({ loss: r.loss() }), GRAD_CLIP)), ...r.extra };
        } finally {
          for (const t of free) t.dispose();
        }
      },
      evaluate: async () => (s.evalImages ? laytonMetrics(m, s.evalImages) : {}),
    });
    const cfg = controlNetConfigJson(m.controlnet.config);
    if (stage === 'layton-stage1') await saveModelDir(stage1Branch(o.root), cfg, m.controlnet);
    await savePart(o.root, 'controlnet', cfg, m.controlnet);
    if (stage === 'layton-stage1') {
      await saveScheduler(o.root, m.scheduler);
      await writeJson(join(o.root, 'layton.json'), laytonConfigJson(m.config));
    }
    return summary;
  } finally {
    opt.dispose();
  }
}

/**
 * Stage 1: a new control branch (from_unet of the consistency UNet, CONTROLNET_OPTIONS, seeded)
 * trained with the diffusion loss at uniform timesteps given C = the features of the frozen VQ's
 * tokens of the tokenizer copy. (Trained instead at the decode timesteps in x0 space, as the
 * consistency UNet was, it reached 15.04 dB against 14.70 here, but stage 2 then ended the same:
 * 20.85 / SSIM 0.746 against 20.88 / 0.744.) VQ, UNet and VAE are frozen. Writes <root>/controlnet/,
 * <root>/layton.json and <root>/scheduler/.
 */
export async function trainLaytonStage1(o: StageOptions, x: DiffusionStageConfig = {}): Promise<StageSummary> {
  const f32 = { dtype: 'f32' as const };
  const parts: { dispose(): void }[] = [];
  const keep = <T extends { dispose(): void }>(p: T): T => (parts.push(p), p);
  let m: Layton;
  try {
    const vq = keep(await loadVQModel(await openPart(o.root, 'vq'), f32));
    const unet = keep(await loadUNet(await openPart(o.root, 'unet-consistency'), f32));
    const vae = keep(await loadVae(await openPart(o.root, 'vae'), f32));
    const sched = await loadScheduler(o.root);
    const branch = withBuild({ generator: new Philox(o.seed ?? DEFAULT_SEED) }, () => LaddBranch.fromUnet(unet, x.controlnet ?? CONTROLNET_OPTIONS));
    keep(branch.controlnet);
    m = new Layton(parseLaytonConfig(x.layton ?? LAYTON_CONFIG, 'layton config'), vq, unet, branch.controlnet, vae, sched);
  } catch (e) {
    for (const p of parts) p.dispose();
    throw e;
  }
  try {
    const n = m.scheduler.config.num_train_timesteps;
    return await trainBranchStage('layton-stage1', o, x, m, async (gen, ids, b, batch) => {
      const latents = encodeLatents(m.vae, b.images, gen);
      const ts = (await uniforms(gen, batch)).map((u) => Math.min(n - 1, Math.floor(u * n)));
      return { loss: () => stage1Loss(m, ids, latents, ts, gen), free: [latents] };
    });
  } finally {
    m.dispose();
  }
}

/**
 * Stage 2: stage 1's branch trained through the decoded image: each step decodes in 2 steps
 * (stop-gradient on the first) with probability twoStep, else in 1 (a seeded choice), and the
 * frozen VAE decoder's full-size image is compared by STAGE2_PIXEL_LOSS. Only the branch trains. Writes <root>/controlnet/.
 */
export async function trainLaytonStage2(o: StageOptions, x: DiffusionStageConfig = {}): Promise<StageSummary> {
  // each missing part named with the stage that makes it
  for (const part of ['vq', 'vae', 'unet-consistency', 'controlnet', 'scheduler']) await openPart(o.root, part);
  const from: Record<string, string> = existsSync(stage1Branch(o.root)) ? { controlnet: join('train', 'layton-stage1', 'controlnet') } : {};
  const m = await loadLayton(laytonDir(o.root, from), { dtype: 'f32' });
  const twoStep = DIFFUSION_DEFAULTS['layton-stage2'].twoStep;
  try {
    return await trainBranchStage('layton-stage2', o, x, m, async (gen, ids, b) => {
      const steps = (await uniforms(gen, 1))[0] < twoStep ? 2 : 1;
      return { loss: () => stage2Loss(m, ids, b.images, steps, gen), extra: { steps } };
    });
  } finally {
    m.dispose();
  }
}
