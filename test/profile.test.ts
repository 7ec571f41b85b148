// The kernel profiler (Device.startProfile / stopProfile, `layton-run --profile`): every
// dispatch is counted under its kernel, times are positive, results are unchanged, and misuse
// is an error.
import { describe, expect, it } from 'vitest';
import { conv2d, device, getDevice, matmul, randn, Generator, tidy } from '../runtime/index.ts';

describe('kernel profiler', () => {
  it('times every dispatch per kernel without changing results', async () => {
    await getDevice();
    const g = new Generator(1);
    const [a, b] = [randn([128, 96], { generator: g }), randn([96, 64], { generator: g })];
    const [x, w] = [randn([1, 8, 16, 16], { generator: g }), randn([8, 8, 3, 3], { generator: g })];
    const plain = await tidy(() => matmul(a, b)).data();
    device().startProfile();
    expect(() => device().startProfile()).toThrow(/already running/);
    const before = device().dispatchCount;
    const outs = [0, 1, 2].map(() => matmul(a, b));
    const c = conv2d(x, w, undefined, { padding: 1, impl: 'implicit' });
    const timed = await outs[0].data();
    const n = device().dispatchCount - before;
    const times = await device().stopProfile();
    await expect(device().stopProfile()).rejects.toThrow(/no profile is running/);
    expect(Array.from(timed)).toEqual(Array.from(plain));
    expect(times.reduce((s, k) => s + k.dispatches, 0)).toBe(n);
    const mm = times.filter((k) => k.kernel.startsWith('matmul:'));
    expect(mm.reduce((s, k) => s + k.dispatches, 0)).toBe(3);
    expect(times.some((k) => k.kernel.startsWith('conv2d:'))).toBe(true);
    for (const k of times) expect(k.ms, k.kernel).toBeGreaterThan(0);
    expect(times.map((k) => k.ms)).toEqual([...times.map((k) => k.ms)].sort((p, q) => q - p));
    console.log(times.map((k) => `${k.kernel} ${k.dispatches}x ${k.ms.toFixed(3)} ms`).join('; '));
    [a, b, x, w, c, ...outs].forEach((t) => t.dispose());
  });
});
