// The T5 encoder (T5EncoderModel of transformers; flan-t5-xl is 24 layers of d_model 2048,
// 32 heads of 64, gated-GELU FFN of 5120) with transformers' state-dict names, so published
// checkpoints load by name. Written from the T5 paper and the facts of transformers'
// modeling_t5.py: pre-norm residual blocks with RMS layer norms (no mean subtraction, no
// bias, computed in f32), attention without the 1/sqrt(d) scale, one learned bias per head
// and relative-position bucket (table in block 0 only, shared by all layers), padding as an
// additive -inf on the keys, and the tanh GELU ("gelu_new") in the gated FFN.
import {
  Module, buildOptions, ModuleList, type Tensor, type WeightSource, add, affine, attention, cast, device, embedding, geluTanh, isGradEnabled,
  linear, matmul, mul, needsGrad, noGrad, permute, renameWeights, reshape, slice, softmax, tensor, tidy,
} from '../runtime/index.ts';
import { ConfigReader } from './config.ts';
import { Embedding, RMSNorm, mergeHeads, splitHeads } from './layers.ts';
import type { ModelKind } from './registry.ts';
import type { Tokenizer } from './tokenizer.ts';

export type FeedForwardProj = 'gated-gelu' | 'relu';

export interface T5Config {
  vocabSize: number;
  dModel: number;
  dKv: number;
  dFf: number;
  numLayers: number;
  numHeads: number;
  numBuckets: number;
  maxDistance: number;
  eps: number;
  /** 'gated-gelu': wi_0 / wi_1 / wo with the tanh GELU (T5 v1.1, flan); 'relu': wi / wo (original T5) */
  feedForwardProj: FeedForwardProj;
}

/** transformers' T5Config fields with its defaults (unknown fields ignored). */
export function parseT5Config(json: Record<string, unknown>, where = 'config.json'): T5Config {
  const r = new ConfigReader(json, where);
  const c: T5Config = {
    vocabSize: r.int('vocab_size', 32128, 1),
    dModel: r.int('d_model', 512, 1),
    dKv: r.int('d_kv', 64, 1),
    dFf: r.int('d_ff', 2048, 1),
    numLayers: r.int('num_layers', 6, 1),
    numHeads: r.int('num_heads', 8, 1),
    numBuckets: r.int('relative_attention_num_buckets', 32, 4),
    maxDistance: r.int('relative_attention_max_distance', 128, 1),
    eps: r.num('layer_norm_epsilon', 1e-6),
    feedForwardProj: r.str<FeedForwardProj>('feed_forward_proj', 'relu', ['gated-gelu', 'relu']),
  };
  const exact = Math.floor(c.numBuckets / 4);
  if (c.maxDistance <= exact)
    throw new Error(`${where}: "relative_attention_max_distance" (${c.maxDistance}) must exceed relative_attention_num_buckets / 4 (${exact}), where the logarithmic buckets start`);
  return c;
}

export function t5ConfigJson(c: T5Config): Record<string, unknown> {
  return {
    architectures: ['T5EncoderModel'],
    model_type: 't5',
    vocab_size: c.vocabSize,
    d_model: c.dModel,
    d_kv: c.dKv,
    d_ff: c.dFf,
    num_layers: c.numLayers,
    num_heads: c.numHeads,
    relative_attention_num_buckets: c.numBuckets,
    relative_attention_max_distance: c.maxDistance,
    layer_norm_epsilon: c.eps,
    feed_forward_proj: c.feedForwardProj,
  };
}

/**
 * The bidirectional bucket of a relative position rel = key position - query position: half
 * the buckets for keys after the query; in each half, exact distances below a quarter of the
 * buckets, then logarithmic bins up to maxDistance, beyond which all share the last bucket.
 * The logarithm is evaluated in float32 as the reference does (it decides the bin edges).
 */
