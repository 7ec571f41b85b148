// Forward values of the core ops against the float64 CPU reference (test/ref/cpu.ts) and
// PyTorch golden numbers (test/fixtures/gen_core.py), on odd shapes that are not multiples
// of any workgroup or tile size, with broadcasting, views at unaligned offsets and f16 storage.
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import {
  type Activation, type Tensor, type UnaryOp, add, addScalar, affine, argmax, argmin, cast, clamp, compare, concat, contiguous, device, div,
  expand, linear, logSoftmax, map, matmul, max, maximum, mean, min, minimum, mul, permute, pow, reshape, slice, softmax, stack, sub,
  sum, tensor, tidy, transpose, unary, unaryOps, where,
} from '../runtime/index.ts';
import { randomArray } from '../runtime/gradcheck.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import * as ref from './ref/cpu.ts';
import { copyTuning } from '../runtime/ops/shape.ts';
import { type Arr, maxRelError } from './ref/cpu.ts';

const f32 = (a: ArrayLike<number>): Float64Array => Float64Array.from(a, Math.fround);
/** Random values rounded to f32 (so the reference sees exactly what the GPU sees). */
const rnd = (shape: number[], seed: number, lo = -1, hi = 1): Arr => ref.arr(f32(randomArray(ref.numel(shape), seed, lo, hi)), shape);
/** Small integers: many exact ties for max/argmax and comparisons. */
const ints = (shape: number[], seed: number, n = 4): Arr => ref.arr(randomArray(ref.numel(shape), seed, 0, n).map(Math.floor), shape);
const up = (a: Arr, dtype: 'f32' | 'f16' = 'f32'): Tensor => tensor(Float32Array.from(a.data), a.shape, dtype);

// Worst error seen per group, printed at the end (the numbers quoted in reports).
const noteWorst = errorReport();
function note(group: string, err: number): number {
  noteWorst(group, err);
  return err;
}

/** Runs the GPU op, checks shape and values against the reference within rtol (relative to max |ref|). */
async function expectClose(group: string, got: Tensor, want: Arr, rtol: number): Promise<void> {
  expect(got.shape, group).toEqual(want.shape);
  const err = note(group, maxRelError(await got.data(), want.data));
  expect(err, group).toBeLessThanOrEqual(rtol);
  got.dispose();
}

