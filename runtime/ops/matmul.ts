// Batched matmul with transposes and a fused bias + activation epilogue (kernels/matmul.wgsl).
import { device } from '../device.ts';
import { record, needsGrad } from '../autograd.ts';
import { Tensor, numel } from '../tensor.ts';
import { bindRange, broadcastShapes, vec4View } from './util.ts';
import { map, unary } from './elementwise.ts';
import { sum, sumTo } from './reduce.ts';

export type Activation = 'none' | 'relu' | 'gelu' | 'geluTanh' | 'silu';
const ACT: Record<Activation, number> = { none: 0, relu: 1, gelu: 2, geluTanh: 3, silu: 4 };

/** How the matmul kernel tiles C (see kernels/matmul.wgsl). */
export interface MatmulTile {
  /** rows per workgroup (every thread computes all of them) */
  tm: number;
  /** groups of 4 columns per thread */
  tn4: number;
  /** threads per workgroup */
  wx: number;
  /** lanes sharing the loads of A through subgroupShuffle (1: none) */
  group: number;
}

/**
 * Tile sizes, measured on lavapipe (see the comment atop kernels/matmul.wgsl). CPU adapters
 * get 8-thread workgroups (one SIMD row of llvmpipe) and the largest register tile NIR still
 * unrolls; GPUs get 64 threads and a smaller tile (a conventional start, not tuned on one).
 */
export function matmulTileFor(m: number, vecB: boolean): MatmulTile {
  const d = device();
  const cpu = d.adapterInfo.isFallbackAdapter || d.adapterInfo.architecture === 'software';
  // Shuffles within aligned groups of 8 lanes are right for every subgroup size that is a multiple of 8.
  const group8 = d.hasSubgroups && (d.adapterInfo.subgroupMinSize ?? 0) >= 8;
  const cap = cpu && vecB ? 32 : 16;
  const tm = m <= 2 ? m : m <= 4 ? 4 : Math.min(cap, Math.ceil(m / 8) * 8);
  return { tm, tn4: cpu && vecB ? 2 : 1, wx: cpu ? 8 : 64, group: group8 && tm % 8 === 0 ? 8 : 1 };
}

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  /** [N], added to every row */
  bias?: Tensor;
  act?: Activation;
}

/** The kernel's options without autograd (matmulKernel): also a bias per row. */
export interface MatmulKernelOptions extends MatmulOptions {
  /** [M], added to every column (conv2d's GEMM path: one per output channel); not with bias */
  rowBias?: Tensor;
}

/** Launches the kernel for a [batch..., M, K] x [batch..., K, N] product (no autograd). */
function launch(a: Tensor, b: Tensor, o: MatmulKernelOptions, tile?: MatmulTile): Tensor {
  for (const t of [a, b, o.bias, o.rowBias]) t?.assertLive();
  if (tile && tile.tm % tile.group !== 0) throw new Error(`matmul: tile rows ${tile.tm} must be a multiple of the lane group ${tile.group}`);
  if (tile && tile.group > 1 && !device().hasSubgroups) throw new Error(`matmul: a lane group of ${tile.group} needs the adapter's 'subgroups' feature`);
  if (a.rank < 2 || b.rank < 2) throw new Error(`matmul needs rank >= 2 operands, got [${a.shape}] and [${b.shape}]`);
  if (a.dtype !== b.dtype) throw new Error(`matmul: dtypes differ (${a.dtype} vs ${b.dtype})`);
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [m, k] = o.transA ? [ac, ar] : [ar, ac];
  const [kb, n] = o.transB ? [bc, br] : [br, bc];
  if (k !== kb)
    throw new Error(`matmul: inner dimensions differ: [${a.shape}]${o.transA ? 'ᵀ' : ''} x [${b.shape}]${o.transB ? 'ᵀ' : ''}`);
  if (o.bias && (o.bias.rank !== 1 || o.bias.shape[0] !== n)) throw new Error(`matmul: bias [${o.bias.shape}] must be [${n}]`);
  if (o.bias && o.bias.dtype !== a.dtype) throw new Error(`matmul: bias dtype ${o.bias.dtype} differs from the operands' ${a.dtype}`);
  if (o.rowBias && (o.bias || o.rowBias.rank !== 1 || o.rowBias.shape[0] !== m || o.rowBias.dtype !== a.dtype))
    throw new Error(`matmul: rowBias [${o.rowBias.shape}] ${o.rowBias.dtype} must be [${m}] ${a.dtype}, without bias`);
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const batch = broadcastShapes(batchA, batchB);
  const nb = numel(batch);
  const out = Tensor.empty([...batch, m, n], a.dtype);
  if (out.size === 0) return out;
  // The kernel reads an operand either batched like the output or shared by every batch
  // (stride 0); any other batch broadcast ([2,1] against [1,3]) is materialised first.
  const full = (t: Tensor, bs: number[]): Tensor =>
    numel(bs) === 1 || numel(bs) === nb ? t : map('x0', [t], { shape: [...batch, ...t.shape.slice(-2)] });
  const fa = full(a, batchA);
  const fb = full(b, batchB);
  const strideOf = (t: Tensor, bs: number[]): number => (numel(bs) === 1 ? 0 : t.shape.at(-1)! * t.shape.at(-2)!);
  const sA = strideOf(fa, batchA);
  const sB = strideOf(fb, batchB);
  const ra = bindRange(fa);
  const rb = bindRange(fb);
  const bias = o.bias ?? o.rowBias;
  const rbias = bindRange(bias ?? a);
  // vec4 reads need the contiguous axis and the start to be multiples of 4 elements.
  const vecA = !o.transA && k % 4 === 0 && ra.elemOffset % 4 === 0;
  const vecB = (o.transB ? k % 4 === 0 : n % 4 === 0) && rb.elemOffset % 4 === 0;
  const t = tile ?? matmulTileFor(m, vecB);
  const sg = t.group > 1;
  device().dispatch({
    kernel: 'matmul',
    defines: {
      T: a.dtype, TM: t.tm, TN4: t.tn4, GROUP: t.group,
      ENABLE: sg ? 'enable subgroups;' : '',
      LANE: sg ? '@builtin(subgroup_invocation_id)' : '@builtin(local_invocation_index)',
      BCAST: sg ? 'subgroupShuffle(v, lane)' : 'v',
    },
    constants: {
      TA: o.transA ? 1 : 0, TB: o.transB ? 1 : 0, WX: t.wx, VEC_A: vecA ? 1 : 0, VEC_B: vecB ? 1 : 0,
    },
    buffers: [ra.binding, rb.binding, rbias.binding, out.binding(), vec4View(ra.binding), vec4View(rb.binding)],
    params: [m, n, k, sA, sB, m * n, ra.elemOffset, rb.elemOffset, 0, rbias.elemOffset, o.bias ? 1 : o.rowBias ? 2 : 0, ACT[o.act ?? 'none']],
    workgroups: [Math.ceil(n / (4 * t.tn4 * t.wx)), Math.ceil(m / t.tm), nb],
  });
  if (fa !== a) fa.dispose();
  if (fb !== b) fb.dispose();
  return out;
}

