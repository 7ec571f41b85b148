// A seeded procedural world of captioned images: 1-4 flat coloured shapes on a plain dark
// background, with captions from a small grammar that covers GenEval's six categories.
//
// Grammar (every caption is one of these; [..] optional):
//   group   := COUNT [COLOUR] SHAPE(s)          COUNT: a | two | three | four
//   caption := group [BG]
//            | group RELATION group [BG]         RELATION: left of | right of | above | below
//            | group and group [BG]              BG: " on a <background> background"
// Two groups in one caption must be distinguishable (different shapes, or both coloured with
// different colours) and hold at most 4 objects together. Categories (GenEval's, by form):
//   single_object "a circle"                    colors      "a red circle"
//   counting      "three [red] circles"         two_object  "a circle and a square"
//   position      "a [red] circle left of a [blue] square"
//   color_attr    "a red circle and a blue square"
//   composite     every other two-group caption (counts > 1, or colour given on one side)
// Unstated colours and backgrounds are drawn at random; a scene holds exactly the objects its
// caption names. Objects never touch (bounding boxes at least GAP apart) and relations hold
// with a stricter margin than the checker's (tools/geneval.ts), so every scene is checkable;
// below 64 px, sides and gaps have a minimum in pixels (MIN_SIDE_PX, MIN_GAP_PX).
//
// Splits: captions that say the same thing ("A right of B" / "B left of A", "A and B" /
// "B and A") share a canonical key; within each category the keys are ranked by a hash and the
// lowest HELDOUT_FRACTION go to 'heldout', so the two splits never share a caption and every
// category has held-out captions. Images are rendered on the CPU with 4 x 4 supersampling.
import type { RgbImage } from './image.ts';

export const SHAPES = ['circle', 'square', 'triangle', 'diamond'] as const;
export type Shape = (typeof SHAPES)[number];

/** Object colours (sRGB 0..255), pairwise >= 134 apart and >= 114 from every background. */
export const COLOURS = {
  red: [220, 40, 40],
  green: [40, 180, 70],
  blue: [40, 90, 230],
  yellow: [240, 210, 40],
  purple: [170, 60, 210],
  white: [240, 240, 240],
} as const satisfies Record<string, readonly [number, number, number]>;
export type Colour = keyof typeof COLOURS;
export const COLOUR_NAMES = Object.keys(COLOURS) as Colour[];

export const BACKGROUNDS = {
  black: [15, 15, 15],
  gray: [70, 70, 70],
  navy: [20, 30, 80],
  brown: [80, 50, 30],
} as const satisfies Record<string, readonly [number, number, number]>;
export type Background = keyof typeof BACKGROUNDS;
export const BACKGROUND_NAMES = Object.keys(BACKGROUNDS) as Background[];

export const RELATIONS = ['left of', 'right of', 'above', 'below'] as const;
export type Relation = (typeof RELATIONS)[number];

export const GENEVAL_CATEGORIES = ['single_object', 'two_object', 'counting', 'colors', 'position', 'color_attr'] as const;
export type Category = (typeof GENEVAL_CATEGORIES)[number] | 'composite';
export const CATEGORIES: readonly Category[] = [...GENEVAL_CATEGORIES, 'composite'];

export type Split = 'train' | 'heldout';
export const HELDOUT_FRACTION = 0.1;
export const MAX_OBJECTS = 4;

export interface Group {
  count: number;
  shape: Shape;
  colour?: Colour;
}

export interface CaptionSpec {
  caption: string;
  category: Category;
  /** One or two groups; with a relation, groups[0] RELATION groups[1]. */
  groups: Group[];
  relation?: Relation;
  background?: Background;
}

/** [x0, y0, x1, y1], x right, y down. */
export type Box = [number, number, number, number];

export interface SceneObject {
  shape: Shape;
  colour: Colour;
  /** Centre and side length in image fractions (0..1). */
  cx: number;
  cy: number;
  side: number;
  /** Index of the caption group it belongs to. */
  group: number;
}

export interface Scene {
  background: Background;
  objects: SceneObject[];
}

/** A rendered object in pixel coordinates of its image. */
export interface WorldObject {
  shape: Shape;
  colour: Colour;
  group: number;
  centre: [number, number];
  bbox: Box;
}

export interface Sample {
  image: RgbImage;
  caption: string;
  spec: CaptionSpec;
  background: Background;
  objects: WorldObject[];
}

// ---- captions ------------------------------------------------------------------------------

const COUNT_WORDS = ['', 'a', 'two', 'three', 'four'];

