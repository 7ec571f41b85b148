// mini-GenEval: a LaytonGen model generates images for held-out captions of the world's
// grammar, and the analytic checker (tools/geneval.ts scoreImage) scores each at the model's
// image_size; the result is GenEval's table: per-category accuracy and their mean.
//
// Captions: the held-out captions of GenEval's six categories (the checker ignores a
// background phrase), each category's list ranked by a hash of the caption, taken
// round-robin (one per category per round, skipping exhausted ones) until nCaptions: with the
// default 200 that is every single_object (2), two_object (6), colors (12) and counting (42)
// caption and 69 each of position and color_attr. A category with few captions gets several
// images per caption, so that each category holds at least minPerCategory images.
import { Generator } from '../../runtime/index.ts';
import type { Layton } from '../../models/layton.ts';
import { type RgbImage } from '../image.ts';
import { type ScoreResult, type Summary, scoreImage, summarise } from '../geneval.ts';
import { as8bit, decode, decodeVq, encode, laytonInfo, openLayton, prepare } from '../reconstruct.ts';
import { type CaptionSpec, GENEVAL_CATEGORIES, hash32 } from '../world.ts';
import { trainWorld } from '../train/stage.ts';
import { type LaytonGen, generateWith, openLaytonGen } from './generate.ts';

export interface GenevalCaption {
  spec: CaptionSpec;
  /** images generated for it */
  images: number;
}

/** The evaluated captions (see the header): nCaptions distinct held-out captions and their image counts. */
export function genevalCaptions(nCaptions = 200, perCaption = 1, minPerCategory = 24): GenevalCaption[] {
  if (!Number.isInteger(nCaptions) || nCaptions < 1) throw new Error(`geneval: nCaptions must be a positive integer, got ${nCaptions}`);
  if (!Number.isInteger(perCaption) || perCaption < 1) throw new Error(`geneval: perCaption must be a positive integer, got ${perCaption}`);
  const world = trainWorld();
  const lists = GENEVAL_CATEGORIES.map((c) =>
    world.captions('heldout', c).map((s) => [hash32(s.caption), s] as const).sort((a, b) => a[0] - b[0] || (a[1].caption < b[1].caption ? -1 : 1)).map(([, s]) => s),
  );
  const total = lists.reduce((s, l) => s + l.length, 0);
  if (nCaptions > total) throw new Error(`geneval: nCaptions ${nCaptions} exceeds the ${total} held-out captions of GenEval's categories`);
  const picked: CaptionSpec[][] = lists.map(() => []);
  for (let round = 0, n = 0; n < nCaptions; round++)
    lists.forEach((l, c) => {
      if (n < nCaptions && round < l.length) (picked[c].push(l[round]), n++);
    });
  return picked.flatMap((specs) => specs.map((spec) => ({ spec, images: Math.max(perCaption, Math.ceil(minPerCategory / specs.length)) })));
}

export interface GenevalOptions {
  root: string;
  /** classifier-free guidance scale (default 2) */
  cfg?: number;
  /** default 0 */
  seed?: number;
  /** distinct held-out captions (default 200) */
  nCaptions?: number;
  /** images per caption, at least (default 1) */
  perCaption?: number;
  /** images per category, at least (default 24; more images per caption for the small categories) */
  minPerCategory?: number;
  topK?: number;
  topP?: number;
  temperature?: number;
  /** Layton decode steps (default 1) */
  steps?: number;
  /** GenerateOptions.decoder: 'vq' scores the same tokens through the plain VQ decoder */
  decoder?: 'layton' | 'vq';
  /** images generated together (default 32) */
  batch?: number;
  /** progress lines */
  log?: (line: string) => void;
  /** each scored image (at the model's image_size) */
  onScore?: (r: ScoreResult, image: RgbImage) => void;
}

export interface GenevalResult extends Summary {
  /** generated: the GPT's images; reconstructed: the tokenizer's ceiling (evalGenevalReconstructed) */
  source: 'generated' | 'reconstructed';
  decoder: 'layton' | 'vq';
  captions: number;
  images: number;
  cfg: number;
  seed: number;
  seconds: number;
}

