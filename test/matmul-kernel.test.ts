// The tuned matmul kernel (kernels/matmul.wgsl) against the naive one-thread-per-output
// kernel of bench/reference/matmul.ts, which is itself checked against float64 CPU code:
// every transpose combination in f32 and f16, through each path of the kernel (vec4 reads
// of aligned operands with the big CPU tile, scalar reads of unaligned ones, tiny M without
// subgroups), odd shapes that fill no tile, batches with a shared operand, views at element
// offsets, and explicitly chosen tiles (the GPU one, other lane groups).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Tensor, device, getDevice, matmul, matmulKernel, matmulTileFor, tensor, tensorCount } from '../runtime/index.ts';
import type { MatmulOptions, MatmulTile } from '../runtime/ops/matmul.ts';
import { randomArray } from '../runtime/gradcheck.ts';
import { naiveMatmul } from '../bench/reference/matmul.ts';
import * as ref from './ref/cpu.ts';

type DT = 'f32' | 'f16';
const TOL: Record<DT, number> = { f32: 2e-5, f16: 2e-3 };
const combos = [
  [false, false],
  [true, false],
  [false, true],
  [true, true],
] as const;

let seed = 1;
/** Host data in [-1, 1), rounded to f32. */
const rand = (n: number): Float32Array => Float32Array.from(randomArray(n, seed++));
const up = (data: Float32Array, shape: number[], dtype: DT = 'f32'): Tensor => tensor(data, shape, dtype);

/** max |got - want| / (1 + |want|), after checking that want is not trivially small. */
async function compare(got: Tensor, want: Tensor): Promise<number> {
  expect(got.shape).toEqual(want.shape);
  const g = await got.data();
  const w = await want.data();
  let err = 0;
  let big = 0;
  for (let i = 0; i < w.length; i++) {
    err = Math.max(err, Math.abs(g[i] - w[i]) / (1 + Math.abs(w[i])));
    big = Math.max(big, Math.abs(w[i]));
  }
  expect(big).toBeGreaterThan(0.1);
  got.dispose();
  want.dispose();
  return err;
}

/** Operands stored as opA/opB expect: a [batch?, M, K] or its transpose, b [batch?, K, N] or its transpose. */
function operands(m: number, n: number, k: number, transA: boolean, transB: boolean, dtype: DT, batchA = 0, batchB = 0) {
  const sa = transA ? [k, m] : [m, k];
  const sb = transB ? [n, k] : [k, n];
  const shapeA = batchA ? [batchA, ...sa] : sa;
  const shapeB = batchB ? [batchB, ...sb] : sb;
  return { a: up(rand(ref.numel(shapeA)), shapeA, dtype), b: up(rand(ref.numel(shapeB)), shapeB, dtype) };
}

async function checkAgainstNaive(m: number, n: number, k: number, dtype: DT, o: MatmulOptions, tile?: MatmulTile): Promise<void> {
  const { a, b } = operands(m, n, k, !!o.transA, !!o.transB, dtype);
  const got = tile ? matmulKernel(a, b, o, tile) : matmul(a, b, o);
  const err = await compare(got, naiveMatmul(a, b, o));
  expect(err, `${m}x${n}x${k} ${dtype} ${JSON.stringify({ ...o, bias: !!o.bias })} ${JSON.stringify(tile)}`).toBeLessThan(TOL[dtype]);
  a.dispose();
  b.dispose();
}

let startTensors = 0;
beforeAll(async () => {
  await getDevice();
  startTensors = tensorCount();
});
afterAll(() => {
  expect(tensorCount()).toBe(startTensors);
});

describe('naive reference kernel', () => {
  it('matches float64 CPU matmul with every transpose, a shared operand, bias and activation', async () => {
    for (const [transA, transB] of combos) {
      const [m, n, k, batch] = [5, 7, 9, 3];
      const da = rand(batch * m * k);
      const db = rand(k * n);
      const dbias = rand(n);
      const shapeA = transA ? [batch, k, m] : [batch, m, k];
      const shapeB = transB ? [n, k] : [k, n];
      const a = up(da, shapeA);
      const b = up(db, shapeB);
      const bias = up(dbias, [n]);
      const got = naiveMatmul(a, b, { transA, transB, bias, act: 'gelu' });
      const want = ref.matmul(ref.arr(da, shapeA), ref.arr(db, shapeB), { transA, transB, bias: ref.arr(dbias, [n]), act: 'gelu' });
      expect(got.shape).toEqual(want.shape);
      expect(ref.maxRelError(await got.data(), want.data)).toBeLessThan(1e-6);
      for (const t of [a, b, bias, got]) t.dispose();
    }
  });
});

