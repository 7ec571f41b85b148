// LlamaGen's VQ image tokenizer (tokenizer/tokenizer_image/vq_model.py: VQModel, presets VQ-16
// and VQ-8) with its state-dict names, so the released checkpoints load by name. From the facts
// of that file: a taming-style CNN encoder (GroupNorm(32, eps 1e-6) + swish, resnet blocks,
// single-head attention at the lowest resolution and in the middle, stride-2 downsampling after
// a (0, 1, 0, 1) zero pad), quant_conv to the codebook width, an l2-normalised codebook with
// nearest-code quantisation and the straight-through estimator, post_quant_conv, and the mirror
// decoder (nearest 2x upsampling + conv). Images go in as NCHW in [-1, 1] (tools/image.ts
// imagesToTensor does vq_demo.py's x / 255 · 2 - 1).
import {
  Module, ModuleList, type Tensor, attention, buildOptions, l2Normalize, linear, lookup, matmul, mulScalar, permute, quantize, rand,
  reshape, softmax, tidy, upsampleNearest2x, 
} from '../runtime/index.ts';
import { type ModelFiles } from './checkpoint.ts';
import { ConfigReader } from './config.ts';
import { Conv2d, GroupNorm } from './layers.ts';
import { type LoadOptions, type ModelKind, loadModel } from './registry.ts';

export interface VQConfig {
  codebookSize: number;
  codebookEmbedDim: number;
  /** kept for the config round trip: the usage statistic itself is host-side (CodebookUsage) */
  codebookShowUsage: boolean;
  commitLossBeta: number;
  entropyLossRatio: number;
  encoderChMult: number[];
  decoderChMult: number[];
  zChannels: number;
  /** Encoder/Decoder arguments VQModel leaves at their defaults (128, 2); small test models set them */
  ch: number;
  numResBlocks: number;
}

/** LlamaGen's VQ_models: the channel multipliers of each preset (everything else is ModelArgs' default). */
export const VQ_MODELS: Record<string, { encoderChMult: number[]; decoderChMult: number[] }> = {
  'VQ-16': { encoderChMult: [1, 1, 2, 2, 4], decoderChMult: [1, 1, 2, 2, 4] },
  'VQ-8': { encoderChMult: [1, 2, 2, 4], decoderChMult: [1, 2, 2, 4] },
};

const GROUPS = 32; // LlamaGen's Normalize: GroupNorm(32, C, eps=1e-6)
const NORM_EPS = 1e-6;
// attention()'s largest head dim; wider single-head blocks (VQ-16's 512 channels) use explicit scores
const FUSED_MAX_DIM = 256;

/**
 * A config.json with ModelArgs' field names and defaults (codebook_size, codebook_embed_dim,
 * codebook_l2_norm, codebook_show_usage, commit_loss_beta, entropy_loss_ratio,
 * encoder_ch_mult, decoder_ch_mult, z_channels, dropout_p), plus `vq_model` ("VQ-16" | "VQ-8",
 * the presets' channel multipliers as defaults) and the Encoder/Decoder arguments `ch` and
 * `num_res_blocks`. An empty object is VQ-16.
 */
export function parseVQConfig(json: Record<string, unknown>, where = 'config.json'): VQConfig {
  const r = new ConfigReader(json, where);
  const preset = VQ_MODELS[r.str('vq_model', 'VQ-16', Object.keys(VQ_MODELS))];
  if (!r.bool('codebook_l2_norm', true)) throw new Error(`${where}: "codebook_l2_norm" false is not supported (every LlamaGen tokenizer uses the l2-normalised codebook)`);
  if (r.num('dropout_p', 0) !== 0)
    throw new Error(`${where}: "dropout_p" must be 0: dropout inside the resnet blocks is not implemented (LlamaGen's default; it does nothing at inference)`);
  const c: VQConfig = {
    codebookSize: r.int('codebook_size', 16384, 1),
    codebookEmbedDim: r.int('codebook_embed_dim', 8, 1),
    codebookShowUsage: r.bool('codebook_show_usage', true),
    commitLossBeta: r.num('commit_loss_beta', 0.25),
    entropyLossRatio: r.num('entropy_loss_ratio', 0),
    encoderChMult: r.ints('encoder_ch_mult', preset.encoderChMult),
    decoderChMult: r.ints('decoder_ch_mult', preset.decoderChMult),
    zChannels: r.int('z_channels', 256, 1),
    ch: r.int('ch', 128, 1),
    numResBlocks: r.int('num_res_blocks', 2, 1),
  };
  if (c.ch % GROUPS !== 0) throw new Error(`${where}: "ch" (${c.ch}) must be a multiple of ${GROUPS} (GroupNorm groups)`);
  for (const [field, mult] of [['encoder_ch_mult', c.encoderChMult], ['decoder_ch_mult', c.decoderChMult]] as const)
    if (mult.length === 0 || mult.includes(0)) throw new Error(`${where}: "${field}" must list one multiplier >= 1 per resolution level, got [${mult.join(', ')}]`);
  return c;
}

