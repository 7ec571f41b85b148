// The browser half: the demo page built by Vite (no Node built-ins on its path), opened in
// Debian's Chromium on its software WebGPU adapter (SwiftShader), against this Node process on
// lavapipe: the kernels of tools/web/parity.ts within 1e-5; a tiny LaytonGen root laid out as a
// trained one (the fixture Layton parts of test/layton.test.ts, a GPT and T5 trained 2 steps)
// served over HTTP and loaded by the page through models/webfiles.ts: a PNG's tokens equal
// Node's and its decode is within one 8-bit level, a seeded generation's tokens equal Node's,
// Cancel stops a generation, a picked folder and ?model=URL load; the same check for the
// shipped models once models/default holds them. In Node: URL roots stream weights by Range
// requests (or whole files from a server without Range) and fail with a folder's messages.
// The library build's size is printed.
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { type Browser, type Page, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Generator, type Module, add, getDevice, mulScalar, noGrad, randn, tidy } from '../runtime/index.ts';
import { LaddBranch } from '../models/controlnet.ts';
import { loadGptModel } from '../models/gpt.ts';
import { Layton, parseLaytonConfig } from '../models/layton.ts';
import { DDPMScheduler } from '../models/schedulers.ts';
import { loadUNet, unetConfigJson } from '../models/unet.ts';
import { loadVae } from '../models/vae.ts';
import { loadVQModel } from '../models/vq.ts';
import { blobRoot, urlRoot } from '../models/webfiles.ts';
import { modelDir, saveLaytonDir, saveModelDir } from '../tools/modeldir.ts';
import { centerCrop, decodeImage, encodePng, toImage, toRgb8 } from '../tools/image.ts';
import { DEFAULT_MODEL, decode, encode, prepare } from '../tools/reconstruct.ts';
import { type LaytonGen, generateWith, openLaytonGen } from '../tools/laytongen/generate.ts';
import { trainLaytonGen } from '../tools/laytongen/train.ts';
import { World } from '../tools/world.ts';
import { serveStatic } from '../tools/web/serve.ts';
import { parityRun } from '../tools/web/parity.ts';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = [
  '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=native', '--use-angle=vulkan', '--ignore-gpu-blocklist',
  '--disable-gpu-sandbox', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
];
const OUT = 'test/output';
const IMAGE = fileURLToPath(new URL('./fixtures/image_input.png', import.meta.url));
const fixture = (name: string) => modelDir(fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url)));
/** the shipped models, once `layton-run train layton` has written them */
const SHIPPED = ['layton.json', 'gpt/config.json', 'text_encoder/tokenizer.json'].every((f) => existsSync(join(DEFAULT_MODEL, f)));
const tmp = mkdtempSync(join(tmpdir(), 'browser-'));
const root = join(tmp, 'root');

let browser: Browser;
let server: Awaited<ReturnType<typeof serveStatic>>;
let m: LaytonGen;

/** Adds 0.3 N(0, 1) noise to the parameters whose names pass `pick`. */
function perturb(mod: Module, pick: (name: string) => boolean, seed: number): void {
  const g = new Generator(seed);
  noGrad(() => {
    for (const [k, p] of mod.namedParameters()) if (pick(k)) tidy(() => mod.loadStateDict({ [k]: add(p, mulScalar(randn(p.shape, { generator: g }), 0.3)) }, false));
  });
}

/**
 * The tiny LaytonGen root, laid out as a trained one: the decoder UNet in unet-consistency/ (here
 * the LDM's perturbed, so a loader that took unet/ would decode other pixels); the control
 * branch's zero convs made non-zero so the tokens reach the decode.
 */
