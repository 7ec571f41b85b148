/// <reference types="vite/client" />
// Browser platform: the page's navigator.gpu, and kernel sources bundled as strings at build
// time (Vite inlines every kernels/*.wgsl). Chosen through package.json "imports" (#platform).
const sources = import.meta.glob('../../kernels/*.wgsl', { query: '?raw', import: 'default', eager: true }) as Record<string, string>;

export const platformName = 'browser';

export async function getGPU(): Promise<GPU> {
  if (!('gpu' in navigator) || !navigator.gpu) throw new Error('this browser has no WebGPU (navigator.gpu is missing); use a recent Chrome/Edge, or enable WebGPU');
  return navigator.gpu;
}

export const noAdapterHelp = 'No WebGPU adapter: the browser has WebGPU but offered no adapter (blocklisted GPU? try chrome://flags/#enable-unsafe-webgpu).';

export function kernelSource(name: string): string {
  const src = sources[`../../kernels/${name}.wgsl`];
  if (src === undefined) throw new Error(`kernel source kernels/${name}.wgsl is not in the bundle`);
  return src;
}
