// Model folders on disk (Node): ModelFiles over a directory, and atomic saving in the same
// layout the loader reads (config.json + <weights>.safetensors).
import { existsSync } from 'node:fs';
import { mkdir, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { ModelFiles } from '../models/checkpoint.ts';
import { controlNetConfigJson } from '../models/controlnet.ts';
import { type Layton, type LaytonFiles, laytonConfigJson, partFolder } from '../models/layton.ts';
import { unetConfigJson } from '../models/unet.ts';
import { vaeConfigJson } from '../models/vae.ts';
import { vqConfigJson } from '../models/vq.ts';
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

/**
 * A Layton folder on disk: sub("vae") is <dir>/vae, and unet/ is unet-consistency/ when a
 * trained root has one (models/layton.ts partFolder); `override` reads a part from another
 * subfolder (training: the branch of an earlier stage).
 */
export const laytonDir = (dir: string, override: Record<string, string> = {}): LaytonFiles => (sub) => {
  const at = override[sub] ?? partFolder(sub, (f) => existsSync(join(dir, f)));
  return modelDir(at ? join(dir, at) : dir);
};

/** Writes a Layton folder (each part in diffusers' layout, then layton.json last: a folder without it is incomplete). */
export async function saveLaytonDir(dir: string, m: Layton): Promise<void> {
  await saveModelDir(join(dir, 'vq'), vqConfigJson(m.vq.config), m.vq, 'model.safetensors');
  await saveModelDir(join(dir, 'unet'), unetConfigJson(m.unet.config), m.unet);
  await saveModelDir(join(dir, 'controlnet'), controlNetConfigJson(m.controlnet.config), m.controlnet);
  await saveModelDir(join(dir, 'vae'), vaeConfigJson(m.vae.config), m.vae);
  await mkdir(join(dir, 'scheduler'), { recursive: true });
  const json = (o: object) => [new TextEncoder().encode(JSON.stringify(o, null, 2) + '\n')];
  await writeFileAtomic(join(dir, 'scheduler', 'scheduler_config.json'), json(m.scheduler.toJson()));
  await writeFileAtomic(join(dir, 'layton.json'), json(laytonConfigJson(m.config)));
}