// ---- elementwise ---------------------------------------------------------------------
describe('elementwise', () => {
  // Domains: positive where the function needs it.
  const positive = new Set<UnaryOp>(['log', 'sqrt', 'rsqrt', 'reciprocal']);

  it('every unary op matches the reference on an odd-sized tensor', async () => {
    for (const [k, op] of unaryOps.entries()) {
      const x = positive.has(op) ? rnd([3, 67], k, 0.05, 4) : rnd([3, 67], k, -5, 5);
      const want = ref.map(ref.unaryRef[op], [x]);
      const t = up(x);
      await expectClose(`unary ${op}`, unary(op, t), want, 2e-6);
      t.dispose();
    }
  });

  const binaries: [string, (a: Tensor, b: Tensor) => Tensor, (a: number, b: number) => number][] = [
    ['add', add, (a, b) => a + b],
    ['sub', sub, (a, b) => a - b],
    ['mul', mul, (a, b) => a * b],
    ['div', div, (a, b) => a / b],
    ['pow', pow, (a, b) => a ** b],
    ['maximum', maximum, Math.max],
    ['minimum', minimum, Math.min],
  ];
  // [a shape, b shape]: broadcasting both ways, a scalar, a rank-0 tensor, equal shapes (fast path)
  const shapes: [number[], number[]][] = [[[3, 1, 7], [5, 1]], [[67], [1]], [[2, 3, 65], [2, 3, 65]], [[], [4, 3]], [[1, 5, 1], [2, 1, 9]]];

  it('binary ops broadcast like NumPy', async () => {
    for (const [name, op, f] of binaries)
      for (const [k, [sa, sb]] of shapes.entries()) {
        const a = name === 'pow' ? rnd(sa, 10 + k, 0.1, 3) : rnd(sa, 10 + k);
        // divisors kept away from 0
        const b = name === 'div' ? ref.map((v) => Math.fround(v + Math.sign(v) * 0.5), [rnd(sb, 20 + k)]) : rnd(sb, 20 + k, -2, 2);
        const [ta, tb] = [up(a), up(b)];
        await expectClose(`binary ${name}`, op(ta, tb), ref.map(f, [a, b]), 2e-6);
        ta.dispose();
        tb.dispose();
      }
  });

  it('reads views at unaligned element offsets', async () => {
    const base = rnd([1000], 3);
    const bt = up(base);
    const a = bt.view([7, 11], 13); // starts 52 bytes into the buffer
    const b = bt.view([11], 301);
    const want = ref.map((x, y) => x * y, [ref.arr(base.data.slice(13, 13 + 77), [7, 11]), ref.arr(base.data.slice(301, 312), [11])]);
    await expectClose('views', mul(a, b), want, 1e-7); // one f32 rounding
    // writing through an offset view: mapInto via contiguous() of a view
    await expectClose('views', contiguous(a), ref.arr(base.data.slice(13, 90), [7, 11]), 0);
    for (const t of [a, b, bt]) t.dispose();
  });

  it('where, compare, affine, clamp', async () => {
    const cond = ints([3, 1], 5, 2);
    const a = rnd([1, 5], 6);
    const b = rnd([3, 5], 7);
    const [tc, ta, tb] = [up(cond), up(a), up(b)];
    await expectClose('where', where(tc, ta, tb), ref.map((c, x, y) => (c !== 0 ? x : y), [cond, a, b]), 0);
    const x = ints([4, 9], 8);
    const y = ints([9], 9);
    const [tx, ty] = [up(x), up(y)];
    const cmps = { gt: (p: number, q: number) => p > q, ge: (p: number, q: number) => p >= q, lt: (p: number, q: number) => p < q,
      le: (p: number, q: number) => p <= q, eq: (p: number, q: number) => p === q, ne: (p: number, q: number) => p !== q };
    for (const [op, f] of Object.entries(cmps)) {
      const got = compare(op as keyof typeof cmps, tx, ty);
      expect(got.dtype).toBe('f32');
      await expectClose('compare', got, ref.map((p, q) => Number(f(p, q)), [x, y]), 0);
    }
    await expectClose('affine', affine(tb, 1.5, -0.25), ref.map((v) => 1.5 * v - 0.25, [b]), 1e-7);
    await expectClose('affine', addScalar(tb, 3), ref.map((v) => v + 3, [b]), 1e-7);
    await expectClose('clamp', clamp(tb, -0.3, 0.45), ref.map((v) => Math.min(Math.max(v, Math.fround(-0.3)), Math.fround(0.45)), [b]), 0);
    for (const t of [tc, ta, tb, tx, ty]) t.dispose();
  });

  it('integer tensors compute in integer arithmetic', async () => {
    const a = tensor([2147483000, -7, 5, 9], [4], 'i32');
    const b = tensor([600, 2, -3, 4], [4], 'i32');
    const s = add(a, b);
    expect(s.dtype).toBe('i32');
    expect(await s.toArray()).toEqual([2147483600, -5, 2, 13]); // beyond f32's exact range
    const q = map('x0 / x1', [a, b]);
    expect(await q.toArray()).toEqual([3579138, -3, -1, 2]); // truncating division
    const c = tensor([0, 1, 0, 2], [4], 'i32');
    const w = where(c, a, b);
    expect(w.dtype).toBe('i32');
    expect(await w.toArray()).toEqual([600, -7, -3, 9]);
    // integer reductions accumulate in integers, exact past f32's 2^24
    const big = tensor([16777217, 2, 1, -16777219, 16777219, 5], [2, 3], 'i32');
    const rs = [sum(big, 1), max(big, 0), min(big, 1), argmax(big, 0)];
    expect(rs[0].dtype).toBe('i32');
    expect(await Promise.all(rs.map((r) => r.toArray()))).toEqual([[16777220, 5], [16777217, 16777219, 5], [1, -16777219], [0, 1, 1]]);
    for (const t of [a, b, s, q, c, w, big, ...rs]) t.dispose();
  });
});

