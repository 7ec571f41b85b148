// ControlNetModel and the LADD branch against diffusers v0.21.4 (test/fixtures/gen_unet.py,
// float64): from_unet on the full SDXL config in meta mode (keys, shapes, parameter count); a
// small branch taking 4x4 token features (code dim 8, upsampled 8x): its residuals, the frozen
// UNet's output with them, and the gradients reaching the branch's weights and the inputs
// through the frozen UNet; from_unet copying the encoder half, zero convs making O = UNet(z_t).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { maxRelError } from './ref/cpu.ts';
import { type Tensor, buildMeta, getDevice, mul, noGrad, renameWeights, safetensorsWeights, sum, tensor, tidy } from '../runtime/index.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import {
  ControlNetConditioningEmbedding, ControlNetModel, LaddBranch, controlNetConfigJson, controlNetFromUnet, controlnetKind, isZeroConvParameter, loadControlNet, parseControlNetConfig, upsampleNearest,
} from '../models/controlnet.ts';
import { type UNet2DConditionModel, loadUNet, unetKind } from '../models/unet.ts';
import { modelDir, saveModelDir } from '../tools/modeldir.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const file = await openSafetensors(fixture('unet_small.safetensors'));
const f32 = (k: string) => file.readF32(k);
const input = async (k: string) => tensor(await f32(k), file.info(k).shape);

const hasF16 = (await getDevice()).hasF16;
const noteWorst = errorReport();
async function expectClose(group: string, got: Tensor, want: ArrayLike<number>, rtol = 1e-4): Promise<void> {
  expect(got.size, group).toBe(want.length);
  const err = noteWorst(group, maxRelError(await got.data(), want));
  expect(err, group).toBeLessThanOrEqual(rtol);
}

type KeyList = { parameters: number; keys: [string, number[]][] };
/** stabilityai/stable-diffusion-xl-base-1.0's unet/config.json as published, and diffusers' key lists */
const sdxl = JSON.parse(readFileSync(fixture('sdxl_unet_keys.json'), 'utf8')) as { config: Record<string, unknown>; controlnet: KeyList };
const SDXL_UNET_CONFIG = sdxl.config;

const loadSmallUNet = async (): Promise<UNet2DConditionModel> => loadUNet(await modelDir(fixture('unet_small')));
const inputs = async () => ({
  sample: await input('sample'), timestep: await input('timestep'), ehs: await input('encoder_hidden_states'),
  added: { textEmbeds: await input('text_embeds'), timeIds: await input('time_ids') }, cond: await input('controlnet_cond'),
});
const disposeInputs = (x: Awaited<ReturnType<typeof inputs>>) => {
  for (const t of [x.sample, x.timestep, x.ehs, x.added.textEmbeds, x.added.timeIds, x.cond]) t.dispose();
};
const ENCODER_HALF = ['conv_in.', 'time_embedding.', 'add_embedding.', 'down_blocks.', 'mid_block.'];
const ZERO_CONVS = ['controlnet_down_blocks.', 'controlnet_mid_block.', 'controlnet_cond_embedding.conv_out.'];

