// conv2d at SDXL UNet sizes: the 3x3 conv of the 320-channel stage (forward, and forward +
// backward), the 1x1 shortcut conv and the stride-2 Downsample2D conv; and the 3x3 conv of
// LlamaGen's VQ-16 encoder at full resolution (128 channels at 256x256). The reference is the
// naive kernel of bench/reference/conv2d.ts (one thread per output, direct loops), run where
// it takes seconds, not minutes (32x32 here); the peer TensorFlow.js's WebGPU conv
// (bench/peers/tfjs.ts) on the same adapter, channels-last, up to 64x64 (past that one tfjs
// conv takes 10-30 s on lavapipe).
// The recipe's training shapes (tools/train/configs.ts, batch 8) run forward + backward through
// both of conv2d's implementations (runtime/ops/conv.ts): the GEMM path it picks for them, and
// the implicit-GEMM kernel it keeps for convs whose column matrix is over its budget.
// Run: npm run bench -- --filter conv2d
import { defineBench } from './harness.ts';
import { type Conv2dOptions, type Tensor, conv2d, randn, tidy } from '../runtime/index.ts';
import { naiveConv2d } from './reference/conv2d.ts';
import { tfjsConv2d } from './peers/tfjs.ts';

// The naive kernel does about 1 GFLOPS here: 1.9 GFLOP (32x32) takes seconds a run.
const NAIVE_MAX_FLOPS = 2 * 1024 ** 3;
const PEER_MAX_FLOPS = 8e9;

function conv3x3(c: number, hw: number, what = ''): void {
  const flops = 2 * c * c * 9 * hw * hw;
  defineBench({
    name: `conv2d 3x3 ${c}->${c} ${hw}x${hw}${what} f32`,
    group: 'conv2d',
    flops,
    setup: () => ({ x: randn([1, c, hw, hw]), w: randn([c, c, 3, 3], { std: 0.02 }), b: randn([c]) }),
    run: ({ x, w, b }) => conv2d(x, w, b, { padding: 1 }),
    reference: flops <= NAIVE_MAX_FLOPS ? ({ x, w, b }) => naiveConv2d(x, w, b, 1, [1, 1, 1, 1]) : undefined,
    peer: flops <= PEER_MAX_FLOPS ? tfjsConv2d(1, c, hw, hw, c, 3) : undefined,
    note: flops > NAIVE_MAX_FLOPS ? 'no naive run (tens of seconds per op)' : undefined,
  });
}

/** A c->c 3x3 conv's forward + backward (gradients of x and w) on [n, c, hw, hw]. */
function convFwdBwd(name: string, n: number, c: number, hw: number, opts: Conv2dOptions): void {
  const o = hw / (opts.stride ?? 1);
  defineBench({
    name,
    group: 'conv2d',
    flops: 3 * 2 * n * c * c * 9 * o * o,
    setup: () => ({
      x: randn([n, c, hw, hw]).requireGrad(),
      w: randn([c, c, 3, 3], { std: 0.02 }).requireGrad(),
      dy: randn([n, c, o, o]),
    }),
    run: ({ x, w, dy }) => {
      tidy(() => conv2d(x, w, undefined, opts).backward(dy));
      for (const t of [x, w] as Tensor[]) {
        t.grad?.dispose();
        t.grad = null;
      }
    },
  });
}

const C = 320;
for (const hw of [32, 64, 128]) conv3x3(C, hw);
conv3x3(128, 256, ' (LlamaGen VQ encoder)');

{
  const hw = 64;
  convFwdBwd(`conv2d 3x3 ${C}->${C} ${hw}x${hw} fwd + bwd f32`, 1, C, hw, { padding: 1 });
  defineBench({
    name: `conv2d 1x1 640->${C} ${hw}x${hw} f32`,
    group: 'conv2d',
    flops: 2 * 640 * C * hw * hw,
    setup: () => ({ x: randn([1, 640, hw, hw]), w: randn([C, 640, 1, 1], { std: 0.04 }) }),
    run: ({ x, w }) => conv2d(x, w),
  });
}

{
  const hw = 128;
  defineBench({
    name: `conv2d 3x3 stride 2 pad (0,1,0,1) ${C}->${C} ${hw}x${hw} f32`,
    group: 'conv2d',
    flops: 2 * C * C * 9 * (hw / 2) ** 2,
    setup: () => ({ x: randn([1, C, hw, hw]), w: randn([C, C, 3, 3], { std: 0.02 }) }),
    run: ({ x, w }) => conv2d(x, w, undefined, { stride: 2, padding: [0, 1, 0, 1] }),
  });
}

// [batch, channels, size, stride]: VQ encoder/decoder 64 ch at 16x16 and 128 ch at 8x8, VAE 32 ch
// at 32x32, and a stride-2 downsample with diffusers' (0, 1, 0, 1) padding
const TRAINING: [number, number, number, number][] = [[8, 64, 16, 1], [8, 128, 8, 1], [8, 32, 32, 1], [8, 64, 16, 2]];
for (const [n, c, hw, stride] of TRAINING) {
  for (const impl of ['gemm', 'implicit'] as const) {
    const name = `conv2d 3x3${stride > 1 ? ' stride 2' : ''} ${c}->${c} ${hw}x${hw} batch ${n} fwd + bwd f32 (${impl === 'gemm' ? 'GEMM path' : 'implicit GEMM'})`;
    convFwdBwd(name, n, c, hw, { stride, padding: stride > 1 ? [0, 1, 0, 1] : 1, impl });
  }
}
