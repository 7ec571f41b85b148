// Node platform: Dawn's WebGPU bindings (npm `webgpu`) and kernel sources from disk.
// Chosen through package.json "imports" (#platform); browsers get ./browser.ts instead.
import { readFileSync } from 'node:fs';

export const platformName = 'node';

let gpu: GPU | undefined;

export async function getGPU(): Promise<GPU> {
  if (gpu) return gpu;
  if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = '/tmp'; // lavapipe warns without it
  let mod: typeof import('webgpu');
  try {
    mod = await import('webgpu');
  } catch (e) {
    throw new Error(`cannot load the npm package 'webgpu' (Dawn's Node bindings): ${(e as Error).message}. Run 'npm install'.`);
  }
  Object.assign(globalThis, mod.globals);
  gpu = mod.create([]) as GPU;
  return gpu;
}

/** What to install when no adapter is found. */
export const noAdapterHelp =
  'No WebGPU adapter found. Without a GPU, install Mesa 25 software Vulkan (lavapipe): ' +
  "add 'deb http://deb.debian.org/debian bookworm-backports main' to /etc/apt/sources.list.d/, then " +
  "'apt-get update && apt-get install -t bookworm-backports mesa-vulkan-drivers' (Debian 12's Mesa 22 is too old for Dawn), " +
  "or run 'npm run setup' which does this when permitted.";

const kernelCache = new Map<string, string>();

export function kernelSource(name: string): string {
  let src = kernelCache.get(name);
  if (src === undefined) {
    const url = new URL(`../../kernels/${name}.wgsl`, import.meta.url);
    try {
      src = readFileSync(url, 'utf8');
    } catch {
      throw new Error(`kernel source kernels/${name}.wgsl not found`);
    }
    kernelCache.set(name, src);
  }
  return src;
}
