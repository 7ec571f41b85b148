// Image quality metrics on the CPU (images are small): PSNR and SSIM of float images in [0, 1].
//  - PSNR: 10 log10(1 / MSE), data range 1, MSE over all channels and pixels of one image.
//  - SSIM: Wang et al. 2004 with an 11 x 11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
//    L = 1, population (not sample) statistics; computed on each RGB channel separately over
//    the positions where the window fits (no padding) and averaged over positions and channels.
//    This is torchmetrics' StructuralSimilarityIndexMeasure and skimage's
//    structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
//    data_range=1, channel_axis=...): both pad, then crop the 5-pixel border before averaging.
import type { RgbImage } from './image.ts';

/** Any planar (CHW) float image; the channel count is data.length / (width * height). */
export type PlanarImage = Pick<RgbImage, 'width' | 'height' | 'data'>;

function channels(a: PlanarImage, b: PlanarImage, where: string): number {
  if (a.width !== b.width || a.height !== b.height || a.data.length !== b.data.length) {
    throw new Error(`${where}: images differ in size (${a.width}x${a.height}, ${a.data.length} values vs ${b.width}x${b.height}, ${b.data.length} values)`);
  }
  const c = a.data.length / (a.width * a.height);
  if (!Number.isInteger(c) || c < 1) throw new Error(`${where}: ${a.data.length} values are not whole channels of ${a.width}x${a.height}`);
  return c;
}

export function mse(a: PlanarImage, b: PlanarImage): number {
  channels(a, b, 'mse');
  let s = 0;
  for (let i = 0; i < a.data.length; i++) s += (a.data[i] - b.data[i]) ** 2;
  return s / a.data.length;
}

/** Peak signal-to-noise ratio in dB for data range 1 (Infinity for identical images). */
export function psnr(a: PlanarImage, b: PlanarImage): number {
  channels(a, b, 'psnr');
  return -10 * Math.log10(mse(a, b));
}

const WIN = 11;
const SIGMA = 1.5;
const C1 = 0.01 ** 2;
const C2 = 0.03 ** 2;

const GAUSS: Float64Array = (() => {
  const g = Float64Array.from({ length: WIN }, (_, i) => Math.exp(-((i - (WIN - 1) / 2) ** 2) / (2 * SIGMA * SIGMA)));
  const s = g.reduce((x, y) => x + y, 0);
  return g.map((v) => v / s);
})();

/** Mean SSIM (see the header for the exact convention). Images must be at least 11 x 11. */
export function ssim(a: PlanarImage, b: PlanarImage): number {
  const nc = channels(a, b, 'ssim');
  const { width: w, height: h } = a;
  if (w < WIN || h < WIN) throw new Error(`ssim: images are ${w}x${h}, the ${WIN}x${WIN} window needs at least ${WIN}x${WIN}`);
  const ow = w - WIN + 1;
  const oh = h - WIN + 1;
  // Horizontal then vertical pass of the separable window over x, y, x^2, y^2, xy.
  const hz = Array.from({ length: 5 }, () => new Float64Array(h * ow));
  let total = 0;
  for (let c = 0; c < nc; c++) {
    const x = a.data.subarray(c * w * h, (c + 1) * w * h);
    const y = b.data.subarray(c * w * h, (c + 1) * w * h);
    for (let r = 0; r < h; r++) {
      for (let j = 0; j < ow; j++) {
        let sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
        for (let k = 0; k < WIN; k++) {
          const g = GAUSS[k];
          const u = x[r * w + j + k];
          const v = y[r * w + j + k];
          sx += g * u;
          sy += g * v;
          sxx += g * u * u;
          syy += g * v * v;
          sxy += g * u * v;
        }
        const o = r * ow + j;
        hz[0][o] = sx;
        hz[1][o] = sy;
        hz[2][o] = sxx;
        hz[3][o] = syy;
        hz[4][o] = sxy;
      }
    }
    for (let i = 0; i < oh; i++) {
      for (let j = 0; j < ow; j++) {
        let mx = 0, my = 0, exx = 0, eyy = 0, exy = 0;
        for (let k = 0; k < WIN; k++) {
          const g = GAUSS[k];
          const o = (i + k) * ow + j;
          mx += g * hz[0][o];
          my += g * hz[1][o];
          exx += g * hz[2][o];
          eyy += g * hz[3][o];
          exy += g * hz[4][o];
        }
        const vx = exx - mx * mx;
        const vy = eyy - my * my;
        const cxy = exy - mx * my;
        total += ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2));
      }
    }
  }
  return total / (nc * oh * ow);
}