// ---- reductions ----------------------------------------------------------------------
describe('reductions', () => {
  const shape = [3, 5, 67]; // the last axis is longer than the 64-thread workgroup

  it('sum / mean / max / min over each axis, with and without keepDims', async () => {
    const x = rnd(shape, 31, -3, 3);
    const t = up(x);
    const ops = { sum, mean, max, min } as const;
    for (const [name, op] of Object.entries(ops))
      for (const axis of [0, 1, 2, -1])
        for (const keep of [false, true]) await expectClose(`reduce ${name}`, op(t, axis, keep), ref.reduce(x, name as ref.ReduceOp, axis, keep), 1e-6);
    t.dispose();
  });

  it('multi-axis and full sum / mean', async () => {
    const x = rnd([4, 3, 130, 5], 32);
    const t = up(x);
    for (const axes of [[0, 2], [1, 3], [-1, 0, 2], undefined])
      for (const keep of [false, true]) {
        await expectClose('reduce sum (multi-axis)', sum(t, axes, keep), ref.reduce(x, 'sum', axes, keep), 1e-6);
        await expectClose('reduce mean (multi-axis)', mean(t, axes, keep), ref.reduce(x, 'mean', axes, keep), 1e-6);
      }
    t.dispose();
  });

  it('a long axis over many adjacent outputs (the thread-per-output kernel)', async () => {
    const x = ints([70, 3, 4099], 34, 5);
    const t = up(x);
    for (const op of ['sum', 'max', 'argmax', 'argmin'] as const) {
      const f = { sum, max, argmax, argmin }[op];
      await expectClose(`reduce ${op} (columns)`, f(t, 0, false), ref.reduce(x, op, 0), 0);
    }
    t.dispose();
  });

  it('argmax / argmin return the first index among ties (like PyTorch)', async () => {
    const x = ints([6, 7, 70], 33, 3); // values 0..2: every row has ties
    const t = up(x);
    for (const op of ['argmax', 'argmin'] as const)
      for (const axis of [0, 1, 2])
        for (const keep of [false, true]) {
          const got = (op === 'argmax' ? argmax : argmin)(t, axis, keep);
          expect(got.dtype).toBe('i32');
          await expectClose(`reduce ${op}`, got, ref.reduce(x, op, axis, keep), 0);
        }
    // a long axis (several elements per thread) and a tie between far-apart positions
    const long = new Float32Array(1000).fill(1);
    long[777] = 5;
    long[123] = 5;
    long[500] = -2;
    long[900] = -2;
    const lt = tensor(long, [1000]);
    const [am, an] = [argmax(lt, 0), argmin(lt, 0)];
    expect([await am.item(), await an.item()]).toEqual([123, 500]);
    for (const u of [t, lt, am, an]) u.dispose();
  });
});

