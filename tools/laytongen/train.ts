// `layton-run train laytongen`: LaytonGen's GPT (GPT_CONFIG) trained on the world's captions.
//   data    a fixed set of the world's TRAIN images (sample indices 0 .. trainImages - 1),
//           tokenised once by the root's Layton tokenizer (vq/ on the tokenizer_size copy, as
//           Layton.tokenize) and cached in <root>/train/laytongen/tokens.safetensors with their
//           captions; a held-out set beside it for the summary's loss. The cache is rebuilt when
//           the VQ's files or the set's definition change.
//   text    the frozen world text encoder (tools/laytongen/text.ts): the training captions'
//           features encoded once at the start (captionTable), the held-out ones per batch.
//   loss    LlamaGen's: cross-entropy of the image tokens given caption and earlier tokens, with
//           caption dropout to the uncond embedding (class_dropout_prob) and the GPT's dropouts,
//           all drawn from the step's generator; AdamW (LlamaGen's betas and weight decay) with
//           warmup + cosine, gradient clipping at 1.
//   output  <root>/gpt/ (config.json + model.safetensors) and <root>/text_encoder/ (config.json +
//           model.safetensors + tokenizer.json).
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Generator, type Tensor, device, embedding, noGrad, reshape, tensor, tidy, withBuild } from '../../runtime/index.ts';
import { openSafetensors, saveSafetensors } from '../../runtime/platform/node-fs.ts';
import { readConfig } from '../../models/checkpoint.ts';
import { Transformer, gptConfigJson, parseGptConfig } from '../../models/gpt.ts';
import { parseLaytonConfig } from '../../models/layton.ts';
import { loadVQModel, parseVQConfig } from '../../models/vq.ts';
import { imagesToTensor } from '../image.ts';
import { GPT_CONFIG, IMAGE_SIZE } from '../train/configs.ts';
import { batchIndices, tokenizerCopy } from '../train/data.ts';
import { type StageSummary, runStage } from '../train/loop.ts';
import { DEFAULT_SEED, type StageOptions, openPart, optimStep, savePart, stageAdamW, stageDir, trainWorld } from '../train/stage.ts';
import { CAPTION_TOKENS, type CaptionEncoder, encodeWorldCaptions, saveTextEncoder, worldTextEncoder } from './text.ts';

/**
 * Steps and batch of the shipped recipe, sized for the stage's 45 minutes on the 2-core
 * software adapter. Measured: a GPT_CONFIG (dim 128) step at batch 32 takes about 2.2 s on an
 * idle machine (4.5 s beside another training process; batch 64 twice that), the former dim-256
 * model's about 5 s (9.5 s of CPU under heavy load: forward 2.9, backward 6.4, captions and
 * AdamW 0.3; about 62 GFLOP); tokenising a cached image takes about 40 ms of CPU. 800 steps
 * plus the 8,448 cached images came to 34.7 minutes (held-out loss 3.31, still falling); 960
 * came to 40.0 (3.00), then 43.8 and 46.9 on the current tokens (2.6-2.85 s a step: the same
 * work ran up to 12% slower in later hours). captionTable then took 0.11 s off a step (29 s once),
 * and the copy kernel's runs and attention's row count (README) 2.88 -> 2.22 s a step in 40-step
 * runs (weights bit-identical): about 37 minutes a run, 8 inside the 45.
 */
export const LAYTONGEN_DEFAULTS = { steps: 960, batch: 32 };

/** Settings besides StageOptions (tests shrink them; the defaults are the shipped recipe's). */
export interface LaytonGenTuning {
  lr: number;
  warmup: number;
  weightDecay: number;
  checkpointEvery: number;
  /** size of the fixed training set (world TRAIN sample indices 0 .. n - 1) */
  trainImages: number;
  /** held-out images whose teacher-forced loss the summary reports */
  heldoutImages: number;
  /** GPT config.json fields over GPT_CONFIG (caption_dim follows the text encoder) */
  gpt: Record<string, unknown>;
  /** T5 config.json fields over T5_CONFIG (vocab_size follows the tokenizer) */
  t5: Record<string, unknown>;
}

