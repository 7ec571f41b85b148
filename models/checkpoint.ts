// Model folders in diffusers' layout: `config.json` beside the weights, which are one
// `*.safetensors` file (diffusion_pytorch_model[.fp16].safetensors, model.safetensors, …),
// a sharded set named by `*.safetensors.index.json`, or a torch.save `.pt`/`.bin` checkpoint
// (LlamaGen / LaCTok releases). File access goes through ModelFiles, so the same code reads
// a folder on disk (tools/modeldir.ts) or URLs / user-picked files in a browser.
import {
  type ByteSource, SafetensorsFile, type WeightSource, loadTorchCheckpoint, safetensorsWeights, torchWeights,
} from '../runtime/index.ts';

export interface ModelFiles {
  /** the folder, for messages */
  readonly name: string;
  /** file names in the folder (flat) */
  list(): Promise<string[]>;
  /** a file's bytes as a random-access source, or null when it does not exist */
  open(file: string): Promise<ByteSource | null>;
}

async function readText(files: ModelFiles, file: string): Promise<string | null> {
  const src = await files.open(file);
  if (!src) return null;
  try {
    return new TextDecoder().decode(await src.read(0, src.size));
  } finally {
    await src.close?.();
  }
}

/** The parsed config.json (an error names the folder when it is missing or not JSON). */
export async function readConfig(files: ModelFiles, file = 'config.json'): Promise<Record<string, unknown>> {
  const text = await readText(files, file);
  if (text === null) throw new Error(`${files.name}: no ${file}`);
  try {
    const v = JSON.parse(text);
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v;
  } catch (e) {
    throw new Error(`${files.name}/${file}: ${(e as Error).message}`);
  }
}

export interface OpenedWeights {
  weights: WeightSource;
  /** closes the files */
  close(): Promise<void>;
}

/**
 * Opens the weights of a model folder. Preference: a sharded index, then
 * `<stem>.safetensors` for the preferred stems (diffusers' diffusion_pytorch_model, then
 * model), then (with `variant`, e.g. "fp16") `<stem>.<variant>.safetensors`, then the
 * only *.safetensors, then the only .pt/.bin/.pth checkpoint (`ptPrefix`: the dict key
 * holding the state dict, e.g. "model." in LlamaGen's files; a list is tried in order, so
 * ["ema.", "model."] prefers EMA weights where a checkpoint has them).
 */
export async function openWeights(files: ModelFiles, o: { variant?: string; ptPrefix?: string | string[] } = {}): Promise<OpenedWeights> {
  const names = await files.list();
  const opened: ByteSource[] = [];
  const close = async () => {
    for (const s of opened) await s.close?.();
  };
  const openFile = async (n: string): Promise<ByteSource> => {
    const s = await files.open(n);
    if (!s) throw new Error(`${files.name}: ${n} is missing`);
    opened.push(s);
    return s;
  };
  try {
    const st = async (list: string[]): Promise<OpenedWeights> => {
      const parsed: SafetensorsFile[] = [];
      for (const n of list) parsed.push(await SafetensorsFile.open(await openFile(n)));
      return { weights: safetensorsWeights(parsed), close };
    };
    const variant = o.variant ? `.${o.variant}` : '';
    const index = names.find((n) => n.endsWith(`${variant}.safetensors.index.json`));
    if (index) {
      const text = (await readText(files, index))!;
      let shards: string[];
      try {
        shards = [...new Set(Object.values((JSON.parse(text) as { weight_map: Record<string, string> }).weight_map))];
      } catch (e) {
        throw new Error(`${files.name}/${index}: not a safetensors index (${(e as Error).message})`);
      }
      return await st(shards);
    }
    for (const stem of ['diffusion_pytorch_model', 'model'])
      for (const v of variant ? [variant, ''] : ['', '.fp16'])
        if (names.includes(`${stem}${v}.safetensors`)) return await st([`${stem}${v}.safetensors`]);
    const single = names.filter((n) => n.endsWith('.safetensors'));
    if (single.length === 1) return await st(single);
    const pt = names.filter((n) => /\.(pt|pth|bin)$/.test(n));
    if (single.length === 0 && pt.length === 1) {
      const ckpt = await loadTorchCheckpoint(await openFile(pt[0]));
      const prefixes = typeof o.ptPrefix === 'string' ? [o.ptPrefix] : (o.ptPrefix ?? ['']);
      const prefix = prefixes.find((p) => [...ckpt.tensors.keys()].some((k) => k.startsWith(p))) ?? prefixes[0];
      return { weights: torchWeights(ckpt, prefix), close };
    }
    throw new Error(
      single.length > 1 || pt.length > 1
        ? `${files.name}: several weight files (${[...single, ...pt].join(', ')}) and no index naming the right one`
        : `${files.name}: no weights (*.safetensors, *.safetensors.index.json or a .pt/.bin checkpoint)`,
    );
  } catch (e) {
    await close();
    throw e;
  }
}
