// LaytonGen's text side (tools/laytongen/captions.ts, re-exported here) and its text_encoder/
// folder on disk: Node only, as captions.ts stays importable in a browser.
import { join } from 'node:path';
import { writeFileAtomic } from '../../runtime/platform/node-fs.ts';
import { t5ConfigJson } from '../../models/t5.ts';
import { modelDir, saveModelDir } from '../modeldir.ts';
import { type CaptionEncoder, loadTextEncoder } from './captions.ts';

export * from './captions.ts';

export const loadTextEncoderDir = async (dir: string): Promise<CaptionEncoder> => loadTextEncoder(await modelDir(dir));

/** Writes a text_encoder/ folder (config.json, model.safetensors, tokenizer.json; each atomically). */
export async function saveTextEncoder(dir: string, enc: CaptionEncoder): Promise<void> {
  await saveModelDir(dir, t5ConfigJson(enc.model.config), enc.model, 'model.safetensors');
  await writeFileAtomic(join(dir, 'tokenizer.json'), [new TextEncoder().encode(enc.tokenizerJson)]);
}
