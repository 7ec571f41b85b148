// Normalisation layers and the embedding gather at model sizes: GroupNorm(32) + SiLU on the
// SD-VAE / UNet feature maps, LayerNorm over transformer tokens, LlamaGen's RMSNorm and
// token-embedding lookup. Reports the mean time per call and the bandwidth of the
// essential traffic (each input read once, each output written once).
// Run: npx tsx bench/norm.bench.ts
import { Bench } from 'tinybench';
import { type Tensor, device, embedding, getDevice, groupNorm, layerNorm, manualSeed, noGrad, ones, randn, rmsNorm, tensor, tidy, zeros } from '../runtime/index.ts';

interface Case {
  name: string;
  /** bytes of the essential traffic of one call */
  bytes: number;
  run: () => void;
}

await getDevice();
manualSeed(0);

/** The call, then its gradients dropped (backward leaves them on the leaves). */
const step = (f: () => Tensor, leaves: Tensor[], dy?: Tensor) => () => {
  tidy(() => {
    const y = f();
    if (dy) y.backward(dy);
  });
  for (const t of leaves) {
    t.grad?.dispose();
    t.grad = null;
  }
};

function normCases(name: string, shape: number[], channels: number, f: (x: Tensor, w: Tensor, b: Tensor) => Tensor): Case[] {
  const n = shape.reduce((a, d) => a * d, 1);
  const x = randn(shape).requireGrad();
  const w = ones([channels]).requireGrad();
  const b = zeros([channels]).requireGrad();
  const dy = randn(shape);
  return [
    { name: `${name} forward`, bytes: 2 * 4 * n, run: step(() => noGrad(() => f(x, w, b)), []) },
    { name: `${name} forward + backward`, bytes: 5 * 4 * n, run: step(() => f(x, w, b), [x, w, b], dy) },
  ];
}

const cases: Case[] = [
  ...normCases('groupNorm 32 + SiLU [1,320,128,128]', [1, 320, 128, 128], 320, (x, w, b) => groupNorm(x, 32, w, b, 1e-6, { silu: true })),
  ...normCases('groupNorm 32 + SiLU [1,640,64,64]', [1, 640, 64, 64], 640, (x, w, b) => groupNorm(x, 32, w, b, 1e-6, { silu: true })),
  ...normCases('layerNorm [4096,640]', [4096, 640], 640, (x, w, b) => layerNorm(x, w, b)),
];
{
  const x = randn([256, 1280]);
  const w = ones([1280]);
  cases.push({ name: 'rmsNorm [256,1280] forward', bytes: 2 * 4 * x.size, run: step(() => rmsNorm(x, w), []) });
}
{
  const [vocab, dim, n] = [16384, 1280, 1024];
  const table = randn([vocab, dim]);
  const ids = tensor(Array.from({ length: n }, (_, i) => (i * 7919) % vocab), [n], 'i32');
  cases.push({ name: `embedding gather ${n} of [${vocab},${dim}]`, bytes: 2 * 4 * n * dim, run: step(() => embedding(ids, table), []) });
}

const bench = new Bench({ name: 'normalisation and embedding', time: 1000, iterations: 5, warmupIterations: 2 });
for (const c of cases)
  bench.add(c.name, async () => {
    c.run();
    await device().sync();
  });
await bench.run();
console.log(`${bench.name} on ${device().info().adapter}`);
console.table(
  bench.tasks.map((t) => {
    const ms = t.result && 'latency' in t.result ? t.result.latency.mean : NaN;
    const c = cases.find((k) => k.name === t.name)!;
    return { case: t.name, 'ms / call': ms.toFixed(2), 'GB/s': (c.bytes / ms / 1e6).toFixed(2) };
  }),
);
