// GroupNorm (with optional fused SiLU), LayerNorm and RMSNorm with their gradients, all on
// kernels/norm.wgsl: normalise rows (groups of elements), then a per-channel affine.
import { type Binding, device, f32 } from '../device.ts';
import { needsGrad, record } from '../autograd.ts';
import { Tensor } from '../tensor.ts';
import { bindRange, grid1d } from './util.ts';
import { cast } from './shape.ts';

const WG = 256; // largest workgroup size of kernels/norm.wgsl
// A row longer than MIN_CHUNK elements is split over several workgroups when there are
// too few rows to reach TARGET_WORKGROUPS.
const MIN_CHUNK = 4096;
const TARGET_WORKGROUPS = 1024;
// Row entries take the smallest power-of-two workgroup (>= 32) giving each thread at most
// this many elements of its chunk.
const PER_THREAD = 16;
// affine_grad: split each channel's reduction into ranges of at least MIN_SPAN positions, so
// each of a workgroup's lanes sums PER_THREAD of them before the tree merge. Spans of 64 (one
// position a lane) made [8,32,32,32]'s weight gradient 80 ms on lavapipe, 7x its backward:
// thousands of workgroups, each paying a 256-wide tree of barriers for a few sums.
const MIN_SPAN = WG * PER_THREAD;

interface RowSpec {
  kind: 'groupNorm' | 'layerNorm' | 'rmsNorm';
  rows: number;
  len: number;
  groups: number;
  hw: number;
  /** channels of the affine: the length of w and b */
  channels: number;
  eps: number;
  silu: boolean;
}

const shp = (t: Tensor): string => `[${t.shape.join(', ')}]`;

function checkArgs(s: RowSpec, x: Tensor, w: Tensor | undefined, b: Tensor | undefined): void {
  x.assertLive(`${s.kind}: input x`);
  if (x.dtype !== 'f32' && x.dtype !== 'f16') throw new Error(`${s.kind}: input x is ${x.dtype}; it takes f32 or f16`);
  for (const [name, t] of [['weight', w], ['bias', b]] as const) {
    if (!t) continue;
    t.assertLive(`${s.kind}: ${name}`);
    if (t.dtype !== x.dtype) throw new Error(`${s.kind}: ${name} is ${t.dtype} but input x is ${x.dtype}`);
    if (t.rank !== 1 || t.shape[0] !== s.channels) throw new Error(`${s.kind}: ${name} ${shp(t)} must be [${s.channels}] for input x ${shp(x)}`);
  }
  if (!(s.eps >= 0)) throw new Error(`${s.kind}: eps ${s.eps} must be non-negative`);
}

function layout(s: RowSpec): { chunk: number; chunks: number; wg: number } {
  const chunks = s.len <= MIN_CHUNK ? 1 : Math.min(Math.ceil(s.len / MIN_CHUNK), Math.max(1, Math.ceil(TARGET_WORKGROUPS / s.rows)));
  const chunk = Math.ceil(s.len / chunks);
  return { chunk, chunks, wg: Math.min(WG, Math.max(32, 2 ** Math.ceil(Math.log2(Math.ceil(chunk / PER_THREAD))))) };
}

/**
 * What every entry of kernels/norm.wgsl binds first (x, w, b; absent ones bound to x and
 * never read), the params for a split of the work (chunk, chunks) and the constants.
 */
function kernelArgs(s: RowSpec, x: Tensor, w: Tensor | undefined, b: Tensor | undefined, dy: Tensor | null, chunk: number, chunks: number) {
  const [rx, rw, rb] = [x, w ?? x, b ?? x].map(bindRange);
  const rg = dy ? bindRange(dy) : null;
  return {
    inputs: [rx.binding, rw.binding, rb.binding],
    dy: rg?.binding,
    params: [s.rows, s.len, s.groups, s.hw, chunk, chunks, rx.elemOffset, w ? rw.elemOffset : 0, b ? rb.elemOffset : 0, rg?.elemOffset ?? 0, f32(s.eps)],
    constants: { RMS: s.kind === 'rmsNorm' ? 1 : 0, SILU: s.silu ? 1 : 0, HAS_W: w ? 1 : 0, HAS_B: b ? 1 : 0 },
    defines: { T: x.dtype },
  };
}

function normalize(s: RowSpec, x: Tensor, w: Tensor | undefined, b: Tensor | undefined): Tensor {
  checkArgs(s, x, w, b);
  const y = Tensor.empty(x.shape, x.dtype);
  if (y.size === 0) return y;
  const { chunk, chunks, wg } = layout(s);
  const dev = device();
  const k = kernelArgs(s, x, w, b, null, chunk, chunks);
  const constants = { ...k.constants, ONE_PASS: chunks === 1 ? 1 : 0, WG: wg };
  const run = (entry: string, buffers: Binding[]) =>
    dev.dispatch({ kernel: 'norm', entry, defines: k.defines, constants, buffers, params: k.params, workgroups: grid1d(s.rows * chunks, 1) });
  const part = chunks > 1 ? Tensor.empty([s.rows, chunks, 2], 'f32') : null;
  if (part) run('fwd_stats', [k.inputs[0], part.binding()]);
  const stats = Tensor.empty([s.rows, 2], 'f32');
  run('forward', [...k.inputs, part?.binding() ?? k.inputs[0], y.binding(), stats.binding()]);
  part?.dispose();
  const wantX = needsGrad(x);
  const wantW = !!w && needsGrad(w);
  const wantB = !!b && needsGrad(b);
  const saved = [x, stats, ...(w ? [w] : []), ...(b ? [b] : [])];
  const out = record(s.kind, y, [x, w ?? null, b ?? null], saved, (g, [xs, st, ...wb]) => {
    const ws = w ? wb[0] : undefined;
    const bs = b ? wb[w ? 1 : 0] : undefined;
    const gt = g.dtype === xs.dtype ? g : cast(g, xs.dtype);
    const dx = wantX ? gradInput(s, xs, ws, bs, st, gt) : null;
    const [dw, db] = wantW || wantB ? gradAffine(s, xs, ws, bs, st, gt) : [null, null];
    if (gt !== g) gt.dispose();
    if (dw && !wantW) dw.dispose();
    if (db && !wantB) db.dispose();
    return [dx, wantW ? dw : null, wantB ? db : null];
  });
  stats.dispose();
  return out;
}