export function relativePositionBucket(rel: number, numBuckets: number, maxDistance: number): number {
  const half = Math.floor(numBuckets / 2);
  const exact = Math.floor(half / 2);
  const base = rel > 0 ? half : 0;
  const n = Math.abs(rel);
  if (n < exact) return base + n;
  const f = Math.fround;
  const scaled = f(f(f(Math.log(f(n / exact))) / f(Math.log(maxDistance / exact))) * (half - exact));
  return base + Math.min(exact + Math.trunc(scaled), half - 1);
}

/** A bias-free linear layer with T5's N(0, std²) init (transformers' _init_weights). */
class Dense extends Module {
  readonly weight: Tensor;
  constructor(inFeatures: number, outFeatures: number, std: number) {
    super();
    this.weight = this.param('weight', [outFeatures, inFeatures], { normal: std });
  }
  forward(x: Tensor, act: 'none' | 'relu' = 'none'): Tensor {
    return linear(x, this.weight, undefined, act);
  }
}

/** How one forward pass applies the position bias and the padding (shared by every layer). */
type AttentionBias =
  | { fused: true; mask: Tensor; keyPadding?: Tensor }
  /** bias + padding as one additive [B|1, H, L, L] tensor, for the differentiable path */
  | { fused: false; bias: Tensor };

class T5Attention extends Module {
  readonly q: Dense;
  readonly k: Dense;
  readonly v: Dense;
  readonly o: Dense;
  readonly relative_attention_bias: Embedding | null;

  constructor(readonly c: T5Config, hasBias: boolean) {
    super();
    const inner = c.numHeads * c.dKv;
    this.q = this.module('q', new Dense(c.dModel, inner, (c.dModel * c.dKv) ** -0.5));
    this.k = this.module('k', new Dense(c.dModel, inner, c.dModel ** -0.5));
    this.v = this.module('v', new Dense(c.dModel, inner, c.dModel ** -0.5));
    this.o = this.module('o', new Dense(inner, c.dModel, inner ** -0.5));
    this.relative_attention_bias = hasBias ? this.module('relative_attention_bias', new Embedding(c.numBuckets, c.numHeads, c.dModel ** -0.5)) : null;
  }

  forward(x: Tensor, ab: AttentionBias): Tensor {
    const h = this.c.numHeads;
    const [q, k, v] = [this.q, this.k, this.v].map((p) => splitHeads(p.forward(x), h));
    // T5 folds the 1/sqrt(d) into its init, so the scores are not scaled
    const a = ab.fused
      ? attention(q, k, v, { scale: 1, mask: ab.mask, keyPadding: ab.keyPadding })
      : matmul(softmax(add(matmul(q, k, { transB: true }), ab.bias)), v);
    return this.o.forward(mergeHeads(a));
  }
}

class T5LayerSelfAttention extends Module {
  readonly SelfAttention: T5Attention;
  readonly layer_norm: RMSNorm;
  constructor(c: T5Config, hasBias: boolean) {
    super();
    this.SelfAttention = this.module('SelfAttention', new T5Attention(c, hasBias));
    this.layer_norm = this.module('layer_norm', new RMSNorm(c.dModel, c.eps));
  }
  forward(x: Tensor, ab: AttentionBias): Tensor {
    return add(x, this.SelfAttention.forward(this.layer_norm.forward(x), ab));
  }
}

class T5DenseReluDense extends Module {
  readonly wi_0: Dense | null = null;
  readonly wi_1: Dense | null = null;
  readonly wi: Dense | null = null;
  readonly wo: Dense;
  constructor(c: T5Config) {
    super();
    const std = c.dModel ** -0.5;
    if (c.feedForwardProj === 'gated-gelu') {
      this.wi_0 = this.module('wi_0', new Dense(c.dModel, c.dFf, std));
      this.wi_1 = this.module('wi_1', new Dense(c.dModel, c.dFf, std));
    } else this.wi = this.module('wi', new Dense(c.dModel, c.dFf, std));
    this.wo = this.module('wo', new Dense(c.dFf, c.dModel, c.dFf ** -0.5));
  }
  forward(x: Tensor): Tensor {
    const hidden = this.wi ? this.wi.forward(x, 'relu') : mul(geluTanh(this.wi_0!.forward(x)), this.wi_1!.forward(x));
    return this.wo.forward(hidden);
  }
}

