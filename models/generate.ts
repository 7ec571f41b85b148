// Image-token generation with the GPT (models/gpt.ts), as LlamaGen's autoregressive/models/
// generate.py does it: the caption positions in one prefill pass, then one token per decode
// step with the keys and values of earlier positions kept in a KV cache on the GPU;
// classifier-free guidance runs the conditional and unconditional (uncond_embedding) streams
// as one batch and mixes their logits as uncond + (cond - uncond)·cfg_scale, dropping the mix
// after `cfgInterval` decode steps. The unconditional stream keeps the caption mask, as
// LlamaGen's does. Tokens never leave the GPU until the caller reads them.
import {
  KVCache, Tensor, type Generator, attention, cast, concat, copyStrided, device, embedding, keep, map, noGrad, ones, reshape, sample, slice,
  stack, stridesOf, tidy, transpose,
} from '../runtime/index.ts';
import { type KVStore, type Transformer, captionMask } from './gpt.ts';

export interface SamplingOptions {
  /** classifier-free guidance scale; above 1 the unconditional stream runs beside (LlamaGen: cfg_scale, default 1) */
  cfgScale?: number;
  /** decode steps after this one sample from the conditional logits alone; -1: guide every step (LlamaGen's cfg_interval) */
  cfgInterval?: number;
  /** default 1; 0 is greedy */
  temperature?: number;
  /** 0 (default): no top-k filter; 1: greedy */
  topK?: number;
  /** default 1: no nucleus filter */
  topP?: number;
  /** the sampling stream (default: the global generator): same seed, same tokens */
  generator?: Generator;
}

export interface GenerateOptions extends SamplingOptions {
  /** tokens to generate (default block_size: the whole grid) */
  maxNewTokens?: number;
  /** false: recompute every position each step instead of using the KV cache (for checks and benchmarks) */
  kvCache?: boolean;
  /** called as tokens are finished on the GPU (done of total) */
  onToken?: (done: number, total: number) => void;
  /** aborts between steps (the promise rejects with the signal's reason) */
  signal?: AbortSignal;
}

/**
 * The KV cache of one generation: prefill attends with LlamaGen's caption mask and stores the
 * caption's keys and values, decode steps append one position and attend over all of them,
 * the padded caption positions hidden by the decode kernel's key padding.
 */
class DecodeCache implements KVStore {
  readonly kv: KVCache;
  constructor(
    model: Transformer,
    rows: number,
    maxLen: number,
    private readonly prefillMask?: Tensor,
    /** [rows, maxLen] f32: 0 for padded caption positions */
    private readonly keyPadding?: Tensor,
  ) {
    const c = model.config;
    this.kv = new KVCache({ layers: c.nLayer, batch: rows, heads: c.nHead, headDim: model.headDim, maxLen, dtype: model.dtype === 'f16' ? 'f16' : 'f32' });
  }

  attend(layer: number, q: Tensor, k: Tensor, v: Tensor): Tensor {
    const prefill = this.kv.lengthOf(layer) === 0;
    this.kv.append(k, v, layer);
    if (prefill) return attention(q, k, v, this.prefillMask ? { mask: this.prefillMask } : { causal: true });
    return this.kv.attend(q, { layer, keyPadding: this.keyPadding });
  }

  dispose(): void {
    this.kv.dispose();
  }
}

/**
 * The position-by-position work of one generation, launched without waiting (generate() adds
 * the awaits; benchmarks time it whole): caption streams (cond, then uncond under guidance),
 * a step-major token buffer, and the KV cache or, without it, a recomputation of every position.
 */
export class TokenDecoder {
  /** [n, B] i32, step-major: the B tokens of each step are contiguous (what embedding and sample() take) */
  readonly tokens: Tensor;
  readonly rows: number;
  private readonly held: Tensor[] = [];
  private readonly captions: Tensor;
  private readonly mask?: Tensor;
  private readonly cache?: DecodeCache;

