// Transformer and diffusion layer helpers: embedding lookup (kernels/embedding.wgsl), the
// gated units GEGLU / SwiGLU, LlamaGen's rotary embeddings (kernels/rotary.wgsl), diffusers'
// sinusoidal timestep embedding, and fused cross-entropy (kernels/cross_entropy.wgsl).
import { type Binding, device, f32, i32 } from '../device.ts';
import { noGrad, record } from '../autograd.ts';
import { Tensor, withView } from '../tensor.ts';
import { bindRange, grid1d } from './util.ts';
import { map } from './elementwise.ts';
import { sumTo } from './reduce.ts';
import { cast, concat, slice } from './shape.ts';
import { tensor, zeros } from './create.ts';

const shp = (t: Tensor): string => `[${t.shape.join(', ')}]`;

function checkFloat(op: string, name: string, t: Tensor): void {
  t.assertLive(`${op}: ${name}`);
  if (t.dtype !== 'f32' && t.dtype !== 'f16') throw new Error(`${op}: ${name} is ${t.dtype}; it takes f32 or f16`);
}

/** g in dtype `dtype` (a cast copy when the upstream gradient arrived in another float type). */
const gradAs = (g: Tensor, dtype: Tensor['dtype']): Tensor => (g.dtype === dtype ? g : cast(g, dtype));

// ---- embedding ---------------------------------------------------------------------------
/**
 * table[ids]: rows of table [V, D] for i32 ids of any shape, giving [...ids.shape, D]
 * (torch.nn.functional.embedding). Ids outside [0, V) give zero rows and no gradient
 * (PyTorch raises). The table's gradient sums repeated ids deterministically.
 */
export function embedding(ids: Tensor, table: Tensor): Tensor {
  ids.assertLive('embedding: ids');
  checkFloat('embedding', 'table', table);
  if (ids.dtype !== 'i32') throw new Error(`embedding: ids are ${ids.dtype}; they must be i32`);
  if (table.rank !== 2) throw new Error(`embedding: table ${shp(table)} must be [V, D]`);
  const [vocab, dim] = table.shape;
  const out = Tensor.empty([...ids.shape, dim], table.dtype);
  const ri = bindRange(ids);
  const rt = bindRange(table);
  device().dispatch({
    kernel: 'embedding',
    entry: 'gather',
    defines: { T: table.dtype },
    buffers: [ri.binding, rt.binding, out.binding()],
    params: [ids.size, dim, vocab, ri.elemOffset, rt.elemOffset, 0],
    workgroups: grid1d(out.size),
  });
  return record('embedding', out, [null, table], [ids], (g, [is]) => {
    const gt = gradAs(g, table.dtype);
    const grad = embeddingGrad(is, gt, vocab, dim);
    if (gt !== g) gt.dispose();
    return [null, grad];
  });
}

/** d table [V, D] from dy [...ids.shape, D]: bucket the ids by row, then sum each bucket in order. */
export function embeddingGrad(ids: Tensor, g: Tensor, vocab: number, dim: number): Tensor {
  const dev = device();
  const grad = Tensor.empty([vocab, dim], g.dtype);
  const n = ids.size;
  const ri = bindRange(ids);
  const rg = bindRange(g);
  const params = [n, dim, vocab, ri.elemOffset, 0, rg.elemOffset];
  const defines = { T: g.dtype };
  const counts = zeros([vocab], 'u32');
  const starts = Tensor.empty([vocab + 1], 'u32');
  const placed = Tensor.empty([n], 'u32');
  const sorted = Tensor.empty([n], 'u32');
  const run = (entry: string, buffers: Binding[], workgroups: [number, number?]) =>
    dev.dispatch({ kernel: 'embedding', entry, defines, buffers, params, workgroups });
  run('count', [ri.binding, counts.binding()], grid1d(n));
  run('scan', [counts.binding(), starts.binding()], [1]);
  run('place', [ri.binding, counts.binding(), starts.binding(), placed.binding()], grid1d(n));
  run('sort', [ri.binding, placed.binding(), starts.binding(), sorted.binding()], grid1d(n));
  run('accumulate', [rg.binding, sorted.binding(), starts.binding(), grad.binding()], grid1d(vocab * dim));
  for (const t of [counts, starts, placed, sorted]) t.dispose();
  return grad;
}

