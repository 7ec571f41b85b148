// Modules: named trainable parameters in a tree, torch-like. A module registers its
// parameters and submodules by name; the dotted paths (`fc1.weight`, `layers.0.bias`) are
// the keys of namedParameters(), stateDict() and loadStateDict(). Modules own their
// parameters (outside any tidy scope) until dispose().
import { Tensor, keep, type Shape } from './tensor.ts';
import { noGrad } from './autograd.ts';
import { ones, rand, randn, zeros, type Generator as Rng } from './ops/create.ts';
import { linear, type Activation } from './ops/matmul.ts';
import { copyStrided } from './ops/shape.ts';
import { stridesOf } from './ops/util.ts';
import { f32ToF16, type SafetensorsFile, type TensorToWrite } from './safetensors.ts';
import { safetensorsWeights, type WeightSource } from './weights.ts';
import type { DType } from './dtype.ts';

const NAME = /^[A-Za-z0-9_]+$/;

/** How a new parameter is filled: a constant, U(-k, k), N(0, std²), or a function of its shape. */
export type Init = 'zeros' | 'ones' | { uniform: number } | { normal: number } | ((shape: Shape, dtype: DType) => Tensor);

export interface BuildOptions {
  /** shape-only parameters (no GPU memory): for counting parameters and listing keys of full-size configs */
  meta?: boolean;
  /** the dtype of new float parameters (default f32) */
  dtype?: DType;
  /** the generator random inits draw from (default: the global one) */
  generator?: Rng;
  /** false: leave new parameters uninitialised (they are about to be loaded from a checkpoint) */
  init?: boolean;
}

let build: BuildOptions = {};

/** Runs fn (typically `() => new Model(config)`) with these options for every parameter it creates. */
export function withBuild<T>(o: BuildOptions, fn: () => T): T {
  const prev = build;
  build = { ...prev, ...o };
  try {
    return fn();
  } finally {
    build = prev;
  }
}

/** The options withBuild is currently applying (for modules that build differently in meta mode). */
export const buildOptions = (): Readonly<BuildOptions> => build;

/** A full-size model's parameter shapes and count, without allocating a byte of weights. */
export const buildMeta = <M extends Module>(fn: () => M): M => withBuild({ meta: true }, fn);

function initTensor(shape: Shape, init: Init): Tensor {
  const dtype = build.dtype ?? 'f32';
  if (build.meta) return Tensor.meta(shape, dtype);
  if (build.init === false) return Tensor.empty(shape, dtype);
  if (typeof init === 'function') return init(shape, dtype);
  if (init === 'zeros') return zeros(shape, dtype);
  if (init === 'ones') return ones(shape, dtype);
  if ('uniform' in init) return rand(shape, { low: -init.uniform, high: init.uniform, dtype, generator: build.generator });
  return randn(shape, { std: init.normal, dtype, generator: build.generator });
}

export class Module {
  private readonly params = new Map<string, Tensor>();
  private readonly children = new Map<string, Module>();

  private checkName(name: string): void {
    if (!NAME.test(name)) throw new Error(`${this.constructor.name}: '${name}' is not a valid parameter or submodule name (letters, digits, _)`);
    if (this.params.has(name) || this.children.has(name)) throw new Error(`${this.constructor.name}: '${name}' is registered twice`);
  }

  /**
   * Registers a trainable parameter (it now requires grad and belongs to this module): a new one
   * of this shape and init (following withBuild's options), or a given tensor.
   */
  protected param(name: string, shape: Shape | Tensor, init: Init = 'zeros'): Tensor {
    this.checkName(name);
    const t = shape instanceof Tensor ? shape : initTensor(shape, init);
    if (!t.isMeta) t.assertLive(`parameter '${name}'`);
    this.params.set(name, keep(t.requireGrad()));
    return t;
  }

  protected module<M extends Module>(name: string, m: M): M {
    this.checkName(name);
    this.children.set(name, m);
    return m;
  }

  /** [dotted name, tensor] for every parameter, this module's first, then each submodule's in registration order. */
  *namedParameters(prefix = ''): Generator<[string, Tensor]> {
    for (const [n, t] of this.params) yield [prefix + n, t];
    for (const [n, m] of this.children) yield* m.namedParameters(`${prefix}${n}.`);
  }

  parameters(): Tensor[] {
    return [...this.namedParameters()].map(([, t]) => t);
  }

  /** Only the parameters that currently require grad (what an optimiser should get). */
  trainableParameters(): [string, Tensor][] {
    return [...this.namedParameters()].filter(([, t]) => t.requiresGrad);
  }

  /** The total number of parameter elements. */
  parameterCount(): number {
    let n = 0;
    for (const [, t] of this.namedParameters()) n += t.size;
    return n;
  }

  /** Freezes (false) or unfreezes (true) every parameter of this module and its submodules. */
  setTrainable(on: boolean): this {
    for (const t of this.parameters()) t.requireGrad(on);
    return this;
  }

  /** The live parameter tensors by name (not copies: do not dispose them). */
  stateDict(): Record<string, Tensor> {
    return Object.fromEntries(this.namedParameters());
  }

  /** name -> shape of every parameter (works in meta mode). */
  stateShapes(): Record<string, number[]> {
    return Object.fromEntries([...this.namedParameters()].map(([k, t]) => [k, [...t.shape]]));
  }