export function vqConfigJson(c: VQConfig): Record<string, unknown> {
  return {
    _class_name: 'VQModel',
    codebook_size: c.codebookSize,
    codebook_embed_dim: c.codebookEmbedDim,
    codebook_l2_norm: true,
    codebook_show_usage: c.codebookShowUsage,
    commit_loss_beta: c.commitLossBeta,
    entropy_loss_ratio: c.entropyLossRatio,
    encoder_ch_mult: c.encoderChMult,
    decoder_ch_mult: c.decoderChMult,
    z_channels: c.zChannels,
    dropout_p: 0,
    ch: c.ch,
    num_res_blocks: c.numResBlocks,
  };
}

const norm = (ch: number) => new GroupNorm(GROUPS, ch, NORM_EPS);
const conv3 = (i: number, o: number) => new Conv2d(i, o, 3, { padding: 1 });

/** Replaces `h` by f(h), freeing the old handle (autograd keeps whatever backward needs). */
function step(h: Tensor, f: (t: Tensor) => Tensor): Tensor {
  const y = f(h);
  h.dispose();
  return y;
}

class ResnetBlock extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  readonly nin_shortcut: Conv2d | null;

  constructor(inCh: number, outCh: number) {
    super();
    this.norm1 = this.module('norm1', norm(inCh));
    this.conv1 = this.module('conv1', conv3(inCh, outCh));
    this.norm2 = this.module('norm2', norm(outCh));
    this.conv2 = this.module('conv2', conv3(outCh, outCh));
    this.nin_shortcut = inCh !== outCh ? this.module('nin_shortcut', new Conv2d(inCh, outCh, 1)) : null;
  }

  forward(x: Tensor): Tensor {
    return tidy(() => {
      const h = this.conv1.forward(this.norm1.forward(x, true));
      const skip = this.nin_shortcut ? this.nin_shortcut.forward(x) : x;
      return this.conv2.forward(this.norm2.forward(h, true), { residual: skip });
    });
  }
}

/**
 * Single-head self-attention over the H·W positions with 1x1-conv projections (q, k, v,
 * proj_out), scale C^-1/2, added to the input. The projections run as matmuls on [B, HW, C]
 * rows (a 1x1 conv is one), so the layout changes once on the way in and once on the way out.
 */
export class AttnBlock extends Module {
  readonly norm: GroupNorm;
  readonly q: Conv2d;
  readonly k: Conv2d;
  readonly v: Conv2d;
  readonly proj_out: Conv2d;

  constructor(readonly channels: number) {
    super();
    this.norm = this.module('norm', norm(channels));
    [this.q, this.k, this.v, this.proj_out] = (['q', 'k', 'v', 'proj_out'] as const).map((n) => this.module(n, new Conv2d(channels, channels, 1)));
  }

  forward(x: Tensor): Tensor {
    return tidy(() => {
      const [b, c, h, w] = x.shape;
      const l = h * w;
      const rows = permute(reshape(this.norm.forward(x), [b, c, l]), [0, 2, 1]);
      const [q, k, v] = [this.q, this.k, this.v].map((p) => linear(rows, reshape(p.weight, [c, c]), p.bias ?? undefined));
      const head = (t: Tensor) => reshape(t, [b, 1, l, c]);
      const a = c <= FUSED_MAX_DIM && c % 4 === 0
        ? reshape(attention(head(q), head(k), head(v)), [b, l, c])
        : matmul(softmax(mulScalar(matmul(q, k, { transB: true }), c ** -0.5), -1), v);
      return this.proj_out.forward(reshape(permute(a, [0, 2, 1]), [b, c, h, w]), { residual: x });
    });
  }
}

