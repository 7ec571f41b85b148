// Tensors: shape + dtype over a contiguous range of a pooled GPU buffer (Storage).
// Views (reshape, leading-axis slice) share the storage; everything else copies.
// Lifetime is explicit: dispose() or a tidy() scope; storages are reference counted so a
// view or a tensor saved for backward keeps its bytes alive after the handle is disposed.
import { device, type Binding } from './device.ts';
import { type DType, dtypeBytes, type HostArray, isFloat } from './dtype.ts';
import { backward, type GradNode } from './autograd.ts';
import { readTensor } from './ops/create.ts';

export class Storage {
  refs = 1;
  constructor(readonly buffer: GPUBuffer, readonly bytes: number) {}
  retain(): this {
    this.refs++;
    return this;
  }
  release(): void {
    if (--this.refs === 0) device().pool.release(this.buffer);
    else if (this.refs < 0) throw new Error('storage released twice');
  }
}

/** The storage of shape-only (meta) tensors: no GPU bytes; sharing it is free. */
class MetaStorage extends Storage {
  constructor() {
    super(null as unknown as GPUBuffer, 0);
  }
  override retain(): this {
    return this;
  }
  override release(): void {}
}
const META = new MetaStorage();

export type Shape = readonly number[];

export const numel = (shape: Shape): number => shape.reduce((a, b) => a * b, 1);

export function checkShape(shape: Shape, what = 'shape'): void {
  for (const d of shape) if (!Number.isInteger(d) || d < 0) throw new Error(`${what} [${shape.join(', ')}] has an invalid dimension ${d}`);
}

// ---- scopes ---------------------------------------------------------------------------
const scopes: Set<Tensor>[] = [];

/**
 * Runs fn and disposes every tensor created inside it except those it returns
 * (a tensor, or an array/object of tensors) and those passed to keep().
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.splice(scopes.indexOf(scope), 1);
    for (const t of scope) t.dispose();
    throw e;
  }
  scopes.splice(scopes.indexOf(scope), 1);
  const kept = new Set<Tensor>();
  collect(result, kept);
  for (const t of scope) {
    if (kept.has(t)) scopes.at(-1)?.add(t);
    else t.dispose();
  }
  return result;
}

function collect(x: unknown, out: Set<Tensor>): void {
  if (x instanceof Tensor) out.add(x);
  else if (Array.isArray(x)) for (const v of x) collect(v, out);
  else if (x && typeof x === 'object' && Object.getPrototypeOf(x) === Object.prototype) for (const v of Object.values(x)) collect(v, out);
}

/** Removes a tensor from every enclosing tidy scope, so only dispose() frees it. */
export function keep<T extends Tensor>(t: T): T {
  for (const s of scopes) s.delete(t);
  return t;
}

let liveTensors = 0;
export const tensorCount = (): number => liveTensors;

/** Runs fn on a temporary view of t with another shape, disposing the view after. */
export function withView<T>(t: Tensor, shape: Shape, fn: (v: Tensor) => T, offset = t.offset): T {
  const v = t.view(shape, offset);
  try {
    return fn(v);
  } finally {
    v.dispose();
  }
}

// ---- the tensor -----------------------------------------------------------------------
export class Tensor {
  readonly shape: number[];
  requiresGrad = false;
  grad: Tensor | null = null;
  /** The autograd node that produced this tensor (null for leaves and under noGrad). */
  node: GradNode | null = null;
  private disposed = false;

  constructor(
    shape: Shape,
    readonly dtype: DType,
    readonly storage: Storage,
    /** element offset into storage */
    readonly offset = 0,
  ) {
    this.shape = [...shape];
    liveTensors++;
    scopes.at(-1)?.add(this);
  }

  /** An uninitialised tensor. */
  static empty(shape: Shape, dtype: DType = 'f32'): Tensor {
    checkShape(shape);
    const bytes = Math.max(4, Math.ceil((numel(shape) * dtypeBytes[dtype]) / 4) * 4);
    return new Tensor(shape, dtype, new Storage(device().pool.acquire(bytes), bytes));
  }

  /** A shape-only tensor (no data): what modules built in meta mode hold as parameters. */
  static meta(shape: Shape, dtype: DType = 'f32'): Tensor {
    checkShape(shape);
    return new Tensor(shape, dtype, META);
  }

  get isMeta(): boolean {
    return this.storage === META;
  }

  get size(): number {
    return numel(this.shape);
  }
  get rank(): number {
    return this.shape.length;
  }
  get byteLength(): number {
    return this.size * dtypeBytes[this.dtype];
  }
  get isDisposed(): boolean {
    return this.disposed;
  }

  /** Marks this tensor as a trainable leaf. */
  requireGrad(on = true): this {
    if (on && !isFloat(this.dtype)) throw new Error(`only float tensors can require grad (this one is ${this.dtype})`);
    this.requiresGrad = on;
    return this;
  }

  assertLive(what = 'tensor'): void {
    if (this.disposed) throw new Error(`${what} [${this.shape.join(', ')}] ${this.dtype} was used after dispose()`);
    if (this.isMeta) throw new Error(`${what} [${this.shape.join(', ')}] ${this.dtype} is shape-only (built in meta mode) and has no data`);
  }

  /** The GPU range holding this tensor's elements, for a kernel binding. */
  binding(): Binding {
    this.assertLive();
    const elem = dtypeBytes[this.dtype];
    const start = this.offset * elem;
    const size = Math.max(4, Math.ceil((this.size * elem) / 4) * 4);
    if (start % 256 !== 0) throw new Error('unaligned view: call contiguous() (ops do this for you)');
    return { buffer: this.storage.buffer, offset: start, size: Math.min(size, this.storage.buffer.size - start) };
  }

  /** A new handle on the same bytes (shares storage). */
  view(shape: Shape, offset = this.offset): Tensor {
    this.assertLive();
    checkShape(shape);
    return new Tensor(shape, this.dtype, this.storage.retain(), offset);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    liveTensors--;
    this.storage.release();
    this.grad?.dispose();
    this.grad = null;
    this.node?.unref();
    this.node = null;
    for (const s of scopes) s.delete(this);
  }

  /** Back-propagates from this tensor (a scalar, unless grad is given) into the leaves' .grad. */
  backward(grad?: Tensor): void {
    backward(this, grad);
  }

  /** Reads the values back (f16 comes back as f32). */
  async data(): Promise<HostArray> {
    this.assertLive();
    return readTensor(this);
  }

  /** Reads back as a plain nested-free number array (for small tensors and tests). */
  async toArray(): Promise<number[]> {
    return Array.from(await this.data());
  }

  async item(): Promise<number> {
    if (this.size !== 1) throw new Error(`item() needs a one-element tensor, got [${this.shape.join(', ')}]`);
    return (await this.data())[0];
  }

  toString(): string {
    return `Tensor([${this.shape.join(', ')}], ${this.dtype}${this.requiresGrad ? ', requiresGrad' : ''})`;
  }
}
