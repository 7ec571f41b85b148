// Schedulers (models/schedulers.ts) against diffusers' own scheduler code (test/fixtures/
// gen_schedulers.py: DDPM, DDIM, Euler discrete at v0.21.4, LCM and TCD at a later commit):
// betas and alphas_cumprod, timesteps (exactly) and sigmas for many step counts and spacings,
// every step of short sampling loops on random model outputs with the same noise on both sides,
// forward noising and the v target; seeded noise; scheduler_config.json parsing and its errors.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { errorReport } from './ref/suite.ts';
import { Generator, type Tensor, randn, tensor } from '../runtime/index.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import { maxRelError } from './ref/cpu.ts';
import {
  type AnyScheduler, DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, LCMScheduler, type SchedulerClass, alphasCumprodFor, betasFor,
  fromConfig, lcmBoundaryScalings,
} from '../models/schedulers.ts';

type Json = Record<string, unknown>;
interface ScheduleCase { cls: SchedulerClass; config: Json; n: number; original_inference_steps?: number; timesteps: number[]; sigmas?: number[]; init_noise_sigma: number }
interface StepCase { name: string; cls: SchedulerClass; config: Json; n: number; kwargs: Json; timesteps: number[]; steps: { t: number; noise_used: boolean }[] }
interface NoiseCase { name: string; cls: SchedulerClass; config: Json; n?: number; timesteps: number[] }

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const ref = JSON.parse(readFileSync(fixture('schedulers.json'), 'utf8')) as {
  sdxl_config: Json; betas: Record<string, number[]>; alphas_cumprod: Record<string, number[]>;
  schedules: ScheduleCase[]; steps: StepCase[]; add_noise: NoiseCase[];
};
const st = await openSafetensors(fixture('schedulers.safetensors'));
const load = async (k: string): Promise<Tensor> => tensor(await st.readF32(k), st.info(k).shape);

const noteWorst = errorReport();
function note(group: string, err: number, tol: number): void {
  noteWorst(group, err);
  expect(err, group).toBeLessThanOrEqual(tol);
}
/** worst elementwise |got - want| / |want| */
const elementRelError = (got: ArrayLike<number>, want: ArrayLike<number>): number => {
  expect(got.length).toBe(want.length);
  return Math.max(...Array.from(want, (w, i) => Math.abs(got[i] - w) / Math.abs(w || 1)));
};
const build = (c: { cls: SchedulerClass; config: Json }): AnyScheduler => fromConfig({ ...c.config, _class_name: c.cls });

describe('training schedule', () => {
  it.each(['linear', 'scaled_linear', 'squaredcos_cap_v2'] as const)('betas and alphas_cumprod: %s', (schedule) => {
    const betas = betasFor({ num_train_timesteps: 1000, beta_start: schedule === 'linear' ? 0.0001 : 0.00085, beta_end: schedule === 'linear' ? 0.02 : 0.012, beta_schedule: schedule });
    note('betas (elementwise)', elementRelError(betas, ref.betas[schedule]), 1e-6);
    note('alphas_cumprod (elementwise)', elementRelError(alphasCumprodFor(betas), ref.alphas_cumprod[schedule]), 1e-6);
  });

  it('rescale_betas_zero_snr: DDIM\'s schedule, shared by DDPM, LCM and TCD; pure noise at the last timestep', async () => {
    const zsnr = { ...ref.sdxl_config, prediction_type: 'v_prediction', rescale_betas_zero_snr: true };
    const ddim = fromConfig(zsnr, { className: 'DDIMScheduler' });
    // relative to the largest value; the ratio of consecutive alphas_bar (down to 2e-7) amplifies float32 rounding
    note('zero-SNR betas', maxRelError(ddim.betas, ref.betas.scaled_linear_zero_snr), 1e-5);
    note('zero-SNR alphas_cumprod', maxRelError(ddim.alphasCumprod, ref.alphas_cumprod.scaled_linear_zero_snr), 1e-6);
    expect(ddim.alphasCumprod[999]).toBe(0);
    expect(ddim.alphasCumprod[0]).toBe(new DDIMScheduler({ beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012 }).alphasCumprod[0]);
    for (const cls of ['DDPMScheduler', 'LCMScheduler', 'TCDScheduler'] as const) {
      const s = fromConfig(zsnr, { className: cls });
      expect(Array.from(s.alphasCumprod), cls).toEqual(Array.from(ddim.alphasCumprod));
      expect(s.toJson().rescale_betas_zero_snr, cls).toBe(true);
    }
    const ddpm = fromConfig(zsnr, { className: 'DDPMScheduler' }) as DDPMScheduler;
    const [x0, noise] = [tensor([1, 2, 3, 4], [1, 4]), tensor([0.5, -1, 2, 0], [1, 4])];
    const [noisy, v] = [ddpm.addNoise(x0, noise, [999]), ddpm.getVelocity(x0, noise, [999])];
    expect(await noisy.data()).toEqual(await noise.data());
    expect(Array.from(await v.data())).toEqual([-1, -2, -3, -4]);
    [x0, noise, noisy, v].forEach((x) => x.dispose());
    expect(() => fromConfig(zsnr)).toThrow(/"rescale_betas_zero_snr" = true is not supported by EulerDiscreteScheduler/);
    // x0 = a z + b v: -v at the pure-noise timestep; an epsilon model has no x0 there
    expect(ddpm.x0Coefficients(999)).toEqual([0, -1]);
    expect(ddpm.x0Coefficients(500)).toEqual([Math.sqrt(ddpm.alphasCumprod[500]), -Math.sqrt(1 - ddpm.alphasCumprod[500])]);
    const eps = fromConfig({ ...zsnr, prediction_type: 'epsilon' }, { className: 'DDIMScheduler' }) as DDIMScheduler;
    expect(() => eps.x0Coefficients(999)).toThrow(/DDIMScheduler: an epsilon-prediction model has no x0 at timestep 999, where the schedule is pure noise/);
    expect(() => ddpm.x0Coefficients(1000)).toThrow(/DDPMScheduler: timestep 1000 is not an integer in \[0, 1000\)/);
  });
});

