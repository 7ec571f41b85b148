// AutoencoderKL against diffusers v0.21.4 (test/fixtures/gen_vae.py, float64 references): the
// SDXL VAE's key/shape list and parameter count in meta mode; a small random model loaded from a
// diffusers folder: posterior mean/logvar, reconstruction, gradients w.r.t. the image and
// weights, diffusers' tiled decode; old attention names and 1x1-conv-shaped projections; load
// errors listing the bad keys. Plus the blocks.ts modules the VAE does not use (ResnetBlock2D
// with temb, Transformer2DModel, timestep embeddings) against diffusers, chunked explicit-score
// attention and average-pool downsampling.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { maxRelError } from './ref/cpu.ts';
import {
  Generator, type Module, type Tensor, type TensorToWrite, add, attention, buildMeta, device, concat, mul, noGrad, randn, seededRandom, slice, sum, tensor, tidy, zeros,
} from '../runtime/index.ts';
import { openSafetensors, saveSafetensors } from '../runtime/platform/node-fs.ts';
import { openWeights, readConfig } from '../models/checkpoint.ts';
import {
  Downsample2D, ResnetBlock2D, TimestepEmbedding, Timesteps, Transformer2DModel, legacyAttentionWeights, renameLegacyAttention, scaledDotProductAttention,
} from '../models/blocks.ts';
import { AutoencoderKL, loadVae, parseVaeConfig, vaeConfigJson, vaeDType, vaeKind } from '../models/vae.ts';
import { modelDir } from '../tools/modeldir.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const file = await openSafetensors(fixture('vae_small.safetensors'));
const f32 = (k: string) => file.readF32(k);
const input = async (k: string) => tensor(await f32(k), file.info(k).shape);

const noteWorst = errorReport();
async function expectClose(group: string, got: Tensor, want: ArrayLike<number>, rtol = 1e-4): Promise<void> {
  expect(got.size, group).toBe(want.length);
  const err = noteWorst(group, maxRelError(await got.data(), want));
  expect(err, group).toBeLessThanOrEqual(rtol);
}

const SDXL_VAE = {
  _class_name: 'AutoencoderKL', act_fn: 'silu', block_out_channels: [128, 256, 512, 512], down_block_types: Array(4).fill('DownEncoderBlock2D'),
  in_channels: 3, latent_channels: 4, layers_per_block: 2, norm_num_groups: 32, out_channels: 3, sample_size: 1024, scaling_factor: 0.13025,
  up_block_types: Array(4).fill('UpDecoderBlock2D'), force_upcast: true,
};

const loadSmall = async (): Promise<AutoencoderKL> => loadVae(await modelDir(fixture('vae_small')));

/** A copy of the small model's folder with its weights passed through edit (a temporary folder; remove it after). */
async function editedFolder(edit: (name: string, t: TensorToWrite) => [string, TensorToWrite][]): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'vae-'));
  const src = await openSafetensors(fixture('vae_small/diffusion_pytorch_model.safetensors'));
  const out: Record<string, TensorToWrite> = {};
  for (const k of src.keys()) {
    const info = src.info(k);
    for (const [n, t] of edit(k, { dtype: 'F16', shape: [...info.shape], data: await src.readRaw(k) })) out[n] = t;
  }
  await src.close();
  await saveSafetensors(join(dir, 'diffusion_pytorch_model.safetensors'), out);
  writeFileSync(join(dir, 'config.json'), readFileSync(fixture('vae_small/config.json')));
  return dir;
}

