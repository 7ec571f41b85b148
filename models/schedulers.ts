// Noise schedulers as diffusers defines them: DDPM (training targets and ancestral sampling),
// DDIM, Euler discrete (SDXL's default), LCM and TCD (few-step distilled models).
// DDPM, DDIM and Euler follow diffusers v0.21; LCM and TCD postdate it and follow the current
// source (its LCM timestep spacing, floor(linspace(...)), replaced v0.22's stride). DDPM takes
// rescale_betas_zero_snr as later diffusers does (v0.21 has it in DDIM only; the code is shared).
//
// Schedules (betas, alphas_cumprod, timesteps, sigmas) are plain numbers from pure functions.
// diffusers computes them in float32 torch and float64 numpy; Math.fround marks where a value
// is float32 there, so that timesteps come out identical and the rest within float32 rounding.
// Step math runs on runtime Tensors as fused `a*x + b*y` kernels with coefficients from JS.
import { type Generator, type Tensor, clamp, map, mulScalar, randn, tensor, tidy } from '../runtime/index.ts';
import { ConfigReader } from './config.ts';

const f32 = Math.fround;

export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2';
export type PredictionType = 'epsilon' | 'v_prediction' | 'sample';
export type TimestepSpacing = 'leading' | 'trailing' | 'linspace';
export const SCHEDULER_CLASSES = ['DDPMScheduler', 'DDIMScheduler', 'EulerDiscreteScheduler', 'LCMScheduler', 'TCDScheduler'] as const;
export type SchedulerClass = (typeof SCHEDULER_CLASSES)[number];

/** scheduler_config.json fields under diffusers' names; each class reads only those it has. */
export interface SchedulerConfig {
  num_train_timesteps: number;
  beta_start: number;
  beta_end: number;
  beta_schedule: BetaSchedule;
  prediction_type: PredictionType;
  timestep_spacing: TimestepSpacing;
  /** added to 'leading' timesteps */
  steps_offset: number;
  /** clamp the predicted x0 to ±clip_sample_range */
  clip_sample: boolean;
  clip_sample_range: number;
  /** DDIM: alphas_cumprod "before" timestep 0 is 1, else alphas_cumprod[0] (LCM and TCD have it but never step past 0) */
  set_alpha_to_one: boolean;
  /** LCM, TCD: the distillation schedule's step count, which inference timesteps are taken from */
  original_inference_steps: number;
  /** LCM: timestep multiplier in the boundary-condition scalings */
  timestep_scaling: number;
  /** shift and scale sqrt(alphas_cumprod) so that the last timestep is pure noise (Lin et al. 2023; needs v_prediction or sample) */
  rescale_betas_zero_snr: boolean;
}

