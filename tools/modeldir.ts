// Model folders on disk (Node): ModelFiles over a directory, and atomic saving in the same
// layout the loader reads (config.json + <weights>.safetensors).
import { mkdir, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { ModelFiles } from '../models/checkpoint.ts';
import { type Module, serializeSafetensors } from '../runtime/index.ts';
import { fileSource, writeFileAtomic } from '../runtime/platform/node-fs.ts';

/** ModelFiles for a directory; a missing or non-directory path is an error naming it. */
export async function modelDir(dir: string): Promise<ModelFiles> {
  let s;
  try {
    s = await stat(dir);
  } catch {
    throw new Error(`${dir}: no such model folder`);
  }
  if (!s.isDirectory()) throw new Error(`${dir}: not a folder (a model folder holds config.json and its weights)`);
  return {
    name: dir,
    list: async () => (await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name),
    async open(file) {
      try {
        return await fileSource(join(dir, file));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
        throw e;
      }
    },
  };
}

/** Writes config.json and the module's weights (`weightsName`, default diffusers') into dir, each atomically. */
export async function saveModelDir(dir: string, config: object, module: Module, weightsName = 'diffusion_pytorch_model.safetensors', metadata?: Record<string, string>): Promise<void> {
  await mkdir(dir, { recursive: true });
  const entries = await module.toSafetensors();
  await writeFileAtomic(join(dir, weightsName), serializeSafetensors(entries, metadata));
  await writeFileAtomic(join(dir, 'config.json'), [new TextEncoder().encode(JSON.stringify(config, null, 2) + '\n')]);
}
