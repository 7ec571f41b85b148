// The Layton commands end to end, as a user runs them (subprocesses of tools/bin/layton-run.js)
// on a tiny random Layton folder: reconstruct (PNG and JPEG input), encode -> decode round
// trips through both token formats, eval reconstruction, --help, and one-line errors.
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Generator, f16ToF32, f32ToF16, getDevice, mulScalar, noGrad, randn, tidy } from '../runtime/index.ts';
import { openSafetensors, saveSafetensors } from '../runtime/platform/node-fs.ts';
import { LaddBranch } from '../models/controlnet.ts';
import { Layton, parseLaytonConfig } from '../models/layton.ts';
import { DDPMScheduler } from '../models/schedulers.ts';
import { loadUNet, unetConfigJson } from '../models/unet.ts';
import { loadVae } from '../models/vae.ts';
import { loadVQModel } from '../models/vq.ts';
import { loadImage, readImage, toImage } from '../tools/image.ts';
import { psnr, ssim } from '../tools/metrics.ts';
import { modelDir, saveLaytonDir, saveModelDir } from '../tools/modeldir.ts';
import { DEFAULT_MODEL } from '../tools/reconstruct.ts';
import { expectOneLineError, runCli } from './helpers/cli.ts';

const tmp = mkdtempSync(join(tmpdir(), 'layton-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const model = join(tmp, 'model');
const root = join(tmp, 'root');
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const PNG = fixture('image_input.png');
const JPG = join(tmp, 'photo.jpg'); // a second name: outputs are named by the input's stem

const run = runCli;

const pixels = async (path: string) => toImage(await readImage(path));

/** The random parts of test/layton.test.ts (32 px images, 16 px tokenizer copy, 8x8 tokens of a 64-code book), with the branch's zero convs woken so tokens matter. */
beforeAll(async () => {
  await getDevice();
  const unet = await loadUNet(await modelDir(fixture('unet_small')));
  const branch = LaddBranch.fromUnet(unet, { codeDim: 8, upsampleFactor: 2, conditioningEmbeddingOutChannels: [8, 16], conditioningEmbeddingStride: 1 });
  const m = new Layton(parseLaytonConfig({ image_size: 32, tokenizer_size: 16 }), await loadVQModel(await modelDir(fixture('vq_small_st'))), unet, branch.controlnet,
    await loadVae(await modelDir(fixture('vae_small'))), new DDPMScheduler());
  const g = new Generator(5);
  noGrad(() => {
    for (const [k, p] of m.controlnet.namedParameters())
      if (k.startsWith('controlnet_') || k.startsWith('controlnet_cond_embedding.conv_out')) tidy(() => m.controlnet.loadStateDict({ [k]: mulScalar(randn(p.shape, { generator: g }), 0.3) }, false));
  });
  writeFileSync(JPG, readFileSync(fixture('image_input.jpg')));
  await saveLaytonDir(model, m);
  // a trained root as `train layton` leaves it: the decoder's UNet in unet-consistency/, the LDM (here: perturbed) in unet/
  cpSync(model, root, { recursive: true });
  renameSync(join(root, 'unet'), join(root, 'unet-consistency'));
  tidy(() => m.unet.loadStateDict({ 'conv_in.weight': mulScalar(m.unet.stateDict()['conv_in.weight'], -1) }, false));
  await saveModelDir(join(root, 'unet'), unetConfigJson(m.unet.config), m.unet);
  // the same root without unet-consistency/ decodes with the perturbed unet/: the control case
  cpSync(root, join(tmp, 'ldm-only'), { recursive: true });
  rmSync(join(tmp, 'ldm-only', 'unet-consistency'), { recursive: true });
  m.dispose();
});

const oneLineError = expectOneLineError;

describe('layton-run reconstruct / encode / decode', () => {
  it('reconstructs a PNG and a JPEG; the printed PSNR / SSIM are those of the written files; encode -> decode gives the same image', async () => {
    const out = join(tmp, 'rec');
    const [r, human, encJson, encSt] = await Promise.all([
      run('reconstruct', PNG, JPG, '--model', model, '--out', out, '--steps', '2', '--seed', '3', '--json'),
      run('reconstruct', PNG, '--model', model, '--out', join(tmp, 'rec1'), '--steps', '2', '--seed', '4'),
      run('encode', PNG, '--model', model, '--out', join(tmp, 'tok', 'a.tokens.json')),
      run('encode', PNG, '--model', model, '--out', join(tmp, 'tok', 'a.safetensors')),
    ]);
    expect(r.status, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout);
    expect([res.steps, res.seed, res.image_size]).toEqual([2, 3, 32]);
    expect(res.images.map((i: { output: string }) => i.output)).toEqual([join(out, 'image_input.png'), join(out, 'photo.png')]);
    for (const [k, input] of [PNG, JPG].entries()) {
      const e = res.images[k];
      const target = await loadImage(input, 32);
      const [img, vq] = [await pixels(e.output), await pixels(e.vq_output)];
      expect([img.width, img.height, vq.width, vq.height]).toEqual([32, 32, 32, 32]);
      for (const v of [e.psnr, e.ssim, e.vq_psnr, e.vq_ssim]) expect(Number.isFinite(v)).toBe(true);
      expect(e.psnr).toBe(psnr(img, target));
      expect(e.ssim).toBe(ssim(img, target));
      expect(e.vq_psnr).toBe(psnr(vq, target));
      expect(e.vq_ssim).toBe(ssim(vq, target));
      expect(e.vq_psnr).not.toBe(e.psnr); // two different decoders
    }
    // the human-readable form: one line per image (another seed here: another image, the same VQ decode)
    expect(human.status, human.stderr).toBe(0);
    const m = human.stdout.match(/^\S+image_input\.png -> \S+image_input\.png {2}PSNR (\S+) dB {2}SSIM (\S+) {2}\(VQ decoder: PSNR (\S+) dB {2}SSIM (\S+)\)\n$/);
    expect(m, human.stdout).not.toBeNull();
    const other = await pixels(join(tmp, 'rec1', 'image_input.png'));
    expect(Number(m![1])).toBeCloseTo(psnr(other, await loadImage(PNG, 32)), 2);
    expect(Array.from(other.data)).not.toEqual(Array.from((await pixels(res.images[0].output)).data));
    expect(Number(m![3])).toBeCloseTo(res.images[0].vq_psnr, 2); // same tokens, same VQ decode

    // encode: JSON and safetensors hold the same 8x8 grid of codebook ids
    expect(encJson.status, encJson.stderr).toBe(0);
    expect(encSt.status, encSt.stderr).toBe(0);
    const j = JSON.parse(readFileSync(join(tmp, 'tok', 'a.tokens.json'), 'utf8'));
    expect([j.model, j.grid, j.tokens.length]).toEqual([model, [8, 8], 64]);
    expect(j.tokens.every((t: number) => Number.isInteger(t) && t >= 0 && t < 64)).toBe(true);
    expect(new Set(j.tokens).size).toBeGreaterThan(1);
    const f = await openSafetensors(join(tmp, 'tok', 'a.safetensors'));
    expect([f.info('tokens').dtype, f.info('tokens').shape, f.metadata.grid]).toEqual(['I32', [1, 8, 8], '[8,8]']);
    expect(Array.from(await f.readI32('tokens'))).toEqual(j.tokens);
    await f.source.close?.();

    // decode with the reconstruction's seed and steps: the same image
    const [dJson, dSt, fromRoot, ldmOnly] = await Promise.all([
      run('decode', join(tmp, 'tok', 'a.tokens.json'), '--model', model, '--steps', '2', '--seed', '3', '--out', join(tmp, 'dec', 'a.png')),
      run('decode', join(tmp, 'tok', 'a.safetensors'), '--model', model, '--steps', '2', '--seed', '3', '--out', join(tmp, 'dec', 'b.png')),
      // a trained root decodes with its unet-consistency/ (the same UNet as model/unet), not its unet/
      run('decode', join(tmp, 'tok', 'a.safetensors'), '--model', root, '--steps', '2', '--seed', '3', '--out', join(tmp, 'dec', 'd.png')),
      run('decode', join(tmp, 'tok', 'a.safetensors'), '--model', join(tmp, 'ldm-only'), '--steps', '2', '--seed', '3', '--out', join(tmp, 'dec', 'e.png')),
    ]);
    for (const d of [dJson, dSt, fromRoot, ldmOnly]) expect(d.status, d.stderr).toBe(0);
    const rec = await readImage(join(out, 'image_input.png'));
    expect(Array.from((await readImage(join(tmp, 'dec', 'a.png'))).data)).toEqual(Array.from(rec.data));
    expect(Array.from((await readImage(join(tmp, 'dec', 'b.png'))).data)).toEqual(Array.from(rec.data));
    expect(Array.from((await readImage(join(tmp, 'dec', 'd.png'))).data)).toEqual(Array.from(rec.data));
    expect(Array.from((await readImage(join(tmp, 'dec', 'e.png'))).data)).not.toEqual(Array.from(rec.data));
  });
});

describe('layton-run eval reconstruction', () => {
  it('prints the metrics of Layton 1- and 2-step and of the VQ decoder as JSON', async () => {
    const r = await run('eval', 'reconstruction', '--model', model, '--json', '--n', '4', '--batch', '3');
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    for (const k of ['psnr', 'ssim', 'psnr_2step', 'ssim_2step', 'vq_psnr', 'vq_ssim', 'seconds']) expect(Number.isFinite(j[k]), k).toBe(true);
    for (const k of ['ssim', 'ssim_2step', 'vq_ssim']) expect(Math.abs(j[k])).toBeLessThanOrEqual(1);
    expect([j.n, j.image_size, j.tokens]).toEqual([4, 32, 64]);
    expect(j.psnr_2step).not.toBe(j.psnr);
    expect(r.stderr).toMatch(/eval reconstruction: 3\/4 images.*\n.*4\/4 images/);
  });
});

describe('layton-run: bad input and --help', () => {
  it('fails in one line naming the bad image, model folder, token file or argument', async () => {
    const notImage = join(tmp, 'notes.png');
    writeFileSync(notImage, 'not an image');
    const tokens = (name: string, grid: number[], tokens: number[]) => {
      const p = join(tmp, name);
      writeFileSync(p, JSON.stringify({ grid, tokens }));
      return p;
    };
    const smallGrid = tokens('grid.json', [4, 4], Array(16).fill(1));
    const outOfRange = tokens('range.json', [8, 8], Array.from({ length: 64 }, (_, i) => (i === 5 ? 64 : 0)));
    const emptyRoot = join(tmp, 'empty-root');
    mkdirSync(emptyRoot);
    writeFileSync(join(emptyRoot, 'layton.json'), '{}');
    const stGrid = join(tmp, 'grid.safetensors');
    await saveSafetensors(stGrid, { tokens: { dtype: 'I32', shape: [1, 4, 8], data: new Int32Array(32) } });
    const cases: [string[], RegExp][] = [
      [['reconstruct', join(tmp, 'missing.png'), '--model', model], /missing\.png: no such file$/],
      [['reconstruct', notImage, '--model', model], /notes\.png: not a PNG or JPEG image$/],
      [['reconstruct', PNG, fixture('image_input.jpg'), '--model', model], /image_input\.jpg: would overwrite the output of .*image_input\.png/],
      [['reconstruct', PNG, '--model', join(tmp, 'nope')], /nope: no such model folder$/],
      [['encode', PNG, '--model', fixture('vae_small')], /vae_small: not a Layton model folder \(no layton\.json/],
      [['encode', PNG, '--model', model, '--out', join(tmp, 'x.txt')], /--out .*x\.txt: token files end in \.json or \.safetensors/],
      [['decode', smallGrid, '--model', model], /grid\.json: a 4x4 token grid, but the model in .* decodes 8x8$/],
      [['decode', stGrid, '--model', model], /grid\.safetensors: a 4x8 token grid, but the model in .* decodes 8x8$/],
      [['decode', outOfRange, '--model', model], /range\.json: token 5 is 64, outside the codebook \[0, 64\)/],
      [['decode', join(tmp, 'none.json'), '--model', model], /none\.json: no such token file$/],
      [['decode', notImage, '--model', model], /notes\.png: not a token file/],
      [['eval', 'reconstruction', '--model', model, '--n', '0'], /--n must be a positive integer, got 0$/],
      [['train', 'vae', '--steps', '-3', '--out', join(tmp, 'train')], /--steps must be a positive integer, got -3$/],
      [['train', 'laytongen', '--out', emptyRoot], /empty-root\/vq: no such model folder \(run `layton-run train vq` with this --out first\)$/],
      [['demo', '--model', join(tmp, 'nope')], /nope: no such model folder$/],
      [['demo', '--model', model, '--images', '0'], /--images must be a positive integer, got 0$/],
      [['demo', '--model', model], /gpt.*no such model folder|no such model folder.*gpt/],
    ];
    if (!existsSync(DEFAULT_MODEL)) cases.push([['reconstruct', PNG], /default model has not been trained yet; make it with `layton-run train layton`/]);
    const results = await Promise.all(cases.map(([args]) => run(...args)));
    results.forEach((r, i) => oneLineError(r, cases[i][1]));
  });

  it('names the tensor of a checkpoint whose shape does not match its config', async () => {
    const bad = join(tmp, 'bad-model');
    cpSync(model, bad, { recursive: true });
    const vqConfig = JSON.parse(readFileSync(join(model, 'vq', 'config.json'), 'utf8'));
    writeFileSync(join(bad, 'vq', 'config.json'), JSON.stringify({ ...vqConfig, codebook_size: 32 }));
    const r = await run('reconstruct', PNG, '--model', bad, '--out', join(tmp, 'never'));
    expect(r.status).toBe(1);
    const last = r.stderr.trim().split('\n').at(-1)!;
    expect(last).toMatch(/^layton-run: .*bad-model\/vq.*quantize\.embedding\.weight/);
    expect(existsSync(join(tmp, 'never'))).toBe(false);
  });

  it('exports a trained root: the distilled UNet as unet/, f16 weights, the same reconstructions within f16 rounding', async () => {
    const exp = join(tmp, 'exported');
    const r = await run('export', root, '--out', exp);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/exported: \d+\.\d\d MiB of weights \(f16\)/);
    expect(existsSync(join(exp, 'unet-consistency'))).toBe(false);
    const [src, dst] = [await openSafetensors(join(root, 'unet-consistency', 'diffusion_pytorch_model.safetensors')), await openSafetensors(join(exp, 'unet', 'diffusion_pytorch_model.safetensors'))];
    expect(dst.keys()).toEqual(src.keys());
    for (const k of src.keys()) {
      expect(dst.info(k).dtype, k).toBe('F16');
      expect(Array.from(await dst.readF32(k)), k).toEqual(Array.from(f16ToF32(f32ToF16(await src.readF32(k)))));
    }
    await Promise.all([src.close(), dst.close()]);
    const [a, b] = await Promise.all(['root', 'exp'].map((n) => run('reconstruct', PNG, '--model', n === 'root' ? root : exp, '--out', join(tmp, `rec-${n}`))));
    expect(a.status, a.stderr).toBe(0);
    expect(b.status, b.stderr).toBe(0);
    const [pa, pb] = [await pixels(join(tmp, 'rec-root', 'image_input.png')), await pixels(join(tmp, 'rec-exp', 'image_input.png'))];
    const worst = pa.data.reduce((m, v, i) => Math.max(m, Math.abs(v - pb.data[i])), 0);
    console.log(`exported (f16) vs trained root: worst pixel difference ${(worst * 255).toFixed(2)}/255`);
    expect(worst).toBeLessThanOrEqual(3 / 255);
    const bad = await run('export', join(tmp, 'nope'), '--out', join(tmp, 'never'));
    oneLineError(bad, /nope: no such model root/);
    expect(existsSync(join(tmp, 'never'))).toBe(false);
  });

  it('prints --help for every command', async () => {
    const cmds = [[], ['reconstruct'], ['encode'], ['decode'], ['eval', 'reconstruction'], ['train'], ['generate'], ['eval', 'geneval'], ['inspect'], ['forward'], ['doctor'], ['export'], ['demo']];
    const results = await Promise.all(cmds.map((c) => run(...c, '--help')));
    results.forEach((r, i) => {
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain(`layton-run ${cmds[i].join(' ')}`.trim());
    });
    expect(results[4].stdout).toMatch(/LPIPS and rFID are\s+not\s+available/);
    expect(results[5].stdout).toMatch(/vae -> ldm -> consistency -> vq -> layton-stage1\s+-> layton-stage2/);
    expect(results[5].stdout).toMatch(/laytongen/);
    for (const flag of ['--cfg', '--top-k', '--top-p', '--temperature', '--seed', ' -n ', '--steps', '--out']) expect(results[6].stdout).toContain(flag);
  });
});