const BASE_DEFAULTS: SchedulerConfig = {
  num_train_timesteps: 1000, beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear', prediction_type: 'epsilon',
  timestep_spacing: 'leading', steps_offset: 0, clip_sample: true, clip_sample_range: 1, set_alpha_to_one: true,
  original_inference_steps: 50, timestep_scaling: 10, rescale_betas_zero_snr: false,
};
const CONSISTENCY_DEFAULTS: Partial<SchedulerConfig> = { beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear', clip_sample: false };

/** Each class's __init__ defaults. */
export const DEFAULT_CONFIGS: Record<SchedulerClass, SchedulerConfig> = {
  DDPMScheduler: BASE_DEFAULTS,
  DDIMScheduler: BASE_DEFAULTS,
  EulerDiscreteScheduler: { ...BASE_DEFAULTS, timestep_spacing: 'linspace' },
  LCMScheduler: { ...BASE_DEFAULTS, ...CONSISTENCY_DEFAULTS },
  TCDScheduler: { ...BASE_DEFAULTS, ...CONSISTENCY_DEFAULTS },
};

const COMMON_FIELDS = ['num_train_timesteps', 'beta_start', 'beta_end', 'beta_schedule', 'prediction_type', 'timestep_spacing', 'steps_offset'] as const;
const CONSISTENCY_FIELDS = [...COMMON_FIELDS, 'clip_sample', 'clip_sample_range', 'set_alpha_to_one', 'original_inference_steps', 'timestep_scaling', 'rescale_betas_zero_snr'] as const;
/** The SchedulerConfig fields each class has. */
const CLASS_FIELDS: Record<SchedulerClass, readonly (keyof SchedulerConfig)[]> = {
  DDPMScheduler: [...COMMON_FIELDS, 'clip_sample', 'clip_sample_range', 'rescale_betas_zero_snr'],
  DDIMScheduler: [...COMMON_FIELDS, 'clip_sample', 'clip_sample_range', 'set_alpha_to_one', 'rescale_betas_zero_snr'],
  EulerDiscreteScheduler: COMMON_FIELDS,
  LCMScheduler: CONSISTENCY_FIELDS,
  TCDScheduler: CONSISTENCY_FIELDS,
};

// diffusers options not implemented here: a config may hold them only at these values.
const UNSUPPORTED: Record<string, unknown> = {
  trained_betas: null, thresholding: false, rescale_betas_zero_snr: false, variance_type: 'fixed_small',
  interpolation_type: 'linear', use_karras_sigmas: false, use_exponential_sigmas: false, use_beta_sigmas: false,
  timestep_type: 'discrete', final_sigmas_type: 'zero', sigma_min: null, sigma_max: null,
};
const CLASS_UNSUPPORTED: Record<SchedulerClass, readonly string[]> = {
  DDPMScheduler: ['trained_betas', 'thresholding', 'variance_type'],
  DDIMScheduler: ['trained_betas', 'thresholding'],
  EulerDiscreteScheduler: ['trained_betas', 'rescale_betas_zero_snr', 'interpolation_type', 'use_karras_sigmas', 'use_exponential_sigmas', 'use_beta_sigmas', 'timestep_type', 'final_sigmas_type', 'sigma_min', 'sigma_max'],
  LCMScheduler: ['trained_betas', 'thresholding'],
  TCDScheduler: ['trained_betas', 'thresholding'],
};

const READ: { [K in keyof SchedulerConfig]: (r: ConfigReader, def: SchedulerConfig[K]) => SchedulerConfig[K] } = {
  num_train_timesteps: (r, d) => r.int('num_train_timesteps', d, 1),
  beta_start: (r, d) => r.num('beta_start', d),
  beta_end: (r, d) => r.num('beta_end', d),
  beta_schedule: (r, d) => r.str('beta_schedule', d, ['linear', 'scaled_linear', 'squaredcos_cap_v2']),
  prediction_type: (r, d) => r.str('prediction_type', d, ['epsilon', 'v_prediction', 'sample']),
  timestep_spacing: (r, d) => r.str('timestep_spacing', d, ['leading', 'trailing', 'linspace']),
  steps_offset: (r, d) => r.int('steps_offset', d),
  clip_sample: (r, d) => r.bool('clip_sample', d),
  clip_sample_range: (r, d) => r.num('clip_sample_range', d),
  set_alpha_to_one: (r, d) => r.bool('set_alpha_to_one', d),
  original_inference_steps: (r, d) => r.int('original_inference_steps', d, 1),
  timestep_scaling: (r, d) => r.num('timestep_scaling', d),
  rescale_betas_zero_snr: (r, d) => r.bool('rescale_betas_zero_snr', d),
};

/**
 * A scheduler_config.json object as `className` reads it (diffusers' from_config): its own
 * fields, the class defaults for missing ones, unknown fields ignored.
 */
export function parseSchedulerConfig(json: Record<string, unknown>, className: SchedulerClass, where = 'scheduler_config.json'): SchedulerConfig {
  for (const f of CLASS_UNSUPPORTED[className]) {
    if (json[f] != null && json[f] !== UNSUPPORTED[f]) {
      throw new Error(`${where}: "${f}" = ${JSON.stringify(json[f])} is not supported by ${className} here (only ${JSON.stringify(UNSUPPORTED[f])})`);
    }
  }
  const r = new ConfigReader(json, where);
  const cfg = { ...DEFAULT_CONFIGS[className] };
  const set = <K extends keyof SchedulerConfig>(k: K): void => void (cfg[k] = READ[k](r, cfg[k]));
  for (const k of CLASS_FIELDS[className]) set(k);
  if (CLASS_FIELDS[className].includes('original_inference_steps') && cfg.original_inference_steps > cfg.num_train_timesteps) {
    throw new Error(`${where}: "original_inference_steps" (${cfg.original_inference_steps}) must be <= num_train_timesteps (${cfg.num_train_timesteps})`);
  }
  return cfg;
}

/** The scheduler_config.json object diffusers would write for this class and config. */
export function schedulerConfigJson(className: SchedulerClass, config: SchedulerConfig): Record<string, unknown> {
  return { _class_name: className, ...Object.fromEntries(CLASS_FIELDS[className].map((k) => [k, config[k]])) };
}

/** Builds the scheduler a scheduler_config.json names (or `className`, like diffusers' `X.from_config(other.config)`). */
export function fromConfig(json: Record<string, unknown>, opts: { className?: SchedulerClass; where?: string } = {}): AnyScheduler {
  const where = opts.where ?? 'scheduler_config.json';
  const name = opts.className ?? json._class_name;
  if (!SCHEDULER_CLASSES.includes(name as SchedulerClass)) {
    throw new Error(`${where}: "_class_name" must be one of ${SCHEDULER_CLASSES.join(', ')} (or pass className), got ${JSON.stringify(name)}`);
  }
  const config = parseSchedulerConfig(json, name as SchedulerClass, where);
  switch (name as SchedulerClass) {
    case 'DDPMScheduler': return new DDPMScheduler(config);
    case 'DDIMScheduler': return new DDIMScheduler(config);
    case 'EulerDiscreteScheduler': return new EulerDiscreteScheduler(config);
    case 'LCMScheduler': return new LCMScheduler(config);
    case 'TCDScheduler': return new TCDScheduler(config);
  }
}

// ---- schedules (pure numbers) --------------------------------------------------------------

/** numpy's round (half to even) */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** np.linspace in float64 */
export function npLinspace(start: number, stop: number, num: number, endpoint = true): number[] {
  const div = endpoint ? num - 1 : num;
  const step = (stop - start) / div;
  const y = Array.from({ length: num }, (_, i) => (div > 0 ? i * step + start : start));
  if (endpoint && num > 1) y[num - 1] = stop;
  return y;
}

/** np.arange(start, stop, step) in float64, element for element (numpy fills start + i * delta) */
export function npArange(start: number, stop: number, step: number): number[] {
  const len = Math.max(0, Math.ceil((stop - start) / step));
  const delta = start + step - start;
  return Array.from({ length: len }, (_, i) => (i === 0 ? start : i === 1 ? start + step : start + i * delta));
}

/** torch.linspace(start, end, n, dtype=float32), each value rounded once from float64 */
function linspaceF32(start: number, end: number, n: number): number[] {
  const a = f32(start);
  const b = f32(end);
  return Array.from({ length: n }, (_, i) => f32(n === 1 ? a : a + ((b - a) * i) / (n - 1)));
}

/** diffusers' betas (float32 values), rescaled to zero terminal SNR when the config says so */
export function betasFor(cfg: Pick<SchedulerConfig, 'num_train_timesteps' | 'beta_start' | 'beta_end' | 'beta_schedule'> & { rescale_betas_zero_snr?: boolean }): Float64Array {
  const betas = baseBetas(cfg);
  return cfg.rescale_betas_zero_snr ? rescaleZeroTerminalSnr(betas) : betas;
}

function baseBetas(cfg: Pick<SchedulerConfig, 'num_train_timesteps' | 'beta_start' | 'beta_end' | 'beta_schedule'>): Float64Array {
  const n = cfg.num_train_timesteps;
  switch (cfg.beta_schedule) {
    case 'linear':
      return Float64Array.from(linspaceF32(cfg.beta_start, cfg.beta_end, n));
    case 'scaled_linear':
      return Float64Array.from(linspaceF32(Math.sqrt(cfg.beta_start), Math.sqrt(cfg.beta_end), n), (b) => f32(b * b));
    case 'squaredcos_cap_v2': {
      // Glide's cosine alpha_bar, betas capped at 0.999 (betas_for_alpha_bar)
      const alphaBar = (t: number): number => Math.cos(((t + 0.008) / 1.008) * Math.PI / 2) ** 2;
      return Float64Array.from({ length: n }, (_, i) => f32(Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), 0.999)));
    }
  }
}

