// The training loop every stage of `layton-run train` runs in: seeded, checkpointed and
// resumable onto the same loss curve, with a progress line and a summary JSON.
//
// Reproducibility: the data and noise of step i come from `generatorFor(seed, i)` alone (a
// Philox stream keyed by the seed and the step), never from state carried between steps, so
// a run resumed from the checkpoint of step k continues exactly as the uninterrupted run.
// Checkpoints: a folder `ckpt-<step>` (weights of every trained module, optimiser state,
// loss history) is written under a temporary name and renamed, then `latest` (a one-line
// file) is replaced atomically; a SIGKILL at any point leaves the previous checkpoint usable.
import { mkdir, readFile, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Generator, type Module, type Optimizer } from '../../runtime/index.ts';
import { openSafetensors, saveSafetensors, writeFileAtomic } from '../../runtime/platform/node-fs.ts';

export interface StageSpec {
  /** e.g. "vae", "layton-stage1": names the progress line and the summary */
  name: string;
  /** output folder of the stage: checkpoints, summary.json */
  dir: string;
  steps: number;
  seed: number;
  /** write a checkpoint every this many steps (and at the end) */
  checkpointEvery: number;
  /** the modules whose weights the checkpoint holds (trainable ones; frozen inputs are rebuilt) */
  modules: Record<string, Module>;
  optimizer: Optimizer;
  /** one optimisation step; returns the loss (read back) and optional extra numbers to log */
  step(i: number, gen: Generator): Promise<{ loss: number; [k: string]: number }>;
  /** resume from the latest checkpoint when there is one (else: start over, removing old checkpoints) */
  resume?: boolean;
  /** progress output (default: stderr) */
  log?: (line: string, final: boolean) => void;
  /** called after the last step (or on resume of a finished stage): extra metrics for the summary */
  evaluate?(): Promise<Record<string, number>>;
}

export interface StageSummary {
  stage: string;
  seed: number;
  steps: number;
  /** wall seconds of the run's steps, a resumed run's earlier processes included */
  seconds: number;
  it_per_s: number;
  final_loss: number;
  /** mean loss over each tenth of the run */
  loss_curve: number[];
  resumed_from: number;
  metrics: Record<string, number>;
}

/** The Philox stream of step i of a run with this seed. */
export const generatorFor = (seed: number, i: number): Generator => new Generator(seed * 1_000_003 + i);

const fmtTime = (s: number): string => {
  if (!Number.isFinite(s)) return '--:--';
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)}:${String(m % 60).padStart(2, '0')}:${String(Math.floor(s % 60)).padStart(2, '0')}` : `${m}:${String(Math.floor(s % 60)).padStart(2, '0')}`;
};

export function progressLine(name: string, done: number, total: number, loss: number, itPerS: number): string {
  const width = 24;
  const filled = Math.round((done / total) * width);
  return `${name} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} loss ${loss.toPrecision(4)} ${itPerS.toFixed(2)} it/s ETA ${fmtTime((total - done) / itPerS)}`;
}

function defaultLog(): (line: string, final: boolean) => void {
  let last = 0;
  return (line, final) => {
    if (process.stderr.isTTY) process.stderr.write(`\r${line}${final ? '\n' : ''}`);
    else if (final || performance.now() - last > 5000) {
      process.stderr.write(line + '\n');
      last = performance.now();
    }
  };
}

interface CkptState {
  step: number;
  seed: number;
  losses: number[];
  /** wall seconds of the steps up to this checkpoint, over every process (absent in older checkpoints) */
  seconds?: number;
}

async function latest(dir: string): Promise<string | null> {
  try {
    return (await readFile(join(dir, 'latest'), 'utf8')).trim() || null;
  } catch {
    return null;
  }
}

async function saveCheckpoint(s: StageSpec, step: number, losses: number[], seconds: number): Promise<void> {
  const name = `ckpt-${String(step).padStart(7, '0')}`;
  const tmp = join(s.dir, `${name}.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  for (const [k, m] of Object.entries(s.modules)) await saveSafetensors(join(tmp, `${k}.safetensors`), await m.toSafetensors());
  const opt = await s.optimizer.toSafetensors();
  await saveSafetensors(join(tmp, 'optimizer.safetensors'), opt.tensors, opt.metadata);
  const state: CkptState = { step, seed: s.seed, losses, seconds };
  await writeFileAtomic(join(tmp, 'state.json'), [new TextEncoder().encode(JSON.stringify(state))]);
  await rm(join(s.dir, name), { recursive: true, force: true });
  await rename(tmp, join(s.dir, name));
  await writeFileAtomic(join(s.dir, 'latest'), [new TextEncoder().encode(name + '\n')]);
  // older checkpoints, and any left half-written or unreferenced by a killed run
  for (const e of await readdir(s.dir)) if (e.startsWith('ckpt-') && e !== name) await rm(join(s.dir, e), { recursive: true, force: true });
}