  /**
   * Copies values into the parameters (in place: optimisers holding them stay valid),
   * converting dtypes. Shapes must match; with `strict`, the keys must match exactly.
   */
  loadStateDict(sd: Record<string, Tensor>, strict = true): void {
    for (const [k, t] of Object.entries(sd)) t.assertLive(`${this.constructor.name}.loadStateDict: '${k}'`);
    const own = this.matchState(Object.entries(sd).map(([k, t]) => [k, t.shape]), strict, 'loadStateDict', '');
    noGrad(() => {
      for (const [k, src] of Object.entries(sd)) if (own[k]) copyInto(src, own[k]);
    });
  }

  /** The parameters as safetensors entries (read back from the GPU), for saveSafetensors / serializeSafetensors. */
  toSafetensors(): Promise<Record<string, TensorToWrite>> {
    return toSafetensorsEntries(this.stateDict());
  }

  /** loadStateDict from a safetensors file: checks every key and shape first, then uploads one tensor at a time. */
  loadSafetensors(file: SafetensorsFile, strict = true): Promise<void> {
    return this.loadWeights(safetensorsWeights([file]), strict);
  }

  /**
   * Loads every parameter from a weight source: all keys and shapes are checked first (the
   * error lists every missing, unexpected and mis-shaped key), then tensors are uploaded one
   * at a time, converted to each parameter's dtype.
   */
  async loadWeights(src: WeightSource, strict = true): Promise<void> {
    const own = this.matchState(src.keys().map((k) => [k, src.shape(k)]), strict, 'loadWeights', ` from ${src.name}`);
    for (const [k, dst] of Object.entries(own)) {
      const t = await src.load(k, dst.dtype);
      noGrad(() => copyInto(t, dst));
      t.dispose();
    }
  }

  /** The parameters named by `entries` after checking their shapes (and, strict, that the names match exactly). */
  private matchState(entries: [string, Shape][], strict: boolean, what: string, from: string): Record<string, Tensor> {
    const own = this.stateDict();
    const given = new Set(entries.map(([k]) => k));
    const problems: string[] = [];
    if (strict) {
      const missing = Object.keys(own).filter((k) => !given.has(k));
      const unexpected = [...given].filter((k) => !(k in own));
      if (missing.length) problems.push(`missing keys [${missing.join(', ')}]`);
      if (unexpected.length) problems.push(`unexpected keys [${unexpected.join(', ')}]`);
    }
    const matched: Record<string, Tensor> = {};
    for (const [k, shape] of entries) {
      const dst = own[k];
      if (!dst) continue;
      if (shape.join() !== dst.shape.join()) problems.push(`'${k}' is [${shape}] in the source but [${dst.shape}] in the module`);
      else matched[k] = dst;
    }
    if (problems.length) throw new Error(`${this.constructor.name}.${what}${from}: ${problems.join('; ')}`);
    return matched;
  }

  /** Frees every parameter (and its gradient) of this module and its submodules. */
  dispose(): void {
    for (const t of this.parameters()) t.dispose();
  }
}

/** A list of submodules named "0", "1", ... (torch.nn.ModuleList). */
export class ModuleList<M extends Module = Module> extends Module {
  readonly items: M[];
  constructor(items: M[]) {
    super();
    this.items = items.map((m, i) => this.module(String(i), m));
  }
}

export interface LinearOptions {
  bias?: boolean;
}

/** y = x Wᵀ + b, W [out, in]; initialised as torch.nn.Linear: U(-1/sqrt(in), 1/sqrt(in)) (from withBuild's generator). */
export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(readonly inFeatures: number, readonly outFeatures: number, o: LinearOptions = {}) {
    super();
    const init = { uniform: 1 / Math.sqrt(inFeatures) };
    this.weight = this.param('weight', [outFeatures, inFeatures], init);
    this.bias = o.bias === false ? null : this.param('bias', [outFeatures], init);
  }

  forward(x: Tensor, act: Activation = 'none'): Tensor {
    return linear(x, this.weight, this.bias ?? undefined, act);
  }
}

const copyInto = (src: Tensor, dst: Tensor): void => copyStrided(src, stridesOf(src.shape), dst, stridesOf(dst.shape), dst.shape);

const ST_DTYPE: Partial<Record<DType, 'F32' | 'I32'>> = { f32: 'F32', i32: 'I32' };

/** GPU tensors as safetensors entries (one readback each): f32, f16 and i32 keep their dtype. */
export async function toSafetensorsEntries(tensors: Record<string, Tensor>): Promise<Record<string, TensorToWrite>> {
  const out: Record<string, TensorToWrite> = {};
  for (const [k, t] of Object.entries(tensors)) {
    const data = await t.data();
    const shape = [...t.shape];
    if (t.dtype === 'f16') out[k] = { dtype: 'F16', shape, data: f32ToF16(data as Float32Array) };
    else if (ST_DTYPE[t.dtype]) out[k] = { dtype: ST_DTYPE[t.dtype]!, shape, data };
    else throw new Error(`toSafetensorsEntries: '${k}' is ${t.dtype}, which safetensors cannot store`);
  }
  return out;
}