/**
 * diffusers' rescale_zero_terminal_snr (Lin et al. 2023, algorithm 1), in float32 as there:
 * sqrt(alphas_cumprod) shifted so that the last is 0 and scaled so that the first is unchanged,
 * then turned back into betas (the last is 1).
 */
export function rescaleZeroTerminalSnr(betas: Float64Array): Float64Array {
  const s = Float64Array.from(alphasCumprodFor(betas), (a) => f32(Math.sqrt(a)));
  const [s0, sT] = [s[0], s[s.length - 1]];
  const k = f32(s0 / f32(s0 - sT));
  const bar = s.map((x) => f32(f32(f32(x - sT) * k) ** 2));
  return bar.map((a, i) => f32(1 - (i === 0 ? a : f32(a / bar[i - 1]))));
}

/** cumprod(1 - betas): float32 alphas, product accumulated in float64 (torch's CPU cumprod), stored as float32 */
export function alphasCumprodFor(betas: Float64Array): Float64Array {
  let p = 1;
  return betas.map((b) => f32((p *= f32(1 - b))));
}

/** DDPM / DDIM inference timesteps (integers, descending) for num_inference_steps n */
export function spacedTimesteps(cfg: Pick<SchedulerConfig, 'num_train_timesteps' | 'timestep_spacing' | 'steps_offset'>, n: number): number[] {
  const N = cfg.num_train_timesteps;
  checkSteps(n, N, 'num_inference_steps');
  switch (cfg.timestep_spacing) {
    case 'linspace':
      return npLinspace(0, N - 1, n).map(roundHalfEven).reverse();
    case 'leading':
      return Array.from({ length: n }, (_, i) => (n - 1 - i) * Math.floor(N / n) + cfg.steps_offset);
    case 'trailing':
      // np.arange(N, 0, -N/n) can have n + 1 entries (n = 61, 103, ...); diffusers keeps them all
      return npArange(N, 0, -N / n).map((t) => roundHalfEven(t) - 1);
  }
}