export function groupPhrase(g: Group): string {
  return `${COUNT_WORDS[g.count]} ${g.colour ? `${g.colour} ` : ''}${g.shape}${g.count > 1 ? 's' : ''}`;
}

function captionText(groups: readonly Group[], relation?: Relation, background?: Background): string {
  const body = groups.length === 1 ? groupPhrase(groups[0]) : `${groupPhrase(groups[0])} ${relation ?? 'and'} ${groupPhrase(groups[1])}`;
  return background ? `${body} on a ${background} background` : body;
}

function distinguishable(a: Group, b: Group): boolean {
  return a.shape !== b.shape || (!!a.colour && !!b.colour && a.colour !== b.colour);
}

function categoryOf(groups: readonly Group[], relation?: Relation): Category {
  if (groups.length === 1) return groups[0].count > 1 ? 'counting' : groups[0].colour ? 'colors' : 'single_object';
  const [a, b] = groups;
  if (a.count > 1 || b.count > 1) return 'composite';
  if (relation) return 'position';
  if (!a.colour && !b.colour) return 'two_object';
  return a.colour && b.colour ? 'color_attr' : 'composite';
}

function makeSpec(groups: Group[], relation?: Relation, background?: Background): CaptionSpec {
  return { caption: captionText(groups, relation, background), category: categoryOf(groups, relation), groups, relation, background };
}

/** Parses a caption of the grammar; throws naming the caption and the part it cannot read. */
export function parseCaption(text: string): CaptionSpec {
  const fail = (why: string): never => {
    throw new Error(`caption "${text}": ${why}`);
  };
  let body = text.trim().toLowerCase().replace(/\s+/g, ' ');
  let background: Background | undefined;
  const bg = body.match(/ on an? (\w+) background$/);
  if (bg) {
    if (!Object.hasOwn(BACKGROUNDS, bg[1])) fail(`unknown background "${bg[1]}" (one of ${BACKGROUND_NAMES.join(', ')})`);
    background = bg[1] as Background;
    body = body.slice(0, bg.index);
  }
  const parseGroup = (phrase: string): Group => {
    const words = phrase.split(' ');
    const count = COUNT_WORDS.indexOf(words[0] === 'an' ? 'a' : words[0]);
    if (count < 1) fail(`"${phrase}" does not start with a, two, three or four`);
    let colour: Colour | undefined;
    if (words.length === 3) {
      if (!Object.hasOwn(COLOURS, words[1])) fail(`unknown colour "${words[1]}" (one of ${COLOUR_NAMES.join(', ')})`);
      colour = words[1] as Colour;
    } else if (words.length !== 2) {
      fail(`"${phrase}" is not COUNT [COLOUR] SHAPE`);
    }
    const noun = words[words.length - 1];
    const shape = (count > 1 ? noun.replace(/s$/, '') : noun) as Shape;
    if (!SHAPES.includes(shape) || (count > 1) !== noun.endsWith('s')) fail(`"${noun}" is not ${count > 1 ? 'a plural' : 'a'} shape (${SHAPES.join(', ')})`);
    return { count, shape, colour };
  };
  const split = body.match(/^(.+?) (left of|right of|above|below|and) (.+)$/);
  const groups = split ? [parseGroup(split[1]), parseGroup(split[3])] : [parseGroup(body)];
  const relation = split && split[2] !== 'and' ? (split[2] as Relation) : undefined;
  if (groups.length === 2 && !distinguishable(groups[0], groups[1])) fail('the two groups cannot be told apart');
  if (groups.reduce((s, g) => s + g.count, 0) > MAX_OBJECTS) fail(`more than ${MAX_OBJECTS} objects`);
  return makeSpec(groups, relation, background);
}

/** The same key for captions that say the same thing (relations turned to left of / above,
 *  'and' groups in sorted order). */
export function canonicalKey(spec: CaptionSpec): string {
  let [a, b] = spec.groups.map(groupPhrase);
  let rel = spec.relation ?? 'and';
  if (rel === 'right of' || rel === 'below' || (rel === 'and' && b < a)) [a, b] = [b, a];
  if (rel === 'right of') rel = 'left of';
  if (rel === 'below') rel = 'above';
  return [b === undefined ? a : `${a} ${rel} ${b}`, spec.background ?? ''].join('|');
}

/** 32-bit FNV-1a followed by a murmur3 finaliser. */
export function hash32(text: string, seed = 0): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return fmix(h);
}

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

