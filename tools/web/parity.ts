// A fixed set of kernel runs whose outputs the browser test compares with the same code run
// in Node. Inputs are made on the host (a seeded JS generator), not by GPU randn: adapters
// may differ in the last bits of log/cos, and the check is of the kernels, not of those.
// The Philox uniform stream is integer arithmetic and must match exactly (`rand`).
import {
  Generator, attention, conv2d, gelu, groupNorm, layerNorm, matmul, rand, rmsNorm, seededRandom, softmax, sum, tensor, tidy,
} from '../../runtime/index.ts';

export async function parityRun(): Promise<Record<string, number[]>> {
  const next = seededRandom(1234);
  const r = (shape: number[]) => tensor(Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => 2 * next() - 1), shape);
  const outs = tidy(() => ({
    rand: rand([1000], { generator: new Generator(99) }),
    matmul: matmul(r([33, 70]), r([70, 45])),
    conv2d: conv2d(r([1, 8, 12, 12]), r([16, 8, 3, 3]), r([16]), { padding: 1, act: 'silu' }),
    groupNorm: groupNorm(r([2, 16, 6, 6]), 4, r([16]), r([16]), 1e-6, { silu: true }),
    layerNorm: layerNorm(r([10, 96]), r([96]), r([96])),
    rmsNorm: rmsNorm(r([10, 96]), r([96])),
    softmax: softmax(r([7, 130])),
    gelu: gelu(r([1000])),
    attention: attention(r([1, 2, 40, 16]), r([1, 2, 40, 16]), r([1, 2, 40, 16]), { causal: true }),
    sum: sum(r([64, 64]), 1),
  }));
  const res: Record<string, number[]> = {};
  for (const [k, t] of Object.entries(outs)) {
    res[k] = Array.from(await t.data());
    t.dispose();
  }
  return res;
}
