// The vector-quantiser bottleneck of LlamaGen's image tokenizer (tokenizer_image/vq_model.py
// VectorQuantizer with l2_norm): nearest-code search, code lookup, l2 normalisation, and the
// training-time quantize() with its straight-through output and losses (kernels/codebook.wgsl).
import { type Binding, device } from '../device.ts';
import { noGrad, record } from '../autograd.ts';
import { Tensor, numel, tidy } from '../tensor.ts';
import { bindRange, grid1d, normAxis } from './util.ts';
import { add, log, mul, mulScalar, addScalar, neg, square, sub } from './elementwise.ts';
import { mean, sum } from './reduce.ts';
import { cast, detach, permute, reshape } from './shape.ts';
import { matmul } from './matmul.ts';
import { logSoftmax, softmax } from './softmax.ts';
import { embeddingGrad } from './nn.ts';

const WG = 64; // kernels/codebook.wgsl
// Workgroups nearest() aims for: below that, the codebook is split across workgroups.
const TARGET_WORKGROUPS = 64;
const shp = (t: Tensor): string => `[${t.shape.join(', ')}]`;

function checkFloat(op: string, name: string, t: Tensor): void {
  t.assertLive(`${op}: ${name}`);
  if (t.dtype !== 'f32' && t.dtype !== 'f16') throw new Error(`${op}: ${name} ${shp(t)} is ${t.dtype}; it takes f32 or f16`);
}

function checkCodebook(op: string, codebook: Tensor): [number, number] {
  checkFloat(op, 'codebook', codebook);
  if (codebook.rank !== 2 || codebook.shape[0] < 1) throw new Error(`${op}: codebook ${shp(codebook)} must be [K, C] with K >= 1`);
  return [codebook.shape[0], codebook.shape[1]];
}

/**
 * The kernel's specialisation: types, and the array sizes of `nearest` (QPT queries per
 * thread, CC4 vec4s per vector, TK codes per tile), which the other entries do not use.
 */
const defines = (tz: string, tc: string, sizes = { QPT: 1, CC4: 1, TK: 1 }) => ({ TZ: tz, TC: tc, ...sizes });

/** Vectors along `axis` of `shape`: m of them, c long, consecutive elements s apart. */
function vectors(shape: readonly number[], axis: number): { m: number; c: number; s: number } {
  const s = numel(shape.slice(axis + 1));
  return { m: numel(shape.slice(0, axis)) * s, c: shape[axis], s };
}

function launch(entry: string, defs: Record<string, string | number>, buffers: Binding[], params: number[], workgroups: [number, number?]): void {
  device().dispatch({ kernel: 'codebook', entry, defines: defs, buffers, params, workgroups });
}

// ---- l2 normalisation -------------------------------------------------------------------
/** F.normalize(x, p=2, dim=axis): x / max(|x|, 1e-12) along `axis`. */
export function l2Normalize(x: Tensor, axis = -1): Tensor {
  checkFloat('l2Normalize', 'x', x);
  const a = normAxis(axis, x.rank);
  const v = vectors(x.shape, a);
  const y = Tensor.empty(x.shape, x.dtype);
  if (y.size === 0) return y;
  const rx = bindRange(x);
  launch('normalize', defines(x.dtype, x.dtype), [rx.binding, y.binding()], [v.m, v.c, 0, v.s, rx.elemOffset, 0, 0, 0], grid1d(v.m, WG));
  return record('l2Normalize', y, [x], [x], (g, [xs]) => [normalizeGrad(xs, g, a)]);
}

/** The gradient of l2Normalize at x for the output gradient g. */
function normalizeGrad(x: Tensor, g: Tensor, axis: number): Tensor {
  const v = vectors(x.shape, axis);
  const gx = g.dtype === x.dtype ? g : cast(g, x.dtype);
  const dx = Tensor.empty(x.shape, x.dtype);
  const rx = bindRange(x);
  const rg = bindRange(gx);
  launch('normalize_grad', defines(x.dtype, x.dtype), [rx.binding, rg.binding, dx.binding()], [v.m, v.c, 0, v.s, rx.elemOffset, rg.elemOffset, 0, 0], grid1d(v.m, WG));
  if (gx !== g) gx.dispose();
  return dx;
}

