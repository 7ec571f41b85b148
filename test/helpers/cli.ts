// layton-run as a user runs it: a subprocess of tools/bin/layton-run.js (async, so independent
// runs overlap), and the check that a failure is one line naming what is at fault.
import { spawn } from 'node:child_process';
import { expect } from 'vitest';

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

export const runCli = (...args: string[]): Promise<Run> =>
  new Promise((resolve) => {
    const p = spawn(process.execPath, ['tools/bin/layton-run.js', ...args]);
    let [stdout, stderr] = ['', ''];
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('close', (status) => resolve({ status, stdout, stderr }));
  });

/** stderr without the two 'Warning: maxDynamic… artificially reduced' lines Dawn itself prints on lavapipe when a device opens. */
export const ownLines = (stderr: string): string[] => stderr.trim().split('\n').filter((l) => !/^Warning: maxDynamic/.test(l));

/** Exit 1 and the error as one last line (after any progress notes), no stack trace. */
export function expectOneLineError(r: Run, pattern: RegExp): void {
  expect(r.status, r.stderr).toBe(1);
  const lines = ownLines(r.stderr);
  expect(lines.filter((l) => l.startsWith('layton-run: ')), r.stderr).toHaveLength(1);
  expect(lines.some((l) => /^\s+at /.test(l)), r.stderr).toBe(false);
  expect(lines.at(-1)).toMatch(/^layton-run: /);
  expect(lines.at(-1)).toMatch(pattern);
}
