// `layton-run inspect` and `forward` end to end, as a user runs them: parameter counts of the
// published configs, a forward pass from a model folder and a safetensors file of inputs
// (compared with the same model run in this process), and one-line errors for bad input.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { getDevice, noGrad, randn, Generator } from '../runtime/index.ts';
import { openSafetensors, saveSafetensors } from '../runtime/platform/node-fs.ts';
import { toSafetensorsEntries } from '../runtime/nn.ts';
import { loadVae } from '../models/vae.ts';
import { modelDir } from '../tools/modeldir.ts';

const tmp = mkdtempSync(join(tmpdir(), 'layton-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const run = (...args: string[]) => spawnSync(process.execPath, ['tools/bin/layton-run.js', ...args], { encoding: 'utf8' });

describe('layton-run inspect', () => {
  it('counts the published SDXL UNet and its ControlNet from one config, shape-only', () => {
    const cfg = join(tmp, 'unet.json');
    writeFileSync(cfg, JSON.stringify(JSON.parse(readFileSync('test/fixtures/sdxl_unet_keys.json', 'utf8')).config));
    const unet = run('inspect', cfg, '--json');
    expect(unet.status, unet.stderr).toBe(0);
    const u = JSON.parse(unet.stdout);
    expect([u.kind, u.parameters, Object.keys(u.keys).length]).toEqual(['unet', 2_567_463_684, 1680]);
    expect(u.keys['up_blocks.0.resnets.0.conv1.weight']).toEqual([1280, 2560, 3, 3]);
    const cn = run('inspect', cfg, '--kind', 'controlnet');
    expect(cn.stdout).toMatch(/^controlnet: 1,251,014,160 parameters in 844 tensors/);
  });

  it('lists keys with --keys and names a config it cannot read', () => {
    const r = run('inspect', 'test/fixtures/vq_small_st', '--keys');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/\nquantize\.embedding\.weight \[64, 8\]\n/);
    const bad = join(tmp, 'bad.json');
    writeFileSync(bad, '{"_class_name": "UNet2DConditionModel", "block_out_channels": "wide"}');
    const e = run('inspect', bad);
    expect(e.status).toBe(1);
    expect(e.stderr.trim()).toMatch(/^layton-run: .*bad\.json.*"block_out_channels" must be a list of integers/);
    expect(run('inspect', join(tmp, 'missing')).stderr).toMatch(/missing: no such file or folder/);
  });
});

describe('layton-run forward', () => {
  it('runs a VAE folder on named inputs and writes the outputs the model gives in-process', async () => {
    await getDevice();
    const x = randn([1, 3, 32, 32], { generator: new Generator(1) });
    const inputs = join(tmp, 'in.safetensors');
    await saveSafetensors(inputs, await toSafetensorsEntries({ sample: x }));
    const out = join(tmp, 'out.safetensors');
    const r = run('forward', '--model', 'test/fixtures/vae_small', '--inputs', inputs, '--out', out);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/wrote .*sample/);
    const vae = (await loadVae(await modelDir('test/fixtures/vae_small'))).setTrainable(false);
    const ref = noGrad(() => vae.forward(x));
    const f = await openSafetensors(out);
    expect(Array.from(await f.readF32('sample'))).toEqual(Array.from(await ref.data()));
    await f.source.close?.();
    [x, ref].forEach((t) => t.dispose());
    vae.dispose();
  });

  it('refuses unknown input names and missing folders in one line', async () => {
    const inputs = join(tmp, 'bad-in.safetensors');
    await getDevice();
    const t = randn([1, 3, 32, 32]);
    await saveSafetensors(inputs, await toSafetensorsEntries({ image: t }));
    t.dispose();
    const r = run('forward', '--model', 'test/fixtures/vae_small', '--inputs', inputs, '--out', join(tmp, 'x.safetensors'));
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toMatch(/bad-in\.safetensors: unknown input\(s\) image for --kind vae \(inputs: sample/);
    const m = run('forward', '--model', join(tmp, 'nope'), '--inputs', inputs, '--out', join(tmp, 'x.safetensors'));
    expect(m.stderr.trim()).toMatch(/nope: no such model folder$/);
  });
});
