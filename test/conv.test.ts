// conv2d (forward, fused epilogue, gradients of input / weight / bias / residual) and nearest
// 2x upsampling against PyTorch (test/fixtures/gen_conv.py), the naive reference kernel of
// bench/reference/conv2d.ts, and a float64 CPU convolution with finite differences. Shapes
// are odd and small; the cases span several 64-wide tiles in every GEMM dimension, stride 2
// with asymmetric padding, and a weight gradient split over pixel ranges. A float64 CPU conv
// (forward and analytic gradients) checks every tile runtime/ops/conv.ts picks (small O, small
// C, small C·KH·KW) and the 1x1 matmul path. Cases run through both implementations (the
// GEMM path around im2col / col2im, and the implicit-GEMM kernel) where the path matters.
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Tensor, cast, conv2d, getDevice, noGrad, tensor, upsampleNearest2x } from '../runtime/index.ts';
import { assertGradcheck, randomArray } from '../runtime/gradcheck.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { naiveConv2d } from '../bench/reference/conv2d.ts';
import { convTileFor } from '../runtime/ops/conv.ts';

type Pad4 = [number, number, number, number];
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

/** max |got - want| / max |want| */
function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  expect(got.length).toBe(want.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    num = Math.max(num, Math.abs(got[i] - want[i]));
    den = Math.max(den, Math.abs(want[i]));
  }
  expect(den).toBeGreaterThan(0); // an all-zero reference would prove nothing
  return num / den;
}

// Worst error per check, printed at the end (the numbers quoted in reports).
const worst = new Map<string, number>();

async function expectClose(got: Tensor, want: ArrayLike<number>, shape: readonly number[], rtol: number, what: string): Promise<void> {
  expect(got.shape, what).toEqual(shape);
  const err = relErr(await got.data(), want);
  worst.set(what, Math.max(worst.get(what) ?? 0, err));
  expect(err, what).toBeLessThanOrEqual(rtol);
}

const silu_ = (v: number) => v / (1 + Math.exp(-v));
const siluGrad_ = (v: number) => {
  const sg = 1 / (1 + Math.exp(-v));
  return sg * (1 + v * (1 - sg));
};

/** Float64 CPU conv2d (+ bias + residual, then SiLU): x [N,C,H,W], w [O,C,KH,KW]. */
function cpuConv(
  x: ArrayLike<number>, [n, c, h, wd]: number[], w: ArrayLike<number>, [o, , kh, kw]: number[],
  b: ArrayLike<number> | null, res: ArrayLike<number> | null, stride: number, [pt, pb, pl, pr]: Pad4, act: boolean,
): { y: Float64Array; shape: number[] } {
  const oh = Math.floor((h + pt + pb - kh) / stride) + 1;
  const ow = Math.floor((wd + pl + pr - kw) / stride) + 1;
  const y = new Float64Array(n * o * oh * ow);
  for (let ni = 0; ni < n; ni++)
    for (let oi = 0; oi < o; oi++)
      for (let yi = 0; yi < oh; yi++)
        for (let xi = 0; xi < ow; xi++) {
          let acc = b ? b[oi] : 0;
          for (let ci = 0; ci < c; ci++)
            for (let r = 0; r < kh; r++)
              for (let s = 0; s < kw; s++) {
                const ih = yi * stride + r - pt;
                const iw = xi * stride + s - pl;
                if (ih >= 0 && ih < h && iw >= 0 && iw < wd) acc += x[((ni * c + ci) * h + ih) * wd + iw] * w[((oi * c + ci) * kh + r) * kw + s];
              }
          const idx = ((ni * o + oi) * oh + yi) * ow + xi;
          if (res) acc += res[idx];
          y[idx] = act ? silu_(acc) : acc;
        }
  return { y, shape: [n, o, oh, ow] };
}