async function tinyRoot(): Promise<void> {
  const unet = await loadUNet(await fixture('unet_small'));
  const branch = LaddBranch.fromUnet(unet, { codeDim: 8, upsampleFactor: 2, conditioningEmbeddingOutChannels: [8, 16], conditioningEmbeddingStride: 1 });
  const layton = new Layton(parseLaytonConfig({ image_size: 32, tokenizer_size: 16 }), await loadVQModel(await fixture('vq_small_st')), unet, branch.controlnet, await loadVae(await fixture('vae_small')), new DDPMScheduler());
  perturb(layton.controlnet, (k) => k.startsWith('controlnet_') || k.startsWith('controlnet_cond_embedding.conv_out'), 5);
  await saveLaytonDir(root, layton);
  perturb(unet, () => true, 6);
  await saveModelDir(join(root, 'unet-consistency'), unetConfigJson(unet.config), unet);
  layton.dispose();
  const tiny = { trainImages: 8, heldoutImages: 4, checkpointEvery: 2, lr: 1e-2, warmup: 0, gpt: { dim: 32, n_layer: 1, n_head: 2, multiple_of: 32, vocab_size: 64 }, t5: { d_model: 32, d_kv: 8, d_ff: 64, num_layers: 1, num_heads: 4 } };
  await trainLaytonGen({ root, steps: 2, batch: 4, seed: 3, log: () => {} }, tiny);
}

const pageErrors = new WeakMap<Page, string[]>();

async function openPage(url: string): Promise<Page> {
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  pageErrors.set(page, errors);
  await page.goto(url);
  return page;
}

async function closePage(page: Page): Promise<void> {
  expect(pageErrors.get(page)).toEqual([]);
  await page.close();
}

/**
 * Loads the served root (model/) in the page, then reconstructs `png` (decoded by Chromium there,
 * by pngjs here; 1 step, noise of `seed`) and generates from `caption` (seed, cfg 2) there and
 * with `m` here: the tokens must be equal, the pixels within one 8-bit level. Returns a summary.
 */
async function sameAsNode(page: Page, m: LaytonGen, png: Uint8Array, caption: string, seed: number): Promise<string> {
  const url = page.url();
  const t0 = performance.now();
  expect(await page.evaluate(() => window.layton.load('model/'))).toBe(`${url}model`);
  const tLoad = performance.now() - t0;
  const web = await page.evaluate(([bytes, s]) => window.layton.reconstruct(bytes, s), [Array.from(png), seed] as [number[], number]);
  const { small } = prepare(toImage(centerCrop(decodeImage(png), m.layton.config.imageSize)), m.layton.config);
  const tokens = await encode(m.layton, [small]);
  const side = Math.sqrt(tokens[0].length);
  const [image] = await decode(m.layton, tokens, [side, side], 1, new Generator(seed));
  expect(web.tokens).toEqual(Array.from(tokens[0]));
  const px = toRgb8(image).data;
  const levels = Math.max(...web.pixels.map((v, i) => Math.abs(v - px[i])));
  const t1 = performance.now();
  const gen = await page.evaluate(([c, s]) => window.layton.generate(c, s, 2), [caption, seed] as [string, number]);
  const tGen = performance.now() - t1;
  const node = await generateWith(m, { captions: [caption], seed, cfg: 2 });
  expect(gen.tokens).toEqual(Array.from(node.tokens[0]));
  const genPx = toRgb8(node.images[0]).data;
  const genLevels = Math.max(...gen.pixels.map((v, i) => Math.abs(v - genPx[i])));
  expect(levels).toBeLessThanOrEqual(1);
  expect(genLevels).toBeLessThanOrEqual(1);
  return `load ${tLoad.toFixed(0)} ms; reconstruction: ${web.tokens.length} tokens equal Node's, pixels within ${levels}/255 (PSNR ${web.psnr.toFixed(2)} dB); ` +
    `generation "${caption}" ${tGen.toFixed(0)} ms: ${gen.tokens.length} tokens equal Node's, pixels within ${genLevels}/255`;
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run 'npm run setup' (installs Debian's chromium) or 'apt-get install chromium'`);
  execFileSync(process.execPath, ['node_modules/vite/bin/vite.js', 'build', '--logLevel', 'error'], { stdio: 'inherit' });
  await getDevice();
  await tinyRoot();
  m = await openLaytonGen(root);
  server = await serveStatic('dist/demo', { model: root });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  mkdirSync(OUT, { recursive: true });
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  m?.dispose();
  rmSync(tmp, { recursive: true, force: true });
});