function allGroups(count: number): Group[] {
  const out: Group[] = [];
  for (const shape of SHAPES) for (const colour of [undefined, ...COLOUR_NAMES]) out.push({ count, shape, colour });
  return out;
}

function enumerate(): CaptionSpec[] {
  const specs: CaptionSpec[] = [];
  for (const background of [undefined, ...BACKGROUND_NAMES]) {
    for (let n = 1; n <= MAX_OBJECTS; n++) for (const g of allGroups(n)) specs.push(makeSpec([g], undefined, background));
    for (let n = 1; n < MAX_OBJECTS; n++) {
      for (let m = 1; n + m <= MAX_OBJECTS; m++) {
        for (const a of allGroups(n)) {
          for (const b of allGroups(m)) {
            if (!distinguishable(a, b)) continue;
            for (const relation of [...RELATIONS, undefined]) specs.push(makeSpec([a, b], relation, background));
          }
        }
      }
    }
  }
  return specs;
}

interface Catalogue {
  byCategory: Map<Category, Record<Split, CaptionSpec[]>>;
  heldoutKeys: Set<string>;
}

let catalogue: Catalogue | undefined;

/** All captions, split (computed once). */
function getCatalogue(): Catalogue {
  if (catalogue) return catalogue;
  const specs = enumerate();
  const keysByCategory = new Map<Category, Set<string>>();
  for (const s of specs) {
    if (!keysByCategory.has(s.category)) keysByCategory.set(s.category, new Set());
    keysByCategory.get(s.category)!.add(canonicalKey(s));
  }
  const heldoutKeys = new Set<string>();
  for (const keys of keysByCategory.values()) {
    const ranked = [...keys].map((k) => [hash32(k), k] as const).sort((x, y) => x[0] - y[0] || (x[1] < y[1] ? -1 : 1));
    for (const [, k] of ranked.slice(0, Math.ceil(ranked.length * HELDOUT_FRACTION))) heldoutKeys.add(k);
  }
  const byCategory = new Map<Category, Record<Split, CaptionSpec[]>>(CATEGORIES.map((c) => [c, { train: [], heldout: [] }]));
  for (const s of specs) byCategory.get(s.category)![heldoutKeys.has(canonicalKey(s)) ? 'heldout' : 'train'].push(s);
  catalogue = { byCategory, heldoutKeys };
  return catalogue;
}

/** The split a caption belongs to (it must parse). */
export function splitOf(caption: string | CaptionSpec): Split {
  const spec = typeof caption === 'string' ? parseCaption(caption) : caption;
  return getCatalogue().heldoutKeys.has(canonicalKey(spec)) ? 'heldout' : 'train';
}

// ---- randomness ----------------------------------------------------------------------------

/** sfc32: small, fast, good enough for scene layout. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(...seeds: number[]) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = 1;
    for (const s of seeds) {
      this.a = fmix((this.a ^ s) >>> 0);
      this.b = fmix((this.b + Math.imul(s, 0x85ebca6b)) >>> 0);
      this.c = fmix((this.c ^ Math.imul(s, 0xc2b2ae35)) >>> 0);
    }
    for (let i = 0; i < 12; i++) this.next();
  }

  /** Uniform in [0, 1). */
  next(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t / 4294967296;
  }

  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
}

// ---- scenes --------------------------------------------------------------------------------

/** Side length range (image fractions) by number of objects in the scene; 0.19 is 12 px at 64. */
const SIDE_RANGE: Record<number, [number, number]> = { 1: [0.28, 0.45], 2: [0.22, 0.36], 3: [0.2, 0.3], 4: [0.19, 0.27] };
/** Border between objects and the image edge, and between object boxes. */
const MARGIN = 0.03;
const GAP = 0.06;
/** Below 64 px the fractions above make objects too small to tell apart once blurred (a 6 px
 *  diamond and circle differ in a few rim pixels): sides and gaps are then at least this many
 *  pixels of the rendering size. From 64 px up, scenes do not depend on the size. */
export const MIN_SIDE_PX = 8;
export const MIN_GAP_PX = 2;
/** The smallest size four such objects fit at (with a relation: three of them on one side). */
export const MIN_SCENE_SIZE = 32;
/** Relations are generated with GenEval's test at this threshold (it checks at 0.1). */
const SCENE_POSITION_THRESHOLD = 0.25;

const boxOf = (o: SceneObject): Box => [o.cx - o.side / 2, o.cy - o.side / 2, o.cx + o.side / 2, o.cy + o.side / 2];