/** EulerDiscreteScheduler timesteps: float32 values; 'linspace' is not rounded */
export function eulerTimesteps(cfg: Pick<SchedulerConfig, 'num_train_timesteps' | 'timestep_spacing' | 'steps_offset'>, n: number): number[] {
  if (cfg.timestep_spacing !== 'linspace') return spacedTimesteps(cfg, n);
  checkSteps(n, cfg.num_train_timesteps, 'num_inference_steps');
  return npLinspace(0, cfg.num_train_timesteps - 1, n).map(f32).reverse();
}

/** sqrt((1 - alphas_cumprod) / alphas_cumprod) in float32, per training timestep */
export function trainSigmas(alphasCumprod: Float64Array): number[] {
  return Array.from(alphasCumprod, (a) => f32(Math.sqrt(f32(f32(1 - a) / a))));
}

/** Euler's sigmas at `timesteps` (np.interp over the training sigmas), then a final 0 */
export function eulerSigmas(alphasCumprod: Float64Array, timesteps: number[]): number[] {
  const s = trainSigmas(alphasCumprod);
  const last = s.length - 1;
  const interp = (x: number): number => {
    if (x <= 0) return s[0];
    if (x >= last) return s[last];
    const j = Math.floor(x);
    return x === j ? s[j] : (s[j + 1] - s[j]) * (x - j) + s[j];
  };
  return [...timesteps.map((t) => f32(interp(t))), 0];
}

/**
 * LCM / TCD timesteps: the distillation schedule k-1, 2k-1, ... (k = N // original_steps),
 * descending, sampled at floor(linspace(0, original_steps, n, endpoint=False)).
 */
export function consistencyTimesteps(numTrainTimesteps: number, originalSteps: number, n: number): number[] {
  if (!Number.isInteger(originalSteps) || originalSteps < 1 || originalSteps > numTrainTimesteps) {
    throw new Error(`original_inference_steps must be an integer in [1, ${numTrainTimesteps}], got ${originalSteps}`);
  }
  checkSteps(n, originalSteps, 'num_inference_steps (at most original_inference_steps)');
  const k = Math.floor(numTrainTimesteps / originalSteps);
  return npLinspace(0, originalSteps, n, false).map((i) => (originalSteps - Math.floor(i)) * k - 1);
}

/** LCM's boundary-condition scalings for a discrete timestep (sigma_data 0.5) */
export function lcmBoundaryScalings(timestep: number, timestepScaling: number): { cSkip: number; cOut: number } {
  const t = timestep * timestepScaling;
  const sd2 = 0.25;
  return { cSkip: sd2 / (t * t + sd2), cOut: t / Math.sqrt(t * t + sd2) };
}

function checkSteps(n: number, max: number, what: string): void {
  if (!Number.isInteger(n) || n < 1 || n > max) throw new Error(`${what} must be an integer in [1, ${max}], got ${n}`);
}

// ---- tensor helpers ------------------------------------------------------------------------

/** a*x + b*y in one kernel, in x's dtype */
const lin2 = (a: number, x: Tensor, b: number, y: Tensor): Tensor => map('alpha * x0 + beta * x1', [x, y], { alpha: a, beta: b });
const copy = (x: Tensor): Tensor => map('x0', [x]);

function sameShape(a: Tensor, b: Tensor, what: string): void {
  if (a.shape.join() !== b.shape.join()) throw new Error(`${what}: shape [${a.shape.join(', ')}] must equal the sample's [${b.shape.join(', ')}]`);
}

/** Per-sample values as a [B, 1, ...] float32 tensor broadcasting over x (one value broadcasts over the batch). */
function perSample(values: number[], x: Tensor, what: string): Tensor {
  if (x.rank < 1 || (values.length !== 1 && values.length !== x.shape[0])) {
    throw new Error(`${what}: ${values.length} timesteps for a batch of shape [${x.shape.join(', ')}] (need 1 or ${x.shape[0] ?? '?'})`);
  }
  return tensor(Float32Array.from(values), [values.length, ...new Array(Math.max(x.rank - 1, 0)).fill(1)]);
}