const TUNING: LaytonGenTuning = { lr: 1e-3, warmup: 40, weightDecay: 0.05, checkpointEvery: 25, trainImages: 8192, heldoutImages: 256, gpt: {}, t5: {} };
const GRAD_CLIP = 1;
/** LlamaGen's AdamW betas */
const BETAS: [number, number] = [0.9, 0.95];
const CACHE_FORMAT = 'laytongen-tokens/1';
const TOKENIZE_BATCH = 64;

/** The GPT's config for a text encoder of width captionDim. */
export const laytonGenGptConfig = (captionDim: number, over: Record<string, unknown> = {}) =>
  parseGptConfig({ ...GPT_CONFIG, caption_dim: captionDim, ...over }, 'tools/train/configs.ts GPT_CONFIG');

/** Token ids of a fixed image set and their captions. */
export interface TokenSet {
  /** [n, tokens] row-major */
  tokens: Int32Array;
  captions: string[];
  /** tokens per image (the grid's h·w) */
  perImage: number;
}

export interface TokenCache {
  train: TokenSet;
  heldout: TokenSet;
}

/** sha256 over the VQ folder's files (names and bytes): the cache is valid for exactly these weights. */
async function vqFingerprint(root: string): Promise<string> {
  const dir = join(root, 'vq');
  const h = createHash('sha256');
  for (const name of (await readdir(dir)).sort()) {
    h.update(name + '\0');
    h.update(await readFile(join(dir, name)));
  }
  return h.digest('hex');
}

/**
 * The cached token ids of the training and held-out sets, tokenising (and writing the cache)
 * when it is missing or was made for other VQ weights or other set sizes.
 */