// ---- gated linear units ------------------------------------------------------------------
/**
 * diffusers' GEGLU after its projection: the last axis [..., 2H] splits into
 * (hidden, gate) halves and y = hidden · gelu(gate) (erf GELU), giving [..., H].
 */
export function geglu(x: Tensor): Tensor {
  checkFloat('geglu', 'input x', x);
  const d = x.shape.at(-1) ?? 0;
  if (x.rank < 1 || d % 2 !== 0) throw new Error(`geglu: the last axis of input x ${shp(x)} must have an even length`);
  const [hidden, gate] = noGrad(() => [slice(x, -1, 0, d / 2), slice(x, -1, d / 2, d)]);
  const y = map('x0 * gelu_(x1)', [hidden, gate]);
  const out = record('geglu', y, [x], [hidden, gate], (g, [h, gt]) => {
    const dh = map('x0 * gelu_(x1)', [g, gt]);
    const dg = map('x0 * x1 * gelu_grad_(x2)', [g, h, gt]);
    const dx = concat([dh, dg], -1);
    dh.dispose();
    dg.dispose();
    return [dx];
  });
  hidden.dispose();
  gate.dispose();
  return out;
}

/** silu(a) · b, the gate of LlamaGen's FeedForward (w2(silu(w1 x) · w3 x)); a and b broadcast. */
export function swiglu(a: Tensor, b: Tensor): Tensor {
  checkFloat('swiglu', 'a', a);
  checkFloat('swiglu', 'b', b);
  const y = map('silu_(x0) * x1', [a, b]);
  return record('swiglu', y, [a, b], [a, b], (g, [as, bs]) => [
    sumTo(map('x0 * x2 * silu_grad_(x1)', [g, as, bs]), as.shape, true),
    sumTo(map('x0 * silu_(x1)', [g, as]), bs.shape, true),
  ]);
}

// ---- rotary position embeddings (LlamaGen autoregressive/models/gpt.py) ------------------
// The tables are built on the host with the float32 steps PyTorch takes (Math.fround after
// every operation), so they match LlamaGen's to the last bit or so. Rows of class tokens
// are all zero, exactly as LlamaGen's torch.zeros(cls_token_num, ...): rotary embedding
// multiplies their query and key vectors by 0.

/** LlamaGen's 1 / base^(2j / n) for j < n/2, in float32. */
function ropeFrequencies(n: number, base: number): number[] {
  return Array.from({ length: Math.floor(n / 2) }, (_, j) => Math.fround(1 / Math.fround(base ** Math.fround((2 * j) / n))));
}

function freqsTable(what: string, positions: number, pairs: number, clsTokenNum: number, angle: (pos: number, j: number) => number): Tensor {
  if (!Number.isInteger(clsTokenNum) || clsTokenNum < 0) throw new Error(`${what}: clsTokenNum ${clsTokenNum} must be a non-negative integer`);
  const data = new Float32Array((clsTokenNum + positions) * pairs * 2);
  for (let s = 0; s < positions; s++)
    for (let j = 0; j < pairs; j++) {
      const a = angle(s, j);
      const at = ((clsTokenNum + s) * pairs + j) * 2;
      data[at] = Math.cos(a);
      data[at + 1] = Math.sin(a);
    }
  return tensor(data, [clsTokenNum + positions, pairs, 2]);
}

/**
 * LlamaGen precompute_freqs_cis: the (cos, sin) table [clsTokenNum + seqLen, nElem/2, 2]
 * for 1D positions 0..seqLen-1 after clsTokenNum zero rows (f32).
 */
export function precomputeFreqsCis(seqLen: number, nElem: number, base = 10000, clsTokenNum = 120): Tensor {
  if (!Number.isInteger(nElem) || nElem < 2 || nElem % 2) throw new Error(`precomputeFreqsCis: nElem ${nElem} (the head dimension) must be even`);
  const freqs = ropeFrequencies(nElem, base);
  return freqsTable('precomputeFreqsCis', seqLen, nElem / 2, clsTokenNum, (s, j) => Math.fround(s * freqs[j]));
}

/**
 * LlamaGen precompute_freqs_cis_2d: the (cos, sin) table [clsTokenNum + gridSize², nElem/2, 2]
 * for a row-major grid: the first nElem/4 pairs rotate by the row, the rest by the column.
 */
