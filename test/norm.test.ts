// GroupNorm (+ fused SiLU), LayerNorm and RMSNorm: forward and gradients of input, weight
// and bias against PyTorch (test/fixtures/gen_nn.py: F.group_norm, F.layer_norm, LlamaGen's
// RMSNorm), finite differences of a float64 CPU reference, and f16 storage. Rows longer
// than one reduction chunk (nn_norm_wide) take the two-phase path of kernels/norm.wgsl.
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { type Tensor, groupNorm, layerNorm, mul, rmsNorm, slice, sum, tensor, tidy } from '../runtime/index.ts';
import { assertGradcheck, randomArray } from '../runtime/gradcheck.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { maxRelError, roundToF16 } from './ref/cpu.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

// Worst error per group, printed at the end (the numbers quoted in reports).
const noteWorst = errorReport();
async function expectClose(group: string, got: Tensor, want: ArrayLike<number>, rtol: number): Promise<void> {
  const err = maxRelError(await got.data(), want);
  noteWorst(group, err);
  expect(err, group).toBeLessThanOrEqual(rtol);
}

/** Float64 reference: x as `rows` rows of `len`; element k of row r has channel (r % groups)·(len/hw) + k/hw. */
interface RowsRef { rows: number; len: number; groups: number; hw: number; rms: boolean; silu: boolean; eps: number }
function normRef(x: ArrayLike<number>, w: ArrayLike<number> | null, b: ArrayLike<number> | null, s: RowsRef): Float64Array {
  const y = new Float64Array(s.rows * s.len);
  for (let r = 0; r < s.rows; r++) {
    const row = Array.from({ length: s.len }, (_, k) => x[r * s.len + k]);
    const mean = s.rms ? 0 : row.reduce((a, v) => a + v, 0) / s.len;
    const v = row.reduce((a, e) => a + (e - mean) ** 2, 0) / s.len;
    const rstd = 1 / Math.sqrt(v + s.eps);
    row.forEach((e, k) => {
      const c = (r % s.groups) * (s.len / s.hw) + Math.floor(k / s.hw);
      const a = (e - mean) * rstd * (w ? w[c] : 1) + (b ? b[c] : 0);
      y[r * s.len + k] = s.silu ? a / (1 + Math.exp(-a)) : a;
    });
  }
  return y;
}
const groupRef = ([n, c, ...sp]: number[], groups: number, silu = false, eps = 1e-5): RowsRef => {
  const hw = sp.reduce((a, d) => a * d, 1);
  return { rows: n * groups, len: (c / groups) * hw, groups, hw, rms: false, silu, eps };
};
const lastRef = (shape: number[], rms: boolean, eps = 1e-5): RowsRef => {
  const d = shape.at(-1)!;
  return { rows: shape.reduce((a, v) => a * v, 1) / d, len: d, groups: 1, hw: 1, rms, silu: false, eps };
};

type Case = { x: Tensor; w?: Tensor; b?: Tensor };
/** Runs the fixture's layer (kind from cfg) on the given tensors. */
function layer(cfg: ArrayLike<number>, { x, w, b }: Case): Tensor {
  const [kind, groups, eps, silu] = Array.from(cfg);
  if (kind === 0) return groupNorm(x, groups, w, b, eps, { silu: silu === 1 });
  return kind === 1 ? layerNorm(x, w, b, eps) : rmsNorm(x, w, eps);
}

