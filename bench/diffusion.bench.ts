// Latent diffusion at model sizes, random weights, no autograd: one UNet2DConditionModel step
// (models/unet.ts), one AutoencoderKL decode (models/vae.ts), and SDXL's UNet blocks.
// - small: the test fixtures' configs (test/fixtures/unet_small, vae_small) at the size the
//   project's own small models train at: batch 4, latent 4x16x16, image 32x32;
// - SDXL UNet blocks at 512² (latent 64x64, batch 1, 77 text tokens of 2048, f16): a resnet
//   of each width at its resolution and one transformer layer of the 640- and 1280-wide
//   blocks (Transformer2DModel with 1 of its 2 / 10 layers). A whole SDXL-width UNet step at
//   512², even with one transformer layer per block (11 of 70), counts 0.61 TFLOP and took
//   98 s of CPU time here (~50 s wall on an idle 2-core machine): too slow for the suite,
//   so whole steps are bench/sdxl-unet.ts;
// - the SDXL VAE's decode (f32: force_upcast) at an 8x8 latent (64²): at 128² it counts 155
//   GFLOP (33 s CPU here), at 512² 2.5 TFLOP, and 1024² needs tiles, so those are
//   `npx tsx bench/sdxl-unet.ts --model vae --latent 64|128 [--tiled]`.
// GFLOPS count the convolutions, linear layers and attention products a forward launches
// (countFlops below), not norms or elementwise ops.
// Run: npm run bench -- --filter diffusion
import { readFileSync } from 'node:fs';
import { type BenchCase, defineBench } from './harness.ts';
import { Generator, Linear, type Module, type Tensor, device, noGrad, randn, tensor, withBuild } from '../runtime/index.ts';
import { Attention, ResnetBlock2D, Transformer2DModel } from '../models/blocks.ts';
import { Conv2d } from '../models/layers.ts';
import { type UNetConfig, UNet2DConditionModel, parseUNetConfig } from '../models/unet.ts';
import { AutoencoderKL, parseVaeConfig, vaeDType } from '../models/vae.ts';

const fixtureConfig = (name: string): Record<string, unknown> =>
  JSON.parse(readFileSync(new URL(`../test/fixtures/${name}/config.json`, import.meta.url), 'utf8'));

/** The published SDXL base UNet config (stabilityai/stable-diffusion-xl-base-1.0, unet/config.json), as the key-list fixture holds it. */
export const SDXL_UNET_CONFIG: Record<string, unknown> = (
  JSON.parse(readFileSync(new URL('../test/fixtures/sdxl_unet_keys.json', import.meta.url), 'utf8')) as { config: Record<string, unknown> }
).config;

/** The SDXL VAE config (stabilityai/stable-diffusion-xl-base-1.0, vae/config.json). */
export const SDXL_VAE_CONFIG: Record<string, unknown> = {
  _class_name: 'AutoencoderKL', act_fn: 'silu', block_out_channels: [128, 256, 512, 512], down_block_types: Array(4).fill('DownEncoderBlock2D'),
  in_channels: 3, latent_channels: 4, layers_per_block: 2, norm_num_groups: 32, out_channels: 3, sample_size: 1024, scaling_factor: 0.13025,
  up_block_types: Array(4).fill('UpDecoderBlock2D'), force_upcast: true,
};

/**
 * Runs fn and counts the floating-point operations (2 per multiply-add) of the Conv2d, Linear
 * and Attention forwards it calls, from their output shapes: convolutions, projections and the
 * q·kᵀ and p·v products. Norms, elementwise ops and the time embedding's first linear (called
 * as a function, a few MFLOP) are not counted.
 */
export function countFlops<T>(fn: () => T): { result: T; flops: number } {
  let flops = 0;
  type Forward = (...args: never[]) => Tensor;
  const hook = <M>(proto: { forward: Forward }, cost: (m: M, args: Tensor[], y: Tensor) => number): (() => void) => {
    const orig = proto.forward;
    proto.forward = function (this: M, ...args: Tensor[]) {
      const y = (orig as (...a: Tensor[]) => Tensor).apply(this, args);
      flops += cost(this, args, y);
      return y;
    } as Forward;
    return () => void (proto.forward = orig);
  };
  const unhook = [
    hook<Conv2d>(Conv2d.prototype, (m, _, y) => 2 * y.size * m.inChannels * m.kernelSize ** 2),
    hook<Linear>(Linear.prototype, (m, _, y) => 2 * y.size * m.inFeatures),
    hook<Attention>(Attention.prototype, (m, [hidden, context]) => {
      const queries = hidden.rank === 4 ? hidden.shape[2] * hidden.shape[3] : hidden.shape[1];
      const keys = context ? context.shape[1] : queries;
      return 4 * hidden.shape[0] * queries * keys * m.to_q.outFeatures;
    }),
  ];
  try {
    return { result: fn(), flops };
  } finally {
    for (const u of unhook) u();
  }
}

/**
 * A case whose FLOPs are counted on its first run (the harness's warm-up) and read after the
 * timing. The model is built in setup; its parameters go in the context so the harness frees them.
 */
function modelCase<C extends { params: Tensor[] }>(name: string, setup: () => C, forward: (ctx: C) => Tensor, note?: string): void {
  const c: BenchCase<C> = {
    name,
    group: 'diffusion',
    setup,
    run: (ctx) => {
      if (c.flops !== undefined) return noGrad(() => forward(ctx));
      const { result, flops } = countFlops(() => noGrad(() => forward(ctx)));
      c.flops = flops;
      return result;
    },
    note,
  };
  defineBench(c);
}