class T5LayerFF extends Module {
  readonly DenseReluDense: T5DenseReluDense;
  readonly layer_norm: RMSNorm;
  constructor(c: T5Config) {
    super();
    this.DenseReluDense = this.module('DenseReluDense', new T5DenseReluDense(c));
    this.layer_norm = this.module('layer_norm', new RMSNorm(c.dModel, c.eps));
  }
  forward(x: Tensor): Tensor {
    return add(x, this.DenseReluDense.forward(this.layer_norm.forward(x)));
  }
}

class T5Block extends Module {
  readonly attn: T5LayerSelfAttention;
  readonly ff: T5LayerFF;
  constructor(c: T5Config, hasBias: boolean) {
    super();
    this.attn = new T5LayerSelfAttention(c, hasBias);
    this.ff = new T5LayerFF(c);
    this.module('layer', new ModuleList([this.attn, this.ff]));
  }
  forward(x: Tensor, ab: AttentionBias): Tensor {
    return this.ff.forward(this.attn.forward(x, ab));
  }
}

class T5Stack extends Module {
  readonly block: ModuleList<T5Block>;
  readonly final_layer_norm: RMSNorm;
  constructor(readonly c: T5Config) {
    super();
    this.block = this.module('block', new ModuleList(Array.from({ length: c.numLayers }, (_, i) => new T5Block(c, i === 0))));
    this.final_layer_norm = this.module('final_layer_norm', new RMSNorm(c.dModel, c.eps));
  }

  /** [1, H, L, L]: the learned bias of each head for each query/key bucket. */
  private positionBias(len: number): Tensor {
    const { numBuckets, maxDistance, numHeads } = this.c;
    const ids = new Int32Array(len * len);
    for (let q = 0; q < len; q++) for (let k = 0; k < len; k++) ids[q * len + k] = relativePositionBucket(k - q, numBuckets, maxDistance);
    const table = this.block.items[0].attn.SelfAttention.relative_attention_bias!.weight;
    return tidy(() => reshape(permute(embedding(tensor(ids, [len, len], 'i32'), table), [2, 0, 1]), [1, numHeads, len, len]));
  }

  /** x [B, L, d_model] (the token embeddings), attentionMask [B, L] (1 token, 0 padding) -> [B, L, d_model]. */
  forward(x: Tensor, attentionMask?: Tensor): Tensor {
    return tidy(() => {
      const [b, len] = x.shape;
      const pos = this.positionBias(len);
      // The fused kernel takes no gradient through its additive mask; when the bias table is
      // being trained, the scores are formed explicitly (fine at caption lengths).
      let ab: AttentionBias;
      if (!needsGrad(pos)) ab = { fused: true, mask: pos, keyPadding: attentionMask };
      else if (!attentionMask) ab = { fused: false, bias: pos };
      else {
        const pad = affine(cast(attentionMask, pos.dtype), 1e9, -1e9); // 0 for tokens, -1e9 (-inf in f16) for padding
        ab = { fused: false, bias: add(pos, reshape(pad, [b, 1, 1, len])) };
      }
      let h = x;
      for (const blk of this.block.items) h = blk.forward(h, ab);
      return this.final_layer_norm.forward(h);
    });
  }
}

export interface T5BuildOptions {
  /** keep the token embedding on the host (default: when it is larger than one GPU binding) */
  hostEmbedding?: boolean;
}

/**
 * T5EncoderModel: `shared` (the token embedding, which transformers ties to
 * encoder.embed_tokens) and the `encoder` stack.
 *
 * The embedding of flan-t5-xl is 32128 x 2048 f32 = 263 MB, over the 128 MiB a storage binding
 * may span on lavapipe (and WebGPU's default limit), so no kernel can read it whole. We keep
 * such a table on the host: loadWeights reads it into a Float32Array (in row chunks that fit a
 * binding), and forward gathers the rows of the given ids on the CPU and uploads only
 * [B, L, d_model]. That is a few hundred KB per caption batch, costs no GPU memory, and needs no
 * chunked kernel; the price is that a host table is not a trainable parameter (it is absent from
 * parameters() / stateDict()), which only matters for tables too large for the GPU anyway.
 * Smaller tables (the small text encoder LaytonGen trains) are an ordinary GPU parameter with
 * gradients. In meta mode the table is always listed as `shared.weight`.
 */