describe.each(['nn_norm.safetensors', 'nn_norm_wide.safetensors'])('vs PyTorch (%s)', async (name) => {
  const file = await openSafetensors(fixture(name));
  const cases = [...new Set<string>(file.keys().map((k: string) => k.split('.')[0]))].sort();
  const has = (c: string, k: string) => file.keys().includes(`${c}.${k}`);
  const load = async (c: string, k: string, dtype: 'f32' | 'f16' = 'f32') => tensor(await file.readF32(`${c}.${k}`), file.info(`${c}.${k}`).shape, dtype);

  it('has the generated cases', () => {
    expect(cases).toEqual(
      name === 'nn_norm.safetensors'
        ? ['gn3', 'gn32', 'gn3_noaffine', 'gn_1d', 'gn_silu', 'ln', 'ln_noaffine', 'rms', 'rms_wide']
        : ['gn_chunked', 'ln_chunked'],
    );
  });

  it.each(cases)('%s: forward and gradients of x, weight, bias (f32)', async (c) => {
    const cfg = await file.readF32(`${c}.cfg`);
    const t: Case = { x: (await load(c, 'x')).requireGrad() };
    if (has(c, 'w')) t.w = (await load(c, 'w')).requireGrad();
    if (has(c, 'b')) t.b = (await load(c, 'b')).requireGrad();
    const y = layer(cfg, t);
    const gy = await load(c, 'gy');
    const tol = 1e-5;
    await expectClose('f32 forward', y, await file.readF32(`${c}.y`), tol);
    y.backward(gy);
    await expectClose('f32 grad x', t.x.grad!, await file.readF32(`${c}.gx`), tol);
    if (t.w) await expectClose('f32 grad weight', t.w.grad!, await file.readF32(`${c}.gw`), tol);
    if (t.b) await expectClose('f32 grad bias', t.b.grad!, await file.readF32(`${c}.gb`), tol);
    for (const v of [y, gy, t.x, t.w, t.b]) v?.dispose();
  });

  // f16 storage (f32 statistics): the same layer on the f16-rounded inputs, against the
  // f32 layer on those rounded values. What differs is the f16 rounding of the outputs.
  // One case per kernel path (each new specialisation costs a shader compile).
  const f16Cases = cases.filter((c) => ['gn_silu', 'ln', 'rms', 'gn_chunked'].includes(c));
  it.each(f16Cases)('%s: f16 storage within 2e-3 of f32 on the same values', async (c) => {
    const cfg = await file.readF32(`${c}.cfg`);
    const names = ['x', 'w', 'b', 'gy'].filter((k) => has(c, k));
    const run = async (dtype: 'f32' | 'f16') => {
      const ts = Object.fromEntries(
        await Promise.all(names.map(async (k) => [k, tensor(Array.from(await file.readF32(`${c}.${k}`), roundToF16), file.info(`${c}.${k}`).shape, dtype)])),
      ) as Record<string, Tensor>;
      for (const k of ['x', 'w', 'b']) ts[k]?.requireGrad();
      const y = layer(cfg, { x: ts.x, w: ts.w, b: ts.b });
      expect(y.dtype).toBe(dtype);
      y.backward(ts.gy);
      const out = [await y.data(), ...(await Promise.all(['x', 'w', 'b'].filter((k) => ts[k]).map((k) => ts[k].grad!.data())))];
      y.dispose();
      for (const t of Object.values(ts)) t.dispose();
      return out;
    };
    const [lo, hi] = [await run('f16'), await run('f32')];
    lo.forEach((v, i) => {
      const err = maxRelError(v, hi[i]);
      const group = i === 0 ? 'f16 forward' : 'f16 gradients';
      noteWorst(group, err);
      expect(err, `${group} ${i}`).toBeLessThanOrEqual(2e-3);
    });
  });
});

describe('finite differences of a float64 reference', () => {
  it('groupNorm with weight, bias and SiLU', async () => {
    const shape = [2, 6, 3, 2];
    const s = groupRef(shape, 3, true);
    await assertGradcheck(
      'groupNorm',
      ([x, w, b]) => groupNorm(x, 3, w, b, 1e-5, { silu: true }),
      ([x, w, b]) => normRef(x, w, b, s),
      [{ shape }, { shape: [6] }, { shape: [6] }],
    );
  });

  it('groupNorm without affine, spatial 1x1', async () => {
    const shape = [3, 6, 1, 1];
    await assertGradcheck('groupNorm', ([x]) => groupNorm(x, 2), ([x]) => normRef(x, null, null, groupRef(shape, 2)), [{ shape }]);
  });

  it('layerNorm', async () => {
    const shape = [3, 7];
    await assertGradcheck(
      'layerNorm',
      ([x, w, b]) => layerNorm(x, w, b),
      ([x, w, b]) => normRef(x, w, b, lastRef(shape, false)),
      [{ shape }, { shape: [7] }, { shape: [7] }],
    );
  });

  it('rmsNorm', async () => {
    const shape = [2, 2, 5];
    await assertGradcheck('rmsNorm', ([x, w]) => rmsNorm(x, w, 1e-6), ([x, w]) => normRef(x, w, null, lastRef(shape, true, 1e-6)), [
      { shape },
      { shape: [5] },
    ]);
  });

  it('gradient of the weight only (the input takes none)', async () => {
    const shape = [4, 3];
    await assertGradcheck(
      'layerNorm weight',
      ([x, w]) => layerNorm(x, w),
      ([x, w]) => normRef(x, w, null, lastRef(shape, false)),
      [{ shape, grad: false }, { shape: [3] }],
    );
  });
});

