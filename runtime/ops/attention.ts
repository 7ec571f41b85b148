// Fused scaled-dot-product attention on kernels/attention.wgsl: flash-style forward (online
// softmax, O(L·d) memory), FlashAttention-2 backward by recomputation from the saved
// log-sum-exp, and the split-K decode kernel behind the KV cache (runtime/kvcache.ts).
import { device, f32, i32, type Binding, type Param } from '../device.ts';
import { needsGrad, noGrad, record } from '../autograd.ts';
import { Tensor } from '../tensor.ts';
import { bindRange } from './util.ts';
import { cast } from './shape.ts';

export interface AttentionOptions {
  /**
   * Query i sees keys j <= i + (S - L): torch's is_causal when L == S; with S != L the
   * queries are taken as the last L of S positions (a KV cache's new tokens).
   */
  causal?: boolean;
  /** Multiplies Q Kᵀ; default 1/sqrt(d). */
  scale?: number;
  /** [B, S], any dtype: 0 masks key j of batch b, anything else keeps it. */
  keyPadding?: Tensor;
  /**
   * Additive bias (f32 or f16) on the scaled scores: [L, S] or [B|1, H|1, L|1, S]. Entries of
   * -inf (anything below -1e30) get zero weight; a query that sees no key outputs zeros.
   * Takes no gradient.
   */
  mask?: Tensor;
}

/**
 * Kernel tuning; null picks by adapter (and head dim). Exposed so benchmarks and tests can
 * run the GPU settings on a software adapter. rowsPerThread: rows (queries, or keys in the
 * dK/dV pass) each thread keeps in registers. unrollRows: kernels/attention.wgsl UNROLL_ROWS.
 * laneGroup: lanes sharing the loads of each staged K/V (Q/dO) row through subgroupShuffle.
 */
export const attentionTuning: { rowsPerThread: number | null; unrollRows: boolean | null; laneGroup: 1 | 8 | null } = {
  rowsPerThread: null,
  unrollRows: null,
  laneGroup: null,
};

const WG = 64; // kernels/attention.wgsl
const CHUNK = 512;
const MAX_HEAD_DIM = 256;
const MAX_DECODE_HEAD_DIM = 128; // decode's merge tree: 32 threads x d f32 of workgroup memory

let cpuAdapter: boolean | undefined;
function isCpuAdapter(): boolean {
  const a = device().adapterInfo;
  cpuAdapter ??= /llvmpipe|lavapipe|swiftshader|software/i.test([a.vendor, a.architecture, a.device, a.description].join(' '));
  return cpuAdapter;
}

function laneGroup(): number {
  if (attentionTuning.laneGroup) return attentionTuning.laneGroup;
  // Groups of 8 lanes are right for every subgroup size that is a multiple of 8.
  const d = device();
  return d.hasSubgroups && (d.adapterInfo.subgroupMinSize ?? 0) >= 8 ? 8 : 1;
}

function rowsPerThread(d: number, group: number, rows: number): number {
  if (attentionTuning.rowsPerThread) return attentionTuning.rowsPerThread;
  // Software adapters run each lane's memory access separately, so what pays is reusing every
  // staged K/V element for more rows; the register tile is capped where the shader compiler
  // stops unrolling its loops (then the rows become indexed memory and speed drops 3-5x):
  // about 192 row elements with subgroup shuffles in the loop body, 256 without. Short
  // sequences take no more rows a thread than fill the workgroup once: a workgroup serves one
  // (batch, head), and idle lanes cost as much as busy ones here (LaytonGen's 80 positions,
  // d 32: 4 rows left 3/4 of the lanes idle, and all three passes took 1.6x the time of 2 rows).
  // On GPUs 1-2 rows keep q, o and the accumulators within the register file.
  if (isCpuAdapter()) return Math.max(1, Math.min(4, Math.floor((group > 1 ? 192 : 256) / d), Math.ceil(rows / WG)));
  return d <= 64 ? 2 : 1;
}

interface Ctx {
  B: number;
  H: number;
  L: number;
  S: number;
  d: number;
  /** rows per (b, h) of the K/V storage (S, or a cache's capacity) */
  kvRows: number;
  causal: boolean;
  scale: number;
  pad?: Tensor;
  mask?: Tensor;
  rq: number;
  /** lanes sharing staged-row loads (kernels/attention.wgsl GROUP) */
  group: number;
}

