// conv2d at SDXL UNet sizes: the 3x3 conv of the 320-channel stage (forward, and forward +
// backward), the 1x1 shortcut conv and the stride-2 Downsample2D conv. The reference is the
// naive kernel of bench/reference/conv2d.ts (one thread per output, direct loops); the
// harness runs it only where it takes seconds, not minutes (32x32 here).
// Run: npm run bench -- --filter conv2d
import { defineBench } from './harness.ts';
import { type Tensor, conv2d, randn, tidy } from '../runtime/index.ts';
import { naiveConv2d } from './reference/conv2d.ts';

const C = 320;
for (const hw of [32, 64, 128]) {
  const flops = 2 * C * C * 9 * hw * hw;
  defineBench({
    name: `conv2d 3x3 ${C}->${C} ${hw}x${hw} f32`,
    group: 'conv2d',
    flops,
    setup: () => ({ x: randn([1, C, hw, hw]), w: randn([C, C, 3, 3], { std: 0.02 }), b: randn([C]) }),
    run: ({ x, w, b }) => conv2d(x, w, b, { padding: 1 }),
    reference: ({ x, w, b }) => naiveConv2d(x, w, b, 1, [1, 1, 1, 1]),
  });
}

{
  const hw = 64;
  defineBench({
    name: `conv2d 3x3 ${C}->${C} ${hw}x${hw} fwd + bwd f32`,
    group: 'conv2d',
    flops: 3 * 2 * C * C * 9 * hw * hw,
    setup: () => ({
      x: randn([1, C, hw, hw]).requireGrad(),
      w: randn([C, C, 3, 3], { std: 0.02 }).requireGrad(),
      dy: randn([1, C, hw, hw]),
    }),
    run: ({ x, w, dy }) => {
      tidy(() => conv2d(x, w, undefined, { padding: 1 }).backward(dy));
      for (const t of [x, w] as Tensor[]) {
        t.grad?.dispose();
        t.grad = null;
      }
    },
  });
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
