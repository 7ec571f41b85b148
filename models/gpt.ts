// The LaytonGen GPT: LlamaGen's text-conditional Transformer (autoregressive/models/gpt.py,
// model_type 't2i') with its state-dict names, so published checkpoints load by name. Facts
// taken from LlamaGen: a caption embedder (MLP fc1 -> tanh GELU -> fc2, no biases) from T5
// features, with a fixed `uncond_embedding` [120, caption_dim] buffer substituted for dropped
// captions (classifier-free guidance); pre-norm blocks of RMSNorm, attention through one fused
// wqkv projection and SwiGLU FFN w2(silu(w1 x) · w3 x) of width find_multiple(int(8·dim/3),
// multiple_of); 2D rotary embeddings on a √block_size grid whose first cls_token_num rows are
// zero, which zeroes the caption tokens' queries and keys; causal attention over caption then
// image tokens where padded caption keys are hidden (each position still sees itself); the
// logits of positions cls_token_num - 1 onwards predict the image tokens.
import {
  Module, ModuleList, type DType, type Generator, type Tensor, add, applyRotaryEmb, attention, cast, concat, crossEntropy, embedding, expand,
  geluTanh, keep, linear, map, mul, noGrad, ones, permute, precomputeFreqsCis2d, rand, reshape, slice, swiglu, tensor, tidy,
} from '../runtime/index.ts';
import { ConfigReader } from './config.ts';
import { Embedding, RMSNorm, mergeHeads } from './layers.ts';
import type { ModelFiles } from './checkpoint.ts';
import { type LoadOptions, type ModelKind, loadModel } from './registry.ts';

export interface GptConfig {
  dim: number;
  nLayer: number;
  nHead: number;
  nKvHead: number;
  multipleOf: number;
  ffnDimMultiplier: number | null;
  ropeBase: number;
  normEps: number;
  initializerRange: number;
  tokenDropoutP: number;
  attnDropoutP: number;
  residDropoutP: number;
  ffnDropoutP: number;
  dropPathRate: number;
  captionDim: number;
  classDropoutProb: number;
  vocabSize: number;
  clsTokenNum: number;
  blockSize: number;
}

/** LlamaGen's GPT_models presets (layers, heads, width); every other field is ModelArgs'. */
export const GPT_MODELS: Record<string, { nLayer: number; nHead: number; dim: number }> = {
  'GPT-B': { nLayer: 12, nHead: 12, dim: 768 },
  'GPT-L': { nLayer: 24, nHead: 16, dim: 1024 },
  'GPT-XL': { nLayer: 36, nHead: 20, dim: 1280 },
  'GPT-XXL': { nLayer: 48, nHead: 24, dim: 1536 },
  'GPT-XXXL': { nLayer: 48, nHead: 40, dim: 2560 },
  'GPT-1B': { nLayer: 22, nHead: 32, dim: 2048 },
  'GPT-3B': { nLayer: 24, nHead: 32, dim: 3200 },
  'GPT-7B': { nLayer: 32, nHead: 32, dim: 4096 },
};

/** CaptionEmbedder's token_num: LlamaGen never passes it, so uncond_embedding always has 120 rows. */
export const UNCOND_TOKENS = 120;
/** The head dim limit of the KV-cache decode kernel (runtime attentionDecode). */
const MAX_HEAD_DIM = 128;
const MASKED = -1e38; // additive attention mask value (attention() zeroes anything below -1e30)

/**
 * A config.json with ModelArgs' field names (dim, n_layer, n_head, n_kv_head, multiple_of,
 * ffn_dim_multiplier, rope_base, norm_eps, initializer_range, token_dropout_p, attn_dropout_p,
 * resid_dropout_p, ffn_dropout_p, drop_path_rate, caption_dim, class_dropout_prob, model_type,
 * vocab_size, cls_token_num, block_size), plus `gpt_model` (a GPT_MODELS preset giving n_layer,
 * n_head and dim defaults). Defaults are ModelArgs' except those LlamaGen's t2i scripts set:
 * model_type 't2i' (the only one built here) and cls_token_num 120.
 */