// ---- nearest code -----------------------------------------------------------------------
/**
 * Index of the nearest code for each vector along axis 1 of z [N, C, ...spatial] (or the rows
 * of z [M, C]), both sides l2-normalised: argmin_k |u - e_k|² with u = normalize(z),
 * e = normalize(codebook [K, C]); ties go to the lowest index (torch.argmin). Gives i32
 * [N, ...spatial]. No gradient. C up to 4096 (LlamaGen: 8).
 */
export function nearestCode(z: Tensor, codebook: Tensor): Tensor {
  const [k, c] = checkCodebook('nearestCode', codebook);
  checkFloat('nearestCode', 'z', z);
  if (z.rank < 2 || z.shape[1] !== c) throw new Error(`nearestCode: z ${shp(z)} must be [N, C, ...spatial] with C = ${c}, the codebook's [K, C] width`);
  const cc4 = Math.ceil(c / 4);
  if (cc4 > 1024) throw new Error(`nearestCode: codebook ${shp(codebook)} has vectors longer than the supported 4096`);
  const { m, s } = vectors(z.shape, 1);
  const indices = Tensor.empty(z.shape.filter((_, i) => i !== 1), 'i32');
  if (m === 0) return indices;
  // Short vectors: several queries per thread share each code read (8 when there are enough
  // queries to fill the workgroups, 4 otherwise); a tile of codes fills up to 16 KB.
  const sizes = { QPT: cc4 > 4 ? 1 : m >= 2048 ? 8 : 4, CC4: cc4, TK: Math.min(256, Math.floor(1024 / cc4)) };
  const blocks = Math.ceil(m / (WG * sizes.QPT));
  const tiles = Math.ceil(k / sizes.TK);
  const perSplit = Math.ceil(tiles / Math.min(tiles, Math.max(1, Math.ceil(TARGET_WORKGROUPS / blocks)))) * sizes.TK;
  const splits = Math.ceil(k / perSplit);
  const defs = defines(z.dtype, codebook.dtype, sizes);
  const rz = bindRange(z);
  const rc = bindRange(codebook);
  const params = [m, c, k, s, rz.elemOffset, rc.elemOffset, perSplit, splits];
  const bestIdx = splits === 1 ? indices : Tensor.empty([splits, m], 'i32');
  const bestDist = Tensor.empty([splits, m], 'f32');
  launch('nearest', defs, [rz.binding, rc.binding, bestIdx.binding(), bestDist.binding()], params, [blocks, splits]);
  if (splits > 1) {
    launch('pick', defines('f32', 'f32'), [bestIdx.binding(), bestDist.binding(), indices.binding()], params, grid1d(m, WG));
    bestIdx.dispose();
  }
  bestDist.dispose();
  return indices;
}

// ---- lookup -----------------------------------------------------------------------------
/**
 * The l2-normalised codes of i32 `indices` [N, ...spatial] in channel-first layout
 * [N, C, ...spatial] (LlamaGen get_codebook_entry with channel_first; indices [M] give
 * [M, C]). Indices outside [0, K) give zero vectors. The gradient reaches the codebook:
 * each row sums the gradients of the positions that chose it (deterministically, no float
 * atomics), then goes back through the normalisation.
 */
export function lookup(indices: Tensor, codebook: Tensor): Tensor {
  const [k, c] = checkCodebook('lookup', codebook);
  indices.assertLive('lookup: indices');
  if (indices.dtype !== 'i32') throw new Error(`lookup: indices ${shp(indices)} are ${indices.dtype}; they must be i32`);
  if (indices.rank < 1) throw new Error('lookup: indices must have at least one axis, [N, ...spatial]');
  const shape = [indices.shape[0], c, ...indices.shape.slice(1)];
  const { m, s } = vectors(shape, 1);
  const out = Tensor.empty(shape, codebook.dtype);
  if (out.size === 0) return out;
  const ri = bindRange(indices);
  const rc = bindRange(codebook);
  launch('lookup', defines('f32', codebook.dtype), [ri.binding, rc.binding, out.binding()], [m, c, k, s, ri.elemOffset, rc.elemOffset, 0, 0], grid1d(m, WG));
  return record('lookup', out, [null, codebook], [indices, codebook], (g, [ids, w]) => {
    // channel-last rows [N, ...spatial, C], the layout embeddingGrad sums by id
    const rows = s === 1 ? g : permute(g, [0, ...shape.slice(2).map((_, i) => i + 2), 1]);
    const ge = embeddingGrad(ids, rows.dtype === w.dtype ? rows : cast(rows, w.dtype), k, c);
    if (rows !== g) rows.dispose();
    const gw = normalizeGrad(w, ge, 1);
    ge.dispose();
    return [null, gw];
  });
}

