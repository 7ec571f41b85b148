// Generation with the GPT (models/generate.ts): greedy tokens equal LlamaGen's generate()
// (test/fixtures/gen_gpt.py) with and without classifier-free guidance and with cfg_interval,
// from the KV cache and by recomputing every position; teacher-forced KV-cache logits over all
// 256 positions of a 16x16 grid equal the full-sequence forward, with and without caption
// padding; seeded sampling; progress and cancellation.
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { Generator, type Tensor, randn, slice, tensor, withBuild } from '../runtime/index.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { maxRelError } from './ref/cpu.ts';
import { Transformer, loadGptModel, parseGptConfig } from '../models/gpt.ts';
import { forcedLogits, generate } from '../models/generate.ts';
import { modelDir } from '../tools/modeldir.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const file = await openSafetensors(fixture('gpt_small.safetensors'));
const f32 = async (k: string) => tensor(await file.readF32(k), file.info(k).shape);
const noteWorst = errorReport();

async function withSmall(fn: (m: Transformer, caption: Tensor, mask: Tensor) => Promise<void>): Promise<void> {
  const model = await loadGptModel(await modelDir(fixture('gpt_small_pt')));
  const [caption, mask] = [await f32('caption'), await f32('emb_mask')];
  try {
    await fn(model, caption, mask);
  } finally {
    caption.dispose();
    mask.dispose();
    model.dispose();
  }
}

async function tokensOf(p: Promise<Tensor>): Promise<number[]> {
  const t = await p;
  const v = Array.from(await t.data());
  t.dispose();
  return v;
}

describe('greedy generation equals LlamaGen generate() (top_k 1)', () => {
  const cases: [string, { cfgScale?: number; cfgInterval?: number }][] = [['cfg1', {}], ['cfg4', { cfgScale: 4 }], ['cfg4_i5', { cfgScale: 4, cfgInterval: 5 }]];
  for (const [name, o] of cases)
    it(`${name}: KV cache and full recomputation`, async () => {
      await withSmall(async (model, caption, mask) => {
        const want = Array.from(await file.readI32(`gen.${name}`));
        expect(await tokensOf(generate(model, caption, mask, { ...o, topK: 1 })), 'KV cache').toEqual(want);
        expect(await tokensOf(generate(model, caption, mask, { ...o, topK: 1, kvCache: false })), 'recomputed').toEqual(want);
      });
    });
});

describe('KV cache', () => {
  // A 16x16 grid (256 image tokens after 8 caption tokens), random weights large enough that
  // attention is far from uniform.
  const config = parseGptConfig({ dim: 64, n_layer: 2, n_head: 4, vocab_size: 64, caption_dim: 32, cls_token_num: 8, block_size: 256, multiple_of: 32, initializer_range: 0.25 });
  for (const padded of [false, true])
    it(`teacher-forced decoding of 256 tokens equals the full forward (${padded ? 'padded' : 'full'} captions)`, async () => {
      const gen = new Generator(11);
      const model = withBuild({ generator: gen }, () => new Transformer(config));
      const out = randn([64, 64], { std: 0.25, generator: gen });
      model.loadStateDict({ 'output.weight': out }, false);
      const caption = randn([2, 8, 32], { generator: gen });
      const mask = tensor([1, 1, 1, 1, 1, 1, 1, 1, ...(padded ? [0, 0, 0, 1, 1, 1, 1, 1] : [1, 1, 1, 1, 1, 1, 1, 1])], [2, 8]);
      const tokens = tensor(Int32Array.from({ length: 2 * 256 }, (_, i) => (i * 37 + 11) % 64), [2, 256], 'i32');
      const idx = slice(tokens, 1, 0, 255);
      const full = model.forward(caption, idx, { embMask: mask });
      const cached = await forcedLogits(model, caption, mask, tokens);
      expect(cached.shape).toEqual([2, 256, 64]);
      const want = await full.data();
      const err = noteWorst('KV cache vs full forward', maxRelError(await cached.data(), want));
      expect(err).toBeLessThanOrEqual(1e-4);
      // the logits must depend on the caption mask for the padded case to test anything
      if (padded) {
        const unmasked = model.forward(caption, idx);
        expect(maxRelError(await unmasked.data(), want)).toBeGreaterThan(1e-2);
        unmasked.dispose();
      }
      for (const t of [out, caption, mask, tokens, idx, full, cached]) t.dispose();
      model.dispose();
    });
});

describe('sampling', () => {
  it('same seed, same tokens; another seed, other tokens (CFG 4, top-k, top-p)', async () => {
    await withSmall(async (model, caption, mask) => {
      for (const o of [{ temperature: 1 }, { topK: 8, topP: 0.9, temperature: 0.8 }]) {
        const run = (seed: number) => tokensOf(generate(model, caption, mask, { ...o, cfgScale: 4, generator: new Generator(seed) }));
        const [a, b, c] = [await run(5), await run(5), await run(6)];
        expect(a).toEqual(b);
        expect(a).not.toEqual(c);
        expect(a.every((t) => Number.isInteger(t) && t >= 0 && t < 64)).toBe(true);
      }
    });
  });

  it('reports progress, stops on abort, checks its arguments', async () => {
    await withSmall(async (model, caption, mask) => {
      const seen: number[] = [];
      const t = await generate(model, caption, mask, { maxNewTokens: 6, topK: 1, onToken: (done, total) => seen.push(done * 100 + total) });
      expect(t.shape).toEqual([3, 6]);
      expect(seen).toEqual([106, 206, 306, 406, 506, 606]);
      t.dispose();
      const ac = new AbortController();
      const run = generate(model, caption, mask, { onToken: (done) => done === 3 && ac.abort(new Error('stop here')), signal: ac.signal });
      await expect(run).rejects.toThrow('stop here');
      await expect(generate(model, caption, mask, { maxNewTokens: 17 })).rejects.toThrow(/maxNewTokens: 17 tokens must be an integer in \[1, 16\] \(block_size\)/);
      await expect(generate(model, mask, undefined)).rejects.toThrow(/caption_embs \[3, 8\]/);
    });
  });
});