export function parseGptConfig(json: Record<string, unknown>, where = 'config.json'): GptConfig {
  const r = new ConfigReader(json, where);
  const preset = json.gpt_model == null ? { nLayer: 32, nHead: 32, dim: 4096 } : GPT_MODELS[r.str('gpt_model', undefined, Object.keys(GPT_MODELS))];
  r.str('model_type', 't2i', ['t2i']);
  const nHead = r.int('n_head', preset.nHead, 1);
  const c: GptConfig = {
    dim: r.int('dim', preset.dim, 1),
    nLayer: r.int('n_layer', preset.nLayer, 1),
    nHead,
    nKvHead: r.optInt('n_kv_head') ?? nHead,
    multipleOf: r.int('multiple_of', 256, 1),
    ffnDimMultiplier: json.ffn_dim_multiplier == null ? null : r.num('ffn_dim_multiplier'),
    ropeBase: r.num('rope_base', 10000),
    normEps: r.num('norm_eps', 1e-5),
    initializerRange: r.num('initializer_range', 0.02),
    tokenDropoutP: r.num('token_dropout_p', 0.1),
    attnDropoutP: r.num('attn_dropout_p', 0),
    residDropoutP: r.num('resid_dropout_p', 0.1),
    ffnDropoutP: r.num('ffn_dropout_p', 0.1),
    dropPathRate: r.num('drop_path_rate', 0),
    captionDim: r.int('caption_dim', 2048, 1),
    classDropoutProb: r.num('class_dropout_prob', 0.1),
    vocabSize: r.int('vocab_size', 16384, 1),
    clsTokenNum: r.int('cls_token_num', 120, 1),
    blockSize: r.int('block_size', 256, 1),
  };
  const hd = c.dim / c.nHead;
  if (!Number.isInteger(hd) || hd % 4 !== 0 || hd > MAX_HEAD_DIM)
    throw new Error(`${where}: "dim" (${c.dim}) / "n_head" (${c.nHead}) must be a whole head dim that is a multiple of 4 (2D rotary embedding) and at most ${MAX_HEAD_DIM} (the KV-cache decode kernel)`);
  if (c.nKvHead < 1 || c.nHead % c.nKvHead !== 0) throw new Error(`${where}: "n_kv_head" (${c.nKvHead}) must divide "n_head" (${c.nHead})`);
  if (!Number.isInteger(Math.sqrt(c.blockSize))) throw new Error(`${where}: "block_size" (${c.blockSize}) must be a square (the image token grid)`);
  if (c.clsTokenNum > UNCOND_TOKENS)
    throw new Error(`${where}: "cls_token_num" (${c.clsTokenNum}) must be at most ${UNCOND_TOKENS}, the rows of LlamaGen's uncond_embedding`);
  const probs = {
    token_dropout_p: c.tokenDropoutP, attn_dropout_p: c.attnDropoutP, resid_dropout_p: c.residDropoutP, ffn_dropout_p: c.ffnDropoutP,
    drop_path_rate: c.dropPathRate, class_dropout_prob: c.classDropoutProb,
  };
  for (const [f, p] of Object.entries(probs)) if (!(p >= 0 && p < 1)) throw new Error(`${where}: "${f}" must be in [0, 1), got ${p}`);
  return c;
}

export function gptConfigJson(c: GptConfig): Record<string, unknown> {
  return {
    architectures: ['Transformer'],
    model_type: 't2i',
    dim: c.dim,
    n_layer: c.nLayer,
    n_head: c.nHead,
    n_kv_head: c.nKvHead,
    multiple_of: c.multipleOf,
    ffn_dim_multiplier: c.ffnDimMultiplier,
    rope_base: c.ropeBase,
    norm_eps: c.normEps,
    initializer_range: c.initializerRange,
    token_dropout_p: c.tokenDropoutP,
    attn_dropout_p: c.attnDropoutP,
    resid_dropout_p: c.residDropoutP,
    ffn_dropout_p: c.ffnDropoutP,
    drop_path_rate: c.dropPathRate,
    caption_dim: c.captionDim,
    class_dropout_prob: c.classDropoutProb,
    vocab_size: c.vocabSize,
    cls_token_num: c.clsTokenNum,
    block_size: c.blockSize,
  };
}

