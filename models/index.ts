// The model graphs: every kind the loaders and the CLI know is registered here.
import { registerKind } from './registry.ts';
import { t5Kind } from './t5.ts';
import { vqKind } from './vq.ts';
import { vaeKind } from './vae.ts';

export { getKind, kindNames, kindOfConfig, registerKind, type ModelKind } from './registry.ts';
export * from './layers.ts';
export * from './checkpoint.ts';
export { ConfigReader } from './config.ts';
export * from './schedulers.ts';
export * from './blocks.ts';
export { AutoencoderKL, loadVae, parseVaeConfig, vaeDType } from './vae.ts';
export { T5EncoderModel, encodeCaptions } from './t5.ts';
export { Tokenizer } from './tokenizer.ts';
export { VQModel, parseVQConfig, vqConfigJson, loadVQModel, CodebookUsage, VQ_MODELS } from './vq.ts';

for (const k of [vaeKind, t5Kind, vqKind]) registerKind(k);
