// Float64 CPU reference implementations of the runtime's ops, written independently of
// the kernels (plain loops over multi-indices), for tests and gradient checks.
// Arrays are { data, shape } with row-major contiguous data; broadcasting follows NumPy.

export interface Arr {
  data: Float64Array;
  shape: number[];
}

export const arr = (data: ArrayLike<number>, shape: readonly number[]): Arr => {
  const a = { data: Float64Array.from(data), shape: [...shape] };
  if (a.data.length !== numel(shape)) throw new Error(`ref: ${a.data.length} values for shape [${shape}]`);
  return a;
};

export const numel = (shape: readonly number[]): number => shape.reduce((p, d) => p * d, 1);

export function stridesOf(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  for (let i = shape.length - 1, acc = 1; i >= 0; acc *= shape[i], i--) s[i] = acc;
  return s;
}

const normAxis = (axis: number, rank: number): number => (axis < 0 ? axis + rank : axis);

/** The multi-index of linear index `i` in `shape`. */
export function unravel(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = i % shape[d];
    i = Math.floor(i / shape[d]);
  }
  return idx;
}

export function broadcastShapes(...shapes: (readonly number[])[]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  return Array.from({ length: rank }, (_, i) => {
    const dims = shapes.map((s) => s[s.length - rank + i] ?? 1);
    const d = Math.max(...dims);
    if (dims.some((x) => x !== 1 && x !== d)) throw new Error(`ref: cannot broadcast ${shapes.map((s) => `[${s}]`).join(' ')}`);
    return d;
  });
}

/** Linear index into `shape` of the element that broadcasting maps to output multi-index `idx`. */
function bcIndex(idx: number[], shape: readonly number[]): number {
  const lead = idx.length - shape.length;
  let off = 0;
  for (let d = 0; d < shape.length; d++) off = off * shape[d] + (shape[d] === 1 ? 0 : idx[lead + d]);
  return off;
}

/** out = f(a, b, ...) elementwise over broadcast inputs (optionally broadcast further to `shape`). */
export function map(f: (...v: number[]) => number, inputs: Arr[], shape?: readonly number[]): Arr {
  const out = broadcastShapes(...inputs.map((x) => x.shape), shape ?? []);
  const data = new Float64Array(numel(out));
  for (let i = 0; i < data.length; i++) {
    const idx = unravel(i, out);
    data[i] = f(...inputs.map((x) => x.data[bcIndex(idx, x.shape)]));
  }
  return { data, shape: out };
}

// ---- scalar functions ------------------------------------------------------------------
/** erf to ~1e-15: Taylor series near 0, Lentz-free backward continued fraction for erfc beyond. */
export function erf(x: number): number {
  const z = Math.abs(x);
  if (z < 3) {
    let term = z;
    let s = z;
    for (let n = 1; Math.abs(term) > 1e-17 * Math.abs(s); n++) {
      term *= (-z * z) / n;
      s += term / (2 * n + 1);
    }
    return Math.sign(x) * s * (2 / Math.sqrt(Math.PI));
  }
  let k = z;
  for (let n = 200; n >= 1; n--) k = z + n / 2 / k;
  return Math.sign(x) * (1 - Math.exp(-z * z) / (Math.sqrt(Math.PI) * k));
}

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));
const gelu = (x: number): number => 0.5 * x * (1 + erf(x / Math.SQRT2));
const geluTanh = (x: number): number => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

/** Every unary op of runtime/ops/elementwise.ts, by name. */
export const unaryRef = {
  neg: (x: number) => -x,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x: number) => 1 / Math.sqrt(x),
  abs: Math.abs,
  relu: (x: number) => Math.max(x, 0),
  sigmoid,
  tanh: Math.tanh,
  silu: (x: number) => x * sigmoid(x),
  gelu,
  geluTanh,
  sin: Math.sin,
  cos: Math.cos,
  square: (x: number) => x * x,
  reciprocal: (x: number) => 1 / x,
} satisfies Record<string, (x: number) => number>;