export class T5EncoderModel extends Module {
  readonly shared: Embedding | null;
  readonly encoder: T5Stack;
  private hostTable: Float32Array | null = null;

  constructor(readonly config: T5Config, o: T5BuildOptions = {}) {
    super();
    const { vocabSize, dModel } = config;
    // 4 bytes an element whatever the build dtype: loading goes through f32 (see readRows)
    const host = o.hostEmbedding ?? (!buildOptions().meta && vocabSize * dModel * 4 > device().maxBinding);
    this.shared = host ? null : this.module('shared', new Embedding(vocabSize, dModel, 1));
    this.encoder = this.module('encoder', new T5Stack(config));
  }

  /** Whether the token embedding lives on the host (see the class comment). */
  get hostEmbedding(): boolean {
    return this.shared === null;
  }

  /**
   * Loads `shared.weight` (or its tied alias `encoder.embed_tokens.weight`, whichever the
   * checkpoint holds; the alias is ignored when both are there) and the encoder.
   */
  override async loadWeights(src: WeightSource, strict = true): Promise<void> {
    const ALIASES = ['shared.weight', 'encoder.embed_tokens.weight'];
    const tableKey = ALIASES.find((k) => src.keys().includes(k)) ?? null;
    if (this.shared) {
      const rest = renameWeights(src, (k) => (k === tableKey ? 'shared.weight' : ALIASES.includes(k) ? null : k));
      return super.loadWeights(rest, strict);
    }
    const want = [this.config.vocabSize, this.config.dModel];
    if (tableKey && src.shape(tableKey).join() !== want.join())
      throw new Error(`T5EncoderModel.loadWeights from ${src.name}: '${tableKey}' is [${src.shape(tableKey)}] in the source but [${want}] in the model`);
    if (!tableKey && strict) throw new Error(`T5EncoderModel.loadWeights from ${src.name}: missing keys [shared.weight]`);
    await super.loadWeights(renameWeights(src, (k) => (ALIASES.includes(k) ? null : k)), strict);
    if (tableKey) this.hostTable = await readRows(src, tableKey, want);
  }

  override dispose(): void {
    this.hostTable = null;
    super.dispose();
  }

  /** The token embeddings [B, L, d_model] of int32 ids [B, L]. */
  async embed(inputIds: Tensor): Promise<Tensor> {
    if (inputIds.rank !== 2 || inputIds.dtype !== 'i32') throw new Error(`T5EncoderModel: input_ids must be int32 [B, L], got ${inputIds.dtype} [${inputIds.shape}]`);
    if (this.shared) return this.shared.forward(inputIds);
    const { vocabSize: vocab, dModel: d } = this.config;
    if (!this.hostTable) throw new Error('T5EncoderModel: the host-side embedding table (shared.weight) is not loaded; call loadWeights first');
    const ids = await inputIds.data();
    const rows = new Float32Array(ids.length * d);
    ids.forEach((id, i) => {
      if (id < 0 || id >= vocab) throw new Error(`T5EncoderModel: input_ids holds ${id} at position ${i}, outside the vocabulary [0, ${vocab})`);
      rows.set(this.hostTable!.subarray(id * d, (id + 1) * d), i * d);
    });
    return tensor(rows, [...inputIds.shape, d], this.encoder.final_layer_norm.weight.dtype);
  }