/** Parameters of a freshly built model (in the harness's context, which disposes them after the case). */
const paramsOf = (m: Module): Tensor[] => m.parameters();

export interface UNetInputs {
  sample: Tensor;
  encoderHiddenStates: Tensor;
  textEmbeds: Tensor;
  timeIds: Tensor;
}

/** Random latents and text features for a UNet config; SDXL's micro-conditioning (original size, crop, target size) of a `pixels`² image. */
export function unetInputs(c: UNetConfig, batch: number, latent: number, textTokens: number, gen: Generator): UNetInputs {
  const pixels = latent * 8;
  const textDim = c.projectionClassEmbeddingsInputDim! - 6 * c.additionTimeEmbedDim!;
  return {
    sample: randn([batch, c.inChannels, latent, latent], { generator: gen }),
    encoderHiddenStates: randn([batch, textTokens, c.crossAttentionDim[0]], { generator: gen }),
    textEmbeds: randn([batch, textDim], { generator: gen }),
    timeIds: tensor(Array.from({ length: batch }, () => [pixels, pixels, 0, 0, pixels, pixels]).flat(), [batch, 6]),
  };
}

export const unetStep = (model: UNet2DConditionModel, x: UNetInputs): Tensor =>
  model.forward(x.sample, 999, x.encoderHiddenStates, { added: { textEmbeds: x.textEmbeds, timeIds: x.timeIds } });

function unetCase(what: string, json: Record<string, unknown>, batch: number, latent: number, textTokens: number): void {
  const dtype = () => (device().hasF16 ? 'f16' : 'f32');
  modelCase(
    `UNet step ${what}, batch ${batch}, latent 4x${latent}x${latent}, ${textTokens} text tokens`,
    () => {
      const gen = new Generator(0);
      const config = parseUNetConfig(json, what);
      const model = withBuild({ generator: gen, dtype: dtype() }, () => new UNet2DConditionModel(config));
      return { model, params: paramsOf(model), x: unetInputs(config, batch, latent, textTokens, gen) };
    },
    ({ model, x }) => unetStep(model, x),
    'f16 weights where the adapter has shader-f16',
  );
}

function vaeCase(what: string, json: Record<string, unknown>, batch: number, latent: number): void {
  const config = parseVaeConfig(json, what);
  const f = 2 ** (config.blockOutChannels.length - 1);
  modelCase(
    `VAE decode ${what}, batch ${batch}, latent 4x${latent}x${latent} -> ${latent * f}x${latent * f}`,
    () => {
      const gen = new Generator(0);
      const model = withBuild({ generator: gen, dtype: vaeDType(config) }, () => new AutoencoderKL(config));
      return { model, params: paramsOf(model), z: randn([batch, config.latentChannels, latent, latent], { generator: gen }) };
    },
    ({ model, z }) => model.decode(z),
    'weights in vaeDType (f32: force_upcast)',
  );
}

unetCase('small (test fixture config)', fixtureConfig('unet_small'), 4, 16, 8);
vaeCase('small (test fixture config)', fixtureConfig('vae_small'), 4, 16);
vaeCase('SDXL config', SDXL_VAE_CONFIG, 1, 8);

/** SDXL's resnet of each width and one layer of each Transformer2DModel, at the resolutions a 512² image (latent 64x64) gives them. */
function sdxlBlockCases(latent: number, textTokens: number): void {
  const c = parseUNetConfig(SDXL_UNET_CONFIG, 'SDXL unet/config.json');
  const at = `(latent ${latent}x${latent}: ${latent * 8}²) f16`;
  const note = 'f32 where the adapter lacks shader-f16';
  const build = <M extends Module>(make: () => M) => withBuild({ generator: new Generator(0), dtype: device().hasF16 ? 'f16' : 'f32' }, make);
  const input = (shape: number[], m: Module) => randn(shape, { generator: new Generator(1), dtype: m.parameters()[0].dtype });
  c.blockOutChannels.forEach((ch, i) => {
    const side = latent >> i;
    modelCase(
      `SDXL UNet ResnetBlock2D ${ch} ch at ${side}x${side} ${at}`,
      () => {
        const model = build(() => new ResnetBlock2D({ inChannels: ch, outChannels: ch, tembChannels: c.timeEmbedDim, groups: c.normNumGroups, eps: c.normEps }));
        return { model, params: paramsOf(model), x: input([1, ch, side, side], model), temb: input([1, c.timeEmbedDim], model) };
      },
      ({ model, x, temb }) => model.forward(x, temb),
      note,
    );
    if (c.downBlockTypes[i] !== 'CrossAttnDownBlock2D') return;
    const heads = c.numAttentionHeads[i];
    modelCase(
      `SDXL UNet Transformer2DModel ${ch} ch at ${side}x${side}, ${heads} heads of ${ch / heads}, 1 of ${c.transformerLayersPerBlock[i]} layers, ${textTokens} text tokens ${at}`,
      () => {
        const model = build(() => new Transformer2DModel({
          numAttentionHeads: heads, attentionHeadDim: ch / heads, inChannels: ch, numLayers: 1, crossAttentionDim: c.crossAttentionDim[i],
          normNumGroups: c.normNumGroups, useLinearProjection: c.useLinearProjection,
        }));
        return { model, params: paramsOf(model), x: input([1, ch, side, side], model), text: input([1, textTokens, c.crossAttentionDim[i]], model) };
      },
      ({ model, x, text }) => model.forward(x, text),
      note,
    );
  });
}

sdxlBlockCases(64, 77);