/** LlamaGen's FeedForward width: find_multiple(int(ffn_dim_multiplier · int(2 · 4·dim / 3)), multiple_of). */
export function ffnHidden(c: GptConfig): number {
  let h = Math.floor((2 * 4 * c.dim) / 3);
  if (c.ffnDimMultiplier !== null) h = Math.floor(c.ffnDimMultiplier * h);
  return Math.ceil(h / c.multipleOf) * c.multipleOf;
}

/** Training mode: dropout is on and draws from this generator (default: the global one). */
interface Train {
  generator?: Generator;
}

/** Inverted dropout (torch.nn.Dropout in training mode), seeded. */
function dropout(x: Tensor, p: number, train: Train | undefined): Tensor {
  if (!train || p === 0) return x;
  const keepScale = map('select(0.0, alpha, x0 >= beta)', [rand(x.shape, { generator: train.generator })], { alpha: 1 / (1 - p), beta: p });
  return mul(x, keepScale);
}

/** nn.Linear(in, out, bias=False) initialised N(0, std²) as LlamaGen's _init_weights does. */
class Proj extends Module {
  readonly weight: Tensor;
  constructor(inFeatures: number, outFeatures: number, std: number) {
    super();
    this.weight = this.param('weight', [outFeatures, inFeatures], std === 0 ? 'zeros' : { normal: std });
  }
  forward(x: Tensor): Tensor {
    return linear(x, this.weight);
  }
}

class MLP extends Module {
  readonly fc1: Proj;
  readonly fc2: Proj;
  constructor(inFeatures: number, hidden: number, std: number) {
    super();
    this.fc1 = this.module('fc1', new Proj(inFeatures, hidden, std));
    this.fc2 = this.module('fc2', new Proj(hidden, hidden, std));
  }
  forward(x: Tensor): Tensor {
    return this.fc2.forward(geluTanh(this.fc1.forward(x)));
  }
}

class CaptionEmbedder extends Module {
  /** LlamaGen registers it as a buffer: saved and loaded, never trained (requiresGrad false). */
  readonly uncond_embedding: Tensor;
  readonly cap_proj: MLP;
  constructor(captionDim: number, dim: number, std: number) {
    super();
    this.uncond_embedding = this.param('uncond_embedding', [UNCOND_TOKENS, captionDim], { normal: 1 / Math.sqrt(captionDim) }).requireGrad(false);
    this.cap_proj = this.module('cap_proj', new MLP(captionDim, dim, std));
  }
}

/** Keys, values and attention for new positions during generation (models/generate.ts). */
export interface KVStore {
  /** Stores k, v [B, H, n, hd] of `layer` and returns the attention of q [B, H, n, hd] over every stored position. */
  attend(layer: number, q: Tensor, k: Tensor, v: Tensor): Tensor;
}

interface BlockCtx {
  /** rotary (cos, sin) rows of the positions in x: [S, hd/2, 2] */
  freqs: Tensor;
  /** additive [B, 1, S, S] attention mask (caption padding); causal without */
  mask?: Tensor;
  store?: KVStore;
  layer: number;
  train?: Train;
}

/** [B, S, heads·hd] -> [B, heads, S, hd] with the rotary embedding applied when freqs are given. */
function heads(x: Tensor, n: number, freqs?: Tensor): Tensor {
  const [b, s, c] = x.shape;
  const split = reshape(x, [b, s, n, c / n]);
  const y = freqs ? applyRotaryEmb(split, freqs) : split;
  return s === 1 ? reshape(y, [b, n, 1, c / n]) : permute(y, [0, 2, 1, 3]);
}

/** torch's repeat_interleave(rep, dim=1) of [B, Hkv, S, hd]: each key/value head serves rep query heads. */
function repeatHeads(x: Tensor, rep: number): Tensor {
  if (rep === 1) return x;
  const [b, h, s, d] = x.shape;
  return reshape(expand(reshape(x, [b, h, 1, s, d]), [b, h, rep, s, d]), [b, h * rep, s, d]);
}

class Attention extends Module {
  readonly wqkv: Proj;
  readonly wo: Proj;
  constructor(private readonly c: GptConfig) {
    super();
    const hd = c.dim / c.nHead;
    this.wqkv = this.module('wqkv', new Proj(c.dim, (c.nHead + 2 * c.nKvHead) * hd, c.initializerRange));
    this.wo = this.module('wo', new Proj(c.dim, c.dim, c.initializerRange));
  }

