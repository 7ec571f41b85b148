// Gradients of every op against float64 finite differences of the CPU reference
// (assertGradcheck), and the mechanics of the tape: accumulation, reuse, noGrad, detach,
// freed graphs and the disposal of everything a graph holds.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Activation, type Tensor, type UnaryOp, add, addScalar, affine, cast, clamp, concat, contiguous, detach, device, div, exp, expand,
  getDevice, logSoftmax, matmul, max, maximum, mean, min, minimum, mul, mulScalar, noGrad, permute, pow, powScalar, randn, reshape,
  slice, softmax, square, stack, sub, sum, tanh, tensor, tensorCount, tidy, transpose, unary, unaryOps, where,
} from '../runtime/index.ts';
import { type CpuFn, type GradcheckInput, assertGradcheck, randomArray } from '../runtime/gradcheck.ts';
import * as ref from './ref/cpu.ts';
import { type Arr } from './ref/cpu.ts';

/** A gradcheck CPU function from a reference over Arr values. */
const R = (fn: (...a: Arr[]) => Arr): CpuFn => (xs, shapes) => fn(...xs.map((x, i) => ref.arr(x, shapes[i]))).data;
const inp = (shape: number[], data?: ArrayLike<number>): GradcheckInput => ({ shape, data });
/** Values in [lo, hi] kept at least `gap` away from 0 (kinks of relu/abs, poles of 1/x). */
const awayFromZero = (n: number, seed: number, gap = 0.2, hi = 2): Float64Array =>
  randomArray(n, seed, -1, 1).map((v) => Math.sign(v) * (gap + Math.abs(v) * (hi - gap)));

// Worst gradient error per op, printed at the end (the numbers quoted in reports).
const worst = new Map<string, number>();
async function check(name: string, f: (xs: Tensor[]) => Tensor, cpu: CpuFn, inputs: GradcheckInput[], opts: { gradRtol?: number; rtol?: number } = {}) {
  const r = await assertGradcheck(name, f, cpu, inputs, opts);
  worst.set(name, Math.max(worst.get(name) ?? 0, ...r.gradErrors));
}

let startTensors = 0;
beforeAll(async () => {
  await getDevice();
  startTensors = tensorCount();
});
afterAll(() => {
  console.log('max gradient errors (|analytic - numeric| / max |numeric|):\n' + [...worst].map(([k, v]) => `  ${k}: ${v.toExponential(2)}`).join('\n'));
  expect(tensorCount()).toBe(startTensors);
});

describe('gradcheck: elementwise', () => {
  it('every unary op', async () => {
    const positive = new Set<UnaryOp>(['log', 'sqrt', 'rsqrt', 'reciprocal']);
    for (const [k, op] of unaryOps.entries()) {
      const data = positive.has(op) ? randomArray(15, k, 0.3, 3) : awayFromZero(15, k);
      await check(op, ([x]) => unary(op, x), R((x) => ref.map(ref.unaryRef[op], [x])), [inp([3, 5], data)]);
    }
  });

  it('binary ops with broadcasting on both sides (sumTo)', async () => {
    const cases: [string, (a: Tensor, b: Tensor) => Tensor, (a: number, b: number) => number][] = [
      ['add', add, (a, b) => a + b],
      ['sub', sub, (a, b) => a - b],
      ['mul', mul, (a, b) => a * b],
      ['div', div, (a, b) => a / b],
      ['pow', pow, (a, b) => a ** b],
      ['maximum', maximum, Math.max],
      ['minimum', minimum, Math.min],
    ];
    for (const [name, op, f] of cases) {
      const a = name === 'pow' ? randomArray(12, 1, 0.5, 2) : randomArray(12, 1);
      const b = name === 'div' ? awayFromZero(5, 2, 0.5) : randomArray(5, 2, -1.5, 1.5);
      await check(name, ([x, y]) => op(x, y), R((x, y) => ref.map(f, [x, y])), [inp([3, 1, 4], a), inp([5, 1], b)]);
      // same shapes, and a rank-0 operand
      await check(name, ([x, y]) => op(x, y), R((x, y) => ref.map(f, [x, y])), [inp([2, 3], a.slice(0, 6)), inp([], b.slice(0, 1))]);
    }
  });

  it('where, affine, scalar ops, clamp', async () => {
    const cond = [1, 0, 0, 1, 1, 0, 1, 0];
    await check('where', ([c, a, b]) => where(c, a, b), R((c, a, b) => ref.map((p, q, r) => (p ? q : r), [c, a, b])), [
      { shape: [2, 4], data: cond, grad: false }, inp([2, 1]), inp([4]),
    ]);
    await check('affine', ([x]) => affine(x, -1.5, 0.25), R((x) => ref.map((v) => -1.5 * v + 0.25, [x])), [inp([7])]);
    await check('mulScalar', ([x]) => mulScalar(x, 3), R((x) => ref.map((v) => 3 * v, [x])), [inp([7])]);
    await check('addScalar', ([x]) => addScalar(x, 3), R((x) => ref.map((v) => v + 3, [x])), [inp([7])]);
    await check('powScalar', ([x]) => powScalar(x, 2.5), R((x) => ref.map((v) => v ** 2.5, [x])), [inp([7], randomArray(7, 3, 0.2, 2))]);
    // clamp: points away from the bounds
    const cdata = [-0.9, -0.5, -0.31, -0.29, 0, 0.2, 0.39, 0.41, 0.8];
    await check('clamp', ([x]) => clamp(x, -0.3, 0.4), R((x) => ref.map((v) => Math.min(Math.max(v, -0.3), 0.4), [x])), [inp([9], cdata)]);
  });
});