export function precomputeFreqsCis2d(gridSize: number, nElem: number, base = 10000, clsTokenNum = 120): Tensor {
  if (!Number.isInteger(nElem) || nElem < 4 || nElem % 4) throw new Error(`precomputeFreqsCis2d: nElem ${nElem} (the head dimension) must be a multiple of 4`);
  const q = nElem / 4;
  const freqs = ropeFrequencies(nElem / 2, base);
  return freqsTable('precomputeFreqsCis2d', gridSize * gridSize, nElem / 2, clsTokenNum, (s, j) =>
    j < q ? Math.fround(Math.floor(s / gridSize) * freqs[j]) : Math.fround((s % gridSize) * freqs[j - q]),
  );
}

function rotate(x: Tensor, freqs: Tensor, inverse: boolean): Tensor {
  const y = Tensor.empty(x.shape, x.dtype);
  if (y.size === 0) return y;
  const [seq, heads, d] = x.shape.slice(-3);
  const rx = bindRange(x);
  const rf = bindRange(freqs);
  device().dispatch({
    kernel: 'rotary',
    defines: { T: x.dtype },
    constants: { INVERSE: inverse ? 1 : 0 },
    buffers: [rx.binding, rf.binding, y.binding()],
    params: [x.size / 2, seq, heads, d / 2, rx.elemOffset, rf.elemOffset],
    workgroups: grid1d(x.size / 2),
  });
  return y;
}

/**
 * LlamaGen apply_rotary_emb: x [..., S, H, D] (batch, sequence, heads, head dim) with each
 * pair (x[2j], x[2j+1]) rotated by the table freqsCis [S, D/2, 2] (f32 (cos, sin), from
 * precomputeFreqsCis / precomputeFreqsCis2d, sliced to the positions in use). Computed in
 * f32, stored in x's dtype. No gradient flows to the table.
 */
export function applyRotaryEmb(x: Tensor, freqsCis: Tensor): Tensor {
  checkFloat('applyRotaryEmb', 'input x', x);
  freqsCis.assertLive('applyRotaryEmb: freqsCis');
  if (x.rank < 3 || x.shape[x.rank - 1] % 2 !== 0) throw new Error(`applyRotaryEmb: input x ${shp(x)} must be [..., S, H, D] with D even`);
  const [seq, , d] = x.shape.slice(-3);
  if (freqsCis.dtype !== 'f32' || freqsCis.shape.join() !== [seq, d / 2, 2].join())
    throw new Error(`applyRotaryEmb: freqsCis ${shp(freqsCis)} ${freqsCis.dtype} must be f32 [${seq}, ${d / 2}, 2] for input x ${shp(x)}`);
  const y = rotate(x, freqsCis, false);
  return record('applyRotaryEmb', y, [x, null], [freqsCis], (g, [f]) => [rotate(g, f, true), null]);
}

// ---- timestep embedding (diffusers get_timestep_embedding) -------------------------------
export interface TimestepEmbeddingOptions {
  /** [cos, sin] instead of [sin, cos] (default false) */
  flipSinToCos?: boolean;
  /** frequencies exp(-ln(maxPeriod)·k / (dim/2 - shift)) (default 1) */
  downscaleFreqShift?: number;
  /** multiplies the arguments (default 1) */
  scale?: number;
  /** default 10000 */
  maxPeriod?: number;
}

/**
 * diffusers get_timestep_embedding: sinusoidal embeddings [N, dim] (f32) of timesteps t [N]
 * (any dtype). Frequencies are computed on the host with PyTorch's float32 steps; the
 * arguments t·f·scale are reduced modulo 2π before sin / cos, whose accuracy GPUs only
 * guarantee on [-π, π]. An odd dim gets a zero last column.
 */
