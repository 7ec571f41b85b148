// LaytonGen's pipeline (tools/laytongen/) on a tiny random Layton root (the fixture parts of
// test/layton.test.ts) with tiny GPT / T5 configs: the world tokenizer (every word one piece,
// round trips), the caption features (LlamaGen's right-aligned layout against an unpadded T5
// forward, errors), a few training steps (token cache equal to Layton.tokenize, loss below the
// initial model's on the training set, saved folders reload equal), seeded generation, CFG
// passed through (greedy tokens equal the argmax of full forwards mixed by hand), and
// mini-GenEval end to end; the generate and eval geneval commands as a user runs them.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { Generator, type Tensor, add, argmax, mulScalar, noGrad, randn, slice, sub, tensor, tidy, withBuild } from '../runtime/index.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { LaddBranch } from '../models/controlnet.ts';
import { Transformer, loadGptModel } from '../models/gpt.ts';
import { Layton, loadLayton, parseLaytonConfig } from '../models/layton.ts';
import { DDPMScheduler } from '../models/schedulers.ts';
import { Tokenizer } from '../models/tokenizer.ts';
import { loadUNet } from '../models/unet.ts';
import { loadVae } from '../models/vae.ts';
import { loadVQModel } from '../models/vq.ts';
import { type RgbImage, imagesToTensor, readImage, toImage, toRgb8 } from '../tools/image.ts';
import { decodeVq, laytonInfo, openLayton } from '../tools/reconstruct.ts';
import { psnr } from '../tools/metrics.ts';
import { scoreImage } from '../tools/geneval.ts';
import { laytonDir, modelDir, saveLaytonDir } from '../tools/modeldir.ts';
import { tokenizerCopy } from '../tools/train/data.ts';
import { GENEVAL_CATEGORIES, World, splitOf } from '../tools/world.ts';
import { buildWorldTokenizer, encodeWorldCaptions, loadTextEncoderDir, worldTextEncoder, worldWords } from '../tools/laytongen/text.ts';
import { captionTable, laytonGenGptConfig, laytonGenTokens, setLoss, trainLaytonGen } from '../tools/laytongen/train.ts';
import { type LaytonGen, generateWith, openLaytonGen } from '../tools/laytongen/generate.ts';
import { evalGenevalReconstructedWith, evalGenevalWith, genevalCaptions } from '../tools/laytongen/geneval.ts';
import { expectOneLineError, runCli } from './helpers/cli.ts';

const fixture = (name: string) => modelDir(fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url)));
const note = errorReport();
const tmp = mkdtempSync(join(tmpdir(), 'laytongen-'));
const root = join(tmp, 'root');
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const T5_TINY = { d_model: 32, d_kv: 8, d_ff: 64, num_layers: 1, num_heads: 4 };
const GPT_TINY = { dim: 32, n_layer: 1, n_head: 2, multiple_of: 32, vocab_size: 64 }; // the fixture VQ's 64 codes
const SEED = 3;
const TUNE = { trainImages: 8, heldoutImages: 4, checkpointEvery: 3, lr: 1e-2, warmup: 0, gpt: GPT_TINY, t5: T5_TINY };

const tok = Tokenizer.fromJson(buildWorldTokenizer());
const pieces = (JSON.parse(buildWorldTokenizer()).model.vocab as [string, number][]).map(([p]) => p);
const ids = (text: string) => Array.from(tok.encode(text, { maxLength: 64, padding: false }).ids);

beforeAll(async () => {
  // 16 px tokenizer input -> 8x8 tokens of 64 codes; 32 px images through a 2-level VAE (as test/layton.test.ts)
  const unet = await loadUNet(await fixture('unet_small'));
  const branch = LaddBranch.fromUnet(unet, { codeDim: 8, upsampleFactor: 2, conditioningEmbeddingOutChannels: [8, 16], conditioningEmbeddingStride: 1 });
  const m = new Layton(parseLaytonConfig({ image_size: 32, tokenizer_size: 16 }), await loadVQModel(await fixture('vq_small_st')), unet, branch.controlnet, await loadVae(await fixture('vae_small')), new DDPMScheduler());
  await saveLaytonDir(root, m);
  m.dispose();
});

