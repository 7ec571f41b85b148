// 2D convolution (NCHW, groups = 1) with a fused bias / residual / SiLU epilogue and its
// gradients: GEMMs on the matmul kernel around a column matrix (kernels/im2col.wgsl) where that
// fits, the implicit-GEMM kernel (kernels/conv2d.wgsl) otherwise; and nearest 2x upsampling
// (kernels/upsample.wgsl).
import { device } from '../device.ts';
import { noGrad, record, needsGrad } from '../autograd.ts';
import { Tensor, withView } from '../tensor.ts';
import { bindRange, grid1d, vec4View } from './util.ts';
import { add, silu } from './elementwise.ts';
import { matmulKernel } from './matmul.ts';
import { sum } from './reduce.ts';
import { permute } from './shape.ts';

/** One value for every side, or [top, bottom, left, right] (F.pad lists (left, right, top, bottom)). */
export type Padding = number | readonly [number, number, number, number];

export interface Conv2dOptions {
  stride?: number;
  padding?: Padding;
  /** added to the output before the activation; shape of the output */
  residual?: Tensor;
  act?: 'none' | 'silu';
  /** which kernels run it: by default the GEMM path when its column matrix fits (see below);
   *  tests and benchmarks force one ('implicit' cannot take a plain 1x1 GEMM: it is always GEMM) */
  impl?: 'auto' | 'gemm' | 'implicit';
}

interface Geometry {
  n: number; c: number; h: number; w: number;
  o: number; kh: number; kw: number;
  oh: number; ow: number;
  stride: number; padT: number; padL: number;
}

/** The block a workgroup of kernels/conv2d.wgsl computes: wx x wy threads of rm x rn outputs. */
export interface ConvTile { wx: number; wy: number; rm: number; rn: number }

/**
 * The tile for a GEMM with M rows and N columns (which conv dimensions those are for each
 * entry point: see the table atop kernels/conv2d.wgsl). Measured on lavapipe in GFLOPS of
 * process CPU time (the machine is shared; wall time is not comparable between runs),
 * forward 64->64 channels, 32x32, batch 8: 8x8 threads of 8x8 (the former fixed 64x64
 * tile) 4.0-4.4, of 8x16 4.9-5.0, of 16x16 1.4 (likely past NIR's unroll limit, as in
 * kernels/matmul.wgsl); grad_input and grad_weight gain alike. So each thread computes
 * 8x16 (4x16 for M <= 4), and M picks the smallest tile height that holds it: a 64-row
 * tile left half its lanes idle for 32 output channels (forward 32->32 at 64x64:
 * 1.6 -> 3.7 with the 32-row tile) and 61 of 64 for an RGB conv_out (64->3: 0.21 -> 0.87).
 * Flat tiles are 128 or 256 columns wide with 16 or 32 threads (a 16-deep slice of B stays
 * within 16 KB of workgroup memory). A short N (grad_weight of an RGB stem conv:
 * C·KH·KW = 27) narrows the 64-row tile to 32 or 64 columns. The kernel's staging needs
 * wx·wy to be a multiple of 16.
 */
export function convTileFor(m: number, n: number): ConvTile {
  if (m <= 4) return { wx: 16, wy: 1, rm: 4, rn: 16 };
  if (m <= 8) return { wx: 16, wy: 1, rm: 8, rn: 16 };
  if (m <= 16) return { wx: 16, wy: 2, rm: 8, rn: 16 };
  if (m <= 32) return { wx: 8, wy: 4, rm: 8, rn: 16 };
  return { wx: n <= 32 ? 2 : n <= 64 ? 4 : 8, wy: 8, rm: 8, rn: 16 };
}

const tileDefines = (t: ConvTile, dtype: string) => ({ T: dtype, WX: t.wx, WY: t.wy, RM: t.rm, RN: t.rn });
const BK = 16;
// grad_weight splits its pixel reduction until about this many workgroups run...
const TARGET_WORKGROUPS = 256;
// ...but keeps at least this many pixels per split.
const MIN_SPLIT_PIXELS = 256;

