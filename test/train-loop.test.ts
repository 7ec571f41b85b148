// The training loop's promises: a stage killed with SIGKILL and resumed continues on exactly
// the loss curve of the uninterrupted run (same seed), checkpoints are never half-written,
// and the progress line carries step, loss, it/s and ETA.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { progressLine } from '../tools/train/loop.ts';

const root = mkdtempSync(join(tmpdir(), 'layton-train-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const child = ['--import', 'tsx', 'test/helpers/train-child.ts'];

const losses = (dir: string): number[] => {
  const name = readFileSync(join(dir, 'latest'), 'utf8').trim();
  return JSON.parse(readFileSync(join(dir, name, 'state.json'), 'utf8')).losses;
};

describe('training loop', () => {
  it('resumes after SIGKILL onto the same loss curve', async () => {
    const steps = 40;
    const full = join(root, 'full');
    const r = spawnSync(process.execPath, [...child, full, String(steps)], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary.steps).toBe(steps);
    expect(summary.resumed_from).toBe(0);
    const ref = losses(full);
    expect(ref).toHaveLength(steps);
    expect(ref[steps - 1]).toBeLessThan(ref[0] / 2); // it learns

    const cut = join(root, 'cut');
    const p = spawn(process.execPath, [...child, cut, String(steps)], { stdio: 'ignore' });
    // kill once a checkpoint past step 10 exists (mid-run, between or during checkpoints)
    await new Promise<void>((resolve, reject) => {
      const poll = setInterval(() => {
        if (existsSync(join(cut, 'latest')) && Number(readFileSync(join(cut, 'latest'), 'utf8').trim().slice(5)) >= 10) {
          clearInterval(poll);
          p.kill('SIGKILL');
          resolve();
        }
      }, 10);
      p.on('exit', (code) => {
        clearInterval(poll);
        if (code === 0) reject(new Error('the child finished before it could be killed'));
      });
    });
    await new Promise((r) => p.on('close', r));
    const before = losses(cut);
    expect(before.length).toBeGreaterThanOrEqual(10);
    expect(before.length).toBeLessThan(steps);

    const again = spawnSync(process.execPath, [...child, cut, String(steps), '--resume'], { encoding: 'utf8' });
    expect(again.status, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout).resumed_from).toBe(before.length);
    expect(losses(cut)).toEqual(ref); // bit for bit
    // only the final checkpoint is left, and no temporary folder
    expect(readdirSync(cut).filter((e) => e.startsWith('ckpt-')).sort()).toEqual(['ckpt-0000040']);
  });

  it('prints step, loss, it/s and ETA', () => {
    expect(progressLine('vae', 30, 120, 0.012345, 2)).toBe('vae [######..................] 30/120 loss 0.01235 2.00 it/s ETA 0:45');
  });
});