describe('world tokenizer', () => {
  it('holds every word of the grammar as one piece, T5 special ids, and is built the same every time', () => {
    expect(buildWorldTokenizer()).toBe(buildWorldTokenizer());
    expect(pieces.slice(0, 4)).toEqual(['<pad>', '</s>', '<unk>', '\u2581']);
    expect(tok.padId).toBe(0);
    const world = new World();
    const used = new Set([...world.captions('train'), ...world.captions('heldout')].flatMap((s) => s.caption.split(' ')));
    expect(used.size).toBe(30);
    expect([...used].every((w) => worldWords().includes(w))).toBe(true);
    for (const w of worldWords()) expect(ids(w), w).toEqual([pieces.indexOf(`\u2581${w}`), 1]);
    expect(tok.vocabSize).toBe(4 + worldWords().length);
  });

  it('round-trips captions word by word; case and spacing are normalised; unknown words are <unk>', () => {
    const world = new World();
    const sample = [...world.captions('train').filter((_, i) => i % 997 === 0), ...world.captions('heldout').filter((_, i) => i % 211 === 0)];
    expect(sample.length).toBeGreaterThan(100);
    for (const { caption } of sample) {
      const e = ids(caption);
      expect(e, caption).toEqual([...caption.split(' ').map((w) => pieces.indexOf(`\u2581${w}`)), 1]);
      expect(tok.decode(e)).toBe(caption);
    }
    expect(ids('  A RED\tCircle ')).toEqual(ids('a red circle'));
    expect(ids('a zebra')).toEqual([pieces.indexOf('\u2581a'), 3, 2, 1]);
  });
});