function geometry(x: Tensor, w: Tensor, b: Tensor | undefined, o: Conv2dOptions): Geometry {
  const shp = (t: Tensor) => `[${t.shape.join(', ')}]`;
  if (x.rank !== 4) throw new Error(`conv2d: input x must be [N, C, H, W], got ${shp(x)}`);
  if (w.rank !== 4) throw new Error(`conv2d: weight w must be [O, C, KH, KW], got ${shp(w)}`);
  for (const [name, t] of [['input x', x], ['weight w', w], ['bias b', b], ['residual', o.residual]] as const) {
    if (t && t.dtype !== 'f32' && t.dtype !== 'f16') throw new Error(`conv2d: ${name} is ${t.dtype}; conv2d takes f32 or f16`);
    if (t && t.dtype !== x.dtype) throw new Error(`conv2d: ${name} is ${t.dtype} but input x is ${x.dtype}`);
  }
  const [n, c, h, wd] = x.shape;
  const [oc, wc, kh, kw] = w.shape;
  if (wc !== c) throw new Error(`conv2d: weight w ${shp(w)} expects ${wc} input channels, input x ${shp(x)} has ${c} (groups = 1 only)`);
  if (b && (b.rank !== 1 || b.shape[0] !== oc)) throw new Error(`conv2d: bias b ${shp(b)} must be [${oc}]`);
  const stride = o.stride ?? 1;
  if (!Number.isInteger(stride) || stride < 1) throw new Error(`conv2d: stride ${stride} must be a positive integer`);
  const pad = o.padding ?? 0;
  const [padT, padB, padL, padR] = typeof pad === 'number' ? [pad, pad, pad, pad] : pad;
  if (![padT, padB, padL, padR].every((v) => Number.isInteger(v) && v >= 0))
    throw new Error(`conv2d: padding ${JSON.stringify(pad)} must be non-negative integers (one, or [top, bottom, left, right])`);
  const oh = Math.floor((h + padT + padB - kh) / stride) + 1;
  const ow = Math.floor((wd + padL + padR - kw) / stride) + 1;
  if (oh < 1 || ow < 1 || kh < 1 || kw < 1)
    throw new Error(`conv2d: a ${kh}x${kw} kernel does not fit input ${shp(x)} with padding ${JSON.stringify(pad)}`);
  if (o.residual && o.residual.shape.join() !== [n, oc, oh, ow].join())
    throw new Error(`conv2d: residual ${shp(o.residual)} must have the output's shape [${[n, oc, oh, ow].join(', ')}]`);
  return { n, c, h, w: wd, o: oc, kh, kw, oh, ow, stride, padT, padL };
}

// Params of kernels/conv2d.wgsl: the geometry, 4 element offsets, then per-entry fields.
const dims = (g: Geometry) => [g.n, g.c, g.h, g.w, g.o, g.oh, g.ow, g.kh, g.kw, g.stride, g.padT, g.padL];

function forward(x: Tensor, w: Tensor, b: Tensor | undefined, res: Tensor | undefined, act: 'none' | 'silu', g: Geometry): Tensor {
  const y = Tensor.empty([g.n, g.o, g.oh, g.ow], x.dtype);
  // Absent bias / residual bind x in their place; the kernel never reads them.
  const r = [x, w, b ?? x, res ?? x].map(bindRange);
  const t = convTileFor(g.o, g.n * g.oh * g.ow);
  device().dispatch({
    kernel: 'conv2d',
    entry: 'forward',
    defines: tileDefines(t, x.dtype),
    buffers: [...r.map((v) => v.binding), y.binding()],
    params: [...dims(g), ...r.map((v) => v.elemOffset), 0, b ? 1 : 0, res ? 1 : 0, act === 'silu' ? 4 : 0],
    workgroups: [Math.ceil((g.n * g.oh * g.ow) / (t.wx * t.rn)), Math.ceil(g.o / (t.wy * t.rm))],
  });
  return y;
}

