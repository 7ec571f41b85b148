// The diffusion stages of the Layton recipe on tiny random parts (VAE, VQ built here, seeded):
// each stage runs and writes a part that loads; the saved Layton reproduces the metrics the
// stage measured in memory; frozen parts get no gradient and keep their weights while the
// trained part moves; each loss falls on a fixed batch; stage 2's 2-step loss back-propagates
// through the last step only (TLCM's stop-gradient), as a hand-built last step does.
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { maxRelError } from './ref/cpu.ts';
import { Generator, type Tensor, add, mulScalar, noGrad, randn, tidy, withBuild } from '../runtime/index.ts';
import { type Layton, loadLayton } from '../models/layton.ts';
import { loadUNet } from '../models/unet.ts';
import { AutoencoderKL, parseVaeConfig, vaeConfigJson } from '../models/vae.ts';
import { VQModel, parseVQConfig, vqConfigJson } from '../models/vq.ts';
import { laytonDir, modelDir, saveModelDir } from '../tools/modeldir.ts';
import { CONTROLNET_OPTIONS, UNET_CONFIG, VAE_CONFIG, VQ_CONFIG } from '../tools/train/configs.ts';
import { worldBatch } from '../tools/train/data.ts';
import {
  type DiffusionStageConfig, encodeLatents, laytonMetrics, stage1Loss, stage2Loss, trainConsistency, trainLaytonStage1,
  STAGE2_PIXEL_LOSS, trainLaytonStage2, trainLdm, unetLoss,
} from '../tools/train/diffusion.ts';
import { optimStep, pixelLoss, stageAdamW, trainWorld } from '../tools/train/stage.ts';
import { paramGrad } from './helpers/grad.ts';

