// The browser half: the demo page built by Vite (no Node built-ins on its path), opened in
// Debian's Chromium on its software WebGPU adapter (SwiftShader), against this Node process on
// lavapipe: the kernels of tools/web/parity.ts within 1e-5; a tiny LaytonGen root (the fixture
// Layton parts of test/layton.test.ts, a GPT and T5 trained 2 steps) served over HTTP and loaded
// by the page through models/webfiles.ts: an image's tokens equal Node's, its decode within one
// 8-bit level, a seeded generation's tokens equal Node's, and Cancel stops a generation. In
// Node: URL roots stream weights by Range requests (or whole files from a server without
// Range) and fail with Node's messages. The library build's size is printed.
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { type Browser, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Generator, getDevice, mulScalar, noGrad, randn, tidy } from '../runtime/index.ts';
import { LaddBranch } from '../models/controlnet.ts';
import { loadGptModel } from '../models/gpt.ts';
import { Layton, parseLaytonConfig } from '../models/layton.ts';
import { DDPMScheduler } from '../models/schedulers.ts';
import { loadUNet } from '../models/unet.ts';
import { loadVae } from '../models/vae.ts';
import { loadVQModel } from '../models/vq.ts';
import { blobRoot, urlRoot } from '../models/webfiles.ts';
import { modelDir, saveLaytonDir } from '../tools/modeldir.ts';
import { toRgb8 } from '../tools/image.ts';
import { decode, encode, prepareFile } from '../tools/reconstruct.ts';
import { type LaytonGen, generateWith, openLaytonGen } from '../tools/laytongen/generate.ts';
import { trainLaytonGen } from '../tools/laytongen/train.ts';
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
const tmp = mkdtempSync(join(tmpdir(), 'browser-'));
const root = join(tmp, 'root');

let browser: Browser;
let server: Awaited<ReturnType<typeof serveStatic>>;
let m: LaytonGen;

/** The tiny LaytonGen root; the control branch's zero convs made non-zero so the tokens reach the decode. */
async function tinyRoot(): Promise<void> {
  const unet = await loadUNet(await fixture('unet_small'));
  const branch = LaddBranch.fromUnet(unet, { codeDim: 8, upsampleFactor: 2, conditioningEmbeddingOutChannels: [8, 16], conditioningEmbeddingStride: 1 });
  const layton = new Layton(parseLaytonConfig({ image_size: 32, tokenizer_size: 16 }), await loadVQModel(await fixture('vq_small_st')), unet, branch.controlnet, await loadVae(await fixture('vae_small')), new DDPMScheduler());
  const g = new Generator(5);
  noGrad(() => {
    for (const [k, p] of layton.controlnet.namedParameters())
      if (k.startsWith('controlnet_') || k.startsWith('controlnet_cond_embedding.conv_out')) tidy(() => layton.controlnet.loadStateDict({ [k]: mulScalar(randn(p.shape, { generator: g }), 0.3) }, false));
  });
  await saveLaytonDir(root, layton);
  layton.dispose();
  const tiny = { trainImages: 8, heldoutImages: 4, checkpointEvery: 2, lr: 1e-2, warmup: 0, gpt: { dim: 32, n_layer: 1, n_head: 2, multiple_of: 32, vocab_size: 64 }, t5: { d_model: 32, d_kv: 8, d_ff: 64, num_layers: 1, num_heads: 4 } };
  await trainLaytonGen({ root, steps: 2, batch: 4, seed: 3, log: () => {} }, tiny);
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
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(server.url);
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
    expect(errors).toEqual([]);
    await page.close();
  });

  it('loads a model root over HTTP, reconstructs and generates as Node does; Cancel stops a generation', async () => {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(server.url);
    const t0 = performance.now();
    expect(await page.evaluate(() => window.layton.load('model/'))).toBe(`${server.url}model`);
    const tLoad = performance.now() - t0;
    // reconstruction of a PNG (decoded by Chromium there, by pngjs here), seed 7, 1 step
    const web = await page.evaluate((bytes) => window.layton.reconstruct(bytes, 7), Array.from(readFileSync(IMAGE)));
    const prepared = await prepareFile(IMAGE, m.layton.config);
    const tokens = await encode(m.layton, [prepared.small]);
    const [image] = await decode(m.layton, tokens, [8, 8], 1, new Generator(7));
    expect(web.tokens).toEqual(Array.from(tokens[0]));
    const px = toRgb8(image).data;
    const levels = Math.max(...web.pixels.map((v, i) => Math.abs(v - px[i])));
    // seeded generation: the tokens of Node's generateWith
    const t1 = performance.now();
    const gen = await page.evaluate(() => window.layton.generate('a red circle left of a blue square', 11, 2));
    const tGen = performance.now() - t1;
    const node = await generateWith(m, { captions: ['a red circle left of a blue square'], seed: 11, cfg: 2 });
    expect(gen.tokens).toEqual(Array.from(node.tokens[0]));
    const genLevels = Math.max(...gen.pixels.map((v, i) => Math.abs(v - toRgb8(node.images[0]).data[i])));
    console.log(`browser: load ${tLoad.toFixed(0)} ms; reconstruction tokens equal Node's (${web.tokens.length}), pixels within ${levels} of 255 ` +
      `(PSNR ${web.psnr.toFixed(3)} dB); generation ${tGen.toFixed(0)} ms, ${gen.tokens.length} tokens equal Node's, image within ${genLevels} of 255`);
    expect(levels).toBeLessThanOrEqual(1);
    expect(genLevels).toBeLessThanOrEqual(1);
    await page.screenshot({ path: join(OUT, 'browser-demo.png'), fullPage: true });
    expect(statSync(join(OUT, 'browser-demo.png')).size).toBeGreaterThan(1000);
    // Cancel, pressed as soon as the generation starts
    const cancelled = await page.evaluate(async () => {
      const run = window.layton.generate('a green square', 1, 2);
      document.getElementById('gen-cancel')!.click();
      return run.then(() => 'finished', (e: Error) => `${e.message}; page says ${document.getElementById('gen-status')!.textContent}`);
    });
    expect(cancelled).toBe('cancelled; page says cancelled');
    expect(errors).toEqual([]);
    await page.close();
  });
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
