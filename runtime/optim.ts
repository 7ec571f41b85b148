// Optimisers with torch.optim semantics (SGD, AdamW), gradient clipping by global norm and
// learning-rate schedules. Each parameter tensor is updated by one fused dispatch of
// kernels/optim.wgsl that reads its gradient and rewrites the parameter and its f32 state in
// place; clipping computes the norm and applies it on the GPU without a readback.
import { device, f32, type Param } from './device.ts';
import { isFloat } from './dtype.ts';
import { Tensor, keep } from './tensor.ts';
import { bindRange, grid1d, stridesOf } from './ops/util.ts';
import { zeros } from './ops/create.ts';
import { copyStrided } from './ops/shape.ts';
import { toSafetensorsEntries } from './nn.ts';
import { loadTensor } from './load.ts';
import type { SafetensorsFile, TensorToWrite } from './safetensors.ts';

// ---- learning-rate schedules -------------------------------------------------------------
/** The learning rate of each update; `step` counts the updates before it (0 for the first). */
export interface LrSchedule {
  lrAt(step: number): number;
}

export const constantLr = (lr: number): LrSchedule => ({ lrAt: () => lr });

export interface WarmupCosineOptions {
  /** the peak learning rate, reached at step `warmupSteps` */
  lr: number;
  warmupSteps: number;
  /** the step at which the decay reaches `minLr` (and stays there) */
  totalSteps: number;
  minLr?: number;
}

/** Linear warmup from lr / warmupSteps to lr, then a half-cosine decay to minLr at totalSteps. */
export function warmupCosine(o: WarmupCosineOptions): LrSchedule {
  const { lr, warmupSteps: w, totalSteps: total, minLr = 0 } = o;
  if (!(w >= 0) || !Number.isInteger(w)) throw new Error(`warmupCosine: warmupSteps must be an integer >= 0, got ${w}`);
  if (!(total > w) || !Number.isInteger(total)) throw new Error(`warmupCosine: totalSteps (${total}) must be an integer > warmupSteps (${w})`);
  if (!(minLr >= 0 && minLr <= lr)) throw new Error(`warmupCosine: minLr (${minLr}) must lie in [0, lr = ${lr}]`);
  return {
    lrAt(step: number): number {
      if (step < w) return (lr * (step + 1)) / w;
      const t = Math.min(1, (step - w) / (total - w));
      return minLr + 0.5 * (lr - minLr) * (1 + Math.cos(Math.PI * t));
    },
  };
}

// ---- parameters --------------------------------------------------------------------------
/** Parameters: a list (named "0", "1", ... as torch's optimiser state), name/tensor pairs, or a Module. */
export type ParamsInput = Tensor[] | Iterable<readonly [string, Tensor]> | { namedParameters(): Iterable<readonly [string, Tensor]> };

function namedParams(ps: ParamsInput, what: string): [string, Tensor][] {
  const entries: Iterable<readonly [string, Tensor]> =
    'namedParameters' in ps ? ps.namedParameters() : Array.isArray(ps) && ps.every((t) => t instanceof Tensor) ? ps.map((t, i) => [String(i), t] as const) : (ps as Iterable<readonly [string, Tensor]>);
  const list = [...entries].map(([n, t]): [string, Tensor] => [n, t]);
  if (!list.length) throw new Error(`${what}: got an empty parameter list`);
  const names = new Set<string>();
  const tensors = new Set<Tensor>();
  for (const [name, t] of list) {
    if (names.has(name)) throw new Error(`${what}: parameter name '${name}' appears twice`);
    if (tensors.has(t)) throw new Error(`${what}: parameter '${name}' is the same tensor as an earlier one`);
    t.assertLive(`${what}: parameter '${name}'`);
    if (!isFloat(t.dtype)) throw new Error(`${what}: parameter '${name}' is ${t.dtype}; only float tensors can be optimised`);
    names.add(name);
    tensors.add(t);
  }
  return list;
}

// ---- optimisers --------------------------------------------------------------------------
const WG = 256; // kernels/optim.wgsl
const CHUNK = WG * 16;

