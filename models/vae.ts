// diffusers' AutoencoderKL (models/autoencoder_kl.py + models/vae.py, v0.21) with its
// state-dict names: Encoder (conv_in, DownEncoderBlock2D levels, UNetMidBlock2D with one
// attention, GroupNorm+SiLU, conv_out to 2·latent channels), quant_conv, the diagonal Gaussian
// posterior (logvar clamped to [-30, 20]), post_quant_conv, and the mirror Decoder
// (UpDecoderBlock2D levels, highest width first). Images are NCHW in [-1, 1]; latents for a
// diffusion model are `posterior sample · scaling_factor` (SDXL: 0.13025).
import {
  Generator, Module, ModuleList, type Tensor, type DType, add, cast, clamp, concat, device, exp, mul, mulScalar, randn, slice, tensor, tidy, 
} from '../runtime/index.ts';
import { Attention, Downsample2D, ResnetBlock2D, Upsample2D, legacyAttentionWeights, step } from './blocks.ts';
import { type ModelFiles } from './checkpoint.ts';
import { ConfigReader } from './config.ts';
import { Conv2d, GroupNorm } from './layers.ts';
import { type LoadOptions, type ModelKind, loadModel } from './registry.ts';

export interface VaeConfig {
  inChannels: number;
  outChannels: number;
  downBlockTypes: string[];
  upBlockTypes: string[];
  blockOutChannels: number[];
  layersPerBlock: number;
  actFn: 'silu';
  latentChannels: number;
  normNumGroups: number;
  /** the image size the model was trained at (diffusers' tile size for tiled decoding) */
  sampleSize: number;
  scalingFactor: number;
  /** keep the VAE in f32 even where f16 is available (the SDXL VAE overflows in f16) */
  forceUpcast: boolean;
  /** subtracted before scaling (SD3/Flux VAEs); null: none */
  shiftFactor: number | null;
}

const EPS = 1e-6; // every norm in the VAE

/** A diffusers AutoencoderKL config.json (missing fields take AutoencoderKL's defaults). */
export function parseVaeConfig(json: Record<string, unknown>, where = 'config.json'): VaeConfig {
  const r = new ConfigReader(json, where);
  const size = json.sample_size;
  const c: VaeConfig = {
    inChannels: r.int('in_channels', 3, 1),
    outChannels: r.int('out_channels', 3, 1),
    downBlockTypes: r.strs('down_block_types', ['DownEncoderBlock2D']),
    upBlockTypes: r.strs('up_block_types', ['UpDecoderBlock2D']),
    blockOutChannels: r.ints('block_out_channels', [64]),
    layersPerBlock: r.int('layers_per_block', 1, 1),
    actFn: r.str('act_fn', 'silu', ['silu']),
    latentChannels: r.int('latent_channels', 4, 1),
    normNumGroups: r.int('norm_num_groups', 32, 1),
    // diffusers tiles with sample_size[0] when it is a list
    sampleSize: Array.isArray(size) ? new ConfigReader({ sample_size: size[0] }, where).int('sample_size', undefined, 1) : r.int('sample_size', 32, 1),
    scalingFactor: r.num('scaling_factor', 0.18215),
    forceUpcast: r.bool('force_upcast', true),
    shiftFactor: json.shift_factor == null ? null : r.num('shift_factor'),
  };
  const n = c.blockOutChannels.length;
  if (n === 0) throw new Error(`${where}: "block_out_channels" must list at least one level`);
  for (const [field, types, want] of [['down_block_types', c.downBlockTypes, 'DownEncoderBlock2D'], ['up_block_types', c.upBlockTypes, 'UpDecoderBlock2D']] as const) {
    if (types.length !== n) throw new Error(`${where}: "${field}" has ${types.length} entries but "block_out_channels" ${n}`);
    const bad = types.find((t) => t !== want);
    if (bad) throw new Error(`${where}: "${field}" entry "${bad}" is not supported (only ${want})`);
  }
  const bad = c.blockOutChannels.find((ch) => ch === 0 || ch % c.normNumGroups !== 0);
  if (bad !== undefined) throw new Error(`${where}: "block_out_channels" width ${bad} does not split into "norm_num_groups" ${c.normNumGroups}`);
  return c;
}

