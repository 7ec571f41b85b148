// Fused attention (runtime/ops/attention.ts) at model sizes against the unfused three-kernel
// path on the existing ops (matmul Q Kᵀ -> softmax -> matmul V, which stores the L x S
// scores): SDXL self-attention (4096 tokens, 10 heads of 64), SDXL cross-attention to 77
// text tokens, and GPT-XL decoding (2 sequences for classifier-free guidance, 20 heads of
// 64, one new token against a KV cache of 256 + 120 positions). The reference is the unfused
// path on this library's matmul and softmax kernels, with the 1/sqrt(d) scale as a pass over
// q (under 1% of the time). On a CPU adapter compare the cpu ms of the two
// (--json: cpuMs, referenceCpuMs): wall times of the quick-timed reference swing with load.
// Run: npm run bench -- --filter attention
import { defineBench } from './harness.ts';
import { type Tensor, attention, attentionDecode, matmul, mulScalar, randn, softmax, tidy } from '../runtime/index.ts';

/** softmax(q kᵀ / sqrt(d)) v on matmul + softmax + matmul (q pre-scaled), `headsPerGroup` (b, h) pairs per launch. */
function unfused(q: Tensor, k: Tensor, v: Tensor, headsPerGroup: number): Tensor[] {
  const [B, H, L, d] = q.shape;
  const S = k.shape[2];
  const out: Tensor[] = [];
  // The L x S scores of all heads at once can pass the 128 MiB binding limit: split the heads.
  for (let h0 = 0; h0 < B * H; h0 += headsPerGroup) {
    const n = Math.min(headsPerGroup, B * H - h0);
    out.push(
      tidy(() => {
        const part = (t: Tensor, rows: number) => t.view([n, rows, d], t.offset + h0 * rows * d);
        const s = matmul(mulScalar(part(q, L), 1 / Math.sqrt(d)), part(k, S), { transB: true });
        return matmul(softmax(s, -1), part(v, S));
      }),
    );
  }
  return out;
}

function attentionCase(name: string, B: number, H: number, L: number, S: number, d: number, headsPerGroup: number): void {
  defineBench({
    name: `attention ${name} [${B}x${H}] ${L}x${S} d${d} f32`,
    group: 'attention',
    flops: 4 * B * H * L * S * d,
    setup: () => ({ q: randn([B, H, L, d]), k: randn([B, H, S, d]), v: randn([B, H, S, d]) }),
    run: ({ q, k, v }) => attention(q, k, v),
    reference: ({ q, k, v }) => unfused(q, k, v, headsPerGroup),
    note: 'reference: unfused matmul -> softmax -> matmul',
  });
}

attentionCase('SDXL self', 1, 10, 4096, 4096, 64, 1);
attentionCase('SDXL cross', 1, 10, 4096, 77, 64, 10);

{
  const [B, H, d, len] = [2, 20, 64, 256 + 120];
  defineBench({
    name: `attention GPT-XL decode [${B}x${H}] 1 query x ${len} cached d${d} f32`,
    group: 'attention',
    flops: 4 * B * H * len * d,
    bytes: 2 * B * H * len * d * 4,
    // What KVCache.attend runs: the decode kernel over a full cache of len positions.
    setup: () => ({ q: randn([B, H, 1, d]), k: randn([B, H, len, d]), v: randn([B, H, len, d]) }),
    run: ({ q, k, v }) => attentionDecode(q, k, v, len),
    reference: ({ q, k, v }) => unfused(q, k, v, B * H),
    note: 'reference: unfused matmul -> softmax -> matmul over the cache',
  });
}
