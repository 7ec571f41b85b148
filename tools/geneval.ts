// Analytic GenEval-style checker for images of the procedural world (tools/world.ts).
// Detection replaces GenEval's Mask2Former + CLIP colour classifier:
//  1. each pixel takes the nearest palette colour if it lies within `threshold` (RGB distance,
//     0..1 per channel) of it and nearer to it than to the background (the median colour of
//     the unclaimed pixels), else it is background;
//  2. 8-connected components of equal colour; components smaller than minArea (fraction of
//     the image) or thinner than 3 px are dropped (noise, anti-aliased fringes);
//  3. a soft mask of each component (its pixels and a 2 px rim, each pixel's coverage read off
//     the line from the background to the object colour) is fitted, least squares, by each
//     shape's outline of the mask's area placed at its centroid, sharp or Gaussian-blurred
//     (generated images are soft); the best fit names the shape. Area and centroid of a soft
//     mask do not move under anti-aliasing or blur, where thresholded blobs and their boxes
//     do: a clipped 7 px circle is a square, a blurred diamond a circle.
// Scoring follows GenEval's evaluate(): each caption group needs at least `count` matching
// objects (largest first, as GenEval takes its most confident detections); counting captions
// also fail with more than `count` (GenEval's exclude clause), as do composite captions; a
// relation must hold between every matched pair (GenEval's relative_position, threshold 0.1).
// One deviation: a group with a colour matches shape and colour together, where GenEval takes
// the class's top detections and then asks CLIP for their colour; here colour is measured
// exactly, so objects of another colour are simply not candidates.
import type { RgbImage } from './image.ts';
import {
  type Box, type CaptionSpec, type Category, type Colour, type Shape, COLOURS, COLOUR_NAMES, SHAPES, groupPhrase, insideShape,
  parseCaption, relationsBetween,
} from './world.ts';

export interface Detection {
  shape: Shape;
  colour: Colour;
  /** Pixels in the component. */
  area: number;
  /** [x0, y0, x1, y1] in pixels, x1 / y1 exclusive. */
  bbox: Box;
  /** Soft intersection over union of the component's mask with the chosen shape's outline. */
  iou: number;
}

export interface DetectOptions {
  /** Largest RGB distance (channels in 0..1) from a palette colour; default 0.3. */
  threshold?: number;
  /** Smallest component, as a fraction of the image area; default 0.004 (16 px at 64 x 64). */
  minArea?: number;
}

export interface ScoreResult {
  caption: string;
  category: Category;
  correct: boolean;
  details: { reasons: string[]; detections: Detection[] };
}

export interface Summary {
  /** Mean of the category scores (GenEval's "avg. over tasks"). */
  overall: number;
  /** Fraction of correct images per category. */
  categories: Partial<Record<Category, number>>;
  counts: Partial<Record<Category, { correct: number; total: number }>>;
}

const POSITION_THRESHOLD = 0.1;

/** Area and centroid (v, y down) of each outline with centre 0 and half side 1. */
const UNIT_AREA: Record<Shape, number> = { circle: Math.PI, square: 4, triangle: 2, diamond: 2 };
const UNIT_CENTROID_V: Record<Shape, number> = { circle: 0, square: 0, triangle: 1 / 3, diamond: 0 };

/** Sub-samples per pixel side of the shape outlines (their area coverage is compared). */
const SUB = 4;

/** Pixels around a component read into its soft mask. */
const RIM = 2;
/** Gaussian blurs (sigma, px) the outlines are also tried with: generated images are softer
 *  than the world's renders. Kernels are cut at BLUR_RADII sigma. */
const BLURS = [0, 0.6, 0.9, 1.2];
const BLUR_RADII = 2.5;

const PALETTE = COLOUR_NAMES.map((c) => COLOURS[c].map((v) => v / 255));