export function vaeConfigJson(c: VaeConfig): Record<string, unknown> {
  const json: Record<string, unknown> = {
    _class_name: 'AutoencoderKL',
    in_channels: c.inChannels,
    out_channels: c.outChannels,
    down_block_types: c.downBlockTypes,
    up_block_types: c.upBlockTypes,
    block_out_channels: c.blockOutChannels,
    layers_per_block: c.layersPerBlock,
    act_fn: c.actFn,
    latent_channels: c.latentChannels,
    norm_num_groups: c.normNumGroups,
    sample_size: c.sampleSize,
    scaling_factor: c.scalingFactor,
    force_upcast: c.forceUpcast,
  };
  if (c.shiftFactor !== null) json.shift_factor = c.shiftFactor;
  return json;
}

const resnet = (inCh: number, outCh: number, groups: number) =>
  new ResnetBlock2D({ inChannels: inCh, outChannels: outCh, tembChannels: null, groups, eps: EPS });

/** DownEncoderBlock2D: resnets, then (all but the last level) a stride-2 conv after a (0, 1, 0, 1) pad. */
class DownEncoderBlock2D extends Module {
  readonly resnets: ModuleList<ResnetBlock2D>;
  readonly downsamplers: ModuleList<Downsample2D> | null;

  constructor(inCh: number, outCh: number, layers: number, groups: number, down: boolean) {
    super();
    this.resnets = this.module('resnets', new ModuleList(Array.from({ length: layers }, (_, i) => resnet(i === 0 ? inCh : outCh, outCh, groups))));
    this.downsamplers = down ? this.module('downsamplers', new ModuleList([new Downsample2D(outCh, { padding: 0 })])) : null;
  }

  forward(x: Tensor): Tensor {
    let h = this.resnets.items[0].forward(x);
    for (const r of this.resnets.items.slice(1)) h = step(h, (t) => r.forward(t));
    return this.downsamplers ? step(h, (t) => this.downsamplers!.items[0].forward(t)) : h;
  }
}

/** UpDecoderBlock2D: resnets, then (all but the last level) nearest 2x + conv. */
class UpDecoderBlock2D extends Module {
  readonly resnets: ModuleList<ResnetBlock2D>;
  readonly upsamplers: ModuleList<Upsample2D> | null;

  constructor(inCh: number, outCh: number, layers: number, groups: number, up: boolean) {
    super();
    this.resnets = this.module('resnets', new ModuleList(Array.from({ length: layers }, (_, i) => resnet(i === 0 ? inCh : outCh, outCh, groups))));
    this.upsamplers = up ? this.module('upsamplers', new ModuleList([new Upsample2D(outCh)])) : null;
  }

  forward(x: Tensor): Tensor {
    let h = this.resnets.items[0].forward(x);
    for (const r of this.resnets.items.slice(1)) h = step(h, (t) => r.forward(t));
    return this.upsamplers ? step(h, (t) => this.upsamplers!.items[0].forward(t)) : h;
  }
}

/** UNetMidBlock2D without time embedding: resnet, single-head attention (group_norm, residual), resnet. */
class UNetMidBlock2D extends Module {
  readonly attentions: ModuleList<Attention>;
  readonly resnets: ModuleList<ResnetBlock2D>;

  constructor(ch: number, groups: number) {
    super();
    // diffusers registers the attentions first (state-dict order)
    this.attentions = this.module('attentions', new ModuleList([
      new Attention({ queryDim: ch, heads: 1, dimHead: ch, bias: true, residualConnection: true, normNumGroups: groups, eps: EPS }),
    ]));
    this.resnets = this.module('resnets', new ModuleList([resnet(ch, ch, groups), resnet(ch, ch, groups)]));
  }

  forward(x: Tensor): Tensor {
    const [r0, r1] = this.resnets.items;
    let h = r0.forward(x);
    h = step(h, (t) => this.attentions.items[0].forward(t));
    return step(h, (t) => r1.forward(t));
  }
}

class Encoder extends Module {
  readonly conv_in: Conv2d;
  readonly down_blocks: ModuleList<DownEncoderBlock2D>;
  readonly mid_block: UNetMidBlock2D;
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;

  constructor(c: VaeConfig) {
    super();
    const ch = c.blockOutChannels;
    const top = ch[ch.length - 1];
    const g = c.normNumGroups;
    this.conv_in = this.module('conv_in', new Conv2d(c.inChannels, ch[0], 3, { padding: 1 }));
    this.down_blocks = this.module('down_blocks', new ModuleList(ch.map((out, i) =>
      new DownEncoderBlock2D(i === 0 ? ch[0] : ch[i - 1], out, c.layersPerBlock, g, i < ch.length - 1))));
    this.mid_block = this.module('mid_block', new UNetMidBlock2D(top, g));
    this.conv_norm_out = this.module('conv_norm_out', new GroupNorm(g, top, EPS));
    this.conv_out = this.module('conv_out', new Conv2d(top, 2 * c.latentChannels, 3, { padding: 1 })); // double_z
  }

