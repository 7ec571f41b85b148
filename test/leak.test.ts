// 1000 steps of MLP forward + backward + clipping + AdamW (tools/leakcheck.ts): the buffer
// pool, the live tensors and the buffers created stay exactly flat after warm-up, RSS
// settles; and the leak criteria themselves flag each kind of growth.
import { beforeAll, describe, expect, it } from 'vitest';
import { getDevice, tensorCount } from '../runtime/index.ts';
import { type LeakSample, RSS_SLACK_BYTES, findLeaks, leakCheck } from '../tools/leakcheck.ts';

beforeAll(async () => {
  await getDevice();
});

describe('leak check', () => {
  it('1000 training steps leave pool, tensors and buffers flat', async () => {
    const before = tensorCount();
    const lines: string[] = [];
    const r = await leakCheck(1000, (m) => lines.push(m));
    console.log(lines.join('\n'));
    const { start, middle, end } = r.samples;
    expect([start.step, middle.step, end.step]).toEqual([50, 500, 1000]);
    for (const s of [middle, end]) {
      expect(s.inUseBytes).toBe(start.inUseBytes);
      expect(s.liveTensors).toBe(start.liveTensors);
      expect(s.buffersCreated).toBe(start.buffersCreated);
      expect(s.pooledBytes).toBe(start.pooledBytes);
    }
    expect(end.rssBytes - middle.rssBytes).toBeLessThan(RSS_SLACK_BYTES);
    expect(r.loss.last).toBeLessThan(r.loss.first / 10);
    // no readback per step: the dispatches are the step's kernels only
    expect(r.dispatches / r.steps).toBeLessThan(50);
    expect(tensorCount()).toBe(before); // everything the check made is freed
  });

  it('flags growth of every counter, and of RSS in the second half only', () => {
    const base: LeakSample = { step: 50, inUseBytes: 1000, pooledBytes: 500, liveTensors: 20, buffersCreated: 40, rssBytes: 300 * 2 ** 20 };
    const at = (step: number, o: Partial<LeakSample> = {}): LeakSample => ({ ...base, step, ...o });
    expect(findLeaks({ start: base, middle: at(500), end: at(1000) })).toEqual([]);
    // RSS climbing to its plateau in the first half is warm-up, not a leak
    expect(findLeaks({ start: base, middle: at(500, { rssBytes: 400 * 2 ** 20 }), end: at(1000, { rssBytes: 410 * 2 ** 20 }) })).toEqual([]);
    expect(findLeaks({ start: base, middle: at(500), end: at(1000, { inUseBytes: 1256 }) })).toEqual(['in-use bytes 1000 -> 1256 between steps 50 and 1000']);
    expect(findLeaks({ start: base, middle: at(500, { liveTensors: 21 }), end: at(1000, { liveTensors: 20 }) })).toEqual(['live tensors 20 -> 21 between steps 50 and 500']);
    expect(findLeaks({ start: base, middle: at(500), end: at(1000, { buffersCreated: 41 }) })).toEqual(['buffers created 40 -> 41 between steps 50 and 1000']);
    expect(findLeaks({ start: base, middle: at(500), end: at(1000, { rssBytes: 400 * 2 ** 20 }) })).toEqual([
      'RSS 300.0 MiB -> 400.0 MiB (more than 64.0 MiB) between steps 500 and 1000',
    ]);
  });
});