describe('tuned kernel vs naive', () => {
  // Aligned (vec4 reads, the big tile), unaligned (scalar reads), and tiny M (no subgroups).
  const shapes: [number, number, number][] = [
    [70, 36, 44],
    [37, 45, 29],
    [3, 13, 8],
  ];
  for (const dtype of ['f32', 'f16'] as const)
    for (const [transA, transB] of combos)
      it(`${dtype} ${transA ? 'Aᵀ' : 'A'} ${transB ? 'Bᵀ' : 'B'}`, async () => {
        for (const [m, n, k] of shapes) await checkAgainstNaive(m, n, k, dtype, { transA, transB });
      });

  it('picks the vec4 path only for aligned operands and the big tile only for CPU adapters with subgroups', () => {
    const cpu = device().adapterInfo.isFallbackAdapter || device().adapterInfo.architecture === 'software';
    const t = matmulTileFor(70, true);
    expect(t.tm % t.group).toBe(0);
    if (cpu && device().hasSubgroups) expect(t).toEqual({ tm: 32, tn4: 2, wx: 8, group: 8 });
    expect(matmulTileFor(1, true).tm).toBe(1);
    expect(matmulTileFor(3, false)).toMatchObject({ tm: 4, group: 1 });
  });

  it('M = 1 and N = 1', async () => {
    await checkAgainstNaive(1, 29, 16, 'f32', { transB: true });
    await checkAgainstNaive(11, 1, 7, 'f32', {});
  });

  it('fuses bias and activation on both paths', async () => {
    const biasFor = (n: number, dtype: DT) => up(rand(n), [n], dtype);
    for (const [m, n, k, act, dtype] of [
      [70, 36, 44, 'gelu', 'f32'],
      [37, 45, 29, 'relu', 'f32'],
      [33, 20, 12, 'silu', 'f16'],
    ] as const) {
      const bias = biasFor(n, dtype);
      await checkAgainstNaive(m, n, k, dtype, { transB: true, bias, act });
      bias.dispose();
    }
  });

  it('batches with a per-batch or shared B (stride 0), folded or not', async () => {
    for (const [batchB, transA] of [
      [3, false],
      [0, false],
      [0, true],
    ] as const) {
      const { a, b } = operands(26, 20, 12, transA, false, 'f32', 3, batchB);
      const o = { transA };
      const want = naiveMatmul(a, b, o);
      const tile = matmulTileFor(26, true);
      expect(await compare(matmulKernel(a, b, o, tile), want)).toBeLessThan(TOL.f32);
      expect(await compare(matmul(a, b, o), naiveMatmul(a, b, o))).toBeLessThan(TOL.f32);
      a.dispose();
      b.dispose();
    }
  });

  it('views at element offsets: aligned ones read as vec4, others as scalars', async () => {
    const [m, n, k] = [33, 24, 16];
    for (const off of [8, 3]) {
      for (const [transA, transB] of combos) {
        const sa = transA ? [k, m] : [m, k];
        const sb = transB ? [n, k] : [k, n];
        const da = rand(m * k);
        const db = rand(k * n);
        // Both operands live inside larger buffers, `off` elements in.
        const pa = new Float32Array(m * k + 2 * off);
        pa.set(da, off);
        const pb = new Float32Array(k * n + 2 * off);
        pb.set(db, off);
        const ta = up(pa, [pa.length]);
        const tb = up(pb, [pb.length]);
        const va = ta.view(sa, off);
        const vb = tb.view(sb, off);
        const fa = up(da, sa);
        const fb = up(db, sb);
        const err = await compare(matmul(va, vb, { transA, transB }), naiveMatmul(fa, fb, { transA, transB }));
        expect(err, `offset ${off} ${transA} ${transB}`).toBeLessThan(TOL.f32);
        for (const t of [ta, tb, va, vb, fa, fb]) t.dispose();
      }
    }
  });

  it('other tiles: the GPU one, 16-thread rows, lane group 8 on a small tile', async () => {
    const tiles: MatmulTile[] = [
      { tm: 16, tn4: 1, wx: 64, group: 1 },
      { tm: 8, tn4: 2, wx: 16, group: device().hasSubgroups ? 8 : 1 },
    ];
    for (const tile of tiles) {
      await checkAgainstNaive(41, 52, 20, 'f32', {}, tile);
      await checkAgainstNaive(23, 19, 13, 'f32', { transA: true, transB: true }, tile);
    }
  });

  it('adds a per-row bias (rowBias, conv2d\'s GEMM path) before the activation, against float64 CPU code', async () => {
    // [batch 3, 37 x 20] x shared [20 x 45]: rows span two 32-row tiles
    const [bt, m, k, n] = [3, 37, 20, 45];
    const [ad, bd, rd] = [rand(bt * m * k), rand(k * n), rand(m)];
    for (const transA of [false, true]) {
      const a = transA ? up(Float32Array.from(ref.transpose(ref.arr(ad, [bt, m, k])).data), [bt, k, m]) : up(ad, [bt, m, k]);
      const [b, r] = [up(bd, [k, n]), up(rd, [m])];
      const y = matmulKernel(a, b, { transA, rowBias: r, act: 'relu' });
      const got = await y.data();
      y.dispose();
      let err = 0;
      for (let z = 0; z < bt; z++)
        for (let i = 0; i < m; i++)
          for (let j = 0; j < n; j++) {
            let v = rd[i];
            for (let q = 0; q < k; q++) v += ad[(z * m + i) * k + q] * bd[q * n + j];
            err = Math.max(err, Math.abs(got[(z * m + i) * n + j] - Math.max(v, 0)));
          }
      expect(err, `transA ${transA}`).toBeLessThan(1e-4);
      expect(() => matmulKernel(a, b, { transA, rowBias: b })).toThrow(/rowBias \[20,45\] f32 must be \[37\] f32, without bias/);
      for (const t of [a, b, r]) t.dispose();
    }
  });

  it('rejects a tile whose rows are not a multiple of its lane group', () => {
    const a = up(rand(16), [4, 4]);
    expect(() => matmulKernel(a, a, {}, { tm: 12, tn4: 1, wx: 8, group: 8 })).toThrow(/multiple of the lane group/);
    a.dispose();
  });
});
