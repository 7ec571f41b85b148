// Where a module's weights come from: one or more safetensors files (a diffusers folder may be
// sharded), a torch.save checkpoint (LlamaGen / LaCTok releases), optionally with keys renamed
// (old diffusers names, a checkpoint's "model." prefix). A WeightSource lists keys and shapes
// without reading data, so a module can check everything before uploading anything, then
// pull one tensor at a time (never more than one weight in host memory).
import type { DType } from './dtype.ts';
import { device } from './device.ts';
import { loadTensor } from './load.ts';
import { tensor } from './ops/create.ts';
import { bf16ToF32, f16ToF32, type SafetensorsFile } from './safetensors.ts';
import { Tensor } from './tensor.ts';
import { readPtTensor, type PtLoadResult } from './torch-pt.ts';

export interface WeightSource {
  /** names the files, for error messages */
  readonly name: string;
  keys(): string[];
  shape(key: string): number[];
  /** the tensor on the GPU as `dtype` (default: f16 for half-precision data, else f32) */
  load(key: string, dtype?: DType): Promise<Tensor>;
}

/** The tensors of several safetensors files as one source; a key in two files is an error. */
export function safetensorsWeights(files: SafetensorsFile[]): WeightSource {
  const owner = new Map<string, SafetensorsFile>();
  for (const f of files)
    for (const k of f.keys()) {
      const prev = owner.get(k);
      if (prev) throw new Error(`tensor '${k}' is in both ${prev.source.name} and ${f.source.name}`);
      owner.set(k, f);
    }
  const fileOf = (k: string): SafetensorsFile => {
    const f = owner.get(k);
    if (!f) throw new Error(`${files.map((x) => x.source.name).join(', ')}: no tensor '${k}'`);
    return f;
  };
  return {
    name: files.map((f) => f.source.name).join(', '),
    keys: () => [...owner.keys()],
    shape: (k) => fileOf(k).info(k).shape,
    load: (k, dtype) => loadTensor(fileOf(k), k, dtype),
  };
}

/** The float tensors of a torch.save checkpoint under `prefix` (e.g. "model." for LlamaGen's {"model": state_dict}). */
export function torchWeights(ckpt: PtLoadResult, prefix = ''): WeightSource {
  const name = ckpt.source.name;
  const tensors = new Map([...ckpt.tensors].filter(([k]) => k.startsWith(prefix)).map(([k, t]) => [k.slice(prefix.length), t]));
  if (prefix && tensors.size === 0) throw new Error(`${name}: no tensors under '${prefix}' (found: ${[...ckpt.tensors.keys()].slice(0, 5).join(', ')}…)`);
  const get = (k: string) => {
    const t = tensors.get(k);
    if (!t) throw new Error(`${name}: no tensor '${prefix}${k}'`);
    return t;
  };
  return {
    name,
    keys: () => [...tensors.keys()],
    shape: (k) => [...get(k).shape],
    async load(k, dtype) {
      const t = get(k);
      const raw = await readPtTensor(ckpt.source, t);
      const want = dtype ?? (t.dtype === 'F16' && device().hasF16 ? 'f16' : 'f32');
      if (want === 'f16' && !device().hasF16) throw new Error(`${name}: tensor '${prefix}${k}' wanted as f16, but this adapter lacks shader-f16`);
      const bits = () => new Uint16Array(raw.slice().buffer);
      let f32: Float32Array;
      if (t.dtype === 'F32') f32 = new Float32Array(raw.slice().buffer);
      else if (t.dtype === 'F16') f32 = f16ToF32(bits());
      else if (t.dtype === 'BF16') f32 = bf16ToF32(bits());
      else throw new Error(`${name}: tensor '${prefix}${k}' is ${t.dtype}; only float weights can be loaded`);
      return tensor(f32, t.shape, want);
    },
  };
}

/** The same tensors under other names: `rename(k)` gives the new name of file key k, or null to drop it. */
export function renameWeights(src: WeightSource, rename: (key: string) => string | null): WeightSource {
  const back = new Map<string, string>();
  for (const k of src.keys()) {
    const n = rename(k);
    if (n === null) continue;
    if (back.has(n)) throw new Error(`${src.name}: '${back.get(n)}' and '${k}' both map to '${n}'`);
    back.set(n, k);
  }
  const orig = (k: string) => {
    const o = back.get(k);
    if (o === undefined) throw new Error(`${src.name}: no tensor '${k}'`);
    return o;
  };
  return { name: src.name, keys: () => [...back.keys()], shape: (k) => src.shape(orig(k)), load: (k, d) => src.load(orig(k), d) };
}