describe('gradcheck: reductions', () => {
  const shape = [3, 4, 5];

  it('sum / mean over one axis, several axes and all, with keepDims', async () => {
    for (const axes of [0, 1, -1, [0, 2], undefined] as (number | number[] | undefined)[])
      for (const keep of [false, true]) {
        await check('sum', ([x]) => sum(x, axes, keep), R((x) => ref.reduce(x, 'sum', axes, keep)), [inp(shape)]);
        await check('mean', ([x]) => mean(x, axes, keep), R((x) => ref.reduce(x, 'mean', axes, keep)), [inp(shape)]);
      }
  });

  it('max / min route the gradient to the extremal element', async () => {
    for (const axis of [0, 1, 2])
      for (const keep of [false, true]) {
        await check('max', ([x]) => max(x, axis, keep), R((x) => ref.reduce(x, 'max', axis, keep)), [inp(shape)]);
        await check('min', ([x]) => min(x, axis, keep), R((x) => ref.reduce(x, 'min', axis, keep)), [inp(shape)]);
      }
  });
});

describe('gradcheck: matmul', () => {
  const [M, K, N] = [5, 7, 6];
  const t = (s: number[], tr: boolean) => (tr ? [...s.slice(0, -2), s.at(-1)!, s.at(-2)!] : s);

  it('all four transpose combinations, batched', async () => {
    for (const transA of [false, true])
      for (const transB of [false, true])
        await check('matmul', ([a, b]) => matmul(a, b, { transA, transB }), R((a, b) => ref.matmul(a, b, { transA, transB })), [
          inp(t([2, M, K], transA)), inp(t([2, K, N], transB)),
        ]);
  });

  it('shared operands, batch broadcasting and the fused bias', async () => {
    const cases: [number[], number[], boolean, boolean][] = [
      [[2, 3, M, K], [K, N], false, false], // folded into one GEMM
      [[2, K, M], [N, K], true, true],
      [[M, K], [3, K, N], false, false],
      [[2, 1, M, K], [1, 3, K, N], false, false],
      [[3, M, K], [1, N, K], false, true], // a batch of one is shared
    ];
    for (const [sa, sb, transA, transB] of cases)
      await check('matmul (shared/broadcast)', ([a, b]) => matmul(a, b, { transA, transB }), R((a, b) => ref.matmul(a, b, { transA, transB })), [inp(sa), inp(sb)]);
    for (const act of ['none', 'relu', 'gelu', 'geluTanh', 'silu'] as Activation[])
      await check(`matmul bias+${act}`, ([a, b, c]) => matmul(a, b, { transB: true, bias: c, act }), R((a, b, c) => ref.matmul(a, b, { transB: true, bias: c, act })), [
        inp([2, M, K]), inp([N, K]), inp([N]),
      ]);
  });
});

