// The benchmark registry and runner behind `npm run bench` (bench/run.ts).
//
// A case is registered with defineBench() from any bench/*.bench.ts file:
//   defineBench({
//     name: 'add 16M f32', group: 'elementwise', bytes: 3 * 4 * N,
//     setup: () => ({ a: randn([N]), b: randn([N]) }),   // tensors in here are disposed after the case
//     run: ({ a, b }) => add(a, b),                       // one op; returned tensors are disposed
//     reference: ({ a, b }) => naiveAdd(a, b),            // optional: the same op on the simplest kernel
//   });
// Every sample launches `run` one or more times (several for short ops, so the sync round
// trip does not dominate) and then waits for the GPU with device().sync(); the reported time
// is the tinybench median of a sample divided by the ops in it.
import { Bench } from 'tinybench';
import { device } from '../runtime/device.ts';
import { Tensor } from '../runtime/tensor.ts';

/** The same op in another library on the same adapter (see bench/peers/). */
export interface Peer {
  /** e.g. 'tfjs-webgpu 4.22' */
  name: string;
  /** Loads the library and builds the inputs; throws (with the reason) where it cannot run. */
  setup(): Promise<PeerRun>;
}
export interface PeerRun {
  /** Launches the op once, without waiting. */
  run(): void;
  /** Waits until the peer's GPU work is done. */
  sync(): Promise<void>;
  dispose(): void;
}

export interface BenchCase<C = unknown> {
  /** Unique, with the shape and dtype: 'matmul 1024x1024x1024 f32'. */
  name: string;
  group: string;
  /** Floating-point operations of one run (GFLOPS column). */
  flops?: number;
  /** Bytes one run must move at least (GB/s column), for memory-bound ops. */
  bytes?: number;
  setup(): C | Promise<C>;
  /** Launches the op once (no sync). Returned tensors are disposed. */
  run(ctx: C): unknown;
  /** The same op on the simplest correct kernel (bench/reference/). */
  reference?(ctx: C): unknown;
  peer?: Peer;
  /** Shown next to the result, e.g. why there is no reference. */
  note?: string;
}

const cases: BenchCase[] = [];

export function defineBench<C>(c: BenchCase<C>): void {
  if (cases.some((x) => x.name === c.name)) throw new Error(`defineBench: a case named '${c.name}' already exists`);
  cases.push(c as BenchCase);
}

export const registeredBenches = (): readonly BenchCase[] => cases;

export interface Timing {
  /** median milliseconds per op */
  ms: number;
  /** this process's CPU milliseconds per op (mean): the work done on a CPU adapter such as
   * lavapipe, unlike wall time hardly affected by other processes on a shared machine */
  cpuMs: number;
  /** samples behind the median, and ops per sample */
  samples: number;
  opsPerSample: number;
}

export interface BenchResult {
  name: string;
  group: string;
  ms?: number;
  cpuMs?: number;
  gflops?: number;
  gbps?: number;
  samples?: number;
  opsPerSample?: number;
  referenceMs?: number;
  referenceCpuMs?: number;
  /** reference time / our time: how many times faster than the naive kernel (CPU time on a CPU adapter, see ratioBasis) */
  speedupVsReference?: number;
  peer?: string;
  peerMs?: number;
  peerCpuMs?: number;
  /** peer time / our time: how many times faster than the peer (as speedupVsReference) */
  speedupVsPeer?: number;
  /** what the ratios divide: 'cpu' on a CPU adapter (lavapipe, SwiftShader: the work done, steady under load), else 'wall' */
  ratioBasis?: 'cpu' | 'wall';
  peerError?: string;
  note?: string;
  error?: string;
}

export interface RunOptions {
  /** run only the cases whose name or group contains this */
  filter?: string;
  /** fewer samples and iterations */
  quick?: boolean;
  /** called after each case (progress output) */
  onResult?(r: BenchResult): void;
}

/** Disposes every tensor in a (nested) setup context or op result. */
function disposeAll(x: unknown): void {
  if (x instanceof Tensor) x.dispose();
  else if (Array.isArray(x)) x.forEach(disposeAll);
  else if (x && typeof x === 'object' && Object.getPrototypeOf(x) === Object.prototype) Object.values(x).forEach(disposeAll);
}