const shapeStr = (t: Tensor): string => `[${t.shape.join(', ')}]`;

/** A binding of a [..., d] tensor read as vec4s, and its offset in vec4s. */
function rowRange(t: Tensor, what: string): { binding: Binding; off: number } {
  const r = bindRange(t);
  // Tensors are row-major with d % 4 == 0, so only a view starting mid-row is unaligned.
  if (r.elemOffset % 4 !== 0) throw new Error(`attention: ${what} ${shapeStr(t)} is a view at element offset ${t.offset}, not a multiple of 4; call contiguous() first`);
  return { binding: r.binding, off: r.elemOffset / 4 };
}

/** Bindings 0-4 (q, k, v, keyPadding, mask) and the Params words. */
function launchBase(c: Ctx, q: Tensor, k: Tensor, v: Tensor, extra: { offO?: number; offDO?: number; nChunks?: number } = {}) {
  const rq = rowRange(q, 'q');
  const rk = rowRange(k, 'k');
  const rv = rowRange(v, 'v');
  // Absent masks bind q as a stand-in: the kernels never read it.
  const rp = c.pad ? bindRange(c.pad) : { binding: rq.binding, elemOffset: 0 };
  const rm = c.mask ? bindRange(c.mask) : { binding: rq.binding, elemOffset: 0 };
  let maskStrides = [0, 0, 0];
  if (c.mask) {
    const [mB, mH, mL] = [1, 1, ...c.mask.shape].slice(-4);
    maskStrides = [mB === 1 ? 0 : mH * mL * c.S, mH === 1 ? 0 : mL * c.S, mL === 1 ? 0 : c.S];
  }
  const buffers: Binding[] = [rq.binding, rk.binding, rv.binding, rp.binding, rm.binding];
  const flags = (c.causal ? 1 : 0) | (c.pad ? 2 : 0) | (c.mask ? 4 : 0);
  const params: Param[] = [
    c.L, c.S, c.H, c.kvRows, flags, c.d / 4,
    rq.off, rk.off, rv.off, rp.elemOffset, rm.elemOffset, extra.offO ?? 0, extra.offDO ?? 0,
    c.pad ? c.pad.shape[1] : c.S, ...maskStrides,
    i32(c.S - c.L), f32(c.scale), extra.nChunks ?? 1,
  ];
  return {
    defines: {
      T: q.dtype, MASK_T: c.mask?.dtype ?? 'f32', HEAD_DIM: c.d, RQ: c.rq, GROUP: c.group,
      ENABLE: c.group > 1 ? 'enable subgroups;' : '',
      LANE: c.group > 1 ? '@builtin(subgroup_invocation_id)' : '@builtin(local_invocation_index)',
      BCAST: c.group > 1 ? 'subgroupShuffle(v, lane - lane % GROUP + c % GROUP)' : 'v',
    },
    constants: { UNROLL_ROWS: (attentionTuning.unrollRows ?? !isCpuAdapter()) ? 1 : 0 },
    buffers,
    params,
  };
}

function checkGrid(what: string, n: number): void {
  const max = device().limits.maxComputeWorkgroupsPerDimension;
  if (n > max) throw new Error(`${what}: ${n} (batch x heads${what.includes('decode') ? ' x queries' : ''}) exceeds ${max} workgroups per dimension`);
}

function forward(c: Ctx, q: Tensor, k: Tensor, v: Tensor): { o: Tensor; lse: Tensor } {
  const o = Tensor.empty(q.shape, q.dtype);
  const lse = Tensor.empty([c.B, c.H, c.L], 'f32');
  if (o.size === 0) return { o, lse };
  const base = launchBase(c, q, k, v);
  checkGrid('attention', c.B * c.H);
  device().dispatch({
    kernel: 'attention',
    entry: 'forward',
    ...base,
    buffers: [...base.buffers, o.binding(), lse.binding()],
    workgroups: [Math.ceil(c.L / (WG * c.rq)), c.B * c.H],
  });
  return { o, lse };
}

