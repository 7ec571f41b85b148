// The diffusers (v0.21) building blocks the AutoencoderKL, UNet2DConditionModel and ControlNet
// graphs are made of, with diffusers' state-dict names so checkpoints load by name: ResnetBlock2D,
// Downsample2D, Upsample2D (models/resnet.py), Attention with AttnProcessor semantics
// (models/attention_processor.py), FeedForward/GEGLU and BasicTransformerBlock
// (models/attention.py), Transformer2DModel over continuous NCHW input (models/transformer_2d.py),
// TimestepEmbedding and Timesteps (models/embeddings.py). Dropout is omitted (inference and
// deterministic training). Every op used has a backward, so the whole graph trains.
import {
  Linear, Module, ModuleList, type Tensor, type WeightSource, add, attention, cast, concat, geglu, linear, matmul,
  mean, mulScalar, permute, reshape, silu, slice, softmax, tidy, timestepEmbedding, transpose, upsampleNearest2x,
} from '../runtime/index.ts';
import { Conv2d, GroupNorm, LayerNorm, mergeHeads, splitHeads } from './layers.ts';

/** Replaces `h` by f(h), freeing the old handle (autograd keeps whatever backward needs). */
export function step(h: Tensor, f: (t: Tensor) => Tensor): Tensor {
  const y = f(h);
  h.dispose();
  return y;
}

/** [B, C, H, W] -> [B, H·W, C] token rows. */
export const toTokens = (x: Tensor): Tensor => {
  const [b, c, h, w] = x.shape;
  return permute(reshape(x, [b, c, h * w]), [0, 2, 1]);
};

/** [B, H·W, C] token rows -> [B, C, H, W]. */
export const fromTokens = (x: Tensor, h: number, w: number): Tensor => {
  const [b, l, c] = x.shape;
  if (l !== h * w) throw new Error(`fromTokens: ${l} tokens do not form a ${h}x${w} grid`);
  return reshape(permute(x, [0, 2, 1]), [b, c, h, w]);
};

export interface ResnetBlock2DOptions {
  inChannels: number;
  outChannels?: number;
  /** width of the timestep embedding added after conv1 (null: no time_emb_proj) */
  tembChannels: number | null;
  groups?: number;
  groupsOut?: number;
  eps?: number;
  outputScaleFactor?: number;
  /** diffusers' use_in_shortcut: a 1x1 conv_shortcut on the skip path (default: when in != out) */
  convShortcut?: boolean;
}

/** diffusers ResnetBlock2D (time_embedding_norm "default", swish): GroupNorm+SiLU, conv, +temb, GroupNorm+SiLU, conv, + skip. */
export class ResnetBlock2D extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly time_emb_proj: Linear | null;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  readonly conv_shortcut: Conv2d | null;
  readonly outputScaleFactor: number;

  constructor(o: ResnetBlock2DOptions) {
    super();
    const out = o.outChannels ?? o.inChannels;
    const groups = o.groups ?? 32;
    const eps = o.eps ?? 1e-6;
    this.outputScaleFactor = o.outputScaleFactor ?? 1;
    this.norm1 = this.module('norm1', new GroupNorm(groups, o.inChannels, eps));
    this.conv1 = this.module('conv1', new Conv2d(o.inChannels, out, 3, { padding: 1 }));
    this.time_emb_proj = o.tembChannels !== null ? this.module('time_emb_proj', new Linear(o.tembChannels, out)) : null;
    this.norm2 = this.module('norm2', new GroupNorm(o.groupsOut ?? groups, out, eps));
    this.conv2 = this.module('conv2', new Conv2d(out, out, 3, { padding: 1 }));
    const shortcut = o.convShortcut ?? o.inChannels !== out;
    this.conv_shortcut = shortcut ? this.module('conv_shortcut', new Conv2d(o.inChannels, out, 1)) : null;
  }

  /** x [B, C, H, W]; temb [B, tembChannels] (required exactly when the block has time_emb_proj). */
  forward(x: Tensor, temb?: Tensor | null): Tensor {
    if (!this.time_emb_proj !== !temb)
      throw new Error(`ResnetBlock2D: temb ${temb ? `[${temb.shape}] given to a block without` : 'missing for a block with'} time_emb_proj`);
    return tidy(() => {
      let h = this.conv1.forward(this.norm1.forward(x, true));
      if (this.time_emb_proj && temb) {
        const t = this.time_emb_proj.forward(silu(temb));
        h = step(h, (v) => add(v, reshape(t, [t.shape[0], t.shape[1], 1, 1])));
      }
      const skip = this.conv_shortcut ? this.conv_shortcut.forward(x) : x;
      const y = this.conv2.forward(this.norm2.forward(h, true), { residual: skip });
      return this.outputScaleFactor === 1 ? y : mulScalar(y, 1 / this.outputScaleFactor);
    });
  }
}