  forward(x: Tensor): Tensor {
    let h = this.conv_in.forward(x);
    for (const b of [...this.down_blocks.items, this.mid_block]) h = step(h, (t) => b.forward(t));
    return step(h, (t) => tidy(() => this.conv_out.forward(this.conv_norm_out.forward(t, true))));
  }
}

class Decoder extends Module {
  readonly conv_in: Conv2d;
  readonly up_blocks: ModuleList<UpDecoderBlock2D>;
  readonly mid_block: UNetMidBlock2D;
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;

  constructor(c: VaeConfig) {
    super();
    const rev = [...c.blockOutChannels].reverse();
    const g = c.normNumGroups;
    this.conv_in = this.module('conv_in', new Conv2d(c.latentChannels, rev[0], 3, { padding: 1 }));
    // diffusers' state dict lists up_blocks before mid_block
    this.up_blocks = this.module('up_blocks', new ModuleList(rev.map((out, i) =>
      new UpDecoderBlock2D(i === 0 ? rev[0] : rev[i - 1], out, c.layersPerBlock + 1, g, i < rev.length - 1))));
    this.mid_block = this.module('mid_block', new UNetMidBlock2D(rev[0], g));
    this.conv_norm_out = this.module('conv_norm_out', new GroupNorm(g, rev[rev.length - 1], EPS));
    this.conv_out = this.module('conv_out', new Conv2d(rev[rev.length - 1], c.outChannels, 3, { padding: 1 }));
  }

  forward(z: Tensor): Tensor {
    let h = this.conv_in.forward(z);
    for (const b of [this.mid_block, ...this.up_blocks.items]) h = step(h, (t) => b.forward(t));
    return step(h, (t) => tidy(() => this.conv_out.forward(this.conv_norm_out.forward(t, true))));
  }
}

/** diffusers' DiagonalGaussianDistribution over the latents: owns mean, logvar and std (dispose() frees them). */
export class DiagonalGaussian {
  readonly std: Tensor;

  /** logvar is clamped to [-30, 20] here, as diffusers does. */
  constructor(readonly mean: Tensor, readonly logvar: Tensor) {
    this.std = tidy(() => exp(mulScalar(logvar, 0.5)));
  }

  /** mean + std · ε, ε ~ N(0, 1) from `generator` (the runtime's Philox stream, not torch's). */
  sample(generator?: Generator): Tensor {
    return tidy(() => add(this.mean, mul(this.std, randn(this.mean.shape, { generator, dtype: this.mean.dtype }))));
  }

  /** the mean (a new handle: dispose it separately) */
  mode(): Tensor {
    return this.mean.view(this.mean.shape);
  }

  dispose(): void {
    for (const t of [this.mean, this.logvar, this.std]) t.dispose();
  }
}

export interface TileOptions {
  /** latent tile side (default: diffusers' sample_size / 2^(levels-1), shrunk until a tile's activations fit one storage binding) */
  tileLatent?: number;
  /** fraction of a tile shared with its neighbour (diffusers' tile_overlap_factor, default 0.25) */
  overlap?: number;
}

/**
 * b with its first `extent` rows (axis 2) or columns (axis 3) cross-faded from a's last ones:
 * b[y] = a[end - e + y] · (1 - y/e) + b[y] · y/e (diffusers' blend_v / blend_h).
 */
function blend(a: Tensor, b: Tensor, extent: number, axis: 2 | 3): Tensor {
  const e = Math.min(a.shape[axis], b.shape[axis], extent);
  if (e === 0) return b.view(b.shape);
  return tidy(() => {
    const shape = axis === 2 ? [1, 1, e, 1] : [1, 1, 1, e];
    const wb = Float32Array.from({ length: e }, (_, y) => y / e);
    const wa = wb.map((w) => 1 - w);
    const n = a.shape[axis];
    const head = add(mul(slice(a, axis, n - e, n), tensor(wa, shape, a.dtype)), mul(slice(b, axis, 0, e), tensor(wb, shape, b.dtype)));
    return e === b.shape[axis] ? head : concat([head, slice(b, axis, e, b.shape[axis])], axis);
  });
}