/** Float64 gradients of a conv from dPre (the gradient at the pre-activation output): dx, dw. */
function cpuConvGrads(
  x: ArrayLike<number>, [n, c, h, wd]: number[], w: ArrayLike<number>, [o, , kh, kw]: number[],
  dPre: ArrayLike<number>, stride: number, [pt, pb, pl, pr]: Pad4,
): { gx: Float64Array; gw: Float64Array } {
  const oh = Math.floor((h + pt + pb - kh) / stride) + 1;
  const ow = Math.floor((wd + pl + pr - kw) / stride) + 1;
  const gx = new Float64Array(n * c * h * wd);
  const gw = new Float64Array(o * c * kh * kw);
  for (let ni = 0; ni < n; ni++)
    for (let oi = 0; oi < o; oi++)
      for (let yi = 0; yi < oh; yi++)
        for (let xi = 0; xi < ow; xi++) {
          const g = dPre[((ni * o + oi) * oh + yi) * ow + xi];
          for (let ci = 0; ci < c; ci++)
            for (let r = 0; r < kh; r++)
              for (let s = 0; s < kw; s++) {
                const ih = yi * stride + r - pt;
                const iw = xi * stride + s - pl;
                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                const xi_ = ((ni * c + ci) * h + ih) * wd + iw;
                const wi = ((oi * c + ci) * kh + r) * kw + s;
                gx[xi_] += g * w[wi];
                gw[wi] += g * x[xi_];
              }
        }
  return { gx, gw };
}

/** conv2d's two implementations (runtime/ops/conv.ts): GEMMs around a column matrix, and the implicit-GEMM kernel. */
const IMPLS = ['gemm', 'implicit'] as const;

let seed = 1;
const rnd = (shape: number[], scale = 1): Float32Array => Float32Array.from(randomArray(shape.reduce((a, d) => a * d, 1), seed++), (v) => v * scale);

beforeAll(async () => {
  await getDevice();
});
afterAll(() => {
  console.log([...worst].map(([k, v]) => `${k}: ${v.toExponential(2)}`).join('\n'));
});

describe('conv2d vs PyTorch F.conv2d', async () => {
  const file = await openSafetensors(fixture('conv_cases.safetensors'));
  const names = [...new Set(file.keys().map((k) => k.split('.')[0]))].sort();
  afterAll(() => file.close());

  it('has the generated cases', () => {
    expect(names).toEqual(['fused_res', 'fused_res_silu', 'k1_o70', 'k1s2', 'k2_asym', 'k3_c70', 'k3s1', 'k3s2_down', 'k5s2']);
  });

  it.each(IMPLS.flatMap((impl) => names.map((name) => [name, impl] as const)))('%s (%s path): forward and gradients of input, weight, bias, residual', async (name, impl) => {
    const has = (k: string) => file.keys().includes(`${name}.${k}`);
    const shape = (k: string) => file.info(`${name}.${k}`).shape;
    const data = (k: string) => file.readF32(`${name}.${k}`);
    const load = async (k: string) => tensor(await data(k), shape(k));
    const [stride, pt, pb, pl, pr, act] = await file.readI32(`${name}.cfg`);
    const x = (await load('x')).requireGrad();
    const w = (await load('w')).requireGrad();
    const b = has('b') ? (await load('b')).requireGrad() : undefined;
    const residual = has('res') ? (await load('res')).requireGrad() : undefined;
    const opts = { stride, padding: [pt, pb, pl, pr] as Pad4, residual, act: act ? ('silu' as const) : ('none' as const), impl };
    const tol = 1e-4;
    // Without gradients the whole epilogue runs fused in the kernel; with them SiLU is separate.
    const fused = noGrad(() => conv2d(x, w, b, opts));
    await expectClose(fused, await data('y'), shape('y'), tol, 'torch y (noGrad: fused epilogue)');
    const y = conv2d(x, w, b, opts);
    await expectClose(y, await data('y'), shape('y'), tol, 'torch y');
    y.backward(await load('gy'));
    await expectClose(x.grad!, await data('gx'), shape('x'), tol, 'torch grad x');
    await expectClose(w.grad!, await data('gw'), shape('w'), tol, 'torch grad w');
    if (b) await expectClose(b.grad!, await data('gb'), shape('b'), tol, 'torch grad b');
    if (residual) await expectClose(residual.grad!, await data('gres'), shape('res'), tol, 'torch grad residual');
    for (const t of [fused, y, x, w, b, residual]) t?.dispose();
  });
});