// ---- matmul --------------------------------------------------------------------------
describe('matmul', () => {
  // M, K, N straddle the 64x64 output tile and the 16-deep k step
  const [M, K, N] = [37, 19, 70];
  const op = (a: Arr, t: boolean): Arr => (t ? ref.transpose(a) : a);

  it('all four transpose combinations, batched', async () => {
    for (const transA of [false, true])
      for (const transB of [false, true]) {
        const a = op(rnd([3, M, K], 41), transA);
        const b = op(rnd([3, K, N], 42), transB);
        const [ta, tb] = [up(a), up(b)];
        await expectClose('matmul', matmul(ta, tb, { transA, transB }), ref.matmul(a, b, { transA, transB }), 1e-6);
        ta.dispose();
        tb.dispose();
      }
  });

  it('a shared rank-2 operand on either side, and batch broadcasting', async () => {
    const cases: [number[], number[], boolean, boolean][] = [
      [[2, 3, M, K], [K, N], false, false], // folded into one GEMM
      [[2, 3, K, M], [K, N], true, false],
      [[M, K], [4, K, N], false, false],
      [[M, K], [4, N, K], false, true],
      [[2, 1, M, K], [1, 3, K, N], false, false], // both broadcast: materialised
      [[2, 3, M, K], [3, K, N], false, false],
      [[5, M, K], [1, K, N], false, false], // a batch of one is shared
    ];
    for (const [k, [sa, sb, transA, transB]] of cases.entries()) {
      const a = rnd(sa, 50 + k);
      const b = rnd(sb, 60 + k);
      const [ta, tb] = [up(a), up(b)];
      await expectClose('matmul (shared/broadcast)', matmul(ta, tb, { transA, transB }), ref.matmul(a, b, { transA, transB }), 1e-6);
      ta.dispose();
      tb.dispose();
    }
  });

  it('fused bias and every activation', async () => {
    const a = rnd([2, M, K], 70);
    const b = rnd([N, K], 71);
    const bias = rnd([N], 72);
    const [ta, tb, tbias] = [up(a), up(b), up(bias)];
    for (const act of ['none', 'relu', 'gelu', 'geluTanh', 'silu'] as Activation[])
      await expectClose(`matmul bias+${act}`, matmul(ta, tb, { transB: true, bias: tbias, act }), ref.matmul(a, b, { transB: true, bias, act }), 2e-6);
    for (const t of [ta, tb, tbias]) t.dispose();
  });

  it('linear(x, W[out, in], b, act) is x Wᵀ + b', async () => {
    const x = rnd([3, 4, K], 78);
    const w = rnd([N, K], 79);
    const b = rnd([N], 80);
    const [tx, tw, tb] = [up(x), up(w), up(b)];
    await expectClose('linear', linear(tx, tw, tb, 'silu'), ref.matmul(x, w, { transB: true, bias: b, act: 'silu' }), 2e-6);
    for (const t of [tx, tw, tb]) t.dispose();
  });

  it('reads operands and bias from views at unaligned offsets', async () => {
    const base = rnd([3000], 73);
    const bt = up(base);
    const slice = (off: number, shape: number[]) => ref.arr(base.data.slice(off, off + ref.numel(shape)), shape);
    const a = bt.view([5, 9], 3);
    const b = bt.view([9, 6], 1001);
    const bias = bt.view([6], 2500);
    await expectClose('matmul (views)', matmul(a, b, { bias }), ref.matmul(slice(3, [5, 9]), slice(1001, [9, 6]), { bias: slice(2500, [6]) }), 1e-6);
    for (const t of [a, b, bias, bt]) t.dispose();
  });

  it('a long inner dimension and degenerate sizes', async () => {
    const a = rnd([3, 513], 74);
    const b = rnd([513, 2], 75);
    const [ta, tb] = [up(a), up(b)];
    await expectClose('matmul (K=513)', matmul(ta, tb), ref.matmul(a, b), 2e-6);
    const c = rnd([1, 1], 76);
    const d = rnd([1, 65], 77);
    const [tc, td] = [up(c), up(d)];
    await expectClose('matmul (K=1)', matmul(tc, td), ref.matmul(c, d), 1e-7);
    for (const t of [ta, tb, tc, td]) t.dispose();
  });
});

// ---- softmax -------------------------------------------------------------------------
describe('softmax', () => {
  it('softmax and log-softmax over last and non-last axes', async () => {
    const x = rnd([3, 70, 5], 80, -8, 8);
    const t = up(x);
    for (const axis of [-1, 0, 1, 2]) {
      await expectClose('softmax', softmax(t, axis), ref.softmax(x, axis), 1e-6);
      await expectClose('logSoftmax', logSoftmax(t, axis), ref.logSoftmax(x, axis), 1e-6);
    }
    t.dispose();
  });

  it('is stable for large inputs and reads unaligned views', async () => {
    const x = rnd([4, 131], 81, -300, 300);
    const bt = up(ref.arr(new Float64Array(7).fill(0), [7]));
    const t = up(x);
    await expectClose('softmax (large inputs)', softmax(t), ref.softmax(x), 1e-6);
    await expectClose('logSoftmax (large inputs)', logSoftmax(t), ref.logSoftmax(x), 1e-6);
    const v = t.view([3, 131], 131);
    const xv = ref.arr(x.data.slice(131), [3, 131]);
    await expectClose('softmax (views)', softmax(v), ref.softmax(xv), 1e-6);
    for (const u of [t, bt, v]) u.dispose();
  });
});

