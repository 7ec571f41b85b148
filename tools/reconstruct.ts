// What `layton-run reconstruct | encode | decode | eval reconstruction` do, as functions:
// images are brought to the model's sizes as in training (LlamaGen's centre crop to
// image_size for the target; the tokenizer's copy is that crop resized to tokenizer_size,
// tools/train/data.ts), tokenized, decoded by Layton (1 or 2 consistency steps) and by the
// plain VQ decoder of the same tokens, and scored with PSNR / SSIM.
//
// Metrics are taken on 8-bit images, i.e. on exactly what the PNG files hold, so a number
// printed by the CLI equals tools/metrics.ts run on the written files. The VQ decoder's
// output (tokenizer_size) is resized to image_size (Pillow-style bicubic) to be compared.
import { readFile, stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { readConfig } from '../models/checkpoint.ts';
import { type Layton, type LaytonConfig, loadLayton, parseLaytonConfig, tokenGridSide } from '../models/layton.ts';
import { parseVQConfig } from '../models/vq.ts';
import { Generator, getDevice, noGrad, tensor, tidy } from '../runtime/index.ts';
import { openSafetensors, saveSafetensors, writeFileAtomic } from '../runtime/platform/node-fs.ts';
import { type RgbImage, imagesToTensor, loadImage, tensorToImages, toImage, toRgb8 } from './image.ts';
import { psnr, ssim } from './metrics.ts';
import { laytonDir, modelDir } from './modeldir.ts';
import { tokenizerCopy } from './train/data.ts';
import { World } from './world.ts';

/** The shipped model: `models/default/` in the package (written by `layton-run train layton`). */
export const DEFAULT_MODEL = fileURLToPath(new URL('../models/default', import.meta.url));

/** A Layton folder's geometry, read from its JSON files alone (no GPU). */
export interface LaytonInfo {
  dir: string;
  config: LaytonConfig;
  /** token grid [h, w] */
  grid: [number, number];
  codebookSize: number;
}

export async function laytonInfo(dir = DEFAULT_MODEL): Promise<LaytonInfo> {
  const exists = await stat(dir).then((s) => s.isDirectory(), () => false);
  if (!exists && dir === DEFAULT_MODEL)
    throw new Error(`${dir}: the default model has not been trained yet; make it with \`layton-run train layton\` (or pass --model DIR)`);
  const root = await modelDir(dir);
  if (!(await root.list()).includes('layton.json'))
    throw new Error(`${dir}: not a Layton model folder (no layton.json beside vq/, unet/, controlnet/, vae/, scheduler/; \`layton-run train layton --out DIR\` makes one)`);
  const config = parseLaytonConfig(await readConfig(root, 'layton.json'), join(dir, 'layton.json'));
  const vq = parseVQConfig(await readConfig(await modelDir(join(dir, 'vq'))), join(dir, 'vq', 'config.json'));
  const side = tokenGridSide(config, vq);
  return { dir, config, grid: [side, side], codebookSize: vq.codebookSize };
}

/** Loads the model's weights onto the GPU (a trained root's decoder UNet is its unet-consistency/). */
export async function openLayton(info: LaytonInfo): Promise<Layton> {
  await getDevice();
  return loadLayton(laytonDir(info.dir));
}

/** The image as a PNG holds it: rounded to 8 bits. */
export const as8bit = (img: RgbImage): RgbImage => toImage(toRgb8(img));

export interface Prepared {
  /** the reconstruction target, image_size square */
  target: RgbImage;
  /** the tokenizer's copy, tokenizer_size square */
  small: RgbImage;
}

export const prepare = (target: RgbImage, c: LaytonConfig): Prepared => ({ target, small: tokenizerCopy(target, c.tokenizerSize) });

/** Reads a PNG / JPEG of any size (errors name the path). */
export const prepareFile = async (path: string, c: LaytonConfig): Promise<Prepared> => prepare(await loadImage(path, c.imageSize), c);

/** Token ids (row-major h x w each) of the tokenizer copies. */
export async function encode(m: Layton, smalls: RgbImage[]): Promise<Int32Array[]> {
  const ids = tidy(() => noGrad(() => m.tokenize(imagesToTensor(smalls))));
  const all = (await ids.data()) as Int32Array;
  ids.dispose();
  const per = all.length / smalls.length;
  return smalls.map((_, i) => all.slice(i * per, (i + 1) * per));
}

const idsTensor = (tokens: Int32Array[], grid: [number, number]) => tensor(Int32Array.from(tokens.flatMap((t) => Array.from(t))), [tokens.length, ...grid], 'i32');

/** Layton's decode of a batch of token grids (one noise stream for the batch), as 8-bit images. */
export async function decode(m: Layton, tokens: Int32Array[], grid: [number, number], steps: number, generator: Generator): Promise<RgbImage[]> {
  const out = tidy(() => noGrad(() => m.decode(idsTensor(tokens, grid), { steps, generator })));
  const imgs = await tensorToImages(out);
  out.dispose();
  return imgs.map(as8bit);
}

/** The plain VQ decoder of the same tokens, resized to image_size, as 8-bit images. */
export async function decodeVq(m: Layton, tokens: Int32Array[], grid: [number, number]): Promise<RgbImage[]> {
  const out = tidy(() => noGrad(() => m.vq.decodeCode(idsTensor(tokens, grid))));
  const imgs = await tensorToImages(out, m.config.imageSize);
  out.dispose();
  return imgs.map(as8bit);
}

// ---- token files -----------------------------------------------------------------------------

export interface TokenFile {
  grid: [number, number];
  tokens: Int32Array;
  /** the model folder that wrote them, when recorded */
  model?: string;
}

const isSafetensors = (path: string) => /\.safetensors$/i.test(path);

/** Writes tokens as JSON {"model", "grid", "tokens"} or safetensors (i32 "tokens" [1, h, w] + metadata), by extension. */
export async function writeTokens(path: string, t: TokenFile): Promise<void> {
  const meta = { model: t.model ?? '', grid: JSON.stringify(t.grid) };
  if (isSafetensors(path)) await saveSafetensors(path, { tokens: { dtype: 'I32', shape: [1, ...t.grid], data: t.tokens } }, meta);
  else if (/\.json$/i.test(path)) await writeFileAtomic(path, [new TextEncoder().encode(JSON.stringify({ model: t.model, grid: t.grid, tokens: Array.from(t.tokens) }) + '\n')]);
  else throw new Error(`${path}: token files end in .json or .safetensors`);
}

/** Reads a token file and checks it against the model: the grid and the codebook range. */
export async function readTokens(path: string, info: LaytonInfo): Promise<TokenFile> {
  const exists = await stat(path).then((s) => s.isFile(), () => false);
  if (!exists) throw new Error(`${path}: no such token file`);
  let t: TokenFile;
  if (isSafetensors(path)) {
    const f = await openSafetensors(path);
    try {
      const shape = f.info('tokens').shape;
      if (shape.length === 3 && shape[0] !== 1) throw new Error(`${path}: tensor "tokens" [${shape.join(', ')}] holds ${shape[0]} images; decode takes one [1, h, w]`);
      if (shape.length !== 3 && shape.length !== 2) throw new Error(`${path}: tensor "tokens" must be [1, h, w], got [${shape.join(', ')}]`);
      t = { grid: [shape.at(-2)!, shape.at(-1)!], tokens: await f.readI32('tokens'), model: f.metadata.model || undefined };
    } finally {
      await f.source.close?.();
    }
  } else {
    let j: { model?: unknown; grid?: unknown; tokens?: unknown };
    try {
      j = JSON.parse(await readFile(path, 'utf8'));
    } catch (e) {
      throw new Error(`${path}: not a token file (${(e as Error).message})`);
    }
    const { grid, tokens } = j ?? {};
    if (!Array.isArray(grid) || grid.length !== 2 || !grid.every((v) => Number.isInteger(v) && v > 0))
      throw new Error(`${path}: "grid" must be [h, w], got ${JSON.stringify(grid)}`);
    if (!Array.isArray(tokens) || !tokens.every(Number.isInteger)) throw new Error(`${path}: "tokens" must be a list of integer token ids`);
    if (tokens.length !== grid[0] * grid[1]) throw new Error(`${path}: ${tokens.length} tokens do not fill the ${grid[0]}x${grid[1]} grid`);
    t = { grid: grid as [number, number], tokens: Int32Array.from(tokens), model: typeof j.model === 'string' ? j.model : undefined };
  }
  const [h, w] = info.grid;
  if (t.grid[0] !== h || t.grid[1] !== w) throw new Error(`${path}: a ${t.grid[0]}x${t.grid[1]} token grid, but the model in ${info.dir} decodes ${h}x${w}`);
  const bad = t.tokens.findIndex((v) => v < 0 || v >= info.codebookSize);
  if (bad >= 0) throw new Error(`${path}: token ${bad} is ${t.tokens[bad]}, outside the codebook [0, ${info.codebookSize}) of ${info.dir}`);
  return t;
}

// ---- scores ----------------------------------------------------------------------------------

export interface Scores {
  psnr: number;
  ssim: number;
}

export const score = (out: RgbImage, target: RgbImage): Scores => ({ psnr: psnr(out, target), ssim: ssim(out, target) });

export interface EvalResult {
  psnr: number;
  ssim: number;
  psnr_2step: number;
  ssim_2step: number;
  vq_psnr: number;
  vq_ssim: number;
  n: number;
  seconds: number;
  image_size: number;
  tokens: number;
  seed: number;
  model: string;
}

export interface EvalOptions {
  n?: number;
  /** noise seed of the decodes */
  seed?: number;
  batch?: number;
  log?: (line: string) => void;
}

/**
 * Mean PSNR / SSIM over the first n held-out images of the world (seed 0) at the model's
 * image_size: Layton 1-step, 2-step, and the plain VQ decoder of the same tokens. Targets
 * are the world images rounded to 8 bits (as they would be read from PNGs).
 */
export async function evalReconstruction(info: LaytonInfo, m: Layton, o: EvalOptions = {}): Promise<EvalResult> {
  const n = o.n ?? 256;
  const seed = o.seed ?? 0;
  const batch = o.batch ?? 8;
  const world = new World();
  const t0 = performance.now();
  const sums = { one: [0, 0], two: [0, 0], vq: [0, 0] };
  const add = (k: keyof typeof sums, outs: RgbImage[], targets: RgbImage[]) =>
    outs.forEach((img, i) => {
      const s = score(img, targets[i]);
      sums[k][0] += s.psnr;
      sums[k][1] += s.ssim;
    });
  for (let a = 0; a < n; a += batch) {
    const items = Array.from({ length: Math.min(batch, n - a) }, (_, i) => prepare(as8bit(world.sample('heldout', a + i, info.config.imageSize).image), info.config));
    const targets = items.map((p) => p.target);
    const tokens = await encode(m, items.map((p) => p.small));
    const gen = new Generator(seed * 1_000_003 + a);
    add('one', await decode(m, tokens, info.grid, 1, gen), targets);
    add('two', await decode(m, tokens, info.grid, 2, gen), targets);
    add('vq', await decodeVq(m, tokens, info.grid), targets);
    o.log?.(`eval reconstruction: ${a + items.length}/${n} images, ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  return {
    psnr: sums.one[0] / n, ssim: sums.one[1] / n, psnr_2step: sums.two[0] / n, ssim_2step: sums.two[1] / n, vq_psnr: sums.vq[0] / n, vq_ssim: sums.vq[1] / n,
    n, seconds: (performance.now() - t0) / 1000, image_size: info.config.imageSize, tokens: info.grid[0] * info.grid[1], seed, model: info.dir,
  };
}