export interface Downsample2DOptions {
  /** a stride-2 3x3 `conv` (default); false: 2x2 average pooling, no parameters */
  useConv?: boolean;
  outChannels?: number;
  /** the conv's padding; 0 means diffusers' asymmetric (0, 1, 0, 1) zero pad */
  padding?: number;
}

/** diffusers Downsample2D. */
export class Downsample2D extends Module {
  readonly conv: Conv2d | null;

  constructor(readonly channels: number, o: Downsample2DOptions = {}) {
    super();
    const out = o.outChannels ?? channels;
    if (o.useConv === false) {
      if (out !== channels) throw new Error(`Downsample2D: average pooling cannot change ${channels} channels to ${out}`);
      this.conv = null;
    } else {
      const p = o.padding ?? 1;
      this.conv = this.module('conv', new Conv2d(channels, out, 3, { stride: 2, padding: p === 0 ? [0, 1, 0, 1] : p }));
    }
  }

  forward(x: Tensor): Tensor {
    if (x.shape[1] !== this.channels) throw new Error(`Downsample2D: input has ${x.shape[1]} channels, expected ${this.channels}`);
    if (this.conv) return this.conv.forward(x);
    const [n, c, h, w] = x.shape;
    if (h % 2 || w % 2) throw new Error(`Downsample2D: average pooling needs even height and width, got ${h}x${w}`);
    return tidy(() => mean(reshape(x, [n, c, h / 2, 2, w / 2, 2]), [3, 5]));
  }
}

/** diffusers Upsample2D: nearest 2x, then (useConv, default) a 3x3 `conv`. */
export class Upsample2D extends Module {
  readonly conv: Conv2d | null;

  constructor(readonly channels: number, o: { useConv?: boolean; outChannels?: number } = {}) {
    super();
    const out = o.outChannels ?? channels;
    if (o.useConv === false && out !== channels) throw new Error(`Upsample2D: without a conv, ${channels} channels cannot become ${out}`);
    this.conv = o.useConv === false ? null : this.module('conv', new Conv2d(channels, out, 3, { padding: 1 }));
  }

  forward(x: Tensor): Tensor {
    if (x.shape[1] !== this.channels) throw new Error(`Upsample2D: input has ${x.shape[1]} channels, expected ${this.channels}`);
    if (!this.conv) return upsampleNearest2x(x);
    return tidy(() => this.conv!.forward(upsampleNearest2x(x)));
  }
}

// attention()'s fused kernel takes head dims that are multiples of 4 up to 256; other heads
// (the VAE's single 512-wide head) use explicit scores, a chunk of queries at a time so one
// score block stays within 2^24 elements (64 MiB in f32, under the 128 MiB binding limit).
const FUSED_MAX_HEAD_DIM = 256;
const MAX_SCORE_ELEMENTS = 2 ** 24;

/** softmax(q kᵀ / √d) v for q [B, H, L, d], k and v [B, H, S, d]. */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor): Tensor {
  const [b, heads, l, d] = q.shape;
  if (d % 4 === 0 && d <= FUSED_MAX_HEAD_DIM) return attention(q, k, v);
  return tidy(() => {
    const s = k.shape[2];
    const rows = Math.max(1, Math.floor(MAX_SCORE_ELEMENTS / (b * heads * s)));
    const qs = mulScalar(q, d ** -0.5);
    const parts: Tensor[] = [];
    for (let i = 0; i < l; i += rows) {
      const qc = l <= rows ? qs : slice(qs, 2, i, i + rows);
      parts.push(matmul(softmax(matmul(qc, k, { transB: true }), -1), v));
    }
    return parts.length === 1 ? parts[0] : concat(parts, 2);
  });
}

export interface AttentionOptions {
  queryDim: number;
  /** width of encoder_hidden_states (default: queryDim, self-attention) */
  crossAttentionDim?: number | null;
  heads: number;
  dimHead: number;
  /** bias of to_q, to_k, to_v */
  bias?: boolean;
  outBias?: boolean;
  /** adds the input to the output (the VAE mid block) */
  residualConnection?: boolean;
  /** a GroupNorm `group_norm` over the query input's channels */
  normNumGroups?: number | null;
  /** group_norm's eps (diffusers' default 1e-5) */
  eps?: number;
  rescaleOutputFactor?: number;
}

