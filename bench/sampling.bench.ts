// Next-token sampling at LlamaGen's decoding sizes: vocabulary 16384, batch 2 with
// classifier-free guidance (logits [4, 16384]), plain, top-k 2000 (LlamaGen's default),
// top-k + top-p, and greedy. One dispatch per step; the tokens stay on the GPU.
import { defineBench } from './harness.ts';
import { Generator, randn, sample, type SampleOptions } from '../runtime/ops/index.ts';

const [B, V] = [2, 16384];
const gen = new Generator(0);

const cases: [string, SampleOptions][] = [
  ['temperature 1', {}],
  ['top-k 2000', { topK: 2000 }],
  ['top-k 2000 + top-p 0.9', { topK: 2000, topP: 0.9 }],
  ['greedy', { topK: 1 }],
];
for (const [what, opts] of cases) {
  defineBench({
    name: `sample ${what}, CFG 4, batch ${B}, vocab ${V}`,
    group: 'sampling',
    bytes: 2 * B * V * 4,
    setup: () => ({ logits: randn([2 * B, V], { std: 3 }) }),
    run: ({ logits }) => sample(logits, { ...opts, cfgScale: 4, generator: gen }),
  });
}