async function loadCheckpoint(s: StageSpec, name: string): Promise<CkptState> {
  const at = join(s.dir, name);
  const state = JSON.parse(await readFile(join(at, 'state.json'), 'utf8')) as CkptState;
  if (state.seed !== s.seed) throw new Error(`${at}: checkpoint was trained with seed ${state.seed}, not ${s.seed}; use the same --seed or start over without --resume`);
  for (const [k, m] of Object.entries(s.modules)) {
    const f = await openSafetensors(join(at, `${k}.safetensors`));
    try {
      await m.loadSafetensors(f);
    } finally {
      await f.source.close?.();
    }
  }
  const f = await openSafetensors(join(at, 'optimizer.safetensors'));
  try {
    await s.optimizer.loadSafetensors(f);
  } finally {
    await f.source.close?.();
  }
  return state;
}

/** Runs (or resumes) a stage to its last step; writes `<dir>/summary.json` and returns the summary. */
export async function runStage(s: StageSpec): Promise<StageSummary> {
  if (!Number.isInteger(s.steps) || s.steps < 1) throw new Error(`${s.name}: steps must be a positive integer, got ${s.steps}`);
  if (!Number.isInteger(s.checkpointEvery) || s.checkpointEvery < 1) throw new Error(`${s.name}: checkpoint interval must be a positive integer, got ${s.checkpointEvery}`);
  await mkdir(s.dir, { recursive: true });
  const log = s.log ?? defaultLog();
  let losses: number[] = [];
  let start = 0;
  let before = 0; // seconds spent by earlier processes, up to the checkpoint resumed from
  const prev = await latest(s.dir);
  if (s.resume && prev) {
    const st = await loadCheckpoint(s, prev);
    start = st.step;
    losses = st.losses;
    before = st.seconds ?? 0;
    log(`${s.name}: resumed from ${join(s.dir, prev)} at step ${start}`, true);
  } else {
    for (const e of await readdir(s.dir)) if (e.startsWith('ckpt-') || e === 'latest') await rm(join(s.dir, e), { recursive: true, force: true });
  }
  const t0 = performance.now();
  for (let i = start; i < s.steps; i++) {
    const r = await s.step(i, generatorFor(s.seed, i));
    if (!Number.isFinite(r.loss)) throw new Error(`${s.name}: loss is ${r.loss} at step ${i}; stopping (lower the learning rate?)`);
    losses.push(r.loss);
    const done = i + 1;
    const rate = (done - start) / ((performance.now() - t0) / 1000);
    log(progressLine(s.name, done, s.steps, r.loss, rate), done === s.steps);
    if (done % s.checkpointEvery === 0 || done === s.steps) await saveCheckpoint(s, done, losses, before + (performance.now() - t0) / 1000);
  }
  const here = (performance.now() - t0) / 1000;
  const seconds = before + here;
  const tenth = Math.max(1, Math.floor(losses.length / 10));
  const curve: number[] = [];
  for (let a = 0; a < losses.length; a += tenth) {
    const part = losses.slice(a, a + tenth);
    curve.push(part.reduce((x, y) => x + y, 0) / part.length);
  }
  const summary: StageSummary = {
    stage: s.name,
    seed: s.seed,
    steps: s.steps,
    seconds,
    it_per_s: start < s.steps ? (s.steps - start) / Math.max(here, 1e-9) : s.steps / Math.max(seconds, 1e-9),
    final_loss: losses.at(-1) ?? NaN,
    loss_curve: curve,
    resumed_from: start,
    metrics: s.evaluate ? await s.evaluate() : {},
  };
  await writeFileAtomic(join(s.dir, 'summary.json'), [new TextEncoder().encode(JSON.stringify(summary, null, 2) + '\n')]);
  return summary;
}
