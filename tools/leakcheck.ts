// Memory-leak check (`layton-run doctor --leak-check`): trains a small MLP with AdamW for
// `steps` full-batch steps (forward, backward, gradient clipping, optimiser step, zeroGrad;
// the graph inside tidy) and samples the buffer pool, the live tensors and the process RSS
// after warm-up, half way and at the end. In a steady loop none of them may grow: every
// temporary must go back to the pool and be reused, and nothing may pile up on the host.
import { device, gelu, getDevice, Generator, mean, randn, sin, square, sub, sum, tensorCount, tidy, type Tensor } from '../runtime/index.ts';
import { Linear, Module, withBuild } from '../runtime/nn.ts';
import { AdamW, clipGradNorm } from '../runtime/optim.ts';

export interface LeakSample {
  step: number;
  /** bytes of pooled buffers held by live tensors */
  inUseBytes: number;
  /** bytes of free buffers waiting in the pool */
  pooledBytes: number;
  liveTensors: number;
  /** GPU buffers the pool ever created */
  buffersCreated: number;
  /** resident set size of the process */
  rssBytes: number;
}

export interface LeakReport {
  steps: number;
  seconds: number;
  dispatches: number;
  /** after warm-up, half way, at the end */
  samples: { start: LeakSample; middle: LeakSample; end: LeakSample };
  /** the training loss at the first and the last step (it must drop: the loop really trains) */
  loss: { first: number; last: number };
}

/** RSS may move this much over the second half (allocator and JS heap noise, lazily freed WebGPU objects). */
export const RSS_SLACK_BYTES = 64 * 2 ** 20;

/**
 * What grew, in words (empty when nothing did). The pool and tensor counters are exact and
 * must not move after warm-up; RSS climbs to a plateau over the first few hundred steps
 * (native memory of the WebGPU objects of queued work, allocator high-water marks), so it
 * is compared over the second half only, with a slack.
 */
export function findLeaks(s: LeakReport['samples'], rssSlack = RSS_SLACK_BYTES): string[] {
  const grew: string[] = [];
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const steps = (a: LeakSample, b: LeakSample) => `between steps ${a.step} and ${b.step}`;
  const counters = [['in-use bytes', 'inUseBytes'], ['live tensors', 'liveTensors'], ['buffers created', 'buffersCreated']] as const;
  for (const [what, key] of counters) {
    const peak = s.middle[key] > s.end[key] ? s.middle : s.end;
    if (peak[key] > s.start[key]) grew.push(`${what} ${s.start[key]} -> ${peak[key]} ${steps(s.start, peak)}`);
  }
  if (s.end.rssBytes - s.middle.rssBytes > rssSlack)
    grew.push(`RSS ${mib(s.middle.rssBytes)} -> ${mib(s.end.rssBytes)} (more than ${mib(rssSlack)}) ${steps(s.middle, s.end)}`);
  return grew;
}

class Mlp extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;
  readonly fc3: Linear;
  constructor(d: number, h: number, gen: Generator) {
    super();
    [this.fc1, this.fc2, this.fc3] = withBuild({ generator: gen }, () => [
      this.module('fc1', new Linear(d, h)),
      this.module('fc2', new Linear(h, h)),
      this.module('fc3', new Linear(h, 1)),
    ]);
  }
  forward(x: Tensor): Tensor {
    return this.fc3.forward(gelu(this.fc2.forward(gelu(this.fc1.forward(x)))));
  }
}

const SYNC_EVERY = 100; // bounds the GPU work queued ahead (a real loop reads its loss now and then)

export async function leakCheck(steps = 1000, log?: (msg: string) => void): Promise<LeakReport> {
  if (!Number.isInteger(steps) || steps < 20) throw new Error(`leakCheck: steps must be an integer >= 20, got ${steps}`);
  const dev = await getDevice();
  const gen = new Generator(1234);
  const [d, h, batch] = [7, 32, 61];
  const model = new Mlp(d, h, gen);
  const opt = new AdamW(model, { lr: 3e-3 });
  const x = randn([batch, d], { generator: gen });
  const y = tidy(() => sum(sin(x), 1, true)); // a smooth target the MLP can fit
  const warmup = Math.max(10, Math.floor(steps / 20));
  const sample = async (step: number): Promise<LeakSample> => {
    await dev.sync();
    const s = dev.pool.getStats();
    return { step, inUseBytes: s.inUseBytes, pooledBytes: s.pooledBytes, liveTensors: tensorCount(), buffersCreated: s.created, rssBytes: process.memoryUsage().rss };
  };
  const fmt = (s: LeakSample) =>
    `step ${s.step}: in use ${s.inUseBytes} B, pooled ${s.pooledBytes} B, ${s.liveTensors} tensors, ${s.buffersCreated} buffers created, RSS ${(s.rssBytes / 2 ** 20).toFixed(1)} MiB`;

  const samples: Partial<LeakReport['samples']> = {};
  let first: Tensor | null = null;
  let last: Tensor | null = null; // the latest loss, replaced every step
  const dispatches0 = device().dispatchCount;
  const t0 = performance.now();
  try {
    for (let step = 1; step <= steps; step++) {
      const loss = tidy(() => {
        const l = mean(square(sub(model.forward(x), y)));
        l.backward();
        clipGradNorm(model, 1).dispose();
        return l;
      });
      opt.step();
      opt.zeroGrad();
      if (step === 1) first = loss;
      else {
        last?.dispose();
        last = loss;
      }
      const at = step === warmup ? 'start' : step === Math.floor(steps / 2) ? 'middle' : step === steps ? 'end' : null;
      if (at) {
        samples[at] = await sample(step);
        log?.(`leak check ${fmt(samples[at])}`);
      } else if (step % SYNC_EVERY === 0) await dev.sync();
    }
    const seconds = (performance.now() - t0) / 1000;
    const loss = { first: await first!.item(), last: await last!.item() };
    const report: LeakReport = { steps, seconds, dispatches: device().dispatchCount - dispatches0, samples: samples as LeakReport['samples'], loss };
    log?.(`leak check: ${steps} steps in ${seconds.toFixed(1)} s (${report.dispatches} dispatches), loss ${loss.first.toPrecision(4)} -> ${loss.last.toPrecision(4)}`);
    const grew = findLeaks(report.samples);
    if (grew.length) throw new Error(`leak check: memory grows after warm-up: ${grew.join('; ')}`);
    if (!(loss.last < loss.first)) throw new Error(`leak check: the loss did not drop (${loss.first} -> ${loss.last}): the training loop is broken`);
    return report;
  } finally {
    first?.dispose();
    last?.dispose();
    opt.dispose();
    model.dispose();
    x.dispose();
    y.dispose();
  }
}
