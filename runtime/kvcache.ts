// Key/value cache for autoregressive decoding: per layer, K and V buffers [B, H, maxLen, d]
// allocated once; append() writes new positions in place and attend() runs the decode
// kernel (kernels/attention.wgsl) of the new queries against the positions held so far.
import { keep, Tensor } from './tensor.ts';
import { stridesOf } from './ops/util.ts';
import { copyStrided } from './ops/shape.ts';
import { attentionDecode, type DecodeOptions } from './ops/attention.ts';

export interface KVCacheOptions {
  /** transformer layers, each with its own K and V (default 1) */
  layers?: number;
  batch: number;
  heads: number;
  headDim: number;
  /** capacity in positions */
  maxLen: number;
  /** storage type (default f32); appended tensors of the other float type are converted */
  dtype?: 'f32' | 'f16';
}

export interface AttendOptions extends DecodeOptions {
  layer?: number;
}

export class KVCache {
  readonly layers: number;
  readonly batch: number;
  readonly heads: number;
  readonly headDim: number;
  readonly maxLen: number;
  readonly dtype: 'f32' | 'f16';
  /** per layer [B, H, maxLen, d]; positions at or past lengthOf(layer) hold stale data */
  readonly k: Tensor[];
  readonly v: Tensor[];
  private lengths: number[];
  private disposed = false;

  constructor(opts: KVCacheOptions) {
    const { batch, heads, headDim, maxLen } = opts;
    this.layers = opts.layers ?? 1;
    for (const [name, x] of Object.entries({ layers: this.layers, batch, heads, headDim, maxLen }))
      if (!Number.isInteger(x) || x < 1) throw new Error(`KVCache: ${name} must be a positive integer, got ${x}`);
    this.batch = batch;
    this.heads = heads;
    this.headDim = headDim;
    this.maxLen = maxLen;
    this.dtype = opts.dtype ?? 'f32';
    const shape = [batch, heads, maxLen, headDim];
    this.k = Array.from({ length: this.layers }, () => keep(Tensor.empty(shape, this.dtype)));
    this.v = Array.from({ length: this.layers }, () => keep(Tensor.empty(shape, this.dtype)));
    this.lengths = new Array<number>(this.layers).fill(0);
  }

  /** Positions held by layer 0 (between decoding steps every layer holds as many). */
  get length(): number {
    return this.lengths[0];
  }

  lengthOf(layer: number): number {
    return this.lengths[this.checkLayer(layer)];
  }

  /** Writes k, v [B, H, n, d] at positions [length, length + n) of a layer, in place. */
  append(k: Tensor, v: Tensor, layer = 0): void {
    this.checkLayer(layer);
    const [B, H, d] = [this.batch, this.heads, this.headDim];
    for (const [name, t] of [['k', k], ['v', v]] as const) {
      if (t.rank !== 4 || t.shape[0] !== B || t.shape[1] !== H || t.shape[3] !== d)
        throw new Error(`KVCache.append: ${name} [${t.shape.join(', ')}] must be [${B}, ${H}, n, ${d}]`);
      if (t.dtype !== 'f32' && t.dtype !== 'f16') throw new Error(`KVCache.append: ${name} must be f32 or f16, got ${t.dtype}`);
    }
    const n = k.shape[2];
    if (v.shape[2] !== n) throw new Error(`KVCache.append: k has ${n} positions, v ${v.shape[2]}`);
    const len = this.lengths[layer];
    if (len + n > this.maxLen)
      throw new Error(`KVCache.append: ${n} new positions after ${len} exceed maxLen ${this.maxLen} (layer ${layer}); reset() or allocate a larger cache`);
    const dstStrides = [H * this.maxLen * d, this.maxLen * d, d, 1];
    for (const [src, cache] of [[k, this.k[layer]], [v, this.v[layer]]] as const) {
      // A view from the first new row to the end of the buffer: the strided copy lands inside it.
      const off = len * d;
      const dst = cache.view([cache.size - off], off);
      copyStrided(src, stridesOf(src.shape), dst, dstStrides, src.shape);
      dst.dispose();
    }
    this.lengths[layer] = len + n;
  }

  /**
   * Attention of new queries q [B, H, n, d] (n >= 1, usually just appended) to a layer's
   * positions [0, length): new query r sees positions <= length - n + r unless causal: false.
   * keyPadding [B, P >= length] (e.g. [B, maxLen], made once per sequence) hides the positions
   * where it is 0, such as a padded caption's.
   */
  attend(q: Tensor, opts: AttendOptions = {}): Tensor {
    const layer = this.checkLayer(opts.layer ?? 0);
    const len = this.lengths[layer];
    if (len === 0) throw new Error(`KVCache.attend: layer ${layer} is empty; append() keys and values first`);
    if (q.dtype !== this.dtype) throw new Error(`KVCache.attend: q is ${q.dtype} but the cache stores ${this.dtype}`);
    return attentionDecode(q, this.k[layer], this.v[layer], len, opts);
  }

  /** Forgets every position (the buffers are kept). */
  reset(): void {
    this.lengths.fill(0);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const t of [...this.k, ...this.v]) t.dispose();
  }

  private checkLayer(layer: number): number {
    if (this.disposed) throw new Error('KVCache used after dispose()');
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.layers) throw new Error(`KVCache: layer ${layer} out of range [0, ${this.layers})`);
    return layer;
  }
}