  forward(x: Tensor, ctx: BlockCtx): Tensor {
    const { dim, nHead, nKvHead } = this.c;
    const kv = nKvHead * (dim / nHead);
    // Row blocks of wqkv are views: three projections instead of one plus three column copies.
    const w = this.wqkv.weight;
    const q = heads(linear(x, slice(w, 0, 0, dim)), nHead, ctx.freqs);
    const k = repeatHeads(heads(linear(x, slice(w, 0, dim, dim + kv)), nKvHead, ctx.freqs), nHead / nKvHead);
    const v = repeatHeads(heads(linear(x, slice(w, 0, dim + kv, dim + 2 * kv)), nKvHead), nHead / nKvHead);
    const o = ctx.store ? ctx.store.attend(ctx.layer, q, k, v) : attention(q, k, v, ctx.mask ? { mask: ctx.mask } : { causal: true });
    const merged = o.shape[2] === 1 ? reshape(o, [o.shape[0], 1, dim]) : mergeHeads(o);
    return dropout(this.wo.forward(merged), this.c.residDropoutP, ctx.train);
  }
}

class FeedForward extends Module {
  readonly w1: Proj;
  readonly w3: Proj;
  readonly w2: Proj;
  constructor(private readonly c: GptConfig) {
    super();
    const h = ffnHidden(c);
    this.w1 = this.module('w1', new Proj(c.dim, h, c.initializerRange));
    this.w3 = this.module('w3', new Proj(c.dim, h, c.initializerRange));
    this.w2 = this.module('w2', new Proj(h, c.dim, c.initializerRange));
  }
  forward(x: Tensor, train?: Train): Tensor {
    return dropout(this.w2.forward(swiglu(this.w1.forward(x), this.w3.forward(x))), this.c.ffnDropoutP, train);
  }
}

class TransformerBlock extends Module {
  readonly attention: Attention;
  readonly feed_forward: FeedForward;
  readonly attention_norm: RMSNorm;
  readonly ffn_norm: RMSNorm;
  constructor(c: GptConfig) {
    super();
    this.attention = this.module('attention', new Attention(c));
    this.feed_forward = this.module('feed_forward', new FeedForward(c));
    this.attention_norm = this.module('attention_norm', new RMSNorm(c.dim, c.normEps));
    this.ffn_norm = this.module('ffn_norm', new RMSNorm(c.dim, c.normEps));
  }
  forward(x: Tensor, ctx: BlockCtx): Tensor {
    const h = add(x, this.attention.forward(this.attention_norm.forward(x), ctx));
    return add(h, this.feed_forward.forward(this.ffn_norm.forward(h), ctx.train));
  }
}

export interface GptForwardOptions {
  /** [B, T] caption mask (any dtype): 0 hides that caption token's key from every other position */
  embMask?: Tensor;
  /** training mode: token, residual, FFN and caption dropout as the config sets them */
  train?: boolean;
  /** what training-mode dropout draws from (default: the global generator) */
  generator?: Generator;
  /** rows whose caption is replaced by the uncond embedding (LlamaGen's force_drop_ids == 1), train or not */
  forceDrop?: boolean[];
}

export class Transformer extends Module {
  readonly cls_embedding: CaptionEmbedder;
  readonly tok_embeddings: Embedding;
  readonly layers: ModuleList<TransformerBlock>;
  readonly norm: RMSNorm;
  readonly output: Proj;
  private freqsTable: Tensor | null = null;

  constructor(readonly config: GptConfig) {
    super();
    const c = config;
    this.cls_embedding = this.module('cls_embedding', new CaptionEmbedder(c.captionDim, c.dim, c.initializerRange));
    this.tok_embeddings = this.module('tok_embeddings', new Embedding(c.vocabSize, c.dim, c.initializerRange));
    this.layers = this.module('layers', new ModuleList(Array.from({ length: c.nLayer }, () => new TransformerBlock(c))));
    this.norm = this.module('norm', new RMSNorm(c.dim, c.normEps));
    this.output = this.module('output', new Proj(c.dim, c.vocabSize, 0)); // LlamaGen zeroes the output layer
  }