/**
 * diffusers' tiled_decode / tiled_encode pattern for one image [1, C, H, W]: tiles of side
 * `tileIn` every tileIn·(1 - overlap), each mapped by fn to side tileOut (or less at the
 * edges), blended in row-major order with the already blended tile above and to the left
 * over tileOut·overlap rows/columns, cropped to tileOut - that and stitched.
 */
function tiled(x: Tensor, tileIn: number, tileOut: number, overlap: number, fn: (tile: Tensor) => Tensor): Tensor {
  const stride = Math.trunc(tileIn * (1 - overlap));
  const extent = Math.trunc(tileOut * overlap);
  const limit = tileOut - extent;
  if (stride < 1) throw new Error(`tiled decode: overlap ${overlap} leaves no stride for tiles of ${tileIn}`);
  const [, , hh, ww] = x.shape;
  const stripes: Tensor[] = [];
  let above: Tensor[] = [];
  for (let i = 0; i < hh; i += stride) {
    const row: Tensor[] = [];
    for (let j = 0; j < ww; j += stride) {
      let t = tidy(() => fn(slice(slice(x, 2, i, i + tileIn), 3, j, j + tileIn)));
      if (i > 0) t = step(t, (v) => blend(above[row.length], v, extent, 2));
      if (j > 0) t = step(t, (v) => blend(row[row.length - 1], v, extent, 3));
      row.push(t);
    }
    stripes.push(tidy(() => concat(row.map((t) => slice(slice(t, 2, 0, limit), 3, 0, limit)), 3)));
    for (const t of above) t.dispose();
    above = row;
  }
  for (const t of above) t.dispose();
  const y = concat(stripes, 2);
  for (const s of stripes) s.dispose();
  return y;
}

export class AutoencoderKL extends Module {
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  readonly quant_conv: Conv2d;
  readonly post_quant_conv: Conv2d;

  constructor(readonly config: VaeConfig) {
    super();
    this.encoder = this.module('encoder', new Encoder(config));
    this.decoder = this.module('decoder', new Decoder(config));
    this.quant_conv = this.module('quant_conv', new Conv2d(2 * config.latentChannels, 2 * config.latentChannels, 1));
    this.post_quant_conv = this.module('post_quant_conv', new Conv2d(config.latentChannels, config.latentChannels, 1));
  }

  /** the spatial factor between images and latents: 2^(levels - 1) */
  get downFactor(): number {
    return 2 ** (this.config.blockOutChannels.length - 1);
  }

  private get dtype(): DType {
    return this.quant_conv.weight.dtype;
  }

  /** x in the weights' dtype (f16 weights take f32 inputs). */
  private input(x: Tensor, what: string, channels: number): Tensor {
    if (x.rank !== 4 || x.shape[1] !== channels) throw new Error(`AutoencoderKL.${what}: expected [B, ${channels}, H, W], got [${x.shape.join(', ')}]`);
    return x.dtype === this.dtype ? x : cast(x, this.dtype);
  }

  /** images [B, in_channels, H, W] (H, W multiples of downFactor) -> the posterior over latents. */
  encode(x: Tensor): DiagonalGaussian {
    const f = this.downFactor;
    if (x.rank === 4 && (x.shape[2] % f || x.shape[3] % f)) throw new Error(`AutoencoderKL.encode: height and width [${x.shape.slice(2)}] must be multiples of ${f}`);
    const [mean, logvar] = tidy(() => {
      const moments = this.quant_conv.forward(this.encoder.forward(this.input(x, 'encode', this.config.inChannels)));
      const l = this.config.latentChannels;
      return [slice(moments, 1, 0, l), clamp(slice(moments, 1, l, 2 * l), -30, 20)];
    });
    return new DiagonalGaussian(mean, logvar);
  }

  /** latents [B, latent_channels, h, w] (unscaled: divide by scaling_factor first) -> images. */
  decode(z: Tensor): Tensor {
    return tidy(() => this.decoder.forward(this.post_quant_conv.forward(this.input(z, 'decode', this.config.latentChannels))));
  }

