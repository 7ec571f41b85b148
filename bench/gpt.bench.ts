// Token generation with the GPT (models/generate.ts): one op is a whole generation, the prefill
// of the caption and then one token per step, launched without waits (TokenDecoder), so tokens/s
// is (tokens in the name) / (ms / 1000), and decode alone runs at (n - 1) / (ms - prefill ms).
// Each size runs the prefill alone, then n tokens with the KV cache, by recomputing every
// position each step (no cache), and with classifier-free guidance (the unconditional stream
// batched beside the conditional one: 2 rows instead of 1); padded captions take the cache's
// masked path. Sizes: a small GPT (dim 64, 2 layers, 4 heads, vocab 64, 8 caption tokens) over
// 64 tokens, and GPT-XL's shapes (dim 1280, 20 heads of 64, FFN 3584, vocab 16384, 120 caption
// tokens of 2048) with 2 of its 36 layers over 16 tokens (4 without the cache, each step about
// a prefill): the full depth costs 18x the layer time per token and 3.1 GB of f32 weights, too
// slow for a shared software adapter.
// Random weights. Run: npm run bench -- --filter gpt
import { defineBench } from './harness.ts';
import { Generator, randn, tensor, withBuild } from '../runtime/index.ts';
import { Transformer, parseGptConfig } from '../models/gpt.ts';
import { TokenDecoder } from '../models/generate.ts';

interface Size {
  name: string;
  config: Record<string, unknown>;
  tokens: number;
  /** tokens of the no-cache case (each step costs about a prefill) */
  noCacheTokens: number;
  /** built by the first case of this size and kept for the others (the harness disposes only tensors) */
  model?: Transformer;
}

const sizes: Size[] = [
  { name: 'small GPT', config: { dim: 64, n_layer: 2, n_head: 4, vocab_size: 64, caption_dim: 32, cls_token_num: 8, block_size: 256, multiple_of: 32 }, tokens: 64, noCacheTokens: 64 },
  { name: 'GPT-XL shapes, 2 of 36 layers', config: { gpt_model: 'GPT-XL', n_layer: 2 }, tokens: 16, noCacheTokens: 4 },
];

const modes: { what: string; cfg: boolean; kvCache: boolean; padded?: boolean; tokens: (s: Size) => number }[] = [
  { what: 'prefill only', cfg: false, kvCache: true, tokens: () => 1 },
  { what: 'KV cache', cfg: false, kvCache: true, tokens: (s) => s.tokens },
  { what: 'no cache (recompute all positions)', cfg: false, kvCache: false, tokens: (s) => s.noCacheTokens },
  { what: 'KV cache, CFG (2 streams)', cfg: true, kvCache: true, tokens: (s) => s.tokens },
  { what: 'KV cache, CFG, padded caption (masked cache)', cfg: true, kvCache: true, padded: true, tokens: (s) => s.tokens },
];

for (const size of sizes)
  for (const mode of modes) {
    const n = mode.tokens(size);
    defineBench({
      name: `generate ${n} token${n > 1 ? 's' : ''}, ${size.name}: ${mode.what}`,
      group: 'gpt',
      setup: () => {
        const gen = new Generator(0);
        const model = (size.model ??= withBuild({ generator: gen }, () => new Transformer(parseGptConfig(size.config))));
        const T = model.config.clsTokenNum;
        const caption = randn([1, T, model.config.captionDim], { generator: gen });
        // LlamaGen's left padding: the caption's last 3/4 are tokens
        const mask = mode.padded ? tensor(Array.from({ length: T }, (_, t) => (t < T / 4 ? 0 : 1)), [1, T]) : undefined;
        return { model, caption, mask, gen };
      },
      run: ({ model, caption, mask, gen }) => {
        const dec = new TokenDecoder(model, caption, mask, n, mode.cfg, mode.kvCache);
        for (let i = 0; i < n; i++) dec.step(i, { cfgScale: mode.cfg ? 4 : 1, topK: 100, generator: gen });
        dec.dispose();
      },
    });
  }