describe('SDXL ControlNet shapes', () => {
  it("from_unet on the meta SDXL UNet lists diffusers' state dict in order: 1,251,014,160 parameters over 844 keys", () => {
    const want = sdxl.controlnet;
    const unet = buildMeta(() => unetKind.build(unetKind.parseConfig(SDXL_UNET_CONFIG)));
    const cn = ControlNetModel.fromUnet(unet);
    expect(cn.conv_in.weight.isMeta).toBe(true);
    expect(Object.entries(cn.stateShapes())).toEqual(want.keys);
    expect(cn.parameterCount()).toBe(1_251_014_160);
    expect(want.keys.length).toBe(844);
    // its config.json builds the same model through the kind
    const json = controlNetConfigJson(cn.config);
    expect(json).toMatchObject({ _class_name: 'ControlNetModel', layers_per_block: 2, cross_attention_dim: 2048, conditioning_channels: 3 });
    const again = buildMeta(() => controlnetKind.build(controlnetKind.parseConfig(json)));
    expect(Object.entries(again.stateShapes())).toEqual(want.keys);
    for (const m of [unet, cn, again]) m.dispose();
  });

  it('config defaults and errors naming the field', () => {
    const c = parseControlNetConfig({});
    expect(c).toMatchObject({ conditioningChannels: 3, conditioningEmbeddingOutChannels: [16, 32, 96, 256], conditioningUpsampleFactor: 1, channelOrder: 'rgb' });
    expect(parseControlNetConfig(controlNetConfigJson(c))).toEqual(c);
    // ControlNetModel (unlike the v0.21 UNet) takes num_attention_heads
    expect(parseControlNetConfig({ attention_head_dim: 8, num_attention_heads: [5, 10, 20, 20] }).numAttentionHeads).toEqual([5, 10, 20, 20]);
    expect(() => parseControlNetConfig({ layers_per_block: [1, 2, 2, 2] }, 'cn/config.json')).toThrow(/cn\/config.json: "layers_per_block" must be an integer >= 1/);
    expect(() => parseControlNetConfig({ conditioning_upsample_factor: 0 })).toThrow(/"conditioning_upsample_factor" must be an integer >= 1/);
    expect(() => parseControlNetConfig({ controlnet_conditioning_channel_order: 'rbg' })).toThrow(/must be one of "rgb", "bgr"/);
    expect(() => parseControlNetConfig({ conditioning_embedding_out_channels: [] })).toThrow(/must list at least one width/);
    const unet = buildMeta(() => unetKind.build(unetKind.parseConfig({ ...SDXL_UNET_CONFIG, layers_per_block: [2, 2, 1] })));
    expect(() => controlNetFromUnet(unet)).toThrow(/per-block layers_per_block \[2,2,1\] cannot be copied/);
    unet.dispose();
  });
});

