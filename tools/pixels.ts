// Images as pixels, with no file format and no Node module (browsers import this directly;
// tools/image.ts adds PNG/JPEG codecs and files). Two representations:
//  - Rgb8:     8-bit RGB, interleaved HWC (what decoders produce; PIL's "RGB" mode);
//  - RgbImage: float32 RGB, planar CHW in [0, 1] (what models and metrics take).
// Resizing reproduces Pillow's antialiased resampling (Resample.c: filter support scaled by the
// downscale factor, horizontal pass then vertical pass; 8-bit images in 22-bit fixed point with
// an 8-bit intermediate, float images in double with a float32 intermediate), and centerCrop is
// LlamaGen's center_crop_arr (BOX halvings, BICUBIC to the short side, centre crop).
import { type Tensor, tensor } from '../runtime/index.ts';

export interface Rgb8 {
  width: number;
  height: number;
  /** RGB bytes, row-major, length width * height * 3. */
  data: Uint8Array;
}

export interface RgbImage {
  width: number;
  height: number;
  /** Planar R, G, B planes (CHW), values in [0, 1], length 3 * width * height. */
  data: Float32Array;
}

export type Filter = 'box' | 'bicubic';

// ---- conversions ---------------------------------------------------------------------------

export function checkRgb8(img: Rgb8, where: string): void {
  if (img.data.length !== img.width * img.height * 3) throw new Error(`${where}: ${img.data.length} bytes do not hold a ${img.width}x${img.height} RGB image`);
}

function checkImage(img: RgbImage, where: string): void {
  if (img.data.length !== img.width * img.height * 3) throw new Error(`${where}: ${img.data.length} values do not hold a 3x${img.height}x${img.width} image`);
}

/** 8-bit HWC -> float CHW in [0, 1] (x / 255, as torchvision's ToTensor). */
export function toImage(px: Rgb8): RgbImage {
  checkRgb8(px, 'toImage');
  const n = px.width * px.height;
  const data = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) data[c * n + i] = px.data[i * 3 + c] / 255;
  return { width: px.width, height: px.height, data };
}

/** float CHW -> 8-bit HWC, clamped to [0, 1] and rounded to the nearest level. */
export function toRgb8(img: RgbImage): Rgb8 {
  checkImage(img, 'toRgb8');
  const n = img.width * img.height;
  const data = new Uint8Array(3 * n);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) data[i * 3 + c] = Math.round(Math.min(1, Math.max(0, img.data[c * n + i])) * 255);
  }
  return { width: img.width, height: img.height, data };
}

/** Stacks same-sized images into a [N, 3, H, W] f32 tensor in [-1, 1] (x * 2 - 1: LlamaGen's
 *  Normalize(mean 0.5, std 0.5)). */
export function imagesToTensor(images: readonly RgbImage[]): Tensor {
  if (!images.length) throw new Error('imagesToTensor: no images');
  const { width, height } = images[0];
  const per = 3 * width * height;
  const out = new Float32Array(images.length * per);
  images.forEach((img, i) => {
    checkImage(img, `imagesToTensor: image ${i}`);
    if (img.width !== width || img.height !== height) throw new Error(`imagesToTensor: image ${i} is ${img.width}x${img.height}, image 0 is ${width}x${height}`);
    for (let j = 0; j < per; j++) out[i * per + j] = img.data[j] * 2 - 1;
  });
  return tensor(out, [images.length, 3, height, width]);
}

/**
 * [N, 3, H, W] tensor in [-1, 1] -> images in [0, 1] (clamped); with `size`, resized bicubic to
 * size x size (how a VQ decoder's tokenizer_size output is scored at image_size; an unchanged size is a copy).
 */
export async function tensorToImages(t: Tensor, size?: number): Promise<RgbImage[]> {
  if (t.shape.length !== 4 || t.shape[1] !== 3) throw new Error(`tensorToImages: expected [N, 3, H, W], got [${t.shape.join(', ')}]`);
  if (size !== undefined) return (await tensorToImages(t)).map((img) => resizeImage(img, size, size, 'bicubic'));
  const [n, , height, width] = t.shape;
  const values = (await t.data()) as ArrayLike<number>;
  const per = 3 * width * height;
  return Array.from({ length: n }, (_, i) => {
    const data = new Float32Array(per);
    for (let j = 0; j < per; j++) data[j] = Math.min(1, Math.max(0, (values[i * per + j] + 1) / 2));
    return { width, height, data };
  });
}

// ---- Pillow-style resampling ---------------------------------------------------------------

