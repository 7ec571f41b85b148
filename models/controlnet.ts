// diffusers' ControlNetModel (v0.21 semantics, models/controlnet.py) with its state-dict names,
// `from_unet` (a trainable copy of a UNet's encoder half), and Layton's LADD control branch built
// on it: the quantized token features C [B, code_dim, h, w] are upsampled (nearest, by
// `conditioning_upsample_factor`) to the resolution the conditioning embedding expects, embedded
// to the first block's width (zero-initialised conv_out), added to conv_in's output, run through
// the copied down and mid blocks, and each state leaves through a zero-initialised 1x1 conv as a
// residual for the frozen UNet.
import {
  Module, ModuleList, type Tensor, buildOptions, concat, expand, mean, mulScalar, reshape, slice, tidy, withBuild, zeros,
} from '../runtime/index.ts';
import { TimestepEmbedding, step } from './blocks.ts';
import { type ModelFiles } from './checkpoint.ts';
import { ConfigReader } from './config.ts';
import { Conv2d } from './layers.ts';
import { type LoadOptions, type ModelKind, loadModel } from './registry.ts';
import {
  type AddedCond, type ControlResiduals, type DownBlock, type EncoderConfig, type EncoderParts, MidBlock, UNET_INPUTS, type UNet2DConditionModel,
  addedCondInputs, asDType, buildDownBlocks, checkInputs, embedTime, encoderFieldsJson, readEncoderFields, requireInputs, runEncoder,
  timeEmbeddingModules,
} from './unet.ts';

export interface ControlNetConfig extends EncoderConfig {
  conditioningChannels: number;
  conditioningEmbeddingOutChannels: number[];
  /** 'bgr' flips the conditioning's channels first */
  channelOrder: 'rgb' | 'bgr';
  /** residuals averaged over H, W (diffusers' global_pool_conditions) */
  globalPoolConditions: boolean;
  /**
   * Layton: nearest upsampling of controlnet_cond before the conditioning embedding (1: the
   * conditioning already comes at the embedding's input resolution, as in diffusers)
   */
  conditioningUpsampleFactor: number;
  /** Layton: 1 keeps the conditioning embedding at its input resolution (its release's variant); diffusers: 2 */
  conditioningEmbeddingStride: 1 | 2;
}

const checkStride = (r: ConfigReader): 2 => {
  if (r.json.conditioning_embedding_stride != null && r.json.conditioning_embedding_stride !== 2) throw new Error(`${r.where}: "conditioning_embedding_stride" must be 1 or 2, got ${JSON.stringify(r.json.conditioning_embedding_stride)}`);
  return 2;
};

