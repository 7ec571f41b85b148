// The demo page: load a LaytonGen root (URL or picked folder, with progress), reconstruct a
// dropped / picked / drawn image through its tokens with PSNR / SSIM, generate from a caption
// (progress per token, cancel), and a kernel self-check. The browser test drives the same
// code through window.layton.
import { getDevice } from '../../runtime/index.ts';
import type { LaytonGen } from '../laytongen/model.ts';
import { type Rgb8, type RgbImage, toRgb8 } from '../pixels.ts';
import { World } from '../world.ts';
import { parityRun } from './parity.ts';
import { generateOne, loadRoot, openRoot, reconstruct } from './pipeline.ts';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

interface Result {
  tokens: number[];
  /** the image as 8-bit RGB, row-major */
  pixels: number[];
}

declare global {
  interface Window {
    layton: {
      ready: Promise<string>;
      parity: () => Promise<Record<string, number[]>>;
      /** loads the root at a URL; resolves to its name */
      load: (url: string) => Promise<string>;
      /** an encoded PNG / JPEG's reconstruction */
      reconstruct: (bytes: number[], seed: number, steps?: number) => Promise<Result & { psnr: number; ssim: number }>;
      generate: (caption: string, seed: number, cfg: number) => Promise<Result>;
    };
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

let model: LaytonGen | undefined;
const mb = (n: number) => `${(n / 2 ** 20).toFixed(1)} MB`;

function status(id: string, text: string, error = false): void {
  $(id).textContent = text;
  $(id).classList.toggle('error', error);
}

async function load(source: string | FileList): Promise<string> {
  const bar = $<HTMLProgressElement>('load-progress');
  bar.hidden = false;
  const loaded = new Map<string, number>();
  try {
    await ready;
    const root = await openRoot(source, (file, n, size) => {
      loaded.set(file, n);
      const done = [...loaded.values()].reduce((a, b) => a + b, 0);
      bar.value = n / size;
      status('model-status', `loading ${file}: ${mb(n)} of ${mb(size)} (${mb(done)} read)`);
    });
    const t0 = performance.now();
    const m = await loadRoot(root);
    model?.dispose();
    model = m;
    const c = m.layton.config;
    const side = m.layton.gridSide;
    status('model-status', `${root.name}: ${c.imageSize}x${c.imageSize} images as ${side}x${side} tokens of ${m.gpt.config.vocabSize} codes; ` +
      `read ${mb([...loaded.values()].reduce((a, b) => a + b, 0))} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    for (const id of ['world-image', 'gen']) $<HTMLButtonElement>(id).disabled = false;
    return root.name;
  } catch (e) {
    status('model-status', (e as Error).message, true);
    throw e;
  } finally {
    bar.hidden = true;
  }
}

function draw(id: string, img: RgbImage): Rgb8 {
  const px = toRgb8(img);
  const canvas = $<HTMLCanvasElement>(id);
  [canvas.width, canvas.height] = [px.width, px.height];
  const rgba = new ImageData(px.width, px.height);
  for (let i = 0; i < px.width * px.height; i++) {
    rgba.data.set(px.data.subarray(i * 3, i * 3 + 3), i * 4);
    rgba.data[i * 4 + 3] = 255;
  }
  canvas.getContext('2d')!.putImageData(rgba, 0, 0);
  return px;
}

/** The token grid: one cell per token, coloured by its id (golden-angle hues), the id inside and on hover. */
function drawTokens(id: string, tokens: Int32Array, side: number): void {
  const grid = $(id);
  grid.style.gridTemplateColumns = `repeat(${side}, 1fr)`;
  grid.replaceChildren(...Array.from(tokens, (t, i) => {
    const cell = document.createElement('div');
    cell.style.background = `hsl(${(t * 137.508) % 360} 65% ${55 + (t % 3) * 10}%)`;
    cell.textContent = side <= 16 ? String(t) : '';
    cell.title = `token ${t} at row ${Math.floor(i / side)}, column ${i % side}`;
    return cell;
  }));
}

/** An encoded image's 8-bit RGB, as decoded without colour management (alpha dropped, as PIL's convert("RGB")). */
async function decodeImage(blob: Blob): Promise<Rgb8> {
  const bmp = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const canvas = new OffscreenCanvas(bmp.width, bmp.height);
  const ctx = canvas.getContext('2d', { willReadFrequently: true })!;
  ctx.drawImage(bmp, 0, 0);
  const rgba = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
  const data = new Uint8Array(bmp.width * bmp.height * 3);
  for (let i = 0, j = 0; i < data.length; i += 3, j += 4) data.set(rgba.subarray(j, j + 3), i);
  return { width: bmp.width, height: bmp.height, data };
}

async function runReconstruct(px: Rgb8, seed: number, steps: number) {
  if (!model) throw new Error('load a model first');
  status('recon-score', 'reconstructing…');
  const side = model.layton.gridSide;
  try {
    const r = await reconstruct(model, px, seed, steps);
    draw('recon-input', r.target);
    drawTokens('recon-tokens', r.tokens, side);
    const out = draw('recon-output', r.image);
    status('recon-score', `reconstruction: PSNR ${r.psnr.toFixed(2)} dB, SSIM ${r.ssim.toFixed(3)}`);
    return { tokens: Array.from(r.tokens), pixels: Array.from(out.data), psnr: r.psnr, ssim: r.ssim };
  } catch (e) {
    status('recon-score', (e as Error).message, true);
    throw e;
  }
}

const reconFromUi = async (px: Rgb8) => runReconstruct(px, Number($<HTMLInputElement>('recon-seed').value), Number($<HTMLSelectElement>('recon-steps').value));
const reconFile = (f: File | undefined) => f && decodeImage(f).then(reconFromUi, (e: Error) => status('recon-score', `${f.name}: ${e.message}`, true));

let aborter: AbortController | undefined;

async function runGenerate(caption: string, seed: number, cfg: number): Promise<Result> {
  if (!model) throw new Error('load a model first');
  aborter = new AbortController();
  $<HTMLButtonElement>('gen').disabled = true;
  $<HTMLButtonElement>('gen-cancel').disabled = false;
  const bar = $<HTMLProgressElement>('gen-progress');
  const t0 = performance.now();
  const side = model.layton.gridSide;
  try {
    const r = await generateOne(model, caption, {
      seed, cfg, signal: aborter.signal, warn: (w) => status('gen-status', w),
      onToken: (done, total) => {
        bar.value = done / total;
        status('gen-status', `${done} / ${total} tokens`);
      },
    });
    const px = draw('gen-output', r.image);
    drawTokens('gen-tokens', r.tokens, side);
    status('gen-status', `${r.tokens.length} tokens in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return { tokens: Array.from(r.tokens), pixels: Array.from(px.data) };
  } catch (e) {
    status('gen-status', aborter.signal.aborted ? 'cancelled' : (e as Error).message, !aborter.signal.aborted);
    throw e;
  } finally {
    $<HTMLButtonElement>('gen').disabled = false;
    $<HTMLButtonElement>('gen-cancel').disabled = true;
  }
}

window.layton = {
  ready,
  parity: parityRun,
  load,
  reconstruct: async (bytes, seed, steps = 1) => {
    $<HTMLInputElement>('recon-seed').value = String(seed);
    $<HTMLSelectElement>('recon-steps').value = String(steps);
    return runReconstruct(await decodeImage(new Blob([new Uint8Array(bytes)])), seed, steps);
  },
  generate: (caption, seed, cfg) => {
    [$<HTMLInputElement>('caption').value, $<HTMLInputElement>('gen-seed').value, $<HTMLInputElement>('gen-cfg').value] = [caption, String(seed), String(cfg)];
    return runGenerate(caption, seed, cfg);
  },
};

const ignore = () => {}; // errors are shown on the page
$('load-form').addEventListener('submit', (e) => {
  e.preventDefault();
  load($<HTMLInputElement>('model-url').value).catch(ignore);
});
$<HTMLInputElement>('pick-model').addEventListener('change', (e) => {
  const files = (e.target as HTMLInputElement).files;
  if (files?.length) load(files).catch(ignore);
});
$<HTMLInputElement>('pick-image').addEventListener('change', (e) => reconFile((e.target as HTMLInputElement).files?.[0]));
const drop = $('drop');
drop.addEventListener('dragover', (e) => {
  e.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  reconFile(e.dataTransfer?.files[0]);
});
let world: World | undefined;
let drawn = 0;
$('world-image').addEventListener('click', () => {
  world ??= new World();
  const s = world.sample('heldout', drawn++, model!.layton.config.imageSize);
  $<HTMLInputElement>('caption').value = s.caption;
  reconFromUi(toRgb8(s.image)).catch(ignore);
});
$('gen-form').addEventListener('submit', (e) => {
  e.preventDefault();
  runGenerate($<HTMLInputElement>('caption').value, Number($<HTMLInputElement>('gen-seed').value), Number($<HTMLInputElement>('gen-cfg').value)).catch(ignore);
});
$('gen-cancel').addEventListener('click', () => aborter?.abort(new Error('cancelled')));

// ?model=URL loads that root on open (npm run demo:web prints the address with the served one)
const auto = new URLSearchParams(location.search).get('model');
if (auto) {
  $<HTMLInputElement>('model-url').value = auto;
  load(auto).catch(ignore);
}

$('run-parity').addEventListener('click', async () => {
  const out = $('parity-out');
  out.textContent = 'running…';
  const t0 = performance.now();
  const r = await parityRun();
  out.textContent = `${Object.keys(r).length} kernels in ${(performance.now() - t0).toFixed(0)} ms\n` +
    Object.entries(r).map(([k, v]) => `${k}: ${v.length} values, first ${v.slice(0, 3).map((x) => x.toFixed(5)).join(', ')}`).join('\n');
});
