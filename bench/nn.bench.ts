// Layer helpers of runtime/ops/nn.ts and conv.ts at model sizes: GEGLU of SDXL's transformer
// feed-forward (4096 tokens of 2x2560 at the 640-channel stage, 1024 of 2x5120 at 1280),
// SwiGLU of GPT-XL's feed-forward (8 sequences of 376 tokens, hidden 3584), LlamaGen's 2D
// rotary embedding on GPT-XL queries, nearest 2x upsampling of SDXL's Upsample2D inputs,
// GPT-XL's cross-entropy over 256 tokens of a 16384 vocabulary, and SDXL's sinusoidal
// timestep embedding. GB/s counts each input read and each output written once. References
// (bench/reference/nn.ts) where the kernel is more than one thread per element doing the
// obvious: rotary and upsample kernels are that already.
// Run: npm run bench -- --filter nn
import { defineBench } from './harness.ts';
import { type Tensor, applyRotaryEmb, crossEntropy, geglu, noGrad, precomputeFreqsCis2d, randn, swiglu, tensor, tidy, timestepEmbedding, upsampleNearest2x } from '../runtime/index.ts';
import { naiveCrossEntropy, naiveGeglu, naiveSwiglu } from './reference/nn.ts';

/** Runs f with gradients, back-propagates dy, and hands the leaves' gradients to the harness to dispose. */
function fwdBwd(f: () => Tensor, dy: Tensor | null, leaves: Tensor[]): (Tensor | null)[] {
  tidy(() => {
    const y = f();
    if (dy) y.backward(dy);
    else y.backward();
  });
  return leaves.map((t) => {
    const g = t.grad;
    t.grad = null;
    return g;
  });
}

for (const [tokens, h, stage] of [[4096, 2560, 640], [1024, 5120, 1280]]) {
  const n = tokens * h;
  defineBench({
    name: `geglu [${tokens},2x${h}] (SDXL ${stage}-ch stage) f32`,
    group: 'nn',
    bytes: 3 * 4 * n,
    setup: () => ({ x: randn([tokens, 2 * h]) }),
    run: ({ x }) => noGrad(() => geglu(x)),
    reference: ({ x }) => naiveGeglu(x),
  });
}
{
  const [tokens, h] = [4096, 2560];
  defineBench({
    name: `geglu [${tokens},2x${h}] forward + backward f32`,
    group: 'nn',
    bytes: 3 * 4 * tokens * h + 5 * 4 * tokens * h,
    setup: () => ({ x: randn([tokens, 2 * h]).requireGrad(), dy: randn([tokens, h]) }),
    run: ({ x, dy }) => fwdBwd(() => geglu(x), dy, [x]),
  });
}

{
  const [tokens, h] = [8 * 376, 3584];
  const n = tokens * h;
  const inputs = () => ({ a: randn([tokens, h]), b: randn([tokens, h]) });
  defineBench({
    name: `swiglu [${tokens},${h}] (GPT-XL, 8 x 376 tokens) f32`,
    group: 'nn',
    bytes: 3 * 4 * n,
    setup: inputs,
    run: ({ a, b }) => noGrad(() => swiglu(a, b)),
    reference: ({ a, b }) => naiveSwiglu(a, b),
  });
  defineBench({
    name: `swiglu [${tokens},${h}] forward + backward f32`,
    group: 'nn',
    bytes: 3 * 4 * n + 5 * 4 * n,
    setup: () => {
      const t = inputs();
      return { a: t.a.requireGrad(), b: t.b.requireGrad(), dy: randn([tokens, h]) };
    },
    run: ({ a, b, dy }) => fwdBwd(() => swiglu(a, b), dy, [a, b]),
  });
}

{
  // GPT-XL: 120 caption tokens + a 16x16 token grid, 20 heads of 64.
  const [batch, cls, grid, heads, d] = [8, 120, 16, 20, 64];
  const seq = cls + grid * grid;
  const n = batch * seq * heads * d;
  defineBench({
    name: `applyRotaryEmb 2D [${batch},${seq},${heads},${d}] (GPT-XL) f32`,
    group: 'nn',
    bytes: 2 * 4 * n + 4 * seq * d,
    setup: () => ({ x: randn([batch, seq, heads, d]), freqs: precomputeFreqsCis2d(grid, d, 10000, cls) }),
    run: ({ x, freqs }) => noGrad(() => applyRotaryEmb(x, freqs)),
    note: 'the kernel is one thread per pair already',
  });
}

for (const [c, hw] of [[1280, 32], [320, 64]]) {
  const n = c * hw * hw;
  defineBench({
    name: `upsampleNearest2x [1,${c},${hw},${hw}] f32`,
    group: 'nn',
    bytes: 5 * 4 * n,
    setup: () => ({ x: randn([1, c, hw, hw]) }),
    run: ({ x }) => noGrad(() => upsampleNearest2x(x)),
    note: 'the kernel is one thread per input pixel already',
  });
}

{
  const [rows, vocab] = [256, 16384];
  const inputs = () => ({ logits: randn([rows, vocab], { std: 3 }), targets: tensor(Array.from({ length: rows }, (_, i) => (i * 7919) % vocab), [rows], 'i32') });
  defineBench({
    name: `crossEntropy [${rows},${vocab}] (GPT-XL) forward f32`,
    group: 'nn',
    bytes: 4 * rows * vocab,
    setup: inputs,
    run: ({ logits, targets }) => noGrad(() => crossEntropy(logits, targets)),
    reference: ({ logits, targets }) => naiveCrossEntropy(logits, targets),
  });
  defineBench({
    name: `crossEntropy [${rows},${vocab}] forward + backward f32`,
    group: 'nn',
    bytes: 3 * 4 * rows * vocab,
    setup: () => {
      const t = inputs();
      return { logits: t.logits.requireGrad(), targets: t.targets };
    },
    run: ({ logits, targets }) => fwdBwd(() => crossEntropy(logits, targets), null, [logits]),
  });
}

defineBench({
  name: 'timestepEmbedding 2 timesteps x 320 (SDXL) f32',
  group: 'nn',
  setup: () => ({ t: tensor([999, 500], [2]) }),
  run: ({ t }) => timestepEmbedding(t, 320, { flipSinToCos: true, downscaleFreqShift: 0 }),
  note: 'launch-bound: a host-built frequency table and one dispatch',
});