// ---- shape ops -----------------------------------------------------------------------
// kernels/copy.wgsl with the adapter's run length and with runs of 1 and 3 elements (a GPU's, and one that splits rows of 5 and 7)
describe.each([null, 1, 3])('shape ops (copy run %s)', (run) => {
  const x = rnd([2, 3, 5, 7], 90);
  let t: Tensor;
  beforeAll(() => {
    copyTuning.run = run;
    t = up(x);
  });
  afterAll(() => {
    copyTuning.run = null;
    t.dispose();
  });

  it('permute / transpose', async () => {
    for (const perm of [[3, 1, 0, 2], [0, 1, 3, 2], [1, 0, 2, 3], [-1, -2, -3, -4]]) await expectClose('permute', permute(t, perm), ref.permute(x, perm), 0);
    await expectClose('permute', transpose(t, 0, 2), ref.transpose(x, 0, 2), 0);
    await expectClose('permute', transpose(t), ref.transpose(x), 0);
  });

  it('slice as a view and as a copy, with negative bounds', async () => {
    const lead = up(rnd([1, 1, 9, 3], 91));
    const v = slice(lead, 2, 2, 7);
    expect(v.storage).toBe(lead.storage); // leading axes of size 1: a view
    await expectClose('slice', v, ref.slice(rnd([1, 1, 9, 3], 91), 2, 2, 7), 0);
    lead.dispose();
    for (const [axis, s, e] of [[0, 1, 2], [1, 1, 3], [2, -4, -1], [3, 0, 100], [-1, 6, 7], [3, 2, 2]])
      await expectClose('slice', slice(t, axis, s, e), ref.slice(x, axis, s, e), 0);
  });

  it('concat and stack along every axis', async () => {
    for (const axis of [0, 1, 2, 3]) {
      const shapes = [5, 1, 3].map((d) => x.shape.map((s, i) => (i === axis ? d : s)));
      const parts = shapes.map((s, k) => rnd(s, 100 + k));
      const ts = parts.map((p) => up(p));
      await expectClose('concat', concat(ts, axis), ref.concat(parts, axis), 0);
      ts.forEach((u) => u.dispose());
    }
    const parts = [0, 1, 2].map((k) => rnd([3, 5], 110 + k));
    const ts = parts.map((p) => up(p));
    for (const axis of [0, 1, 2, -1]) await expectClose('stack', stack(ts, axis), ref.stack(parts, axis), 0);
    ts.forEach((u) => u.dispose());
  });

  it('expand, reshape and contiguous', async () => {
    const s = rnd([3, 1, 5], 120);
    const ts = up(s);
    await expectClose('expand', expand(ts, [2, 3, 4, 5]), ref.expand(s, [2, 3, 4, 5]), 0);
    const r = reshape(t, [6, -1]);
    expect(r.shape).toEqual([6, 35]);
    expect(r.storage).toBe(t.storage);
    await expectClose('reshape', r, ref.arr(x.data, [6, 35]), 0);
    ts.dispose();
  });
});

