// The LaytonGen GPT (models/gpt.ts) against LlamaGen's own gpt.py (test/fixtures/gen_gpt.py):
// GPT-XL t2i's key/shape list and parameter count in meta mode; a small random t2i model loaded
// from a LlamaGen-style .pt checkpoint: training-mode logits with a caption mask that pads on
// the left and on the right, the cross-entropy loss and its gradients, a caption dropped to the
// uncond embedding, grouped-query attention; seeded training-mode dropout.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { Generator, type Tensor, buildMeta, renameWeights, safetensorsWeights, slice, tensor, withBuild } from '../runtime/index.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { maxRelError } from './ref/cpu.ts';
import { Transformer, ffnHidden, gptKind, loadGptModel, parseGptConfig } from '../models/gpt.ts';
import { openWeights } from '../models/checkpoint.ts';
import { modelDir } from '../tools/modeldir.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const file = await openSafetensors(fixture('gpt_small.safetensors'));
const f32 = async (k: string) => tensor(await file.readF32(k), file.info(k).shape);
const i32 = async (k: string) => tensor(await file.readI32(k), file.info(k).shape, 'i32');
const SMALL = JSON.parse(readFileSync(fixture('gpt_small_pt/config.json'), 'utf8')) as Record<string, unknown>;
const GRAD_KEYS = [
  'cls_embedding.cap_proj.fc1.weight', 'cls_embedding.cap_proj.fc2.weight', 'tok_embeddings.weight',
  'layers.0.attention.wqkv.weight', 'layers.0.attention.wo.weight', 'layers.0.attention_norm.weight',
  'layers.1.feed_forward.w3.weight', 'layers.1.ffn_norm.weight', 'norm.weight', 'output.weight',
];

const noteWorst = errorReport();
async function expectClose(group: string, got: Tensor, want: ArrayLike<number>, rtol = 1e-4): Promise<void> {
  const err = noteWorst(group, maxRelError(await got.data(), want));
  expect(err, group).toBeLessThanOrEqual(rtol);
}

async function inputs() {
  return { caption: await f32('caption'), mask: await f32('emb_mask'), tokens: await i32('tokens') };
}
const disposeAll = (...ts: Tensor[]) => ts.forEach((t) => t.dispose());
const small = async () => loadGptModel(await modelDir(fixture('gpt_small_pt')));
/** LlamaGen's training inputs: idx = tokens[:, :-1] */
const sliceTokens = (t: Tensor) => slice(t, 1, 0, t.shape[1] - 1);

describe('GPT-XL t2i shapes', () => {
  it('meta build lists LlamaGen\'s 258 state-dict keys and 777,678,080 parameters', () => {
    const want = JSON.parse(readFileSync(fixture('gpt_xl_keys.json'), 'utf8')) as { parameters: number; keys: [string, number[]][] };
    const config = gptKind.parseConfig({ gpt_model: 'GPT-XL', model_type: 't2i', cls_token_num: 120, caption_dim: 2048, vocab_size: 16384, block_size: 256 });
    expect(ffnHidden(config)).toBe(3584);
    const m = buildMeta(() => gptKind.build(config));
    expect(Object.entries(m.stateShapes())).toEqual(want.keys);
    expect(want.keys.length).toBe(258);
    expect(m.parameterCount()).toBe(want.parameters);
    expect(m.parameterCount()).toBe(777_678_080);
    // uncond_embedding is a buffer in LlamaGen: loaded, never trained
    expect(m.trainableParameters().map(([k]) => k)).not.toContain('cls_embedding.uncond_embedding');
    expect(m.setTrainable(true).trainableParameters().length).toBe(257);
    expect(gptKind.toJson(config)).toMatchObject({ dim: 1280, n_layer: 36, n_head: 20, n_kv_head: 20, cls_token_num: 120, model_type: 't2i' });
    expect(gptKind.parseConfig(gptKind.toJson(config))).toEqual(config);
    m.dispose();
  });

  it('config errors name the field', () => {
    expect(() => parseGptConfig({ model_type: 'c2i' })).toThrow(/"model_type" must be one of "t2i"/);
    expect(() => parseGptConfig({ gpt_model: 'GPT-M' })).toThrow(/"gpt_model" must be one of/);
    expect(() => parseGptConfig({ dim: 100, n_head: 4 })).toThrow(/"dim" \(100\) \/ "n_head" \(4\)/);
    expect(() => parseGptConfig({ dim: 1056, n_head: 4 })).toThrow(/at most 128/);
    expect(() => parseGptConfig({ gpt_model: 'GPT-B', n_kv_head: 5 })).toThrow(/"n_kv_head" \(5\)/);
    expect(() => parseGptConfig({ gpt_model: 'GPT-B', block_size: 200 })).toThrow(/"block_size" \(200\)/);
    expect(() => parseGptConfig({ gpt_model: 'GPT-B', cls_token_num: 121 })).toThrow(/"cls_token_num" \(121\)/);
    expect(() => parseGptConfig({ gpt_model: 'GPT-B', ffn_dropout_p: 1 }, 'x/config.json')).toThrow(/x\/config.json: "ffn_dropout_p" must be in \[0, 1\)/);
  });
});

