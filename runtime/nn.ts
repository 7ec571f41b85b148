// Modules: named trainable parameters in a tree, torch-like. A module registers its
// parameters and submodules by name; the dotted paths (`fc1.weight`, `layers.0.bias`) are
// the keys of namedParameters(), stateDict() and loadStateDict(). Modules own their
// parameters (outside any tidy scope) until dispose().
import { Tensor, keep, type Shape } from './tensor.ts';
import { noGrad } from './autograd.ts';
import { rand, type Generator as Rng } from './ops/create.ts';
import { linear, type Activation } from './ops/matmul.ts';
import { copyStrided } from './ops/shape.ts';
import { stridesOf } from './ops/util.ts';
import { f32ToF16, type SafetensorsFile, type TensorToWrite } from './safetensors.ts';
import { loadTensor } from './load.ts';
import type { DType } from './dtype.ts';

const NAME = /^[A-Za-z0-9_]+$/;

export class Module {
  private readonly params = new Map<string, Tensor>();
  private readonly children = new Map<string, Module>();

  private checkName(name: string): void {
    if (!NAME.test(name)) throw new Error(`${this.constructor.name}: '${name}' is not a valid parameter or submodule name (letters, digits, _)`);
    if (this.params.has(name) || this.children.has(name)) throw new Error(`${this.constructor.name}: '${name}' is registered twice`);
  }

  /** Registers a trainable parameter (it now requires grad and belongs to this module). */
  protected param(name: string, t: Tensor): Tensor {
    this.checkName(name);
    t.assertLive(`parameter '${name}'`);
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

  /** The live parameter tensors by name (not copies: do not dispose them). */
  stateDict(): Record<string, Tensor> {
    return Object.fromEntries(this.namedParameters());
  }

  /**
   * Copies values into the parameters (in place: optimisers holding them stay valid),
   * converting dtypes. Shapes must match; with `strict`, the keys must match exactly.
   */
  loadStateDict(sd: Record<string, Tensor>, strict = true): void {
    for (const [k, t] of Object.entries(sd)) t.assertLive(`${this.constructor.name}.loadStateDict: '${k}'`);
    const own = this.matchState(Object.entries(sd).map(([k, t]) => [k, t.shape]), strict, 'loadStateDict');
    noGrad(() => {
      for (const [k, src] of Object.entries(sd)) if (own[k]) copyInto(src, own[k]);
    });
  }

  /** The parameters as safetensors entries (read back from the GPU), for saveSafetensors / serializeSafetensors. */
  toSafetensors(): Promise<Record<string, TensorToWrite>> {
    return toSafetensorsEntries(this.stateDict());
  }

  /** loadStateDict from a safetensors file: checks every key and shape first, then uploads one tensor at a time. */
  async loadSafetensors(file: SafetensorsFile, strict = true): Promise<void> {
    const own = this.matchState(file.keys().map((k) => [k, file.info(k).shape]), strict, 'loadSafetensors');
    for (const [k, dst] of Object.entries(own)) {
      const src = await loadTensor(file, k, dst.dtype);
      noGrad(() => copyInto(src, dst));
      src.dispose();
    }
  }

  /** The parameters named by `entries` after checking their shapes (and, strict, that the names match exactly). */
  private matchState(entries: [string, Shape][], strict: boolean, what: string): Record<string, Tensor> {
    const own = this.stateDict();
    const where = `${this.constructor.name}.${what}`;
    const given = new Set(entries.map(([k]) => k));
    if (strict) {
      const missing = Object.keys(own).filter((k) => !given.has(k));
      const unexpected = [...given].filter((k) => !(k in own));
      if (missing.length || unexpected.length) throw new Error(`${where}: missing keys [${missing.join(', ')}], unexpected keys [${unexpected.join(', ')}]`);
    }
    const matched: Record<string, Tensor> = {};
    for (const [k, shape] of entries) {
      const dst = own[k];
      if (!dst) continue;
      if (shape.join() !== dst.shape.join()) throw new Error(`${where}: '${k}' is [${shape}] in the source but [${dst.shape}] in the module`);
      matched[k] = dst;
    }
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
  generator?: Rng;
}

/** y = x Wᵀ + b, W [out, in]; initialised as torch.nn.Linear: U(-1/sqrt(in), 1/sqrt(in)) (from the seeded generator). */
export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(readonly inFeatures: number, readonly outFeatures: number, o: LinearOptions = {}) {
    super();
    const k = 1 / Math.sqrt(inFeatures);
    const init = (shape: number[]) => rand(shape, { low: -k, high: k, generator: o.generator });
    this.weight = this.param('weight', init([outFeatures, inFeatures]));
    this.bias = o.bias === false ? null : this.param('bias', init([outFeatures]));
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