  /**
   * last_hidden_state [B, L, d_model] for ids [B, L] and an optional attention mask [B, L]
   * (1 token, 0 padding). Gradients are recorded iff they were enabled at the call (a
   * `noGrad(() => model.forward(...))` would otherwise end at the first await).
   */
  async forward(inputIds: Tensor, attentionMask?: Tensor): Promise<Tensor> {
    if (attentionMask && attentionMask.shape.join() !== inputIds.shape.join())
      throw new Error(`T5EncoderModel: attention_mask [${attentionMask.shape}] must have input_ids' shape [${inputIds.shape}]`);
    const grad = isGradEnabled();
    const x = await this.embed(inputIds);
    try {
      const run = () => this.encoder.forward(x, attentionMask);
      return grad ? run() : noGrad(run);
    } finally {
      x.dispose();
    }
  }
}

/**
 * Reads weight `key` of shape [rows, cols] into host memory, in row chunks of at most maxBytes
 * (default: one binding), so no kernel touches the whole table (an f16 table is widened chunk
 * by chunk; it is uploaded in the file's dtype).
 */
export async function readRows(src: WeightSource, key: string, [rows, cols]: number[], maxBytes = device().maxBinding): Promise<Float32Array> {
  const t = await src.load(key);
  const out = new Float32Array(rows * cols);
  try {
    const per = Math.max(1, Math.floor(maxBytes / (cols * 4)));
    for (let r = 0; r < rows; r += per) {
      const part = noGrad(() => slice(t, 0, r, Math.min(rows, r + per)));
      out.set((await part.data()) as Float32Array, r * cols);
      part.dispose();
    }
  } finally {
    t.dispose();
  }
  return out;
}

export interface CaptionEncoding {
  /** last_hidden_state [B, maxLength, d_model] */
  hidden: Tensor;
  /** [B, maxLength] int32: 1 for tokens, 0 for padding */
  mask: Tensor;
  /** per caption: it had more tokens than fit and was cut */
  truncated: boolean[];
}

/**
 * Tokenises captions to maxLength tokens each (default 120, LaytonGen's caption length: '</s>'
 * kept, padding after it) and encodes them. A caption that does not fit is cut, and `warn` (default
 * console.warn) says so.
 */
export async function encodeCaptions(
  model: T5EncoderModel, tok: Tokenizer, captions: (string | Uint8Array)[],
  o: { maxLength?: number; warn?: (msg: string) => void } = {},
): Promise<CaptionEncoding> {
  const maxLength = o.maxLength ?? 120;
  const warn = o.warn ?? ((m: string) => console.warn(m));
  const enc = captions.map((c, i) => {
    try {
      return tok.encode(c, { maxLength, padding: true });
    } catch (e) {
      throw new Error(`caption ${i}: ${(e as Error).message}`);
    }
  });
  enc.forEach((e, i) => {
    if (e.truncated) warn(`caption ${i} is longer than the text encoder's ${maxLength} tokens; it was cut to fit`);
  });
  const flat = (k: 'ids' | 'attentionMask') => {
    const a = new Int32Array(enc.length * maxLength);
    enc.forEach((e, i) => a.set(e[k], i * maxLength));
    return tensor(a, [enc.length, maxLength], 'i32');
  };
  const ids = flat('ids');
  const mask = flat('attentionMask');
  try {
    return { hidden: await model.forward(ids, mask), mask, truncated: enc.map((e) => e.truncated) };
  } catch (e) {
    mask.dispose();
    throw e;
  } finally {
    ids.dispose();
  }
}

export const t5Kind: ModelKind<T5Config, T5EncoderModel> = {
  kind: 't5',
  classNames: ['T5EncoderModel', 'T5ForConditionalGeneration'],
  parseConfig: (json, where) => parseT5Config(json, where),
  toJson: t5ConfigJson,
  build: (c) => new T5EncoderModel(c),
  // a full T5's decoder and LM head are not part of the encoder
  renameKey: (k) => (k.startsWith('decoder.') || k.startsWith('lm_head.') ? null : k),
  inputs: {
    input_ids: 'token ids [B, L], int32 (the tokenizer output, padded with 0)',
    attention_mask: '[B, L]: 1 for tokens, 0 for padding (optional: all tokens)',
  },
  async forward(model, inputs) {
    return { last_hidden_state: await model.forward(inputs.input_ids, inputs.attention_mask) };
  },
};