describe('caption features', () => {
  it('right-aligned T5 states with zero rows and mask 0 in front, equal to an unpadded forward', async () => {
    const enc = worldTextEncoder(SEED, T5_TINY);
    const caps = ['a red circle', 'two blue squares above a green triangle on a gray background'];
    const f = await encodeWorldCaptions(enc, caps);
    expect(f.embs.shape).toEqual([2, 16, 32]);
    expect(f.mask.dtype).toBe('i32');
    const lens = caps.map((c) => c.split(' ').length + 1);
    expect(Array.from(await f.mask.data())).toEqual(lens.flatMap((n) => [...new Array(16 - n).fill(0), ...new Array(n).fill(1)]));
    const embs = (await f.embs.data()) as Float32Array;
    for (const [b, c] of caps.entries()) {
      const n = lens[b];
      const idsT = tensor(Int32Array.from(ids(c)), [1, n], 'i32');
      const alone = await enc.model.forward(idsT);
      const row = embs.subarray(b * 16 * 32, (b + 1) * 16 * 32);
      expect(row.subarray(0, (16 - n) * 32).every((v) => v === 0)).toBe(true);
      const a = await alone.data();
      let err = 0;
      for (let i = 0; i < n * 32; i++) err = Math.max(err, Math.abs(row[(16 - n) * 32 + i] - a[i]));
      expect(note('caption features vs unpadded T5 forward', err)).toBeLessThan(1e-5);
      [idsT, alone].forEach((t) => t.dispose());
    }
    // UTF-8 bytes read as the string
    const fb = await encodeWorldCaptions(enc, [new TextEncoder().encode(caps[0])]);
    expect(Array.from(await fb.embs.data())).toEqual(Array.from(embs.subarray(0, 16 * 32)));
    [f.embs, f.mask, fb.embs, fb.mask].forEach((t) => t.dispose());
    enc.model.dispose();
  });

  it('cuts long captions with a warning, warns about unknown words, and refuses bad captions', async () => {
    const enc = worldTextEncoder(SEED, T5_TINY);
    const warnings: string[] = [];
    const warn = (m: string) => warnings.push(m);
    const long = 'a red circle left of a blue square on a navy background and a white diamond';
    const f = await encodeWorldCaptions(enc, ['a red circle', long, 'a pink circle'], { warn });
    expect(f.truncated).toEqual([false, true, false]);
    expect(Array.from((await f.mask.data()).subarray(16, 32)).every((v) => v === 1)).toBe(true);
    expect(warnings.join('\n')).toMatch(/caption 1 is longer than the text encoder's 16 tokens; it was cut/);
    expect(warnings.join('\n')).toMatch(/caption 2: "pink" is not in the world's vocabulary/);
    [f.embs, f.mask].forEach((t) => t.dispose());
    await expect(encodeWorldCaptions(enc, ['a red circle', ''])).rejects.toThrow(/caption 1 is empty/);
    await expect(encodeWorldCaptions(enc, [' \t'])).rejects.toThrow(/caption 0 is empty \(only whitespace\)/);
    await expect(encodeWorldCaptions(enc, [42 as unknown as string])).rejects.toThrow(/caption 0: must be a string or UTF-8 bytes, got number/);
    await expect(encodeWorldCaptions(enc, ['a red circle', new Uint8Array([0x61, 0x20, 0xff])])).rejects.toThrow(/caption 1: .*not valid UTF-8 \(at byte 2\)/);
    await expect(encodeWorldCaptions(enc, [])).rejects.toThrow(/no captions/);
    enc.model.dispose();
  });
});

describe('training, generation and mini-GenEval on a tiny root', () => {
  let m: LaytonGen;
  const logs: string[] = [];

  it('tokenises a cached set equal to Layton.tokenize, lowers the loss, and writes gpt/ and text_encoder/ that reload equal', async () => {
    const summary = await trainLaytonGen({ root, steps: 6, batch: 4, seed: SEED, log: (l) => logs.push(l) }, TUNE);
    expect(summary.steps).toBe(6);
    expect(summary.metrics.heldout_loss).toBeLessThan(summary.metrics.uniform_loss);
    // the cache holds Layton.tokenize of the tokenizer copies of the world's first train images
    const cache = await laytonGenTokens(root, 8, 4, (l) => logs.push(l));
    expect(logs.some((l) => /using the cached tokens of 8 \+ 4 images/.test(l))).toBe(true);
    const world = new World();
    const layton = await loadLayton(laytonDir(root));
    const want = tidy(() => noGrad(() => layton.tokenize(imagesToTensor([0, 1, 2].map((i) => tokenizerCopy(world.sample('train', i, 32).image, 16))))));
    expect(Array.from(cache.train.tokens.subarray(0, 3 * 64))).toEqual(Array.from(await want.data()));
    expect(cache.train.captions.slice(0, 3)).toEqual([0, 1, 2].map((i) => world.sample('train', i, 32).caption));
    want.dispose();
    layton.dispose();
    // the training set's loss: the initial GPT (rebuilt from the seed; zero output layer: ln 64) against the trained one
    const text = await loadTextEncoderDir(join(root, 'text_encoder'));
    const init = withBuild({ dtype: 'f32', generator: new Generator(SEED + 1) }, () => new Transformer(laytonGenGptConfig(32, GPT_TINY)));
    const trained = await loadGptModel(await modelDir(join(root, 'gpt')));
    const before = await setLoss(init, text, cache.train, 8);
    const after = await setLoss(trained, text, cache.train, 8);
    console.log(`training-set loss: initial ${before.toFixed(4)} (ln 64 = ${Math.log(64).toFixed(4)}), after 6 steps ${after.toFixed(4)}; held-out ${summary.metrics.heldout_loss.toFixed(4)}`);
    expect(Math.abs(before - Math.log(64))).toBeLessThan(1e-4);
    expect(after).toBeLessThan(before - 0.2);
    // the stage's caption table (encoded once, in batches of 3): each row is what encoding its caption in another batch gives
    const table = await captionTable(text, cache.train, 3);
    const some = [5, 0, 3];
    const direct = await encodeWorldCaptions(text, some.map((r) => cache.train.captions[r]));
    const [w, L] = [table.maxLength * table.dModel, table.maxLength];
    const rows = (await table.embs.data()) as Float32Array;
    expect(table.embs.shape).toEqual([8, w]);
    const pos = (v: number) => v + 0; // the padding rows are ±0 (0 times whatever the batch put there)
    expect(Array.from(await direct.embs.data(), pos)).toEqual(some.flatMap((r) => Array.from(rows.subarray(r * w, (r + 1) * w), pos)));
    expect(Array.from(await direct.mask.data())).toEqual(some.flatMap((r) => Array.from(table.mask.subarray(r * L, (r + 1) * L))));
    [table.embs, direct.embs, direct.mask].forEach((x) => x.dispose());
    // gpt/ holds the last checkpoint's weights
    const ckpt = await openSafetensors(join(root, 'train', 'laytongen', 'ckpt-0000006', 'gpt.safetensors'));
    const state = trained.stateDict();
    for (const k of ckpt.keys()) expect(Array.from(await state[k].data()), k).toEqual(Array.from(await ckpt.readF32(k)));
    await ckpt.close();
    // text_encoder/: the world tokenizer and the seed's frozen T5
    expect(text.tokenizerJson).toBe(buildWorldTokenizer());
    expect(text.world).toBe(true);
    const fresh = worldTextEncoder(SEED, T5_TINY);
    const [a, b] = [await encodeWorldCaptions(text, ['a red circle']), await encodeWorldCaptions(fresh, ['a red circle'])];
    expect(Array.from(await a.embs.data())).toEqual(Array.from(await b.embs.data()));
    [a.embs, a.mask, b.embs, b.mask].forEach((t) => t.dispose());
    for (const x of [init, trained, text.model, fresh.model]) x.dispose();
    // a finished stage resumes to its summary without steps
    const again = await trainLaytonGen({ root, steps: 6, batch: 4, seed: SEED, resume: true, log: (l) => logs.push(l) }, TUNE);
    expect(again.resumed_from).toBe(6);
    await expect(trainLaytonGen({ root, steps: 1, batch: 4, seed: SEED, log: () => {} }, { ...TUNE, gpt: { ...GPT_TINY, vocab_size: 128 } }))
      .rejects.toThrow(/block_size 64 and vocab_size 128 must equal the tokenizer's 64 tokens per image and codebook_size 64/);
    m = await openLaytonGen(root);
  });

  it('generates the same images for the same seed, other images for another, at image_size', async () => {
    const run = (seed: number) => generateWith(m, { captions: ['a red circle', 'two blue squares'], n: 2, seed, cfg: 2, batch: 3 });
    const [x, y, z] = [await run(1), await run(1), await run(2)];
    expect(x.images.length).toBe(4);
    expect(x.images.every((img) => img.width === 32 && img.height === 32)).toBe(true);
    expect(x.tokens.every((t) => t.length === 64 && t.every((v) => v >= 0 && v < 64))).toBe(true);
    expect(y.tokens).toEqual(x.tokens);
    expect(y.images.map((i) => Array.from(i.data))).toEqual(x.images.map((i) => Array.from(i.data)));
    expect(z.tokens).not.toEqual(x.tokens);
    expect(z.images.map((i) => Array.from(i.data))).not.toEqual(x.images.map((i) => Array.from(i.data)));
    // decoder 'vq': the same tokens through the plain VQ decoder, as eval reconstruction's decodeVq resizes it
    const v = await generateWith(m, { captions: ['a red circle', 'two blue squares'], n: 2, seed: 1, cfg: 2, batch: 3, decoder: 'vq' });
    expect(v.tokens).toEqual(x.tokens);
    const bytes = (imgs: RgbImage[]) => imgs.map((i) => Array.from(toRgb8(i).data));
    expect(bytes(v.images)).toEqual(bytes(await decodeVq(m.layton, x.tokens, [8, 8])));
    expect(bytes(v.images)).not.toEqual(bytes(x.images));
    await expect(generateWith(m, { captions: ['a red circle'], decoder: 'pixel' as 'vq' })).rejects.toThrow(/decoder must be 'layton' or 'vq', got pixel/);
    await expect(generateWith(m, { captions: ['a red circle'], steps: 3 })).rejects.toThrow(/steps must be one of 1, 2/);
    await expect(generateWith(m, { captions: ['a red circle'], cfg: 0.5 })).rejects.toThrow(/cfg must be a number >= 1/);
    await expect(generateWith(m, { captions: [''] })).rejects.toThrow(/caption 0 is empty/);
  });

  it('passes cfg through: greedy tokens are the argmax of full forwards, conditional alone at cfg 1 and mixed at cfg 3', async () => {
    // weights far from the 6-step model's near-uniform ones, so that guidance flips some greedy tokens
    const gen = new Generator(9);
    for (const [k, p] of Object.entries(m.gpt.stateDict()))
      if (!k.endsWith('uncond_embedding') && !k.includes('norm')) tidy(() => m.gpt.loadStateDict({ [k]: mulScalar(randn(p.shape, { generator: gen }), 0.3) }, false));
    const captions = ['a red circle', 'a blue square left of a white triangle'];
    const f = await encodeWorldCaptions(m.text, captions);
    let mixedDiffers = false;
    for (const cfg of [1, 3]) {
      const { tokens } = await generateWith(m, { captions, cfg, topK: 1 });
      const toks = tensor(Int32Array.from(tokens.flatMap((t) => Array.from(t))), [2, 64], 'i32');
      const best = noGrad(() => tidy(() => {
        const idx = slice(toks, 1, 0, 63);
        const cond = m.gpt.forward(f.embs, idx, { embMask: f.mask });
        const uncond = m.gpt.forward(f.embs, idx, { embMask: f.mask, forceDrop: [true, true] });
        const mixed = add(uncond, mulScalar(sub(cond, uncond), cfg));
        return [argmax(mixed, 2), argmax(cond, 2)] as Tensor[];
      }));
      const [want, condBest] = [Array.from(await best[0].data()), Array.from(await best[1].data())];
      expect(tokens.flatMap((t) => Array.from(t)), `cfg ${cfg}`).toEqual(want);
      if (cfg > 1) mixedDiffers = want.some((v, i) => v !== condBest[i]);
      [toks, ...best].forEach((t) => t.dispose());
    }
    expect(mixedDiffers, 'guidance changes some greedy token').toBe(true);
    [f.embs, f.mask].forEach((t) => t.dispose());
  });

  it('mini-GenEval runs end to end; the checker sees the decoded images at image_size', async () => {
    const seen: { caption: string; correct: boolean; width: number; rescored: boolean }[] = [];
    const r = await evalGenevalWith(m, {
      nCaptions: 2, minPerCategory: 2, batch: 8, seed: 5,
      onScore: (s, img) => seen.push({ caption: s.caption, correct: s.correct, width: img.width, rescored: scoreImage(img, s.caption).correct === s.correct }),
    });
    expect(r.captions).toBe(2);
    expect(r.images).toBe(4);
    expect(seen.length).toBe(4);
    expect(seen.every((s) => s.width === 32 && s.rescored)).toBe(true);
    expect(Object.keys(r.categories).sort()).toEqual(['single_object', 'two_object']);
    expect(r.overall).toBeGreaterThanOrEqual(0);
    expect(r.overall).toBeLessThanOrEqual(1);
    const fromSeen = (cat: string) => seen.filter((s) => genevalCaptions(2, 1, 2).find((c) => c.spec.caption === s.caption)!.spec.category === cat);
    for (const cat of ['single_object', 'two_object']) {
      const s = fromSeen(cat);
      expect(r.categories[cat as 'single_object'], cat).toBe(s.filter((x) => x.correct).length / s.length);
    }
    m.dispose();
  });
});

describe('mini-GenEval captions', () => {
  it('200 distinct held-out captions: every single_object, two_object, colors and counting one, position and color_attr for the rest', () => {
    const list = genevalCaptions();
    expect(new Set(list.map((c) => c.spec.caption)).size).toBe(200);
    expect(list.every((c) => splitOf(c.spec) === 'heldout')).toBe(true);
    const world = new World();
    const by = (cat: string) => list.filter((c) => c.spec.category === cat);
    for (const cat of ['single_object', 'two_object', 'colors', 'counting']) expect(by(cat).length, cat).toBe(world.captions('heldout', cat as 'colors').length);
    expect(by('position').length).toBe(69);
    expect(by('color_attr').length).toBe(69);
    for (const cat of GENEVAL_CATEGORIES) expect(by(cat).reduce((s, c) => s + c.images, 0), cat).toBeGreaterThanOrEqual(24);
    expect(list.reduce((s, c) => s + c.images, 0)).toBe(252);
    expect(() => genevalCaptions(0)).toThrow(/nCaptions must be a positive integer/);
  });
});

describe('files', () => {
  it('the stage wrote its parts', () => {
    for (const f of ['gpt/config.json', 'gpt/model.safetensors', 'text_encoder/config.json', 'text_encoder/model.safetensors', 'text_encoder/tokenizer.json', 'train/laytongen/tokens.safetensors', 'train/laytongen/summary.json'])
      expect(existsSync(join(root, f)), f).toBe(true);
  });
});

describe('layton-run generate / eval geneval', () => {
  const run = runCli;
  const oneLine = expectOneLineError;

  it('writes the same PNGs for the same seed, and says what it generated', async () => {
    const long = 'a red circle ' + 'and a blue square '.repeat(6);
    const args = (out: string, seed: number) => ['generate', 'a red circle', long, '--model', root, '--seed', String(seed), '--n', '2', '--out', join(tmp, out), '--json'];
    const [a, b, c] = await Promise.all([run(...args('g1', 4)), run(...args('g2', 4)), run(...args('g3', 5))]);
    for (const r of [a, b, c]) expect(r.status, r.stderr).toBe(0);
    expect(a.stderr).toMatch(/caption 1 is longer than the text encoder's 16 tokens; it was cut to fit/);
    expect(a.stderr).not.toMatch(/caption [02] /);
    const [ja, jb, jc] = [a, b, c].map((r) => JSON.parse(r.stdout));
    expect(ja.images.map((i: { output: string }) => i.output)).toEqual(['a-red-circle.0.png', 'a-red-circle.1.png', `${long.trim().replace(/ /g, '-').slice(0, 80)}.0.png`, `${long.trim().replace(/ /g, '-').slice(0, 80)}.1.png`].map((f) => join(tmp, 'g1', f)));
    expect(ja.images.every((i: { tokens: number[] }) => i.tokens.length === 64)).toBe(true);
    expect(jb.images.map((i: { tokens: number[] }) => i.tokens)).toEqual(ja.images.map((i: { tokens: number[] }) => i.tokens));
    expect(jc.images.map((i: { tokens: number[] }) => i.tokens)).not.toEqual(ja.images.map((i: { tokens: number[] }) => i.tokens));
    for (const [i, img] of ja.images.entries()) expect(readFileSync(jb.images[i].output).equals(readFileSync(img.output)), img.output).toBe(true);
  });

  it('eval geneval --json scores held-out captions by category', async () => {
    const r = await run('eval', 'geneval', '--model', root, '--captions', '2', '--json');
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.captions).toBe(2);
    expect(Object.keys(j.categories).sort()).toEqual(['single_object', 'two_object']);
    expect(j.overall).toBeCloseTo((j.categories.single_object + j.categories.two_object) / 2, 12);
  });

  it('eval geneval --reconstructed scores the tokenizer on the world\'s own images of the captions', async () => {
    const r = await run('eval', 'geneval', '--model', root, '--captions', '2', '--reconstructed', '--decoder', 'vq', '--json');
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect([j.source, j.decoder, j.captions, j.cfg]).toEqual(['reconstructed', 'vq', 2, 1]);
    expect(Object.values(j.counts).map((c) => (c as { total: number }).total)).toEqual(genevalCaptions(2).map((c) => c.images));
    // the scored images are the plain VQ decoder's of the tokens of the world's renders of each caption
    const m = await openLayton(await laytonInfo(root));
    const world = new World();
    const scored: RgbImage[] = [];
    const res = await evalGenevalReconstructedWith(m, { nCaptions: 2, minPerCategory: 2, decoder: 'vq', onScore: (_, img) => scored.push(img) });
    for (const batch of [0, 1.5]) await expect(evalGenevalReconstructedWith(m, { nCaptions: 2, minPerCategory: 2, batch })).rejects.toThrow(`geneval: batch must be a positive integer, got ${batch}`);
    const rows = genevalCaptions(2, 1, 2).flatMap((c) => Array.from({ length: c.images }, (_, k) => toImage(toRgb8(world.sampleCaption(c.spec, k, 32).image))));
    expect(rows.length).toBe(4);
    const ids = tidy(() => noGrad(() => m.tokenize(imagesToTensor(rows.map((i) => tokenizerCopy(i, 16))))));
    const flat = (await ids.data()) as Int32Array;
    ids.dispose();
    const want = await decodeVq(m, rows.map((_, i) => flat.slice(i * 64, (i + 1) * 64)), [8, 8]);
    m.dispose();
    expect(scored.map((img) => Array.from(img.data))).toEqual(want.map((img) => Array.from(img.data)));
    expect(res.images).toBe(4);
  });

  it('demo writes inputs, reconstructions and generations, printing the PSNR of the written files', async () => {
    const out = join(tmp, 'demo');
    const r = await run('demo', '--model', root, '--images', '2', '--captions', '2', '--out', out);
    expect(r.status, r.stderr).toBe(0);
    const rows = [...r.stdout.matchAll(/ {2}(\d{3})\.png {2}Layton (\S+) dB \/ (\S+) {3}VQ decoder (\S+) dB/g)];
    expect(rows.map((m) => m[1])).toEqual(['000', '001']);
    const world = new World();
    for (const m of rows) {
      const input = toImage(await readImage(join(out, 'input', `${m[1]}.png`)));
      expect(Array.from(input.data)).toEqual(Array.from(toImage(toRgb8(world.sample('heldout', Number(m[1]), 32).image)).data));
      expect(psnr(toImage(await readImage(join(out, 'reconstruction', `${m[1]}.png`))), input).toFixed(2)).toBe(m[2]);
      expect(psnr(toImage(await readImage(join(out, 'reconstruction', `${m[1]}.vq.png`))), input).toFixed(2)).toBe(m[4]);
    }
    expect(r.stdout).toMatch(/generation: 2 held-out captions, cfg 2/);
    for (const f of ['000.png', '001.png']) expect(existsSync(join(out, 'generated', f)), f).toBe(true);
    expect(r.stdout).toMatch(/\d\/2 correct by the checker/);
  });

  it('bad input: one line naming the caption, file or argument', async () => {
    const bad = join(tmp, 'bad.txt');
    writeFileSync(bad, Buffer.from([0x61, 0x20, 0x72, 0x65, 0x64, 0x0a, 0x61, 0xff, 0xfe, 0x0a]));
    const rs = await Promise.all([
      run('generate', '   ', '--model', root, '--out', join(tmp, 'x')),
      run('generate', '--captions-file', bad, '--model', root, '--out', join(tmp, 'x')),
      run('generate', '--captions-file', join(tmp, 'nope.txt'), '--model', root),
      run('generate', 'a red circle', '--model', join(tmp, 'nope')),
      run('generate', 'a red circle', '--model', root, '--top-p', '2'),
      run('generate', '--model', root),
      run('eval', 'geneval', '--model', root, '--cfg', '0.5'),
    ]);
    oneLine(rs[0], /caption 0 is empty/);
    oneLine(rs[1], /bad\.txt: line 2 \(caption 1\) is not valid UTF-8/);
    oneLine(rs[2], /nope\.txt/);
    oneLine(rs[3], /nope/);
    oneLine(rs[4], /--top-p must be in \(0, 1\], got 2/);
    oneLine(rs[5], /give captions/);
    oneLine(rs[6], /--cfg must be a number >= 1, got 0.5/);
  });
});