describe('inference timesteps and sigmas', () => {
  it('match diffusers exactly for every class, step count and spacing', () => {
    for (const c of ref.schedules) {
      const s = build(c);
      if (c.original_inference_steps) (s as LCMScheduler).setTimesteps(c.n, c.original_inference_steps);
      else s.setTimesteps(c.n);
      const what = `${c.cls} ${c.config.timestep_spacing ?? ''} n=${c.n}`;
      expect(s.timesteps, what).toEqual(c.timesteps);
      if (c.sigmas) note('Euler sigmas (elementwise)', elementRelError((s as EulerDiscreteScheduler).sigmas, c.sigmas), 1e-6);
      note('init_noise_sigma', Math.abs(s.initNoiseSigma - c.init_noise_sigma) / c.init_noise_sigma, 1e-6);
    }
    // n = 61 'trailing' gives 62 timesteps in diffusers (np.arange overshoot): kept as is
    expect(ref.schedules.some((c) => c.timesteps.length === 62)).toBe(true);
  });

  it('LCM 1/2/4 steps on SDXL betas are the known ones', () => {
    const s = fromConfig(ref.sdxl_config, { className: 'LCMScheduler' });
    const got = [1, 2, 4].map((n) => (s.setTimesteps(n), s.timesteps));
    expect(got).toEqual([[999], [999, 499], [999, 759, 499, 259]]);
  });
});

const STEP_OPTIONS: Record<string, string> = { eta: 'eta', use_clipped_model_output: 'useClippedModelOutput', s_churn: 'sChurn' };

describe('step against diffusers (same noise)', () => {
  it.each(ref.steps.map((c) => [c.name, c] as const))('%s', async (_, c) => {
    const s = build(c);
    s.setTimesteps(c.n);
    expect(s.timesteps).toEqual(c.timesteps);
    const opts = Object.fromEntries(Object.entries(c.kwargs).map(([k, v]) => [STEP_OPTIONS[k], v]));
    // every noise the step adds is given; the generator must stay untouched
    const generator = new Generator(5);
    for (const [k, { t, noise_used }] of c.steps.entries()) {
      const p = `${c.name}.${k}.`;
      const sample = await load(p + 'sample');
      const modelOutput = await load(p + 'model_output');
      const noise = noise_used ? await load(p + 'noise') : undefined;
      const group = c.cls.replace('Scheduler', '');
      if (s instanceof EulerDiscreteScheduler) {
        const input = s.scaleModelInput(sample, t);
        note(`${group} scale_model_input`, maxRelError(await input.data(), await st.readF32(p + 'model_input')), 1e-6);
        input.dispose();
      }
      const out = (s.step as (m: Tensor, t: number, x: Tensor, o: object) => Record<string, Tensor>)(modelOutput, t, sample, { ...opts, noise, generator });
      const [prev, pred] = [out.prevSample, out.predOriginalSample ?? out.denoised ?? out.predNoisedSample];
      note(`${group} step prev_sample`, maxRelError(await prev.data(), await st.readF32(p + 'prev_sample')), 1e-5);
      note(`${group} step prediction`, maxRelError(await pred.data(), await st.readF32(p + 'pred')), 1e-5);
      expect(generator.counter, `${p} drew noise of its own`).toBe(0);
      [sample, modelOutput, noise, prev, pred].forEach((x) => x?.dispose());
    }
  });
});