describe('browser (Chromium, WebGPU)', () => {
  it('runs the kernels with the same numbers as Node', async () => {
    const page = await openPage(server.url);
    const adapter = await page.evaluate(() => window.layton.ready);
    expect(adapter.length).toBeGreaterThan(0);
    const web = await page.evaluate(() => window.layton.parity());
    const node = await parityRun();
    expect(Object.keys(web).sort()).toEqual(Object.keys(node).sort());
    const worst: Record<string, number> = {};
    for (const k of Object.keys(node)) {
      expect(web[k].length, k).toBe(node[k].length);
      const scale = Math.max(...node[k].map(Math.abs));
      worst[k] = Math.max(...node[k].map((v, i) => Math.abs(v - web[k][i]))) / scale;
    }
    console.log(`adapter in Chromium: ${adapter}\nmax relative difference browser vs Node:`, worst);
    for (const k of Object.keys(node)) expect(worst[k], k).toBeLessThan(1e-5);
    await closePage(page);
  });

  it('loads a model root over HTTP, reconstructs and generates as Node does; Cancel stops a generation', async () => {
    const page = await openPage(server.url);
    const line = await sameAsNode(page, m, readFileSync(IMAGE), 'a red circle left of a blue square', 7);
    console.log(`tiny root in the browser: ${line}`);
    await page.screenshot({ path: join(OUT, 'browser-demo.png'), fullPage: true });
    expect(statSync(join(OUT, 'browser-demo.png')).size).toBeGreaterThan(1000);
    // Cancel, pressed as soon as the generation starts
    const cancelled = await page.evaluate(async () => {
      const run = window.layton.generate('a green square', 1, 2);
      document.getElementById('gen-cancel')!.click();
      return run.then(() => 'finished', (e: Error) => `${e.message}; page says ${document.getElementById('gen-status')!.textContent}`);
    });
    expect(cancelled).toBe('cancelled; page says cancelled');
    // the root as a picked folder (File objects), then a drawn world image through the buttons
    await page.setInputFiles('#pick-model', root);
    await page.waitForFunction(() => /^root: 32x32 images as 8x8 tokens/.test(document.getElementById('model-status')!.textContent!));
    await page.click('#world-image');
    await page.waitForFunction(() => /^reconstruction: PSNR [\d.]+ dB/.test(document.getElementById('recon-score')!.textContent!));
    expect(await page.locator('#recon-tokens div').count()).toBe(64);
    // ?model= loads a root on open
    await page.goto(`${server.url}?model=model/`);
    await page.waitForFunction((name) => document.getElementById('model-status')!.textContent!.startsWith(`${name}: 32x32 images`), `${server.url}model`);
    await closePage(page);
  });

  it.skipIf(!SHIPPED)('the shipped models (models/default): the same tokens in the browser as in Node', async () => {
    const shipped = await serveStatic('dist/demo', { model: DEFAULT_MODEL });
    const node = await openLaytonGen(DEFAULT_MODEL);
    try {
      const page = await openPage(shipped.url);
      const sample = new World().sample('heldout', 0, node.layton.config.imageSize);
      const line = await sameAsNode(page, node, encodePng(toRgb8(sample.image)), sample.caption, 0);
      console.log(`models/default in the browser: ${line}`);
      await page.screenshot({ path: join(OUT, 'browser-demo-shipped.png'), fullPage: true });
      await closePage(page);
    } finally {
      node.dispose();
      await shipped.close();
    }
  }, 300_000);
});