function backward(c: Ctx, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, g: Tensor): Tensor[] {
  const dq = Tensor.empty(q.shape, q.dtype);
  const dk = Tensor.empty(k.shape, k.dtype);
  const dv = Tensor.empty(v.shape, v.dtype);
  const drow = Tensor.empty([c.B, c.H, c.L], 'f32');
  const ro = rowRange(o, 'output');
  const rg = rowRange(g, 'output gradient');
  const base = launchBase(c, q, k, v, { offO: ro.off, offDO: rg.off });
  const dev = device();
  dev.dispatch({
    kernel: 'attention',
    entry: 'backward_q',
    ...base,
    buffers: [...base.buffers, ro.binding, rg.binding, lse.binding(), drow.binding(), dq.binding()],
    workgroups: [Math.ceil(c.L / (WG * c.rq)), c.B * c.H],
  });
  dev.dispatch({
    kernel: 'attention',
    entry: 'backward_kv',
    ...base,
    buffers: [...base.buffers, dk.binding(), rg.binding, lse.binding(), drow.binding(), dv.binding()],
    workgroups: [Math.ceil(c.S / (WG * c.rq)), c.B * c.H],
  });
  drow.dispose();
  return [dq, dk, dv];
}

function checkHeadDim(d: number, what: string, max = MAX_HEAD_DIM): void {
  if (d % 4 !== 0 || d < 4 || d > max) throw new Error(`${what}: head dim ${d} must be a multiple of 4 in [4, ${max}]`);
}

/**
 * softmax(q kᵀ · scale + mask) v for q [B, H, L, d] and k, v [B, H, S, d] (S != L for
 * cross-attention), fused: the L x S scores are never stored. Returns [B, H, L, d] in q's
 * dtype (f32 or f16; accumulation is f32). Differentiable in q, k and v.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor {
  if (q.rank !== 4) throw new Error(`attention: q must be [B, H, L, d], got ${shapeStr(q)}`);
  const [B, H, L, d] = q.shape;
  if (k.rank !== 4 || k.shape[0] !== B || k.shape[1] !== H || k.shape[3] !== d)
    throw new Error(`attention: k ${shapeStr(k)} must be [${B}, ${H}, S, ${d}] to match q ${shapeStr(q)}`);
  const S = k.shape[2];
  if (S === 0) throw new Error(`attention: k ${shapeStr(k)} has no positions`);
  if (v.shape.join() !== k.shape.join()) throw new Error(`attention: v ${shapeStr(v)} must have k's shape ${shapeStr(k)}`);
  if (q.dtype !== 'f32' && q.dtype !== 'f16') throw new Error(`attention: q must be f32 or f16, got ${q.dtype}`);
  if (k.dtype !== q.dtype || v.dtype !== q.dtype) throw new Error(`attention: q, k, v dtypes differ (${q.dtype}, ${k.dtype}, ${v.dtype})`);
  checkHeadDim(d, 'attention');
  const { keyPadding, mask } = opts;
  if (keyPadding && (keyPadding.rank !== 2 || keyPadding.shape[0] !== B || keyPadding.shape[1] !== S))
    throw new Error(`attention: keyPadding ${shapeStr(keyPadding)} must be [${B}, ${S}] (batch, keys)`);
  if (mask) {
    const m = mask.shape;
    const ok = (mask.rank === 2 || mask.rank === 4) && m.at(-1) === S && [1, L].includes(m.at(-2)!) &&
      (mask.rank === 2 || ([1, H].includes(m[1]) && [1, B].includes(m[0])));
    if (!ok) throw new Error(`attention: mask ${shapeStr(mask)} must be [${L}, ${S}] or [${B}|1, ${H}|1, ${L}|1, ${S}]`);
    if (mask.dtype !== 'f32' && mask.dtype !== 'f16') throw new Error(`attention: mask must be f32 or f16 (additive), got ${mask.dtype}`);
    if (needsGrad(mask)) throw new Error('attention: the additive mask takes no gradient; pass a tensor that does not require grad');
  }
  const pad = keyPadding && keyPadding.dtype !== 'f32' ? noGrad(() => cast(keyPadding, 'f32')) : keyPadding;
  const group = laneGroup();
  const c: Ctx = { B, H, L, S, d, kvRows: S, causal: !!opts.causal, scale: opts.scale ?? 1 / Math.sqrt(d), pad, mask, rq: rowsPerThread(d, group, Math.max(L, S)), group };
  const { o, lse } = forward(c, q, k, v);
  const extras = [pad, mask].filter((t): t is Tensor => !!t);
  record('attention', o, [q, k, v], [q, k, v, o, lse, ...extras], (g, [qs, ks, vs, os, ls, ...ex]) => {
    const cb = { ...c, pad: pad ? ex[0] : undefined, mask: mask ? ex.at(-1) : undefined };
    return backward(cb, qs, ks, vs, os, ls, g);
  });
  lse.dispose();
  if (pad !== keyPadding) pad?.dispose();
  return o;
}

export interface DecodeOptions {
  /** Default 1/sqrt(d). */
  scale?: number;
  /** New query r of n sees positions <= length - n + r (default true); false: all of [0, length). */
  causal?: boolean;
  /**
   * [B, P] with P >= length (e.g. the cache's capacity), any dtype: 0 hides position j of
   * batch b from every query (a padded caption in the cache); columns past length are ignored.
   * Pass f32 to spare a conversion per call.
   */
  keyPadding?: Tensor;
}

