// Core ops: matmul (squares and transformer shapes, f32 and f16), elementwise and row
// reductions at 16M elements.
import { defineBench } from './harness.ts';
import { add, gelu, matmul, randn, softmax, sum } from '../runtime/ops/index.ts';
import type { DType } from '../runtime/dtype.ts';
import { naiveMatmul } from './reference/matmul.ts';
import { naiveRowSum, naiveSoftmax } from './reference/reduce.ts';
import { tfjsMatmul } from './peers/tfjs.ts';

// The naive kernel does about 1 GFLOPS here: past 1024^3 one run takes many seconds.
const NAIVE_MAX_FLOPS = 2 * 1024 ** 3;

function matmulCase(m: number, n: number, k: number, dtype: DType, transB: boolean, peer = false): void {
  const flops = 2 * m * n * k;
  defineBench({
    name: `matmul ${m}x${n}x${k} ${dtype}${transB ? ' x·Wᵀ' : ''}`,
    group: 'matmul',
    flops,
    setup: () => ({ a: randn([m, k], { dtype }), b: randn(transB ? [n, k] : [k, n], { dtype }) }),
    run: ({ a, b }) => matmul(a, b, { transB }),
    reference: flops <= NAIVE_MAX_FLOPS ? ({ a, b }) => naiveMatmul(a, b, { transB }) : undefined,
    peer: peer ? tfjsMatmul(m, n, k, transB) : undefined,
    note: flops > NAIVE_MAX_FLOPS ? 'no naive run (minutes)' : undefined,
  });
}

for (const dtype of ['f32', 'f16'] as const) {
  for (const s of [256, 512, 1024, 2048]) matmulCase(s, s, s, dtype, false, dtype === 'f32' && s === 1024);
  // Transformer linear layers y = x Wᵀ: 4096 tokens (d 1280, MLP 5120), a 256-token prompt,
  // and GPT-XL-like decoding of 2 sequences.
  matmulCase(4096, 1280, 1280, dtype, true, dtype === 'f32');
  matmulCase(4096, 5120, 1280, dtype, true);
  matmulCase(256, 1280, 1280, dtype, true);
  matmulCase(2, 1280, 1280, dtype, true);
}

const N = 1 << 24;
const ROWS = 4096;
const COLS = N / ROWS;

defineBench({
  name: 'add 16M f32',
  group: 'elementwise',
  bytes: 3 * 4 * N,
  setup: () => ({ a: randn([N]), b: randn([N]) }),
  run: ({ a, b }) => add(a, b),
});

defineBench({
  name: 'add 4096x4096 + 4096 (broadcast) f32',
  group: 'elementwise',
  bytes: 2 * 4 * N + 4 * COLS,
  setup: () => ({ a: randn([ROWS, COLS]), b: randn([COLS]) }),
  run: ({ a, b }) => add(a, b),
});

defineBench({
  name: 'gelu 16M f32',
  group: 'elementwise',
  bytes: 2 * 4 * N,
  setup: () => ({ x: randn([N]) }),
  run: ({ x }) => gelu(x),
});

defineBench({
  name: 'sum 4096x4096 over last axis f32',
  group: 'reduction',
  bytes: 4 * N + 4 * ROWS,
  setup: () => ({ x: randn([ROWS, COLS]) }),
  run: ({ x }) => sum(x, -1),
  reference: ({ x }) => naiveRowSum(x),
});

defineBench({
  name: 'softmax 4096x4096 rows f32',
  group: 'reduction',
  bytes: 2 * 4 * N,
  setup: () => ({ x: randn([ROWS, COLS]) }),
  run: ({ x }) => softmax(x, -1),
  reference: ({ x }) => naiveSoftmax(x),
});