describe('conv2d vs the naive reference kernel', () => {
  // [N, C, H, W, O, KH, KW, stride, padding]
  const cases: [number, number, number, number, number, number, number, number, Pad4][] = [
    [2, 13, 17, 15, 66, 3, 3, 1, [1, 1, 1, 1]], // 2 tiles of O, 9 of pixels, 8 K steps
    [3, 20, 9, 7, 9, 1, 1, 1, [0, 0, 0, 0]],
    [2, 5, 15, 17, 6, 3, 3, 2, [0, 1, 0, 1]],
    [1, 3, 16, 13, 4, 5, 5, 2, [2, 2, 2, 2]],
    [2, 4, 8, 7, 5, 2, 2, 1, [1, 0, 0, 1]],
  ];
  it.each(IMPLS.flatMap((impl) => cases.map((c) => [...c, impl] as const)))('N=%i C=%i H=%i W=%i O=%i %ix%i stride %i padding %j (%s path)', async (n, c, h, wd, o, kh, kw, stride, pad, impl) => {
    const x = tensor(rnd([n, c, h, wd]), [n, c, h, wd]);
    const w = tensor(rnd([o, c, kh, kw]), [o, c, kh, kw]);
    const b = tensor(rnd([o]), [o]);
    const want = naiveConv2d(x, w, b, stride, pad);
    await expectClose(conv2d(x, w, b, { stride, padding: pad, impl }), await want.data(), want.shape, 1e-5, `naive-kernel y (${impl})`);
    for (const t of [x, w, b, want]) t.dispose();
  });

  it.each(IMPLS)('reads inputs and the residual from views at unaligned offsets (%s path)', async (impl) => {
    const [n, c, h, wd, o] = [2, 3, 7, 5, 4];
    const xs = tensor(rnd([n + 1, c, h, wd]), [n + 1, c, h, wd]);
    const x = xs.view([n, c, h, wd], c * h * wd); // offset 105 elements: not 256-byte aligned
    const w = tensor(rnd([o, c, 3, 3]), [o, c, 3, 3]);
    const rs = tensor(rnd([n * o * h * wd + 3]), [n * o * h * wd + 3]);
    const res = rs.view([n, o, h, wd], 3);
    const xc = tensor(await x.data(), x.shape);
    const want = naiveConv2d(xc, w, null, 1, [1, 1, 1, 1]);
    const wantData = await want.data();
    const resData = await res.data();
    const got = conv2d(x, w, undefined, { padding: 1, residual: res, act: 'silu', impl });
    const expected = Float32Array.from(wantData, (v, i) => silu_(v + resData[i]));
    await expectClose(got, expected, want.shape, 1e-5, 'silu(conv(x view) + residual view)');
    for (const t of [xs, x, w, rs, res, xc, want]) t.dispose();
  });
});