  get headDim(): number {
    return this.config.dim / this.config.nHead;
  }

  get dtype(): DType {
    return this.tok_embeddings.weight.dtype;
  }

  /** Rotary (cos, sin) rows of positions [start, start + n): cls_token_num zero rows, then the image grid. */
  freqs(start: number, n: number): Tensor {
    const c = this.config;
    if (start + n > c.clsTokenNum + c.blockSize)
      throw new Error(`GPT: positions up to ${start + n} exceed cls_token_num + block_size (${c.clsTokenNum} + ${c.blockSize})`);
    if (!this.freqsTable) {
      const grid = Math.round(Math.sqrt(c.blockSize));
      this.freqsTable = keep(precomputeFreqsCis2d(grid, this.headDim, c.ropeBase, c.clsTokenNum));
    }
    return slice(this.freqsTable, 0, start, start + n);
  }

  /** The uncond embedding's first T rows, [T, caption_dim]: what a dropped caption becomes. */
  uncondRows(t: number): Tensor {
    return slice(this.cls_embedding.uncond_embedding, 0, 0, t);
  }

  /** Checks caption_embs [B, T, caption_dim] with T = cls_token_num and emb_masks [B, T]. */
  checkCaption(captionEmbs: Tensor, embMask?: Tensor): void {
    const c = this.config;
    const s = captionEmbs.shape;
    if (s.length !== 3 || s[1] !== c.clsTokenNum || s[2] !== c.captionDim)
      throw new Error(`GPT: caption_embs [${s.join(', ')}] must be [B, ${c.clsTokenNum} (cls_token_num), ${c.captionDim} (caption_dim)]`);
    if (embMask && embMask.shape.join() !== [s[0], s[1]].join())
      throw new Error(`GPT: emb_masks [${embMask.shape.join(', ')}] must be [${s[0]}, ${s[1]}] for caption_embs [${s.join(', ')}]`);
  }

  /** The caption tokens' embeddings cap_proj(caption) [B, T, dim], dropped rows taking the uncond embedding. */
  embedCaption(captionEmbs: Tensor, drop?: Tensor): Tensor {
    const x = drop ? add(mul(captionEmbs, map('1.0 - x0', [drop])), mul(this.uncondRows(captionEmbs.shape[1]), drop)) : captionEmbs;
    return this.cls_embedding.cap_proj.forward(x);
  }

  /**
   * Runs the blocks over h [B, S, dim] holding positions [start, start + S), then the final norm.
   * Attention is causal over the sequence, or ctx.mask's, or the store's (generation).
   */
  blocks(h: Tensor, start: number, ctx: { mask?: Tensor; store?: KVStore; train?: Train } = {}): Tensor {
    const freqs = this.freqs(start, h.shape[1]);
    this.layers.items.forEach((layer, i) => {
      h = layer.forward(h, { ...ctx, freqs, layer: i });
    });
    return this.norm.forward(h);
  }

  logits(h: Tensor): Tensor {
    return this.output.forward(h);
  }

  /**
   * LlamaGen's training-mode forward(idx, cond_idx, mask): caption_embs [B, T, caption_dim]
   * and image tokens idx [B, N] (i32, N <= block_size) -> logits [B, N + 1, vocab] (positions
   * cls_token_num - 1 onwards: logits[:, j] predicts image token j).
   */
  forward(captionEmbs: Tensor, idx: Tensor, o: GptForwardOptions = {}): Tensor {
    const c = this.config;
    this.checkCaption(captionEmbs, o.embMask);
    if (idx.rank !== 2 || idx.shape[0] !== captionEmbs.shape[0] || idx.shape[1] > c.blockSize || idx.dtype !== 'i32')
      throw new Error(`GPT: input_ids [${idx.shape.join(', ')}] ${idx.dtype} must be i32 [${captionEmbs.shape[0]}, N <= ${c.blockSize} (block_size)]`);
    if (o.train && (c.attnDropoutP > 0 || c.dropPathRate > 0))
      throw new Error('GPT: training with attn_dropout_p or drop_path_rate > 0 is not implemented (LlamaGen trains with both 0)');
    const B = captionEmbs.shape[0];
    const T = c.clsTokenNum;
    const train = o.train ? { generator: o.generator } : undefined;
    return tidy(() => {
      let drop: Tensor | undefined;
      if (o.forceDrop) {
        if (o.forceDrop.length !== B) throw new Error(`GPT: forceDrop has ${o.forceDrop.length} entries for batch ${B}`);
        drop = tensor(o.forceDrop.map(Number), [B, 1, 1]);
      } else if (train && c.classDropoutProb > 0) {
        drop = map('select(0.0, 1.0, x0 < alpha)', [rand([B, 1, 1], { generator: o.generator })], { alpha: c.classDropoutProb });
      }
      const x = concat([this.embedCaption(captionEmbs, drop), embedding(idx, this.tok_embeddings.weight)], 1);
      const S = x.shape[1];
      const mask = o.embMask ? captionMask(o.embMask, S) : undefined;
      const h = this.blocks(dropout(x, c.tokenDropoutP, train), 0, { mask, train });
      return this.logits(slice(h, 1, T - 1, S));
    });
  }