/** dX: a transposed convolution of dY, one grid layer per stride phase. */
function gradInput(dy: Tensor, w: Tensor, g: Geometry): Tensor {
  const dx = Tensor.empty([g.n, g.c, g.h, g.w], dy.dtype);
  const r = [dy, w].map(bindRange);
  const phase0 = g.n * Math.ceil(g.h / g.stride) * Math.ceil(g.w / g.stride);
  const t = convTileFor(g.c, phase0);
  device().dispatch({
    kernel: 'conv2d',
    entry: 'grad_input',
    defines: tileDefines(t, dy.dtype),
    buffers: [...r.map((v) => v.binding), dx.binding()],
    params: [...dims(g), r[0].elemOffset, r[1].elemOffset, 0, 0],
    workgroups: [Math.ceil(phase0 / (t.wx * t.rn)), Math.ceil(g.c / (t.wy * t.rm)), g.stride * g.stride],
  });
  return dx;
}

/** dW as a GEMM reducing over the output pixels, split into f32 partial sums when that adds parallelism. */
function gradWeight(dy: Tensor, x: Tensor, g: Geometry): Tensor {
  const k = g.c * g.kh * g.kw;
  const pixels = g.n * g.oh * g.ow;
  const t = convTileFor(g.o, k);
  const tiles = Math.ceil(g.o / (t.wy * t.rm)) * Math.ceil(k / (t.wx * t.rn));
  const want = Math.max(1, Math.min(Math.ceil(TARGET_WORKGROUPS / tiles), Math.floor(pixels / MIN_SPLIT_PIXELS)));
  const chunk = Math.max(BK, Math.ceil(pixels / want / BK) * BK);
  const splits = Math.ceil(pixels / chunk);
  const shape = [g.o, g.c, g.kh, g.kw];
  const part = Tensor.empty([splits, ...shape], 'f32');
  const r = [x, dy].map(bindRange);
  const dev = device();
  dev.dispatch({
    kernel: 'conv2d',
    entry: 'grad_weight',
    defines: tileDefines(t, x.dtype),
    buffers: [...r.map((v) => v.binding), part.binding()],
    params: [...dims(g), r[0].elemOffset, r[1].elemOffset, 0, 0, chunk],
    workgroups: [Math.ceil(k / (t.wx * t.rn)), Math.ceil(g.o / (t.wy * t.rm)), splits],
  });
  if (splits === 1 && x.dtype === 'f32') {
    const dw = part.view(shape);
    part.dispose();
    return dw;
  }
  const dw = Tensor.empty(shape, x.dtype);
  dev.dispatch({
    kernel: 'conv2d',
    entry: 'reduce_splits',
    defines: tileDefines(convTileFor(64, 64), x.dtype), // the tile does not matter here: one pipeline
    buffers: [part.binding(), dw.binding()],
    params: [dw.size, splits],
    workgroups: grid1d(dw.size),
  });
  part.dispose();
  return dw;
}

// ---- the GEMM path --------------------------------------------------------------------------
// conv2d as batched GEMMs on the matmul kernel around an explicit column matrix
// (kernels/im2col.wgsl): y[n] = W [O, C·KH·KW] · cols[n], dX = col2im(Wᵀ · dY[n]) (stride 1: see gemmGradInput),
// dW = Σ_n dY[n] · cols[n]ᵀ (cols recomputed, not kept: backward holds x and w only, as the
// kernel path). A 1x1, stride-1, unpadded conv is its own column matrix. The matmul kernel's
// register tiles fed by subgroupShuffle outrun the implicit-GEMM kernel's workgroup-memory
// tiles on lavapipe even after writing and reading the column matrix (measurements in
// bench/README.md), so every conv whose column matrix fits COLS_BYTES takes this path and
// the implicit GEMM serves the rest (320 channels at 128x128 needs 189 MB an image).
const COLS_BYTES = 64 * 2 ** 20;

const isPlainGemm = (g: Geometry) => g.kh === 1 && g.kw === 1 && g.stride === 1 && g.oh === g.h && g.ow === g.w;
const colsSize = (g: Geometry) => g.n * g.c * g.kh * g.kw * g.oh * g.ow;

/** Whether conv2d runs as GEMMs on the matmul kernel (see above). */
function usesGemmPath(g: Geometry, dtype: string, impl: Conv2dOptions['impl'] = 'auto'): boolean {
  if (isPlainGemm(g) || impl === 'gemm') return true;
  return impl === 'auto' && colsSize(g) * (dtype === 'f16' ? 2 : 4) <= COLS_BYTES;
}