  /**
   * decode() one image at a time in overlapping tiles blended as diffusers' tiled_decode, so
   * no activation exceeds a storage binding (a 1024² SDXL decode on a 128 MiB adapter).
   */
  decodeTiled(z: Tensor, o: TileOptions = {}): Tensor {
    const zz = this.input(z, 'decodeTiled', this.config.latentChannels);
    const tile = o.tileLatent ?? this.defaultTileLatent();
    if (!Number.isInteger(tile) || tile < 1) throw new Error(`AutoencoderKL.decodeTiled: tileLatent ${tile} must be a positive integer`);
    const overlap = o.overlap ?? 0.25;
    if (!(overlap >= 0 && overlap < 1)) throw new Error(`AutoencoderKL.decodeTiled: overlap ${overlap} must be in [0, 1)`);
    const images: Tensor[] = [];
    for (let b = 0; b < zz.shape[0]; b++)
      images.push(tidy(() => tiled(slice(zz, 0, b, b + 1), tile, tile * this.downFactor, overlap, (t) => this.decode(t))));
    if (zz !== z) zz.dispose();
    if (images.length === 1) return images[0];
    const y = concat(images, 0);
    for (const t of images) t.dispose();
    return y;
  }

  /** diffusers' tile_latent_min_size, halved (in steps of 8) until the decoder's largest activation on such a tile fits one binding. */
  defaultTileLatent(): number {
    const bytes = this.dtype === 'f16' ? 2 : 4;
    let tile = Math.trunc(this.config.sampleSize / this.downFactor);
    while (tile > 8 && this.largestDecodeActivation(tile) * bytes > device().maxBinding) tile -= 8;
    return tile;
  }

  /** elements of the widest decoder tensor for a latent tile of side t (one image) */
  private largestDecodeActivation(t: number): number {
    const rev = [...this.config.blockOutChannels].reverse();
    let most = 0;
    rev.forEach((out, i) => {
      const side = t * 2 ** i;
      most = Math.max(most, Math.max(i === 0 ? out : rev[i - 1], out) * side * side);
    });
    return most;
  }

  /** diffusers' forward: encode, z = posterior sample (with a generator) or mode, decode. */
  forward(sample: Tensor, o: { samplePosterior?: boolean; generator?: Generator } = {}): Tensor {
    const posterior = this.encode(sample);
    try {
      const z = o.samplePosterior ? posterior.sample(o.generator) : posterior.mode();
      return step(z, (t) => this.decode(t));
    } finally {
      posterior.dispose();
    }
  }
}

/** The VAE's weights dtype: f16 where the adapter has shader-f16, unless the config forces f32 (force_upcast). */
export const vaeDType = (c: VaeConfig): DType => (!c.forceUpcast && device().hasF16 ? 'f16' : 'f32');

export const vaeKind: ModelKind<VaeConfig, AutoencoderKL> = {
  kind: 'vae',
  classNames: ['AutoencoderKL'],
  parseConfig: (json, where) => parseVaeConfig(json, where),
  toJson: vaeConfigJson,
  build: (c) => new AutoencoderKL(c),
  dtype: vaeDType,
  // old checkpoints: query/key/value/proj_attn, some stored as 1x1 convs
  adaptWeights: (src) => legacyAttentionWeights(src),
  inputs: {
    sample: 'images [B, in_channels, H, W] in [-1, 1] (H, W multiples of 2^(levels-1))',
    generator: 'optional [1] integer seed: sample the posterior with it (sample_posterior=True); without it z is the posterior mode',
    z: 'optional latents [B, latent_channels, h, w] to decode instead of encoding `sample` (AutoencoderKL.decode)',
  },
  forward(model, inputs) {
    const { sample, generator, z } = inputs;
    if (z) return { sample: model.decode(z) };
    if (!sample) throw new Error("vae forward: missing input 'sample' (or 'z' to decode latents)");
    if (generator && generator.size !== 1) throw new Error(`vae forward: 'generator' must hold one seed, got [${generator.shape}]`);
    const posterior = model.encode(sample);
    return (async () => {
      const gen = generator ? new Generator(await generator.item()) : undefined;
      const latent = gen ? posterior.sample(gen) : posterior.mode();
      const out = { 'latent_dist.mean': posterior.mean, 'latent_dist.logvar': posterior.logvar, latents: latent, sample: model.decode(latent) };
      posterior.std.dispose();
      return out;
    })();
  },
};

/** A diffusers AutoencoderKL folder (config.json + weights, old attention names too), loaded in `dtype` (default vaeDType). */
export const loadVae = async (files: ModelFiles, o: LoadOptions = {}): Promise<AutoencoderKL> => (await loadModel(files, vaeKind, o)).model;
