// The demo's model side, the same steps as in Node: a LaytonGen root loaded from URLs or picked
// files (models/webfiles.ts), an image's reconstruction as tools/reconstruct.ts does it
// (LlamaGen's centre crop to image_size, the tokenizer's bicubic copy at tokenizer_size as
// tools/train/data.ts tokenizerCopy, tokens, a seeded consistency decode, PSNR / SSIM on 8-bit
// images), and seeded generation (tools/laytongen/model.ts). The browser test checks the
// tokens and pixels against the Node functions.
import { Generator, noGrad, tensor, tidy } from '../../runtime/index.ts';
import { type LoadProgress, type ModelRoot, blobRoot, urlRoot } from '../../models/webfiles.ts';
import { type GenerateOptions, type LaytonGen, generateWith, loadLaytonGen, modelRootFiles } from '../laytongen/model.ts';
import { psnr, ssim } from '../metrics.ts';
import { type Rgb8, type RgbImage, centerCrop, imagesToTensor, resizeImage, tensorToImages, toImage, toRgb8 } from '../pixels.ts';

export const openRoot = (source: string | FileList, onProgress?: LoadProgress): Promise<ModelRoot> =>
  typeof source === 'string' ? urlRoot(source, { onProgress }) : Promise.resolve(blobRoot(Array.from(source), { onProgress }));

export const loadRoot = (root: ModelRoot): Promise<LaytonGen> => loadLaytonGen(modelRootFiles(root), root.name);

const as8bit = (img: RgbImage): RgbImage => toImage(toRgb8(img));

export interface Reconstruction {
  /** the image at image_size (centre crop), the model's input */
  target: RgbImage;
  tokens: Int32Array;
  /** the decode, rounded to 8 bits as a PNG holds it */
  image: RgbImage;
  psnr: number;
  ssim: number;
}

/** Tokens and a `steps`-step decode (noise from `seed`) of an 8-bit image of any size. */
export async function reconstruct(m: LaytonGen, px: Rgb8, seed: number, steps = 1): Promise<Reconstruction> {
  const { imageSize, tokenizerSize } = m.layton.config;
  const target = toImage(centerCrop(px, imageSize));
  const small = target.width === tokenizerSize ? target : resizeImage(target, tokenizerSize, tokenizerSize, 'bicubic');
  const ids = tidy(() => noGrad(() => m.layton.tokenize(imagesToTensor([small]))));
  const tokens = (await ids.data()) as Int32Array;
  ids.dispose();
  const side = m.layton.gridSide;
  const out = tidy(() => noGrad(() => m.layton.decode(tensor(tokens, [1, side, side], 'i32'), { steps, generator: new Generator(seed) })));
  const [decoded] = await tensorToImages(out);
  out.dispose();
  const image = as8bit(decoded);
  return { target, tokens, image, psnr: psnr(image, target), ssim: ssim(image, target) };
}

/** One caption's image and tokens. */
export async function generateOne(m: LaytonGen, caption: string, o: Omit<GenerateOptions, 'captions' | 'n'>): Promise<{ image: RgbImage; tokens: Int32Array }> {
  const r = await generateWith(m, { ...o, captions: [caption] });
  return { image: r.images[0], tokens: r.tokens[0] };
}