/**
 * diffusers Attention with AttnProcessor semantics: optional group_norm, to_q / to_k / to_v,
 * scaled dot-product attention over `heads` heads of `dimHead`, to_out.0, then the residual
 * and the output rescale. Input [B, L, C] tokens or [B, C, H, W] (attended over H·W, returned NCHW).
 */
export class Attention extends Module {
  readonly group_norm: GroupNorm | null;
  readonly to_q: Linear;
  readonly to_k: Linear;
  readonly to_v: Linear;
  readonly to_out: ModuleList<Linear>;
  readonly heads: number;
  readonly residualConnection: boolean;
  readonly rescaleOutputFactor: number;

  constructor(o: AttentionOptions) {
    super();
    const inner = o.heads * o.dimHead;
    const bias = o.bias ?? false;
    const cross = o.crossAttentionDim ?? o.queryDim;
    this.heads = o.heads;
    this.residualConnection = o.residualConnection ?? false;
    this.rescaleOutputFactor = o.rescaleOutputFactor ?? 1;
    this.group_norm = o.normNumGroups != null ? this.module('group_norm', new GroupNorm(o.normNumGroups, o.queryDim, o.eps ?? 1e-5)) : null;
    this.to_q = this.module('to_q', new Linear(o.queryDim, inner, { bias }));
    this.to_k = this.module('to_k', new Linear(cross, inner, { bias }));
    this.to_v = this.module('to_v', new Linear(cross, inner, { bias }));
    this.to_out = this.module('to_out', new ModuleList([new Linear(inner, o.queryDim, { bias: o.outBias ?? true })]));
  }

  forward(hidden: Tensor, encoderHiddenStates?: Tensor | null): Tensor {
    if (hidden.rank !== 4 && hidden.rank !== 3) throw new Error(`Attention: hidden states must be [B, L, C] or [B, C, H, W], got [${hidden.shape}]`);
    return tidy(() => {
      const nchw = hidden.rank === 4;
      const gn = this.group_norm;
      let x: Tensor;
      if (nchw) x = toTokens(gn ? gn.forward(hidden) : hidden);
      else x = gn ? transpose(gn.forward(transpose(hidden, 1, 2)), 1, 2) : hidden;
      const ctx = encoderHiddenStates ?? x;
      const o = scaledDotProductAttention(
        splitHeads(this.to_q.forward(x), this.heads), splitHeads(this.to_k.forward(ctx), this.heads), splitHeads(this.to_v.forward(ctx), this.heads));
      let y = this.to_out.items[0].forward(mergeHeads(o));
      if (nchw) y = fromTokens(y, hidden.shape[2], hidden.shape[3]);
      if (this.residualConnection) y = add(y, hidden);
      return this.rescaleOutputFactor === 1 ? y : mulScalar(y, 1 / this.rescaleOutputFactor);
    });
  }
}

/** GEGLU: proj to 2·inner, then hidden · gelu(gate) (the halves in that order). */
class GEGLU extends Module {
  readonly proj: Linear;
  constructor(dimIn: number, dimOut: number) {
    super();
    this.proj = this.module('proj', new Linear(dimIn, dimOut * 2));
  }
  forward(x: Tensor): Tensor {
    return tidy(() => geglu(this.proj.forward(x)));
  }
}

/** FeedForward's `net`: 0 = GEGLU, 1 = dropout (no parameters, omitted), 2 = the output Linear. */
class FeedForwardNet extends Module {
  readonly act: GEGLU;
  readonly out: Linear;
  constructor(dim: number, inner: number, dimOut: number) {
    super();
    this.act = this.module('0', new GEGLU(dim, inner));
    this.out = this.module('2', new Linear(inner, dimOut));
  }
}

/** diffusers FeedForward with activation_fn "geglu": net.0.proj, net.2. */
export class FeedForward extends Module {
  readonly net: FeedForwardNet;
  constructor(dim: number, o: { mult?: number; dimOut?: number; activation?: 'geglu' } = {}) {
    super();
    this.net = this.module('net', new FeedForwardNet(dim, Math.trunc(dim * (o.mult ?? 4)), o.dimOut ?? dim));
  }
  forward(x: Tensor): Tensor {
    return tidy(() => this.net.out.forward(this.net.act.forward(x)));
  }
}

