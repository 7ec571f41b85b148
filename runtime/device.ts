// The one WebGPU device of the runtime: adapter + limits + features, the buffer pool,
// the pipeline cache and command batching (many dispatches per encoder, one submit per
// sync point). Every kernel launch goes through Device.dispatch().
import { getGPU, kernelSource, noAdapterHelp, platformName } from '#platform';
import { BufferPool } from './pool.ts';

export interface DeviceInfo {
  platform: string;
  adapter: string;
  features: string[];
  limits: Record<string, number>;
}

/** A value for a kernel's uniform Params struct: plain numbers are u32, wrap floats with f32(). */
export type Param = number | { f32: number } | { i32: number };
export const f32 = (x: number): Param => ({ f32: x });
export const i32 = (x: number): Param => ({ i32: x });

export interface Binding {
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

export interface DispatchSpec {
  /** kernels/<kernel>.wgsl (or a name for `source`) */
  kernel: string;
  /** WGSL given directly instead of kernels/<kernel>.wgsl: the simple reference kernels of tests and benchmarks */
  source?: string;
  entry?: string;
  /** Text substitutions for {{NAME}} placeholders: the specialisation that override constants cannot express (types, expressions). */
  defines?: Record<string, string | number>;
  /** WGSL override constants (workgroup sizes, flags). */
  constants?: Record<string, number>;
  /** Storage bindings, in @binding order starting at 0. The uniform Params struct, if any, follows at the next binding. */
  buffers: Binding[];
  params?: Param[];
  workgroups: [number, number?, number?];
}

const ARENA_BYTES = 1 << 20;
/** Dispatches timed per submission while profiling (two timestamps each). */
const PROFILE_SLOTS = 1024;

/** GPU time of one kernel entry point over a profile (see Device.startProfile). */
export interface KernelTime {
  /** "kernel:entry" */
  kernel: string;
  dispatches: number;
  ms: number;
}

interface Profile {
  queries: GPUQuerySet;
  resolved: GPUBuffer;
  /** kernel:entry of each timed dispatch in the current submission */
  names: string[];
  totals: Map<string, { dispatches: number; ns: number }>;
  reads: Promise<void>[];
}
const PARAM_SLOT = 256; // minUniformBufferOffsetAlignment is at most 256 on every adapter

export class Device {
  readonly pool: BufferPool;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private pipelines = new Map<string, GPUComputePipeline>();
  private layouts = new WeakMap<GPUComputePipeline, GPUBindGroupLayout>();
  private arena: GPUBuffer;
  private arenaCpu = new ArrayBuffer(ARENA_BYTES);
  private arenaUsed = 0;
  private pendingDispatches = 0;
  private lostError: Error | null = null;
  private uncaptured: Error[] = [];
  // Shader compile errors arrive asynchronously; sync points await them so the error that
  // names the kernel is thrown instead of the invalid-pipeline errors that follow from it.
  private compileChecks: Promise<void>[] = [];
  private compileErrors: Error[] = [];
  dispatchCount = 0;
  private profile: Profile | null = null;