/** Zero pad (0, 1, 0, 1) then a stride-2 3x3 conv, fused into the conv's asymmetric padding. */
class Downsample extends Module {
  readonly conv: Conv2d;
  constructor(ch: number) {
    super();
    this.conv = this.module('conv', new Conv2d(ch, ch, 3, { stride: 2, padding: [0, 1, 0, 1] }));
  }
  forward(x: Tensor): Tensor {
    return this.conv.forward(x);
  }
}

class Upsample extends Module {
  readonly conv: Conv2d;
  constructor(ch: number) {
    super();
    this.conv = this.module('conv', conv3(ch, ch));
  }
  forward(x: Tensor): Tensor {
    return tidy(() => this.conv.forward(upsampleNearest2x(x)));
  }
}

/** One resolution level: `res` blocks, as many `attn` blocks at the lowest level, then the resampler. */
class ConvBlock extends Module {
  readonly res: ModuleList<ResnetBlock>;
  readonly attn: ModuleList<AttnBlock>;
  readonly resample: Downsample | Upsample | null;

  constructor(inCh: number, outCh: number, blocks: number, withAttn: boolean, resample: 'downsample' | 'upsample' | null) {
    super();
    this.res = this.module('res', new ModuleList(Array.from({ length: blocks }, (_, i) => new ResnetBlock(i === 0 ? inCh : outCh, outCh))));
    this.attn = this.module('attn', new ModuleList(withAttn ? Array.from({ length: blocks }, () => new AttnBlock(outCh)) : []));
    this.resample = resample ? this.module(resample, resample === 'downsample' ? new Downsample(outCh) : new Upsample(outCh)) : null;
  }

  forward(x: Tensor): Tensor {
    let h = this.res.items[0].forward(x);
    this.res.items.forEach((r, i) => {
      if (i > 0) h = step(h, (t) => r.forward(t));
      if (this.attn.items.length) h = step(h, (t) => this.attn.items[i].forward(t));
    });
    return this.resample ? step(h, (t) => this.resample!.forward(t)) : h;
  }
}

/** mid.0 resnet, mid.1 attention, mid.2 resnet. */
const midBlocks = (ch: number) => new ModuleList<ResnetBlock | AttnBlock>([new ResnetBlock(ch, ch), new AttnBlock(ch), new ResnetBlock(ch, ch)]);

/** norm_out, swish, conv_out. */
function tail(h: Tensor, normOut: GroupNorm, convOut: Conv2d): Tensor {
  return tidy(() => convOut.forward(normOut.forward(h, true)));
}

class Encoder extends Module {
  readonly conv_in: Conv2d;
  readonly conv_blocks: ModuleList<ConvBlock>;
  readonly mid: ModuleList<ResnetBlock | AttnBlock>;
  readonly norm_out: GroupNorm;
  readonly conv_out: Conv2d;

  constructor(c: VQConfig) {
    super();
    const mult = c.encoderChMult;
    const last = mult.length - 1;
    this.conv_in = this.module('conv_in', conv3(3, c.ch));
    this.conv_blocks = this.module('conv_blocks', new ModuleList(mult.map((m, i) =>
      new ConvBlock(c.ch * (i === 0 ? 1 : mult[i - 1]), c.ch * m, c.numResBlocks, i === last, i === last ? null : 'downsample'))));
    const top = c.ch * mult[last];
    this.mid = this.module('mid', midBlocks(top));
    this.norm_out = this.module('norm_out', norm(top));
    this.conv_out = this.module('conv_out', conv3(top, c.zChannels));
  }

  forward(x: Tensor): Tensor {
    let h = this.conv_in.forward(x);
    for (const b of [...this.conv_blocks.items, ...this.mid.items]) h = step(h, (t) => b.forward(t));
    return step(h, (t) => tail(t, this.norm_out, this.conv_out));
  }
}

class Decoder extends Module {
  readonly conv_in: Conv2d;
  readonly mid: ModuleList<ResnetBlock | AttnBlock>;
  readonly conv_blocks: ModuleList<ConvBlock>;
  readonly norm_out: GroupNorm;
  readonly conv_out: Conv2d;

