// Normalisation layers and the embedding gather at model sizes: GroupNorm(32) + SiLU on the
// SDXL UNet / VAE feature maps (320 channels at 128x128, 640 at 64x64, 1280 at 32x32),
// LayerNorm over SDXL transformer tokens (4096 of 640, 4096 of 1280), RMSNorm of GPT-XL (256
// tokens of 1280) and of flan-t5-xl (120 tokens of 2048), and GPT-XL's token-embedding gather.
// GB/s counts the essential traffic: forward reads x and writes y once (2 passes of x's
// size); forward + backward adds reading dy and x again and writing dx (5 passes). The
// references are bench/reference/norm.ts (one thread per normalised row).
// Run: npm run bench -- --filter norm
import { defineBench } from './harness.ts';
import { type Tensor, embedding, groupNorm, layerNorm, noGrad, ones, randn, rmsNorm, tensor, tidy, zeros } from '../runtime/index.ts';
import { naiveEmbedding, naiveGroupNorm, naiveLayerNorm, naiveRmsNorm } from './reference/norm.ts';

type Norm = (x: Tensor, w: Tensor, b: Tensor) => Tensor;

/** Forward (with the naive reference) and, when `backward`, forward + backward of one normalisation. */
function normCases(name: string, shape: number[], f: Norm, naive: Norm, backward: boolean): void {
  const n = shape.reduce((a, d) => a * d, 1);
  const channels = shape.length === 4 ? shape[1] : shape.at(-1)!;
  const inputs = () => ({ x: randn(shape), w: randn([channels], { mean: 1, std: 0.1 }), b: randn([channels], { std: 0.1 }) });
  defineBench({
    name: `${name} forward f32`,
    group: 'norm',
    bytes: 2 * 4 * n,
    setup: inputs,
    run: ({ x, w, b }) => noGrad(() => f(x, w, b)),
    reference: ({ x, w, b }) => naive(x, w, b),
  });
  if (!backward) return;
  defineBench({
    name: `${name} forward + backward f32`,
    group: 'norm',
    bytes: 5 * 4 * n,
    setup: () => {
      const t = inputs();
      return { x: t.x.requireGrad(), w: t.w.requireGrad(), b: t.b.requireGrad(), dy: randn(shape) };
    },
    run: ({ x, w, b, dy }) => {
      tidy(() => f(x, w, b).backward(dy));
      const grads = [x.grad, w.grad, b.grad];
      x.grad = w.grad = b.grad = null;
      return grads;
    },
  });
}

const gn: Norm = (x, w, b) => groupNorm(x, 32, w, b, 1e-5, { silu: true });
const naiveGn: Norm = (x, w, b) => naiveGroupNorm(x, 32, w, b, 1e-5, true);
for (const [c, hw] of [[320, 128], [640, 64], [1280, 32]]) normCases(`groupNorm 32 + SiLU [1,${c},${hw},${hw}]`, [1, c, hw, hw], gn, naiveGn, true);

for (const d of [640, 1280]) normCases(`layerNorm [4096,${d}]`, [4096, d], (x, w, b) => layerNorm(x, w, b), naiveLayerNorm, d === 640);

for (const [rows, d, what] of [[256, 1280, 'GPT-XL'], [120, 2048, 'flan-t5-xl']] as const)
  normCases(`rmsNorm [${rows},${d}] (${what})`, [rows, d], (x, w) => rmsNorm(x, w), (x, w) => naiveRmsNorm(x, w), false);

{
  const [vocab, dim, n] = [16384, 1280, 1024];
  defineBench({
    name: `embedding gather ${n} ids of [${vocab},${dim}] f32 (GPT-XL)`,
    group: 'norm',
    bytes: 4 * n + 2 * 4 * n * dim,
    setup: () => ({ ids: tensor(Array.from({ length: n }, (_, i) => (i * 7919) % vocab), [n], 'i32'), table: randn([vocab, dim]) }),
    run: ({ ids, table }) => noGrad(() => embedding(ids, table)),
    reference: ({ ids, table }) => naiveEmbedding(ids, table),
  });
}