  constructor(
    readonly gpu: GPUDevice,
    readonly adapterInfo: GPUAdapterInfo,
    readonly hasF16: boolean,
    readonly hasSubgroups: boolean,
    readonly hasTimestamps: boolean,
  ) {
    this.pool = new BufferPool(gpu);
    this.arena = gpu.createBuffer({ size: ARENA_BYTES, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    gpu.addEventListener('uncapturederror', (ev) => {
      const e = (ev as GPUUncapturedErrorEvent).error;
      this.uncaptured.push(new Error(`WebGPU error: ${e.message}`));
    });
    gpu.lost.then((info) => {
      if (info.reason !== 'destroyed') this.lostError = new Error(`WebGPU device lost (${info.reason}): ${info.message}`);
    });
  }

  get limits(): GPUSupportedLimits {
    return this.gpu.limits;
  }

  get maxBinding(): number {
    return this.gpu.limits.maxStorageBufferBindingSize;
  }

  info(): DeviceInfo {
    const limits: Record<string, number> = {};
    for (const k of [
      'maxStorageBufferBindingSize', 'maxBufferSize', 'maxComputeWorkgroupStorageSize',
      'maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupSizeX', 'maxComputeWorkgroupsPerDimension',
      'maxStorageBuffersPerShaderStage', 'minStorageBufferOffsetAlignment', 'minUniformBufferOffsetAlignment',
    ] as const) limits[k] = this.gpu.limits[k];
    const a = this.adapterInfo;
    const adapter = [a.vendor, a.architecture, a.device, a.description].filter(Boolean).join(' ') || 'unknown adapter';
    return { platform: platformName, adapter, features: [...this.gpu.features].sort(), limits };
  }

  private check(): void {
    if (this.lostError) throw this.lostError;
    if (this.compileErrors.length) {
      const e = this.compileErrors.splice(0);
      this.uncaptured = [];
      throw new Error(e.map((x) => x.message).join('\n'));
    }
    if (this.uncaptured.length) {
      const e = this.uncaptured.splice(0);
      throw new Error(e.map((x) => x.message).join('\n'));
    }
  }

  /** Pipeline for a kernel specialisation, compiled once. */
  pipeline(kernel: string, entry = 'main', defines: Record<string, string | number> = {}, constants: Record<string, number> = {}, source?: string): GPUComputePipeline {
    const key = `${kernel}:${entry}:${JSON.stringify(defines)}:${JSON.stringify(constants)}${source ? ':' + source : ''}`;
    let p = this.pipelines.get(key);
    if (p) return p;
    let src = (source ?? kernelSource(kernel)).replace(/^#include "(\w+)"$/gm, (_, name: string) => kernelSource(name)).replace(/\{\{(\w+)\}\}/g, (_, name: string) => {
      if (!(name in defines)) throw new Error(`kernels/${kernel}.wgsl: no value given for {{${name}}}`);
      return String(defines[name]);
    });
    if (Object.values(defines).some((v) => /\bf16\b/.test(String(v)))) {
      if (!this.hasF16) throw new Error(`kernels/${kernel}.wgsl specialised for f16, but this adapter lacks the 'shader-f16' feature`);
      src = 'enable f16;\n' + src;
    }
    this.gpu.pushErrorScope('validation');
    const module = this.gpu.createShaderModule({ code: src, label: kernel });
    p = this.gpu.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: entry, constants }, label: `${kernel}:${entry}` });
    // Compile errors surface asynchronously; report them at the next sync point with the kernel's name.
    this.compileChecks.push(
      this.gpu.popErrorScope().then((err) => {
        if (err) this.compileErrors.push(new Error(`kernels/${kernel}.wgsl (${entry}, ${JSON.stringify(defines)}): ${err.message}`));
      }),
    );
    this.pipelines.set(key, p);
    return p;
  }

  dispatch(spec: DispatchSpec): void {
    const pipe = this.pipeline(spec.kernel, spec.entry, spec.defines, spec.constants, spec.source);
    const maxB = this.maxBinding;
    const entries: GPUBindGroupEntry[] = spec.buffers.map((b, i) => {
      const size = b.size ?? b.buffer.size - (b.offset ?? 0);
      if (size > maxB)
        throw new Error(`kernels/${spec.kernel}.wgsl: binding ${i} is ${size} bytes, over this adapter's maxStorageBufferBindingSize (${maxB} bytes); split the tensor or use f16`);
      return { binding: i, resource: { buffer: b.buffer, offset: b.offset ?? 0, size } };
    });
    if (spec.params?.length) {
      if (spec.params.length * 4 > PARAM_SLOT) throw new Error(`kernels/${spec.kernel}.wgsl: too many params`);
      if (this.arenaUsed + PARAM_SLOT > ARENA_BYTES) this.flush();
      const off = this.arenaUsed;
      const u = new Uint32Array(this.arenaCpu, off, spec.params.length);
      const f = new Float32Array(this.arenaCpu, off, spec.params.length);
      const s = new Int32Array(this.arenaCpu, off, spec.params.length);
      spec.params.forEach((v, i) => {
        if (typeof v === 'number') u[i] = v;
        else if ('f32' in v) f[i] = v.f32;
        else s[i] = v.i32;
      });
      this.arenaUsed += PARAM_SLOT;
      entries.push({ binding: spec.buffers.length, resource: { buffer: this.arena, offset: off, size: PARAM_SLOT } });
    }
    let layout = this.layouts.get(pipe);
    if (!layout) this.layouts.set(pipe, (layout = pipe.getBindGroupLayout(0))); // a Dawn call per dispatch otherwise
    const bg = this.gpu.createBindGroup({ layout, entries });
    if (!this.encoder) this.encoder = this.gpu.createCommandEncoder();
    const prof = this.profile;
    if (prof) {
      // a pass of its own, so its timestamps bracket this dispatch alone
      this.pass?.end();
      const i = prof.names.push(`${spec.kernel}:${spec.entry ?? 'main'}`) - 1;
      this.pass = this.encoder.beginComputePass({ timestampWrites: { querySet: prof.queries, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } });
    } else if (!this.pass) this.pass = this.encoder.beginComputePass();
    this.pass.setPipeline(pipe);
    this.pass.setBindGroup(0, bg);
    const [x, y = 1, z = 1] = spec.workgroups;
    const maxWg = this.gpu.limits.maxComputeWorkgroupsPerDimension;
    if (x > maxWg || y > maxWg || z > maxWg) throw new Error(`kernels/${spec.kernel}.wgsl: grid ${x}x${y}x${z} exceeds ${maxWg} workgroups per dimension`);
    if (x > 0 && y > 0 && z > 0) this.pass.dispatchWorkgroups(x, y, z);
    this.dispatchCount++;
    if (prof) {
      this.pass.end();
      this.pass = null;
    }
    if (++this.pendingDispatches >= 4096 || prof?.names.length === PROFILE_SLOTS) this.flush();
  }

  /**
   * Starts timing every dispatch on the GPU (timestamp queries; each dispatch then runs in a
   * pass of its own, which costs a little). stopProfile() returns the time per kernel entry point.
   */
  startProfile(): void {
    if (!this.hasTimestamps) throw new Error(`profiling needs the 'timestamp-query' feature, which this adapter (${this.info().adapter}) lacks`);
    if (this.profile) throw new Error('a profile is already running (call stopProfile() first)');
    this.flush();
    this.profile = {
      queries: this.gpu.createQuerySet({ type: 'timestamp', count: 2 * PROFILE_SLOTS }),
      resolved: this.gpu.createBuffer({ size: 16 * PROFILE_SLOTS, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC }),
      names: [],
      totals: new Map(),
      reads: [],
    };
  }

  /** Ends the profile: GPU milliseconds and dispatch counts per kernel entry point, most time first. */
  async stopProfile(): Promise<KernelTime[]> {
    const prof = this.profile;
    if (!prof) throw new Error('no profile is running (call startProfile() first)');
    this.flush();
    this.profile = null;
    await Promise.all(prof.reads);
    prof.queries.destroy();
    prof.resolved.destroy();
    return [...prof.totals].map(([kernel, t]) => ({ kernel, dispatches: t.dispatches, ms: t.ns / 1e6 })).sort((a, b) => b.ms - a.ms);
  }

  /** Resolves the submission's timestamps into a staging buffer; returns the read (and sum) to start once it is submitted. */
  private resolveProfile(encoder: GPUCommandEncoder, prof: Profile): () => void {
    const names = prof.names.splice(0);
    const bytes = 16 * names.length;
    const staging = this.gpu.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    encoder.resolveQuerySet(prof.queries, 0, 2 * names.length, prof.resolved, 0);
    encoder.copyBufferToBuffer(prof.resolved, 0, staging, 0, bytes);
    return () => void prof.reads.push(
      staging.mapAsync(GPUMapMode.READ).then(() => {
        const t = new BigUint64Array(staging.getMappedRange());
        names.forEach((name, i) => {
          const e = prof.totals.get(name) ?? { dispatches: 0, ns: 0 };
          e.dispatches++;
          e.ns += Number(t[2 * i + 1] - t[2 * i]);
          prof.totals.set(name, e);
        });
        staging.unmap();
        staging.destroy();
      }),
    );
  }

  /** Records a buffer-to-buffer copy in order with the pending dispatches. */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    if (!this.encoder) this.encoder = this.gpu.createCommandEncoder();
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    this.encoder.copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  }

  /** Submits everything recorded so far. */
  flush(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    if (this.arenaUsed) this.gpu.queue.writeBuffer(this.arena, 0, this.arenaCpu, 0, this.arenaUsed);
    const readTimes = this.encoder && this.profile?.names.length ? this.resolveProfile(this.encoder, this.profile) : null;
    if (this.encoder) this.gpu.queue.submit([this.encoder.finish()]);
    readTimes?.();
    this.encoder = null;
    this.arenaUsed = 0;
    this.pendingDispatches = 0;
    if (!this.compileChecks.length) this.check();
  }

  /** Writes host data into a buffer, ordered after every dispatch recorded so far. */
  write(buffer: GPUBuffer, offset: number, data: ArrayBufferView): void {
    // queue.writeBuffer runs before commands that are not yet submitted, so submit them first.
    if (this.encoder) this.flush();
    this.gpu.queue.writeBuffer(buffer, offset, data.buffer, data.byteOffset, data.byteLength);
  }

  /** Reads bytes back to the host (a sync point). */
  async read(buffer: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
    const padded = Math.ceil(bytes / 4) * 4;
    const staging = this.gpu.createBuffer({ size: Math.max(4, padded), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    if (padded > 0) this.copy(buffer, offset, staging, 0, padded);
    this.flush();
    await this.settleCompiles();
    await staging.mapAsync(GPUMapMode.READ);
    const out = staging.getMappedRange(0, padded).slice(0, bytes);
    staging.unmap();
    staging.destroy();
    this.check();
    return out;
  }

  private async settleCompiles(): Promise<void> {
    const c = this.compileChecks.splice(0);
    await Promise.all(c);
    this.check();
  }

  /** Waits until the GPU has finished all submitted work. */
  async sync(): Promise<void> {
    this.flush();
    await this.settleCompiles();
    await this.gpu.queue.onSubmittedWorkDone();
    this.check();
  }
}

let current: Device | null = null;
let pending: Promise<Device> | null = null;

export interface DeviceOptions {
  powerPreference?: GPUPowerPreference;
}

/** Gets (once) the adapter and device with the adapter's real limits and its useful features. */
export function getDevice(opts: DeviceOptions = {}): Promise<Device> {
  if (current) return Promise.resolve(current);
  pending ??= (async () => {
    const gpu = await getGPU();
    const adapter = await gpu.requestAdapter({ powerPreference: opts.powerPreference ?? 'high-performance' });
    if (!adapter) throw new Error(noAdapterHelp);
    const want: GPUFeatureName[] = ['shader-f16', 'subgroups', 'timestamp-query'];
    const requiredFeatures = want.filter((f) => adapter.features.has(f));
    const requiredLimits: Record<string, number> = {};
    for (const k of [
      'maxStorageBufferBindingSize', 'maxBufferSize', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup',
      'maxComputeWorkgroupSizeX', 'maxComputeWorkgroupSizeY', 'maxComputeWorkgroupsPerDimension', 'maxStorageBuffersPerShaderStage',
    ] as const) requiredLimits[k] = adapter.limits[k];
    const dev = await adapter.requestDevice({ requiredFeatures, requiredLimits });
    current = new Device(dev, adapter.info, dev.features.has('shader-f16'), dev.features.has('subgroups'), dev.features.has('timestamp-query'));
    return current;
  })();
  pending.catch(() => (pending = null));
  return pending;
}

/** The device after getDevice() resolved; ops use this synchronously. */
export function device(): Device {
  if (!current) throw new Error('no device yet: await getDevice() (or init()) before creating tensors');
  return current;
}
