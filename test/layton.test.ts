// The Layton composite on small random parts (the fixture folders of the part tests): token
// shapes, the consistency decode's arithmetic against a CPU recomputation, the zero-initialised
// branch leaving the frozen LDM untouched, TLCM's stop-gradient, seeding, and a folder round trip.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { maxRelError } from './ref/cpu.ts';
import { Generator, type Tensor, add as add2, mean, mulScalar, noGrad, rand, randn, square, tidy } from '../runtime/index.ts';
import { LaddBranch } from '../models/controlnet.ts';
import { Layton, loadLayton, parseLaytonConfig } from '../models/layton.ts';
import { DDPMScheduler } from '../models/schedulers.ts';
import { loadUNet } from '../models/unet.ts';
import { loadVae } from '../models/vae.ts';
import { loadVQModel } from '../models/vq.ts';
import { laytonDir, modelDir, saveLaytonDir } from '../tools/modeldir.ts';
import { paramGrad } from './helpers/grad.ts';

const fixture = (name: string) => modelDir(fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url)));
const note = errorReport();
const tmp = mkdtempSync(join(tmpdir(), 'layton-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function build(): Promise<Layton> {
  const unet = await loadUNet(await fixture('unet_small'));
  // 16x16 tokenizer input -> 8x8 tokens (VQ ch_mult [1, 2]); 32x32 image -> 16x16 latent (VAE of 2 levels)
  const branch = LaddBranch.fromUnet(unet, { codeDim: 8, upsampleFactor: 2, conditioningEmbeddingOutChannels: [8, 16], conditioningEmbeddingStride: 1 });
  const config = parseLaytonConfig({ image_size: 32, tokenizer_size: 16 });
  return new Layton(config, await loadVQModel(await fixture('vq_small_st')), unet, branch.controlnet, await loadVae(await fixture('vae_small')), new DDPMScheduler());
}

/** Makes the zero convs non-zero so the tokens reach the output. */
function wakeBranch(m: Layton): void {
  const g = new Generator(5);
  noGrad(() => {
    for (const [k, p] of m.controlnet.namedParameters())
      if (k.startsWith('controlnet_') || k.startsWith('controlnet_cond_embedding.conv_out')) tidy(() => m.controlnet.loadStateDict({ [k]: mulScalar(randn(p.shape, { generator: g }), 0.3) }, false));
  });
}

describe('Layton', () => {
  it('tokenizes, decodes 1 and 2 steps, and checks its geometry', async () => {
    const m = await build();
    const img = rand([2, 3, 16, 16], { low: -1, high: 1, generator: new Generator(1) });
    const ids = m.tokenize(img);
    expect(ids.shape).toEqual([2, 8, 8]);
    expect(ids.dtype).toBe('i32');
    for (const steps of [1, 2]) {
      const out = noGrad(() => m.decode(ids, { steps, generator: new Generator(3) }));
      expect(out.shape).toEqual([2, 3, 32, 32]);
      const again = noGrad(() => m.decode(ids, { steps, generator: new Generator(3) }));
      expect(await again.toArray()).toEqual(await out.toArray());
      [out, again].forEach((t) => t.dispose());
    }
    expect(() => m.decode(ids, { steps: 3 })).toThrow(/no decode schedule for 3 step/);
    expect(() => tidy(() => m.tokenize(rand([1, 3, 32, 32])))).toThrow(/\[B, 3, 16, 16\] \(tokenizer_size\)/);
    [img, ids].forEach((t) => t.dispose());
    m.dispose();
  });

  it('predicts x0 = (z_t - sqrt(1 - a) eps) / sqrt(a); the zero-initialised branch leaves the LDM alone', async () => {
    const m = await build();
    const c = tidy(() => m.features(m.tokenize(rand([1, 3, 16, 16], { low: -1, high: 1, generator: new Generator(2) }))));
    const zt = randn([1, 4, 16, 16], { generator: new Generator(4) });
    const t = 999;
    const a = m.scheduler.alphasCumprod[t];
    const x0 = noGrad(() => m.predictX0(zt, t, c));
    // the UNet alone (the branch's residuals are zero at init), through the formula on the CPU
    const eps = tidy(() => noGrad(() => {
      const p = m.emptyPrompt(1);
      return m.unet.forward(zt, t, p.states, { added: p.added });
    }));
    const z = await zt.data();
    const e = await eps.data();
    const ref = Float32Array.from(z, (v, i) => (v - Math.sqrt(1 - a) * e[i]) / Math.sqrt(a));
    expect(note('x0 from epsilon (zero branch = UNet alone)', maxRelError(await x0.data(), ref))).toBeLessThan(1e-5);
    // once the branch is awake, the tokens change the prediction
    wakeBranch(m);
    const x0b = noGrad(() => m.predictX0(zt, t, c));
    expect(maxRelError(await x0b.data(), await x0.data())).toBeGreaterThan(1e-3);
    [c, zt, x0, eps, x0b].forEach((x) => x.dispose());
    m.dispose();
  });

  it('2-step decode with stop-gradient: the branch gradient is that of the last step alone', async () => {
    const m = await build();
    wakeBranch(m);
    const ids = tidy(() => m.tokenize(rand([1, 3, 16, 16], { low: -1, high: 1, generator: new Generator(6) })));
    const c = m.features(ids);
    const gradOf = (f: () => Tensor) => paramGrad(m.controlnet, 'controlnet_down_blocks.0.weight', () => mean(square(f())));
    const noise = randn([1, 4, 16, 16], { generator: new Generator(8) });
    // the full 2-step decode with stop-gradient...
    const g2 = gradOf(() => m.denoise(c, { steps: 2, noise, generator: new Generator(9), stopGradientBeforeLast: true }));
    // ...equals the last step taken on the first step's (constant) x0 re-noised with the same draw
    const first = noGrad(() => m.predictX0(noise, 999, c));
    const ab = m.scheduler.alphasCumprod[499];
    const renoise = randn([1, 4, 16, 16], { generator: new Generator(9) });
    const z2 = tidy(() => noGrad(() => add2(mulScalar(first, Math.sqrt(ab)), mulScalar(renoise, Math.sqrt(1 - ab)))));
    const g1 = gradOf(() => m.predictX0(z2, 499, c));
    expect(note('stop-gradient 2-step = last step', maxRelError(await g2.data(), await g1.data()))).toBeLessThan(1e-5);
    // without it the first step contributes too
    const gFull = gradOf(() => m.denoise(c, { steps: 2, noise, generator: new Generator(9) }));
    expect(maxRelError(await gFull.data(), await g1.data())).toBeGreaterThan(1e-4);
    [ids, c, noise, first, renoise, z2, g1, g2, gFull].forEach((x) => x.dispose());
    m.dispose();
  });

  it('saves and loads a Layton folder that decodes the same', async () => {
    const m = await build();
    wakeBranch(m);
    const dir = join(tmp, 'model');
    await saveLaytonDir(dir, m);
    const back = await loadLayton(laytonDir(dir));
    const ids = tidy(() => m.tokenize(rand([1, 3, 16, 16], { low: -1, high: 1, generator: new Generator(7) })));
    const ids2 = tidy(() => back.tokenize(rand([1, 3, 16, 16], { low: -1, high: 1, generator: new Generator(7) })));
    expect(await ids2.toArray()).toEqual(await ids.toArray());
    const a = noGrad(() => m.decode(ids, { steps: 2, generator: new Generator(1) }));
    const b = noGrad(() => back.decode(ids, { steps: 2, generator: new Generator(1) }));
    expect(await b.toArray()).toEqual(await a.toArray());
    [ids, ids2, a, b].forEach((x) => x.dispose());
    m.dispose();
    back.dispose();
    await expect(loadLayton(laytonDir(join(tmp, 'nothing')))).rejects.toThrow(/nothing: no such model folder/);
  });
});