const note = errorReport();
const root = mkdtempSync(join(tmpdir(), 'layton-diffusion-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

// the default geometry (32 px images, 16x16 latents, 8x8 tokens) at a few channels
const TINY: DiffusionStageConfig = {
  unet: { ...UNET_CONFIG, block_out_channels: [8, 16], norm_num_groups: 4, attention_head_dim: 2, cross_attention_dim: 8 },
  controlnet: { ...CONTROLNET_OPTIONS, conditioningEmbeddingOutChannels: [8, 16] },
  checkpointEvery: 1,
};
const quiet = () => {};
const run = { root, steps: 2, batch: 2, seed: 3, log: quiet };

beforeAll(async () => {
  const g = new Generator(11);
  const vae = withBuild({ generator: g }, () => new AutoencoderKL(parseVaeConfig({ ...VAE_CONFIG, block_out_channels: [8, 16], norm_num_groups: 4, force_upcast: true })));
  await saveModelDir(join(root, 'vae'), vaeConfigJson(vae.config), vae);
  const vq = withBuild({ generator: g }, () => new VQModel(parseVQConfig({ ...VQ_CONFIG, codebook_size: 64, ch: 32, z_channels: 16 })));
  await saveModelDir(join(root, 'vq'), vqConfigJson(vq.config), vq, 'model.safetensors');
  vae.dispose();
  vq.dispose();
});

const read = async (t: Tensor) => Float32Array.from(await t.data() as Float32Array);
const snapshot = async (m: { namedParameters(): Iterable<[string, Tensor]> }) => {
  const out = new Map<string, Float32Array>();
  for (const [k, p] of m.namedParameters()) out.set(k, await read(p));
  return out;
};
/** how many of the module's parameters differ from the snapshot */
const changed = async (m: { namedParameters(): Iterable<[string, Tensor]> }, before: Map<string, Float32Array>) => {
  let n = 0;
  for (const [k, p] of m.namedParameters()) if (maxRelError(await read(p), before.get(k)!) > 0) n++;
  return n;
};
const loadTrained = () => loadLayton(laytonDir(root), { dtype: 'f32' });
/** the world's training batch `step` (images 32 px, tokenizer copies 16 px) */
const batchOf = (step: number, n = 2) => worldBatch(trainWorld(), 'train', 7, step, n, 32, 16);

describe('diffusion stages', () => {
  it('run in order, each writing a part that loads; the saved Layton reproduces the in-memory metrics', async () => {
    const ldm = await trainLdm(run, TINY);
    expect(ldm.steps).toBe(2);
    expect(Object.keys(ldm.metrics).sort()).toEqual(['x0_mse_t499', 'x0_mse_t999']);
    const cons = await trainConsistency(run, TINY);
    expect(existsSync(join(root, 'scheduler', 'scheduler_config.json'))).toBe(true);
    // the consistency UNet is a separate part, started from the LDM and moved by training
    const a = await loadUNet(await modelDir(join(root, 'unet')));
    const b = await loadUNet(await modelDir(join(root, 'unet-consistency')));
    expect(await changed(b, await snapshot(a))).toBeGreaterThan(0);
    a.dispose();
    b.dispose();
    expect(cons.final_loss).toBeGreaterThan(0);

    const s1 = await trainLaytonStage1({ ...run }, { ...TINY, evalImages: 0 });
    expect(s1.metrics).toEqual({});
    expect(JSON.parse(readFileSync(join(root, 'layton.json'), 'utf8')).decode_timesteps).toEqual({ 1: [999], 2: [999, 499] });
    const s2 = await trainLaytonStage2({ ...run }, { ...TINY, evalImages: 2 });
    expect(Object.keys(s2.metrics).sort()).toEqual(['psnr', 'psnr_2step', 'ssim', 'ssim_2step']);
    expect(JSON.parse(readFileSync(join(root, 'train', 'layton-stage2', 'summary.json'), 'utf8')).final_loss).toBe(s2.final_loss);
    // the folder decodes with the consistency UNet and stage 2's branch: the stage's own numbers
    const m = await loadTrained();
    const again = await laytonMetrics(m, 2);
    expect(again).toEqual(s2.metrics);
    const cons2 = await loadUNet(await modelDir(join(root, 'unet-consistency')));
    expect(await changed(m.unet, await snapshot(cons2))).toBe(0);
    cons2.dispose();
    // stage 2 started from stage 1's branch (kept under train/) and moved it
    const { loadControlNet } = await import('../models/controlnet.ts');
    const first = await loadControlNet(await modelDir(join(root, 'train', 'layton-stage1', 'controlnet')));
    expect(await changed(m.controlnet, await snapshot(first))).toBeGreaterThan(0);
    first.dispose();
    m.dispose();
    // every draw comes from the seed: a re-run of stage 2 (from stage 1's copy, not its own output) repeats its losses
    expect((await trainLaytonStage2({ ...run }, { ...TINY, evalImages: 0 })).loss_curve).toEqual(s2.loss_curve);
  }, 120_000);

  it("the branch's zero convs step at zeroConvLrScale times the rate (Adam's first step from 0: lr g / |g|)", async () => {
    const copy = join(root, 'zero-lr');
    for (const part of ['vae', 'vq', 'unet', 'unet-consistency', 'scheduler']) cpSync(join(root, part), join(copy, part), { recursive: true });
    await trainLaytonStage1({ ...run, root: copy, steps: 1 }, { ...TINY, lr: 1e-3, zeroConvLrScale: 10, evalImages: 0 });
    const { isZeroConvParameter, loadControlNet } = await import('../models/controlnet.ts');
    const cn = await loadControlNet(await modelDir(join(copy, 'controlnet')));
    try {
      const outputs = Object.entries(cn.stateDict()).filter(([k]) => isZeroConvParameter(k) && !k.startsWith('controlnet_cond_embedding.'));
      expect(outputs.length).toBeGreaterThan(4);
      for (const [k, t] of outputs) {
        // each entry with a gradient g is at 10 lr |g| / (|g| + 1e-8): 1e-2 but where |g| is tiny; most have one
        const moved = Array.from(await read(t)).filter((e) => e !== 0).map(Math.abs);
        expect(moved.length, k).toBeGreaterThan(t.size / 2);
        expect(Math.max(...moved), k).toBeLessThanOrEqual(1e-2 * (1 + 1e-6));
        expect(moved.filter((e) => e > 0.99e-2).length, k).toBeGreaterThan(0.9 * moved.length);
      }
      // the way in (and the whole branch behind the output convs) gets no gradient while those are 0
      expect(Array.from(await read(cn.stateDict()['controlnet_cond_embedding.conv_out.weight'])).every((e) => e === 0)).toBe(true);
    } finally {
      cn.dispose();
    }
  });

  it('a missing earlier part is an error naming it and the stage that makes it', async () => {
    const empty = join(root, 'empty');
    await expect(trainLdm({ root: empty, steps: 1, log: quiet })).rejects.toThrow(/empty\/vae: no such model folder \(run `layton-run train vae`/);
    expect(existsSync(empty)).toBe(false); // nothing written
    await expect(trainConsistency({ root: empty, steps: 1, log: quiet })).rejects.toThrow(/empty\/vae: no such model folder/);
    await expect(trainLaytonStage1({ root: empty, steps: 1, log: quiet })).rejects.toThrow(/empty\/vq: no such model folder \(run `layton-run train vq`/);
    await expect(trainLaytonStage2({ root: empty, steps: 1, log: quiet })).rejects.toThrow(/empty\/vq: no such model folder/);
  });

  it('stages train only their part: frozen VQ, UNet and VAE get no gradient and keep their weights', async () => {
    const m = await loadTrained();
    const frozen = { vq: m.vq, unet: m.unet, vae: m.vae };
    const before = Object.fromEntries(await Promise.all(Object.entries(frozen).map(async ([k, p]) => [k, await snapshot(p)] as const)));
    const branch = await snapshot(m.controlnet);
    const opt = stageAdamW(m.branch.trainableParameters(), { lr: 1e-3, steps: 10 });
    const b = batchOf(0);
    const ids = m.tokenize(b.small!);
    const latents = encodeLatents(m.vae, b.images, new Generator(1));
    for (const loss of [() => stage1Loss(m, ids, latents, [999, 10], new Generator(2)), () => stage2Loss(m, ids, b.images, 2, new Generator(3))]) {
      const l = tidy(loss);
      l.backward();
      l.dispose();
      for (const p of Object.values(frozen)) for (const [k, t] of p.namedParameters()) expect(t.grad, k).toBeNull();
      expect(m.controlnet.parameters().filter((p) => p.grad).length).toBeGreaterThan(0);
      opt.step();
      opt.zeroGrad();
    }
    for (const [k, p] of Object.entries(frozen)) expect(await changed(p, before[k]), k).toBe(0);
    expect(await changed(m.controlnet, branch)).toBeGreaterThan(10);
    [ids, latents, b.images, b.small!].forEach((t) => t.dispose());
    opt.dispose();
    m.dispose();
  }, 60_000);

  it('each loss falls on a fixed batch (overfit check)', async () => {
    const m = await loadTrained();
    const b = batchOf(1);
    const ids = m.tokenize(b.small!);
    const latents = encodeLatents(m.vae, b.images, new Generator(1));
    const curve = async (params: Iterable<[string, Tensor]>, loss: () => Tensor, steps: number, lr: number) => {
      const opt = stageAdamW(params, { lr, steps: 1000 });
      const out: number[] = [];
      for (let i = 0; i < steps; i++) out.push((await optimStep(opt, () => ({ loss: loss() }))).loss);
      opt.dispose();
      return out;
    };
    const cases: [string, number[]][] = [
      ['unet x0 (consistency)', await curve(m.unet.setTrainable(true).trainableParameters(), () => unetLoss(m.unet, m.scheduler, latents, [999, 499], new Generator(4), 'x0', 32), 6, 1e-3)],
    ];
    m.unet.setTrainable(false);
    cases.push(['stage 1', await curve(m.branch.trainableParameters(), () => stage1Loss(m, ids, latents, [700, 300], new Generator(5)), 8, 1e-2)]);
    // a target the random VAE decoder can reach: its own decode of the images' latents
    const reachable = noGrad(() => m.decodeLatents(latents));
    // 1 step: the 2-step loss's stop-gradient gradient ignores the first step's dependence on the branch, so it need not descend
    cases.push(['stage 2 (1-step)', await curve(m.branch.trainableParameters(), () => stage2Loss(m, ids, reachable, 1, new Generator(6)), 8, 3e-3)]);
    reachable.dispose();
    [ids, latents, b.images, b.small!].forEach((t) => t.dispose());
    m.dispose();
    for (const [name, c] of cases) {
      console.log(`${name}: ${c.map((v) => v.toFixed(4)).join(' ')}`);
      // every step lowers it, and by a margin over the run
      c.slice(1).forEach((v, i) => expect(v, `${name} step ${i + 1}`).toBeLessThan(c[i]));
      expect(c.at(-1)!, name).toBeLessThan((name.startsWith('stage 2') ? 0.97 : 0.9) * c[0]);
    }
  }, 60_000);

  it("stage 2's 2-step loss has the branch gradient of its last step alone (stop-gradient)", async () => {
    const m = await loadTrained();
    const b = batchOf(2, 1);
    const ids = m.tokenize(b.small!);
    const gradOf = (f: () => Tensor) => paramGrad(m.controlnet, 'controlnet_down_blocks.0.weight', f);
    const g2 = gradOf(() => stage2Loss(m, ids, b.images, 2, new Generator(9)));
    // by hand: the stage's draws in order (start noise, re-noise), the first x0 a constant
    const gen = new Generator(9);
    const noise = randn([1, ...m.latentShape], { generator: gen });
    const renoise = randn([1, ...m.latentShape], { generator: gen });
    const c = m.features(ids);
    const a = m.scheduler.alphasCumprod[499];
    const z2 = noGrad(() => tidy(() => add(mulScalar(m.predictX0(noise, 999, c), Math.sqrt(a)), mulScalar(renoise, Math.sqrt(1 - a)))));
    const g1 = gradOf(() => pixelLoss(m.decodeLatents(m.predictX0(z2, 499, c)), b.images, STAGE2_PIXEL_LOSS));
    expect(maxRelError(await g1.data(), new Float32Array(g1.size))).toBeGreaterThan(0); // a real gradient
    expect(note('stage 2: 2-step gradient = last step alone', maxRelError(await g2.data(), await g1.data()))).toBeLessThan(1e-5);
    [ids, b.images, b.small!, noise, renoise, c, z2, g1, g2].forEach((t) => t.dispose());
    m.dispose();
  }, 60_000);
});