export interface NoiseOptions {
  /** noise source for a stochastic step (default: the runtime's default generator) */
  generator?: Generator;
  /** the step's noise itself (shape of the sample), instead of drawing it */
  noise?: Tensor;
}

// ---- schedulers ----------------------------------------------------------------------------

/**
 * What every scheduler shares: the training schedule, the inference timesteps, the loop's
 * entry points. step() returns new tensors the caller owns: run it in tidy() and return the
 * ones to keep.
 */
export abstract class Scheduler {
  readonly config: SchedulerConfig;
  readonly betas: Float64Array;
  readonly alphasCumprod: Float64Array;
  /** the inference timesteps, in order of use */
  timesteps: number[];
  numInferenceSteps: number | null = null;

  protected constructor(readonly className: SchedulerClass, config: Partial<SchedulerConfig>) {
    this.config = parseSchedulerConfig({ ...DEFAULT_CONFIGS[className], ...config }, className, `new ${className}`);
    this.betas = betasFor(this.config);
    this.alphasCumprod = alphasCumprodFor(this.betas);
    this.timesteps = Array.from({ length: this.config.num_train_timesteps }, (_, i) => this.config.num_train_timesteps - 1 - i);
  }

  /** the standard deviation of the initial noise */
  get initNoiseSigma(): number {
    return 1;
  }

  abstract setTimesteps(numInferenceSteps: number): void;

  /** the UNet input at `timestep`: `sample` itself unless the scheduler scales it */
  scaleModelInput(sample: Tensor, _timestep: number): Tensor {
    return sample;
  }

  toJson(): Record<string, unknown> {
    return schedulerConfigJson(this.className, this.config);
  }

  protected alphaAt(t: number, what = 'timestep'): number {
    const a = this.alphasCumprod[t];
    if (!Number.isInteger(t) || a === undefined) throw new Error(`${this.className}: ${what} ${t} is not an integer in [0, ${this.alphasCumprod.length})`);
    return a;
  }

  protected drawNoise(sample: Tensor, opts: NoiseOptions): Tensor {
    if (opts.noise) {
      sameShape(opts.noise, sample, `${this.className}.step noise`);
      return opts.noise;
    }
    return randn(sample.shape, { generator: opts.generator });
  }
}

/** Schedulers on alphas_cumprod (DDPM, DDIM, LCM, TCD): forward noising, training targets, x0/eps predictions. */
export abstract class AlphaScheduler extends Scheduler {
  /** sqrt(a_t) x0 + sqrt(1 - a_t) noise, with one timestep per batch item (or one for all) */
  addNoise(original: Tensor, noise: Tensor, timesteps: number[]): Tensor {
    sameShape(noise, original, `${this.className}.addNoise noise`);
    return this.withAlphas(timesteps, original, 'addNoise', (a) => map('sqrt(x2) * x0 + sqrt(1.0 - x2) * x1', [original, noise, a]));
  }

  /** the v-prediction target sqrt(a_t) noise - sqrt(1 - a_t) sample */
  getVelocity(sample: Tensor, noise: Tensor, timesteps: number[]): Tensor {
    sameShape(noise, sample, `${this.className}.getVelocity noise`);
    return this.withAlphas(timesteps, sample, 'getVelocity', (a) => map('sqrt(x2) * x1 - sqrt(1.0 - x2) * x0', [sample, noise, a]));
  }

  /** what the model learns to predict from addNoise(original, noise, timesteps): noise, velocity or the original (a new tensor) */
  trainingTarget(original: Tensor, noise: Tensor, timesteps: number[]): Tensor {
    sameShape(noise, original, `${this.className}.trainingTarget noise`);
    switch (this.config.prediction_type) {
      case 'epsilon': return copy(noise);
      case 'sample': return copy(original);
      case 'v_prediction': return this.getVelocity(original, noise, timesteps);
    }
  }

  private withAlphas(timesteps: number[], x: Tensor, what: string, fn: (a: Tensor) => Tensor): Tensor {
    const a = perSample(timesteps.map((t) => this.alphaAt(t, `${what} timestep`)), x, `${this.className}.${what}`);
    try {
      return fn(a);
    } finally {
      a.dispose();
    }
  }

  /**
   * x0 = a * sample + b * model_output at timestep t, as [a, b]: for callers that form x0 with
   * their own (differentiable) ops. An epsilon model has no x0 where the schedule is pure noise.
   */
  x0Coefficients(t: number): [number, number] {
    const a = this.alphaAt(t);
    if (a === 0 && this.config.prediction_type === 'epsilon')
      throw new Error(`${this.className}: an epsilon-prediction model has no x0 at timestep ${t}, where the schedule is pure noise (rescale_betas_zero_snr); use v_prediction`);
    return this.predictionCoefs(a).x0;
  }