// ---- f16 storage ---------------------------------------------------------------------
// f16 tensors are read into f32, computed in f32 and rounded once on store, so results are
// within one f16 rounding (relative 2^-11 = 4.9e-4) of the float64 reference on the same
// f16 inputs; the tolerance is 1e-3 of max |ref|.
describe('f16 storage', () => {
  const h = (a: Arr): Arr => ref.map(ref.roundToF16, [a]);
  const F16_TOL = 1e-3;

  it('elementwise, matmul and softmax on f16 tensors', async () => {
    const a = h(rnd([5, 33], 130, -2, 2));
    const b = h(rnd([33], 131, -2, 2));
    const [ta, tb] = [up(a, 'f16'), up(b, 'f16')];
    const y = mul(ta, tb);
    expect(y.dtype).toBe('f16');
    await expectClose('f16 mul', y, ref.map((p, q) => p * q, [a, b]), F16_TOL);
    await expectClose('f16 gelu', unary('gelu', ta), ref.map(ref.unaryRef.gelu, [a]), F16_TOL);
    await expectClose('f16 softmax', softmax(ta), ref.softmax(a), F16_TOL);
    await expectClose('f16 sum', sum(ta, 1), ref.reduce(a, 'sum', 1), F16_TOL);
    const m = h(rnd([2, 33, 19], 132, -2, 2));
    const tm = up(m, 'f16');
    await expectClose('f16 matmul', matmul(ta, tm), ref.matmul(a, m), F16_TOL);
    for (const u of [ta, tb, tm]) u.dispose();
  });
});

// ---- PyTorch golden numbers ------------------------------------------------------------
describe('PyTorch fixtures (gen_core.py)', () => {
  const GOLDEN_TOL = 1e-4;
  const fixture = (name: string) => openSafetensors(fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url)));
  const load = async (f: Awaited<ReturnType<typeof fixture>>, name: string): Promise<Arr> => ref.arr(await f.readF32(name), f.info(name).shape);

  it('matmul forward and backward', async () => {
    const f = await fixture('core_matmul.safetensors');
    const cases = { nn: [false, false], nt: [false, true], tn: [true, false], tt: [true, true], batched: [false, false], batched_tt: [true, true], shared_bias: [false, false] };
    for (const [name, [transA, transB]] of Object.entries(cases)) {
      const [a, b, w, y, da, db] = await Promise.all(['a', 'b', 'w', 'y', 'da', 'db'].map((k) => load(f, `${name}.${k}`)));
      const hasBias = f.keys().includes(`${name}.bias`);
      const ta = up(a).requireGrad();
      const tb = up(b).requireGrad();
      const tbias = hasBias ? up(await load(f, `${name}.bias`)).requireGrad() : undefined;
      const tw = up(w);
      const out = matmul(ta, tb, { transA, transB, bias: tbias });
      const loss = tidy(() => sum(mul(out, tw)));
      loss.backward();
      await expectClose('torch matmul', out, y, GOLDEN_TOL);
      await expectClose('torch matmul grad', ta.grad!, da, GOLDEN_TOL);
      await expectClose('torch matmul grad', tb.grad!, db, GOLDEN_TOL);
      if (tbias) await expectClose('torch matmul grad', tbias.grad!, await load(f, `${name}.dbias`), GOLDEN_TOL);
      ta.grad = tb.grad = null;
      if (tbias) tbias.grad = null;
      for (const u of [ta, tb, tw, loss, tbias]) u?.dispose();
    }
  });

  it('softmax and log_softmax forward and backward', async () => {
    const f = await fixture('core_softmax.safetensors');
    for (const [name, axis] of [['last', -1], ['mid', 1], ['wide', -1]] as const) {
      const [x, w] = await Promise.all([load(f, `${name}.x`), load(f, `${name}.w`)]);
      for (const [key, fn] of [['softmax', softmax], ['log_softmax', logSoftmax]] as const) {
        const tx = up(x).requireGrad();
        const tw = up(w);
        const y = fn(tx, axis);
        const loss = tidy(() => sum(mul(y, tw)));
        loss.backward();
        await expectClose(`torch ${key}`, y, await load(f, `${name}.${key}`), GOLDEN_TOL);
        await expectClose(`torch ${key} grad`, tx.grad!, await load(f, `${name}.${key}.dx`), GOLDEN_TOL);
        tx.grad = null;
        for (const u of [tx, tw, loss]) u.dispose();
      }
    }
  });
});

