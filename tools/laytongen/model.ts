// LaytonGen, text to image: captions -> text encoder (<root>/text_encoder/) -> GPT image tokens by
// KV-cache sampling with classifier-free guidance (<root>/gpt/, models/generate.ts) -> Layton
// decode in 1 or 2 consistency steps (the root's Layton parts). Seeded: the token sampling and
// the decoder's noise draw from Philox streams of the seed, so the same call gives the same
// images. The files come through ModelFiles and no Node module is on this path, so a browser
// runs it as it is (tools/laytongen/generate.ts opens a root on disk).
import { Generator, type Tensor, embedding, getDevice, noGrad, reshape, tensor, tidy } from '../../runtime/index.ts';
import { type Transformer, loadGptModel } from '../../models/gpt.ts';
import { generate } from '../../models/generate.ts';
import { type Layton, type LaytonFiles, loadLayton, partFolder } from '../../models/layton.ts';
import type { ModelRoot } from '../../models/webfiles.ts';
import { type RgbImage, tensorToImages } from '../pixels.ts';
import { type CaptionEncoder, encodeWorldCaptions, loadTextEncoder } from './captions.ts';

/** A loaded LaytonGen model: the Layton decoder, the GPT and the text encoder. */
export interface LaytonGen {
  root: string;
  layton: Layton;
  gpt: Transformer;
  text: CaptionEncoder;
  dispose(): void;
}

/**
 * Loads a model root's Layton parts, gpt/ and text_encoder/ (`files(sub)`: the subfolder's
 * files; `root` names the root in messages), and checks that they fit together.
 */
export async function loadLaytonGen(files: LaytonFiles, root: string): Promise<LaytonGen> {
  await getDevice();
  const owned: { dispose(): void }[] = [];
  try {
    const layton = await loadLayton(files);
    owned.push(layton);
    const gpt = await loadGptModel(await files('gpt'));
    owned.push(gpt);
    const text = await loadTextEncoder(await files('text_encoder'));
    owned.push(text.model);
    const g = gpt.config;
    const grid = layton.gridSide;
    const problems = [
      g.captionDim !== text.model.config.dModel && `gpt caption_dim ${g.captionDim} != text_encoder d_model ${text.model.config.dModel}`,
      g.vocabSize !== layton.vq.config.codebookSize && `gpt vocab_size ${g.vocabSize} != vq codebook_size ${layton.vq.config.codebookSize}`,
      g.blockSize !== grid * grid && `gpt block_size ${g.blockSize} != the ${grid}x${grid} token grid of vq/ at tokenizer_size ${layton.config.tokenizerSize}`,
    ].filter(Boolean);
    if (problems.length) throw new Error(`${root}: the parts do not fit together: ${problems.join('; ')}`);
    return { root, layton, gpt, text, dispose: () => owned.forEach((m) => m.dispose()) };
  } catch (e) {
    owned.forEach((m) => m.dispose());
    throw e;
  }
}

/** A listed root's parts (URLs, picked files) as loadLaytonGen reads them (the decoder UNet as models/layton.ts partFolder says). */
export const modelRootFiles = (root: ModelRoot): LaytonFiles => (sub) =>
  root.folder(partFolder(sub, (f) => [...root.files.keys()].some((p) => p.startsWith(`${f}/`))));

export interface GenerateOptions {
  captions: readonly (string | Uint8Array)[];
  /** classifier-free guidance scale (default 2; 1: the conditional stream alone) */
  cfg?: number;
  /** 0 (default): no top-k filter */
  topK?: number;
  /** default 1: no nucleus filter */
  topP?: number;
  /** default 1 */
  temperature?: number;
  /** default 0 */
  seed?: number;
  /** images per caption (default 1) */
  n?: number;
  /** Layton consistency steps, 1 or 2 (default 1) */
  steps?: number;
  /** images generated together (default 32) */
  batch?: number;
  /**
   * 'layton' (default), or 'vq': the plain VQ decoder of the same tokens, resized to image_size
   * (bicubic, as eval reconstruction scores it), which tells the GPT's tokens from Layton's decoding
   */
  decoder?: 'layton' | 'vq';
  /** token progress: done of total, over the whole call */
  onToken?: (done: number, total: number) => void;
  /** aborts between tokens (the promise rejects with the signal's reason) */
  signal?: AbortSignal;
  /** warnings about the captions (default console.warn) */
  warn?: (msg: string) => void;
}