/** GenEval's relative_position: the relations of box A to box B. Offsets between centres shrink
 *  by threshold * (sum of the two boxes' sizes); a relation holds when its axis carries more
 *  than half of the (unshrunk) offset direction. */
export function relationsBetween(a: Box, b: Box, threshold = 0.1): Set<Relation> {
  const offset = [(a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2];
  const dims = [a[2] - a[0] + b[2] - b[0], a[3] - a[1] + b[3] - b[1]];
  const revised = offset.map((o, i) => Math.max(Math.abs(o) - threshold * Math.abs(dims[i]), 0) * Math.sign(o));
  const out = new Set<Relation>();
  if (revised.every((r) => Math.abs(r) < 1e-3)) return out;
  const norm = Math.hypot(offset[0], offset[1]);
  const [dx, dy] = revised.map((r) => r / norm);
  if (dx < -0.5) out.add('left of');
  if (dx > 0.5) out.add('right of');
  if (dy < -0.5) out.add('above');
  if (dy > 0.5) out.add('below');
  return out;
}

function separated(a: SceneObject, b: SceneObject, gap: number): boolean {
  const d = (a.side + b.side) / 2 + gap;
  return Math.abs(a.cx - b.cx) >= d || Math.abs(a.cy - b.cy) >= d;
}

/** A random layout that satisfies the caption, for rendering at `size` px (rejection sampling;
 *  deterministic in rng and, below 64 px, size). With
 *  a relation, a random line across its axis keeps the two groups on their sides, and the
 *  relation is then checked as GenEval does (at a stricter threshold). */
export function makeScene(spec: CaptionSpec, rng: Rng, size = 64): Scene {
  if (!Number.isInteger(size) || size < MIN_SCENE_SIZE) throw new Error(`world: scene size ${size} must be an integer >= ${MIN_SCENE_SIZE} (objects are >= ${MIN_SIDE_PX} px)`);
  const background = spec.background ?? rng.pick(BACKGROUND_NAMES);
  const proto = spec.groups.flatMap((g, group) => Array.from({ length: g.count }, () => ({ shape: g.shape, colour: g.colour ?? rng.pick(COLOUR_NAMES), group })));
  const lo = Math.max(SIDE_RANGE[proto.length][0], MIN_SIDE_PX / size);
  const hi = Math.max(SIDE_RANGE[proto.length][1], lo);
  const gap = Math.max(GAP, MIN_GAP_PX / size);
  const rel = spec.relation;
  const horizontal = rel === 'left of' || rel === 'right of';
  const firstLow = rel === 'left of' || rel === 'above';
  for (let attempt = 0; attempt < 1000; attempt++) {
    const line = rng.uniform(0.35, 0.65);
    const objects: SceneObject[] = [];
    for (const p of proto) {
      for (let tries = 0; tries < 50; tries++) {
        const side = rng.uniform(lo, hi);
        const range = [MARGIN + side / 2, 1 - MARGIN - side / 2];
        const along = [...range];
        if (rel) {
          if ((p.group === 0) === firstLow) along[1] = Math.min(along[1], line - (side + gap) / 2);
          else along[0] = Math.max(along[0], line + (side + gap) / 2);
        }
        if (along[0] > along[1]) continue;
        const a = rng.uniform(along[0], along[1]);
        const b = rng.uniform(range[0], range[1]);
        const o = { ...p, side, cx: horizontal ? a : b, cy: horizontal ? b : a };
        if (objects.every((q) => separated(o, q, gap))) {
          objects.push(o);
          break;
        }
      }
    }
    if (objects.length < proto.length) continue;
    if (rel) {
      const as = objects.filter((o) => o.group === 0);
      const bs = objects.filter((o) => o.group === 1);
      if (!as.every((a) => bs.every((b) => relationsBetween(boxOf(a), boxOf(b), SCENE_POSITION_THRESHOLD).has(rel)))) continue;
    }
    return { background, objects };
  }
  throw new Error(`world: no layout found for "${spec.caption}"`);
}

// ---- rendering -----------------------------------------------------------------------------

/** Whether (u, v) lies in the shape with centre 0 and half side 1 (y down). */
export function insideShape(shape: Shape, u: number, v: number): boolean {
  switch (shape) {
    case 'circle': return u * u + v * v <= 1;
    case 'square': return Math.abs(u) <= 1 && Math.abs(v) <= 1;
    // Apex at the top centre, base along the bottom edge: fills its box, area 1/2 of the box.
    case 'triangle': return v <= 1 && Math.abs(u) <= (v + 1) / 2;
    case 'diamond': return Math.abs(u) + Math.abs(v) <= 1;
  }
}

const SUPERSAMPLE = 4;

/** Renders a scene at size x size; returns the image and the objects in pixel coordinates. */
export function render(scene: Scene, size: number): { image: RgbImage; objects: WorldObject[] } {
  if (!Number.isInteger(size) || size < 8) throw new Error(`world: image size ${size} must be an integer >= 8`);
  const n = size * size;
  const data = new Float32Array(3 * n);
  const bg = BACKGROUNDS[scene.background];
  for (let c = 0; c < 3; c++) data.fill(bg[c] / 255, c * n, (c + 1) * n);
  const objects: WorldObject[] = [];
  for (const o of scene.objects) {
    const col = COLOURS[o.colour];
    const [x0, y0, x1, y1] = boxOf(o).map((v) => v * size) as Box;
    const r = (o.side * size) / 2;
    const cx = o.cx * size;
    const cy = o.cy * size;
    for (let py = Math.max(0, Math.floor(y0)); py < Math.min(size, Math.ceil(y1)); py++) {
      for (let px = Math.max(0, Math.floor(x0)); px < Math.min(size, Math.ceil(x1)); px++) {
        let hits = 0;
        for (let sy = 0; sy < SUPERSAMPLE; sy++) {
          for (let sx = 0; sx < SUPERSAMPLE; sx++) {
            if (insideShape(o.shape, (px + (sx + 0.5) / SUPERSAMPLE - cx) / r, (py + (sy + 0.5) / SUPERSAMPLE - cy) / r)) hits++;
          }
        }
        if (!hits) continue;
        const cov = hits / (SUPERSAMPLE * SUPERSAMPLE);
        const i = py * size + px;
        for (let c = 0; c < 3; c++) data[c * n + i] += cov * (col[c] / 255 - data[c * n + i]);
      }
    }
    objects.push({ shape: o.shape, colour: o.colour, group: o.group, centre: [cx, cy], bbox: [x0, y0, x1, y1] });
  }
  return { image: { width: size, height: size, data }, objects };
}

// ---- the world -----------------------------------------------------------------------------

export interface WorldOptions {
  /** Seeds layouts, unstated colours/backgrounds and which caption each index draws. */
  seed?: number;
  /** Default image size (pixels, square). */
  size?: number;
  /** Relative frequency of each category in sample() (default: equal). */
  weights?: Partial<Record<Category, number>>;
}

export class World {
  readonly seed: number;
  readonly size: number;
  private readonly weights: [Category, number][];

  constructor(opts: WorldOptions = {}) {
    this.seed = opts.seed ?? 0;
    this.size = opts.size ?? 64;
    const w = CATEGORIES.map((c) => [c, opts.weights?.[c] ?? (opts.weights ? 0 : 1)] as [Category, number]);
    for (const [c, v] of w) if (!(v >= 0)) throw new Error(`world: weight of ${c} must be >= 0, got ${v}`);
    this.weights = w.filter(([, v]) => v > 0);
    if (!this.weights.length) throw new Error('world: every category weight is 0');
  }

  /** The captions of a split, optionally of one category. */
  captions(split: Split, category?: Category): readonly CaptionSpec[] {
    const cat = getCatalogue().byCategory;
    return category ? cat.get(category)![split] : CATEGORIES.flatMap((c) => cat.get(c)![split]);
  }

  /** Sample `index` of a split: a category by weight, a caption of it, a layout, the image. */
  sample(split: Split, index: number, size = this.size): Sample {
    const rng = new Rng(this.seed, split === 'train' ? 1 : 2, index);
    const total = this.weights.reduce((s, [, v]) => s + v, 0);
    let u = rng.next() * total;
    const [category] = this.weights.find(([, v]) => (u -= v) < 0) ?? this.weights[this.weights.length - 1];
    return this.draw(rng.pick(this.captions(split, category)), rng, size);
  }

  /** Image `index` of a given caption (any caption of the grammar). */
  sampleCaption(caption: string | CaptionSpec, index: number, size = this.size): Sample {
    const spec = typeof caption === 'string' ? parseCaption(caption) : caption;
    return this.draw(spec, new Rng(this.seed, 3, hash32(spec.caption), index), size);
  }

  private draw(spec: CaptionSpec, rng: Rng, size: number): Sample {
    const scene = makeScene(spec, rng, size);
    const { image, objects } = render(scene, size);
    return { image, caption: spec.caption, spec, background: scene.background, objects };
  }
}
