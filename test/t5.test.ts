// The T5 encoder against our torch reference written from the paper's equations and
// transformers' facts (test/fixtures/gen_t5.py): flan-t5-xl's key/shape list and parameter
// count in meta mode, the relative position buckets (hand-computed cases and torch's table),
// a small random gated-GELU model's last_hidden_state with padding (fused attention when
// nothing needs gradients, explicit scores when the bias table does) and its gradients, the
// 'relu' FFN variant, the host-side embedding table and caption encoding with truncation.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { type Tensor, type WeightSource, buildMeta, cast, needsGrad, noGrad, renameWeights, safetensorsWeights, tensor } from '../runtime/index.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { maxRelError, roundToF16 } from './ref/cpu.ts';
import { T5EncoderModel, encodeCaptions, parseT5Config, readRows, relativePositionBucket, t5Kind } from '../models/t5.ts';
import { Tokenizer } from '../models/tokenizer.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const file = await openSafetensors(fixture('t5_small.safetensors'));
const f32 = (k: string) => file.readF32(k);
const i32 = async (k: string) => tensor(await file.readI32(k), file.info(k).shape, 'i32');
/** The fixture's weights under `prefix`, as the CLI would pass them (through t5Kind.renameKey). */
const weights = (prefix: string): WeightSource =>
  renameWeights(safetensorsWeights([file]), (k) => (k.startsWith(prefix) ? t5Kind.renameKey!(k.slice(prefix.length)) : null));

const SMALL = { vocab_size: 100, d_model: 32, d_kv: 8, d_ff: 64, num_layers: 2, num_heads: 4, layer_norm_epsilon: 1e-6 };
const gated = parseT5Config({ ...SMALL, feed_forward_proj: 'gated-gelu', relative_attention_num_buckets: 8, relative_attention_max_distance: 20 });
const relu = parseT5Config({ ...SMALL, feed_forward_proj: 'relu' });

const noteWorst = errorReport();
async function expectClose(group: string, got: Tensor, want: ArrayLike<number>, rtol: number): Promise<void> {
  const err = noteWorst(group, maxRelError(await got.data(), want));
  expect(err, group).toBeLessThanOrEqual(rtol);
}

async function loaded(c = gated, prefix = 'w.'): Promise<T5EncoderModel> {
  const m = new T5EncoderModel(c);
  await m.loadWeights(weights(prefix));
  return m;
}

describe('flan-t5-xl shapes', () => {
  it('meta build lists the reference key/shape list and 1,223,527,424 parameters', () => {
    const flan = {
      architectures: ['T5ForConditionalGeneration'], vocab_size: 32128, d_model: 2048, d_kv: 64, d_ff: 5120, num_layers: 24,
      num_decoder_layers: 24, num_heads: 32, relative_attention_num_buckets: 32, relative_attention_max_distance: 128,
      layer_norm_epsilon: 1e-6, feed_forward_proj: 'gated-gelu', tie_word_embeddings: false, dropout_rate: 0.1,
    };
    const want = JSON.parse(readFileSync(fixture('t5_flan_xl_keys.json'), 'utf8')) as { parameters: number; keys: [string, number[]][] };
    const m = buildMeta(() => t5Kind.build(t5Kind.parseConfig(flan)));
    expect(Object.entries(m.stateShapes())).toEqual(want.keys);
    expect(m.parameterCount()).toBe(want.parameters);
    expect(m.parameterCount()).toBe(1_223_527_424);
    expect(t5Kind.toJson(t5Kind.parseConfig(flan))).toMatchObject({ architectures: ['T5EncoderModel'], d_ff: 5120, feed_forward_proj: 'gated-gelu' });
    m.dispose();
  });

  it('config errors name the field', () => {
    expect(() => parseT5Config({ feed_forward_proj: 'gated-silu' })).toThrow(/"feed_forward_proj" must be one of "gated-gelu", "relu"/);
    expect(() => parseT5Config({ relative_attention_num_buckets: 32, relative_attention_max_distance: 8 })).toThrow(/relative_attention_max_distance/);
    expect(() => parseT5Config({ d_model: 0 }, 'x/config.json')).toThrow(/x\/config.json: "d_model"/);
  });
});

