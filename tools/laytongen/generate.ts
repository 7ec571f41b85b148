// Text to image with a LaytonGen model root on disk (tools/laytongen/model.ts, re-exported here,
// does the work; this adds opening a folder on disk).
import { type RgbImage } from '../image.ts';
import { laytonDir } from '../modeldir.ts';
import { type GenerateOptions, type LaytonGen, generateWith, loadLaytonGen } from './model.ts';

export * from './model.ts';

/** Loads <root>'s Layton parts, gpt/ and text_encoder/, and checks that they fit together. */
export const openLaytonGen = (root: string): Promise<LaytonGen> => loadLaytonGen(laytonDir(root), root);

/** generateWith on the model at `root`, loaded for the call. */
export async function generateImages(o: GenerateOptions & { root: string }): Promise<RgbImage[]> {
  const m = await openLaytonGen(o.root);
  try {
    return (await generateWith(m, o)).images;
  } finally {
    m.dispose();
  }
}