describe('small t2i GPT against LlamaGen gpt.py', () => {
  it('training-mode logits with left and right caption padding', async () => {
    const model = await small();
    const { caption, mask, tokens } = await inputs();
    const idx = sliceTokens(tokens);
    const logits = model.forward(caption, idx, { embMask: mask });
    expect(logits.shape).toEqual([3, 16, 64]);
    await expectClose('logits', logits, await file.readF32('logits'));
    disposeAll(logits, caption, mask, tokens, idx);
    model.dispose();
  });

  it('cross-entropy loss and gradients', async () => {
    const model = await small();
    const { caption, mask, tokens } = await inputs();
    const loss = model.loss(caption, tokens, { embMask: mask });
    await expectClose('loss', loss, await file.readF32('loss'));
    loss.backward();
    const params = model.stateDict();
    for (const k of GRAD_KEYS) await expectClose('gradients', params[k].grad!, await file.readF32(`grad.${k}`));
    expect(params['cls_embedding.uncond_embedding'].grad).toBeFalsy();
    disposeAll(loss, caption, mask, tokens);
    model.dispose();
  });

  it('a dropped caption takes the uncond embedding (force_drop_ids)', async () => {
    const model = await small();
    const { caption, mask, tokens } = await inputs();
    const idx = sliceTokens(tokens);
    const logits = model.forward(caption, idx, { embMask: mask, forceDrop: [false, true, false] });
    await expectClose('caption dropout', logits, await file.readF32('drop.logits'));
    disposeAll(logits, idx, caption, mask, tokens);
    model.dispose();
  });

  it('grouped-query attention (n_kv_head 2)', async () => {
    const model = withBuild({}, () => new Transformer(parseGptConfig({ ...SMALL, n_kv_head: 2 })));
    const files = await openWeights(await modelDir(fixture('gpt_small_pt')), { ptPrefix: gptKind.ptPrefix });
    await model.loadWeights(renameWeights(files.weights, (k) => (k.endsWith('wqkv.weight') ? null : k)), false);
    await files.close();
    await model.loadWeights(renameWeights(safetensorsWeights([file]), (k) => (k.startsWith('gqa.w.') ? k.slice(6) : null)), false);
    const { caption, mask, tokens } = await inputs();
    const idx = sliceTokens(tokens);
    const logits = model.forward(caption, idx, { embMask: mask });
    await expectClose('grouped-query attention', logits, await file.readF32('gqa.logits'));
    disposeAll(logits, idx, caption, mask, tokens);
    model.dispose();
  });

  it('training-mode dropout is seeded; without train it is off', async () => {
    const model = withBuild({}, () => new Transformer(parseGptConfig({ ...SMALL, token_dropout_p: 0.1, resid_dropout_p: 0.1, ffn_dropout_p: 0.1, class_dropout_prob: 0.5 })));
    const base = await small();
    model.loadStateDict(base.stateDict());
    base.dispose();
    const { caption, mask, tokens } = await inputs();
    const loss = async (o: object) => {
      const l = model.loss(caption, tokens, { embMask: mask, ...o });
      const v = await l.item();
      l.dispose();
      return v;
    };
    const [a, b, c] = [await loss({ train: true, generator: new Generator(3) }), await loss({ train: true, generator: new Generator(3) }), await loss({ train: true, generator: new Generator(4) })];
    expect(a).toBe(b);
    expect(a).not.toBe(c);
    expect(await loss({})).toBeCloseTo(await file.readF32('loss').then((x) => x[0]), 4);
    disposeAll(caption, mask, tokens);
    model.dispose();
  });

  it('input errors name the argument', async () => {
    const model = await small();
    const { caption, mask, tokens } = await inputs();
    expect(() => model.forward(mask, tokens)).toThrow(/caption_embs \[3, 8\] must be \[B, 8 \(cls_token_num\), 32 \(caption_dim\)\]/);
    expect(() => model.forward(caption, caption)).toThrow(/input_ids \[3, 8, 32\] f32 must be i32/);
    expect(() => model.forward(caption, tokens, { embMask: tokens })).toThrow(/emb_masks \[3, 16\] must be \[3, 8\]/);
    expect(() => gptKind.forward(model, { caption_embs: caption }, model.config)).toThrow(/missing input 'input_ids'/);
    disposeAll(caption, mask, tokens);
    model.dispose();
  });
});