export type Activation = 'none' | 'relu' | 'gelu' | 'geluTanh' | 'silu';
export const activationRef: Record<Activation, (x: number) => number> = {
  none: (x) => x,
  relu: unaryRef.relu,
  gelu,
  geluTanh,
  silu: unaryRef.silu,
};

// ---- reductions ------------------------------------------------------------------------
export type ReduceOp = 'sum' | 'mean' | 'max' | 'min' | 'argmax' | 'argmin';

/** Reduction over `axes` (all by default). argmax/argmin take one axis; ties give the lowest index. */
export function reduce(x: Arr, op: ReduceOp, axes?: number | number[], keepDims = false): Arr {
  const list = axes === undefined ? x.shape.map((_, i) => i) : (Array.isArray(axes) ? axes : [axes]).map((a) => normAxis(a, x.shape.length));
  const red = new Set(list);
  const kept = x.shape.map((d, i) => (red.has(i) ? 1 : d));
  const n = numel(kept);
  const acc = new Float64Array(n).fill(op === 'max' || op === 'argmax' ? -Infinity : op === 'min' || op === 'argmin' ? Infinity : 0);
  const arg = new Float64Array(n).fill(-1);
  const ks = stridesOf(kept);
  let count = 1;
  for (const a of red) count *= x.shape[a];
  for (let i = 0; i < x.data.length; i++) {
    const idx = unravel(i, x.shape);
    let o = 0;
    idx.forEach((k, d) => (o += (red.has(d) ? 0 : k) * ks[d]));
    const v = x.data[i];
    const along = list.length === 1 ? idx[list[0]] : 0;
    if (op === 'sum' || op === 'mean') acc[o] += v;
    else if ((op === 'max' || op === 'argmax') ? v > acc[o] : v < acc[o]) {
      acc[o] = v;
      arg[o] = along;
    } else if (arg[o] < 0) arg[o] = along; // every value infinite: still a valid index
  }
  if (op === 'mean') for (let o = 0; o < n; o++) acc[o] /= count;
  const data = op === 'argmax' || op === 'argmin' ? arg : acc;
  return { data, shape: keepDims ? kept : x.shape.filter((_, i) => !red.has(i)) };
}

// ---- matmul ----------------------------------------------------------------------------
export interface MatmulRefOptions {
  transA?: boolean;
  transB?: boolean;
  bias?: Arr;
  act?: Activation;
}

/** act(opA(a) @ opB(b) + bias) with NumPy batch broadcasting over the leading axes. */
export function matmul(a: Arr, b: Arr, o: MatmulRefOptions = {}): Arr {
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [m, k] = o.transA ? [ac, ar] : [ar, ac];
  const [k2, n] = o.transB ? [bc, br] : [br, bc];
  if (k !== k2) throw new Error(`ref matmul: inner dimensions ${k} and ${k2}`);
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const batch = broadcastShapes(batchA, batchB);
  const nb = numel(batch);
  const f = activationRef[o.act ?? 'none'];
  const out = new Float64Array(nb * m * n);
  for (let bi = 0; bi < nb; bi++) {
    const idx = unravel(bi, batch);
    const pa = bcIndex(idx, batchA) * ar * ac;
    const pb = bcIndex(idx, batchB) * br * bc;
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let s = o.bias ? o.bias.data[j] : 0;
        for (let t = 0; t < k; t++) {
          const av = a.data[pa + (o.transA ? t * ac + i : i * ac + t)];
          const bv = b.data[pb + (o.transB ? j * bc + t : t * bc + j)];
          s += av * bv;
        }
        out[(bi * m + i) * n + j] = f(s);
      }
  }
  return { data: out, shape: [...batch, m, n] };
}