function gradInput(s: RowSpec, x: Tensor, w: Tensor | undefined, b: Tensor | undefined, stats: Tensor, g: Tensor): Tensor {
  const dx = Tensor.empty(x.shape, x.dtype);
  const { chunk, chunks, wg } = layout(s);
  const dev = device();
  const k = kernelArgs(s, x, w, b, g, chunk, chunks);
  const constants = { ...k.constants, ONE_PASS: chunks === 1 ? 1 : 0, WG: wg };
  const run = (entry: string, buffers: Binding[]) =>
    dev.dispatch({ kernel: 'norm', entry, defines: k.defines, constants, buffers, params: k.params, workgroups: grid1d(s.rows * chunks, 1) });
  const part = chunks > 1 ? Tensor.empty([s.rows, chunks, 2], 'f32') : null;
  if (part) run('bwd_stats', [...k.inputs, stats.binding(), k.dy!, part.binding()]);
  run('backward', [...k.inputs, stats.binding(), k.dy!, part?.binding() ?? k.inputs[0], dx.binding()]);
  part?.dispose();
  return dx;
}

/** [dw, db] (both come from one pass; the caller disposes what it does not need). */
function gradAffine(s: RowSpec, x: Tensor, w: Tensor | undefined, b: Tensor | undefined, stats: Tensor, g: Tensor): [Tensor, Tensor] {
  const dev = device();
  const tc = s.hw === 1 ? 64 : 1;
  const tiles = Math.ceil(s.channels / tc);
  const positions = (s.rows / s.groups) * s.hw;
  const splits = Math.max(1, Math.min(Math.ceil(TARGET_WORKGROUPS / tiles), Math.floor(positions / MIN_SPAN)));
  const k = kernelArgs(s, x, w, b, g, Math.ceil(positions / splits), splits);
  const part = Tensor.empty([splits, s.channels, 2], 'f32');
  dev.dispatch({
    kernel: 'norm',
    entry: 'affine_grad',
    defines: k.defines,
    constants: { ...k.constants, TC: tc },
    buffers: [...k.inputs, stats.binding(), k.dy!, part.binding()],
    params: k.params,
    workgroups: [tiles, splits],
  });
  const dw = Tensor.empty([s.channels], x.dtype);
  const db = Tensor.empty([s.channels], x.dtype);
  dev.dispatch({
    kernel: 'norm',
    entry: 'affine_reduce',
    defines: k.defines,
    buffers: [part.binding(), dw.binding(), db.binding()],
    params: k.params,
    workgroups: [Math.ceil(s.channels / WG)],
  });
  part.dispose();
  return [dw, db];
}

export interface GroupNormOptions {
  /** apply SiLU to the output (fused; diffusers' norm + nonlinearity in ResnetBlock2D) */
  silu?: boolean;
}

/**
 * torch.nn.functional.group_norm on x [N, C, *spatial] with `groups` groups of C/groups
 * channels, optional weight and bias [C], then SiLU when opts.silu. Statistics in f32.
 */
export function groupNorm(x: Tensor, groups: number, weight?: Tensor, bias?: Tensor, eps = 1e-5, opts: GroupNormOptions = {}): Tensor {
  if (x.rank < 2) throw new Error(`groupNorm: input x ${shp(x)} must be [N, C, ...]`);
  const [n, c] = x.shape;
  if (!Number.isInteger(groups) || groups < 1 || c % groups !== 0)
    throw new Error(`groupNorm: groups ${groups} must be a positive divisor of the channel count ${c} of input x ${shp(x)}`);
  const hw = x.size / Math.max(1, n * c);
  return normalize(
    { kind: 'groupNorm', rows: n * groups, len: (c / groups) * hw, groups, hw, channels: c, eps, silu: !!opts.silu },
    x, weight, bias,
  );
}

function lastAxis(kind: 'layerNorm' | 'rmsNorm', x: Tensor, eps: number): RowSpec {
  if (x.rank < 1) throw new Error(`${kind}: input x must have at least one axis`);
  const d = x.shape[x.rank - 1];
  return { kind, rows: d === 0 ? 0 : x.size / d, len: d, groups: 1, hw: 1, channels: d, eps, silu: false };
}

/** torch.nn.functional.layer_norm over the last axis, with optional weight and bias [D]. */
export function layerNorm(x: Tensor, weight?: Tensor, bias?: Tensor, eps = 1e-5): Tensor {
  return normalize(lastAxis('layerNorm', x, eps), x, weight, bias);
}

/** RMSNorm over the last axis as in LlamaGen / T5: x·rsqrt(mean(x²) + eps)·weight, computed in f32. */
export function rmsNorm(x: Tensor, weight?: Tensor, eps = 1e-5): Tensor {
  return normalize(lastAxis('rmsNorm', x, eps), x, weight, undefined);
}
