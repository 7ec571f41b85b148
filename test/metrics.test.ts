// PSNR and SSIM against float64 PyTorch (test/fixtures/gen_metrics.py: Gaussian-window SSIM by
// depthwise conv2d), on five image pairs from near-identical to unrelated, plus the identities
// (SSIM(x, x) = 1, PSNR(x, x) = inf, symmetry) and the size errors.
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import type { SafetensorsFile } from '../runtime/safetensors.ts';
import { mse, psnr, ssim, type PlanarImage } from '../tools/metrics.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

let ref: SafetensorsFile;
let expected: Float64Array;
beforeAll(async () => {
  ref = await openSafetensors(fixture('metrics.safetensors'));
  expected = new Float64Array((await ref.readRaw('expected')).slice().buffer);
});
afterAll(() => ref.close());

async function image(name: string): Promise<PlanarImage> {
  const [, height, width] = ref.info(name).shape;
  return { width, height, data: await ref.readF32(name) };
}

describe('metrics vs PyTorch', () => {
  it('PSNR and SSIM of five pairs', async () => {
    const cases = expected.length / 2;
    expect(cases).toBe(5);
    let worstPsnr = 0;
    let worstSsim = 0;
    for (let k = 0; k < cases; k++) {
      const a = await image(`a${k}`);
      const b = await image(`b${k}`);
      const p = psnr(a, b);
      const s = ssim(a, b);
      worstPsnr = Math.max(worstPsnr, Math.abs(p - expected[2 * k]));
      worstSsim = Math.max(worstSsim, Math.abs(s - expected[2 * k + 1]));
      expect(Math.abs(p - expected[2 * k]), `psnr case ${k}`).toBeLessThan(1e-6);
      expect(Math.abs(s - expected[2 * k + 1]), `ssim case ${k}`).toBeLessThan(1e-4);
      expect(Math.abs(ssim(b, a) - s), `ssim symmetry case ${k}`).toBeLessThan(1e-12);
    }
    console.log(`max |psnr - torch| ${worstPsnr.toExponential(2)} dB, max |ssim - torch| ${worstSsim.toExponential(2)}`);
    // The cases span the range: a near-copy scores high, an unrelated pair low.
    expect(expected[1]).toBeGreaterThan(0.9);
    expect(expected[9]).toBeLessThan(0.1);
  });

  it('identities and errors', async () => {
    const a = await image('a2');
    expect(ssim(a, a)).toBeCloseTo(1, 12);
    expect(psnr(a, a)).toBe(Infinity);
    expect(mse(a, a)).toBe(0);
    const small = await image('a3');
    expect(() => ssim(a, small)).toThrow('ssim: images differ in size (48x40');
    const tiny = { width: 10, height: 12, data: new Float32Array(360) };
    expect(() => ssim(tiny, tiny)).toThrow('ssim: images are 10x12, the 11x11 window needs at least 11x11');
    expect(() => psnr({ width: 3, height: 3, data: new Float32Array(10) }, { width: 3, height: 3, data: new Float32Array(10) }))
      .toThrow('psnr: 10 values are not whole channels of 3x3');
  });
});
