// Shared set-up of the kernel test files: the device before the first test, a check after the
// last that every tensor the file made was disposed, and a printout of the worst relative error
// per group (the numbers quoted in reports).
import { afterAll, beforeAll, expect } from 'vitest';
import { getDevice, tensorCount } from '../../runtime/index.ts';

/** Registers the hooks; returns `note(group, err)`, which records an error and returns it. */
export function errorReport(): (group: string, err: number) => number {
  const worst = new Map<string, number>();
  let start = 0;
  beforeAll(async () => {
    await getDevice();
    start = tensorCount();
  });
  afterAll(() => {
    console.log('max relative errors (|gpu - ref| / max |ref|):\n' + [...worst].map(([k, v]) => `  ${k}: ${v.toExponential(2)}`).join('\n'));
    expect(tensorCount()).toBe(start);
  });
  return (group, err) => {
    worst.set(group, Math.max(worst.get(group) ?? 0, err));
    return err;
  };
}