  constructor(c: VQConfig) {
    super();
    const mult = c.decoderChMult;
    const last = mult.length - 1;
    const top = c.ch * mult[last];
    this.conv_in = this.module('conv_in', conv3(c.zChannels, top));
    this.mid = this.module('mid', midBlocks(top));
    // from the lowest resolution up: conv_blocks.0 is level `last`
    const levels = mult.map((_, i) => last - i);
    this.conv_blocks = this.module('conv_blocks', new ModuleList(levels.map((lv) =>
      new ConvBlock(c.ch * mult[Math.min(lv + 1, last)], c.ch * mult[lv], c.numResBlocks + 1, lv === last, lv === 0 ? null : 'upsample'))));
    this.norm_out = this.module('norm_out', norm(c.ch * mult[0]));
    this.conv_out = this.module('conv_out', conv3(c.ch * mult[0], 3));
  }

  forward(z: Tensor): Tensor {
    let h = this.conv_in.forward(z);
    for (const b of [...this.mid.items, ...this.conv_blocks.items]) h = step(h, (t) => b.forward(t));
    return step(h, (t) => tail(t, this.norm_out, this.conv_out));
  }
}

/** `quantize.embedding.weight` [K, C]: U(±1/K) then l2-normalised rows, as LlamaGen initialises it. */
class CodebookEmbedding extends Module {
  readonly weight: Tensor;
  constructor(n: number, dim: number) {
    super();
    this.weight = this.param('weight', [n, dim], (shape, dtype) =>
      tidy(() => l2Normalize(rand(shape, { low: -1 / n, high: 1 / n, dtype, generator: buildOptions().generator }), 1)));
  }
}

class VectorQuantizer extends Module {
  readonly embedding: CodebookEmbedding;
  constructor(c: VQConfig) {
    super();
    this.embedding = this.module('embedding', new CodebookEmbedding(c.codebookSize, c.codebookEmbedDim));
  }
}

/** The quantiser's training losses (LlamaGen computes them in training mode; here always). */
export interface VQLosses {
  /** mean((z_q - sg(z))²) over the l2-normalised features: trains the codebook */
  vqLoss: Tensor;
  /** commit_loss_beta · mean((sg(z_q) - z)²): trains the encoder */
  commitLoss: Tensor;
  /** entropy_loss_ratio · (sample entropy - entropy of the mean assignment), when the ratio > 0 */
  entropyLoss?: Tensor;
}

export interface VQEncoded {
  /** quant_conv(encoder(x)) [B, C, h, w], before normalisation and quantisation */
  h: Tensor;
  /** the codes' (normalised) vectors [B, C, h, w]; the gradient reaches h straight through */
  quant: Tensor;
  /** i32 [B, h, w] */
  indices: Tensor;
  losses: VQLosses;
}

export class VQModel extends Module {
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  readonly quantize: VectorQuantizer;
  readonly quant_conv: Conv2d;
  readonly post_quant_conv: Conv2d;

  constructor(readonly config: VQConfig) {
    super();
    this.encoder = this.module('encoder', new Encoder(config));
    this.decoder = this.module('decoder', new Decoder(config));
    this.quantize = this.module('quantize', new VectorQuantizer(config));
    this.quant_conv = this.module('quant_conv', new Conv2d(config.zChannels, config.codebookEmbedDim, 1));
    this.post_quant_conv = this.module('post_quant_conv', new Conv2d(config.codebookEmbedDim, config.zChannels, 1));
  }

  /** The l2-normalised codebook rows are what the codes mean; this is the raw parameter [K, C]. */
  get codebook(): Tensor {
    return this.quantize.embedding.weight;
  }

  /** x: NCHW images in [-1, 1]. */
  encode(x: Tensor): VQEncoded {
    if (x.rank !== 4 || x.shape[1] !== 3) throw new Error(`VQModel.encode: x must be images [B, 3, H, W] in [-1, 1], got [${x.shape.join(', ')}]`);
    return tidy(() => {
      const h = step(this.encoder.forward(x), (t) => this.quant_conv.forward(t));
      const q = quantize(h, this.codebook, { beta: this.config.commitLossBeta, entropyWeight: this.config.entropyLossRatio });
      const losses: VQLosses = { vqLoss: q.vqLoss, commitLoss: q.commitLoss };
      if (q.entropyLoss) losses.entropyLoss = q.entropyLoss;
      return { h, quant: q.zq, indices: q.indices, losses };
    });
  }