describe('conv2d tile paths vs a float64 CPU conv, forward and gradients', () => {
  // [N, C, H, W, O, K, stride, padding, residual + SiLU]. The implicit-GEMM kernel picks its tile per GEMM
  // (forward: M = O, N = pixels; grad_input: M = C, N = input pixels of a stride phase;
  // grad_weight: M = O, N = C·K·K); these cases reach every tile convTileFor returns, with
  // several column tiles, stride 2, asymmetric padding and split weight gradients.
  type Case = [number, number, number, number, number, number, number, Pad4, boolean];
  const cases: Case[] = [
    [2, 5, 23, 21, 3, 3, 1, [1, 1, 1, 1], true], // O = 3: 4-row tile over 4 column tiles; dW in 3 splits
    [2, 3, 16, 15, 70, 3, 2, [0, 1, 0, 1], false], // RGB stem, stride 2: grad_input with C = 3, dW 70 x 27
    [1, 6, 11, 14, 40, 3, 1, [2, 0, 1, 1], false], // asymmetric padding; dW 40 x 54
    [2, 20, 9, 10, 8, 3, 2, [1, 1, 1, 1], true], // O = 8, C = 20
    [3, 32, 8, 8, 16, 3, 1, [1, 1, 1, 1], false], // O = 16, C = 32 (32-row tile in grad_input)
    // widths a multiple of 4: im2col's vec4 rows (every shift s − padL mod 4 with 5x5) in forward and stride-1 dX
    [2, 3, 8, 12, 5, 5, 1, [2, 2, 2, 2], false],
    [2, 4, 9, 8, 6, 3, 1, [0, 1, 2, 0], true],
    [2, 4, 12, 12, 32, 3, 1, [0, 0, 0, 0], false], // O = 32, C = 4
    [2, 6, 7, 9, 5, 1, 1, [0, 0, 0, 0], true], // 1x1: the matmul path, with bias, residual and SiLU
  ];
  const tileName = (m: number, n: number) => {
    const t = convTileFor(m, n);
    return `${t.wy * t.rm}x${t.wx * t.rn}`;
  };

  it('reach every tile', () => {
    const seen = new Set<string>();
    for (const [n, c, h, wd, o, k, stride, pad] of cases) {
      if (k === 1) continue;
      const oh = Math.floor((h + pad[0] + pad[1] - k) / stride) + 1;
      const ow = Math.floor((wd + pad[2] + pad[3] - k) / stride) + 1;
      seen.add(tileName(o, n * oh * ow));
      seen.add(tileName(c, n * Math.ceil(h / stride) * Math.ceil(wd / stride)));
      seen.add(tileName(o, c * k * k));
    }
    const all = [1, 5, 9, 17, 33].map((m) => tileName(m, 1000)).concat(tileName(40, 27), tileName(40, 54));
    expect(new Set(all).size).toBe(7);
    expect([...seen].sort()).toEqual([...new Set(all)].sort());
  });

  // the same shapes through the GEMM path: edge cases of im2col / col2im (O = 3, C = 3, stride 2, asymmetric padding)
  it.each(IMPLS.flatMap((impl) => cases.map((c) => [...c, impl] as const)))('N=%i C=%i H=%i W=%i O=%i kernel %i stride %i padding %j residual+silu %s (%s path)', async (n, c, h, wd, o, k, stride, pad, epi, impl) => {
    const oh = Math.floor((h + pad[0] + pad[1] - k) / stride) + 1;
    const ow = Math.floor((wd + pad[2] + pad[3] - k) / stride) + 1;
    const shapes = { x: [n, c, h, wd], w: [o, c, k, k], b: [o], y: [n, o, oh, ow] };
    const [xd, wd_, bd, rd, gd] = [rnd(shapes.x), rnd(shapes.w, 0.3), rnd(shapes.b), rnd(shapes.y), rnd(shapes.y)];
    const pre = cpuConv(xd, shapes.x, wd_, shapes.w, bd, epi ? rd : null, stride, pad, false).y;
    const yWant = epi ? pre.map(silu_) : pre;
    const dPre = epi ? Float64Array.from(gd, (g, i) => g * siluGrad_(pre[i])) : gd;
    const { gx, gw } = cpuConvGrads(xd, shapes.x, wd_, shapes.w, dPre, stride, pad);
    const gb = new Float64Array(o);
    dPre.forEach((g, i) => (gb[Math.floor(i / (oh * ow)) % o] += g));
    const x = tensor(xd, shapes.x).requireGrad();
    const w = tensor(wd_, shapes.w).requireGrad();
    const b = tensor(bd, shapes.b).requireGrad();
    const res = epi ? tensor(rd, shapes.y).requireGrad() : undefined;
    const opts = { stride, padding: pad, residual: res, act: epi ? ('silu' as const) : ('none' as const), impl };
    const fused = noGrad(() => conv2d(x, w, b, opts));
    await expectClose(fused, yWant, shapes.y, 1e-5, 'cpu y (tile paths, noGrad)');
    const y = conv2d(x, w, b, opts);
    await expectClose(y, yWant, shapes.y, 1e-5, 'cpu y (tile paths)');
    y.backward(tensor(gd, shapes.y));
    await expectClose(x.grad!, gx, shapes.x, 1e-5, 'cpu grad x (tile paths)');
    await expectClose(w.grad!, gw, shapes.w, 1e-5, 'cpu grad w (tile paths)');
    await expectClose(b.grad!, gb, shapes.b, 1e-5, 'cpu grad b (tile paths)');
    if (res) await expectClose(res.grad!, dPre, shapes.y, 1e-5, 'cpu grad residual (tile paths)');
    for (const t of [fused, y, x, w, b, res]) t?.dispose();
  });
});

