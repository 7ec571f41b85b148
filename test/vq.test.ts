// The LlamaGen VQ tokenizer against LlamaGen's own vq_model.py (test/fixtures/gen_vq.py, float64):
// VQ-16's key/shape list and parameter count in meta mode; a small random model loaded from a
// LlamaGen torch.save checkpoint and from safetensors: encoder features, quantised features,
// code ids (exact), reconstruction, decode from codes, the quantiser's losses and codebook
// usage, and the gradients of reconstruction + VQ losses w.r.t. the image and weights; an
// attention block wider than the fused kernel; the preprocessing of an image file; a hostile
// .pt in a model folder refused without running it.
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { maxRelError } from './ref/cpu.ts';
import { type Tensor, add, buildMeta, mul, noGrad, seededRandom, sum, tensor, tidy } from '../runtime/index.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { AttnBlock, CodebookUsage, VQModel, loadVQModel, parseVQConfig, vqConfigJson, vqKind } from '../models/vq.ts';
import { modelDir } from '../tools/modeldir.ts';
import { imagesToTensor, loadImage } from '../tools/image.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const file = await openSafetensors(fixture('vq_small.safetensors'));
const f32 = (k: string) => file.readF32(k);
const input = async (k: string) => tensor(await f32(k), file.info(k).shape);

const noteWorst = errorReport();
async function expectClose(group: string, got: Tensor, want: ArrayLike<number>, rtol = 1e-4): Promise<void> {
  expect(got.size, group).toBe(want.length);
  const err = noteWorst(group, maxRelError(await got.data(), want));
  expect(err, group).toBeLessThanOrEqual(rtol);
}

const loadSmall = async (folder: 'vq_small_pt' | 'vq_small_st'): Promise<VQModel> => loadVQModel(await modelDir(fixture(folder)));

describe('VQ-16 shapes', () => {
  it("meta build lists VQ_16()'s parameters in order: 71,883,403 over 343 tensors", () => {
    const want = JSON.parse(readFileSync(fixture('vq16_keys.json'), 'utf8')) as { parameters: number; keys: [string, number[]][]; buffers: [string, number[]][] };
    const explicit = {
      _class_name: 'VQModel', codebook_size: 16384, codebook_embed_dim: 8, codebook_l2_norm: true, codebook_show_usage: true, commit_loss_beta: 0.25,
      entropy_loss_ratio: 0.0, encoder_ch_mult: [1, 1, 2, 2, 4], decoder_ch_mult: [1, 1, 2, 2, 4], z_channels: 256, dropout_p: 0.0,
    };
    for (const json of [{}, { vq_model: 'VQ-16' }, explicit]) {
      const m = buildMeta(() => vqKind.build(vqKind.parseConfig(json)));
      expect(Object.entries(m.stateShapes())).toEqual(want.keys);
      expect(m.parameterCount()).toBe(71_883_403);
      m.dispose();
    }
    expect(want.parameters).toBe(71_883_403);
    expect(want.keys.length).toBe(343);
    // the checkpoint's one buffer is dropped by renameKey, everything else passes through
    expect(want.buffers).toEqual([['quantize.codebook_used', [65536]]]);
    expect(want.buffers.map(([k]) => vqKind.renameKey!(k))).toEqual([null]);
    expect(want.keys.every(([k]) => vqKind.renameKey!(k) === k)).toBe(true);
  });

  it('presets, config round trip and errors naming the field', () => {
    const vq8 = parseVQConfig({ vq_model: 'VQ-8' });
    expect(vq8.encoderChMult).toEqual([1, 2, 2, 4]);
    const m8 = buildMeta(() => vqKind.build(vq8));
    expect(Object.keys(m8.stateShapes()).some((k) => k.startsWith('encoder.conv_blocks.4'))).toBe(false);
    m8.dispose();
    const small = parseVQConfig(JSON.parse(readFileSync(fixture('vq_small_pt/config.json'), 'utf8')));
    expect(small).toMatchObject({ ch: 32, numResBlocks: 1, codebookSize: 64, entropyLossRatio: 0.1, encoderChMult: [1, 2] });
    expect(parseVQConfig(vqConfigJson(small))).toEqual(small);
    expect(vqKind.toJson(small)).toMatchObject({ _class_name: 'VQModel', codebook_l2_norm: true, ch: 32, num_res_blocks: 1 });
    expect(() => parseVQConfig({ vq_model: 'VQ-32' }, 'x/config.json')).toThrow(/x\/config.json: "vq_model" must be one of "VQ-16", "VQ-8"/);
    expect(() => parseVQConfig({ codebook_l2_norm: false })).toThrow(/"codebook_l2_norm" false is not supported/);
    expect(() => parseVQConfig({ dropout_p: 0.1 })).toThrow(/"dropout_p" must be 0/);
    expect(() => parseVQConfig({ ch: 48 })).toThrow(/"ch" \(48\) must be a multiple of 32/);
    expect(() => parseVQConfig({ decoder_ch_mult: [1, 0] })).toThrow(/"decoder_ch_mult" must list one multiplier >= 1 per resolution level, got \[1, 0\]/);
    expect(() => parseVQConfig({ codebook_size: 0 })).toThrow(/"codebook_size" must be an integer >= 1/);
  });
});

