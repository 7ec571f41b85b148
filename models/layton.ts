// Layton (LaCTok): an image as a small grid of discrete tokens, decoded by a latent diffusion
// model made a few-step consistency model.
//   tokenize  image at tokenizer_size -> VQ encoder -> nearest l2-normalised code -> ids [B, h, w]
//   features  ids -> codebook vectors C [B, code_dim, h, w]
//   decode    C -> control branch + frozen UNet, 1 or 2 consistency steps from pure noise
//             (each: predict x0, re-noise to the next timestep) -> VAE decoder -> image
// A Layton folder holds the parts in diffusers' layout: vq/, unet/, controlnet/, vae/,
// scheduler/scheduler_config.json, and layton.json (the fields below).
import { type Generator, type Tensor, add, detach, lookup, mulScalar, randn, tensor, tidy, zeros } from '../runtime/index.ts';
import { type ModelFiles, readConfig } from './checkpoint.ts';
import { ConfigReader } from './config.ts';
import { type ControlNetModel, LaddBranch, loadControlNet } from './controlnet.ts';
import { type LoadOptions } from './registry.ts';
import { type AlphaScheduler, fromConfig } from './schedulers.ts';
import { type AddedCond, type UNet2DConditionModel, loadUNet } from './unet.ts';
import { type AutoencoderKL, loadVae } from './vae.ts';
import { type VQConfig, type VQModel, loadVQModel } from './vq.ts';

export interface LaytonConfig {
  /** the decoded image's side (the paper: 1024) */
  imageSize: number;
  /** the side the tokenizer sees (the paper: 256) */
  tokenizerSize: number;
  /** multiplies the control branch's residuals */
  conditioningScale: number;
  /** the consistency timesteps for each supported step count (TLCM-style: [999] and [999, 499]) */
  decodeTimesteps: Record<string, number[]>;
}

export function parseLaytonConfig(json: Record<string, unknown>, where = 'layton.json'): LaytonConfig {
  const r = new ConfigReader(json, where);
  const imageSize = r.int('image_size', 1024, 8);
  const tokenizerSize = r.int('tokenizer_size', 256, 8);
  const steps = json.decode_timesteps ?? { 1: [999], 2: [999, 499] };
  if (!steps || typeof steps !== 'object' || Array.isArray(steps) || !Object.values(steps).every((v) => Array.isArray(v) && v.length && v.every((t) => Number.isInteger(t) && t >= 0)))
    throw new Error(`${where}: "decode_timesteps" must map step counts to lists of timesteps, e.g. {"1": [999], "2": [999, 499]}`);
  for (const [k, v] of Object.entries(steps as Record<string, number[]>))
    if (Number(k) !== v.length) throw new Error(`${where}: "decode_timesteps" entry "${k}" lists ${v.length} timesteps`);
  return { imageSize, tokenizerSize, conditioningScale: r.num('conditioning_scale', 1), decodeTimesteps: steps as Record<string, number[]> };
}

export const laytonConfigJson = (c: LaytonConfig): Record<string, unknown> => ({
  _class_name: 'Layton', image_size: c.imageSize, tokenizer_size: c.tokenizerSize, conditioning_scale: c.conditioningScale, decode_timesteps: c.decodeTimesteps,
});

export interface DecodeOptions {
  /** consistency steps (a key of decode_timesteps; default 1) */
  steps?: number;
  generator?: Generator;
  /** the starting noise [B, latent_channels, H, W] instead of drawing it */
  noise?: Tensor;
  /**
   * Stage 2 training: gradients flow through the last step only (TLCM's stop-gradient on the
   * earlier ones), so a 2-step decode costs one step's backward.
   */
  stopGradientBeforeLast?: boolean;
}

/** The token grid's side: tokenizer_size over the VQ encoder's downsampling. */
export const tokenGridSide = (config: Pick<LaytonConfig, 'tokenizerSize'>, vq: Pick<VQConfig, 'encoderChMult'>): number =>
  config.tokenizerSize / 2 ** (vq.encoderChMult.length - 1);

export class Layton {
  readonly branch: LaddBranch;
  /** tokenGridSide of its config and VQ */
  readonly gridSide: number;

  constructor(
    readonly config: LaytonConfig,
    readonly vq: VQModel,
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    readonly vae: AutoencoderKL,
    readonly scheduler: AlphaScheduler,
  ) {
    this.branch = new LaddBranch(unet, controlnet);
    vq.setTrainable(false);
    vae.setTrainable(false);
    const latent = config.imageSize / this.vaeScale;
    const grid = (this.gridSide = tokenGridSide(config, vq.config));
    const need = latent / grid;
    if (controlnet.config.conditioningUpsampleFactor * controlnet.controlnet_cond_embedding.downscale !== need)
      throw new Error(`Layton: a ${grid}x${grid} token grid must reach the ${latent}x${latent} latent, but controlnet conditioning_upsample_factor ` +
        `${controlnet.config.conditioningUpsampleFactor} x embedding downscale ${controlnet.controlnet_cond_embedding.downscale} != ${need}`);
  }

  get unet(): UNet2DConditionModel {
    return this.branch.unet;
  }
  get controlnet(): ControlNetModel {
    return this.branch.controlnet;
  }
  /** image side / latent side */
  get vaeScale(): number {
    return 2 ** (this.vae.config.blockOutChannels.length - 1);
  }
  get latentShape(): [number, number, number] {
    const s = this.config.imageSize / this.vaeScale;
    return [this.vae.config.latentChannels, s, s];
  }