describe('conv2d gradients vs finite differences of a float64 CPU conv', () => {
  it('3x3, stride 2, padding (0, 1, 0, 1), bias', async () => {
    const xs = [1, 2, 5, 6], ws = [3, 2, 3, 3];
    const pad: Pad4 = [0, 1, 0, 1];
    const r = await assertGradcheck(
      'conv2d stride 2',
      ([x, w, b]) => conv2d(x, w, b, { stride: 2, padding: pad }),
      ([x, w, b]) => cpuConv(x, xs, w, ws, b, null, 2, pad, false).y,
      [{ shape: xs }, { shape: ws }, { shape: [3] }],
    );
    worst.set('gradcheck stride 2 (forward, grads x w b)', Math.max(r.forwardError, ...r.gradErrors));
  });

  it('2x2, stride 1, padding (1, 0, 0, 1), residual and SiLU', async () => {
    const xs = [2, 2, 4, 3], ws = [3, 2, 2, 2];
    const pad: Pad4 = [1, 0, 0, 1];
    const ys = [2, 3, 4, 3];
    const r = await assertGradcheck(
      'conv2d + residual + silu',
      ([x, w, b, r]) => conv2d(x, w, b, { padding: pad, residual: r, act: 'silu' }),
      ([x, w, b, r]) => cpuConv(x, xs, w, ws, b, r, 1, pad, true).y,
      [{ shape: xs }, { shape: ws }, { shape: [3] }, { shape: ys }],
    );
    worst.set('gradcheck residual + silu (forward, grads x w b r)', Math.max(r.forwardError, ...r.gradErrors));
  });
});

describe('conv2d with f16 storage', () => {
  // Both runs see the same f16-representable values; the f16 run rounds its stored
  // outputs (and the intermediate pre-activation and gradients) to f16, accumulating in
  // f32: expect about 2^-11 relative error, allow 3e-3 of max |f32 result|.
  const cases: [number, number, number, number, number, number, number, Pad4, boolean][] = [
    [2, 6, 17, 16, 9, 3, 1, [1, 1, 1, 1], true], // 544 pixels: dW in 2 splits
    [2, 7, 13, 9, 5, 3, 2, [0, 1, 0, 1], false],
    [2, 8, 12, 12, 3, 3, 1, [1, 1, 1, 1], false], // 4-row tile
    [2, 6, 8, 12, 4, 1, 1, [0, 0, 0, 0], true], // 1x1: the matmul path
  ];
  it.each(IMPLS.flatMap((impl) => cases.map((c) => [...c, impl] as const)))('N=%i C=%i H=%i W=%i O=%i kernel %i stride %i padding %j residual+silu %s (%s path)', async (n, c, h, wd, o, k, stride, pad, epi, impl) => {
    const oh = Math.floor((h + pad[0] + pad[1] - k) / stride) + 1;
    const ow = Math.floor((wd + pad[2] + pad[3] - k) / stride) + 1;
    const host = [rnd([n, c, h, wd]), rnd([o, c, k, k], 0.3), rnd([o]), rnd([n, o, oh, ow]), rnd([n, o, oh, ow])];
    const shapes = [[n, c, h, wd], [o, c, k, k], [o], [n, o, oh, ow], [n, o, oh, ow]];
    const run = (dtype: 'f32' | 'f16') => {
      const [x, w, b, res, gy] = host.map((d, i) => {
        const t16 = tensor(d, shapes[i], 'f16');
        if (dtype === 'f16') return t16;
        const t32 = cast(t16, 'f32');
        t16.dispose();
        return t32;
      });
      for (const t of [x, w, b, res]) t.requireGrad();
      const y = conv2d(x, w, b, { stride, padding: pad, residual: epi ? res : undefined, act: epi ? 'silu' : 'none', impl });
      y.backward(gy);
      return [y, x.grad!, w.grad!, b.grad!];
    };
    const want = run('f32');
    const got = run('f16');
    const names = ['y', 'grad x', 'grad w', 'grad b'];
    for (let i = 0; i < 4; i++) {
      expect(got[i].dtype).toBe('f16');
      await expectClose(got[i], await want[i].data(), want[i].shape, 3e-3, `f16 ${names[i]}`);
    }
  });
});