  /** x0 and epsilon as [coefficient of sample, coefficient of model output] at alpha_prod_t */
  protected predictionCoefs(alphaProd: number): { x0: [number, number]; eps: [number, number] } {
    const sa = Math.sqrt(alphaProd);
    const sb = Math.sqrt(1 - alphaProd);
    switch (this.config.prediction_type) {
      case 'epsilon': return { x0: [1 / sa, -sb / sa], eps: [0, 1] };
      case 'sample': return { x0: [0, 1], eps: [1 / sb, -sa / sb] };
      case 'v_prediction': return { x0: [sa, -sb], eps: [sb, sa] };
    }
  }

  /** the predicted x0, clipped when the config says so */
  protected predictX0(modelOutput: Tensor, sample: Tensor, alphaProd: number): Tensor {
    sameShape(modelOutput, sample, `${this.className}.step model_output`);
    const [a, b] = this.predictionCoefs(alphaProd).x0;
    const x0 = lin2(a, sample, b, modelOutput);
    const r = this.config.clip_sample_range;
    return this.config.clip_sample ? clamp(x0, -r, r) : x0;
  }

}

export interface StepOutput {
  prevSample: Tensor;
  predOriginalSample: Tensor;
}

/** DDPM: ancestral sampling with the 'fixed_small' posterior variance; the usual training scheduler. */
export class DDPMScheduler extends AlphaScheduler {
  constructor(config: Partial<SchedulerConfig> = {}) {
    super('DDPMScheduler', config);
  }

  setTimesteps(numInferenceSteps: number): void {
    this.timesteps = spacedTimesteps(this.config, numInferenceSteps);
    this.numInferenceSteps = numInferenceSteps;
  }

  previousTimestep(t: number): number {
    return t - Math.floor(this.config.num_train_timesteps / (this.numInferenceSteps ?? this.config.num_train_timesteps));
  }

  step(modelOutput: Tensor, timestep: number, sample: Tensor, opts: NoiseOptions = {}): StepOutput {
    const prevT = this.previousTimestep(timestep);
    const at = this.alphaAt(timestep);
    const ap = prevT >= 0 ? this.alphasCumprod[prevT] : 1;
    const alphaT = at / ap;
    const betaT = 1 - alphaT;
    return tidy(() => {
      const x0 = this.predictX0(modelOutput, sample, at);
      // the posterior mean, formula (7) of the DDPM paper
      let prev = lin2((Math.sqrt(ap) * betaT) / (1 - at), x0, (Math.sqrt(alphaT) * (1 - ap)) / (1 - at), sample);
      if (timestep > 0) {
        const variance = Math.max(((1 - ap) / (1 - at)) * betaT, 1e-20);
        prev = lin2(1, prev, Math.sqrt(variance), this.drawNoise(sample, opts));
      }
      return { prevSample: prev, predOriginalSample: x0 };
    });
  }
}

export interface DDIMStepOptions extends NoiseOptions {
  /** noise weight: 0 deterministic DDIM, 1 DDPM-like */
  eta?: number;
  /** recompute epsilon from the clipped x0 */
  useClippedModelOutput?: boolean;
}

export class DDIMScheduler extends AlphaScheduler {
  constructor(config: Partial<SchedulerConfig> = {}) {
    super('DDIMScheduler', config);
  }

  setTimesteps(numInferenceSteps: number): void {
    this.timesteps = spacedTimesteps(this.config, numInferenceSteps);
    this.numInferenceSteps = numInferenceSteps;
  }

  step(modelOutput: Tensor, timestep: number, sample: Tensor, opts: DDIMStepOptions = {}): StepOutput {
    if (this.numInferenceSteps === null) throw new Error('DDIMScheduler.step: call setTimesteps first');
    const eta = opts.eta ?? 0;
    const prevT = timestep - Math.floor(this.config.num_train_timesteps / this.numInferenceSteps);
    const at = this.alphaAt(timestep);
    // alphas_cumprod "before" timestep 0
    const ap = prevT >= 0 ? this.alphasCumprod[prevT] : this.config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
    const variance = ((1 - ap) / (1 - at)) * (1 - at / ap);
    const std = eta * Math.sqrt(variance);
    return tidy(() => {
      const x0 = this.predictX0(modelOutput, sample, at);
      const [c, d] = this.predictionCoefs(at).eps;
      const eps = opts.useClippedModelOutput
        ? lin2(1 / Math.sqrt(1 - at), sample, -Math.sqrt(at) / Math.sqrt(1 - at), x0)
        : lin2(c, sample, d, modelOutput);
      let prev = lin2(Math.sqrt(ap), x0, Math.sqrt(1 - ap - std * std), eps);
      if (eta > 0) prev = lin2(1, prev, std, this.drawNoise(sample, opts));
      return { prevSample: prev, predOriginalSample: x0 };
    });
  }
}

