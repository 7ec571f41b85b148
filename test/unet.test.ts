// UNet2DConditionModel against diffusers v0.21.4 (test/fixtures/gen_unet.py, float64): the full
// SDXL config's keys, shapes and parameter count in meta mode; a small random text_time UNet
// loaded from a diffusers folder: its output, and its output with ControlNet residuals added.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { maxRelError } from './ref/cpu.ts';
import { type Tensor, buildMeta, getDevice, noGrad, tensor } from '../runtime/index.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { UNet2DConditionModel, loadUNet, parseUNetConfig, unetConfigJson, unetKind } from '../models/unet.ts';
import { modelDir } from '../tools/modeldir.ts';

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
/** stabilityai/stable-diffusion-xl-base-1.0's unet/config.json as published, and diffusers' key lists for it */
const sdxl = JSON.parse(readFileSync(fixture('sdxl_unet_keys.json'), 'utf8')) as { config: Record<string, unknown>; unet: KeyList };
const SDXL_UNET_CONFIG = sdxl.config;

describe('SDXL UNet shapes', () => {
  it("meta build lists diffusers' state dict in order: 2,567,463,684 parameters over 1680 keys", () => {
    const want = sdxl.unet;
    const m = buildMeta(() => unetKind.build(unetKind.parseConfig(SDXL_UNET_CONFIG)));
    expect(Object.entries(m.stateShapes())).toEqual(want.keys);
    expect(m.parameterCount()).toBe(2_567_463_684);
    expect(want.keys.length).toBe(1680);
    expect(want.parameters).toBe(2_567_463_684);
    // the config as written back builds the same model
    const again = buildMeta(() => new UNet2DConditionModel(parseUNetConfig(unetConfigJson(m.config as never))));
    expect(again.stateShapes()).toEqual(m.stateShapes());
    m.dispose();
    again.dispose();
  });

  it('config defaults, per-block lists and errors naming the field', () => {
    const c = parseUNetConfig(SDXL_UNET_CONFIG);
    // v0.21's quirk: attention_head_dim holds the number of heads (so SDXL's heads are 64 wide)
    expect(c.numAttentionHeads).toEqual([5, 10, 20]);
    expect(c.crossAttentionDim).toEqual([2048, 2048, 2048]);
    expect(c.layersPerBlock).toEqual([2, 2, 2]);
    expect(c.upcastAttention).toBe(false);
    expect(c.timeEmbedDim).toBe(1280);
    const sd = parseUNetConfig({});
    expect(sd.downBlockTypes).toEqual(['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D']);
    expect(sd.blockOutChannels).toEqual([320, 640, 1280, 1280]);
    expect(sd.additionEmbedType).toBeNull();
    expect(parseUNetConfig(unetConfigJson(c))).toEqual(c);
    const bad = (patch: Record<string, unknown>) => () => parseUNetConfig({ ...SDXL_UNET_CONFIG, ...patch }, 'unet/config.json');
    expect(bad({ transformer_layers_per_block: [1, 2] })).toThrow(/unet\/config.json: "transformer_layers_per_block" must be a list of 3 integers/);
    expect(bad({ down_block_types: ['DownBlock2D', 'AttnDownBlock2D', 'CrossAttnDownBlock2D'] })).toThrow(/down block type "AttnDownBlock2D" is not supported/);
    expect(bad({ up_block_types: ['UpBlock2D'] })).toThrow(/"up_block_types" has 1 entries but "down_block_types" has 3/);
    expect(bad({ num_attention_heads: [5, 10, 20] })).toThrow(/"num_attention_heads" must be null/);
    expect(bad({ time_cond_proj_dim: 256 })).toThrow(/"time_cond_proj_dim" 256 is not supported/);
    expect(bad({ attention_head_dim: [5, 7, 20] })).toThrow(/block 1's 640 channels do not split into 7 attention heads/);
    expect(bad({ projection_class_embeddings_input_dim: null })).toThrow(/"text_time" needs "addition_time_embed_dim" and "projection_class_embeddings_input_dim"/);
    expect(bad({ norm_num_groups: 48 })).toThrow(/block_out_channels 320 does not split into norm_num_groups 48/);
    expect(bad({ class_embed_type: 'projection' })).toThrow(/"class_embed_type" "projection" is not supported/);
  });
});

describe('small UNet vs diffusers', () => {
  const added = async () => ({ textEmbeds: await input('text_embeds'), timeIds: await input('time_ids') });

  it('output, and output with ControlNet residuals (f32)', async () => {
    const m = (await loadUNet(await modelDir(fixture('unet_small')))).setTrainable(false);
    expect(m.parameterCount()).toBe(346_236);
    const [x, t, ehs, a] = [await input('sample'), await input('timestep'), await input('encoder_hidden_states'), await added()];
    const y = noGrad(() => m.forward(x, t, ehs, { added: a }));
    await expectClose('UNet output', y, await f32('unet_out'));
    const down = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => input(`down_res.${i}`)));
    const mid = await input('mid_res');
    const yr = noGrad(() => m.forward(x, t, ehs, { added: a, residuals: { down, mid } }));
    await expectClose('UNet output with residuals', yr, await f32('unet_out_res'));
    // the kind's forward takes the reference's argument names
    const inputs = {
      sample: x, timestep: t, encoder_hidden_states: ehs, text_embeds: a.textEmbeds, time_ids: a.timeIds, mid_block_additional_residual: mid,
      ...Object.fromEntries(down.map((d, i) => [`down_block_additional_residuals.${i}`, d])),
    };
    const out = await noGrad(() => unetKind.forward(m, inputs, m.config));
    expect(Object.keys(out)).toEqual(['sample']);
    await expectClose('UNet output with residuals', out.sample, await f32('unet_out_res'));
    // errors name the argument at fault
    expect(() => m.forward(x, t, ehs)).toThrow(/"text_time" needs text_embeds and time_ids/);
    expect(() => m.forward(x, t, ehs, { added: a, residuals: { down: down.slice(1), mid } })).toThrow(/5 down_block_additional_residuals for 6 down-path states/);
    const swapped = [down[0], down[1], down[3], down[3], down[4], down[5]];
    expect(() => m.forward(x, t, ehs, { added: a, residuals: { down: swapped, mid } })).toThrow(
      /down_block_additional_residuals.2 is \[2,16,8,8\] but that state is \[2,8,8,8\]/,
    );
    expect(() => m.forward(x, t, ehs, { added: { ...a, textEmbeds: ehs } })).toThrow(/text_embeds must be \[2, 16\]/);
    const odd = tensor(new Float32Array(2 * 4 * 6 * 6), [2, 4, 6, 6]);
    expect(() => m.forward(odd, t, ehs, { added: a })).toThrow(/multiples of 4/);
    await expect(async () => unetKind.forward(m, { sample: x, timestep: t }, m.config)).rejects.toThrow(/missing encoder_hidden_states/);
    for (const v of [x, t, ehs, a.textEmbeds, a.timeIds, y, yr, mid, odd, out.sample, ...down]) v.dispose();
    m.dispose();
  });

  it('one timestep broadcast over the batch equals the same value per sample', async () => {
    const m = (await loadUNet(await modelDir(fixture('unet_small')))).setTrainable(false);
    const [x, ehs, a] = [await input('sample'), await input('encoder_hidden_states'), await added()];
    const t2 = tensor([37.5, 37.5], [2]);
    const y1 = noGrad(() => m.forward(x, 37.5, ehs, { added: a }));
    const y2 = noGrad(() => m.forward(x, t2, ehs, { added: a }));
    expect(Array.from(await y1.data())).toEqual(Array.from(await y2.data()));
    // and it is the fixture's second sample, whose timestep was 37.5
    const half = 4 * 16 * 16;
    expect(maxRelError((await y1.data()).subarray(half), (await f32('unet_out')).subarray(half))).toBeLessThan(1e-4);
    for (const v of [x, ehs, a.textEmbeds, a.timeIds, t2, y1, y2]) v.dispose();
    m.dispose();
  });

  it.skipIf(!hasF16)('f16 weights (shader-f16): f32 inputs in, the same output within f16 rounding', async () => {
    const m = (await loadUNet(await modelDir(fixture('unet_small')), { dtype: 'f16' })).setTrainable(false);
    expect(m.dtype).toBe('f16');
    const [x, t, ehs, a] = [await input('sample'), await input('timestep'), await input('encoder_hidden_states'), await added()];
    const y = noGrad(() => m.forward(x, t, ehs, { added: a }));
    expect(y.dtype).toBe('f16');
    await expectClose('UNet output, f16', y, await f32('unet_out'), 5e-3);
    for (const v of [x, t, ehs, a.textEmbeds, a.timeIds, y]) v.dispose();
    m.dispose();
  });
});