describe('forward noising and training targets', () => {
  it.each(ref.add_noise.map((c) => [c.name, c] as const))('add_noise / get_velocity: %s', async (_, c) => {
    const s = build(c);
    if (c.n) s.setTimesteps(c.n);
    const [x0, noise] = [await load(`${c.name}.x0`), await load(`${c.name}.noise`)];
    const noisy = s.addNoise(x0, noise, c.timesteps);
    note('add_noise', maxRelError(await noisy.data(), await st.readF32(`${c.name}.noisy`)), 1e-6);
    const made = [x0, noise, noisy];
    if (s instanceof DDPMScheduler) {
      const v = s.getVelocity(x0, noise, c.timesteps);
      note('get_velocity', maxRelError(await v.data(), await st.readF32(`${c.name}.velocity`)), 1e-6);
      const vs = fromConfig({ ...c.config, _class_name: c.cls, prediction_type: 'v_prediction' }) as DDPMScheduler;
      const eps = s.trainingTarget(x0, noise, c.timesteps);
      const vt = vs.trainingTarget(x0, noise, c.timesteps);
      expect(await eps.data()).toEqual(await noise.data());
      note('v training target', maxRelError(await vt.data(), await st.readF32(`${c.name}.velocity`)), 1e-6);
      made.push(v, eps, vt);
    }
    made.forEach((x) => x.dispose());
  });

  it('one timestep broadcasts over the batch; a wrong count is an error', async () => {
    const s = new DDPMScheduler();
    const [x0, noise] = [tensor([1, 2, 3, 4], [2, 2]), tensor([0.5, -1, 2, 0], [2, 2])];
    const y = s.addNoise(x0, noise, [500]);
    const a = s.alphasCumprod[500];
    note('add_noise (scalar t)', maxRelError(await y.data(), [1, 2, 3, 4].map((x, i) => Math.sqrt(a) * x + Math.sqrt(1 - a) * [0.5, -1, 2, 0][i])), 1e-6);
    expect(() => s.addNoise(x0, noise, [1, 2, 3])).toThrow(/addNoise: 3 timesteps for a batch of shape \[2, 2\]/);
    expect(() => s.addNoise(x0, noise, [1000])).toThrow(/addNoise timestep 1000 is not an integer in \[0, 1000\)/);
    [x0, noise, y].forEach((x) => x.dispose());
  });
});

describe('seeded noise', () => {
  /** a 3-step LCM loop; the noise between steps comes from `generator` */
  async function lcmRun(generator: Generator | null, noises: Tensor[] = []): Promise<Float32Array[]> {
    const s = new LCMScheduler();
    s.setTimesteps(3);
    let x = tensor(Array.from({ length: 64 }, (_, i) => Math.sin(i)), [1, 4, 4, 4]);
    const m = tensor(Array.from({ length: 64 }, (_, i) => Math.cos(i * 0.7)), [1, 4, 4, 4]);
    const outs: Float32Array[] = [];
    for (const [k, t] of s.timesteps.entries()) {
      const { prevSample, denoised } = s.step(m, t, x, generator ? { generator } : { noise: noises[k] });
      outs.push((await prevSample.data()) as Float32Array);
      [x, denoised].forEach((y) => y.dispose());
      x = prevSample;
    }
    [x, m].forEach((y) => y.dispose());
    return outs;
  }

  it('same seed, same steps; the draws are randn(sample shape) from the generator', async () => {
    const a = await lcmRun(new Generator(42));
    const b = await lcmRun(new Generator(42));
    const other = await lcmRun(new Generator(43));
    expect(b).toEqual(a);
    expect(other[0]).not.toEqual(a[0]);
    expect(other[2]).not.toEqual(a[2]); // the last step adds no noise, but its input differs
    const g = new Generator(42);
    const noises = [randn([1, 4, 4, 4], { generator: g }), randn([1, 4, 4, 4], { generator: g })];
    expect(await lcmRun(null, noises)).toEqual(a);
    noises.forEach((n) => n.dispose());
  });

  it('DDPM draws one noise per step except at t = 0', () => {
    const s = new DDPMScheduler();
    s.setTimesteps(2);
    const g = new Generator(1);
    const x = tensor(new Float32Array(8).fill(0.5), [2, 4]);
    for (const t of s.timesteps) {
      const { prevSample, predOriginalSample } = s.step(x, t, x, { generator: g });
      [prevSample, predOriginalSample].forEach((y) => y.dispose());
    }
    expect(s.timesteps).toEqual([500, 0]);
    expect(g.counter).toBe(1);
    x.dispose();
  });
});