/** Position of `timestep` in `timesteps` (diffusers' index_for_timestep; our schedules have no repeats). */
function indexForTimestep(timesteps: number[], timestep: number, who: string): number {
  const i = timesteps.indexOf(timestep);
  if (i < 0) throw new Error(`${who}: timestep ${timestep} is not in the schedule [${timesteps.join(', ')}]`);
  return i;
}

export interface EulerStepOptions extends NoiseOptions {
  /** stochastic "churn" of Karras et al. (0: none) and the sigma range and noise scale it applies to */
  sChurn?: number;
  sTmin?: number;
  sTmax?: number;
  sNoise?: number;
}

/** Euler method on the probability-flow ODE in sigma = sqrt((1 - a) / a); SDXL's default. */
export class EulerDiscreteScheduler extends Scheduler {
  /** sigmas at the timesteps, then 0 */
  sigmas: number[];
  stepIndex: number | null = null;

  constructor(config: Partial<SchedulerConfig> = {}) {
    super('EulerDiscreteScheduler', config);
    this.sigmas = [...trainSigmas(this.alphasCumprod).reverse(), 0];
  }

  override get initNoiseSigma(): number {
    const max = Math.max(...this.sigmas);
    return this.config.timestep_spacing === 'leading' ? Math.sqrt(max * max + 1) : max;
  }

  setTimesteps(numInferenceSteps: number): void {
    this.timesteps = eulerTimesteps(this.config, numInferenceSteps);
    this.sigmas = eulerSigmas(this.alphasCumprod, this.timesteps);
    this.numInferenceSteps = numInferenceSteps;
    this.stepIndex = null;
  }

  private sigmaIndex(timestep: number): number {
    this.stepIndex ??= indexForTimestep(this.timesteps, timestep, 'EulerDiscreteScheduler');
    return this.stepIndex;
  }

  /** sample / sqrt(sigma^2 + 1) */
  override scaleModelInput(sample: Tensor, timestep: number): Tensor {
    const sigma = this.sigmas[this.sigmaIndex(timestep)];
    return mulScalar(sample, 1 / Math.sqrt(sigma * sigma + 1));
  }

  step(modelOutput: Tensor, timestep: number, sample: Tensor, opts: EulerStepOptions = {}): StepOutput {
    sameShape(modelOutput, sample, 'EulerDiscreteScheduler.step model_output');
    const i = this.sigmaIndex(timestep);
    const sigma = this.sigmas[i];
    const { sChurn = 0, sTmin = 0, sTmax = Infinity, sNoise = 1 } = opts;
    const gamma = sTmin <= sigma && sigma <= sTmax ? Math.min(sChurn / (this.sigmas.length - 1), Math.SQRT2 - 1) : 0;
    const sigmaHat = sigma * (gamma + 1);
    const out = tidy(() => {
      const x = gamma > 0 ? lin2(1, sample, sNoise * Math.sqrt(sigmaHat ** 2 - sigma ** 2), this.drawNoise(sample, opts)) : sample;
      // x0 = a x + b model_output; prev = x + dt (x - x0) / sigma_hat, folded into one kernel
      const [a, b] = this.config.prediction_type === 'epsilon' ? [1, -sigmaHat]
        : this.config.prediction_type === 'v_prediction' ? [1 / (sigma * sigma + 1), -sigma / Math.sqrt(sigma * sigma + 1)]
        : [0, 1];
      const dt = this.sigmas[i + 1] - sigmaHat;
      return {
        prevSample: lin2(1 + ((1 - a) * dt) / sigmaHat, x, (-b * dt) / sigmaHat, modelOutput),
        predOriginalSample: lin2(a, x, b, modelOutput),
      };
    });
    this.stepIndex = i + 1;
    return out;
  }

  /** original + sigma(t) noise, t one of the schedule's timesteps per batch item (or one for all) */
  addNoise(original: Tensor, noise: Tensor, timesteps: number[]): Tensor {
    sameShape(noise, original, 'EulerDiscreteScheduler.addNoise noise');
    const s = perSample(timesteps.map((t) => this.sigmas[indexForTimestep(this.timesteps, t, 'EulerDiscreteScheduler.addNoise')]), original, 'EulerDiscreteScheduler.addNoise');
    try {
      return map('x0 + x1 * x2', [original, noise, s]);
    } finally {
      s.dispose();
    }
  }
}

