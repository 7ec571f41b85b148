// Every model kind the CLI (`layton-run inspect|forward`) and the loaders know, by name.
// Each graph file exports a ModelKind; this table is the one place that lists them.
import { type DType, type Module, type Tensor, type WeightSource, renameWeights, withBuild } from '../runtime/index.ts';
import { type ModelFiles, openWeights, readConfig } from './checkpoint.ts';

export interface ModelKind<C = any, M extends Module = Module> {
  /** the --kind name: unet, controlnet, vae, vq, gpt, t5 */
  kind: string;
  /** diffusers / transformers `_class_name` or `architectures` values that imply this kind */
  classNames: string[];
  /** validates a config.json object (unknown fields ignored; bad values are errors naming `where` and the field) */
  parseConfig(json: Record<string, unknown>, where?: string): C;
  /** the config as config.json should store it */
  toJson(config: C): Record<string, unknown>;
  /** the weights dtype when the caller names none (default f32; the SDXL VAE: f16 unless force_upcast) */
  dtype?(config: C): DType;
  /** builds the model (inside withBuild / buildMeta to pick meta, dtype and generator) */
  build(config: C): M;
  /** checkpoint names -> module names (a release's prefixes, dropped buffers); null drops a key */
  renameKey?(key: string): string | null;
  /** wraps the checkpoint's weights where renaming is not enough (old diffusers attention stored as [C, C, 1, 1] convs) */
  adaptWeights?(src: WeightSource): WeightSource;
  /** the torch.save dict key(s) holding the state dict, with a trailing dot, tried in order (LlamaGen: "ema.", "model.") */
  ptPrefix?: string | string[];
  /** forward's input names as the reference names its arguments, each with a one-line description */
  inputs: Record<string, string>;
  /** runs the forward pass; returns every output tensor by name */
  forward(model: M, inputs: Record<string, Tensor>, config: C): Promise<Record<string, Tensor>> | Record<string, Tensor>;
}

const kinds = new Map<string, ModelKind>();

export function registerKind(k: ModelKind): void {
  if (kinds.has(k.kind)) throw new Error(`model kind '${k.kind}' registered twice`);
  kinds.set(k.kind, k);
}

export function getKind(name: string): ModelKind {
  const k = kinds.get(name);
  if (!k) throw new Error(`unknown model kind '${name}' (known: ${[...kinds.keys()].join(', ')})`);
  return k;
}

export const kindNames = (): string[] => [...kinds.keys()];

/** The kind a config names through `_class_name` (diffusers) or `architectures` (transformers), if any. */
export function kindOfConfig(json: Record<string, unknown>): ModelKind | undefined {
  const names = [json._class_name, ...(Array.isArray(json.architectures) ? json.architectures : [])].filter((x) => typeof x === 'string');
  return [...kinds.values()].find((k) => names.some((n) => k.classNames.includes(n as string)));
}

export interface LoadOptions {
  dtype?: DType;
  /** diffusers weight variant, e.g. "fp16" */
  variant?: string;
}

/**
 * A model folder of this kind, loaded: config.json parsed, the model built without
 * initialising its weights, then every weight checked and streamed in (renamed / adapted
 * as the kind says); on any error nothing is left allocated.
 */
export async function loadModel<C, M extends Module>(files: ModelFiles, kind: ModelKind<C, M>, o: LoadOptions = {}): Promise<{ model: M; config: C }> {
  const config = kind.parseConfig(await readConfig(files), `${files.name}/config.json`);
  const { weights, close } = await openWeights(files, { variant: o.variant, ptPrefix: kind.ptPrefix });
  try {
    const model = withBuild({ dtype: o.dtype ?? kind.dtype?.(config) ?? 'f32', init: false }, () => kind.build(config));
    try {
      const renamed = kind.renameKey ? renameWeights(weights, kind.renameKey) : weights;
      await model.loadWeights(kind.adaptWeights ? kind.adaptWeights(renamed) : renamed);
    } catch (e) {
      model.dispose();
      throw e;
    }
    return { model, config };
  } finally {
    await close();
  }
}