describe('upsampleNearest2x', () => {
  it('matches F.interpolate(scale_factor=2, mode="nearest") forward and backward', async () => {
    const file = await openSafetensors(fixture('conv_upsample.safetensors'));
    const load = async (k: string) => tensor(await file.readF32(k), file.info(k).shape);
    const x = (await load('x')).requireGrad();
    const y = upsampleNearest2x(x);
    await expectClose(y, await file.readF32('y'), file.info('y').shape, 0, 'torch upsample y');
    y.backward(await load('gy'));
    await expectClose(x.grad!, await file.readF32('gx'), file.info('x').shape, 1e-6, 'torch upsample grad x');
    await file.close();
  });

  it('f16, from a view at an unaligned offset, against a CPU reference', async () => {
    const [n, c, h, w] = [1, 3, 3, 5];
    const base = tensor(rnd([n * c * h * w + 7]), [n * c * h * w + 7], 'f16');
    const x = base.view([n, c, h, w], 7);
    const xd = await x.data();
    const want = new Float32Array(n * c * 4 * h * w).map((_, i) => {
      const col = i % (2 * w), row = Math.floor(i / (2 * w)) % (2 * h), plane = Math.floor(i / (4 * h * w));
      return xd[(plane * h + (row >> 1)) * w + (col >> 1)];
    });
    await expectClose(upsampleNearest2x(x), want, [n, c, 2 * h, 2 * w], 0, 'f16 upsample y');
  });
});

describe('conv2d argument errors', () => {
  it('names the argument at fault', () => {
    const x = tensor(rnd([1, 3, 5, 5]), [1, 3, 5, 5]);
    const w = tensor(rnd([2, 4, 3, 3]), [2, 4, 3, 3]);
    expect(() => conv2d(x, w)).toThrow(/weight w \[2, 4, 3, 3\] expects 4 input channels, input x \[1, 3, 5, 5\] has 3/);
    const w3 = tensor(rnd([2, 3, 3, 3]), [2, 3, 3, 3]);
    expect(() => conv2d(x, w3, tensor([1, 2, 3], [3]))).toThrow(/bias b \[3\] must be \[2\]/);
    expect(() => conv2d(x, w3, undefined, { residual: tensor(rnd([1, 2, 5, 5]), [1, 2, 5, 5]) })).toThrow(/residual \[1, 2, 5, 5\] must have the output's shape \[1, 2, 3, 3\]/);
    expect(() => conv2d(x, w3, undefined, { stride: 0 })).toThrow(/stride 0/);
    expect(() => conv2d(tensor(rnd([3, 5, 5]), [3, 5, 5]), w3)).toThrow(/input x must be \[N, C, H, W\]/);
    expect(() => conv2d(x, tensor(rnd([2, 3, 7, 7]), [2, 3, 7, 7]))).toThrow(/7x7 kernel does not fit/);
    expect(() => upsampleNearest2x(w3.view([54]))).toThrow(/upsampleNearest2x: input x must be \[N, C, H, W\]/);
  });
});