describe('SDXL VAE shapes', () => {
  it("meta build lists diffusers' state dict in order: 83,653,863 parameters over 248 keys", () => {
    const want = JSON.parse(readFileSync(fixture('vae_sdxl_keys.json'), 'utf8')) as { parameters: number; keys: [string, number[]][] };
    const c = vaeKind.parseConfig(SDXL_VAE);
    const m = buildMeta(() => vaeKind.build(c));
    expect(Object.entries(m.stateShapes())).toEqual(want.keys);
    expect(m.parameterCount()).toBe(83_653_863);
    expect(want.parameters).toBe(83_653_863);
    expect(want.keys.length).toBe(248);
    expect(vaeDType(c)).toBe('f32'); // force_upcast
    // a 1024² decode (128² latents) in f32: the widest decoder tensor of a tile, 256 channels at
    // 8x the tile's side, must fit one binding; tiles shrink from diffusers' 128 in steps of 8
    expect(m.downFactor).toBe(8);
    const tile = m.defaultTileLatent();
    const widest = (t: number) => 256 * (8 * t) ** 2 * 4;
    expect(widest(tile)).toBeLessThanOrEqual(device().maxBinding);
    if (tile < 128) expect(widest(tile + 8)).toBeGreaterThan(device().maxBinding);
    m.dispose();
  });

  it('config round trip, defaults and errors naming the field', () => {
    const c = parseVaeConfig(SDXL_VAE);
    expect(c).toMatchObject({ blockOutChannels: [128, 256, 512, 512], scalingFactor: 0.13025, forceUpcast: true, shiftFactor: null, sampleSize: 1024 });
    expect(parseVaeConfig(vaeConfigJson(c))).toEqual(c);
    expect(parseVaeConfig({ ...SDXL_VAE, shift_factor: 0.0609, sample_size: [512, 512] })).toMatchObject({ shiftFactor: 0.0609, sampleSize: 512 });
    // AutoencoderKL's defaults
    expect(parseVaeConfig({})).toMatchObject({ blockOutChannels: [64], layersPerBlock: 1, scalingFactor: 0.18215, forceUpcast: true, sampleSize: 32 });
    expect(() => parseVaeConfig({ ...SDXL_VAE, up_block_types: ['UpDecoderBlock2D'] }, 'v/config.json'))
      .toThrow(/v\/config.json: "up_block_types" has 1 entries but "block_out_channels" 4/);
    expect(() => parseVaeConfig({ ...SDXL_VAE, down_block_types: [...SDXL_VAE.down_block_types.slice(1), 'AttnDownEncoderBlock2D'] }))
      .toThrow(/"down_block_types" entry "AttnDownEncoderBlock2D" is not supported/);
    expect(() => parseVaeConfig({ ...SDXL_VAE, norm_num_groups: 48 })).toThrow(/width 128 does not split into "norm_num_groups" 48/);
    expect(() => parseVaeConfig({ act_fn: 'gelu' })).toThrow(/"act_fn" must be one of "silu"/);
  });
});

describe('small VAE vs diffusers', () => {
  it('posterior mean / logvar and the reconstruction (forward, sample_posterior=False)', async () => {
    const files = await modelDir(fixture('vae_small'));
    const config = vaeKind.parseConfig(await readConfig(files));
    const m = vaeKind.build(config);
    const { weights, close } = await openWeights(files);
    await m.loadWeights(weights);
    await close();
    expect(m.parameterCount()).toBe(150_369);
    const x = await input('x');
    const post = noGrad(() => m.encode(x));
    await expectClose('posterior mean', post.mean, await f32('mean'));
    await expectClose('posterior logvar', post.logvar, await f32('logvar'));
    const dec = noGrad(() => m.forward(x));
    await expectClose('reconstruction', dec, await f32('dec'));
    // the kind's forward: mode without a generator, mean + std·ε with one (ε from the same Philox stream)
    const out = await vaeKind.forward(m, { sample: x }, config);
    expect(Object.keys(out).sort()).toEqual(['latent_dist.logvar', 'latent_dist.mean', 'latents', 'sample']);
    await expectClose('reconstruction', out.sample, await f32('dec'));
    await expectClose('posterior mean', out['latent_dist.mean'], await f32('mean'));
    const seed = tensor([1234], [1], 'i32');
    const sampled = await vaeKind.forward(m, { sample: x, generator: seed }, config);
    const epsT = randn(post.mean.shape, { generator: new Generator(1234) });
    const eps = await epsT.data();
    const [mean, logvar] = [await f32('mean'), await f32('logvar')];
    await expectClose('posterior sample', sampled.latents, mean.map((mu, i) => mu + Math.exp(0.5 * logvar[i]) * eps[i]));
    const decoded = await vaeKind.forward(m, { z: sampled.latents }, config);
    expect(Array.from(await decoded.sample.data())).toEqual(Array.from(await sampled.sample.data()));
    await expect(async () => vaeKind.forward(m, {}, config)).rejects.toThrow(/missing input 'sample'/);
    const odd = zeros([1, 3, 21, 20]);
    expect(() => m.encode(odd)).toThrow(/\[21,20\] must be multiples of 2/);
    for (const t of [x, odd, dec, seed, epsT, ...Object.values(out), ...Object.values(sampled), ...Object.values(decoded)]) t.dispose();
    post.dispose();
    m.dispose();
  });

  it('f16 weights (as on adapters with shader-f16 when force_upcast is off): the same reconstruction to f16 precision', async () => {
    if (!device().hasF16) return;
    const m = await loadVae(await modelDir(fixture('vae_small')), { dtype: 'f16' });
    expect(m.quant_conv.weight.dtype).toBe('f16');
    const x = await input('x');
    const dec = noGrad(() => m.forward(x));
    expect(dec.dtype).toBe('f16');
    await expectClose('reconstruction f16', dec, await f32('dec'), 2e-2);
    for (const t of [x, dec]) t.dispose();
    m.dispose();
  });

  it('gradients of sum(dec · gy) + sum(logvar · gl) w.r.t. the image and weights', async () => {
    const m = await loadSmall();
    const x = (await input('x')).requireGrad();
    const [gy, gl] = [await input('gy'), await input('gl')];
    const post = m.encode(x);
    const dec = m.decode(post.mean);
    const loss = tidy(() => add(sum(mul(dec, gy)), sum(mul(post.logvar, gl))));
    loss.backward();
    await expectClose('grad x', x.grad!, await f32('grad.x'));
    const sd = m.stateDict();
    const keys = file.keys().filter((k) => k.startsWith('grad.') && k !== 'grad.x').map((k) => k.slice(5));
    expect(keys.length).toBe(15);
    for (const k of keys) await expectClose('grad weights', sd[k].grad!, await f32(`grad.${k}`));
    for (const t of [x, gy, gl, dec, loss]) t.dispose();
    post.dispose();
    m.dispose();
  });

  it("decodeTiled blends as diffusers' tiled_decode; one tile covering everything is decode()", async () => {
    const m = (await loadSmall()).setTrainable(false);
    const z = await input('z_tiled');
    expect(m.defaultTileLatent()).toBe(16); // diffusers' tile_latent_min_size (sample_size 32 / 2)
    const tiledOut = m.decodeTiled(z);
    expect(tiledOut.shape).toEqual([1, 3, 48, 48]);
    await expectClose('tiled decode', tiledOut, await f32('tiled'));
    // sliced: a batch of two is decoded one image at a time
    const z2 = concat([z, z], 0);
    const both = m.decodeTiled(z2, { tileLatent: 16, overlap: 0.25 });
    const second = slice(both, 0, 1, 2);
    await expectClose('tiled decode', second, await f32('tiled'));
    const whole = m.decode(z);
    const oneTile = m.decodeTiled(z, { tileLatent: 24, overlap: 0 });
    expect(Array.from(await oneTile.data())).toEqual(Array.from(await whole.data()));
    expect(() => m.decodeTiled(z, { overlap: 1 })).toThrow(/overlap 1 must be in \[0, 1\)/);
    for (const t of [z, tiledOut, z2, both, second, whole, oneTile]) t.dispose();
    m.dispose();
  });
});