describe('gradcheck: softmax', () => {
  it('softmax and logSoftmax over last and non-last axes', async () => {
    for (const axis of [-1, 0, 1]) {
      const data = randomArray(60, 7 + axis, -3, 3);
      await check('softmax', ([x]) => softmax(x, axis), R((x) => ref.softmax(x, axis)), [inp([3, 4, 5], data)]);
      await check('logSoftmax', ([x]) => logSoftmax(x, axis), R((x) => ref.logSoftmax(x, axis)), [inp([3, 4, 5], data)]);
    }
  });
});

describe('gradcheck: shape ops', () => {
  const s = [2, 3, 4];

  it('reshape, permute, transpose, contiguous, expand', async () => {
    await check('reshape', ([x]) => reshape(x, [4, -1]), R((x) => ref.arr(x.data, [4, 6])), [inp(s)]);
    await check('permute', ([x]) => permute(x, [2, 0, 1]), R((x) => ref.permute(x, [2, 0, 1])), [inp(s)]);
    await check('transpose', ([x]) => transpose(x, 0, 2), R((x) => ref.transpose(x, 0, 2)), [inp(s)]);
    await check('contiguous', ([x]) => contiguous(x), R((x) => x), [inp(s)]);
    await check('expand', ([x]) => expand(x, [2, 3, 3, 4]), R((x) => ref.expand(x, [2, 3, 3, 4])), [inp([3, 1, 4])]);
  });

  it('slice (view and copy), concat, stack', async () => {
    await check('slice', ([x]) => slice(x, 1, 1, 3), R((x) => ref.slice(x, 1, 1, 3)), [inp(s)]);
    await check('slice', ([x]) => slice(x, 0, 1, 2), R((x) => ref.slice(x, 0, 1, 2)), [inp(s)]); // view
    await check('slice', ([x]) => slice(x, -1, -3, -1), R((x) => ref.slice(x, -1, -3, -1)), [inp(s)]);
    for (const axis of [0, 1, 2])
      await check('concat', (xs) => concat(xs, axis), R((...xs) => ref.concat(xs, axis)), [1, 2, 3].map((d) => inp(s.map((v, i) => (i === axis ? d : v)))));
    for (const axis of [0, 2, -1]) await check('stack', (xs) => stack(xs, axis), R((...xs) => ref.stack(xs, axis)), [inp([3, 4]), inp([3, 4]), inp([3, 4])]);
  });

  it('cast through f16 and back (the gradient is cast too: f16 rounding of the upstream grad)', async () => {
    // inputs exactly representable in f16, so the forward is the identity
    const data = randomArray(12, 9).map(ref.roundToF16);
    await check('cast', ([x]) => tidy(() => cast(cast(x, 'f16'), 'f32')), R((x) => x), [inp([3, 4], data)], { gradRtol: 1e-3 });
  });
});