export function timestepEmbedding(t: Tensor, dim: number, opts: TimestepEmbeddingOptions = {}): Tensor {
  t.assertLive('timestepEmbedding: timesteps t');
  if (t.rank !== 1) throw new Error(`timestepEmbedding: timesteps t ${shp(t)} must be 1-D`);
  if (!Number.isInteger(dim) || dim < 2) throw new Error(`timestepEmbedding: dim ${dim} must be an integer >= 2`);
  const { flipSinToCos = false, downscaleFreqShift = 1, scale = 1, maxPeriod = 10000 } = opts;
  const half = Math.floor(dim / 2);
  if (half === downscaleFreqShift) throw new Error(`timestepEmbedding: dim ${dim} with downscaleFreqShift ${downscaleFreqShift} divides by zero`);
  const logP = Math.fround(-Math.log(maxPeriod));
  const column = new Float32Array(dim); // the frequency of each output column (0 on the padding column)
  for (let k = 0; k < half; k++) {
    const f = Math.exp(Math.fround(Math.fround(logP * k) / (half - downscaleFreqShift)));
    column[k] = column[k + half] = f;
  }
  const freqs = tensor(column, [dim]);
  // Cody-Waite: 2π = 6.28125 (exact in 8 bits, so n·6.28125 is exact) + 1.9353071795864769e-3.
  const a = '(x0 * x1 * alpha)';
  const n = `round(${a} * 0.15915494309189535)`;
  const r = `(${a} - ${n} * 6.28125 - ${n} * 1.9353071795864769e-3)`;
  const [first, second] = flipSinToCos ? ['cos', 'sin'] : ['sin', 'cos'];
  const col = `(i % ${dim}u)`;
  const expr = `select(select(${second}(${r}), ${first}(${r}), ${col} < ${half}u), 0.0, ${col} >= ${2 * half}u)`;
  const y = noGrad(() => withView(t, [t.size, 1], (tv) => map(expr, [tv, freqs], { dtype: 'f32', alpha: scale })));
  freqs.dispose();
  return y;
}

// ---- cross-entropy -----------------------------------------------------------------------
export interface CrossEntropyOptions {
  /** targets equal to this are skipped and not counted in the mean (default -100) */
  ignoreIndex?: number;
}

/**
 * torch.nn.functional.cross_entropy(logits, targets, ignore_index) with mean reduction:
 * logits [..., V] (f32 or f16), i32 targets [...]; returns the f32 scalar mean over the
 * targets that are not ignoreIndex (NaN when all are ignored, like PyTorch). A target
 * outside [0, V) that is not ignoreIndex gives a NaN loss (PyTorch raises).
 */
export function crossEntropy(logits: Tensor, targets: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  checkFloat('crossEntropy', 'logits', logits);
  targets.assertLive('crossEntropy: targets');
  const ignore = opts.ignoreIndex ?? -100;
  if (!Number.isInteger(ignore)) throw new Error(`crossEntropy: ignoreIndex ${ignore} must be an integer`);
  if (logits.rank < 1 || logits.shape[logits.rank - 1] === 0) throw new Error(`crossEntropy: logits ${shp(logits)} must be [..., V] with V > 0`);
  if (targets.dtype !== 'i32') throw new Error(`crossEntropy: targets are ${targets.dtype}; they must be i32`);
  if (targets.shape.join() !== logits.shape.slice(0, -1).join())
    throw new Error(`crossEntropy: targets ${shp(targets)} must be [${logits.shape.slice(0, -1).join(', ')}] for logits ${shp(logits)}`);
  const v = logits.shape[logits.rank - 1];
  const rows = logits.size / v;
  const dev = device();
  const rx = bindRange(logits);
  const rt = bindRange(targets);
  const params = [rows, v, rx.elemOffset, rt.elemOffset, 0, i32(ignore), f32(NaN)];
  const defines = { T: logits.dtype };
  const rowStats = Tensor.empty([rows, 2], 'f32'); // (logsumexp, loss) per row
  const total = Tensor.empty([2], 'f32'); // (mean loss, count)
  dev.dispatch({ kernel: 'cross_entropy', entry: 'forward', defines, buffers: [rx.binding, rt.binding, rowStats.binding()], params, workgroups: grid1d(rows, 1) });
  dev.dispatch({ kernel: 'cross_entropy', entry: 'mean', defines, buffers: [rowStats.binding(), rt.binding, total.binding()], params, workgroups: [1] });
  const loss = total.view([], 0);
  const out = record('crossEntropy', loss, [logits, null], [logits, targets, rowStats, total], (g, [xs, ts, rs, tot]) => {
    const dx = Tensor.empty(xs.shape, xs.dtype);
    const gt = gradAs(g, 'f32');
    const [bx, bt, bg] = [xs, ts, gt].map(bindRange);
    dev.dispatch({
      kernel: 'cross_entropy',
      entry: 'backward',
      defines,
      buffers: [bx.binding, bt.binding, rs.binding(), tot.binding(), bg.binding, dx.binding()],
      params: [rows, v, bx.elemOffset, bt.elemOffset, bg.elemOffset, i32(ignore), f32(NaN)],
      workgroups: grid1d(dx.size),
    });
    if (gt !== g) gt.dispose();
    return [dx, null];
  });
  rowStats.dispose();
  total.dispose();
  return out;
}