describe('relative position buckets', () => {
  it('hand-computed cases (32 buckets, max distance 128)', () => {
    // 16 buckets per direction (keys after the query add 16); distances below 8 are exact, then
    // 8 + floor(2 log2(n / 8)) capped at 15: 15 -> 9, 16 -> 10, 20 -> 10, 64 -> 14, 127 and 200 -> 15
    const cases: [number, number][] = [[0, 0], [-1, 1], [1, 17], [-7, 7], [7, 23], [-8, 8], [-15, 9], [16, 26], [-20, 10], [-64, 14], [-127, 15], [-200, 15], [200, 31]];
    for (const [rel, want] of cases) expect(relativePositionBucket(rel, 32, 128), `rel ${rel}`).toBe(want);
    // 8 buckets, max distance 20: 4 per direction, 2 exact, then 2 + floor(2 ln(n/2) / ln 10): 6 -> 2, 7 -> 3
    expect([2, 6, 7, 30].map((n) => relativePositionBucket(-n, 8, 20))).toEqual([2, 2, 3, 3]);
  });

  it('equal torch float32 on -600..600', async () => {
    for (const [nb, md] of [[32, 128], [8, 20]]) {
      const want = await file.readI32(`buckets.${nb}_${md}`);
      const got = Array.from({ length: 1201 }, (_, i) => relativePositionBucket(i - 600, nb, md));
      expect(got, `${nb} buckets, distance ${md}`).toEqual(Array.from(want));
    }
  });
});

describe('small T5 encoder vs torch', () => {
  it('last_hidden_state with padding: fused attention (no grad) and explicit scores (grad)', async () => {
    const m = await loaded();
    const [ids, mask] = [await i32('input_ids'), await i32('attention_mask')];
    const want = await f32('last_hidden_state');
    const fused = await noGrad(() => m.forward(ids, mask));
    expect(fused.shape).toEqual([2, 12, 32]);
    expect(needsGrad(fused), 'noGrad holds across forward\'s await').toBe(false);
    await expectClose('forward (fused attention)', fused, want, 1e-4);
    const explicit = await m.forward(ids, mask);
    expect(needsGrad(explicit)).toBe(true);
    await expectClose('forward (explicit scores)', explicit, want, 1e-4);
    for (const t of [fused, explicit, ids, mask]) t.dispose();
    m.dispose();
  });

  it('gradients of sum(out * gy) w.r.t. embedding, attention, bias table, FFN and norms', async () => {
    const m = await loaded();
    const [ids, mask] = [await i32('input_ids'), await i32('attention_mask')];
    const y = await m.forward(ids, mask);
    const gy = tensor(await f32('gy'), y.shape);
    y.backward(gy);
    const sd = m.stateDict();
    const keys = file.keys().filter((k) => k.startsWith('grad.')).map((k) => k.slice(5));
    expect(keys.length).toBe(8);
    for (const k of keys) await expectClose(`grad ${k.replace(/^encoder\./, '')}`, sd[k].grad!, await f32(`grad.${k}`), 1e-4);
    for (const t of [y, gy, ids, mask]) t.dispose();
    m.dispose();
  });

  it("feed_forward_proj 'relu' (32 buckets, max distance 128)", async () => {
    const m = await loaded(relu, 'relu.w.');
    const [ids, mask] = [await i32('input_ids'), await i32('attention_mask')];
    const y = await noGrad(() => m.forward(ids, mask));
    await expectClose('forward relu', y, await f32('relu.last_hidden_state'), 1e-4);
    for (const t of [y, ids, mask]) t.dispose();
    m.dispose();
  });

  it('t5Kind.forward, and loading rejects a mis-shaped tensor by name', async () => {
    const m = await loaded();
    const inputs = { input_ids: await i32('input_ids'), attention_mask: await i32('attention_mask') };
    const out = await noGrad(() => t5Kind.forward(m, inputs, gated));
    await expectClose('forward (fused attention)', out.last_hidden_state, await f32('last_hidden_state'), 1e-4);
    for (const t of [...Object.values(inputs), ...Object.values(out)]) t.dispose();
    m.dispose();
    const wide = new T5EncoderModel({ ...gated, dFf: 65 });
    await expect(wide.loadWeights(weights('w.'))).rejects.toThrow(/'encoder.block.0.layer.1.DenseReluDense.wi_0.weight' is \[64,32\] in the source but \[65,32\]/);
    wide.dispose();
  });
});