/** The objects in an image, largest first (see the header for the method). */
export function detectObjects(image: RgbImage, opts: DetectOptions = {}): Detection[] {
  const { width: w, height: h, data } = image;
  const n = w * h;
  if (data.length !== 3 * n) throw new Error(`detectObjects: ${data.length} values do not hold a 3x${h}x${w} image`);
  const t2 = (opts.threshold ?? 0.3) ** 2;
  const minArea = Math.max(4, (opts.minArea ?? 0.004) * n);
  const label = new Int8Array(n).fill(-1);
  for (let i = 0; i < n; i++) {
    let best = -1;
    let bestD = t2;
    for (let k = 0; k < PALETTE.length; k++) {
      const p = PALETTE[k];
      const d = (data[i] - p[0]) ** 2 + (data[n + i] - p[1]) ** 2 + (data[2 * n + i] - p[2]) ** 2;
      if (d <= bestD) {
        bestD = d;
        best = k;
      }
    }
    label[i] = best;
  }
  // Pixels nearer the background than their palette colour (blurred gaps between objects of a
  // colour close to the background) are background: they would join neighbouring objects.
  const bg = backgroundColour(data, label);
  for (let i = 0; i < n; i++) {
    const k = label[i];
    if (k < 0) continue;
    let dc = 0;
    let db = 0;
    for (let c = 0; c < 3; c++) {
      dc += (data[c * n + i] - PALETTE[k][c]) ** 2;
      db += (data[c * n + i] - bg[c]) ** 2;
    }
    if (db < dc) label[i] = -1;
  }
  // Component number of each visited pixel (0: not visited).
  const seen = new Int32Array(n);
  let mark = 0;
  const stack = new Int32Array(n);
  const pixels = new Int32Array(n);
  const alpha = new Float32Array(n);
  const soft = new Int32Array(n);
  const taken = new Int32Array(n);
  const out: Detection[] = [];
  for (let start = 0; start < n; start++) {
    if (label[start] < 0 || seen[start]) continue;
    const k = label[start];
    mark++;
    let top = 0;
    let count = 0;
    stack[top++] = start;
    seen[start] = mark;
    let x0 = w, y0 = h, x1 = -1, y1 = -1;
    while (top) {
      const i = stack[--top];
      pixels[count++] = i;
      const x = i % w;
      const y = (i - x) / w;
      x0 = Math.min(x0, x);
      x1 = Math.max(x1, x);
      y0 = Math.min(y0, y);
      y1 = Math.max(y1, y);
      for (let dy = -1; dy <= 1; dy++) {
        const yy = y + dy;
        if (yy < 0 || yy >= h) continue;
        for (let dx = -1; dx <= 1; dx++) {
          const xx = x + dx;
          if (xx < 0 || xx >= w) continue;
          const j = yy * w + xx;
          if (!seen[j] && label[j] === k) {
            seen[j] = mark;
            stack[top++] = j;
          }
        }
      }
    }
    const bw = x1 - x0 + 1;
    const bh = y1 - y0 + 1;
    if (count < minArea || bw < 3 || bh < 3) continue;
    // Soft mask: the component and the unclaimed pixels up to RIM px around it, each pixel's
    // coverage read off the segment from the background to the palette colour (pixels far off
    // that segment belong to something else). Anti-aliased and blurred edges carry the shape,
    // and the mask's mass and centroid do not move under blur.
    const col = PALETTE[k];
    const dir = [col[0] - bg[0], col[1] - bg[1], col[2] - bg[2]];
    const dir2 = dir[0] ** 2 + dir[1] ** 2 + dir[2] ** 2;
    let inSoft = 0;
    let mass = 0;
    let clampedMass = 0;
    let mx = 0;
    let my = 0;
    const take = (i: number, x: number, y: number) => {
      const d = [data[i] - bg[0], data[n + i] - bg[1], data[2 * n + i] - bg[2]];
      const t = (d[0] * dir[0] + d[1] * dir[1] + d[2] * dir[2]) / dir2;
      const off2 = (d[0] - t * dir[0]) ** 2 + (d[1] - t * dir[1]) ** 2 + (d[2] - t * dir[2]) ** 2;
      // Not clamped: noise stays zero-mean, so mass, centroid and the fit stay unbiased.
      const a = off2 > t2 ? 0 : t;
      alpha[i] = a;
      soft[inSoft++] = i;
      taken[i] = mark;
      mass += a;
      clampedMass += Math.min(1, Math.max(0, a));
      mx += a * (x + 0.5);
      my += a * (y + 0.5);
    };
    for (let p = 0; p < count; p++) {
      const x = pixels[p] % w;
      const y = (pixels[p] - x) / w;
      for (let yy = Math.max(0, y - RIM); yy <= Math.min(h - 1, y + RIM); yy++) {
        for (let xx = Math.max(0, x - RIM); xx <= Math.min(w - 1, x + RIM); xx++) {
          const j = yy * w + xx;
          if (taken[j] !== mark && (seen[j] === mark || label[j] < 0)) take(j, xx, yy);
        }
      }
    }
    const { shape, iou } = fitShape(alpha, w, h, mass, clampedMass, mx / mass, my / mass);
    for (let p = 0; p < inSoft; p++) alpha[soft[p]] = 0;
    out.push({ shape, colour: COLOUR_NAMES[k], area: count, bbox: [x0, y0, x1 + 1, y1 + 1], iou });
  }
  return out.sort((a, b) => b.area - a.area);
}

/** The outline (and blur) whose coverage best matches (least squares) the soft mask `alpha`
 *  (zero outside the object), placed with the mask's mass and centroid; with its soft
 *  intersection over union (alpha clamped to 0..1). */