describe('model roots over URLs and picked files (Node fetch)', () => {
  it('streams tensor by tensor with Range requests, reads whole files from a server without Range, and loads the same weights', async () => {
    const want = m.gpt.stateDict();
    for (const range of [true, false]) {
      const seen: number[] = [];
      const fetchFn: typeof fetch = async (url, init) => {
        const r = await fetch(url, range ? init : undefined);
        seen.push(r.status);
        return r;
      };
      const progress: number[] = [];
      const rootUrl = await urlRoot(`${server.url}model/`, { fetch: fetchFn, onProgress: (_, n) => progress.push(n) });
      const gpt = await loadGptModel(await rootUrl.folder('gpt'));
      const got = gpt.stateDict();
      for (const k of Object.keys(want)) expect(Array.from(await got[k].data()), k).toEqual(Array.from(await want[k].data()));
      gpt.dispose();
      const partial = seen.filter((s) => s === 206).length;
      if (range) expect(partial).toBeGreaterThan(Object.keys(want).length); // the header, then each tensor
      else expect(partial).toBe(0);
      expect(progress.length).toBeGreaterThan(Object.keys(want).length);
    }
  });

  it('fails with the messages of a folder on disk', async () => {
    const broken = join(tmp, 'broken');
    cpSync(join(root, 'vq'), join(broken, 'vq'), { recursive: true });
    const weights = join(broken, 'vq', 'model.safetensors');
    truncateSync(weights, statSync(weights).size - 100);
    const other = await serveStatic('dist/demo', { model: broken });
    try {
      const message = (p: Promise<unknown>, name: string) => p.then(() => 'loaded', (e: Error) => e.message.replaceAll(name, '<root>'));
      const disk = await message(loadVQModel(await modelDir(join(broken, 'vq'))), broken);
      expect(disk).toMatch(/^<root>\/vq\/model\.safetensors: /);
      const url = await urlRoot(`${other.url}model`);
      expect(await message(loadVQModel(await url.folder('vq')), url.name)).toBe(disk);
      const picked = blobRoot(readdirSync(join(broken, 'vq')).map((f): [string, Blob] => [`vq/${f}`, new Blob([readFileSync(join(broken, 'vq', f))])]), { name: 'picked' });
      expect(await message(loadVQModel(await picked.folder('vq')), 'picked')).toBe(disk);
      await expect(url.folder('gpt')).rejects.toThrow(`${url.name}/gpt: no such model folder`);
      await expect(urlRoot(`${other.url}nothing/`)).rejects.toThrow(/nothing\/files\.json: not found/);
    } finally {
      await other.close();
    }
  });
});

describe('library build', () => {
  it('builds runtime + models as ESM without Node built-ins, and reports its size', () => {
    execFileSync(process.execPath, ['node_modules/vite/bin/vite.js', 'build', '--mode', 'lib', '--logLevel', 'error'], { stdio: 'inherit' });
    const sizes = (dir: string) => readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile() && e.name.endsWith('.js'))
      .map((e) => { const b = readFileSync(join(e.parentPath, e.name)); return { file: join(e.parentPath, e.name), bytes: b.length, gzip: gzipSync(b).length }; });
    const lib = sizes('dist/lib');
    const demo = sizes('dist/demo');
    const kb = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
    for (const s of [...lib, ...demo]) console.log(`${s.file}: ${kb(s.bytes)} (gzip ${kb(s.gzip)})`);
    expect(lib.map((s) => s.file).sort()).toEqual(expect.arrayContaining(['dist/lib/models.js', 'dist/lib/runtime.js']));
    for (const s of [...lib, ...demo]) expect(readFileSync(s.file, 'utf8'), s.file).not.toMatch(/from\s*["']node:|require\(["']node:/);
    expect(readFileSync('dist/lib/models.js', 'utf8')).toMatch(/urlRoot/);
  });
});