describe('host-side embedding table', () => {
  it('gathers on the CPU from encoder.embed_tokens.weight alone and matches the reference', async () => {
    const onlyAlias = renameWeights(weights('w.'), (k) => (k === 'shared.weight' ? null : k));
    const m = new T5EncoderModel(gated, { hostEmbedding: true });
    expect(m.hostEmbedding).toBe(true);
    expect('shared.weight' in m.stateShapes()).toBe(false);
    const [ids, mask] = [await i32('input_ids'), await i32('attention_mask')];
    await expect(m.forward(ids, mask)).rejects.toThrow(/not loaded; call loadWeights first/);
    await m.loadWeights(onlyAlias);
    const y = await noGrad(() => m.forward(ids, mask));
    await expectClose('forward (host embedding)', y, await f32('last_hidden_state'), 1e-4);
    const bad = tensor([1, 100], [1, 2], 'i32');
    await expect(m.forward(bad)).rejects.toThrow(/input_ids holds 100 at position 1, outside the vocabulary \[0, 100\)/);
    const noTable = renameWeights(onlyAlias, (k) => (k === 'encoder.embed_tokens.weight' ? null : k));
    const empty = new T5EncoderModel(gated, { hostEmbedding: true });
    await expect(empty.loadWeights(noTable)).rejects.toThrow(/missing keys \[shared.weight\]/);
    for (const t of [y, ids, mask, bad]) t.dispose();
    m.dispose();
    empty.dispose();
  });

  it('reads a table in row chunks, f16 included', async () => {
    const src = weights('w.');
    const want = await f32('w.shared.weight');
    const half: WeightSource = {
      ...src,
      async load(k) {
        const t = await src.load(k);
        const h = noGrad(() => cast(t, 'f16'));
        t.dispose();
        return h;
      },
    };
    // 1000 bytes: 7 rows of 32 floats per chunk, 15 chunks
    expect(Array.from(await readRows(src, 'shared.weight', [100, 32], 1000))).toEqual(Array.from(want));
    expect(Array.from(await readRows(half, 'shared.weight', [100, 32], 1000))).toEqual(Array.from(want, roundToF16));
  });

  it('a real build picks the host table exactly when the table is over one binding', async () => {
    // 32128 x 2048 f32 is over lavapipe's 128 MiB; only the encoder of a one-layer model is allocated
    const big = new T5EncoderModel({ ...gated, vocabSize: 32128, dModel: 2048, numLayers: 1, dFf: 8, dKv: 8 });
    expect(big.hostEmbedding).toBe(true);
    big.dispose();
    const small = new T5EncoderModel(gated);
    expect(small.hostEmbedding).toBe(false);
    small.dispose();
  });
});

describe('caption encoding', () => {
  it('pads to 120 tokens, warns about and cuts a long caption', async () => {
    const tok = Tokenizer.fromJson(readFileSync(fixture('t5_tokenizer.json')));
    const m = await loaded();
    const warnings: string[] = [];
    const long = Array.from({ length: 130 }, () => 'red').join(' ');
    const r = await noGrad(() => encodeCaptions(m, tok, ['a red cat', long], { warn: (s) => warnings.push(s) }));
    expect(r.hidden.shape).toEqual([2, 120, 32]);
    expect(r.truncated).toEqual([false, true]);
    expect(warnings).toEqual(["caption 1 is longer than the text encoder's 120 tokens; it was cut to fit"]);
    const mask = Array.from(await r.mask.data());
    expect([mask.slice(0, 120), mask.slice(120)].map((row) => row.reduce((a, b) => a + b))).toEqual([4, 120]);
    // the first caption's features are those of its ids [▁a, ▁red, ▁cat, </s>, pad...] encoded directly
    const ids = tensor([4, 6, 7, 1, ...new Array(116).fill(0)], [1, 120], 'i32');
    const first = tensor([1, 1, 1, 1, ...new Array(116).fill(0)], [1, 120], 'i32');
    const direct = await noGrad(() => m.forward(ids, first));
    const all = await r.hidden.data();
    expect(maxRelError(all.slice(0, 120 * 32), await direct.data())).toBe(0);
    for (const t of [r.hidden, r.mask, ids, first, direct]) t.dispose();
    await expect(encodeCaptions(m, tok, ['fine', new Uint8Array([0xff])])).rejects.toThrow(/^caption 1: tokenizer.json: encode: the bytes are not valid UTF-8/);
    m.dispose();
  });
});