type Hyper = Record<string, number | boolean>;

/** One parameter's state: its own update count (torch skips parameters without a gradient) and f32 tensors. */
export interface ParamState {
  step: number;
  buffers: Record<string, Tensor>;
}

export interface OptimizerStateDict {
  kind: string;
  /** step() calls so far: the schedule's position */
  step: number;
  hyperparameters: Hyper;
  /** by parameter name; the optimiser's live tensors, not copies */
  state: Record<string, ParamState>;
}

export abstract class Optimizer<H extends Hyper = Hyper> {
  readonly params: readonly (readonly [string, Tensor])[];
  /** step() calls so far */
  stepCount = 0;
  protected readonly state = new Map<string, ParamState>();
  /** Each parameter's multiplier of the schedule's rate (torch's param groups with their own lr); default 1. */
  lrScale: (name: string) => number = () => 1;

  constructor(
    readonly kind: string,
    params: ParamsInput,
    public schedule: LrSchedule,
    /** the hyperparameters besides the learning rate (saved and restored with the state) */
    readonly hp: H,
    /** names of the per-parameter state tensors (created as zeros at a parameter's first update) */
    protected readonly bufferNames: readonly string[],
  ) {
    this.params = namedParams(params, kind);
    this.checkHyper(hp);
  }

  protected abstract checkHyper(hp: H): void;
  protected abstract update(p: Tensor, g: Tensor, st: ParamState, lr: number): void;

  /** The learning rate of the next step. */
  get lr(): number {
    return this.schedule.lrAt(this.stepCount);
  }

  /** Updates every parameter that has a .grad (one dispatch each), at the schedule's rate. */
  step(): void {
    const lr = this.lr;
    if (!(lr >= 0)) throw new Error(`${this.kind}: the schedule gave learning rate ${lr} at step ${this.stepCount}`);
    for (const [name, p] of this.params) {
      const g = p.grad;
      if (!g) continue;
      p.assertLive(`${this.kind}: parameter '${name}'`);
      if (g.shape.join() !== p.shape.join()) throw new Error(`${this.kind}: parameter '${name}' [${p.shape}] has a gradient of shape [${g.shape}]`);
      let st = this.state.get(name);
      if (!st) {
        st = { step: 0, buffers: Object.fromEntries(this.bufferNames.map((b) => [b, keep(zeros(p.shape))])) };
        this.state.set(name, st);
      }
      st.step++;
      const scale = this.lrScale(name);
      if (!(scale >= 0)) throw new Error(`${this.kind}: lrScale gave ${scale} for parameter '${name}'`);
      this.update(p, g, st, lr * scale);
    }
    this.stepCount++;
  }

