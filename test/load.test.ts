import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { device, getDevice, loadTensor, tensorCount } from '../runtime/index.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';

const path = fileURLToPath(new URL('./fixtures/st_roundtrip.safetensors', import.meta.url));

beforeAll(async () => {
  await getDevice();
});

describe('loadTensor: checkpoint tensors onto the GPU with dtype conversion', () => {
  it('uploads every file dtype and reads back the values the file holds', async () => {
    const file = await openSafetensors(path);
    const before = tensorCount();
    const seen = new Set<string>();
    for (const name of file.keys()) {
      const info = file.info(name);
      seen.add(info.dtype);
      if (name === 'i64_big') {
        // 2^40 has no i32: refused with the tensor named, not wrapped silently
        await expect(loadTensor(file, name)).rejects.toThrow(/i64_big.*outside the int32 range/);
        continue;
      }
      const t = await loadTensor(file, name);
      expect(t.shape, name).toEqual(info.shape);
      expect(t.dtype, name).toBe(info.dtype === 'F16' ? 'f16' : ['F32', 'BF16', 'F64'].includes(info.dtype) ? 'f32' : 'i32');
      const want = ['F32', 'F16', 'BF16', 'F64'].includes(info.dtype) ? Array.from(await file.readF32(name)) : Array.from(await file.readI32(name));
      expect(Array.from(await t.data()), name).toEqual(want.map((v) => (info.dtype === 'F64' ? Math.fround(v) : v)));
      t.dispose();
      if (info.dtype === 'F16') {
        const w = await loadTensor(file, name, 'f32');
        expect(w.dtype).toBe('f32');
        expect(Array.from(await w.data())).toEqual(Array.from(await file.readF32(name)));
        w.dispose();
      }
    }
    expect([...seen].sort()).toEqual(['BF16', 'BOOL', 'F16', 'F32', 'F64', 'I64', 'U8']);
    expect(tensorCount()).toBe(before);
    await file.close();
  });

  it('on an adapter without shader-f16 (the browser\'s SwiftShader), F16 tensors widen on the host: f32, no f16 kernel', async () => {
    const file = await openSafetensors(path);
    const dev = device() as { hasF16: boolean };
    const had = dev.hasF16;
    dev.hasF16 = false; // as the device of such an adapter reports; any f16 kernel would now throw
    try {
      for (const name of file.keys().filter((k) => file.info(k).dtype === 'F16')) {
        for (const t of [await loadTensor(file, name), await loadTensor(file, name, 'f32')]) {
          expect(t.dtype, name).toBe('f32');
          expect(Array.from(await t.data()), name).toEqual(Array.from(await file.readF32(name)));
          t.dispose();
        }
        await expect(loadTensor(file, name, 'f16')).rejects.toThrow(/wanted as f16, but this adapter lacks shader-f16/);
      }
    } finally {
      dev.hasF16 = had;
      await file.close();
    }
  });

  it('names the file and tensor when a key is missing', async () => {
    const file = await openSafetensors(path);
    await expect(loadTensor(file, 'no.such.tensor')).rejects.toThrow(/st_roundtrip\.safetensors.*no\.such\.tensor/);
    await file.close();
  });
});
