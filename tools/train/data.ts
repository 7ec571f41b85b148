// Training batches from the procedural world: step i of a run draws its samples from the
// step's own stream (generatorFor), so a resumed run sees exactly the same data.
import { type Tensor } from '../../runtime/index.ts';
import { type RgbImage, imagesToTensor, resizeImage } from '../image.ts';
import { type Sample, type Split, World } from '../world.ts';

export interface WorldBatch {
  /** [B, 3, size, size] in [-1, 1] */
  images: Tensor;
  /** [B, 3, tokenizerSize, tokenizerSize] in [-1, 1] (the tokenizer's downsampled copy), when asked */
  small?: Tensor;
  captions: string[];
  samples: Sample[];
}

/** The sample indices of step `step` (uniform over a large index space, fixed by seed and step). */
export function batchIndices(seed: number, step: number, batch: number): number[] {
  // splitmix-style hash of (seed, step, k): independent of every other step
  const h = (k: number) => {
    let x = (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(step + 1, 0xc2b2ae35) ^ Math.imul(k + 1, 0x27d4eb2f)) >>> 0;
    x = Math.imul(x ^ (x >>> 16), 0x7feb352d) >>> 0;
    x = Math.imul(x ^ (x >>> 15), 0x846ca68b) >>> 0;
    return (x ^ (x >>> 16)) >>> 0;
  };
  return Array.from({ length: batch }, (_, k) => h(k) % 1_000_000_000);
}

/** Downsamples as the tokenizer's input is made (PIL-style antialiased bicubic). */
export const tokenizerCopy = (img: RgbImage, size: number): RgbImage => (img.width === size ? img : resizeImage(img, size, size, 'bicubic'));

/** Batch `step` of a run: images rendered at `size` (and their tokenizer copies at `tokenizerSize`). */
export function worldBatch(world: World, split: Split, seed: number, step: number, batch: number, size: number, tokenizerSize?: number): WorldBatch {
  const samples = batchIndices(seed, step, batch).map((i) => world.sample(split, i, size));
  const images = imagesToTensor(samples.map((s) => s.image));
  const small = tokenizerSize ? imagesToTensor(samples.map((s) => tokenizerCopy(s.image, tokenizerSize))) : undefined;
  return { images, small, captions: samples.map((s) => s.caption), samples };
}