export interface BasicTransformerBlockOptions {
  /** width of encoder_hidden_states; null: no attn2 / norm2 */
  crossAttentionDim?: number | null;
  /** attn1 attends to encoder_hidden_states instead of itself */
  onlyCrossAttention?: boolean;
  /** bias of the q/k/v projections */
  attentionBias?: boolean;
  /** accepted for config parity: the attention kernels accumulate in f32 already */
  upcastAttention?: boolean;
  normType?: 'layer_norm';
}

/** diffusers BasicTransformerBlock (layer_norm, geglu): self-attention, cross-attention, feed-forward, each pre-norm + residual. */
export class BasicTransformerBlock extends Module {
  readonly norm1: LayerNorm;
  readonly attn1: Attention;
  readonly norm2: LayerNorm | null;
  readonly attn2: Attention | null;
  readonly norm3: LayerNorm;
  readonly ff: FeedForward;
  readonly onlyCrossAttention: boolean;

  constructor(dim: number, heads: number, dimHead: number, o: BasicTransformerBlockOptions = {}) {
    super();
    const cross = o.crossAttentionDim ?? null;
    const bias = o.attentionBias ?? false;
    this.onlyCrossAttention = o.onlyCrossAttention ?? false;
    this.norm1 = this.module('norm1', new LayerNorm(dim));
    this.attn1 = this.module('attn1', new Attention({ queryDim: dim, heads, dimHead, bias, crossAttentionDim: this.onlyCrossAttention ? cross : null }));
    this.norm2 = cross !== null ? this.module('norm2', new LayerNorm(dim)) : null;
    this.attn2 = cross !== null ? this.module('attn2', new Attention({ queryDim: dim, heads, dimHead, bias, crossAttentionDim: cross })) : null;
    this.norm3 = this.module('norm3', new LayerNorm(dim));
    this.ff = this.module('ff', new FeedForward(dim));
  }

  /** x [B, L, dim]; encoderHiddenStates [B, S, crossAttentionDim] (without it, attn2 attends to itself, as diffusers). */
  forward(x: Tensor, encoderHiddenStates?: Tensor | null): Tensor {
    return tidy(() => {
      let h = add(this.attn1.forward(this.norm1.forward(x), this.onlyCrossAttention ? encoderHiddenStates : null), x);
      if (this.attn2 && this.norm2) h = step(h, (v) => add(this.attn2!.forward(this.norm2!.forward(v), encoderHiddenStates), v));
      return step(h, (v) => add(this.ff.forward(this.norm3.forward(v)), v));
    });
  }
}

export interface Transformer2DModelOptions {
  numAttentionHeads: number;
  attentionHeadDim: number;
  inChannels: number;
  numLayers?: number;
  crossAttentionDim?: number | null;
  normNumGroups?: number;
  /** Linear proj_in / proj_out on tokens (SDXL) instead of 1x1 convs */
  useLinearProjection?: boolean;
  onlyCrossAttention?: boolean;
  upcastAttention?: boolean;
  attentionBias?: boolean;
}

/** diffusers Transformer2DModel over continuous input: GroupNorm(eps 1e-6), proj_in, blocks, proj_out, + input. */
export class Transformer2DModel extends Module {
  readonly norm: GroupNorm;
  readonly proj_in: Linear | Conv2d;
  readonly transformer_blocks: ModuleList<BasicTransformerBlock>;
  readonly proj_out: Linear | Conv2d;

  constructor(o: Transformer2DModelOptions) {
    super();
    const inner = o.numAttentionHeads * o.attentionHeadDim;
    const lin = o.useLinearProjection ?? false;
    this.norm = this.module('norm', new GroupNorm(o.normNumGroups ?? 32, o.inChannels, 1e-6));
    this.proj_in = this.module('proj_in', lin ? new Linear(o.inChannels, inner) : new Conv2d(o.inChannels, inner, 1));
    this.transformer_blocks = this.module('transformer_blocks', new ModuleList(Array.from({ length: o.numLayers ?? 1 }, () =>
      new BasicTransformerBlock(inner, o.numAttentionHeads, o.attentionHeadDim, {
        crossAttentionDim: o.crossAttentionDim, onlyCrossAttention: o.onlyCrossAttention, upcastAttention: o.upcastAttention, attentionBias: o.attentionBias,
      }))));
    this.proj_out = this.module('proj_out', lin ? new Linear(inner, o.inChannels) : new Conv2d(inner, o.inChannels, 1));
  }