describe('layouts', () => {
  it('reads an input view at an unaligned offset', async () => {
    const data = randomArray(7 * 45, 3);
    const big = tensor(Float32Array.from(data), [7, 45]);
    const x = slice(big, 0, 3, 7); // starts at element 135
    const w = tensor(Float32Array.from(randomArray(45, 4)), [45]);
    const want = normRef(Float32Array.from(data).subarray(135), await w.data(), null, lastRef([4, 45], true));
    const y = rmsNorm(x, w);
    await expectClose('views', y, want, 1e-5);
    for (const t of [big, x, w, y]) t.dispose();
  });

  it('more rows than one grid dimension holds (folded grid), forward and backward', async () => {
    const rows = 70001;
    const d = 3;
    const data = Float32Array.from(randomArray(rows * d, 5));
    const gyData = Float32Array.from(randomArray(rows * d, 6));
    const x = tensor(data, [rows, d]).requireGrad();
    const gy = tensor(gyData, [rows, d]);
    const y = layerNorm(x);
    const yRef = normRef(data, null, null, lastRef([rows, d], false));
    await expectClose('folded grid', y, yRef, 1e-5);
    y.backward(gy);
    // dx = rstd·(g - mean(g) - xh·mean(g·xh)) per row (the formula the gradchecks above verify)
    const gxRef = new Float64Array(rows * d);
    for (let r = 0; r < rows; r++) {
      const xs = Array.from(data.subarray(r * d, r * d + d));
      const mean = xs.reduce((a, v) => a + v, 0) / d;
      const rstd = 1 / Math.sqrt(xs.reduce((a, v) => a + (v - mean) ** 2, 0) / d + 1e-5);
      const g = Array.from(gyData.subarray(r * d, r * d + d));
      const xh = xs.map((v) => (v - mean) * rstd);
      const mg = g.reduce((a, v) => a + v, 0) / d;
      const mgx = g.reduce((a, v, k) => a + v * xh[k], 0) / d;
      for (let k = 0; k < d; k++) gxRef[r * d + k] = rstd * (g[k] - mg - xh[k] * mgx);
    }
    await expectClose('folded grid', x.grad!, gxRef, 1e-4);
    for (const t of [x, y, gy]) t.dispose();
  });
});

describe('weight gradient over several splits', () => {
  it('GroupNorm dw, db of [2,4,64,72]: 9216 positions a channel, reduced in 2 splits, against float64 sums', async () => {
    const shape = [2, 4, 64, 72];
    const [n, c, hw] = [2, 4, 64 * 72];
    const [xs, ws, bs, rs] = [randomArray(n * c * hw, 1), randomArray(c, 2), randomArray(c, 3), randomArray(n * c * hw, 4)];
    const [x, w, b, r] = [tensor(xs, shape), tensor(ws, [c]).requireGrad(), tensor(bs, [c]).requireGrad(), tensor(rs, shape)];
    const loss = tidy(() => sum(mul(groupNorm(x, 2, w, b), r)));
    loss.backward();
    // d loss / d y = r: dw[c] = Σ r·xh, db[c] = Σ r over the channel's samples and positions
    const dw = new Float64Array(c);
    const db = new Float64Array(c);
    const len = (c / 2) * hw;
    for (let row = 0; row < n * 2; row++) {
      const base = row * len;
      let mean = 0;
      for (let k = 0; k < len; k++) mean += xs[base + k] / len;
      let v = 0;
      for (let k = 0; k < len; k++) v += (xs[base + k] - mean) ** 2 / len;
      const rstd = 1 / Math.sqrt(v + 1e-5);
      for (let k = 0; k < len; k++) {
        const ch = (row % 2) * (c / 2) + Math.floor(k / hw);
        dw[ch] += rs[base + k] * (xs[base + k] - mean) * rstd;
        db[ch] += rs[base + k];
      }
    }
    await expectClose('split weight gradient', w.grad!, dw, 1e-4);
    await expectClose('split weight gradient', b.grad!, db, 1e-4);
    for (const t of [x, w, b, r, loss, w.grad!, b.grad!]) t.dispose();
  });
});

describe('argument errors', () => {
  it('name the argument at fault', () => {
    const x = tensor(new Float32Array(2 * 6 * 4), [2, 6, 2, 2]);
    const w5 = tensor(new Float32Array(5), [5]);
    const ids = tensor([1, 2], [2], 'i32');
    expect(() => groupNorm(x, 4)).toThrow(/groups 4 must be a positive divisor of the channel count 6/);
    expect(() => groupNorm(x, 3, w5)).toThrow(/groupNorm: weight \[5\] must be \[6\]/);
    expect(() => layerNorm(x, undefined, w5)).toThrow(/layerNorm: bias \[5\] must be \[2\]/);
    expect(() => rmsNorm(ids)).toThrow(/rmsNorm: input x is i32/);
    for (const t of [x, w5, ids]) t.dispose();
  });
});
