// The demo page: adapter info and a kernel self-check (the browser test reads its results
// from window.layton).
import { getDevice } from '../../runtime/index.ts';
import { parityRun } from './parity.ts';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

declare global {
  interface Window {
    layton: { ready: Promise<string>; parity: () => Promise<Record<string, number[]>> };
  }
}

const ready = getDevice().then(
  (d) => {
    const info = d.info();
    $('adapter').textContent = `WebGPU adapter: ${info.adapter} (${info.features.includes('shader-f16') ? 'f16' : 'no f16'})`;
    return info.adapter;
  },
  (e: Error) => {
    $('adapter').textContent = `No WebGPU: ${e.message}`;
    throw e;
  },
);

window.layton = { ready, parity: parityRun };

$('run-parity').addEventListener('click', async () => {
  const out = $('parity-out');
  out.textContent = 'running…';
  const t0 = performance.now();
  const r = await parityRun();
  out.textContent = `${Object.keys(r).length} kernels in ${(performance.now() - t0).toFixed(0)} ms\n` +
    Object.entries(r).map(([k, v]) => `${k}: ${v.length} values, first ${v.slice(0, 3).map((x) => x.toFixed(5)).join(', ')}`).join('\n');
});