/** im2col (flip: the transposed convolution's taps, see kernels/im2col.wgsl) or col2im of src under geometry g. */
function colsLaunch(entry: 'im2col' | 'col2im', src: Tensor, shape: number[], g: Geometry, flip = false): Tensor {
  const out = Tensor.empty(shape, src.dtype);
  const r = bindRange(src);
  const threads = entry === 'im2col' ? out.size / g.ow : out.size; // im2col: a thread per output row
  // rows of whole vec4s: stride 1 and input rows, output rows and the start aligned to 4
  const vec4 = entry === 'im2col' && g.stride === 1 && g.w % 4 === 0 && g.ow % 4 === 0 && r.elemOffset % 4 === 0;
  device().dispatch({
    kernel: 'im2col',
    entry: vec4 ? 'im2col_vec4' : entry,
    defines: { T: src.dtype },
    buffers: vec4 ? [vec4View(r.binding), out.binding()] : [r.binding, out.binding()],
    params: [g.c, g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.stride, g.padT, g.padL, r.elemOffset, threads, flip ? 1 : 0],
    workgroups: grid1d(threads),
  });
  return out;
}

/** cols [N, C·KH·KW, OH·OW] (x itself, viewed, for a plain GEMM). */
const columns = (x: Tensor, g: Geometry): Tensor =>
  isPlainGemm(g) ? x.view([g.n, g.c, g.h * g.w]) : colsLaunch('im2col', x, [g.n, g.c * g.kh * g.kw, g.oh * g.ow], g);

// Raw launches: conv2d records the op itself.
const gemmForward = (x: Tensor, w: Tensor, b: Tensor | undefined, res: Tensor | undefined, act: 'none' | 'silu', g: Geometry): Tensor =>
  noGrad(() => gemmForwardRaw(x, w, b, res, act, g));

function gemmForwardRaw(x: Tensor, w: Tensor, b: Tensor | undefined, res: Tensor | undefined, act: 'none' | 'silu', g: Geometry): Tensor {
  const cols = columns(x, g);
  const w2 = w.view([g.o, g.c * g.kh * g.kw]);
  // the residual goes in before the activation: then SiLU runs as its own op
  let y = matmulKernel(w2, cols, { rowBias: b, act: res ? 'none' : act });
  for (const t of [cols, w2]) t.dispose();
  if (res) {
    const pre = y;
    y = withView(res, pre.shape, (r) => add(pre, r));
    pre.dispose();
    if (act === 'silu') {
      const s = silu(y);
      y.dispose();
      y = s;
    }
  }
  const out = y.view([g.n, g.o, g.oh, g.ow]);
  y.dispose();
  return out;
}

/**
 * dX of the GEMM path. Stride 1: the transposed convolution as a forward one, Wᵀ · im2col(dY)
 * with the taps flipped and padding KH−1−padT (KW−1−padL): the column matrix comes from
 * im2col's vec4 rows and needs no col2im, whose per-tap gathers are scalar loads (Wᵀ here is
 * w with O and C swapped, a copy of the weights). Strided convs: col2im(Wᵀ · dY).
 */
function gemmGradInput(dy: Tensor, w: Tensor, g: Geometry): Tensor {
  if (!isPlainGemm(g) && g.stride === 1 && g.padT < g.kh && g.padL < g.kw) {
    const gt: Geometry = { ...g, c: g.o, h: g.oh, w: g.ow, o: g.c, oh: g.h, ow: g.w, padT: g.kh - 1 - g.padT, padL: g.kw - 1 - g.padL };
    const cols = colsLaunch('im2col', dy, [g.n, g.o * g.kh * g.kw, g.h * g.w], gt, true);
    const wt = noGrad(() => permute(w, [1, 0, 2, 3]));
    const dx = withView(wt, [g.c, g.o * g.kh * g.kw], (a) => matmulKernel(a, cols, {}));
    for (const t of [cols, wt]) t.dispose();
    const out = dx.view([g.n, g.c, g.h, g.w]);
    dx.dispose();
    return out;
  }
  const w2 = w.view([g.o, g.c * g.kh * g.kw]);
  const dcols = withView(dy, [g.n, g.o, g.oh * g.ow], (d) => matmulKernel(w2, d, { transA: true }));
  w2.dispose();
  const dx = isPlainGemm(g) ? dcols.view([g.n, g.c, g.h, g.w]) : colsLaunch('col2im', dcols, [g.n, g.c, g.h, g.w], g);
  dcols.dispose();
  return dx;
}