function fitShape(alpha: Float32Array, w: number, h: number, mass: number, clampedMass: number, mx: number, my: number): { shape: Shape; iou: number } {
  let best = { shape: SHAPES[0] as Shape, iou: 0, err: Infinity };
  const pad = Math.ceil(BLUR_RADII * BLURS[BLURS.length - 1]);
  for (const s of SHAPES) {
    const r = Math.sqrt(mass / UNIT_AREA[s]);
    const cy = my - r * UNIT_CENTROID_V[s];
    const x0 = Math.floor(mx - r) - pad;
    const y0 = Math.floor(cy - r) - pad;
    const ww = Math.ceil(mx + r) + pad - x0;
    const wh = Math.ceil(cy + r) + pad - y0;
    const cover = new Float32Array(ww * wh);
    for (let y = pad; y < wh - pad; y++) {
      for (let x = pad; x < ww - pad; x++) {
        let c = 0;
        for (let sy = 0; sy < SUB; sy++) {
          for (let sx = 0; sx < SUB; sx++) if (insideShape(s, (x0 + x + (sx + 0.5) / SUB - mx) / r, (y0 + y + (sy + 0.5) / SUB - cy) / r)) c++;
        }
        cover[y * ww + x] = c / (SUB * SUB);
      }
    }
    for (const sigma of BLURS) {
      const t = sigma ? gaussianBlur(cover, ww, wh, sigma) : cover;
      // Squared error over the window; alpha outside it adds the same to every candidate.
      let err = 0;
      let inter = 0;
      let union = 0;
      let seen = 0;
      for (let y = 0; y < wh; y++) {
        for (let x = 0; x < ww; x++) {
          const ix = x0 + x;
          const iy = y0 + y;
          const a = ix >= 0 && ix < w && iy >= 0 && iy < h ? alpha[iy * w + ix] : 0;
          const c = t[y * ww + x];
          err += (a - c) ** 2 - a * a;
          const ac = Math.min(1, Math.max(0, a));
          seen += ac;
          inter += Math.min(ac, c);
          union += Math.max(ac, c);
        }
      }
      if (err < best.err) best = { shape: s, iou: inter / (union + Math.max(0, clampedMass - seen)), err };
    }
  }
  return { shape: best.shape, iou: best.iou };
}

/** Separable Gaussian blur of a w x h map (kernel cut at BLUR_RADII sigma, zero outside). */
function gaussianBlur(src: Float32Array, w: number, h: number, sigma: number): Float32Array {
  const rad = Math.ceil(BLUR_RADII * sigma);
  const k = Array.from({ length: 2 * rad + 1 }, (_, i) => Math.exp(-((i - rad) ** 2) / (2 * sigma * sigma)));
  const sum = k.reduce((a, b) => a + b, 0);
  const kn = k.map((v) => v / sum);
  const tmp = new Float32Array(w * h);
  const out = new Float32Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let v = 0;
      for (let i = -rad; i <= rad; i++) if (x + i >= 0 && x + i < w) v += kn[i + rad] * src[y * w + x + i];
      tmp[y * w + x] = v;
    }
  }
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let v = 0;
      for (let i = -rad; i <= rad; i++) if (y + i >= 0 && y + i < h) v += kn[i + rad] * tmp[(y + i) * w + x];
      out[y * w + x] = v;
    }
  }
  return out;
}

/** Per-channel median of the pixels no palette colour claims (black when there are none). */
function backgroundColour(data: Float32Array, label: Int8Array): number[] {
  const n = label.length;
  const idx: number[] = [];
  for (let i = 0; i < n; i++) if (label[i] < 0) idx.push(i);
  if (!idx.length) return [0, 0, 0];
  return [0, 1, 2].map((c) => {
    const v = Float32Array.from(idx, (i) => data[c * n + i]).sort();
    return v[v.length >> 1];
  });
}

/** Scores one image against a caption (text of the world's grammar, or its parsed spec). */
export function scoreImage(image: RgbImage, caption: string | CaptionSpec, opts: DetectOptions = {}): ScoreResult {
  const spec = typeof caption === 'string' ? parseCaption(caption) : caption;
  const detections = detectObjects(image, opts);
  const reasons: string[] = [];
  const exact = spec.category === 'counting' || spec.category === 'composite';
  const matched = spec.groups.map((g) => {
    const found = detections.filter((d) => d.shape === g.shape && (!g.colour || d.colour === g.colour));
    if (found.length < g.count) reasons.push(`expected ${groupPhrase(g)}, found ${found.length}`);
    else if (exact && found.length > g.count) reasons.push(`expected exactly ${groupPhrase(g)}, found ${found.length}`);
    return found.length >= g.count ? found.slice(0, g.count) : undefined;
  });
  const rel = spec.relation;
  if (rel && matched[0] && matched[1]) {
    const bad = matched[0].some((a) => matched[1]!.some((b) => !relationsBetween(a.bbox, b.bbox, POSITION_THRESHOLD).has(rel)));
    if (bad) reasons.push(`expected ${groupPhrase(spec.groups[0])} ${rel} ${groupPhrase(spec.groups[1])}`);
  }
  return { caption: spec.caption, category: spec.category, correct: reasons.length === 0, details: { reasons, detections } };
}

/** Per-category accuracy and their mean (over the categories present). */
export function summarise(results: readonly Pick<ScoreResult, 'category' | 'correct'>[]): Summary {
  if (!results.length) throw new Error('summarise: no results');
  const counts: Summary['counts'] = {};
  for (const r of results) {
    const c = (counts[r.category] ??= { correct: 0, total: 0 });
    c.total++;
    if (r.correct) c.correct++;
  }
  const categories: Summary['categories'] = {};
  for (const [k, v] of Object.entries(counts)) categories[k as Category] = v.correct / v.total;
  const scores = Object.values(categories);
  return { overall: scores.reduce((a, b) => a + b, 0) / scores.length, categories, counts };
}
