// Uploading checkpoint tensors to the GPU one at a time, converting dtypes on the way:
// F16 stays f16 bytes for bytes (or widens to f32 on the GPU; on the host where the adapter
// has no shader-f16), BF16/F64 become f32 on the host, and integer/bool tensors become i32.
import { device } from './device.ts';
import type { DType } from './dtype.ts';
import { noGrad } from './autograd.ts';
import { cast } from './ops/shape.ts';
import { tensor } from './ops/create.ts';
import { Tensor } from './tensor.ts';
import type { SafetensorsFile } from './safetensors.ts';

/** The GPU dtype a file dtype becomes by default (F16 only where the adapter has shader-f16). */
export function defaultDType(stDtype: string): DType {
  if (stDtype === 'F16') return device().hasF16 ? 'f16' : 'f32';
  if (stDtype === 'F32' || stDtype === 'BF16' || stDtype === 'F64') return 'f32';
  return 'i32';
}

/** Reads tensor `name` of a safetensors file onto the GPU as `dtype` (default: by the file's dtype). */
export async function loadTensor(file: SafetensorsFile, name: string, dtype?: DType): Promise<Tensor> {
  const info = file.info(name);
  const want = dtype ?? defaultDType(info.dtype);
  if (want === 'f16' && !device().hasF16) throw new Error(`${file.source.name}: tensor "${name}" wanted as f16, but this adapter lacks shader-f16`);
  // without shader-f16 an F16 tensor widens on the host (readF32 below), not in a GPU cast
  if (info.dtype === 'F16' && device().hasF16 && (want === 'f16' || want === 'f32')) {
    const raw = await file.readRaw(name);
    const t = Tensor.empty(info.shape, 'f16');
    // queue writes need a multiple of 4 bytes
    const padded = new Uint8Array(Math.ceil(raw.byteLength / 4) * 4);
    padded.set(raw);
    if (padded.byteLength) device().write(t.storage.buffer, 0, padded);
    if (want === 'f16') return t;
    const w = noGrad(() => cast(t, 'f32'));
    t.dispose();
    return w;
  }
  if (want === 'i32' || want === 'u32') return tensor(await file.readI32(name), info.shape, want);
  return tensor(await file.readF32(name), info.shape, want);
}