/** diffusers ControlNetModel's config.json fields with its defaults, plus Layton's conditioning_upsample_factor and conditioning_embedding_stride. */
export function parseControlNetConfig(json: Record<string, unknown>, where = 'config.json'): ControlNetConfig {
  const r = new ConfigReader(json, where);
  const enc = readEncoderFields(r, ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'], { perBlockLists: false });
  const emb = r.ints('conditioning_embedding_out_channels', [16, 32, 96, 256]);
  if (emb.length === 0 || emb.includes(0)) throw new Error(`${where}: "conditioning_embedding_out_channels" must list at least one width >= 1, got [${emb}]`);
  return {
    ...enc,
    conditioningChannels: r.int('conditioning_channels', 3, 1),
    conditioningEmbeddingOutChannels: emb,
    channelOrder: r.str('controlnet_conditioning_channel_order', 'rgb', ['rgb', 'bgr'] as const),
    globalPoolConditions: r.bool('global_pool_conditions', false),
    conditioningUpsampleFactor: r.int('conditioning_upsample_factor', 1, 1),
    conditioningEmbeddingStride: r.int('conditioning_embedding_stride', 2, 1) === 1 ? 1 : checkStride(r),
  };
}

export function controlNetConfigJson(c: ControlNetConfig): Record<string, unknown> {
  return {
    _class_name: 'ControlNetModel',
    ...encoderFieldsJson(c),
    layers_per_block: c.layersPerBlock[0],
    cross_attention_dim: c.crossAttentionDim[0],
    conditioning_channels: c.conditioningChannels,
    conditioning_embedding_out_channels: c.conditioningEmbeddingOutChannels,
    controlnet_conditioning_channel_order: c.channelOrder,
    global_pool_conditions: c.globalPoolConditions,
    conditioning_upsample_factor: c.conditioningUpsampleFactor,
    conditioning_embedding_stride: c.conditioningEmbeddingStride,
  };
}

/** diffusers' zero_module: every parameter set to 0 (the first training step starts from the frozen model's output). */
function zeroModule<M extends Module>(m: M): M {
  if (buildOptions().meta) return m;
  const z = Object.fromEntries(Object.entries(m.stateShapes()).map(([k, s]) => [k, zeros(s, buildOptions().dtype ?? 'f32')]));
  m.loadStateDict(z);
  for (const t of Object.values(z)) t.dispose();
  return m;
}

const zeroConv = (ch: number) => zeroModule(new Conv2d(ch, ch, 1));

/** Whether a ControlNetModel parameter is one of its zero-initialised convs (the branch's way in and its ways out). */
export const isZeroConvParameter = (name: string): boolean =>
  /^(controlnet_down_blocks\.|controlnet_mid_block\.|controlnet_cond_embedding\.conv_out\.)/.test(name);

/** Nearest-neighbour upsampling by an integer factor (F.interpolate(scale_factor=f, mode="nearest")). */
export function upsampleNearest(x: Tensor, factor: number): Tensor {
  if (factor === 1) return x;
  const [b, c, h, w] = x.shape;
  return tidy(() => reshape(expand(reshape(x, [b, c, h, 1, w, 1]), [b, c, h, factor, w, factor]), [b, c, h * factor, w * factor]));
}

/** ControlNetConditioningEmbedding: conv_in, (3x3 conv, stride-2 3x3 conv) per further width, each + SiLU, then a zero conv_out. */
export class ControlNetConditioningEmbedding extends Module {
  readonly conv_in: Conv2d;
  readonly blocks: ModuleList<Conv2d>;
  readonly conv_out: Conv2d;

  /** stride 2: diffusers (an image-sized hint down to the latent grid); 1: Layton's release, whose token features arrive upsampled to the latent grid */
  constructor(embeddingChannels: number, conditioningChannels: number, widths: number[], readonly stride: 1 | 2 = 2) {
    super();
    this.conv_in = this.module('conv_in', new Conv2d(conditioningChannels, widths[0], 3, { padding: 1 }));
    this.blocks = this.module('blocks', new ModuleList(widths.slice(1).flatMap((out, i) => [
      new Conv2d(widths[i], widths[i], 3, { padding: 1 }),
      new Conv2d(widths[i], out, 3, { padding: 1, stride }),
    ])));
    this.conv_out = this.module('conv_out', zeroModule(new Conv2d(widths.at(-1)!, embeddingChannels, 3, { padding: 1 })));
  }

  /** How much smaller the output is than the input. */
  get downscale(): number {
    return this.stride ** (this.blocks.items.length / 2);
  }

  forward(cond: Tensor): Tensor {
    return tidy(() => {
      let h = this.conv_in.forward(cond, { act: 'silu' });
      for (const b of this.blocks.items) h = step(h, (v) => b.forward(v, { act: 'silu' }));
      return step(h, (v) => this.conv_out.forward(v));
    });
  }
}

export interface ControlNetForwardOptions {
  added?: AddedCond | null;
  /** multiplies every residual (diffusers' conditioning_scale, default 1) */
  conditioningScale?: number;
}

/** diffusers ControlNetModel: the UNet's encoder half plus the conditioning embedding and the zero convs. */
export class ControlNetModel extends Module implements EncoderParts {
  readonly conv_in: Conv2d;
  readonly time_embedding: TimestepEmbedding;
  readonly add_embedding: TimestepEmbedding | null;
  readonly controlnet_cond_embedding: ControlNetConditioningEmbedding;
  readonly down_blocks: ModuleList<DownBlock>;
  readonly controlnet_down_blocks: ModuleList<Conv2d>;
  readonly controlnet_mid_block: Conv2d;
  readonly mid_block: MidBlock;

  constructor(readonly config: ControlNetConfig) {
    super();
    const c = config;
    const n = c.blockOutChannels.length;
    this.conv_in = this.module('conv_in', new Conv2d(c.inChannels, c.blockOutChannels[0], 3, { padding: 1 }));
    const { timeEmbedding, addEmbedding } = timeEmbeddingModules(c);
    this.time_embedding = this.module('time_embedding', timeEmbedding);
    this.add_embedding = addEmbedding && this.module('add_embedding', addEmbedding);
    this.controlnet_cond_embedding = this.module('controlnet_cond_embedding',
      new ControlNetConditioningEmbedding(c.blockOutChannels[0], c.conditioningChannels, c.conditioningEmbeddingOutChannels, c.conditioningEmbeddingStride));
    this.down_blocks = this.module('down_blocks', buildDownBlocks(c));
    // one zero conv per down-path state: conv_in's output, each layer's, each downsampler's
    const stateChannels = [c.blockOutChannels[0], ...c.blockOutChannels.flatMap((ch, i) => new Array(c.layersPerBlock[i] + (i < n - 1 ? 1 : 0)).fill(ch))];
    this.controlnet_down_blocks = this.module('controlnet_down_blocks', new ModuleList(stateChannels.map(zeroConv)));
    this.controlnet_mid_block = this.module('controlnet_mid_block', zeroConv(c.blockOutChannels.at(-1)!));
    this.mid_block = this.module('mid_block', new MidBlock(c));
  }

  /** diffusers' ControlNetModel.from_unet (see controlNetFromUnet). */
  static fromUnet(unet: UNet2DConditionModel, o: FromUnetOptions = {}): ControlNetModel {
    return controlNetFromUnet(unet, o);
  }

  /**
   * The residuals for the UNet: sample, timestep, encoder_hidden_states and `added` as the UNet
   * takes them; controlnet_cond [B, conditioning_channels, H', W'] with H'·upsample = H·2^(k-1)
   * for k conditioning-embedding widths (Layton: the token features C).
   */
  forward(sample: Tensor, timestep: Tensor | number, encoderHiddenStates: Tensor, controlnetCond: Tensor, o: ControlNetForwardOptions = {}): ControlResiduals {
    const c = this.config;
    checkInputs('ControlNetModel', c, sample, encoderHiddenStates);
    const [batch, , hh, ww] = sample.shape;
    const f = c.conditioningUpsampleFactor;
    const down = this.controlnet_cond_embedding.downscale;
    if ((hh * down) % f || (ww * down) % f)
      throw new Error(`ControlNetModel: a ${hh}x${ww} sample needs ${hh * down}x${ww * down} conditioning, which conditioning_upsample_factor ${f} does not divide`);
    const want = [batch, c.conditioningChannels, (hh * down) / f, (ww * down) / f];
    if (controlnetCond.shape.join() !== want.join())
      throw new Error(`ControlNetModel: controlnet_cond must be [${want}] (a ${hh}x${ww} sample, conditioning_upsample_factor ${f}, ` +
        `a conditioning embedding that downscales ${down}x), got [${controlnetCond.shape}]`);
    return tidy(() => {
      const dt = this.conv_in.weight.dtype;
      let cond = upsampleNearest(asDType(controlnetCond, dt), f);
      if (c.channelOrder === 'bgr') cond = concat(Array.from({ length: c.conditioningChannels }, (_, i) => slice(cond, 1, c.conditioningChannels - 1 - i, c.conditioningChannels - i)), 1);
      const ehs = asDType(encoderHiddenStates, dt);
      const emb = embedTime(this, timestep, batch, o.added);
      const enc = runEncoder(this, asDType(sample, dt), emb, ehs, this.controlnet_cond_embedding.forward(cond));
      const mid = this.mid_block.forward(enc.hidden, emb, ehs);
      const scale = o.conditioningScale ?? 1;
      const out = (x: Tensor, conv: Conv2d) => {
        let y = conv.forward(x);
        if (scale !== 1) y = step(y, (v) => mulScalar(v, scale));
        return c.globalPoolConditions ? step(y, (v) => mean(v, [2, 3], true)) : y;
      };
      return { down: enc.states.map((s, i) => out(s, this.controlnet_down_blocks.items[i])), mid: out(mid, this.controlnet_mid_block) };
    });
  }
}

export interface FromUnetOptions {
  /** conditioning input channels (diffusers' default 3; Layton: the codebook's code dim, 8 for LlamaGen) */
  conditioningChannels?: number;
  conditioningEmbeddingOutChannels?: number[];
  conditioningUpsampleFactor?: number;
  conditioningEmbeddingStride?: 1 | 2;
  channelOrder?: 'rgb' | 'bgr';
  /** copy the UNet's weights (default true) */
  loadWeightsFromUnet?: boolean;
}

/** The parts from_unet copies: conv_in, time_embedding, add_embedding, down_blocks, mid_block. */
const COPIED_FROM_UNET = ['conv_in.', 'time_embedding.', 'add_embedding.', 'down_blocks.', 'mid_block.'];

/**
 * diffusers ControlNetModel.from_unet: a ControlNet with the UNet's encoder-half config, its
 * weights copied (independent tensors), the conditioning embedding freshly initialised (from
 * withBuild's generator) and the zero convs at 0. add_embedding is copied too, as diffusers does
 * since v0.27 (v0.21.4 left it random, a bug it later fixed). A meta UNet gives a meta ControlNet.
 */
export function controlNetFromUnet(unet: UNet2DConditionModel, o: FromUnetOptions = {}): ControlNetModel {
  const u = unet.config;
  const uniform = (xs: number[], field: string) => {
    if (xs.some((x) => x !== xs[0])) throw new Error(`ControlNetModel.from_unet: the UNet's per-block ${field} [${xs}] cannot be copied (ControlNetModel takes one value)`);
  };
  uniform(u.layersPerBlock, 'layers_per_block');
  uniform(u.crossAttentionDim, 'cross_attention_dim');
  if (!u.midBlockType) throw new Error('ControlNetModel.from_unet: the UNet has no mid block to copy');
  if (u.convInKernel !== 3 || u.timeEmbedDim !== 4 * u.blockOutChannels[0])
    throw new Error('ControlNetModel.from_unet: ControlNetModel has a 3x3 conv_in and a 4 x block_out_channels[0] time embedding; this UNet differs (conv_in_kernel / time_embedding_dim)');
  const config: ControlNetConfig = {
    inChannels: u.inChannels, flipSinToCos: u.flipSinToCos, freqShift: u.freqShift, downBlockTypes: u.downBlockTypes, blockOutChannels: u.blockOutChannels,
    layersPerBlock: u.layersPerBlock, downsamplePadding: u.downsamplePadding, midBlockScaleFactor: u.midBlockScaleFactor, normNumGroups: u.normNumGroups,
    normEps: u.normEps, crossAttentionDim: u.crossAttentionDim, transformerLayersPerBlock: u.transformerLayersPerBlock, numAttentionHeads: u.numAttentionHeads,
    onlyCrossAttention: u.onlyCrossAttention, useLinearProjection: u.useLinearProjection, upcastAttention: u.upcastAttention, additionEmbedType: u.additionEmbedType,
    additionTimeEmbedDim: u.additionTimeEmbedDim, projectionClassEmbeddingsInputDim: u.projectionClassEmbeddingsInputDim, timeEmbedDim: u.timeEmbedDim, convInKernel: 3,
    conditioningChannels: o.conditioningChannels ?? 3,
    conditioningEmbeddingOutChannels: o.conditioningEmbeddingOutChannels ?? [16, 32, 96, 256],
    channelOrder: o.channelOrder ?? 'rgb',
    globalPoolConditions: false,
    conditioningUpsampleFactor: o.conditioningUpsampleFactor ?? 1,
    conditioningEmbeddingStride: o.conditioningEmbeddingStride ?? 2,
  };
  const meta = unet.conv_in.weight.isMeta;
  const cn = withBuild({ meta, dtype: unet.dtype }, () => new ControlNetModel(config));
  if (!meta && o.loadWeightsFromUnet !== false) {
    const src = unet.stateDict();
    const keys = Object.keys(cn.stateDict()).filter((k) => COPIED_FROM_UNET.some((p) => k.startsWith(p)));
    cn.loadStateDict(Object.fromEntries(keys.map((k) => [k, src[k]])), false);
  }
  return cn;
}

/**
 * Layton's LADD decoder step: O = UNet(z_t, t, text; residuals = ControlNet(z_t, t, text, C) ×
 * conditioning_scale). The UNet is frozen (its parameters stop requiring grad when the branch is
 * made); the ControlNet is the trainable part. Gradients still reach the ControlNet and C through
 * the frozen UNet's graph.
 */
export class LaddBranch {
  constructor(readonly unet: UNet2DConditionModel, readonly controlnet: ControlNetModel) {
    unet.setTrainable(false);
    controlnet.setTrainable(true);
  }

  /** A branch initialised from the UNet (from_unet), taking `codeDim`-channel token features upsampled by `upsampleFactor`. */
  static fromUnet(unet: UNet2DConditionModel, o: { codeDim: number; upsampleFactor: number; conditioningEmbeddingOutChannels?: number[]; conditioningEmbeddingStride?: 1 | 2 }): LaddBranch {
    return new LaddBranch(unet, controlNetFromUnet(unet, {
      conditioningChannels: o.codeDim, conditioningUpsampleFactor: o.upsampleFactor, conditioningEmbeddingOutChannels: o.conditioningEmbeddingOutChannels,
      conditioningEmbeddingStride: o.conditioningEmbeddingStride,
    }));
  }

  /** What an optimiser should get: the ControlNet's parameters. */
  trainableParameters(): [string, Tensor][] {
    return this.controlnet.trainableParameters();
  }

  /** zt [B, 4, H, W] noisy latents, tokens C [B, code_dim, h, w]; returns the UNet's prediction [B, out_channels, H, W]. */
  forward(zt: Tensor, timestep: Tensor | number, encoderHiddenStates: Tensor, tokens: Tensor, o: ControlNetForwardOptions = {}): Tensor {
    return tidy(() => {
      const residuals = this.controlnet.forward(zt, timestep, encoderHiddenStates, tokens, o);
      return this.unet.forward(zt, timestep, encoderHiddenStates, { added: o.added, residuals });
    });
  }

  dispose(): void {
    this.unet.dispose();
    this.controlnet.dispose();
  }
}

export const controlnetKind: ModelKind<ControlNetConfig, ControlNetModel> = {
  kind: 'controlnet',
  classNames: ['ControlNetModel'],
  parseConfig: (json, where) => parseControlNetConfig(json, where),
  toJson: controlNetConfigJson,
  build: (c) => new ControlNetModel(c),
  inputs: {
    ...UNET_INPUTS,
    controlnet_cond: 'the conditioning [B, conditioning_channels, h, w] (Layton: token features C, upsampled by conditioning_upsample_factor inside)',
    conditioning_scale: 'one value multiplying every residual (optional, default 1)',
  },
  async forward(model, inputs, config) {
    requireInputs(inputs, ['sample', 'timestep', 'encoder_hidden_states', 'controlnet_cond']);
    const scale = inputs.conditioning_scale ? await inputs.conditioning_scale.item() : 1;
    const r = model.forward(inputs.sample, inputs.timestep, inputs.encoder_hidden_states, inputs.controlnet_cond, {
      added: addedCondInputs(config, inputs), conditioningScale: scale,
    });
    return { ...Object.fromEntries(r.down.map((t, i) => [`down_block_res_samples.${i}`, t])), mid_block_res_sample: r.mid };
  },
};

/** A diffusers ControlNetModel folder (config.json + weights), loaded. */
export const loadControlNet = async (files: ModelFiles, o: LoadOptions = {}): Promise<ControlNetModel> => (await loadModel(files, controlnetKind, o)).model;