export async function laytonGenTokens(root: string, trainImages: number, heldoutImages: number, log: (line: string) => void = () => {}): Promise<TokenCache> {
  const path = join(stageDir(root, 'laytongen'), 'tokens.safetensors');
  const files = await openPart(root, '');
  const layton = parseLaytonConfig(await readConfig(files, 'layton.json'), join(root, 'layton.json'));
  const vqFiles = await openPart(root, 'vq'); // before the fingerprint reads the folder: a missing vq/ names the stage to run
  const key = { format: CACHE_FORMAT, vq: await vqFingerprint(root), world_seed: trainWorld().seed, image_size: IMAGE_SIZE, tokenizer_size: layton.tokenizerSize, train: trainImages, heldout: heldoutImages };
  const cached = await openSafetensors(path).catch(() => null);
  if (cached) {
    try {
      const meta = cached.metadata ?? {};
      if (meta.key === JSON.stringify(key)) {
        const read = async (split: 'train' | 'heldout'): Promise<TokenSet> => {
          const shape = cached.info(split).shape;
          return { tokens: Int32Array.from(await cached.readI32(split)), captions: JSON.parse(meta[`${split}_captions`]) as string[], perImage: shape[1] };
        };
        log(`laytongen: using the cached tokens of ${trainImages} + ${heldoutImages} images (${path})`);
        return { train: await read('train'), heldout: await read('heldout') };
      }
    } finally {
      await cached.close();
    }
  }
  const vq = await loadVQModel(vqFiles);
  try {
    const world = trainWorld();
    const tokenize = async (split: 'train' | 'heldout', n: number): Promise<TokenSet> => {
      const parts: Int32Array[] = [];
      const captions: string[] = [];
      const t0 = performance.now();
      for (let start = 0; start < n; start += TOKENIZE_BATCH) {
        const samples = Array.from({ length: Math.min(TOKENIZE_BATCH, n - start) }, (_, k) => world.sample(split, start + k, IMAGE_SIZE));
        const ids = noGrad(() => tidy(() => vq.encode(imagesToTensor(samples.map((s) => tokenizerCopy(s.image, layton.tokenizerSize)))).indices));
        parts.push(Int32Array.from((await ids.data()) as Int32Array));
        ids.dispose();
        captions.push(...samples.map((s) => s.caption));
        const done = Math.min(n, start + TOKENIZE_BATCH);
        if (done === n || parts.length % 20 === 0) log(`laytongen: tokenised ${done}/${n} ${split} images (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
      }
      const tokens = new Int32Array(parts.reduce((s, p) => s + p.length, 0));
      parts.reduce((at, p) => (tokens.set(p, at), at + p.length), 0);
      return { tokens, captions, perImage: tokens.length / n };
    };
    await mkdir(stageDir(root, 'laytongen'), { recursive: true });
    const train = await tokenize('train', trainImages);
    const heldout = await tokenize('heldout', heldoutImages);
    await saveSafetensors(
      path,
      { train: { dtype: 'I32', shape: [trainImages, train.perImage], data: train.tokens }, heldout: { dtype: 'I32', shape: [heldoutImages, heldout.perImage], data: heldout.tokens } },
      { key: JSON.stringify(key), train_captions: JSON.stringify(train.captions), heldout_captions: JSON.stringify(heldout.captions) },
    );
    return { train, heldout };
  } finally {
    vq.dispose();
  }
}

/** Rows `idx` of a row-major i32 table of `width` columns, as i32 [idx.length, width]. */
function rowsOf(table: Int32Array, width: number, idx: number[]): Tensor {
  const out = new Int32Array(idx.length * width);
  idx.forEach((r, k) => out.set(table.subarray(r * width, (r + 1) * width), k * width));
  return tensor(out, [idx.length, width], 'i32');
}

export interface BatchInputs {
  embs: Tensor;
  mask: Tensor;
  /** [B, perImage] i32 */
  tokens: Tensor;
  dispose(): void;
}

/** The GPT's inputs for rows `idx` of a token set: caption features (encoded by `text`) and the image tokens. */
export async function batchInputs(text: CaptionEncoder, set: TokenSet, idx: number[]): Promise<BatchInputs> {
  const f = await encodeWorldCaptions(text, idx.map((r) => set.captions[r]));
  const tokens = rowsOf(set.tokens, set.perImage, idx);
  return { embs: f.embs, mask: f.mask, tokens, dispose: () => [f.embs, f.mask, tokens].forEach((x) => x.dispose()) };
}

/**
 * The frozen text encoder's features of every caption of a set, encoded once in batches of
 * `batch` (a step then gathers its rows: the same numbers as encoding them in the step, without
 * the T5 forward and the mask's readback, about 100 ms of a 2.8 s step here).
 */
export interface CaptionTable {
  /** [n, maxLength · d_model] f32, one row a caption (encodeWorldCaptions' embs flattened) */
  embs: Tensor;
  /** [n, maxLength] row-major */
  mask: Int32Array;
  maxLength: number;
  dModel: number;
}

export async function captionTable(text: CaptionEncoder, set: TokenSet, batch: number): Promise<CaptionTable> {
  const n = set.captions.length;
  const L = CAPTION_TOKENS;
  const d = text.model.config.dModel;
  const bytes = n * L * d * 4;
  const limit = device().maxBinding;
  if (bytes > limit) throw new Error(`laytongen: the caption features of ${n} images take ${bytes} bytes, over this adapter's ${limit}-byte binding limit (use fewer trainImages)`);
  const embs = new Float32Array(n * L * d);
  const mask = new Int32Array(n * L);
  for (let start = 0; start < n; start += batch) {
    const f = await encodeWorldCaptions(text, set.captions.slice(start, Math.min(n, start + batch)), { maxLength: L });
    embs.set((await f.embs.data()) as Float32Array, start * L * d);
    mask.set((await f.mask.data()) as Int32Array, start * L);
    f.embs.dispose();
    f.mask.dispose();
  }
  return { embs: tensor(embs, [n, L * d]), mask, maxLength: L, dModel: d };
}

/** The GPT's inputs for rows `idx` of a token set whose caption features are `table`. */
function tableInputs(table: CaptionTable, set: TokenSet, idx: number[]): BatchInputs {
  const B = idx.length;
  const L = table.maxLength;
  const embs = tidy(() => reshape(embedding(tensor(Int32Array.from(idx), [B], 'i32'), table.embs), [B, L, table.dModel]));
  const mask = rowsOf(table.mask, L, idx);
  const tokens = rowsOf(set.tokens, set.perImage, idx);
  return { embs, mask, tokens, dispose: () => [embs, mask, tokens].forEach((x) => x.dispose()) };
}

/** Mean teacher-forced cross-entropy over a whole token set (no dropout), in batches. */
export async function setLoss(gpt: Transformer, text: CaptionEncoder, set: TokenSet, batch: number): Promise<number> {
  const n = set.captions.length;
  let total = 0;
  for (let start = 0; start < n; start += batch) {
    const idx = Array.from({ length: Math.min(batch, n - start) }, (_, k) => start + k);
    const inp = await batchInputs(text, set, idx);
    const l = noGrad(() => gpt.loss(inp.embs, inp.tokens, { embMask: inp.mask }));
    inp.dispose();
    total += (await l.item()) * idx.length;
    l.dispose();
  }
  return total / n;
}

export async function trainLaytonGen(o: StageOptions, tune: Partial<LaytonGenTuning> = {}): Promise<StageSummary> {
  const t = { ...TUNING, ...tune };
  const steps = o.steps ?? LAYTONGEN_DEFAULTS.steps;
  const batch = o.batch ?? LAYTONGEN_DEFAULTS.batch;
  const seed = o.seed ?? DEFAULT_SEED;
  if (!Number.isInteger(batch) || batch < 1) throw new Error(`laytongen: batch must be a positive integer, got ${batch}`);
  const log = o.log ?? ((line: string) => process.stderr.write(line + '\n'));
  const data = await laytonGenTokens(o.root, t.trainImages, t.heldoutImages, (line) => log(line, true));
  const text = worldTextEncoder(seed, t.t5);
  let gpt: Transformer | undefined;
  let opt: ReturnType<typeof stageAdamW> | undefined;
  let table: CaptionTable | undefined;
  try {
    const config = laytonGenGptConfig(text.model.config.dModel, t.gpt);
    const vq = parseVQConfig(await readConfig(await openPart(o.root, 'vq')), join(o.root, 'vq', 'config.json'));
    if (config.blockSize !== data.train.perImage || config.vocabSize !== vq.codebookSize)
      throw new Error(`laytongen: the GPT's block_size ${config.blockSize} and vocab_size ${config.vocabSize} must equal the tokenizer's ` +
        `${data.train.perImage} tokens per image and codebook_size ${vq.codebookSize} (${join(o.root, 'vq')})`);
    gpt = withBuild({ dtype: 'f32', generator: new Generator(seed + 1) }, () => new Transformer(config));
    opt = stageAdamW(gpt, { lr: t.lr, steps, warmup: t.warmup, weightDecay: t.weightDecay, betas: BETAS });
    const [model, optimizer] = [gpt, opt];
    const n = t.trainImages;
    return await runStage({
      name: 'laytongen',
      dir: stageDir(o.root, 'laytongen'),
      steps,
      seed,
      checkpointEvery: t.checkpointEvery,
      modules: { gpt: model },
      optimizer,
      resume: o.resume,
      log: o.log,
      async step(i, gen) {
        if (!table) { // at the first step run, so a finished stage resumes without encoding
          const t0 = performance.now();
          table = await captionTable(text, data.train, batch);
          log(`laytongen: encoded the ${n} training captions (${((performance.now() - t0) / 1000).toFixed(0)} s)`, true);
        }
        const inp = tableInputs(table, data.train, batchIndices(seed, i, batch).map((k) => k % n));
        try {
          return await optimStep(optimizer, () => ({ loss: model.loss(inp.embs, inp.tokens, { embMask: inp.mask, train: true, generator: gen }) }), GRAD_CLIP);
        } finally {
          inp.dispose();
        }
      },
      async evaluate() {
        await savePart(o.root, 'gpt', gptConfigJson(config), model, 'model.safetensors');
        await saveTextEncoder(join(o.root, 'text_encoder'), text);
        const heldout = t.heldoutImages ? await setLoss(model, text, data.heldout, batch) : NaN;
        return { heldout_loss: heldout, uniform_loss: Math.log(config.vocabSize) };
      },
    });
  } finally {
    gpt?.dispose();
    opt?.dispose();
    table?.embs.dispose();
    text.model.dispose();
  }
}