// ---- quantize ---------------------------------------------------------------------------
export interface QuantizeOptions {
  /** commit_loss_beta (LlamaGen default 0.25) */
  beta?: number;
  /** entropy_loss_ratio; 0 or absent: no entropy loss */
  entropyWeight?: number;
  /** temperature of the entropy loss's softmax over -distance (LlamaGen: 0.01) */
  entropyTemperature?: number;
}

export interface Quantized {
  /** straight-through output [N, C, ...spatial]: the codes' values, the gradient of normalize(z) */
  zq: Tensor;
  /** i32 [N, ...spatial] */
  indices: Tensor;
  /** mean((z_q - sg(u))²): trains the codebook */
  vqLoss: Tensor;
  /** beta · mean((sg(z_q) - u)²): trains the encoder */
  commitLoss: Tensor;
  /** entropyWeight · (sample entropy - entropy of the mean distribution), when entropyWeight > 0 */
  entropyLoss?: Tensor;
}

/**
 * LlamaGen's VectorQuantizer.forward (l2_norm=True, training) on z [N, C, ...spatial] and the
 * codebook weight [K, C]: u = normalize(z), e = normalize(codebook), z_q = e[argmin distance],
 * z_q_st = u + sg(z_q - u), vq_loss = mean((z_q - sg(u))²), commit_loss = beta·mean((sg(z_q) - u)²),
 * entropy_loss = weight·compute_entropy_loss(-d). Gradients reach z (straight-through, commit
 * and entropy losses) and the codebook (vq and entropy losses).
 */
export function quantize(z: Tensor, codebook: Tensor, opts: QuantizeOptions = {}): Quantized {
  const beta = opts.beta ?? 0.25;
  const entropyWeight = opts.entropyWeight ?? 0;
  return tidy(() => {
    const indices = nearestCode(z, codebook);
    const u = l2Normalize(z, 1);
    const q = lookup(indices, codebook);
    const zq = add(u, noGrad(() => sub(q, u)));
    const vqLoss = mean(square(sub(q, detach(u))));
    const commitLoss = mulScalar(mean(square(sub(detach(q), u))), beta);
    const out: Quantized = { zq, indices, vqLoss, commitLoss };
    if (entropyWeight > 0) out.entropyLoss = mulScalar(entropyLossOf(u, codebook, opts.entropyTemperature ?? 0.01), entropyWeight);
    return out;
  });
}

/**
 * LlamaGen compute_entropy_loss(-d) with d = |u|² + |e|² - 2 u·e over all (vector, code)
 * pairs: p = softmax(-d / T) per vector; sample entropy - entropy of the mean p (+1e-5 inside
 * its log). |u|² is constant along a softmax row and |e|² = 1 for normalised codes, so the
 * logits are 2 u·e / T: the same softmax, without two [M, K] passes. Builds [M, K] tensors.
 */
function entropyLossOf(u: Tensor, codebook: Tensor, temperature: number): Tensor {
  const c = codebook.shape[1];
  const rows = u.rank === 2 ? u : reshape(permute(u, [0, ...u.shape.slice(2).map((_, i) => i + 2), 1]), [-1, c]);
  const logits = mulScalar(matmul(rows, l2Normalize(codebook, 1), { transB: true }), 2 / temperature);
  const p = softmax(logits, -1);
  const sampleEntropy = neg(mean(sum(mul(p, logSoftmax(logits, -1)), -1)));
  const avg = mean(p, 0);
  const avgEntropy = neg(sum(mul(avg, log(addScalar(avg, 1e-5)))));
  return sub(sampleEntropy, avgEntropy);
}