  /** x [B, C, H, W]; encoderHiddenStates [B, S, crossAttentionDim]. Returns [B, C, H, W]. */
  forward(x: Tensor, encoderHiddenStates?: Tensor | null): Tensor {
    return tidy(() => {
      const [, , hh, ww] = x.shape;
      const n = this.norm.forward(x);
      let h = this.proj_in instanceof Conv2d ? toTokens(this.proj_in.forward(n)) : this.proj_in.forward(toTokens(n));
      for (const b of this.transformer_blocks.items) h = step(h, (v) => b.forward(v, encoderHiddenStates));
      if (this.proj_out instanceof Conv2d) return this.proj_out.forward(fromTokens(h, hh, ww), { residual: x });
      return add(fromTokens(this.proj_out.forward(h), hh, ww), x);
    });
  }
}

/** diffusers TimestepEmbedding (act silu): linear_1, SiLU, linear_2. */
export class TimestepEmbedding extends Module {
  readonly linear_1: Linear;
  readonly linear_2: Linear;

  constructor(inChannels: number, timeEmbedDim: number, o: { outDim?: number; act?: 'silu' } = {}) {
    super();
    this.linear_1 = this.module('linear_1', new Linear(inChannels, timeEmbedDim));
    this.linear_2 = this.module('linear_2', new Linear(timeEmbedDim, o.outDim ?? timeEmbedDim));
  }

  /** sample [B, inChannels] (cast to the weights' dtype). */
  forward(sample: Tensor): Tensor {
    return tidy(() => {
      const w = this.linear_1.weight;
      const x = sample.dtype === w.dtype ? sample : cast(sample, w.dtype);
      return this.linear_2.forward(linear(x, w, this.linear_1.bias ?? undefined, 'silu'));
    });
  }
}

/** diffusers Timesteps: sinusoidal embeddings [N, numChannels] (f32) of timesteps [N]; no parameters. */
export class Timesteps {
  constructor(readonly numChannels: number, readonly flipSinToCos: boolean, readonly downscaleFreqShift: number) {}

  forward(timesteps: Tensor): Tensor {
    return timestepEmbedding(timesteps, this.numChannels, { flipSinToCos: this.flipSinToCos, downscaleFreqShift: this.downscaleFreqShift });
  }
}

const LEGACY_ATTENTION = /^(.*)\.(query|key|value|proj_attn)\.(weight|bias)$/;
const LEGACY_TARGET: Record<string, string> = { query: 'to_q', key: 'to_k', value: 'to_v', proj_attn: 'to_out.0' };

/**
 * Old diffusers attention-block names (diffusers' _convert_deprecated_attention_blocks):
 * `<path>.query|key|value|proj_attn.<weight|bias>` -> `<path>.to_q|to_k|to_v|to_out.0.<...>`.
 */
export function renameLegacyAttention(key: string): string {
  const m = LEGACY_ATTENTION.exec(key);
  return m ? `${m[1]}.${LEGACY_TARGET[m[2]]}.${m[3]}` : key;
}

/**
 * A weight source with old attention names renamed (renameLegacyAttention) and 1x1-conv-shaped
 * projection weights [out, in, 1, 1] (conversions from the original LDM checkpoints) viewed as
 * the Linear weights [out, in] the module holds.
 */
export function legacyAttentionWeights(src: WeightSource): WeightSource {
  const back = new Map<string, string>();
  for (const k of src.keys()) {
    const n = renameLegacyAttention(k);
    if (back.has(n)) throw new Error(`${src.name}: '${back.get(n)}' and '${k}' both name '${n}'`);
    back.set(n, k);
  }
  const orig = (k: string): string => {
    const o = back.get(k);
    if (o === undefined) throw new Error(`${src.name}: no tensor '${k}'`);
    return o;
  };
  const isProjection = (k: string) => /\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(k);
  const shape = (k: string): number[] => {
    const s = src.shape(orig(k));
    return isProjection(k) && s.length === 4 && s[2] === 1 && s[3] === 1 ? s.slice(0, 2) : s;
  };
  return {
    name: src.name,
    keys: () => [...back.keys()],
    shape,
    async load(k, dtype) {
      const t = await src.load(orig(k), dtype);
      const want = shape(k);
      if (want.length === t.rank) return t;
      const v = t.view(want);
      t.dispose();
      return v;
    },
  };
}