/**
 * Attention of n new queries q [B, H, n, d] to positions [0, length) of preallocated
 * k, v [B, H, capacity, d] (a KV cache), without readback: one workgroup per (query,
 * CHUNK positions), merged by a split-K combine pass when length > CHUNK. No autograd.
 */
export function attentionDecode(q: Tensor, k: Tensor, v: Tensor, length: number, opts: DecodeOptions = {}): Tensor {
  if (q.rank !== 4) throw new Error(`attentionDecode: q must be [B, H, n, d], got ${shapeStr(q)}`);
  const [B, H, n, d] = q.shape;
  if (k.rank !== 4 || k.shape[0] !== B || k.shape[1] !== H || k.shape[3] !== d || v.shape.join() !== k.shape.join())
    throw new Error(`attentionDecode: k ${shapeStr(k)} and v ${shapeStr(v)} must be [${B}, ${H}, capacity, ${d}] to match q ${shapeStr(q)}`);
  if (k.dtype !== q.dtype || v.dtype !== q.dtype) throw new Error(`attentionDecode: q, k, v dtypes differ (${q.dtype}, ${k.dtype}, ${v.dtype})`);
  if (!Number.isInteger(length) || length < n || length > k.shape[2])
    throw new Error(`attentionDecode: length ${length} must be in [${n} (the new queries), ${k.shape[2]} (capacity)]`);
  checkHeadDim(d, 'attentionDecode', MAX_DECODE_HEAD_DIM);
  const { keyPadding } = opts;
  if (keyPadding && (keyPadding.rank !== 2 || keyPadding.shape[0] !== B || keyPadding.shape[1] < length))
    throw new Error(`attentionDecode: keyPadding ${shapeStr(keyPadding)} must be [${B}, P] (batch, positions) with P >= length ${length}`);
  const rows = B * H * n;
  checkGrid('attentionDecode', rows);
  const nChunks = Math.ceil(length / CHUNK);
  const o = Tensor.empty(q.shape, q.dtype);
  if (o.size === 0) return o;
  const pad = keyPadding && keyPadding.dtype !== 'f32' ? noGrad(() => cast(keyPadding, 'f32')) : keyPadding;
  const c: Ctx = { B, H, L: n, S: length, d, kvRows: k.shape[2], causal: opts.causal ?? true, scale: opts.scale ?? 1 / Math.sqrt(d), pad, rq: 1, group: 1 };
  const base = launchBase(c, q, k, v, { nChunks });
  const part = Tensor.empty([rows * nChunks * (d + 2)], 'f32');
  const dev = device();
  dev.dispatch({ kernel: 'attention', entry: 'decode', ...base, buffers: [...base.buffers, o.binding(), part.binding()], workgroups: [nChunks, rows] });
  if (nChunks > 1) {
    dev.dispatch({
      kernel: 'attention',
      entry: 'decode_combine',
      defines: base.defines,
      constants: base.constants,
      buffers: [part.binding(), o.binding()],
      params: base.params,
      workgroups: [1, rows],
    });
  }
  part.dispose();
  if (pad !== keyPadding) pad?.dispose();
  return o;
}