describe('small VQ vs LlamaGen', () => {
  it('the .pt checkpoint and the safetensors folder load the same weights (codebook_used dropped)', async () => {
    const [a, b] = [await loadSmall('vq_small_pt'), await loadSmall('vq_small_st')];
    expect(a.parameterCount()).toBe(720_907);
    const sb = b.stateDict();
    for (const [k, t] of Object.entries(a.stateDict())) expect(Array.from(await t.data()), k).toEqual(Array.from(await sb[k].data()));
    a.dispose();
    b.dispose();
  });

  it('encode (h, quant, indices exact), decode, decodeCode, losses and codebook usage', async () => {
    const m = await loadSmall('vq_small_pt');
    const x = await input('x');
    const e = noGrad(() => m.encode(x));
    await expectClose('encoder features h', e.h, await f32('h'));
    await expectClose('quantised features', e.quant, await f32('quant'));
    expect(e.indices.dtype).toBe('i32');
    expect(e.indices.shape).toEqual([2, 16, 16]);
    const ids = await e.indices.data();
    expect(Array.from(ids)).toEqual(Array.from(await file.readI32('indices')));
    const dec = noGrad(() => m.decode(e.quant));
    await expectClose('decoded image', dec, await f32('dec'));
    const fromCodes = noGrad(() => m.decodeCode(e.indices));
    await expectClose('decodeCode', fromCodes, await f32('dec'));
    // LlamaGen's decode_code(flat ids, shape [B, C, h, w])
    const flat = tensor(ids, [512], 'i32');
    const fromFlat = noGrad(() => m.decodeCode(flat, [2, 8, 16, 16]));
    await expectClose('decodeCode', fromFlat, await f32('dec'));
    expect(() => m.decodeCode(flat)).toThrow(/indices \[512\] must be \[B, h, w\]/);
    expect(() => m.decodeCode(flat, [2, 4, 16, 16])).toThrow(/shape \[2, 4, 16, 16\] must be \[B, 8, h, w\]/);
    for (const [name, key] of [['vqLoss', 'vq_loss'], ['commitLoss', 'commit_loss'], ['entropyLoss', 'entropy_loss']] as const)
      await expectClose(`loss ${key}`, e.losses[name]!, await f32(key));
    expect(new CodebookUsage(64).update(ids)).toBe((await f32('codebook_usage'))[0]);
    // entropy_loss_ratio 0 (ModelArgs' default): no entropy loss, the other two unchanged
    const plain = new VQModel({ ...m.config, entropyLossRatio: 0 });
    plain.loadStateDict(m.stateDict());
    const e0 = noGrad(() => plain.encode(x));
    expect(e0.losses.entropyLoss).toBeUndefined();
    await expectClose('loss vq_loss', e0.losses.vqLoss, await f32('vq_loss'));
    for (const t of [e0.h, e0.quant, e0.indices, e0.losses.vqLoss, e0.losses.commitLoss]) t.dispose();
    plain.dispose();
    const gray = tensor(new Float32Array(32), [2, 1, 4, 4]);
    expect(() => m.encode(gray)).toThrow(/x must be images \[B, 3, H, W\]/);
    for (const t of [x, e.h, e.quant, e.indices, e.losses.vqLoss, e.losses.commitLoss, e.losses.entropyLoss!, dec, fromCodes, flat, fromFlat, gray]) t.dispose();
    m.dispose();
  });

  it('gradients of sum(dec * gy) + vq + commit + entropy losses w.r.t. the image and weights (straight-through)', async () => {
    const m = await loadSmall('vq_small_st');
    const x = (await input('x')).requireGrad();
    const gy = await input('gy');
    const { dec, losses } = m.forward(x);
    const loss = tidy(() => add(add(add(sum(mul(dec, gy)), losses.vqLoss), losses.commitLoss), losses.entropyLoss!));
    loss.backward();
    await expectClose('grad x', x.grad!, await f32('grad.x'));
    const sd = m.stateDict();
    const keys = file.keys().filter((k) => k.startsWith('grad.') && k !== 'grad.x').map((k) => k.slice(5));
    expect(keys.length).toBe(14);
    for (const k of keys) await expectClose(`grad ${k}`, sd[k].grad!, await f32(`grad.${k}`));
    for (const t of [x, gy, dec, loss, losses.vqLoss, losses.commitLoss, losses.entropyLoss!]) t.dispose();
    m.dispose();
  });

  it("the kind's forward: h, quant, indices and dec", async () => {
    const m = (await loadSmall('vq_small_pt')).setTrainable(false);
    const x = await input('x');
    const out = await vqKind.forward(m, { sample: x }, m.config);
    expect(Object.keys(out).sort()).toEqual(['dec', 'h', 'indices', 'quant']);
    await expectClose('decoded image', out.dec, await f32('dec'));
    expect(Array.from(await out.indices.data())).toEqual(Array.from(await file.readI32('indices')));
    for (const t of [x, ...Object.values(out)]) t.dispose();
    await expect(async () => vqKind.forward(m, {}, m.config)).rejects.toThrow(/missing input 'sample'/);
    m.dispose();
  });

  it('image file -> model input as vq_demo.py (center_crop_arr, / 255, 2x - 1)', async () => {
    const x = imagesToTensor([await loadImage(fixture('image_input.png'), 32)]);
    await expectClose('preprocessed image', x, (await f32('x')).subarray(0, 3 * 32 * 32), 1e-6);
    x.dispose();
  });
});

