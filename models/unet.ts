// diffusers' UNet2DConditionModel (v0.21 semantics, models/unet_2d_condition.py and the block
// types SDXL uses from models/unet_2d_blocks.py) with its state-dict names, so the released
// SDXL checkpoints load by name. The encoder half (conv_in, the time and text_time embeddings,
// the down blocks, the mid block) is shared with the ControlNet graph (models/controlnet.ts).
import {
  Module, ModuleList, type Tensor, add, affine, cast, concat, expand, reshape, tensor, tidy, type DType,
} from '../runtime/index.ts';
import { type ModelFiles } from './checkpoint.ts';
import { Downsample2D, ResnetBlock2D, TimestepEmbedding, Timesteps, Transformer2DModel, Upsample2D, step } from './blocks.ts';
import { ConfigReader } from './config.ts';
import { Conv2d, GroupNorm } from './layers.ts';
import { type LoadOptions, type ModelKind, loadModel } from './registry.ts';

export type DownBlockType = 'DownBlock2D' | 'CrossAttnDownBlock2D';
export type UpBlockType = 'UpBlock2D' | 'CrossAttnUpBlock2D';
const DOWN_TYPES: readonly DownBlockType[] = ['DownBlock2D', 'CrossAttnDownBlock2D'];
const UP_TYPES: readonly UpBlockType[] = ['UpBlock2D', 'CrossAttnUpBlock2D'];

/** What UNet2DConditionModel and ControlNetModel share: the embeddings, conv_in, the down and mid blocks. */
export interface EncoderConfig {
  inChannels: number;
  flipSinToCos: boolean;
  freqShift: number;
  downBlockTypes: DownBlockType[];
  blockOutChannels: number[];
  /** per block */
  layersPerBlock: number[];
  downsamplePadding: number;
  midBlockScaleFactor: number;
  normNumGroups: number;
  normEps: number;
  /** per block */
  crossAttentionDim: number[];
  /** per block */
  transformerLayersPerBlock: number[];
  /** attention heads per block: diffusers' `num_attention_heads`, which defaults to `attention_head_dim` (the v0.21 naming quirk) */
  numAttentionHeads: number[];
  /** per block */
  onlyCrossAttention: boolean[];
  useLinearProjection: boolean;
  upcastAttention: boolean;
  /** "text_time" (SDXL): pooled text embeds + sinusoidal time ids added to the time embedding */
  additionEmbedType: 'text_time' | null;
  additionTimeEmbedDim: number | null;
  projectionClassEmbeddingsInputDim: number | null;
  /** width of the time embedding (time_embedding_dim, default 4 × block_out_channels[0]) */
  timeEmbedDim: number;
  convInKernel: number;
}

export interface UNetConfig extends EncoderConfig {
  sampleSize: number | number[] | null;
  outChannels: number;
  centerInputSample: boolean;
  midBlockType: 'UNetMidBlock2DCrossAttn' | null;
  upBlockTypes: UpBlockType[];
  convOutKernel: number;
}

/** `only_cross_attention`: one bool, or one per block. */
function perBlockBool(r: ConfigReader, field: string, n: number): boolean[] {
  const v = r.json[field];
  if (v == null || typeof v === 'boolean') return new Array(n).fill(v ?? false);
  if (Array.isArray(v) && v.length === n && v.every((x) => typeof x === 'boolean')) return v;
  throw new Error(`${r.where}: "${field}" must be true, false or a list of ${n} booleans (one per block), got ${JSON.stringify(v)}`);
}

/** Fails on a field set to something this port does not implement (diffusers' default is what it implements). */
function unsupported(r: ConfigReader, field: string, ok: (v: unknown) => boolean, what: string): void {
  const v = r.json[field];
  if (v !== undefined && !ok(v)) throw new Error(`${r.where}: "${field}" ${JSON.stringify(v)} is not supported (${what})`);
}

const isNull = (v: unknown) => v === null;

/**
 * The encoder-half fields in diffusers' names and defaults (the same in UNet2DConditionModel and
 * ControlNetModel), checked against the features this port implements.
 */
