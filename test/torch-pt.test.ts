import { existsSync, readFileSync, rmSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadTorchCheckpoint, readPtTensor, TorchCheckpointError } from '../runtime/torch-pt.ts';
import { bufferSource, SafetensorsFile, f16ToF32, bf16ToF32 } from '../runtime/safetensors.ts';

const fx = (n: string) => new URL(`./fixtures/${n}`, import.meta.url);
const src = (n: string) => bufferSource(readFileSync(fx(n)), n);

function decode(dtype: string, bytes: Uint8Array): number[] {
  const b = bytes.slice().buffer;
  switch (dtype) {
    case 'F32': return Array.from(new Float32Array(b));
    case 'F64': return Array.from(new Float64Array(b));
    case 'F16': return Array.from(f16ToF32(new Uint16Array(b)));
    case 'BF16': return Array.from(bf16ToF32(new Uint16Array(b)));
    case 'I64': return Array.from(new BigInt64Array(b), Number);
    case 'BOOL': case 'U8': return Array.from(new Uint8Array(b));
    default: throw new Error(dtype);
  }
}

describe('torch.save checkpoint reader', () => {
  it('reads every tensor, dtype and strided view of a torch.save zip as PyTorch wrote them', async () => {
    const ck = await loadTorchCheckpoint(src('pt_checkpoint.pt'));
    const expected = await SafetensorsFile.open(src('pt_expected.safetensors'));
    const root = ck.root as { steps: number; args: { model: string; lr: number } };
    expect(root.steps).toBe(7);
    expect(root.args).toEqual({ model: 'GPT-B', lr: 1e-4 });
    const names = [...ck.tensors.keys()].filter((k) => k.startsWith('model.')).map((k) => k.slice(6)).sort();
    expect(names).toEqual(expected.keys().sort());
    for (const name of names) {
      const t = ck.tensors.get(`model.${name}`)!;
      expect(t.shape).toEqual(expected.info(name).shape);
      const got = decode(t.dtype, await readPtTensor(ck.source, t));
      const want = decode(expected.info(name).dtype, await expected.readRaw(name));
      expect(got, name).toEqual(want);
    }
    expect(ck.tensors.get('model.transposed')!.isContiguous).toBe(false);
    expect(ck.tensors.get('model.shared_a')!.storage).toBe(ck.tensors.get('model.shared_b')!.storage);
  });

  it('refuses a pickle that calls anything but tensor rebuilding, without running it', async () => {
    rmSync('/tmp/layton-pwned', { force: true });
    await expect(loadTorchCheckpoint(src('pt_hostile.pt'))).rejects.toThrow(/pt_hostile\.pt.*global posix\.system.*refusing/);
    expect(existsSync('/tmp/layton-pwned')).toBe(false);
  });

  it('names the file for truncated, non-zip and legacy inputs', async () => {
    const full = readFileSync(fx('pt_checkpoint.pt'));
    await expect(loadTorchCheckpoint(bufferSource(full.subarray(0, full.length - 40), 'cut.pt'))).rejects.toThrow(TorchCheckpointError);
    await expect(loadTorchCheckpoint(bufferSource(full.subarray(0, full.length - 40), 'cut.pt'))).rejects.toThrow(/cut\.pt/);
    await expect(loadTorchCheckpoint(bufferSource(new TextEncoder().encode('hello world, not a zip at all'), 'text.pt'))).rejects.toThrow(/text\.pt: not a zip/);
    await expect(loadTorchCheckpoint(bufferSource(new Uint8Array(64).fill(0x80), 'old.pt'))).rejects.toThrow(/old\.pt: legacy/);
  });
});