// ---- softmax ---------------------------------------------------------------------------
export function softmax(x: Arr, axis = -1, log = false): Arr {
  const a = normAxis(axis, x.shape.length);
  const len = x.shape[a];
  const inner = numel(x.shape.slice(a + 1));
  const outer = numel(x.shape.slice(0, a));
  const data = new Float64Array(x.data.length);
  for (let o = 0; o < outer; o++)
    for (let q = 0; q < inner; q++) {
      const at = (k: number) => (o * len + k) * inner + q;
      let m = -Infinity;
      for (let k = 0; k < len; k++) m = Math.max(m, x.data[at(k)]);
      let s = 0;
      for (let k = 0; k < len; k++) s += Math.exp(x.data[at(k)] - m);
      for (let k = 0; k < len; k++) data[at(k)] = log ? x.data[at(k)] - m - Math.log(s) : Math.exp(x.data[at(k)] - m) / s;
    }
  return { data, shape: [...x.shape] };
}

export const logSoftmax = (x: Arr, axis = -1): Arr => softmax(x, axis, true);

// ---- shape ops -------------------------------------------------------------------------
export function permute(x: Arr, perm: number[]): Arr {
  const p = perm.map((a) => normAxis(a, x.shape.length));
  const shape = p.map((a) => x.shape[a]);
  const xs = stridesOf(x.shape);
  const data = new Float64Array(x.data.length);
  for (let i = 0; i < data.length; i++) {
    const idx = unravel(i, shape);
    data[i] = x.data[idx.reduce((s, k, d) => s + k * xs[p[d]], 0)];
  }
  return { data, shape };
}

export function transpose(x: Arr, a = -2, b = -1): Arr {
  const p = x.shape.map((_, i) => i);
  const [i, j] = [normAxis(a, p.length), normAxis(b, p.length)];
  [p[i], p[j]] = [p[j], p[i]];
  return permute(x, p);
}

export function slice(x: Arr, axis: number, start: number, end: number): Arr {
  const a = normAxis(axis, x.shape.length);
  const len = x.shape[a];
  const s = start < 0 ? start + len : start;
  const e = Math.min(end < 0 ? end + len : end, len);
  const shape = x.shape.map((d, i) => (i === a ? e - s : d));
  const xs = stridesOf(x.shape);
  const data = new Float64Array(numel(shape));
  for (let i = 0; i < data.length; i++) {
    const idx = unravel(i, shape);
    idx[a] += s;
    data[i] = x.data[idx.reduce((acc, k, d) => acc + k * xs[d], 0)];
  }
  return { data, shape };
}

export function concat(xs: Arr[], axis: number): Arr {
  const a = normAxis(axis, xs[0].shape.length);
  const shape = xs[0].shape.map((d, i) => (i === a ? xs.reduce((s, x) => s + x.shape[a], 0) : d));
  const data = new Float64Array(numel(shape));
  for (let i = 0; i < data.length; i++) {
    const idx = unravel(i, shape);
    let part = 0;
    while (idx[a] >= xs[part].shape[a]) idx[a] -= xs[part++].shape[a];
    const x = xs[part];
    data[i] = x.data[idx.reduce((acc, k, d) => acc * x.shape[d] + k, 0)];
  }
  return { data, shape };
}

export const stack = (xs: Arr[], axis = 0): Arr => {
  const a = normAxis(axis, xs[0].shape.length + 1);
  return concat(xs.map((x) => ({ data: x.data, shape: [...x.shape.slice(0, a), 1, ...x.shape.slice(a)] })), a);
};

export const expand = (x: Arr, shape: readonly number[]): Arr => map((v) => v, [x], shape);

// ---- Philox4x32-10 (kernels/rng.wgsl) --------------------------------------------------
const M0 = 0xd2511f53n;
const M1 = 0xcd9e8d57n;