  /** Drops (disposes) every parameter's gradient, as torch's zero_grad(set_to_none=True). */
  zeroGrad(): void {
    for (const [, p] of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  stateDict(): OptimizerStateDict {
    return { kind: this.kind, step: this.stepCount, hyperparameters: { ...this.hp }, state: Object.fromEntries(this.state) };
  }

  /** Restores a stateDict() (copying its tensors): step counts, hyperparameters and state; the schedule stays this optimiser's. */
  loadStateDict(sd: OptimizerStateDict): void {
    if (sd.kind !== this.kind) throw new Error(`${this.kind}.loadStateDict: the state is from ${sd.kind}`);
    const keys = Object.keys(this.hp);
    const got = Object.keys(sd.hyperparameters);
    if (got.length !== keys.length || !keys.every((k) => typeof sd.hyperparameters[k] === typeof this.hp[k]))
      throw new Error(`${this.kind}.loadStateDict: hyperparameters {${got}} do not match {${keys}}`);
    this.checkHyper(sd.hyperparameters as H);
    const shapes = new Map(this.params.map(([n, t]) => [n, t.shape]));
    for (const [name, st] of Object.entries(sd.state)) {
      const shape = shapes.get(name);
      if (!shape) throw new Error(`${this.kind}.loadStateDict: state for '${name}', which is not a parameter of this optimiser`);
      if (Object.keys(st.buffers).sort().join() !== [...this.bufferNames].sort().join())
        throw new Error(`${this.kind}.loadStateDict: '${name}' has state {${Object.keys(st.buffers)}}, expected {${this.bufferNames}}`);
      for (const [b, t] of Object.entries(st.buffers))
        if (t.shape.join() !== shape.join()) throw new Error(`${this.kind}.loadStateDict: ${name}.${b} is [${t.shape}], the parameter [${shape}]`);
    }
    this.disposeState();
    for (const [name, st] of Object.entries(sd.state)) {
      const buffers: Record<string, Tensor> = {};
      for (const [b, t] of Object.entries(st.buffers)) {
        buffers[b] = keep(Tensor.empty(t.shape, 'f32'));
        const s = stridesOf(t.shape);
        copyStrided(t, s, buffers[b], s, t.shape);
      }
      this.state.set(name, { step: st.step, buffers });
    }
    Object.assign(this.hp, sd.hyperparameters);
    this.stepCount = sd.step;
  }

  /** The state as safetensors entries and metadata (read back from the GPU), for saveSafetensors / serializeSafetensors. */
  async toSafetensors(): Promise<{ tensors: Record<string, TensorToWrite>; metadata: Record<string, string> }> {
    const { tensors, metadata } = optimizerStateToTensors(this.stateDict());
    return { tensors: await toSafetensorsEntries(tensors), metadata };
  }

  /** loadStateDict from a safetensors file written from toSafetensors(). */
  async loadSafetensors(file: SafetensorsFile): Promise<void> {
    const tensors: Record<string, Tensor> = {};
    try {
      for (const k of file.keys()) tensors[k] = await loadTensor(file, k, 'f32');
      this.loadStateDict(optimizerStateFromTensors(tensors, file.metadata));
    } finally {
      for (const t of Object.values(tensors)) t.dispose();
    }
  }

  private disposeState(): void {
    for (const st of this.state.values()) for (const t of Object.values(st.buffers)) t.dispose();
    this.state.clear();
  }

  /** Frees the optimiser's state (the parameters and their gradients are the caller's). */
  dispose(): void {
    this.disposeState();
  }

  protected launch(entry: 'adamw' | 'sgd', tensors: Tensor[], params: Param[], constants: Record<string, number> = {}): void {
    const [p, g] = tensors;
    const ranges = tensors.map(bindRange);
    device().dispatch({
      kernel: 'optim',
      entry,
      defines: { P_T: p.dtype, G_T: g.dtype },
      constants,
      buffers: ranges.map((r) => r.binding),
      params: [p.size, ...ranges.map((r) => r.elemOffset), ...params],
      workgroups: grid1d(p.size, WG),
    });
  }
}

const checkRange = (kind: string, name: string, x: number, lo: number, hi = Infinity, hiOpen = false): void => {
  if (!(x >= lo && (hiOpen ? x < hi : x <= hi))) throw new Error(`${kind}: ${name} = ${x} is outside [${lo}, ${hi}${hiOpen ? ')' : ']'}`);
};

export interface AdamWOptions {
  lr?: number | LrSchedule;
  /** per-parameter multiplier of the rate (Optimizer.lrScale) */
  lrScale?: (name: string) => number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

type AdamWHyper = { beta1: number; beta2: number; eps: number; weightDecay: number };

/** torch.optim.AdamW (no amsgrad): decoupled weight decay, bias-corrected moments; defaults as torch. */
export class AdamW extends Optimizer<AdamWHyper> {
  constructor(params: ParamsInput, o: AdamWOptions = {}) {
    const [beta1, beta2] = o.betas ?? [0.9, 0.999];
    const hp = { beta1, beta2, eps: o.eps ?? 1e-8, weightDecay: o.weightDecay ?? 1e-2 };
    super('AdamW', params, scheduleOf(o.lr ?? 1e-3), hp, ['exp_avg', 'exp_avg_sq']);
    if (o.lrScale) this.lrScale = o.lrScale;
  }

  protected checkHyper(h: AdamWHyper): void {
    checkRange(this.kind, 'beta1', h.beta1, 0, 1, true);
    checkRange(this.kind, 'beta2', h.beta2, 0, 1, true);
    checkRange(this.kind, 'eps', h.eps, 0);
    checkRange(this.kind, 'weightDecay', h.weightDecay, 0);
  }

  protected update(p: Tensor, g: Tensor, st: ParamState, lr: number): void {
    const { beta1, beta2, eps, weightDecay } = this.hp;
    const bc1 = 1 - beta1 ** st.step;
    const bc2 = 1 - beta2 ** st.step;
    this.launch('adamw', [p, g, st.buffers.exp_avg, st.buffers.exp_avg_sq], [
      f32(1 - lr * weightDecay), f32(beta1), f32(1 - beta1), f32(beta2), f32(1 - beta2), f32(lr / bc1), f32(Math.sqrt(bc2)), f32(eps),
    ]);
  }
}

export interface SGDOptions {
  lr: number | LrSchedule;
  /** per-parameter multiplier of the rate (Optimizer.lrScale) */
  lrScale?: (name: string) => number;
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
  weightDecay?: number;
}

type SGDHyper = { momentum: number; dampening: number; nesterov: boolean; weightDecay: number };

/** torch.optim.SGD: L2 weight decay added to the gradient, optional momentum with dampening or Nesterov. */
export class SGD extends Optimizer<SGDHyper> {
  // The kernel's momentum buffer binding when there is none (never accessed).
  private placeholder: Tensor | null = null;

  constructor(params: ParamsInput, o: SGDOptions) {
    const hp = { momentum: o.momentum ?? 0, dampening: o.dampening ?? 0, nesterov: o.nesterov ?? false, weightDecay: o.weightDecay ?? 0 };
    super('SGD', params, scheduleOf(o.lr), hp, hp.momentum !== 0 ? ['momentum_buffer'] : []);
    if (o.lrScale) this.lrScale = o.lrScale;
  }

  protected checkHyper(h: SGDHyper): void {
    checkRange(this.kind, 'momentum', h.momentum, 0);
    checkRange(this.kind, 'dampening', h.dampening, 0, 1);
    checkRange(this.kind, 'weightDecay', h.weightDecay, 0);
    if (h.nesterov && (h.momentum <= 0 || h.dampening !== 0)) throw new Error(`${this.kind}: nesterov needs momentum > 0 and dampening 0`);
    if ((h.momentum !== 0) !== (this.hp.momentum !== 0))
      throw new Error(`${this.kind}: momentum cannot be switched on or off once constructed (it decides the state)`);
  }

  protected update(p: Tensor, g: Tensor, st: ParamState, lr: number): void {
    const { momentum, dampening, nesterov, weightDecay } = this.hp;
    const buf = st.buffers.momentum_buffer ?? (this.placeholder ??= keep(Tensor.empty([1])));
    this.launch('sgd', [p, g, buf], [st.step === 1 ? 1 : 0, nesterov ? 1 : 0, f32(lr), f32(weightDecay), f32(momentum), f32(1 - dampening)], {
      MOMENTUM: momentum !== 0 ? 1 : 0,
    });
  }

  override dispose(): void {
    super.dispose();
    this.placeholder?.dispose();
    this.placeholder = null;
  }
}

function scheduleOf(lr: number | LrSchedule): LrSchedule {
  if (typeof lr !== 'number') return lr;
  if (!(lr >= 0)) throw new Error(`learning rate must be >= 0, got ${lr}`);
  return constantLr(lr);
}

// ---- gradient clipping -------------------------------------------------------------------
/**
 * Scales the gradients of `params` in place so their global L2 norm is at most maxNorm, as
 * torch.nn.utils.clip_grad_norm_ (factor min(1, maxNorm / (norm + 1e-6))). Returns the norm
 * before clipping as a one-element GPU tensor (the caller's; read it only when needed: the
 * whole computation stays on the GPU). Parameters without a gradient are skipped.
 */
export function clipGradNorm(params: ParamsInput, maxNorm: number): Tensor {
  if (!(maxNorm > 0)) throw new Error(`clipGradNorm: maxNorm must be > 0, got ${maxNorm}`);
  const grads = namedParams(params, 'clipGradNorm').flatMap(([name, p]) => {
    if (!p.grad) return [];
    p.grad.assertLive(`clipGradNorm: the gradient of '${name}'`);
    if (!isFloat(p.grad.dtype)) throw new Error(`clipGradNorm: the gradient of '${name}' is ${p.grad.dtype}`);
    return [p.grad];
  });
  const chunks = grads.map((g) => Math.ceil(g.size / CHUNK));
  const count = chunks.reduce((a, b) => a + b, 0);
  const coef = Tensor.empty([2]);
  const partials = Tensor.empty([Math.max(1, count)]);
  const dev = device();
  let slot = 0;
  grads.forEach((g, k) => {
    if (!g.size) return;
    const r = bindRange(g);
    dev.dispatch({
      kernel: 'optim', entry: 'sumsq', defines: { P_T: 'f32', G_T: g.dtype },
      buffers: [r.binding, partials.binding()], params: [g.size, r.elemOffset, slot], workgroups: grid1d(g.size, CHUNK),
    });
    slot += chunks[k];
  });
  dev.dispatch({
    kernel: 'optim', entry: 'clip_coef', defines: { P_T: 'f32', G_T: 'f32' },
    buffers: [partials.binding(), coef.binding()], params: [count, f32(maxNorm)], workgroups: [1],
  });
  for (const g of grads) {
    if (!g.size) continue;
    const r = bindRange(g);
    dev.dispatch({
      kernel: 'optim', entry: 'scale', defines: { P_T: 'f32', G_T: g.dtype },
      buffers: [r.binding, coef.binding()], params: [g.size, r.elemOffset], workgroups: grid1d(g.size, WG),
    });
  }
  partials.dispose();
  const norm = coef.view([], 0);
  coef.dispose();
  return norm;
}

// ---- state as named tensors (the layout of an optimiser safetensors file) -----------------
const FORMAT = 'layton-optimizer';

/** stateDict() as flat tensors `<param name>.<state name>` and string metadata. */
export function optimizerStateToTensors(sd: OptimizerStateDict): { tensors: Record<string, Tensor>; metadata: Record<string, string> } {
  const tensors: Record<string, Tensor> = {};
  const steps: Record<string, number> = {};
  for (const [name, st] of Object.entries(sd.state)) {
    steps[name] = st.step;
    for (const [b, t] of Object.entries(st.buffers)) tensors[`${name}.${b}`] = t;
  }
  const metadata = { format: FORMAT, kind: sd.kind, step: String(sd.step), hyperparameters: JSON.stringify(sd.hyperparameters), steps: JSON.stringify(steps) };
  return { tensors, metadata };
}

/** The inverse of optimizerStateToTensors (state names have no dots; parameter names may). */
export function optimizerStateFromTensors(tensors: Record<string, Tensor>, metadata: Record<string, string>): OptimizerStateDict {
  if (metadata.format !== FORMAT) throw new Error(`not an optimiser state: metadata format is '${metadata.format}', expected '${FORMAT}'`);
  const steps = JSON.parse(metadata.steps) as Record<string, number>;
  const state: Record<string, ParamState> = Object.fromEntries(Object.entries(steps).map(([n, step]) => [n, { step, buffers: {} }]));
  for (const [key, t] of Object.entries(tensors)) {
    const dot = key.lastIndexOf('.');
    const st = state[key.slice(0, dot)];
    if (dot < 0 || !st) throw new Error(`optimiser state: tensor '${key}' belongs to no parameter listed in the metadata`);
    st.buffers[key.slice(dot + 1)] = t;
  }
  return { kind: metadata.kind, step: Number(metadata.step), hyperparameters: JSON.parse(metadata.hyperparameters) as Hyper, state };
}