  /**
   * For n tokens after captionEmbs [B, T, caption_dim]. Give embMask [B, T] only when it hides
   * something (generate() checks with one readback): a mask of ones would take the slower
   * masked path to the same result. cfg: run the unconditional stream beside.
   */
  constructor(private readonly model: Transformer, captionEmbs: Tensor, embMask: Tensor | undefined, n: number, cfg: boolean, kvCache = true) {
    const [B, T] = captionEmbs.shape;
    this.rows = cfg ? 2 * B : B;
    this.tokens = this.hold(Tensor.empty([n, B], 'i32'));
    try {
      this.captions = this.hold(noGrad(() => tidy(() =>
        model.embedCaption(cfg ? concat([captionEmbs, map('x0', [model.uncondRows(T)], { shape: captionEmbs.shape })], 0) : captionEmbs),
      )));
      this.mask = embMask && (cfg ? this.hold(concat([embMask, embMask], 0)) : embMask);
      if (kvCache && this.mask) {
        const keys = this.hold(tidy(() => concat([cast(this.mask!, 'f32'), ones([this.rows, n])], 1)));
        this.cache = new DecodeCache(model, this.rows, T + n, this.hold(captionMask(this.mask, T)), keys);
      } else if (kvCache) this.cache = new DecodeCache(model, this.rows, T + n);
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  private hold(t: Tensor): Tensor {
    this.held.push(keep(t));
    return t;
  }

  /** Computes step i (the token after tokens [0, i)) and samples it into tokens. */
  step(i: number, o: SamplingOptions = {}): void {
    const B = this.tokens.shape[1];
    const cfg = this.rows > B;
    const { cfgScale = 1, cfgInterval = -1 } = o;
    const sampling = { temperature: o.temperature, topK: o.topK, topP: o.topP, generator: o.generator, out: { tensor: this.tokens, offset: i * B } };
    noGrad(() => tidy(() => {
      const logits = this.logits(i);
      // Decode step i - 1 (token i) drops guidance once i - 1 > cfgInterval; the prefill token always has it.
      if (cfg && (cfgInterval < 0 || i - 1 <= cfgInterval)) sample(logits, { ...sampling, cfgScale });
      else sample(cfg ? slice(logits, 0, 0, B) : logits, sampling);
    }));
  }

  /** Logits [rows, V] of the position after tokens [0, i) (inside noGrad and tidy). */
  logits(i: number): Tensor {
    const { model, cache, mask, captions, rows } = this;
    const [n, B] = this.tokens.shape;
    const [T, dim] = [captions.shape[1], model.config.dim];
    if (i < 0 || i >= n) throw new Error(`TokenDecoder.logits: step ${i} outside [0, ${n})`);
    const last = (h: Tensor) => model.logits(reshape(slice(h, 1, h.shape[1] - 1, h.shape[1]), [rows, dim]));
    const streams = (ids: Tensor) => {
      const e = embedding(ids, model.tok_embeddings.weight); // [B, ..., dim]
      const shape = [rows, ...e.shape.slice(1)];
      return rows > B ? reshape(map('x0', [e], { shape: [2, ...e.shape] }), shape) : e;
    };
    if (cache) {
      if (i === 0) return last(model.blocks(captions, 0, { store: cache }));
      return last(model.blocks(streams(this.tokens.view([B, 1], (i - 1) * B)), T + i - 1, { store: cache }));
    }
    const x = i === 0 ? captions : concat([captions, streams(transpose(this.tokens.view([i, B], 0), 0, 1))], 1);
    return last(model.blocks(x, 0, { mask: mask && captionMask(mask, T + i) }));
  }

  dispose(): void {
    this.cache?.dispose();
    for (const t of this.held) t.dispose();
  }
}

/** Checks the shared arguments; returns whether embMask hides anything (one readback). */
async function prepare(model: Transformer, captionEmbs: Tensor, embMask: Tensor | undefined, n: number, what: string): Promise<boolean> {
  model.checkCaption(captionEmbs, embMask);
  const max = model.config.blockSize;
  if (!Number.isInteger(n) || n < 1 || n > max) throw new Error(`${what}: ${n} tokens must be an integer in [1, ${max}] (block_size)`);
  return embMask !== undefined && Array.from(await embMask.data()).some((x) => x === 0);
}

/**
 * LlamaGen generate(model, cond, max_new_tokens, emb_masks, cfg_scale, cfg_interval, temperature,
 * top_k, top_p) for caption features captionEmbs [B, cls_token_num, caption_dim] (zero where
 * padded) and their mask embMask [B, cls_token_num] (optional: all tokens): the image tokens,
 * i32 [B, maxNewTokens]. Sampling is ours (runtime sample(): Philox, seeded), so only greedy
 * decoding reproduces LlamaGen's tokens exactly.
 */
export async function generate(model: Transformer, captionEmbs: Tensor, embMask: Tensor | undefined, o: GenerateOptions = {}): Promise<Tensor> {
  const n = o.maxNewTokens ?? model.config.blockSize;
  const padded = await prepare(model, captionEmbs, embMask, n, 'generate: maxNewTokens');
  const dec = new TokenDecoder(model, captionEmbs, padded ? embMask : undefined, n, (o.cfgScale ?? 1) > 1, o.kvCache !== false);
  let pending: Promise<void> | undefined;
  try {
    for (let i = 0; i < n; i++) {
      o.signal?.throwIfAborted();
      dec.step(i, o);
      // One step of lookahead: step i is queued on the GPU while step i - 1 is awaited.
      await pending;
      if (i > 0) o.onToken?.(i, n);
      pending = device().sync();
    }
    await pending;
    o.onToken?.(n, n);
    return transpose(dec.tokens, 0, 1);
  } finally {
    await pending?.catch(() => undefined);
    dec.dispose();
  }
}

/**
 * Teacher forcing through the generation path: the logits [B, N, V] that predict each of
 * tokens [B, N] (i32) from the caption and the tokens before it, one position per step as
 * generate() computes them (from the KV cache, or recomputed with kvCache false). They equal
 * the model's forward(captionEmbs, tokens[:, :-1]) up to rounding.
 */
export async function forcedLogits(model: Transformer, captionEmbs: Tensor, embMask: Tensor | undefined, tokens: Tensor, o: { kvCache?: boolean } = {}): Promise<Tensor> {
  const [B, N] = tokens.shape;
  if (tokens.rank !== 2 || B !== captionEmbs.shape[0] || tokens.dtype !== 'i32')
    throw new Error(`forcedLogits: tokens [${tokens.shape.join(', ')}] ${tokens.dtype} must be i32 [${captionEmbs.shape[0]}, N]`);
  const padded = await prepare(model, captionEmbs, embMask, N, 'forcedLogits: tokens');
  const dec = new TokenDecoder(model, captionEmbs, padded ? embMask : undefined, N, false, o.kvCache !== false);
  try {
    noGrad(() => tidy(() => {
      const t = transpose(tokens, 0, 1);
      copyStrided(t, stridesOf(t.shape), dec.tokens, stridesOf(t.shape), t.shape);
    }));
    const steps: Tensor[] = [];
    try {
      for (let i = 0; i < N; i++) steps.push(noGrad(() => tidy(() => dec.logits(i))));
      return stack(steps, 1);
    } finally {
      for (const t of steps) t.dispose();
    }
  } finally {
    dec.dispose();
  }
}