const FILTERS: Record<Filter, { support: number; f: (x: number) => number }> = {
  box: { support: 0.5, f: (x) => (x > -0.5 && x <= 0.5 ? 1 : 0) },
  // Keys cubic with a = -0.5.
  bicubic: {
    support: 2,
    f: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
};

interface Coeffs {
  ksize: number;
  /** Per output position: first input index and number of taps. */
  bounds: Int32Array;
  /** outSize x ksize normalised weights (float) ... */
  k: Float64Array;
  /** ... and the same in Pillow's 22-bit fixed point for 8-bit images. */
  fixed: Int32Array;
}

const PRECISION_BITS = 22;

function coefficients(inSize: number, outSize: number, filter: Filter): Coeffs {
  const { support: baseSupport, f } = FILTERS[filter];
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = baseSupport * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const k = new Float64Array(outSize * ksize);
  const fixed = new Int32Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    // Pillow rounds with C's (int) cast, i.e. truncation toward zero.
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = f((x + xmin - center + 0.5) / filterscale);
      k[xx * ksize + x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const i = xx * ksize + x;
      if (ww !== 0) k[i] /= ww;
      fixed[i] = Math.trunc(k[i] < 0 ? -0.5 + k[i] * (1 << PRECISION_BITS) : 0.5 + k[i] * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, k, fixed };
}

/** One 1-D resampling pass over `lines` lines of `c` interleaved channels: element (line, pos,
 *  ch) lives at off + line * lineStride + pos * posStride + ch in both src and dst. 8-bit
 *  destinations take Pillow's fixed-point path (round half up, clamp to 0..255). */
function pass(
  src: Uint8Array | Float32Array, srcOff: number, srcLine: number, srcPos: number,
  dst: Uint8Array | Float32Array, dstOff: number, dstLine: number, dstPos: number,
  lines: number, c: number, co: Coeffs,
): void {
  const outSize = co.bounds.length / 2;
  const fixed = dst instanceof Uint8Array;
  const w = fixed ? co.fixed : co.k;
  for (let line = 0; line < lines; line++) {
    for (let xx = 0; xx < outSize; xx++) {
      const xmin = co.bounds[xx * 2];
      const taps = co.bounds[xx * 2 + 1];
      const kOff = xx * co.ksize;
      for (let ch = 0; ch < c; ch++) {
        const base = srcOff + line * srcLine + xmin * srcPos + ch;
        let ss = fixed ? 1 << (PRECISION_BITS - 1) : 0;
        for (let x = 0; x < taps; x++) ss += src[base + x * srcPos] * w[kOff + x];
        dst[dstOff + line * dstLine + xx * dstPos + ch] = fixed ? Math.min(255, Math.max(0, Math.floor(ss / (1 << PRECISION_BITS)))) : ss;
      }
    }
  }
}

function checkSize(w: number, h: number, where: string): void {
  if (!Number.isInteger(w) || !Number.isInteger(h) || w < 1 || h < 1) throw new Error(`${where}: bad target size ${w}x${h}`);
}

/** Pillow's Image.resize((w, h), BOX|BICUBIC) of an "RGB" image, bit for bit. */
export function resizeRgb8(img: Rgb8, w: number, h: number, filter: Filter): Rgb8 {
  checkRgb8(img, 'resizeRgb8');
  checkSize(w, h, 'resizeRgb8');
  let cur = img;
  if (w !== cur.width) {
    const data = new Uint8Array(w * cur.height * 3);
    pass(cur.data, 0, cur.width * 3, 3, data, 0, w * 3, 3, cur.height, 3, coefficients(cur.width, w, filter));
    cur = { width: w, height: cur.height, data };
  }
  if (h !== cur.height) {
    const data = new Uint8Array(w * h * 3);
    pass(cur.data, 0, 3, w * 3, data, 0, 3, w * 3, w, 3, coefficients(cur.height, h, filter));
    cur = { width: w, height: h, data };
  }
  return cur === img ? { width: w, height: h, data: img.data.slice() } : cur;
}

/** The same resampling on float images (Pillow's mode "F" path, per channel). */
export function resizeImage(img: RgbImage, w: number, h: number, filter: Filter): RgbImage {
  checkImage(img, 'resizeImage');
  checkSize(w, h, 'resizeImage');
  let cur = img;
  if (w !== cur.width) {
    const data = new Float32Array(3 * w * cur.height);
    const co = coefficients(cur.width, w, filter);
    const n = cur.width * cur.height;
    for (let c = 0; c < 3; c++) pass(cur.data, c * n, cur.width, 1, data, c * w * cur.height, w, 1, cur.height, 1, co);
    cur = { width: w, height: cur.height, data };
  }
  if (h !== cur.height) {
    const data = new Float32Array(3 * w * h);
    const co = coefficients(cur.height, h, filter);
    for (let c = 0; c < 3; c++) pass(cur.data, c * w * cur.height, 1, w, data, c * w * h, 1, w, w, 1, co);
    cur = { width: w, height: h, data };
  }
  return cur === img ? { width: w, height: h, data: img.data.slice() } : cur;
}

/** Python's round(): half to even. */
function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  return d > 0.5 ? f + 1 : d < 0.5 ? f : f % 2 === 0 ? f : f + 1;
}

/** LlamaGen's center_crop_arr: halve with BOX while the short side is >= 2 * size, BICUBIC so
 *  the short side is `size`, then crop the centre size x size. */
export function centerCrop(img: Rgb8, size: number): Rgb8 {
  checkRgb8(img, 'centerCrop');
  if (!Number.isInteger(size) || size < 1) throw new Error(`centerCrop: bad size ${size}`);
  let cur = img;
  while (Math.min(cur.width, cur.height) >= 2 * size) cur = resizeRgb8(cur, Math.floor(cur.width / 2), Math.floor(cur.height / 2), 'box');
  const scale = size / Math.min(cur.width, cur.height);
  const w = roundHalfEven(cur.width * scale);
  const h = roundHalfEven(cur.height * scale);
  if (w !== cur.width || h !== cur.height) cur = resizeRgb8(cur, w, h, 'bicubic');
  const y0 = Math.floor((cur.height - size) / 2);
  const x0 = Math.floor((cur.width - size) / 2);
  const data = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) data.set(cur.data.subarray(((y0 + y) * cur.width + x0) * 3, ((y0 + y) * cur.width + x0 + size) * 3), y * size * 3);
  return { width: size, height: size, data };
}