// ---- tensors past the binding limit ----------------------------------------------------
describe('tensors larger than maxStorageBufferBindingSize', () => {
  it('chunks a contiguous elementwise op and names the limit where a kernel cannot split', async () => {
    const n = Math.ceil((150 * 2 ** 20) / 4); // 150 MiB of f32
    expect(n * 4).toBeGreaterThan(device().maxBinding);
    const host = new Float32Array(n);
    for (let i = 0; i < n; i++) host[i] = i % 1000003;
    const x = tensor(host);
    const y = map('x0 * 2.0 + alpha + f32(i % 7u)', [x], { alpha: 0.5 }); // `i` counts on across chunks
    // chunks hold floor((maxBinding - 256) / 1024) * 256 elements: probe both sides of the seam
    const chunk = Math.floor((device().maxBinding - 256) / 1024) * 256;
    const probe = [0, 1, 255, chunk - 1, chunk, chunk + 1, Math.floor(n / 2), n - 2, n - 1];
    for (const i of probe) {
      const v = y.view([1], i);
      expect(await v.item(), `element ${i}`).toBe(host[i] * 2 + 0.5 + (i % 7));
      v.dispose();
    }
    const one = tensor([1], [1]);
    // broadcasting has no chunked path, nor do reductions (tidy frees the outputs they allocated)
    expect(() => tidy(() => add(x, one))).toThrow(/binding 0 is 157286400 bytes, over this adapter's maxStorageBufferBindingSize/);
    expect(() => tidy(() => sum(x, 0))).toThrow(/kernels\/reduce.wgsl: .*maxStorageBufferBindingSize \(134217728 bytes\)/);
    for (const t of [x, y, one]) t.dispose();
    device().pool.trim();
  });
});

// ---- errors --------------------------------------------------------------------------
describe('bad inputs fail with clear messages', () => {
  it('broadcast shape mismatch, matmul inner dimensions, reshape size, use after dispose', () => {
    tidy(() => {
      const a = tensor(new Float32Array(6), [2, 3]);
      const b = tensor(new Float32Array(4), [4]);
      expect(() => add(a, b)).toThrow('shapes [2, 3] and [4] cannot be broadcast together');
      expect(() => matmul(a, a)).toThrow('matmul: inner dimensions differ: [2,3] x [2,3]');
      expect(() => matmul(a, a, { transB: true, bias: b })).toThrow('matmul: bias [4] must be [2]');
      expect(() => reshape(a, [4, 2])).toThrow('reshape: cannot view 6 elements as [4, 2]');
      expect(() => reshape(a, [-1, -1])).toThrow('reshape: more than one -1');
      expect(() => expand(b, [2, 3])).toThrow('expand: [4] cannot be broadcast to [2, 3]');
      expect(() => expand(a, [3])).toThrow('expand: [2, 3] cannot be broadcast to [3]');
      expect(() => concat([a, b], 0)).toThrow('concat: [4] f32 does not match [2, 3] f32 off axis 0');
      expect(() => permute(a, [0, 0])).toThrow('permute: [0, 0] is not a permutation of 2 axes');
      expect(() => sum(a, 2)).toThrow('axis 2 out of range for rank 2');
      expect(() => unary('exp', tensor([1], [1], 'i32'))).toThrow('exp needs a float tensor, got [1] i32');
      expect(() => mean(tensor([1], [1], 'i32'))).toThrow('mean needs a float tensor, got [1] i32');
      b.dispose();
      expect(() => add(a, b)).toThrow('tensor [4] f32 was used after dispose()');
      expect(() => matmul(b, a)).toThrow('tensor [4] f32 was used after dispose()');
      return null;
    });
  });

  it('reading a disposed tensor fails', async () => {
    const a = tensor([1, 2, 3]);
    a.dispose();
    await expect(a.data()).rejects.toThrow('tensor [3] f32 was used after dispose()');
  });
});