describe('AttnBlock wider than the fused attention kernel', () => {
  it('288 channels (explicit scores): output and gradients vs LlamaGen', async () => {
    // the fixture's weights: one mulberry32(7) stream over named_parameters, U(-0.06, 0.06), norm weight + 1
    const blk = new AttnBlock(288);
    const r = seededRandom(7);
    for (const [name, p] of blk.namedParameters()) {
      const v = Float32Array.from({ length: p.size }, () => -0.06 + 0.12 * r() + (name === 'norm.weight' ? 1 : 0));
      const t = tensor(v, p.shape);
      blk.loadStateDict({ [name]: t }, false);
      t.dispose();
    }
    const x = (await input('attn288.x')).requireGrad();
    const gy = await input('attn288.gy');
    const y = blk.forward(x);
    await expectClose('attn288 forward', y, await f32('attn288.y'));
    y.backward(gy);
    await expectClose('attn288 grad', x.grad!, await f32('attn288.grad.x'));
    const sd = blk.stateDict();
    for (const k of ['norm.weight', 'q.bias', 'v.bias', 'proj_out.bias']) await expectClose('attn288 grad', sd[k].grad!, await f32(`attn288.grad.${k}`));
    for (const t of [x, gy, y]) t.dispose();
    blk.dispose();
  });
});

describe('CodebookUsage', () => {
  it("LlamaGen's window: starts as zeros (code 0 counts), shifts by each step's ids", () => {
    const u = new CodebookUsage(8, 4);
    expect(u.update([5, 6])).toBe(3 / 8); // window [0, 0, 5, 6]
    expect(u.update([7, 7, 1])).toBe(3 / 8); // [6, 7, 7, 1]
    expect(u.update([2, 3, 4, 5, 6])).toBe(4 / 8); // the last 4
    expect(() => u.update([8])).toThrow(/code id 8 is outside \[0, 8\)/);
  });
});

describe('hostile checkpoint', () => {
  it('a model folder whose .pt pickles os.system is refused without running it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vq-hostile-'));
    try {
      writeFileSync(join(dir, 'config.json'), readFileSync(fixture('vq_small_pt/config.json')));
      copyFileSync(fixture('pt_hostile.pt'), join(dir, 'vq_ds16_c2i.pt'));
      rmSync('/tmp/layton-pwned', { force: true });
      await expect(loadVQModel(await modelDir(dir))).rejects.toThrow(/vq_ds16_c2i\.pt.*global posix\.system.*refusing/);
      expect(existsSync('/tmp/layton-pwned')).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