describe('LADD branch vs diffusers', () => {
  it('nearest upsampling by 8 repeats each token over an 8x8 patch, and sums gradients back', async () => {
    const x = tensor([1, 2, 3, 4], [1, 1, 2, 2]).requireGrad();
    const y = upsampleNearest(x, 8);
    expect(y.shape).toEqual([1, 1, 16, 16]);
    const v = await y.data();
    expect([v[0], v[7], v[8], v[7 * 16 + 7], v[8 * 16], v[15 * 16 + 15]]).toEqual([1, 1, 2, 1, 3, 4]);
    const gy = tensor(new Float32Array(256).fill(0.5), [1, 1, 16, 16]);
    y.backward(gy);
    expect(Array.from(await x.grad!.data())).toEqual([32, 32, 32, 32]);
    for (const t of [x, y, gy]) t.dispose();
  });

  it("residuals, the frozen UNet's output with them, and gradients through the frozen UNet (f32)", async () => {
    const unet = await loadSmallUNet();
    const cn = await loadControlNet(await modelDir(fixture('controlnet_small')));
    expect(cn.config).toMatchObject({ conditioningChannels: 8, conditioningUpsampleFactor: 8, conditioningEmbeddingOutChannels: [8, 16] });
    expect(cn.parameterCount()).toBe(164_984);
    const branch = new LaddBranch(unet, cn);
    expect(unet.trainableParameters()).toEqual([]);
    expect(branch.trainableParameters().length).toBe(Object.keys(cn.stateDict()).length);
    const x = await inputs();
    const scale = (await f32('conditioning_scale'))[0];
    const r = noGrad(() => cn.forward(x.sample, x.timestep, x.ehs, x.cond, { added: x.added, conditioningScale: scale }));
    expect(r.down.length).toBe(6);
    for (const [i, d] of r.down.entries()) await expectClose('ControlNet down residuals', d, await f32(`down_block_res_samples.${i}`));
    await expectClose('ControlNet mid residual', r.mid, await f32('mid_block_res_sample'));

    // controlnet_conditioning_channel_order "bgr" flips the conditioning's channels; global_pool_conditions averages over H, W
    const variant = new ControlNetModel({ ...cn.config, channelOrder: 'bgr', globalPoolConditions: true });
    variant.loadStateDict(cn.stateDict());
    const c = await x.cond.data();
    const plane = 4 * 4;
    const flipped = tensor(Float32Array.from(c, (_, i) => {
      const [b, ch, p] = [Math.floor(i / (8 * plane)), Math.floor(i / plane) % 8, i % plane];
      return c[(b * 8 + 7 - ch) * plane + p];
    }), x.cond.shape);
    const rv = noGrad(() => variant.forward(x.sample, x.timestep, x.ehs, flipped, { added: x.added, conditioningScale: scale }));
    for (const [i, d] of [...rv.down, rv.mid].entries()) {
      const ref = await f32(i < rv.down.length ? `down_block_res_samples.${i}` : 'mid_block_res_sample');
      const [b, ch, h, w] = file.info(i < rv.down.length ? `down_block_res_samples.${i}` : 'mid_block_res_sample').shape;
      expect(d.shape).toEqual([b, ch, 1, 1]);
      const pooled = Array.from({ length: b * ch }, (_, j) => ref.subarray(j * h * w, (j + 1) * h * w).reduce((s, v) => s + v, 0) / (h * w));
      await expectClose('bgr + global pooling', d, pooled);
    }
    for (const t of [...rv.down, rv.mid, flipped]) t.dispose();
    variant.dispose();

    for (const t of [x.sample, x.ehs, x.cond]) t.requireGrad();
    const gy = await input('gy');
    const o = branch.forward(x.sample, x.timestep, x.ehs, x.cond, { added: x.added, conditioningScale: scale });
    await expectClose('LADD output O', o, await f32('ladd_out'));
    const loss = tidy(() => sum(mul(o, gy)));
    loss.backward();
    for (const [k, t] of [['controlnet_cond', x.cond], ['sample', x.sample], ['encoder_hidden_states', x.ehs]] as const)
      await expectClose(`grad ${k}`, t.grad!, await f32(`grad.${k}`));
    const sd = cn.stateDict();
    const keys = file.keys().filter((k) => k.startsWith('grad.') && !/^grad\.(controlnet_cond|sample|encoder_hidden_states)$/.test(k)).map((k) => k.slice(5));
    expect(keys.length).toBe(16);
    for (const k of keys) await expectClose('grad ControlNet weights', sd[k].grad!, await f32(`grad.${k}`));
    // the frozen UNet got no gradients
    expect(unet.parameters().every((p) => p.grad === null)).toBe(true);

    // the kind's forward, with the reference's argument names
    const scaleInput = tensor([scale], []);
    const out = await noGrad(() => controlnetKind.forward(cn, {
      sample: x.sample, timestep: x.timestep, encoder_hidden_states: x.ehs, text_embeds: x.added.textEmbeds, time_ids: x.added.timeIds,
      controlnet_cond: x.cond, conditioning_scale: scaleInput,
    }, cn.config));
    expect(Object.keys(out)).toEqual([...r.down.map((_, i) => `down_block_res_samples.${i}`), 'mid_block_res_sample']);
    await expectClose('ControlNet mid residual', out.mid_block_res_sample, await f32('mid_block_res_sample'));
    const wrong = tensor(new Float32Array(2 * 8 * 16 * 16), [2, 8, 16, 16]);
    expect(() => cn.forward(x.sample, x.timestep, x.ehs, wrong, { added: x.added })).toThrow(
      /controlnet_cond must be \[2,8,4,4\] \(a 16x16 sample, conditioning_upsample_factor 8, a conditioning embedding that downscales 2x\), got \[2,8,16,16\]/,
    );
    for (const t of [...r.down, r.mid, gy, o, loss, wrong, scaleInput, ...Object.values(out)]) t.dispose();
    disposeInputs(x);
    branch.dispose();
  });

  it('from_unet copies the encoder half (independent tensors), zero convs make O equal the UNet output', async () => {
    const unet = await loadSmallUNet();
    const branch = LaddBranch.fromUnet(unet, { codeDim: 8, upsampleFactor: 8, conditioningEmbeddingOutChannels: [8, 16] });
    const cn = branch.controlnet;
    expect(cn).toBeInstanceOf(ControlNetModel);
    // the same structure as the fixture's branch (made by diffusers' from_unet with conditioning_channels 8)
    const ref = await loadControlNet(await modelDir(fixture('controlnet_small')));
    expect(cn.stateShapes()).toEqual(ref.stateShapes());
    ref.dispose();
    const u = unet.stateDict();
    let copied = 0;
    for (const [k, t] of Object.entries(cn.stateDict())) {
      const v = Array.from(await t.data());
      expect(isZeroConvParameter(k), k).toBe(ZERO_CONVS.some((p) => k.startsWith(p)));
      if (ENCODER_HALF.some((p) => k.startsWith(p))) {
        expect(t, k).not.toBe(u[k]);
        expect(v, k).toEqual(Array.from(await u[k].data()));
        copied++;
      } else if (ZERO_CONVS.some((p) => k.startsWith(p))) expect(v.every((e) => e === 0), k).toBe(true);
      else expect(v.some((e) => e !== 0), k).toBe(true); // the conditioning embedding's fresh init
    }
    expect(copied).toBe(Object.keys(u).filter((k) => ENCODER_HALF.some((p) => k.startsWith(p))).length);
    const x = await inputs();
    const o = noGrad(() => branch.forward(x.sample, x.timestep, x.ehs, x.cond, { added: x.added }));
    const plain = noGrad(() => unet.forward(x.sample, x.timestep, x.ehs, { added: x.added }));
    expect(Array.from(await o.data())).toEqual(Array.from(await plain.data()));
    await expectClose('O at init = UNet output', o, await f32('unet_out'));
    // training the branch leaves the UNet's weights alone
    expect(branch.unet.trainableParameters()).toEqual([]);
    expect(branch.trainableParameters().map(([k]) => k)).toEqual(Object.keys(cn.stateDict()));
    // saved as a diffusers folder (config.json with conditioning_upsample_factor), it loads back the same
    const dir = mkdtempSync(join(tmpdir(), 'ladd-'));
    try {
      await saveModelDir(dir, controlnetKind.toJson(cn.config), cn);
      const back = await loadControlNet(await modelDir(dir));
      expect(back.config).toEqual(cn.config);
      const sb = back.stateDict();
      for (const [k, t] of Object.entries(cn.stateDict())) expect(Array.from(await sb[k].data()), k).toEqual(Array.from(await t.data()));
      back.dispose();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    for (const t of [o, plain]) t.dispose();
    disposeInputs(x);
    branch.dispose();
  });

  it.skipIf(!hasF16)('f16 weights (shader-f16): the branch output within f16 rounding; from_unet keeps the dtype', async () => {
    const dir = async (n: string) => modelDir(fixture(n));
    const branch = new LaddBranch(await loadUNet(await dir('unet_small'), { dtype: 'f16' }), await loadControlNet(await dir('controlnet_small'), { dtype: 'f16' }));
    const x = await inputs();
    const scale = (await f32('conditioning_scale'))[0];
    const o = noGrad(() => branch.forward(x.sample, x.timestep, x.ehs, x.cond, { added: x.added, conditioningScale: scale }));
    await expectClose('LADD output O, f16', o, await f32('ladd_out'), 5e-3);
    const fresh = controlNetFromUnet(branch.unet, { conditioningChannels: 8 });
    expect(new Set(fresh.parameters().map((p) => p.dtype))).toEqual(new Set(['f16']));
    o.dispose();
    disposeInputs(x);
    fresh.dispose();
    branch.dispose();
  });
});

describe("Layton's released conditioning embedding (conditioning_embedding_stride 1)", () => {
  it('embeds token features upsampled to the latent grid at that grid (vs a plain-torch reference)', async () => {
    const f = await openSafetensors(fixture('ladd_cond_embedding.safetensors'));
    try {
      const emb = new ControlNetConditioningEmbedding(32, 8, [8, 12, 16], 1);
      await emb.loadWeights(renameWeights(safetensorsWeights([f]), (k) => (k === 'tokens' || k === 'out' ? null : k)));
      expect(emb.downscale).toBe(1);
      const tokens = tensor(await f.readF32('tokens'), f.info('tokens').shape);
      const out = tidy(() => noGrad(() => emb.forward(upsampleNearest(tokens, 4))));
      expect(out.shape).toEqual([2, 32, 16, 16]);
      expect(noteWorst('stride-1 conditioning embedding', maxRelError(await out.data(), await f.readF32('out')))).toBeLessThan(1e-5);
      [tokens, out].forEach((t) => t.dispose());
      emb.dispose();
    } finally {
      await f.source.close?.();
    }
  });

  it('reads and writes the field, and refuses other strides', () => {
    expect(parseControlNetConfig({}).conditioningEmbeddingStride).toBe(2);
    const c = parseControlNetConfig({ conditioning_embedding_stride: 1, conditioning_upsample_factor: 8 });
    expect(c.conditioningEmbeddingStride).toBe(1);
    expect(controlNetConfigJson(c).conditioning_embedding_stride).toBe(1);
    expect(() => parseControlNetConfig({ conditioning_embedding_stride: 3 }, 'cn/config.json')).toThrow(/cn\/config.json: "conditioning_embedding_stride" must be 1 or 2/);
  });
});