/** An image to score: its caption and its index among that caption's images. */
type Row = readonly [spec: CaptionSpec, index: number];

/**
 * The table's loop, whatever makes the images: the captions' rows in batches (one `images` call
 * each, given the batch's seed, so progress is logged and memory stays at one batch), each image
 * scored against its caption.
 */
async function scoreRows(
  source: GenevalResult['source'], cfg: number, o: Omit<GenevalOptions, 'root'>,
  images: (part: readonly Row[], seed: number) => Promise<RgbImage[]>,
): Promise<GenevalResult> {
  const t0 = performance.now();
  const seed = o.seed ?? 0;
  const list = genevalCaptions(o.nCaptions, o.perCaption, o.minPerCategory);
  const rows = list.flatMap((c) => Array.from({ length: c.images }, (_, k): Row => [c.spec, k]));
  const batch = o.batch ?? 32;
  if (!Number.isInteger(batch) || batch < 1) throw new Error(`geneval: batch must be a positive integer, got ${o.batch}`);
  const results: ScoreResult[] = [];
  for (let start = 0, b = 0; start < rows.length; start += batch, b++) {
    const part = rows.slice(start, start + batch);
    (await images(part, seed * 1_000_003 + b)).forEach((img, k) => {
      const r = scoreImage(img, part[k][0]);
      results.push(r);
      o.onScore?.(r, img);
    });
    const right = results.filter((r) => r.correct).length;
    o.log?.(`geneval${source === 'reconstructed' ? ' (reconstructed)' : ''}: ${results.length}/${rows.length} images, ${right} correct (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  }
  return { ...summarise(results), source, decoder: o.decoder ?? 'layton', captions: list.length, images: rows.length, cfg, seed, seconds: (performance.now() - t0) / 1000 };
}

/** mini-GenEval of a loaded model (see the header). */
export function evalGenevalWith(m: LaytonGen, o: Omit<GenevalOptions, 'root'>): Promise<GenevalResult> {
  const cfg = o.cfg ?? 2;
  // one generateWith batch per part (scoreRows's batch)
  return scoreRows('generated', cfg, o, async (part, seed) =>
    (await generateWith(m, {
      captions: part.map(([s]) => s.caption), cfg, seed, topK: o.topK, topP: o.topP, temperature: o.temperature, steps: o.steps, decoder: o.decoder, batch: part.length,
    })).images);
}

/**
 * The tokenizer's ceiling on the same table: instead of generating, each caption's images are
 * the world's own renders of it (sampleCaption index 0, 1, ...), tokenised by Layton's encoder
 * and decoded by Layton (or the plain VQ decoder): what a GPT that produced the tokens of real
 * images would score. The GPT is not read; cfg and sampling options do not apply (cfg is
 * reported as 1).
 */
export function evalGenevalReconstructedWith(m: Layton, o: Omit<GenevalOptions, 'root'>): Promise<GenevalResult> {
  const world = trainWorld();
  const size = m.config.imageSize;
  return scoreRows('reconstructed', 1, o, async (part, seed) => {
    const prepared = part.map(([spec, k]) => prepare(as8bit(world.sampleCaption(spec, k, size).image), m.config));
    const tokens = await encode(m, prepared.map((p) => p.small));
    const grid: [number, number] = [m.gridSide, m.gridSide];
    return o.decoder === 'vq' ? decodeVq(m, tokens, grid) : decode(m, tokens, grid, o.steps ?? 1, new Generator(seed));
  });
}

/** mini-GenEval of the model at `root` (loaded for the call); reconstructed: the tokenizer's ceiling (Layton only). */
export async function evalGeneval(o: GenevalOptions & { reconstructed?: boolean }): Promise<GenevalResult> {
  if (o.reconstructed) {
    const m = await openLayton(await laytonInfo(o.root));
    try {
      return await evalGenevalReconstructedWith(m, o);
    } finally {
      m.dispose();
    }
  }
  const m = await openLaytonGen(o.root);
  try {
    return await evalGenevalWith(m, o);
  } finally {
    m.dispose();
  }
}
