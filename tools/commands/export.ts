// `export`: a trained model root (as `train layton` / `train laytongen` leave it) -> a model
// folder to ship or serve: only the parts a user loads, the decoder's distilled UNet as unet/
// (unet-consistency/ replaces the LDM), float weights stored as f16 (half the bytes; the
// loaders widen them to the model's dtype), the stages' summaries and recipe.json beside them.
// Written into a temporary folder and renamed into place.
import { cp, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Argv } from 'yargs';
import { type TensorToWrite, f32ToF16 } from '../../runtime/index.ts';
import { openSafetensors, saveSafetensors } from '../../runtime/platform/node-fs.ts';
import { note } from './common.ts';

/** Parts of a root, as folder names in the export (from: where the trained root keeps it). */
const PARTS = [
  { name: 'vq' }, { name: 'vae' }, { name: 'controlnet' }, { name: 'scheduler' },
  { name: 'unet', from: ['unet-consistency', 'unet'] },
  { name: 'gpt', optional: true }, { name: 'text_encoder', optional: true },
];

const isDir = (p: string) => stat(p).then((s) => s.isDirectory(), () => false);

async function copyPart(src: string, dst: string, dtype: 'f16' | 'f32'): Promise<number> {
  await mkdir(dst, { recursive: true });
  let bytes = 0;
  for (const f of (await readdir(src)).sort()) {
    if (!f.endsWith('.safetensors') || dtype === 'f32') {
      await cp(join(src, f), join(dst, f));
      bytes += (await stat(join(dst, f))).size;
      continue;
    }
    const st = await openSafetensors(join(src, f));
    try {
      const out: Record<string, TensorToWrite> = {};
      for (const k of st.keys()) {
        const t = st.info(k);
        out[k] = t.dtype === 'F32' ? { dtype: 'F16', shape: t.shape, data: f32ToF16(await st.readF32(k)) } : { dtype: t.dtype, shape: t.shape, data: await st.readRaw(k) };
      }
      await saveSafetensors(join(dst, f), out, st.metadata);
    } finally {
      await st.close();
    }
    bytes += (await stat(join(dst, f))).size;
  }
  return bytes;
}

export async function exportRoot(root: string, out: string, dtype: 'f16' | 'f32' = 'f16'): Promise<number> {
  if (!(await isDir(root))) throw new Error(`${root}: no such model root`);
  if (!(await stat(join(root, 'layton.json')).catch(() => null))) throw new Error(`${root}: not a trained Layton root (no layton.json; \`layton-run train layton --out ${root}\` makes one)`);
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  let total = 0;
  try {
    await mkdir(tmp, { recursive: true });
    await cp(join(root, 'layton.json'), join(tmp, 'layton.json'));
    for (const p of PARTS) {
      let from: string | undefined;
      for (const f of p.from ?? [p.name]) if (!from && (await isDir(join(root, f)))) from = f;
      if (!from) {
        if (p.optional) continue;
        throw new Error(`${root}: has no ${(p.from ?? [p.name]).join('/ or ')}/ (train its stage first)`);
      }
      const bytes = await copyPart(join(root, from), join(tmp, p.name), dtype);
      note(`${from}/ -> ${p.name}/ (${(bytes / 2 ** 20).toFixed(2)} MiB)`);
      total += bytes;
    }
    // what made the weights: each stage's summary (steps, seconds, metrics, seed) and the recipe's timings
    const train = join(root, 'train');
    if (await isDir(train))
      for (const e of await readdir(train)) {
        const src = join(train, e);
        if (e === 'recipe.json') await cp(src, join(tmp, 'train', e));
        else if (await stat(join(src, 'summary.json')).catch(() => null)) await cp(join(src, 'summary.json'), join(tmp, 'train', e, 'summary.json'));
      }
    await rm(out, { recursive: true, force: true });
    await rename(tmp, out);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  return total;
}

export const registerExport = <T>(y: Argv<T>) =>
  y.command(
    'export <root>',
    'copy a trained model root into a model folder to ship or serve: the parts a user loads, the distilled UNet as unet/, weights as f16',
    (c) =>
      c
        .positional('root', { type: 'string', demandOption: true, describe: 'the --out folder of train layton (and train laytongen)' })
        .option('out', { type: 'string', demandOption: true, describe: 'the model folder to write (replaced as a whole)' })
        .option('dtype', { type: 'string', choices: ['f16', 'f32'], default: 'f16', describe: 'storage of the float weights' }),
    async (a) => {
      const bytes = await exportRoot(a.root, a.out, a.dtype as 'f16' | 'f32');
      process.stdout.write(`${a.out}: ${(bytes / 2 ** 20).toFixed(2)} MiB of weights (${a.dtype})\n`);
    },
  );
