// Analytic GenEval-style checker for images of the procedural world (tools/world.ts).
// Detection replaces GenEval's Mask2Former + CLIP colour classifier:
//  1. each pixel takes the nearest palette colour if it lies within `threshold` (RGB distance,
//     0..1 per channel) of it, else it is background;
//  2. 8-connected components of equal colour; components smaller than minArea (fraction of
//     the image) or thinner than 3 px are dropped (noise, anti-aliased fringes);
//  3. the shape is the one whose outline, scaled to the component's area and placed at its
//     centroid, overlaps the component best (intersection over union of pixel centres). Area
//     and centroid hardly move when thresholding clips sharp tips, where bounding boxes (and
//     fill ratios of them) do: a clipped 10 px diamond is an octagon in its box.
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
  /** Intersection over union with the chosen shape's outline. */
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
  // Component number of each visited pixel (0: not visited).
  const seen = new Int32Array(n);
  let mark = 0;
  const stack = new Int32Array(n);
  const pixels = new Int32Array(n);
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
    let mx = 0;
    let my = 0;
    for (let p = 0; p < count; p++) {
      mx += (pixels[p] % w) + 0.5;
      my += Math.floor(pixels[p] / w) + 0.5;
    }
    mx /= count;
    my /= count;
    let shape: Shape = SHAPES[0];
    let iou = -1;
    for (const s of SHAPES) {
      const r = Math.sqrt(count / UNIT_AREA[s]);
      const cx = mx;
      const cy = my - r * UNIT_CENTROID_V[s];
      let inter = 0;
      let inTemplate = 0;
      for (let y = Math.max(0, Math.floor(cy - r)); y < Math.min(h, Math.ceil(cy + r)); y++) {
        for (let x = Math.max(0, Math.floor(cx - r)); x < Math.min(w, Math.ceil(cx + r)); x++) {
          let cover = 0;
          for (let sy = 0; sy < SUB; sy++) {
            for (let sx = 0; sx < SUB; sx++) if (insideShape(s, (x + (sx + 0.5) / SUB - cx) / r, (y + (sy + 0.5) / SUB - cy) / r)) cover++;
          }
          cover /= SUB * SUB;
          inTemplate += cover;
          if (seen[y * w + x] === mark) inter += cover;
        }
      }
      const score = inter / (count + inTemplate - inter);
      if (score > iou) {
        iou = score;
        shape = s;
      }
    }
    out.push({ shape, colour: COLOUR_NAMES[k], area: count, bbox: [x0, y0, x1 + 1, y1 + 1], iou });
  }
  return out.sort((a, b) => b.area - a.area);
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