/** Philox4x32-10 of counter c (4 words) under key k (2 words), with BigInt products. */
export function philox4x32(c: readonly number[], k: readonly number[]): number[] {
  let [c0, c1, c2, c3] = c.map((v) => v >>> 0);
  let [k0, k1] = k.map((v) => v >>> 0);
  for (let r = 0; r < 10; r++) {
    const p0 = M0 * BigInt(c0);
    const p1 = M1 * BigInt(c2);
    const hi0 = Number(p0 >> 32n);
    const lo0 = Number(p0 & 0xffffffffn);
    const hi1 = Number(p1 >> 32n);
    const lo1 = Number(p1 & 0xffffffffn);
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
    k0 = (k0 + 0x9e3779b9) >>> 0;
    k1 = (k1 + 0xbb67ae85) >>> 0;
  }
  return [c0, c1, c2, c3];
}

/** The 4n words of draws 0..n-1 of stream `stream` under a 64-bit seed, as rng.wgsl orders them. */
function philoxWords(count: number, seed: bigint, stream: number): number[] {
  const key = [Number(seed & 0xffffffffn), Number((seed >> 32n) & 0xffffffffn)];
  const words: number[] = [];
  for (let t = 0; words.length < count; t++) words.push(...philox4x32([t, stream >>> 0, Math.floor(stream / 2 ** 32), 0], key));
  return words;
}

const unit = (w: number): number => (w >>> 8) / 16777216;

/**
 * rand(): low + (high - low) * u in f32 arithmetic, u = 24-bit word / 2^24. Exact for any
 * range whose width is a power of two (then a fused multiply-add rounds the same).
 */
export function philoxUniform(count: number, seed: number | bigint, stream: number, low = 0, high = 1): Float32Array {
  const w = philoxWords(count, BigInt.asUintN(64, BigInt(seed)), stream);
  const width = Math.fround(Math.fround(high) - Math.fround(low));
  return Float32Array.from({ length: count }, (_, i) => Math.fround(low + Math.fround(width * unit(w[i]))));
}

/** randn(): Box-Muller on word pairs (x, y) and (z, w) of each block, in float64. */
export function philoxNormal(count: number, seed: number | bigint, stream: number, mean = 0, std = 1): Float64Array {
  const w = philoxWords(count + 4, BigInt.asUintN(64, BigInt(seed)), stream);
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const base = i - (i % 4);
    const pair = i % 4 < 2 ? base : base + 2;
    const r = Math.sqrt(-2 * Math.log(1 - unit(w[pair])));
    const theta = 2 * Math.PI * unit(w[pair + 1]);
    out[i] = mean + std * r * (i % 2 === 0 ? Math.cos(theta) : Math.sin(theta));
  }
  return out;
}

// ---- f16 -------------------------------------------------------------------------------
const roundHalfEven = (v: number): number => {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 ? 2 * Math.round(v / 2) : r;
};

/** The f16 value nearest to x, ties to even (IEEE 754 binary16: 10-bit mantissa, max 65504). */
export function roundToF16(x: number): number {
  if (Number.isNaN(x) || !Number.isFinite(x) || x === 0) return x;
  const s = Math.sign(x);
  const ax = Math.abs(x);
  if (ax >= 65520) return s * Infinity; // at or past the midpoint between 65504 and 2^16
  let e = Math.floor(Math.log2(ax));
  if (2 ** e > ax) e--; // log2 rounding near powers of two
  else if (2 ** (e + 1) <= ax) e++;
  const quantum = 2 ** (Math.max(e, -14) - 10); // subnormals share the exponent -14
  return s * roundHalfEven(ax / quantum) * quantum;
}

// ---- comparison ------------------------------------------------------------------------
/** max |got - want| / max(max |want|, floor): the error measure of the tests. */
export function maxRelError(got: ArrayLike<number>, want: ArrayLike<number>, floor = 1e-12): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} vs reference ${want.length}`);
  let num = 0;
  let den = floor;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    num = Math.max(num, Number.isNaN(d) ? Infinity : d);
    den = Math.max(den, Math.abs(want[i]));
  }
  return num / den;
}

export function maxAbsError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} vs reference ${want.length}`);
  let m = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    m = Math.max(m, Number.isNaN(d) ? Infinity : d);
  }
  return m;
}