  /** images [B, 3, tokenizer_size, tokenizer_size] in [-1, 1] -> token ids i32 [B, h, w]. */
  tokenize(images: Tensor): Tensor {
    const s = this.config.tokenizerSize;
    if (images.rank !== 4 || images.shape[2] !== s || images.shape[3] !== s)
      throw new Error(`Layton.tokenize: images must be [B, 3, ${s}, ${s}] (tokenizer_size), got [${images.shape.join(', ')}]`);
    return tidy(() => this.vq.encode(images).indices);
  }

  /** token ids [B, h, w] -> the codes' l2-normalised vectors C [B, code_dim, h, w]. */
  features(ids: Tensor): Tensor {
    if (ids.rank !== 3 || ids.dtype !== 'i32') throw new Error(`Layton.features: token ids must be i32 [B, h, w], got ${ids.dtype} [${ids.shape.join(', ')}]`);
    return lookup(ids, this.vq.codebook);
  }

  /** The UNet's empty prompt: zero text states (one token), zero pooled embeddings, SDXL time ids of the image size. */
  emptyPrompt(batch: number): { states: Tensor; added: AddedCond | null } {
    const u = this.unet.config;
    const states = zeros([batch, 1, u.crossAttentionDim[0]]);
    if (u.additionEmbedType !== 'text_time') return { states, added: null };
    const s = this.config.imageSize;
    const textDim = u.projectionClassEmbeddingsInputDim! - 6 * u.additionTimeEmbedDim!;
    return {
      states,
      added: { textEmbeds: zeros([batch, textDim]), timeIds: tensor(Array.from({ length: batch }, () => [s, s, 0, 0, s, s]).flat(), [batch, 6]) },
    };
  }

  /** The model's x0 estimate from z_t at timestep t (epsilon or v prediction), differentiable. */
  predictX0(zt: Tensor, t: number, c: Tensor): Tensor {
    const [ca, cb] = this.scheduler.x0Coefficients(t);
    return tidy(() => {
      const { states, added } = this.emptyPrompt(zt.shape[0]);
      const out = this.branch.forward(zt, t, states, c, { added, conditioningScale: this.config.conditioningScale });
      return ca === 0 ? mulScalar(out, cb) : add(mulScalar(zt, ca), mulScalar(out, cb));
    });
  }

  /** Token features C -> scaled latents z0 by 1 or 2 consistency steps from noise. */
  denoise(c: Tensor, o: DecodeOptions = {}): Tensor {
    const steps = o.steps ?? 1;
    const ts = this.config.decodeTimesteps[String(steps)];
    if (!ts) throw new Error(`Layton: no decode schedule for ${steps} step(s) (have ${Object.keys(this.config.decodeTimesteps).join(', ')})`);
    const b = c.shape[0];
    return tidy(() => {
      let z = o.noise ?? randn([b, ...this.latentShape], { generator: o.generator });
      let x0!: Tensor;
      ts.forEach((t, i) => {
        x0 = this.predictX0(z, t, c);
        const next = ts[i + 1];
        if (next === undefined) return;
        if (o.stopGradientBeforeLast) x0 = detach(x0);
        const a = this.scheduler.alphasCumprod[next];
        z = add(mulScalar(x0, Math.sqrt(a)), mulScalar(randn(x0.shape, { generator: o.generator }), Math.sqrt(1 - a)));
      });
      return x0;
    });
  }

  /** Scaled latents -> images [B, 3, image_size, image_size] in about [-1, 1]. */
  decodeLatents(z0: Tensor): Tensor {
    return tidy(() => this.vae.decode(mulScalar(z0, 1 / this.vae.config.scalingFactor)));
  }

  /** Token ids -> images. */
  decode(ids: Tensor, o: DecodeOptions = {}): Tensor {
    return tidy(() => this.decodeLatents(this.denoise(this.features(ids), o)));
  }

  dispose(): void {
    this.vq.dispose();
    this.branch.dispose();
    this.vae.dispose();
  }
}

/** Where a Layton folder's parts are: `sub("unet")` gives the unet/ folder (Node: tools/modeldir.ts; browsers: URLs). */
export type LaytonFiles = (sub: string) => Promise<ModelFiles>;

/**
 * The folder of part `sub` in a Layton model root: a trained root (`layton-run train layton`)
 * keeps its distilled decoder UNet in unet-consistency/ beside the LDM in unet/, so unet/ is read
 * from there when `has` says the root has one; a published or exported folder's unet/ is the decoder.
 */
export const partFolder = (sub: string, has: (folder: string) => boolean): string =>
  sub === 'unet' && has('unet-consistency') ? 'unet-consistency' : sub;

/** Loads a Layton folder (layton.json, vq/, unet/, controlnet/, vae/, scheduler/). */
export async function loadLayton(files: LaytonFiles, o: LoadOptions = {}): Promise<Layton> {
  const root = await files('');
  const config = parseLaytonConfig(await readConfig(root, 'layton.json'), `${root.name}/layton.json`);
  const sched = await readConfig(await files('scheduler'), 'scheduler_config.json');
  const scheduler = fromConfig(sched, { className: 'DDPMScheduler', where: `${root.name}/scheduler/scheduler_config.json` }) as AlphaScheduler;
  const parts: { dispose(): void }[] = [];
  const keep = <T extends { dispose(): void }>(m: T): T => (parts.push(m), m);
  try {
    const vq = keep(await loadVQModel(await files('vq'), o));
    const unet = keep(await loadUNet(await files('unet'), o));
    const controlnet = keep(await loadControlNet(await files('controlnet'), o));
    const vae = keep(await loadVae(await files('vae'), o));
    return new Layton(config, vq, unet, controlnet, vae, scheduler);
  } catch (e) {
    for (const m of parts) m.dispose();
    throw e;
  }
}