/**
 * C = act(opA(a) @ opB(b) + bias). Batch axes broadcast; an operand without batch axes
 * is shared. With gradients on and an activation, the activation runs as its own op so
 * its backward sees the pre-activation.
 */
export function matmul(a: Tensor, b: Tensor, o: MatmulOptions = {}): Tensor {
  const act = o.act ?? 'none';
  const grad = needsGrad(a, b, o.bias);
  if (grad && act !== 'none') {
    const pre = matmul(a, b, { ...o, act: 'none' });
    const y = unary(act, pre);
    pre.dispose();
    return y;
  }
  // Fold a's batch into M when b is shared and a is not transposed: one big GEMM.
  let y: Tensor;
  if (!o.transA && a.rank > 2 && b.rank === 2) {
    const a2 = a.view([numel(a.shape.slice(0, -1)), a.shape.at(-1)!]);
    const y2 = launch(a2, b, o);
    a2.dispose();
    y = y2.view([...a.shape.slice(0, -1), y2.shape[1]]);
    y2.dispose();
  } else y = launch(a, b, o);
  if (!grad) return y;
  const ta = !!o.transA;
  const tb = !!o.transB;
  // A frozen weight (or a constant input) gets no gradient product, and the operand only its
  // product would read is not kept alive for backward (activations through a frozen network).
  const [wantA, wantB] = [needsGrad(a), needsGrad(b)];
  return record('matmul', y, [a, b, o.bias ?? null], [...(wantB ? [a] : []), ...(wantA ? [b] : [])], (g, s) => {
    // dA = g opB(B)ᵀ, dB = opA(A)ᵀ g, written with the kernel's transposes (no copies).
    const [as, bs] = [wantB ? s[0] : null, wantA ? s[s.length - 1] : null];
    const da = !bs ? null : ta ? mm(bs, g, tb, true) : mm(g, bs, false, !tb);
    const db = !as ? null : tb ? mm(g, as, true, ta) : mm(as, g, !ta, false);
    const gb = o.bias ? sum(g, g.shape.slice(0, -1).map((_, i) => i)) : null;
    return [da && sumTo(da, a.shape, true), db && sumTo(db, b.shape, true), gb];
  });
}

const mm = (x: Tensor, y: Tensor, transA: boolean, transB: boolean): Tensor => launch(x, y, { transA, transB });

/** One launch of the kernel, with an explicit tile or the default one: no autograd, no batch folding (conv2d's GEMM path, tests, benchmarks). */
export const matmulKernel = (a: Tensor, b: Tensor, o: MatmulKernelOptions, tile?: MatmulTile): Tensor => launch(a, b, o, tile);

/** y = x Wᵀ + b with W [out, in], as torch.nn.functional.linear. */
export const linear = (x: Tensor, w: Tensor, b?: Tensor, act: Activation = 'none'): Tensor =>
  matmul(x, w, { transB: true, bias: b, act });