  /** quant [B, C, h, w] -> images [B, 3, H, W] in about [-1, 1]. */
  decode(quant: Tensor): Tensor {
    return tidy(() => this.decoder.forward(this.post_quant_conv.forward(quant)));
  }

  /**
   * Images from code ids: i32 [B, h, w], or LlamaGen's flat ids [B·h·w] / [B, h·w] with `shape`
   * = the quantised features' [B, C, h, w] (decode_code with channel_first).
   */
  decodeCode(indices: Tensor, shape?: readonly number[]): Tensor {
    let grid = indices.shape;
    if (shape) {
      if (shape.length !== 4 || shape[1] !== this.config.codebookEmbedDim || shape[0] * shape[2] * shape[3] !== indices.size)
        throw new Error(`VQModel.decodeCode: shape [${shape.join(', ')}] must be [B, ${this.config.codebookEmbedDim}, h, w] with B·h·w = ${indices.size} ids`);
      grid = [shape[0], shape[2], shape[3]];
    } else if (indices.rank !== 3) throw new Error(`VQModel.decodeCode: indices [${indices.shape.join(', ')}] must be [B, h, w] (or pass shape [B, C, h, w])`);
    return tidy(() => this.decode(lookup(reshape(indices, grid), this.codebook)));
  }

  /** LlamaGen's VQModel.forward: the reconstruction and the quantiser's losses. */
  forward(x: Tensor): { dec: Tensor; losses: VQLosses } {
    return tidy(() => {
      const e = this.encode(x);
      return { dec: this.decode(e.quant), losses: e.losses };
    });
  }
}

/**
 * LlamaGen's codebook usage statistic (VectorQuantizer with show_usage, in training): a window
 * of the last 65536 code ids, starting as zeros, and the fraction of the codebook it holds.
 * Host-side: give it the indices of each training step (one readback).
 */
export class CodebookUsage {
  private readonly used: Int32Array;
  private readonly seen: Uint8Array;

  constructor(readonly codebookSize: number, window = 65536) {
    this.used = new Int32Array(window);
    this.seen = new Uint8Array(codebookSize);
  }

  /** Shifts `indices` into the window; returns the fraction of codes present in it. */
  update(indices: ArrayLike<number>): number {
    const n = Math.min(indices.length, this.used.length);
    this.used.copyWithin(0, n);
    const start = indices.length - n;
    for (let i = 0; i < n; i++) this.used[this.used.length - n + i] = indices[start + i];
    this.seen.fill(0);
    let count = 0;
    for (const id of this.used) {
      if (id < 0 || id >= this.codebookSize) throw new Error(`CodebookUsage: code id ${id} is outside [0, ${this.codebookSize})`);
      if (!this.seen[id]) {
        this.seen[id] = 1;
        count++;
      }
    }
    return count / this.codebookSize;
  }
}

/**
 * checkpoint names -> module names: LlamaGen's state dicts also hold the show_usage buffer
 * `quantize.codebook_used` (no parameter; CodebookUsage keeps that statistic on the host).
 */
const renameKey = (key: string): string | null => (key === 'quantize.codebook_used' ? null : key);

export const vqKind: ModelKind<VQConfig, VQModel> = {
  kind: 'vq',
  classNames: ['VQModel'],
  parseConfig: (json, where) => parseVQConfig(json, where),
  toJson: vqConfigJson,
  build: (c) => new VQModel(c),
  renameKey,
  ptPrefix: ['ema.', 'model.'], // LlamaGen's vq_demo prefers the EMA weights when a checkpoint has them
  inputs: { sample: 'images [B, 3, H, W] in [-1, 1] (H, W multiples of the downsampling factor: 16 for VQ-16)' },
  forward(model, inputs) {
    const x = inputs.sample;
    if (!x) throw new Error("vq forward: missing input 'sample'");
    return tidy(() => {
      const e = model.encode(x);
      return { h: e.h, quant: e.quant, indices: e.indices, dec: model.decode(e.quant) };
    });
  },
};

/** A model folder's VQ tokenizer (config.json + model.safetensors or a LlamaGen .pt), loaded. */
export const loadVQModel = async (files: ModelFiles, o: LoadOptions = {}): Promise<VQModel> => (await loadModel(files, vqKind, o)).model;