/** Shared by LCM and TCD: timesteps from the distillation schedule, a step counter. */
abstract class ConsistencyScheduler extends AlphaScheduler {
  stepIndex: number | null = null;

  setTimesteps(numInferenceSteps: number): void {
    this.setConsistencyTimesteps(numInferenceSteps, this.config.original_inference_steps);
  }

  protected setConsistencyTimesteps(numInferenceSteps: number, originalInferenceSteps: number): void {
    this.timesteps = consistencyTimesteps(this.config.num_train_timesteps, originalInferenceSteps, numInferenceSteps);
    this.numInferenceSteps = numInferenceSteps;
    this.stepIndex = null;
  }

  /** the step's index and the timestep after it (undefined at the last step) */
  protected advance(timestep: number): { index: number; next: number | undefined } {
    if (this.numInferenceSteps === null) throw new Error(`${this.className}.step: call setTimesteps first`);
    const index = (this.stepIndex ??= indexForTimestep(this.timesteps, timestep, this.className));
    return { index, next: this.timesteps[index + 1] };
  }
}

/** Latent Consistency Model multistep sampling: denoise with c_skip/c_out, re-noise to the next timestep. */
export class LCMScheduler extends ConsistencyScheduler {
  constructor(config: Partial<SchedulerConfig> = {}) {
    super('LCMScheduler', config);
  }

  /** originalInferenceSteps overrides the config's original_inference_steps */
  override setTimesteps(numInferenceSteps: number, originalInferenceSteps = this.config.original_inference_steps): void {
    this.setConsistencyTimesteps(numInferenceSteps, originalInferenceSteps);
  }

  step(modelOutput: Tensor, timestep: number, sample: Tensor, opts: NoiseOptions = {}): { prevSample: Tensor; denoised: Tensor } {
    const { index, next } = this.advance(timestep);
    const at = this.alphaAt(timestep);
    const { cSkip, cOut } = lcmBoundaryScalings(timestep, this.config.timestep_scaling);
    const out = tidy(() => {
      const denoised = lin2(cOut, this.predictX0(modelOutput, sample, at), cSkip, sample);
      if (next === undefined) return { prevSample: copy(denoised), denoised };
      // re-noised to the next timestep
      const ap = this.alphasCumprod[next];
      const prevSample = lin2(Math.sqrt(ap), denoised, Math.sqrt(1 - ap), this.drawNoise(sample, opts));
      return { prevSample, denoised };
    });
    this.stepIndex = index + 1;
    return out;
  }
}

export interface TCDStepOptions extends NoiseOptions {
  /** gamma of the TCD paper: 0 deterministic, 1 fully stochastic (default 0.3) */
  eta?: number;
}

/** Trajectory Consistency Distillation's strategic stochastic sampling. */
export class TCDScheduler extends ConsistencyScheduler {
  constructor(config: Partial<SchedulerConfig> = {}) {
    super('TCDScheduler', config);
  }

  step(modelOutput: Tensor, timestep: number, sample: Tensor, opts: TCDStepOptions = {}): { prevSample: Tensor; predNoisedSample: Tensor } {
    const eta = opts.eta ?? 0.3;
    if (!(eta >= 0 && eta <= 1)) throw new Error(`TCDScheduler.step: eta must be in [0, 1], got ${eta}`);
    sameShape(modelOutput, sample, 'TCDScheduler.step model_output');
    const { index, next } = this.advance(timestep);
    // s = floor((1 - eta) * prev_timestep) as torch computes it, in float32; prev_timestep is 0 after the last step
    const s = Math.floor(f32(f32(1 - eta) * (next ?? 0)));
    const at = this.alphaAt(timestep);
    const as = this.alphasCumprod[s];
    const { x0, eps } = this.predictionCoefs(at);
    const [ka, kb] = [Math.sqrt(as), Math.sqrt(1 - as)];
    const out = tidy(() => {
      // x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps, both linear in (sample, model_output)
      const predNoisedSample = lin2(ka * x0[0] + kb * eps[0], sample, ka * x0[1] + kb * eps[1], modelOutput);
      if (eta === 0 || next === undefined) return { prevSample: copy(predNoisedSample), predNoisedSample };
      const ap = this.alphasCumprod[next];
      const prevSample = lin2(Math.sqrt(ap / as), predNoisedSample, Math.sqrt(1 - ap / as), this.drawNoise(sample, opts));
      return { prevSample, predNoisedSample };
    });
    this.stepIndex = index + 1;
    return out;
  }
}

export type AnyScheduler = DDPMScheduler | DDIMScheduler | EulerDiscreteScheduler | LCMScheduler | TCDScheduler;