  /** Mean cross-entropy of forward(caption, tokens[:, :-1]) against tokens [B, N] (LlamaGen's training loss). */
  loss(captionEmbs: Tensor, tokens: Tensor, o: GptForwardOptions = {}): Tensor {
    return tidy(() => crossEntropy(this.forward(captionEmbs, slice(tokens, 1, 0, tokens.shape[1] - 1), o), tokens));
  }

  /** torch's count: the parameters, not the uncond_embedding buffer (GPT-XL t2i: 777,678,080). */
  override parameterCount(): number {
    return super.parameterCount() - this.cls_embedding.uncond_embedding.size;
  }

  /** Module.setTrainable, except that the uncond_embedding buffer stays frozen as in LlamaGen. */
  override setTrainable(on: boolean): this {
    super.setTrainable(on);
    this.cls_embedding.uncond_embedding.requireGrad(false);
    return this;
  }

  override dispose(): void {
    super.dispose();
    this.freqsTable?.dispose();
    this.freqsTable = null;
  }
}

/**
 * LlamaGen's t2i attention mask for S positions whose first T are the caption: causal, caption
 * key j hidden where embMask[b, j] == 0, the diagonal always visible. Additive f32 [B, 1, S, S].
 */
export function captionMask(embMask: Tensor, S: number): Tensor {
  const [B, T] = embMask.shape;
  return tidy(() => {
    const m = embMask.dtype === 'f32' ? embMask : cast(embMask, 'f32');
    const keys = S > T ? concat([m, ones([B, S - T])], 1) : m;
    const [j, i] = ['(i % u32(alpha))', '((i / u32(alpha)) % u32(alpha))'];
    return map(`select(${MASKED}, 0.0, (x0 != 0.0 && ${j} <= ${i}) || ${j} == ${i})`, [reshape(keys, [B, 1, 1, S])], { shape: [B, 1, S, S], alpha: S });
  });
}

export const gptKind: ModelKind<GptConfig, Transformer> = {
  kind: 'gpt',
  classNames: ['Transformer'],
  parseConfig: (json, where) => parseGptConfig(json, where),
  toJson: gptConfigJson,
  build: (c) => new Transformer(c),
  ptPrefix: 'model.',
  inputs: {
    caption_embs: 'T5 caption features [B, cls_token_num, caption_dim] (cond_idx), zero where padded',
    emb_masks: '[B, cls_token_num]: 1 for caption tokens, 0 for padding (optional: all tokens)',
    input_ids: 'image token ids [B, N], int32, N <= block_size (idx: the tokens before the ones predicted)',
  },
  forward(model, inputs) {
    const { caption_embs, emb_masks, input_ids } = inputs;
    if (!caption_embs || !input_ids) throw new Error(`gpt forward: missing input '${caption_embs ? 'input_ids' : 'caption_embs'}'`);
    return { logits: noGrad(() => model.forward(caption_embs, input_ids, { embMask: emb_masks })) };
  },
};

/** A model folder's GPT (config.json + model.safetensors or a LlamaGen .pt), loaded. */
export const loadGptModel = async (files: ModelFiles, o: LoadOptions = {}): Promise<Transformer> => (await loadModel(files, gptKind, o)).model;