describe('checkpoint names and load errors', () => {
  it("old attention names (query/key/value/proj_attn), 1x1-conv-shaped or not, load as diffusers' new ones", async () => {
    const old: Record<string, string> = { to_q: 'query', to_k: 'key', to_v: 'value', 'to_out.0': 'proj_attn' };
    const dir = await editedFolder((k, t) => {
      const m = /^(.*\.attentions\.0)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$/.exec(k);
      if (!m) return [[k, t]];
      // queries and outputs as the LDM conversions store them: [C, C, 1, 1]
      const conv = m[3] === 'weight' && (m[2] === 'to_q' || m[2] === 'to_out.0');
      return [[`${m[1]}.${old[m[2]]}.${m[3]}`, conv ? { ...t, shape: [...t.shape, 1, 1] } : t]];
    });
    try {
      const files = await modelDir(dir);
      const { weights, close } = await openWeights(files);
      const keys = weights.keys();
      expect(keys).toContain('encoder.mid_block.attentions.0.proj_attn.weight');
      expect(weights.shape('decoder.mid_block.attentions.0.query.weight')).toEqual([30, 30, 1, 1]);
      const renamed = legacyAttentionWeights(weights);
      expect(renamed.shape('decoder.mid_block.attentions.0.to_q.weight')).toEqual([30, 30]);
      expect(keys.map((k) => renameLegacyAttention(k)).sort()).toEqual(renamed.keys().sort());
      await close();
      const [a, b] = [await loadVae(files), await loadSmall()];
      const sb = b.stateDict();
      for (const [k, t] of Object.entries(a.stateDict())) expect(Array.from(await t.data()), k).toEqual(Array.from(await sb[k].data()));
      a.dispose();
      b.dispose();
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it('a missing and a mis-shaped key: one error listing both, nothing left allocated', async () => {
    const dir = await editedFolder((k, t) => {
      if (k === 'decoder.conv_out.bias') return [];
      if (k === 'quant_conv.weight') return [[k, { ...t, shape: [8, 8] }]];
      return [[k, t]];
    });
    try {
      await expect(loadVae(await modelDir(dir))).rejects.toThrow(
        /AutoencoderKL\.loadWeights from .*diffusion_pytorch_model\.safetensors: missing keys \[decoder\.conv_out\.bias\]; 'quant_conv\.weight' is \[8,8\] in the source but \[8,8,1,1\] in the module/);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});

/** Loads the fixture's `<prefix>.w.*` tensors into m (strict: diffusers' names exactly). */
async function loadPrefixed(m: Module, prefix: string): Promise<void> {
  const names = file.keys().filter((k) => k.startsWith(`${prefix}.w.`));
  const sd = Object.fromEntries(await Promise.all(names.map(async (k) => [k.slice(prefix.length + 3), await input(k)] as const)));
  m.loadStateDict(sd);
  for (const t of Object.values(sd)) t.dispose();
}

/** Runs f on the fixture's `<prefix>.in<i>` inputs; checks y and the inputs' gradients for cotangent gy. */
async function checkBlock(group: string, prefix: string, m: Module, n: number, f: (...xs: Tensor[]) => Tensor): Promise<void> {
  await loadPrefixed(m, prefix);
  const xs = await Promise.all(Array.from({ length: n }, async (_, i) => (await input(`${prefix}.in${i}`)).requireGrad()));
  const gy = await input(`${prefix}.gy`);
  const y = f(...xs);
  await expectClose(group, y, await f32(`${prefix}.y`));
  y.backward(gy);
  for (let i = 0; i < n; i++) await expectClose(`${group} grads`, xs[i].grad!, await f32(`${prefix}.grad.in${i}`));
  for (const t of [...xs, gy, y]) t.dispose();
  m.dispose();
}

describe('blocks beyond the VAE, vs diffusers', () => {
  it('ResnetBlock2D with a timestep embedding and a conv shortcut', async () => {
    const m = new ResnetBlock2D({ inChannels: 8, outChannels: 16, tembChannels: 12, groups: 4 });
    const x = zeros([1, 8, 2, 2]);
    expect(() => m.forward(x)).toThrow(/temb missing for a block with time_emb_proj/);
    x.dispose();
    await checkBlock('ResnetBlock2D', 'res', m, 2, (x, temb) => m.forward(x, temb));
  });

  it('Transformer2DModel (linear and 1x1-conv projections, cross-attention, GEGLU)', async () => {
    for (const [prefix, useLinearProjection, numLayers] of [['tr_lin', true, 2], ['tr_conv', false, 1]] as const) {
      const m = new Transformer2DModel({ numAttentionHeads: 2, attentionHeadDim: 8, inChannels: 16, numLayers, crossAttentionDim: 12, normNumGroups: 4, useLinearProjection });
      await checkBlock('Transformer2DModel', prefix, m, 2, (x, ehs) => m.forward(x, ehs));
    }
  });

  it('Timesteps (flip_sin_to_cos, shift 0) + TimestepEmbedding', async () => {
    const emb = new TimestepEmbedding(32, 48);
    await loadPrefixed(emb, 'temb');
    const t = await input('temb.t');
    const y = tidy(() => emb.forward(new Timesteps(32, true, 0).forward(t)));
    await expectClose('TimestepEmbedding', y, await f32('temb.y'));
    for (const v of [t, y]) v.dispose();
    emb.dispose();
  });

  it('explicit-score attention (head dim 6) in query chunks equals the fused kernel on zero-padded heads', async () => {
    // 2 heads · 2900 queries · 2900 keys > 2^24 scores: two chunks of 2892 and 8 rows
    const [b, h, l, d] = [1, 2, 2900, 6];
    const r = seededRandom(11);
    const data = () => Float32Array.from({ length: b * h * l * d }, () => r() * 2 - 1);
    const [q, k, v] = [data(), data(), data()].map((a) => tensor(a, [b, h, l, d]));
    const got = noGrad(() => scaledDotProductAttention(q, k, v));
    const want = noGrad(() => tidy(() => {
      const pad = (t: Tensor) => concat([t, zeros([b, h, l, 2])], 3);
      return slice(attention(pad(q), pad(k), pad(v), { scale: d ** -0.5 }).view([b * h * l, 8]), 1, 0, d);
    }));
    await expectClose('chunked attention', got, await want.data());
    for (const t of [q, k, v, got, want]) t.dispose();
  });

  it('Downsample2D without a conv average-pools 2x2', async () => {
    const x = tensor(Float32Array.from({ length: 2 * 3 * 4 * 6 }, (_, i) => Math.sin(i)), [2, 3, 4, 6]);
    const down = new Downsample2D(3, { useConv: false });
    expect(down.parameterCount()).toBe(0);
    const y = down.forward(x);
    expect(y.shape).toEqual([2, 3, 2, 3]);
    const xs = await x.data();
    const want = Array.from({ length: 2 * 3 * 2 * 3 }, (_, o) => {
      const [nc, i, j] = [Math.floor(o / 6), Math.floor((o % 6) / 3), o % 3];
      const at = (di: number, dj: number) => xs[nc * 24 + (2 * i + di) * 6 + 2 * j + dj];
      return (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4;
    });
    await expectClose('avg-pool downsample', y, want, 1e-6);
    for (const t of [x, y]) t.dispose();
  });
});