export function readEncoderFields(r: ConfigReader, downDefault: DownBlockType[], o: { perBlockLists: boolean }): EncoderConfig {
  const downBlockTypes = r.strs('down_block_types', downDefault) as DownBlockType[];
  const n = downBlockTypes.length;
  for (const t of downBlockTypes) if (!DOWN_TYPES.includes(t)) throw new Error(`${r.where}: down block type "${t}" is not supported (${DOWN_TYPES.join(', ')})`);
  const blockOutChannels = r.ints('block_out_channels', [320, 640, 1280, 1280]);
  if (blockOutChannels.length !== n)
    throw new Error(`${r.where}: "block_out_channels" has ${blockOutChannels.length} entries but "down_block_types" has ${n}`);
  unsupported(r, 'act_fn', (v) => v === 'silu', 'only "silu"');
  unsupported(r, 'resnet_time_scale_shift', (v) => v === 'default', 'only "default"');
  unsupported(r, 'class_embed_type', isNull, 'class embeddings are not implemented');
  unsupported(r, 'num_class_embeds', isNull, 'class embeddings are not implemented');
  unsupported(r, 'encoder_hid_dim', isNull, 'encoder_hid_proj is not implemented');
  unsupported(r, 'encoder_hid_dim_type', isNull, 'encoder_hid_proj is not implemented');
  unsupported(r, 'norm_num_groups', (v) => v !== null, 'a UNet without normalisation is not implemented');
  // a per-block cross_attention_dim / layers_per_block is a UNet feature; ControlNetModel takes one int
  const int = (field: string, def: number) => (o.perBlockLists ? r.perBlock(field, n, def) : new Array(n).fill(r.int(field, def, 1)));
  const heads = r.perBlock('attention_head_dim', n, 8);
  const c: EncoderConfig = {
    inChannels: r.int('in_channels', 4, 1),
    flipSinToCos: r.bool('flip_sin_to_cos', true),
    freqShift: r.num('freq_shift', 0),
    downBlockTypes,
    blockOutChannels,
    layersPerBlock: int('layers_per_block', 2),
    downsamplePadding: r.int('downsample_padding', 1),
    midBlockScaleFactor: r.num('mid_block_scale_factor', 1),
    normNumGroups: r.int('norm_num_groups', 32, 1),
    normEps: r.num('norm_eps', 1e-5),
    crossAttentionDim: int('cross_attention_dim', 1280),
    transformerLayersPerBlock: r.perBlock('transformer_layers_per_block', n, 1),
    numAttentionHeads: r.json.num_attention_heads == null ? heads : r.perBlock('num_attention_heads', n),
    onlyCrossAttention: perBlockBool(r, 'only_cross_attention', n),
    useLinearProjection: r.bool('use_linear_projection', false),
    upcastAttention: r.bool('upcast_attention', false),
    additionEmbedType: r.optStr('addition_embed_type', ['text_time'] as const),
    additionTimeEmbedDim: r.optInt('addition_time_embed_dim'),
    projectionClassEmbeddingsInputDim: r.optInt('projection_class_embeddings_input_dim'),
    timeEmbedDim: 4 * blockOutChannels[0],
    convInKernel: 3,
  };
  if (c.additionEmbedType === 'text_time' && (!c.additionTimeEmbedDim || !c.projectionClassEmbeddingsInputDim))
    throw new Error(`${r.where}: "addition_embed_type" "text_time" needs "addition_time_embed_dim" and "projection_class_embeddings_input_dim"`);
  for (const ch of blockOutChannels)
    if (ch % c.normNumGroups !== 0) throw new Error(`${r.where}: block_out_channels ${ch} does not split into norm_num_groups ${c.normNumGroups}`);
  downBlockTypes.forEach((t, i) => {
    if (t === 'CrossAttnDownBlock2D' && blockOutChannels[i] % c.numAttentionHeads[i] !== 0)
      throw new Error(`${r.where}: block ${i}'s ${blockOutChannels[i]} channels do not split into ${c.numAttentionHeads[i]} attention heads`);
  });
  return c;
}

