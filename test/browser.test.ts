// The browser half: the demo page built by Vite (no Node built-ins on its path), opened in
// Debian's Chromium on its software WebGPU adapter, runs the kernels of tools/web/parity.ts;
// the numbers must equal this Node process's run of the same code within 1e-5.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { type Browser, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getDevice } from '../runtime/index.ts';
import { serveStatic } from '../tools/web/serve.ts';
import { parityRun } from '../tools/web/parity.ts';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = [
  '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=native', '--use-angle=vulkan', '--ignore-gpu-blocklist',
  '--disable-gpu-sandbox', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
];
const OUT = 'test/output';

let browser: Browser;
let server: Awaited<ReturnType<typeof serveStatic>>;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run 'npm run setup' (installs Debian's chromium) or 'apt-get install chromium'`);
  execFileSync(process.execPath, ['node_modules/vite/bin/vite.js', 'build', '--logLevel', 'error'], { stdio: 'inherit' });
  server = await serveStatic('dist/demo');
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  mkdirSync(OUT, { recursive: true });
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
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
    await getDevice();
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
    await page.click('#run-parity');
    await page.waitForFunction(() => document.getElementById('parity-out')!.textContent!.includes('kernels in'));
    await page.screenshot({ path: join(OUT, 'browser-demo.png'), fullPage: true });
    expect(statSync(join(OUT, 'browser-demo.png')).size).toBeGreaterThan(1000);
    expect(errors).toEqual([]);
    await page.close();
  });
});