function gemmGradWeight(dy: Tensor, x: Tensor, g: Geometry): Tensor {
  const cols = columns(x, g);
  const per = withView(dy, [g.n, g.o, g.oh * g.ow], (d) => matmulKernel(d, cols, { transB: true }));
  cols.dispose();
  const dw = g.n > 1 ? sum(per, 0) : per.view(per.shape.slice(1));
  per.dispose();
  const out = dw.view([g.o, g.c, g.kh, g.kw]);
  dw.dispose();
  return out;
}

/**
 * y = act(conv2d(x, w) + b + residual) as torch.nn.functional.conv2d on NCHW input
 * x [N, C, H, W] and weight w [O, C, KH, KW] (groups = 1), f32 or f16 storage with f32
 * accumulation. Padding may be asymmetric: [top, bottom, left, right] (diffusers'
 * Downsample2D pads (0, 1, 0, 1) before its stride-2 3x3 conv). With gradients on and an
 * activation, the activation runs as its own op so its backward sees the pre-activation.
 */
export function conv2d(x: Tensor, w: Tensor, b?: Tensor, opts: Conv2dOptions = {}): Tensor {
  const g = geometry(x, w, b, opts);
  const act = opts.act ?? 'none';
  const res = opts.residual;
  if (act !== 'none' && needsGrad(x, w, b, res)) {
    const pre = conv2d(x, w, b, { ...opts, act: 'none' });
    const y = silu(pre);
    pre.dispose();
    return y;
  }
  const gemm = usesGemmPath(g, x.dtype, opts.impl);
  const y = (gemm ? gemmForward : forward)(x, w, b, res, act, g);
  // Save only what the needed gradients read: dX reads w, dW reads x.
  const wantX = needsGrad(x);
  const wantW = needsGrad(w);
  const saved = [...(wantW ? [x] : []), ...(wantX ? [w] : [])];
  return record('conv2d', y, [x, w, b ?? null, res ?? null], saved, (dy, s) => [
    wantX ? (gemm ? gemmGradInput : gradInput)(dy, s[s.length - 1], g) : null,
    wantW ? (gemm ? gemmGradWeight : gradWeight)(dy, s[0], g) : null,
    b ? withView(dy, [g.n, g.o, g.oh * g.ow], (v) => sum(v, [0, 2])) : null,
    res ? dy.view(dy.shape) : null,
  ]);
}

function upsampleLaunch(entry: 'forward' | 'backward', src: Tensor, outShape: number[], inPixels: number, w: number): Tensor {
  const out = Tensor.empty(outShape, src.dtype);
  if (inPixels === 0) return out;
  const r = bindRange(src);
  device().dispatch({
    kernel: 'upsample',
    entry,
    defines: { T: src.dtype },
    buffers: [r.binding, out.binding()],
    params: [inPixels, w, r.elemOffset],
    workgroups: grid1d(inPixels),
  });
  return out;
}

/** Nearest-neighbour 2x upsampling of [N, C, H, W], as F.interpolate(x, scale_factor=2, mode='nearest'). */
export function upsampleNearest2x(x: Tensor): Tensor {
  if (x.rank !== 4) throw new Error(`upsampleNearest2x: input x must be [N, C, H, W], got [${x.shape.join(', ')}]`);
  const [n, c, h, w] = x.shape;
  const y = upsampleLaunch('forward', x, [n, c, 2 * h, 2 * w], x.size, w);
  return record('upsampleNearest2x', y, [x], [], (g) => [upsampleLaunch('backward', g, [n, c, h, w], x.size, w)]);
}