/** Median time per op: each sample is `launch` n times, then `sync`. */
async function time(label: string, launch: () => void, sync: () => Promise<void>, quick: boolean): Promise<Timing> {
  launch(); // compile + first-touch allocations
  await sync();
  const t0 = performance.now();
  launch();
  await sync();
  const single = performance.now() - t0;
  const opsPerSample = Math.max(1, Math.min(64, Math.round((quick ? 10 : 25) / Math.max(single, 0.01))));
  const slow = single * opsPerSample > 300;
  const bench = new Bench({
    name: label,
    time: quick ? 0 : 1000,
    iterations: quick ? (slow ? 2 : 5) : slow ? 5 : 15,
    warmup: false, // the two runs above were the warm-up
    throws: true,
  });
  bench.add(label, async () => {
    for (let i = 0; i < opsPerSample; i++) launch();
    await sync();
  });
  const cpu0 = process.cpuUsage();
  await bench.run();
  const cpu = process.cpuUsage(cpu0);
  const r = bench.tasks[0].result;
  if (r.state !== 'completed') throw new Error(`${label}: benchmark ended in state ${r.state}`);
  const ops = r.latency.samplesCount * opsPerSample;
  return { ms: r.latency.p50 / opsPerSample, cpuMs: (cpu.user + cpu.system) / 1000 / ops, samples: r.latency.samplesCount, opsPerSample };
}

const sync = (): Promise<void> => device().sync();

/**
 * Software adapters run kernels on this machine's CPU threads: their CPU time is the work done
 * and hardly moves when other jobs share the cores, while wall time does. On a real GPU the
 * CPU time is only the driver's, so ratios there are of wall time.
 */
export const isCpuAdapter = (name: string): boolean => /llvmpipe|lavapipe|swiftshader/i.test(name);

export async function runBenches(opts: RunOptions = {}): Promise<BenchResult[]> {
  const f = opts.filter?.toLowerCase();
  const selected = cases.filter((c) => !f || c.name.toLowerCase().includes(f) || c.group.toLowerCase().includes(f));
  const results: BenchResult[] = [];
  const cpuAdapter = isCpuAdapter(device().info().adapter);
  for (const c of selected) {
    const r: BenchResult = { name: c.name, group: c.group, note: c.note, ratioBasis: cpuAdapter ? 'cpu' : 'wall' };
    let ctx: unknown;
    try {
      ctx = await c.setup();
      await device().sync();
      const t = await time(c.name, () => disposeAll(c.run(ctx)), sync, !!opts.quick);
      Object.assign(r, { ms: t.ms, cpuMs: t.cpuMs, samples: t.samples, opsPerSample: t.opsPerSample });
      if (c.flops) r.gflops = c.flops / t.ms / 1e6;
      if (c.bytes) r.gbps = c.bytes / t.ms / 1e6;
      if (c.reference) {
        const ref = c.reference;
        const rt = await time(`${c.name} (reference)`, () => disposeAll(ref(ctx)), sync, true);
        r.referenceMs = rt.ms;
        r.referenceCpuMs = rt.cpuMs;
        r.speedupVsReference = cpuAdapter ? rt.cpuMs / t.cpuMs : rt.ms / t.ms;
      }
    } catch (e) {
      r.error = (e as Error).message.split('\n')[0];
    } finally {
      disposeAll(ctx);
      device().pool.trim();
    }
    if (c.peer && !r.error) {
      r.peer = c.peer.name;
      let p: PeerRun | undefined;
      try {
        p = await c.peer.setup();
        const pr = p;
        const pt = await time(`${c.name} (${c.peer.name})`, () => pr.run(), () => pr.sync(), !!opts.quick);
        r.peerMs = pt.ms;
        r.peerCpuMs = pt.cpuMs;
        r.speedupVsPeer = cpuAdapter ? pt.cpuMs / r.cpuMs! : pt.ms / r.ms!;
      } catch (e) {
        r.peerError = (e as Error).message.split('\n')[0];
      } finally {
        p?.dispose();
      }
    }
    results.push(r);
    opts.onResult?.(r);
  }
  return results;
}

const fmt = (x: number | undefined, digits = 1): string => (x === undefined ? '' : x >= 100 ? x.toFixed(0) : x.toFixed(digits));

/** A fixed-width text table of results. */
export function formatTable(results: readonly BenchResult[]): string {
  const head = ['case', 'ms', 'cpu ms', 'GFLOPS', 'GB/s', 'x naive', 'x peer', 'peer', 'note'];
  const rows = results.map((r) => [
    r.name,
    r.error ? 'ERROR' : fmt(r.ms, 2),
    fmt(r.cpuMs, 2),
    fmt(r.gflops),
    fmt(r.gbps),
    r.speedupVsReference ? `${fmt(r.speedupVsReference)}x` : '',
    r.speedupVsPeer ? `${fmt(r.speedupVsPeer, 2)}x` : '',
    r.peer ? (r.peerError ? `${r.peer}: ${r.peerError}` : `${r.peer} ${fmt(r.peerMs, 2)} ms`) : '',
    r.error ?? r.note ?? '',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((s, i) => (i === 0 || i >= 7 ? s.padEnd(widths[i]) : s.padStart(widths[i]))).join('  ').trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}