describe('autograd mechanics', () => {
  const xs = [0.5, -1, 2, 0.25];

  it('accumulates into .grad across two backward calls', async () => {
    const x = tensor(xs).requireGrad();
    for (let k = 0; k < 2; k++) tidy(() => sum(square(x)).backward());
    expect(await x.grad!.toArray()).toEqual(xs.map((v) => 4 * v));
    x.dispose();
  });

  it('sums the gradients of a tensor used twice, leaf or intermediate', async () => {
    const x = tensor(xs).requireGrad();
    tidy(() => sum(add(mul(x, x), x)).backward()); // 2x + 1
    expect(await x.grad!.toArray()).toEqual(xs.map((v) => 2 * v + 1));
    x.grad!.dispose();
    x.grad = null;
    tidy(() => {
      const h = exp(x);
      sum(mul(h, tanh(h))).backward(); // d/dx [e^x tanh(e^x)]
    });
    const want = xs.map((v) => Math.exp(v) * Math.tanh(Math.exp(v)) + Math.exp(2 * v) * (1 - Math.tanh(Math.exp(v)) ** 2));
    expect(ref.maxRelError(await x.grad!.toArray(), want)).toBeLessThan(1e-6);
    x.dispose();
  });

  it('records nothing under noGrad and stops at detach()', async () => {
    const x = tensor(xs).requireGrad();
    tidy(() => {
      const y = noGrad(() => sum(square(x)));
      expect(y.node).toBeNull();
      expect(() => y.backward()).toThrow('backward() on a tensor with no gradient graph (created under noGrad');
      const d = detach(x);
      expect(d.node).toBeNull();
      expect(d.requiresGrad).toBe(false);
      expect(d.storage).toBe(x.storage);
      sum(mul(d, x)).backward(); // d is a constant: the gradient is d = x, not 2x
    });
    expect(await x.grad!.toArray()).toEqual(xs);
    x.dispose();
  });

  it('backward with an explicit gradient, and clear errors', async () => {
    const x = tensor(xs, [2, 2]).requireGrad();
    tidy(() => {
      const y = mulScalar(x, 3);
      expect(() => y.backward()).toThrow('backward() without a gradient needs a scalar, got [2, 2]');
      y.backward(tensor([1, 2, 3, 4], [2, 2]));
      expect(() => y.backward(tensor([1, 2, 3, 4], [2, 2]))).toThrow('backward through affine whose graph was already freed by an earlier backward()');
      expect(() => x.backward()).toThrow('backward() on a leaf');
      expect(() => tensor([1, 2], [2], 'i32').requireGrad()).toThrow('only float tensors can require grad (this one is i32)');
    });
    expect(await x.grad!.toArray()).toEqual([3, 6, 9, 12]);
    x.dispose();
  });

  it('frees every tensor and byte of a graph, back-propagated or not', async () => {
    const pool = () => device().pool.getStats().inUseBytes;
    const n0 = tensorCount();
    const b0 = pool();
    const w = randn([6, 5]).requireGrad();
    const bias = randn([5]).requireGrad();
    const x = randn([2, 3, 6]);
    // a graph with saved tensors of every kind: matmul inputs, softmax outputs, argmax indices, views
    const forward = () => {
      const h = matmul(x, w, { bias, act: 'gelu' });
      const p = softmax(concat([h, slice(h, 2, 1, 3)], 2), 1);
      return mean(sum(max(mul(slice(p, 2, 0, 5), reshape(expand(bias, [3, 5]), [1, 3, 5])), 0), 0));
    };
    for (const back of [false, true]) {
      tidy(() => {
        const loss = forward();
        if (back) loss.backward();
      });
      expect(tensorCount()).toBe(n0 + 3 + (back ? 2 : 0)); // w, bias, x (+ their grads)
    }
    expect(w.grad!.shape).toEqual([6, 5]);
    for (const t of [w, bias, x]) t.dispose(); // disposes the grads too
    expect(tensorCount()).toBe(n0);
    expect(pool()).toBe(b0);
  });

  it('back-propagating into a leaf disposed since the forward leaks nothing', () => {
    const n0 = tensorCount();
    const x = tensor(xs).requireGrad();
    const w = tensor(xs).requireGrad();
    const y = tidy(() => sum(mul(x, w)));
    w.dispose();
    y.backward();
    expect(x.grad).not.toBeNull();
    for (const t of [x, y]) t.dispose();
    expect(tensorCount()).toBe(n0);
  });

  it('a graph whose output is disposed before backward frees its saved tensors', () => {
    const n0 = tensorCount();
    const b0 = device().pool.getStats().inUseBytes;
    const x = tensor(xs).requireGrad();
    const y = tidy(() => sum(div(exp(x), addScalar(square(x), 1))));
    expect(tensorCount()).toBeGreaterThan(n0 + 2); // the graph's saved tensors are still alive
    y.dispose(); // drops the last reference to the graph
    x.dispose();
    expect(tensorCount()).toBe(n0);
    expect(device().pool.getStats().inUseBytes).toBe(b0);
  });
});