export interface Generated {
  /** caption i's image k at [i·n + k], image_size square, values in [0, 1] */
  images: RgbImage[];
  /** their image tokens (row-major grid) */
  tokens: Int32Array[];
}

function check(o: GenerateOptions): Required<Pick<GenerateOptions, 'cfg' | 'seed' | 'n' | 'steps' | 'batch'>> {
  const r = { cfg: o.cfg ?? 2, seed: o.seed ?? 0, n: o.n ?? 1, steps: o.steps ?? 1, batch: o.batch ?? 32 };
  if (!(Number.isFinite(r.cfg) && r.cfg >= 1)) throw new Error(`generate: cfg must be a number >= 1, got ${o.cfg}`);
  if (!Number.isInteger(r.seed) || r.seed < 0) throw new Error(`generate: seed must be a non-negative integer, got ${o.seed}`);
  for (const k of ['n', 'batch'] as const) if (!Number.isInteger(r[k]) || r[k] < 1) throw new Error(`generate: ${k} must be a positive integer, got ${o[k]}`);
  if (o.decoder !== undefined && o.decoder !== 'layton' && o.decoder !== 'vq') throw new Error(`generate: decoder must be 'layton' or 'vq', got ${o.decoder}`);
  return r;
}

/**
 * Images for captions with a loaded model: each batch's captions are encoded, their tokens
 * sampled (models/generate.ts, CFG above 1) and decoded by Layton. Batch b draws from the
 * Philox streams (seed, b): tokens from one, decoder noise from another.
 */
export async function generateWith(m: LaytonGen, o: GenerateOptions): Promise<Generated> {
  const { cfg, seed, n, steps, batch } = check(o);
  if (!Array.isArray(o.captions) || o.captions.length === 0) throw new Error('generate: no captions');
  if (!m.layton.config.decodeTimesteps[String(steps)])
    throw new Error(`generate: steps must be one of ${Object.keys(m.layton.config.decodeTimesteps).join(', ')} (the decoder's schedules), got ${steps}`);
  const { clsTokenNum, blockSize } = m.gpt.config;
  // every caption encoded once, before any generation (errors and warnings name the caller's
  // caption i); a batch gathers its rows' features
  const all = await encodeWorldCaptions(m.text, o.captions, { maxLength: clsTokenNum, warn: o.warn });
  const rows = o.captions.flatMap((_, i) => new Array<number>(n).fill(i));
  const side = m.layton.gridSide;
  const out: Generated = { images: [], tokens: [] };
  let table: Tensor | undefined;
  try {
    const [L, d] = all.embs.shape.slice(1);
    const masks = (await all.mask.data()) as Int32Array;
    const rowsOf = (table = reshape(all.embs, [o.captions.length, L * d]));
    for (let start = 0, b = 0; start < rows.length; start += batch, b++) {
      const part = rows.slice(start, start + batch);
      const embs = tidy(() => reshape(embedding(tensor(Int32Array.from(part), [part.length], 'i32'), rowsOf), [part.length, L, d]));
      const mask = tensor(Int32Array.from(part.flatMap((i) => Array.from(masks.subarray(i * L, (i + 1) * L)))), [part.length, L], 'i32');
      let ids: Tensor | undefined;
      try {
        ids = await generate(m.gpt, embs, mask, {
          cfgScale: cfg, topK: o.topK, topP: o.topP, temperature: o.temperature, signal: o.signal, generator: new Generator(2 * (seed * 65_537 + b)),
          onToken: o.onToken && ((done) => o.onToken!(start * blockSize + done * part.length, rows.length * blockSize)),
        });
        const grid = reshape(ids, [part.length, side, side]);
        const images = noGrad(() => tidy(() =>
          o.decoder === 'vq' ? m.layton.vq.decodeCode(grid) : m.layton.decode(grid, { steps, generator: new Generator(2 * (seed * 65_537 + b) + 1) })));
        grid.dispose();
        out.images.push(...(await tensorToImages(images, m.layton.config.imageSize)));
        images.dispose();
        const toks = (await ids.data()) as Int32Array;
        for (let k = 0; k < part.length; k++) out.tokens.push(toks.slice(k * blockSize, (k + 1) * blockSize));
      } finally {
        ids?.dispose();
        embs.dispose();
        mask.dispose();
      }
    }
  } finally {
    for (const t of [table, all.embs, all.mask]) t?.dispose();
  }
  return out;
}