/** diffusers UNet2DConditionModel's config.json fields with its defaults (unknown fields ignored). */
export function parseUNetConfig(json: Record<string, unknown>, where = 'config.json'): UNetConfig {
  const r = new ConfigReader(json, where);
  if (json.num_attention_heads != null)
    throw new Error(`${where}: "num_attention_heads" must be null: diffusers v0.21 takes the heads from "attention_head_dim" (its naming quirk)`);
  unsupported(r, 'dropout', (v) => v === 0, 'dropout is not implemented; 0 is the default');
  unsupported(r, 'dual_cross_attention', (v) => v === false, 'DualTransformer2DModel is not implemented');
  unsupported(r, 'time_embedding_type', (v) => v === 'positional', 'only "positional"');
  unsupported(r, 'time_embedding_act_fn', isNull, 'not implemented');
  unsupported(r, 'timestep_post_act', isNull, 'not implemented');
  unsupported(r, 'time_cond_proj_dim', isNull, "TimestepEmbedding's cond_proj (guidance embedding of LCM-distilled UNets) is not implemented");
  unsupported(r, 'attention_type', (v) => v === 'default', 'only "default"');
  unsupported(r, 'class_embeddings_concat', (v) => v === false, 'class embeddings are not implemented');
  const enc = readEncoderFields(r, ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'], { perBlockLists: true });
  const upBlockTypes = r.strs('up_block_types', ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D']) as UpBlockType[];
  for (const t of upBlockTypes) if (!UP_TYPES.includes(t)) throw new Error(`${where}: up block type "${t}" is not supported (${UP_TYPES.join(', ')})`);
  if (upBlockTypes.length !== enc.downBlockTypes.length)
    throw new Error(`${where}: "up_block_types" has ${upBlockTypes.length} entries but "down_block_types" has ${enc.downBlockTypes.length}`);
  const rev = [...enc.numAttentionHeads].reverse();
  upBlockTypes.forEach((t, i) => {
    const ch = enc.blockOutChannels[enc.blockOutChannels.length - 1 - i];
    if (t === 'CrossAttnUpBlock2D' && ch % rev[i] !== 0) throw new Error(`${where}: up block ${i}'s ${ch} channels do not split into ${rev[i]} attention heads`);
  });
  const kernel = (field: string) => {
    const k = r.int(field, 3, 1);
    if (k % 2 === 0) throw new Error(`${where}: "${field}" must be odd, got ${k}`);
    return k;
  };
  const sampleSize = json.sample_size ?? null;
  if (sampleSize !== null && !Number.isInteger(sampleSize) && !(Array.isArray(sampleSize) && sampleSize.length === 2 && sampleSize.every(Number.isInteger)))
    throw new Error(`${where}: "sample_size" must be an integer, [height, width] or null, got ${JSON.stringify(sampleSize)}`);
  return {
    ...enc,
    sampleSize: sampleSize as number | number[] | null,
    outChannels: r.int('out_channels', 4, 1),
    centerInputSample: r.bool('center_input_sample', false),
    // absent: diffusers' default; an explicit null: no mid block
    midBlockType: r.json.mid_block_type === undefined ? 'UNetMidBlock2DCrossAttn' : r.optStr('mid_block_type', ['UNetMidBlock2DCrossAttn'] as const),
    upBlockTypes,
    timeEmbedDim: r.optInt('time_embedding_dim') ?? enc.timeEmbedDim,
    convInKernel: kernel('conv_in_kernel'),
    convOutKernel: kernel('conv_out_kernel'),
  };
}

/** The encoder-half fields as diffusers' config.json names them (per-block lists written as lists). */
export function encoderFieldsJson(c: EncoderConfig): Record<string, unknown> {
  return {
    in_channels: c.inChannels,
    flip_sin_to_cos: c.flipSinToCos,
    freq_shift: c.freqShift,
    down_block_types: c.downBlockTypes,
    block_out_channels: c.blockOutChannels,
    downsample_padding: c.downsamplePadding,
    mid_block_scale_factor: c.midBlockScaleFactor,
    act_fn: 'silu',
    norm_num_groups: c.normNumGroups,
    norm_eps: c.normEps,
    transformer_layers_per_block: c.transformerLayersPerBlock,
    attention_head_dim: c.numAttentionHeads,
    num_attention_heads: null,
    only_cross_attention: c.onlyCrossAttention,
    use_linear_projection: c.useLinearProjection,
    upcast_attention: c.upcastAttention,
    addition_embed_type: c.additionEmbedType,
    addition_time_embed_dim: c.additionTimeEmbedDim,
    projection_class_embeddings_input_dim: c.projectionClassEmbeddingsInputDim,
    resnet_time_scale_shift: 'default',
    class_embed_type: null,
  };
}

export function unetConfigJson(c: UNetConfig): Record<string, unknown> {
  return {
    _class_name: 'UNet2DConditionModel',
    sample_size: c.sampleSize,
    out_channels: c.outChannels,
    center_input_sample: c.centerInputSample,
    mid_block_type: c.midBlockType,
    up_block_types: c.upBlockTypes,
    layers_per_block: c.layersPerBlock,
    cross_attention_dim: c.crossAttentionDim,
    time_embedding_dim: c.timeEmbedDim === 4 * c.blockOutChannels[0] ? null : c.timeEmbedDim,
    conv_in_kernel: c.convInKernel,
    conv_out_kernel: c.convOutKernel,
    ...encoderFieldsJson(c),
  };
}

// ---- blocks ----------------------------------------------------------------------------------

interface BlockAttention {
  heads: number;
  transformerLayers: number;
  crossAttentionDim: number;
  onlyCrossAttention: boolean;
}

function transformer(c: EncoderConfig, channels: number, a: BlockAttention): Transformer2DModel {
  return new Transformer2DModel({
    numAttentionHeads: a.heads,
    attentionHeadDim: channels / a.heads,
    inChannels: channels,
    numLayers: a.transformerLayers,
    crossAttentionDim: a.crossAttentionDim,
    normNumGroups: c.normNumGroups,
    useLinearProjection: c.useLinearProjection,
    onlyCrossAttention: a.onlyCrossAttention,
    upcastAttention: c.upcastAttention,
  });
}

const resnet = (c: EncoderConfig, inChannels: number, outChannels: number, outputScaleFactor = 1) =>
  new ResnetBlock2D({ inChannels, outChannels, tembChannels: c.timeEmbedDim, groups: c.normNumGroups, eps: c.normEps, outputScaleFactor });

/**
 * DownBlock2D (resnets, then a stride-2 conv) or, with `attention`, CrossAttnDownBlock2D (a
 * Transformer2DModel after each resnet). Returns the output and the states the skip connections
 * take (each layer's output, then the downsampled one).
 */
export class DownBlock extends Module {
  readonly attentions: ModuleList<Transformer2DModel> | null;
  readonly resnets: ModuleList<ResnetBlock2D>;
  readonly downsamplers: ModuleList<Downsample2D> | null;

  constructor(c: EncoderConfig, inChannels: number, outChannels: number, layers: number, addDownsample: boolean, attention: BlockAttention | null) {
    super();
    // registered in diffusers' order (attentions before resnets), so state dicts list keys alike
    this.attentions = attention ? this.module('attentions', new ModuleList(Array.from({ length: layers }, () => transformer(c, outChannels, attention)))) : null;
    this.resnets = this.module('resnets', new ModuleList(Array.from({ length: layers }, (_, i) => resnet(c, i === 0 ? inChannels : outChannels, outChannels))));
    this.downsamplers = addDownsample
      ? this.module('downsamplers', new ModuleList([new Downsample2D(outChannels, { useConv: true, outChannels, padding: c.downsamplePadding })]))
      : null;
  }

  forward(x: Tensor, temb: Tensor, encoderHiddenStates: Tensor): { hidden: Tensor; states: Tensor[] } {
    return tidy(() => {
      const states: Tensor[] = [];
      let h = x;
      this.resnets.items.forEach((r, i) => {
        h = r.forward(h, temb);
        if (this.attentions) h = step(h, (v) => this.attentions!.items[i].forward(v, encoderHiddenStates));
        states.push(h);
      });
      if (this.downsamplers) states.push((h = this.downsamplers.items[0].forward(h)));
      return { hidden: h, states };
    });
  }
}

/** UNetMidBlock2DCrossAttn: resnet, then (transformer, resnet) per layer. */
export class MidBlock extends Module {
  readonly attentions: ModuleList<Transformer2DModel>;
  readonly resnets: ModuleList<ResnetBlock2D>;

  constructor(c: EncoderConfig) {
    super();
    const ch = c.blockOutChannels.at(-1)!;
    const a: BlockAttention = {
      heads: c.numAttentionHeads.at(-1)!, transformerLayers: c.transformerLayersPerBlock.at(-1)!, crossAttentionDim: c.crossAttentionDim.at(-1)!, onlyCrossAttention: false,
    };
    if (ch % a.heads !== 0) throw new Error(`UNetMidBlock2DCrossAttn: ${ch} channels do not split into ${a.heads} attention heads`);
    this.attentions = this.module('attentions', new ModuleList([transformer(c, ch, a)]));
    this.resnets = this.module('resnets', new ModuleList([0, 1].map(() => resnet(c, ch, ch, c.midBlockScaleFactor))));
  }

  forward(x: Tensor, temb: Tensor, encoderHiddenStates: Tensor): Tensor {
    return tidy(() => {
      let h = this.resnets.items[0].forward(x, temb);
      this.attentions.items.forEach((attn, i) => {
        h = step(h, (v) => attn.forward(v, encoderHiddenStates));
        h = step(h, (v) => this.resnets.items[i + 1].forward(v, temb));
      });
      return h;
    });
  }
}

/**
 * UpBlock2D or, with `attention`, CrossAttnUpBlock2D: each resnet takes the running features
 * concatenated with one skip state (the last first), then nearest 2x + conv.
 */
export class UpBlock extends Module {
  readonly attentions: ModuleList<Transformer2DModel> | null;
  readonly resnets: ModuleList<ResnetBlock2D>;
  readonly upsamplers: ModuleList<Upsample2D> | null;

  constructor(
    c: EncoderConfig, inChannels: number, outChannels: number, prevOutputChannels: number, layers: number, addUpsample: boolean, attention: BlockAttention | null,
  ) {
    super();
    this.attentions = attention ? this.module('attentions', new ModuleList(Array.from({ length: layers }, () => transformer(c, outChannels, attention)))) : null;
    this.resnets = this.module('resnets', new ModuleList(Array.from({ length: layers }, (_, i) => {
      const skip = i === layers - 1 ? inChannels : outChannels;
      return resnet(c, (i === 0 ? prevOutputChannels : outChannels) + skip, outChannels);
    })));
    this.upsamplers = addUpsample ? this.module('upsamplers', new ModuleList([new Upsample2D(outChannels, { useConv: true, outChannels })])) : null;
  }

  /** `skips`: this block's skip states in the order the down path made them (consumed from the end). */
  forward(x: Tensor, skips: Tensor[], temb: Tensor, encoderHiddenStates: Tensor): Tensor {
    if (skips.length !== this.resnets.items.length) throw new Error(`UpBlock: ${skips.length} skip states for ${this.resnets.items.length} resnets`);
    return tidy(() => {
      let h = x;
      this.resnets.items.forEach((r, i) => {
        const cat = concat([h, skips[skips.length - 1 - i]], 1);
        if (h !== x) h.dispose();
        h = step(cat, (v) => r.forward(v, temb));
        if (this.attentions) h = step(h, (v) => this.attentions!.items[i].forward(v, encoderHiddenStates));
      });
      return this.upsamplers ? step(h, (v) => this.upsamplers!.items[0].forward(v)) : h;
    });
  }
}

const attentionOf = (c: EncoderConfig, i: number, crossAttn: boolean): BlockAttention | null =>
  crossAttn
    ? { heads: c.numAttentionHeads[i], transformerLayers: c.transformerLayersPerBlock[i], crossAttentionDim: c.crossAttentionDim[i], onlyCrossAttention: c.onlyCrossAttention[i] }
    : null;

/** The down blocks of a UNet2DConditionModel / ControlNetModel config, as diffusers builds them. */
export function buildDownBlocks(c: EncoderConfig): ModuleList<DownBlock> {
  const n = c.blockOutChannels.length;
  return new ModuleList(c.downBlockTypes.map((t, i) =>
    new DownBlock(c, c.blockOutChannels[Math.max(i - 1, 0)], c.blockOutChannels[i], c.layersPerBlock[i], i < n - 1, attentionOf(c, i, t === 'CrossAttnDownBlock2D'))));
}

// ---- the time conditioning -------------------------------------------------------------------

/** The timestep as a [batch] f32 tensor: a number, or a tensor of 1 or `batch` values (diffusers broadcasts). */
function timestepsFor(timestep: Tensor | number, batch: number): Tensor {
  if (typeof timestep === 'number') return tensor(new Float32Array(batch).fill(timestep), [batch]);
  if (timestep.size !== 1 && !(timestep.rank === 1 && timestep.size === batch))
    throw new Error(`timestep must be a number, a single value or [${batch}] (one per sample), got [${timestep.shape}]`);
  return tidy(() => {
    const t = reshape(timestep.dtype === 'f32' ? timestep : cast(timestep, 'f32'), [timestep.size]);
    return timestep.size === batch ? t : expand(t, [batch]);
  });
}

export interface AddedCond {
  /** pooled text embeddings [B, projection_class_embeddings_input_dim - 6·addition_time_embed_dim] */
  textEmbeds: Tensor;
  /** SDXL's micro-conditioning [B, 6]: original size, crop top-left, target size */
  timeIds: Tensor;
}

/** conv_in, time_embedding, add_embedding, down_blocks and mid_block: the parts ControlNetModel shares and copies. */
export interface EncoderParts {
  readonly config: EncoderConfig;
  readonly conv_in: Conv2d;
  readonly time_embedding: TimestepEmbedding;
  readonly add_embedding: TimestepEmbedding | null;
  readonly down_blocks: ModuleList<DownBlock>;
  readonly mid_block: MidBlock | null;
}

/** The parts a model holds to embed the timestep (and, for text_time, the added conditions). */
export function timeEmbeddingModules(c: EncoderConfig): { timeEmbedding: TimestepEmbedding; addEmbedding: TimestepEmbedding | null } {
  return {
    timeEmbedding: new TimestepEmbedding(c.blockOutChannels[0], c.timeEmbedDim),
    addEmbedding: c.additionEmbedType === 'text_time' ? new TimestepEmbedding(c.projectionClassEmbeddingsInputDim!, c.timeEmbedDim) : null,
  };
}

/** emb = time_embedding(time_proj(t)) (+ add_embedding([text_embeds, add_time_proj(time_ids)]) for text_time), [B, timeEmbedDim]. */
export function embedTime(m: EncoderParts, timestep: Tensor | number, batch: number, added: AddedCond | null | undefined): Tensor {
  const c = m.config;
  return tidy(() => {
    const t = timestepsFor(timestep, batch);
    const emb = m.time_embedding.forward(new Timesteps(c.blockOutChannels[0], c.flipSinToCos, c.freqShift).forward(t));
    if (!m.add_embedding) return emb;
    if (!added) throw new Error('addition_embed_type "text_time" needs text_embeds and time_ids (added_cond_kwargs)');
    const { textEmbeds, timeIds } = added;
    const textDim = c.projectionClassEmbeddingsInputDim! - timeIds.shape.at(-1)! * c.additionTimeEmbedDim!;
    if (textEmbeds.rank !== 2 || textEmbeds.shape[0] !== batch || textEmbeds.shape[1] !== textDim)
      throw new Error(`text_embeds must be [${batch}, ${textDim}] (projection_class_embeddings_input_dim minus the time ids' embedding), got [${textEmbeds.shape}]`);
    if (timeIds.rank !== 2 || timeIds.shape[0] !== batch) throw new Error(`time_ids must be [${batch}, N], got [${timeIds.shape}]`);
    const ids = reshape(timeIds.dtype === 'f32' ? timeIds : cast(timeIds, 'f32'), [timeIds.size]);
    const timeEmbeds = reshape(new Timesteps(c.additionTimeEmbedDim!, c.flipSinToCos, c.freqShift).forward(ids), [batch, -1]);
    const text = textEmbeds.dtype === 'f32' ? textEmbeds : cast(textEmbeds, 'f32');
    return add(emb, m.add_embedding.forward(concat([text, timeEmbeds], 1)));
  });
}

/** A float input in the model's dtype (inputs come as f32; an f16 model computes in f16). */
export const asDType = (x: Tensor, dtype: DType): Tensor => (x.dtype === dtype ? x : cast(x, dtype));

/** Checks sample [B, inChannels, H, W] and encoder_hidden_states [B, S, crossAttentionDim] against the config. */
export function checkInputs(what: string, c: EncoderConfig, sample: Tensor, encoderHiddenStates: Tensor): void {
  if (sample.rank !== 4 || sample.shape[1] !== c.inChannels) throw new Error(`${what}: sample must be [B, ${c.inChannels}, H, W], got [${sample.shape}]`);
  const cross = c.crossAttentionDim[0];
  if (encoderHiddenStates.rank !== 3 || encoderHiddenStates.shape[0] !== sample.shape[0] || encoderHiddenStates.shape[2] !== cross)
    throw new Error(`${what}: encoder_hidden_states must be [${sample.shape[0]}, S, ${cross}], got [${encoderHiddenStates.shape}]`);
  const factor = 2 ** (c.blockOutChannels.length - 1);
  if (sample.shape[2] % factor || sample.shape[3] % factor)
    throw new Error(`${what}: sample height and width must be multiples of ${factor} (one halving per down block), got ${sample.shape[2]}x${sample.shape[3]}`);
}

/** conv_in output (plus `addToInput`, the ControlNet's conditioning), then the down blocks: the output and every skip state. */
export function runEncoder(m: EncoderParts, sample: Tensor, emb: Tensor, encoderHiddenStates: Tensor, addToInput?: Tensor): { hidden: Tensor; states: Tensor[] } {
  return tidy(() => {
    let h = m.conv_in.forward(sample, addToInput ? { residual: addToInput } : {});
    const states = [h];
    for (const block of m.down_blocks.items) {
      const r = block.forward(h, emb, encoderHiddenStates);
      states.push(...r.states);
      h = r.hidden;
    }
    return { hidden: h, states };
  });
}

export interface ControlResiduals {
  /** one per down-path state: conv_in's output, then each down block's states */
  down: Tensor[];
  mid: Tensor;
}

export interface UNetForwardOptions {
  added?: AddedCond | null;
  /** ControlNet residuals (diffusers' down_block_additional_residuals and mid_block_additional_residual) */
  residuals?: ControlResiduals | null;
}

// ---- the model -------------------------------------------------------------------------------

/** diffusers UNet2DConditionModel for the SDXL block types (DownBlock2D, CrossAttnDownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, UpBlock2D). */
export class UNet2DConditionModel extends Module implements EncoderParts {
  readonly conv_in: Conv2d;
  readonly time_embedding: TimestepEmbedding;
  readonly add_embedding: TimestepEmbedding | null;
  readonly down_blocks: ModuleList<DownBlock>;
  readonly up_blocks: ModuleList<UpBlock>;
  readonly mid_block: MidBlock | null;
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;

  constructor(readonly config: UNetConfig) {
    super();
    const c = config;
    const n = c.blockOutChannels.length;
    this.conv_in = this.module('conv_in', new Conv2d(c.inChannels, c.blockOutChannels[0], c.convInKernel, { padding: (c.convInKernel - 1) / 2 }));
    const { timeEmbedding, addEmbedding } = timeEmbeddingModules(c);
    this.time_embedding = this.module('time_embedding', timeEmbedding);
    this.add_embedding = addEmbedding && this.module('add_embedding', addEmbedding);
    this.down_blocks = this.module('down_blocks', buildDownBlocks(c));
    // diffusers creates up_blocks before assigning mid_block, so its keys come first
    const rev = <T>(xs: T[]): T[] => [...xs].reverse();
    const [ch, heads, layers, cross, tlayers] = [c.blockOutChannels, c.numAttentionHeads, c.layersPerBlock, c.crossAttentionDim, c.transformerLayersPerBlock].map(rev);
    const only = rev(c.onlyCrossAttention);
    this.up_blocks = this.module('up_blocks', new ModuleList(c.upBlockTypes.map((t, i) => {
      const attention = t === 'CrossAttnUpBlock2D' ? { heads: heads[i], transformerLayers: tlayers[i], crossAttentionDim: cross[i], onlyCrossAttention: only[i] } : null;
      return new UpBlock(c, ch[Math.min(i + 1, n - 1)], ch[i], ch[Math.max(i - 1, 0)], layers[i] + 1, i < n - 1, attention);
    })));
    this.mid_block = c.midBlockType ? this.module('mid_block', new MidBlock(c)) : null;
    this.conv_norm_out = this.module('conv_norm_out', new GroupNorm(c.normNumGroups, c.blockOutChannels[0], c.normEps));
    this.conv_out = this.module('conv_out', new Conv2d(c.blockOutChannels[0], c.outChannels, c.convOutKernel, { padding: (c.convOutKernel - 1) / 2 }));
  }

  /** The dtype the model computes in (its weights'). */
  get dtype(): DType {
    return this.conv_in.weight.dtype;
  }

  /**
   * sample [B, in_channels, H, W], timestep (number, one value or [B]), encoder_hidden_states
   * [B, S, cross_attention_dim]; for text_time, `added` {textEmbeds, timeIds}; with ControlNet
   * `residuals`, each is added to its skip state and the mid block's output. Returns [B, out_channels, H, W].
   */
  forward(sample: Tensor, timestep: Tensor | number, encoderHiddenStates: Tensor, o: UNetForwardOptions = {}): Tensor {
    const c = this.config;
    checkInputs('UNet2DConditionModel', c, sample, encoderHiddenStates);
    const batch = sample.shape[0];
    return tidy(() => {
      const dt = this.dtype;
      let x = asDType(sample, dt);
      if (c.centerInputSample) x = affine(x, 2, -1);
      const ehs = asDType(encoderHiddenStates, dt);
      const emb = embedTime(this, timestep, batch, o.added);
      const enc = runEncoder(this, x, emb, ehs);
      // enc.hidden is also the last skip state: it stays alive until the up path consumes that
      let states = enc.states;
      const res = o.residuals;
      if (res) {
        if (res.down.length !== states.length)
          throw new Error(`UNet2DConditionModel: ${res.down.length} down_block_additional_residuals for ${states.length} down-path states`);
        states = states.map((s, i) => {
          if (res.down[i].shape.join() !== s.shape.join())
            throw new Error(`UNet2DConditionModel: down_block_additional_residuals.${i} is [${res.down[i].shape}] but that state is [${s.shape}]`);
          return add(s, asDType(res.down[i], dt));
        });
      }
      let h = this.mid_block ? this.mid_block.forward(enc.hidden, emb, ehs) : enc.hidden;
      if (res) {
        if (res.mid.shape.join() !== h.shape.join()) throw new Error(`UNet2DConditionModel: mid_block_additional_residual is [${res.mid.shape}] but the mid block's output is [${h.shape}]`);
        h = add(h, asDType(res.mid, dt));
      }
      for (const up of this.up_blocks.items) {
        const skips = states.splice(states.length - up.resnets.items.length);
        h = step(h, (v) => up.forward(v, skips, emb, ehs));
        for (const s of skips) s.dispose();
      }
      return step(h, (v) => this.conv_out.forward(this.conv_norm_out.forward(v, true)));
    });
  }
}

/** Inputs named `<prefix>.0`, `<prefix>.1`, … in order (the CLI's way of passing a list). */
export function numberedInputs(inputs: Record<string, Tensor>, prefix: string): Tensor[] {
  const found = Object.keys(inputs).filter((k) => k.startsWith(`${prefix}.`));
  const list = found.map((_, i) => {
    const t = inputs[`${prefix}.${i}`];
    if (!t) throw new Error(`inputs: ${found.join(', ')} do not number ${prefix}.0 … ${prefix}.${found.length - 1} without gaps`);
    return t;
  });
  return list;
}

/** Fails naming the forward inputs that are missing. */
export function requireInputs(inputs: Record<string, Tensor>, names: string[]): void {
  const missing = names.filter((n) => !inputs[n]);
  if (missing.length) throw new Error(`inputs: missing ${missing.join(', ')}`);
}

/** text_embeds and time_ids from named inputs, when the config uses them. */
export function addedCondInputs(c: EncoderConfig, inputs: Record<string, Tensor>): AddedCond | null {
  if (c.additionEmbedType !== 'text_time') return null;
  const { text_embeds: textEmbeds, time_ids: timeIds } = inputs;
  if (!textEmbeds || !timeIds) throw new Error('inputs: addition_embed_type "text_time" needs text_embeds and time_ids');
  return { textEmbeds, timeIds };
}

/** Named inputs every UNet-shaped forward takes (diffusers' argument names). */
export const UNET_INPUTS: Record<string, string> = {
  sample: 'noisy latents [B, in_channels, H, W] (H, W multiples of 2^(blocks - 1))',
  timestep: 'the diffusion timestep: one value or [B]',
  encoder_hidden_states: 'text features [B, S, cross_attention_dim]',
  text_embeds: 'pooled text embeddings [B, D] (addition_embed_type "text_time" only)',
  time_ids: "SDXL's size/crop conditioning [B, 6] (addition_embed_type \"text_time\" only)",
};

export const unetKind: ModelKind<UNetConfig, UNet2DConditionModel> = {
  kind: 'unet',
  classNames: ['UNet2DConditionModel'],
  parseConfig: (json, where) => parseUNetConfig(json, where),
  toJson: unetConfigJson,
  build: (c) => new UNet2DConditionModel(c),
  inputs: {
    ...UNET_INPUTS,
    'down_block_additional_residuals.N': 'ControlNet residuals, one per down-path state (optional; with mid_block_additional_residual)',
    mid_block_additional_residual: "ControlNet residual added to the mid block's output (optional)",
  },
  forward(model, inputs, config) {
    requireInputs(inputs, ['sample', 'timestep', 'encoder_hidden_states']);
    const down = numberedInputs(inputs, 'down_block_additional_residuals');
    const mid = inputs.mid_block_additional_residual;
    if (!down.length !== !mid) throw new Error('inputs: down_block_additional_residuals.N and mid_block_additional_residual go together (ControlNet residuals)');
    const residuals = mid ? { down, mid } : null;
    return { sample: model.forward(inputs.sample, inputs.timestep, inputs.encoder_hidden_states, { added: addedCondInputs(config, inputs), residuals }) };
  },
};


/** A diffusers UNet2DConditionModel folder (config.json + diffusion_pytorch_model[.fp16].safetensors or shards), loaded. */
export const loadUNet = async (files: ModelFiles, o: LoadOptions = {}): Promise<UNet2DConditionModel> => (await loadModel(files, unetKind, o)).model;
