// conv2d at SDXL UNet sizes against the naive kernel of bench/reference/conv2d.ts (one
// thread per output, direct loops): the 3x3 conv of the 320-channel stage at 64x64 and
// 128x128 (forward, and forward + backward), the 1x1 shortcut conv and the stride-2
// Downsample2D conv. Reports ms per call, GFLOPS of the useful multiply-adds, and the
// speed-up over the naive kernel where it runs the same conv.
// Run: npx tsx bench/conv.bench.ts [sizes, default 64,128]
// On lavapipe (CPU) a naive 3x3 conv at 128x128 takes minutes; every case runs once after
// one warm-up call, which is plenty for calls this long.
import { Bench } from 'tinybench';
import { type Tensor, conv2d, device, getDevice, manualSeed, noGrad, randn, tidy } from '../runtime/index.ts';
import { naiveConv2d } from './reference/conv2d.ts';

interface Case {
  name: string;
  flops: number;
  /** name of the naive case running the same conv, for the speed-up column */
  baseline?: string;
  run: () => void;
}

await getDevice();
manualSeed(0);
const sizes = (process.argv[2] ?? '64,128').split(',').map(Number);

/** One call, its outputs and gradients dropped. */
const step = (f: () => Tensor, leaves: Tensor[] = [], dy?: Tensor) => () => {
  tidy(() => {
    const y = f();
    if (dy) y.backward(dy);
  });
  for (const t of leaves) {
    t.grad?.dispose();
    t.grad = null;
  }
};

const cases: Case[] = [];
for (const hw of sizes) {
  const c = 320;
  const x = randn([1, c, hw, hw]).requireGrad();
  const w = randn([c, c, 3, 3], { std: 0.02 }).requireGrad();
  const b = randn([c]).requireGrad();
  const dy = randn([1, c, hw, hw]);
  const flops = 2 * c * c * 9 * hw * hw;
  const naive = `naive 3x3 ${c}->${c} ${hw}x${hw}`;
  cases.push(
    { name: naive, flops, run: step(() => naiveConv2d(x, w, b, 1, [1, 1, 1, 1])) },
    { name: `conv2d 3x3 ${c}->${c} ${hw}x${hw}`, flops, baseline: naive, run: step(() => noGrad(() => conv2d(x, w, b, { padding: 1 }))) },
    { name: `conv2d 3x3 ${c}->${c} ${hw}x${hw} fwd + bwd`, flops: 3 * flops, run: step(() => conv2d(x, w, b, { padding: 1 }), [x, w, b], dy) },
  );
}
{
  const hw = 64;
  const x = randn([1, 640, hw, hw]);
  const w = randn([320, 640, 1, 1], { std: 0.04 });
  cases.push({ name: `conv2d 1x1 640->320 ${hw}x${hw}`, flops: 2 * 640 * 320 * hw * hw, run: step(() => conv2d(x, w)) });
}
{
  const hw = 128;
  const x = randn([1, 320, hw, hw]);
  const w = randn([320, 320, 3, 3], { std: 0.02 });
  cases.push({
    name: `conv2d 3x3 stride 2 pad (0,1,0,1) 320->320 ${hw}x${hw}`,
    flops: 2 * 320 * 320 * 9 * (hw / 2) ** 2,
    run: step(() => conv2d(x, w, undefined, { stride: 2, padding: [0, 1, 0, 1] })),
  });
}

const bench = new Bench({ name: 'conv2d', time: 0, iterations: 1, warmupIterations: 1, warmupTime: 0 });
for (const c of cases)
  bench.add(c.name, async () => {
    c.run();
    await device().sync();
  });
await bench.run();
console.log(`${bench.name} on ${device().info().adapter}`);
const msOf = (name: string): number => {
  const r = bench.tasks.find((t) => t.name === name)?.result;
  return r && 'latency' in r ? r.latency.mean : NaN;
};
console.table(
  cases.map((c) => {
    const ms = msOf(c.name);
    return {
      case: c.name,
      'ms / call': ms.toFixed(1),
      GFLOPS: (c.flops / ms / 1e6).toFixed(2),
      'vs naive': c.baseline ? `${(msOf(c.baseline) / ms).toFixed(1)}x` : '',
    };
  }),
);
