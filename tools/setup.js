#!/usr/bin/env node
// Makes a fresh machine ready: npm dependencies, and a WebGPU adapter. Where Dawn finds no
// adapter (no GPU, no usable Vulkan driver) on Debian 12 as root, installs Mesa 25's
// software Vulkan driver (lavapipe) from bookworm-backports; Debian 12's own Mesa 22 is too
// old for Dawn. With --browser (the tests' set-up) also Debian's chromium, which the browser
// test drives. Set LAYTON_NO_SYSTEM_INSTALL=1 to forbid the apt steps.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const log = (m) => process.stderr.write(`[setup] ${m}\n`);

function ensureNodeModules() {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  const wanted = Object.keys({ ...pkg.dependencies, ...pkg.devDependencies });
  const missing = wanted.filter((n) => !existsSync(join(root, 'node_modules', n, 'package.json')));
  if (!missing.length) return;
  log(`installing npm dependencies (npm ci; missing: ${missing.join(', ')})`);
  execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: root, stdio: 'inherit' });
}

function probeAdapter() {
  // A child process: Dawn caches the (missing) Vulkan driver list per process.
  const code = `
    const { create, globals } = await import('webgpu');
    Object.assign(globalThis, globals);
    const a = await create([]).requestAdapter();
    if (!a) process.exit(3);
    console.log([a.info.vendor, a.info.architecture, a.info.device, a.info.description].filter(Boolean).join(' '));
    process.exit(0);`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp' },
  });
  return r.status === 0 ? r.stdout.trim() || 'unknown adapter' : null;
}

const HELP =
  "No WebGPU adapter. On Debian 12 without a GPU: add 'deb http://deb.debian.org/debian bookworm-backports main' to " +
  "/etc/apt/sources.list.d/backports.list, then 'apt-get update && apt-get install -y -t bookworm-backports mesa-vulkan-drivers' " +
  '(Mesa 25 lavapipe; Debian 12 Mesa 22 is rejected by Dawn). With a GPU: install its Vulkan driver.';

const mayApt = () =>
  existsSync('/etc/debian_version') && readFileSync('/etc/debian_version', 'utf8').startsWith('12') &&
  process.getuid?.() === 0 && process.env.LAYTON_NO_SYSTEM_INSTALL !== '1';

function installLavapipe() {
  if (!mayApt()) {
    log(HELP);
    process.exit(1);
  }
  log('no WebGPU adapter: installing Mesa 25 lavapipe from bookworm-backports');
  const list = '/etc/apt/sources.list.d/backports.list';
  if (!existsSync(list)) writeFileSync(list, 'deb http://deb.debian.org/debian bookworm-backports main\n');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  execFileSync('apt-get', ['update', '-q'], { stdio: 'inherit', env });
  execFileSync('apt-get', ['install', '-y', '-q', '-t', 'bookworm-backports', 'mesa-vulkan-drivers'], { stdio: 'inherit', env });
}

ensureNodeModules();
let adapter = probeAdapter();
if (!adapter) {
  installLavapipe();
  adapter = probeAdapter();
  if (!adapter) {
    log(HELP);
    process.exit(1);
  }
}
log(`WebGPU adapter: ${adapter}`);

if (process.argv.includes('--browser') && !existsSync('/usr/bin/chromium')) {
  if (!mayApt()) {
    log("the browser test needs Debian's chromium at /usr/bin/chromium: 'apt-get install chromium'");
    process.exit(1);
  }
  log("installing Debian's chromium for the browser test");
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  execFileSync('apt-get', ['update', '-q'], { stdio: 'inherit', env });
  execFileSync('apt-get', ['install', '-y', '-q', 'chromium'], { stdio: 'inherit', env });
}
