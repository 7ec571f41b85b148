// The model graphs: every kind the loaders and the CLI know is registered here.
import { registerKind } from './registry.ts';
import { t5Kind } from './t5.ts';
import { vqKind } from './vq.ts';
import { vaeKind } from './vae.ts';
import { unetKind } from './unet.ts';
import { controlnetKind } from './controlnet.ts';
import { gptKind } from './gpt.ts';

export { getKind, kindNames, kindOfConfig, loadModel, registerKind, type LoadOptions, type ModelKind } from './registry.ts';
export * from './layers.ts';
export * from './checkpoint.ts';
export * from './webfiles.ts';
export { ConfigReader } from './config.ts';
export * from './schedulers.ts';
export * from './blocks.ts';
export { AutoencoderKL, loadVae, parseVaeConfig, vaeDType } from './vae.ts';
export { UNet2DConditionModel, parseUNetConfig, unetConfigJson, loadUNet } from './unet.ts';
export { ControlNetModel, controlNetFromUnet, LaddBranch, parseControlNetConfig, controlNetConfigJson, loadControlNet } from './controlnet.ts';
export { T5EncoderModel, encodeCaptions } from './t5.ts';
export { Tokenizer } from './tokenizer.ts';
export { Transformer, parseGptConfig, gptConfigJson, GPT_MODELS, loadGptModel } from './gpt.ts';
export { generate, forcedLogits, TokenDecoder, type GenerateOptions, type SamplingOptions } from './generate.ts';
export { Layton, loadLayton, parseLaytonConfig, laytonConfigJson, type LaytonConfig, type LaytonFiles, type DecodeOptions } from './layton.ts';
export { VQModel, parseVQConfig, vqConfigJson, loadVQModel, CodebookUsage, VQ_MODELS } from './vq.ts';

for (const k of [unetKind, controlnetKind, vaeKind, vqKind, gptKind, t5Kind]) registerKind(k);