describe('scheduler_config.json', () => {
  it('reads SDXL\'s config as Euler (unknown fields ignored) and as LCM, and round-trips', () => {
    const euler = fromConfig(ref.sdxl_config);
    expect(euler).toBeInstanceOf(EulerDiscreteScheduler);
    expect(euler.config).toMatchObject({ beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, steps_offset: 1, timestep_spacing: 'leading', prediction_type: 'epsilon' });
    const lcm = fromConfig(ref.sdxl_config, { className: 'LCMScheduler' });
    expect(lcm.config).toMatchObject({ set_alpha_to_one: false, original_inference_steps: 50, timestep_scaling: 10, clip_sample: false });
    const json = lcm.toJson();
    expect(json._class_name).toBe('LCMScheduler');
    expect(json).not.toHaveProperty('skip_prk_steps');
    expect(fromConfig(json).config).toEqual(lcm.config);
    // class defaults where the config is silent
    expect(fromConfig({ _class_name: 'EulerDiscreteScheduler' }).config.timestep_spacing).toBe('linspace');
    expect(fromConfig({ _class_name: 'DDPMScheduler' }).config).toMatchObject({ beta_schedule: 'linear', clip_sample: true });
  });

  it('names the field at fault', () => {
    const sdxl = ref.sdxl_config;
    expect(() => fromConfig({ ...sdxl, beta_schedule: 'sigmoid' }, { where: 'x/scheduler_config.json' })).toThrow(/x\/scheduler_config.json: "beta_schedule" must be one of "linear", "scaled_linear", "squaredcos_cap_v2", got "sigmoid"/);
    expect(() => fromConfig({ ...sdxl, _class_name: 'PNDMScheduler' })).toThrow(/"_class_name" must be one of .*got "PNDMScheduler"/);
    expect(() => fromConfig({ ...sdxl, use_karras_sigmas: true })).toThrow(/"use_karras_sigmas" = true is not supported/);
    // the same field is ignored by a class that does not have it (diffusers' from_config)
    expect(fromConfig({ ...sdxl, use_karras_sigmas: true }, { className: 'DDIMScheduler' })).toBeInstanceOf(DDIMScheduler);
    expect(() => fromConfig({ _class_name: 'DDPMScheduler', trained_betas: [0.1, 0.2] })).toThrow(/"trained_betas" = \[0.1,0.2\] is not supported/);
    expect(() => fromConfig({ ...sdxl, steps_offset: -1 })).toThrow(/"steps_offset" must be an integer >= 0/);
    expect(() => fromConfig({ _class_name: 'LCMScheduler', original_inference_steps: 2000 })).toThrow(/"original_inference_steps" \(2000\) must be <= num_train_timesteps/);
    expect(fromConfig({ _class_name: 'DDPMScheduler', num_train_timesteps: 10 }).alphasCumprod.length).toBe(10);
    expect(() => new DDIMScheduler({ prediction_type: 'x0' as 'sample' })).toThrow(/new DDIMScheduler: "prediction_type" must be one of/);
  });

  it('rejects bad steps and timesteps', () => {
    const lcm = new LCMScheduler();
    expect(() => lcm.setTimesteps(51)).toThrow(/num_inference_steps \(at most original_inference_steps\) must be an integer in \[1, 50\], got 51/);
    expect(() => new DDPMScheduler().setTimesteps(0)).toThrow(/num_inference_steps must be an integer in \[1, 1000\], got 0/);
    const x = tensor([1, 2], [1, 2]);
    expect(() => new DDIMScheduler().step(x, 10, x)).toThrow(/DDIMScheduler.step: call setTimesteps first/);
    const euler = fromConfig(ref.sdxl_config) as EulerDiscreteScheduler;
    euler.setTimesteps(4);
    expect(() => euler.step(x, 750, x)).toThrow(/EulerDiscreteScheduler: timestep 750 is not in the schedule \[751, 501, 251, 1\]/);
    const y = tensor([1, 2, 3], [1, 3]);
    expect(() => new DDPMScheduler().step(y, 10, x)).toThrow(/DDPMScheduler.step model_output: shape \[1, 3\] must equal the sample's \[1, 2\]/);
    [x, y].forEach((t) => t.dispose());
  });

  it('LCM boundary scalings: c_skip -> 1 and c_out -> 0 at t = 0', () => {
    expect(lcmBoundaryScalings(0, 10)).toEqual({ cSkip: 1, cOut: 0 });
    const { cSkip, cOut } = lcmBoundaryScalings(999, 10);
    expect(cSkip).toBeCloseTo(0.25 / (9990 ** 2 + 0.25), 15);
    expect(cOut).toBeCloseTo(9990 / Math.sqrt(9990 ** 2 + 0.25), 15);
  });
});
