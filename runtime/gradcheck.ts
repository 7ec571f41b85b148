// Gradient checking against an independent CPU reference: the GPU op's analytic gradient
// (reverse mode, f32) is compared with central finite differences of a float64 CPU
// implementation of the same function. The scalar checked is L = sum(w * f(x)) with a
// fixed random w, so every output element contributes with a distinct weight.
import { type Tensor, tidy } from './tensor.ts';
import { mul, sum } from './ops/index.ts';
import { tensor } from './ops/create.ts';

export type CpuFn = (xs: Float64Array[], shapes: number[][]) => Float64Array;

export interface GradcheckInput {
  shape: number[];
  /** values; default uniform in [-1, 1) from the seed */
  data?: ArrayLike<number>;
  /** false for inputs that take no gradient (indices, masks) */
  grad?: boolean;
}

export interface GradcheckResult {
  /** max |gpu forward - cpu forward| / max(|cpu forward|, 1e-6) */
  forwardError: number;
  /** per input: max |analytic - numeric| / max(|numeric|, 1e-6) */
  gradErrors: number[];
}

/** Small deterministic PRNG (mulberry32) for test data. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomArray(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  const r = seededRandom(seed);
  return Float64Array.from({ length: n }, () => lo + (hi - lo) * r());
}

const relErr = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let num = 0;
  let den = 1e-6;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
};

/**
 * Runs the check and returns the errors; `assertGradcheck` throws past tolerances.
 * `f` builds the op on GPU tensors (each input requires grad unless grad: false).
 */
export async function gradcheck(f: (xs: Tensor[]) => Tensor, ref: CpuFn, inputs: GradcheckInput[], opts: { eps?: number; seed?: number } = {}): Promise<GradcheckResult> {
  const eps = opts.eps ?? 1e-6;
  const seed = opts.seed ?? 1;
  const shapes = inputs.map((i) => i.shape);
  const data = inputs.map((inp, k) => {
    const n = inp.shape.reduce((a, b) => a * b, 1);
    // Round to f32 so the CPU sees exactly the values the GPU sees.
    return Float64Array.from(inp.data ? Array.from(inp.data) : randomArray(n, seed * 1000 + k), (v) => Math.fround(v));
  });
  const cpuOut = ref(data, shapes);
  const w = randomArray(cpuOut.length, seed * 7919, -1, 1).map(Math.fround);
  const loss = (xs: Float64Array[]): number => {
    const y = ref(xs, shapes);
    let s = 0;
    for (let i = 0; i < y.length; i++) s += w[i] * y[i];
    return s;
  };

  const xs = inputs.map((inp, k) => {
    const t = tensor(Float32Array.from(data[k]), inp.shape);
    return inp.grad === false ? t : t.requireGrad();
  });
  let gpuOut: Float32Array;
  const grads: (Float32Array | null)[] = [];
  try {
    const y = f(xs);
    gpuOut = (await y.data()) as Float32Array;
    if (gpuOut.length !== cpuOut.length) throw new Error(`gradcheck: GPU output has ${gpuOut.length} elements, CPU reference ${cpuOut.length}`);
    const l = tidy(() => sum(mul(y, tensor(Float32Array.from(w), y.shape))));
    l.backward();
    l.dispose();
    y.dispose();
    for (const x of xs) grads.push(x.grad ? ((await x.grad.data()) as Float32Array) : null);
  } finally {
    for (const x of xs) x.dispose();
  }

  const gradErrors = inputs.map((inp, k) => {
    if (inp.grad === false) return 0;
    const g = grads[k];
    const numeric = new Float64Array(data[k].length);
    for (let j = 0; j < numeric.length; j++) {
      const v = data[k][j];
      const h = eps * Math.max(1, Math.abs(v));
      data[k][j] = v + h;
      const lp = loss(data);
      data[k][j] = v - h;
      const lm = loss(data);
      data[k][j] = v;
      numeric[j] = (lp - lm) / (2 * h);
    }
    if (!g) return numeric.every((v) => Math.abs(v) < 1e-9) ? 0 : Infinity;
    return relErr(g, numeric);
  });
  return { forwardError: relErr(gpuOut, cpuOut), gradErrors };
}

/** gradcheck() that throws with the numbers when the forward or any gradient is off. */
export async function assertGradcheck(
  name: string,
  f: (xs: Tensor[]) => Tensor,
  ref: CpuFn,
  inputs: GradcheckInput[],
  opts: { eps?: number; seed?: number; rtol?: number; gradRtol?: number } = {},
): Promise<GradcheckResult> {
  const r = await gradcheck(f, ref, inputs, opts);
  const rtol = opts.rtol ?? 1e-4;
  const grtol = opts.gradRtol ?? 1e-4;
  if (!(r.forwardError <= rtol)) throw new Error(`${name}: forward differs from the CPU reference by ${r.forwardError} (relative, tolerance ${rtol})`);
  r.gradErrors.forEach((e, k) => {
    if (!(e <= grtol)) throw new Error(`${name}: gradient of input ${k} differs from finite differences by ${e} (relative, tolerance ${grtol})`);
  });
  return r;
}
