// The procedural captioned world: determinism, the caption grammar (parse = generate, errors),
// the train / held-out split (disjoint captions and canonical keys, sizes, ~10% per category),
// scene validity at 64 and 32 px (objects as the caption says, inside the image, apart,
// relations held, sizes; pixel floors below 64 px)
// and the renderer (interior pixels exactly the palette colour, anti-aliased coverage equal to
// the analytic shape areas, 64 px render = box-downsampled 256 px render).
import { describe, expect, it } from 'vitest';
import { resizeImage } from '../tools/image.ts';
import {
  BACKGROUNDS, CATEGORIES, COLOURS, GENEVAL_CATEGORIES, HELDOUT_FRACTION, World, canonicalKey, parseCaption, relationsBetween,
  render, splitOf, type Sample,
} from '../tools/world.ts';

const world = new World({ seed: 1 });

function pixel(s: Sample, x: number, y: number): number[] {
  const { width: w, height: h, data } = s.image;
  return [0, 1, 2].map((c) => data[c * w * h + Math.floor(y) * w + Math.floor(x)]);
}

describe('captions and splits', () => {
  const train = world.captions('train');
  const heldout = world.captions('heldout');

  it('has enough distinct captions, and the splits share none', () => {
    const trainSet = new Set(train.map((s) => s.caption));
    const heldSet = new Set(heldout.map((s) => s.caption));
    console.log(`captions: ${trainSet.size} train, ${heldSet.size} held out; per category (train / held out): ` +
      CATEGORIES.map((c) => `${c} ${world.captions('train', c).length}/${world.captions('heldout', c).length}`).join(', '));
    expect(trainSet.size).toBe(train.length);
    expect(heldSet.size).toBe(heldout.length);
    expect(trainSet.size).toBeGreaterThanOrEqual(20000);
    expect(heldSet.size).toBeGreaterThanOrEqual(256);
    expect(heldout.filter((s) => trainSet.has(s.caption))).toEqual([]);
    // Captions that say the same thing ("A right of B" / "B left of A") stay together.
    const trainKeys = new Set(train.map(canonicalKey));
    expect(heldout.filter((s) => trainKeys.has(canonicalKey(s)))).toEqual([]);
    expect(splitOf('a circle right of a yellow square')).toBe(splitOf('a yellow square left of a circle'));
  });

  it('holds out about 10% of every category', () => {
    for (const c of CATEGORIES) {
      const keys = (split: 'train' | 'heldout') => new Set(world.captions(split, c).map(canonicalKey)).size;
      const held = keys('heldout');
      const total = held + keys('train');
      expect(held, c).toBe(Math.ceil(total * HELDOUT_FRACTION));
    }
    expect(world.captions('heldout', 'single_object').length).toBeGreaterThanOrEqual(1);
  });

  it('parses every caption back to its spec', () => {
    for (const s of [...train, ...heldout]) {
      const p = parseCaption(s.caption);
      if (p.caption !== s.caption || p.category !== s.category || JSON.stringify(p.groups) !== JSON.stringify(s.groups) ||
        p.relation !== s.relation || p.background !== s.background) {
        expect(p).toEqual(s);
      }
    }
    expect(parseCaption('Two  RED circles left of a blue square').groups).toEqual([
      { count: 2, shape: 'circle', colour: 'red' }, { count: 1, shape: 'square', colour: 'blue' },
    ]);
    const cat = (t: string) => parseCaption(t).category;
    expect([cat('a circle'), cat('a red circle'), cat('three circles'), cat('a circle and a square'),
      cat('a circle above a red square'), cat('a red circle and a blue square'), cat('a red circle and a square')])
      .toEqual(['single_object', 'colors', 'counting', 'two_object', 'position', 'color_attr', 'composite']);
  });

  it('rejects captions outside the grammar, naming the part', () => {
    expect(() => parseCaption('a red hexagon')).toThrow('caption "a red hexagon": "hexagon" is not a shape');
    expect(() => parseCaption('five circles')).toThrow('"five circles" does not start with a, two, three or four');
    expect(() => parseCaption('a pink circle')).toThrow('unknown colour "pink"');
    expect(() => parseCaption('a constructor circle')).toThrow('unknown colour "constructor"');
    expect(() => parseCaption('a circle on a green background')).toThrow('unknown background "green"');
    expect(() => parseCaption('a circle left of a circle')).toThrow('the two groups cannot be told apart');
    expect(() => parseCaption('three circles and two squares')).toThrow('more than 4 objects');
    expect(() => parseCaption('two circle')).toThrow('"circle" is not a plural shape');
  });
});

describe('scenes', () => {
  it('is deterministic in (seed, split, index)', () => {
    const a = new World({ seed: 1 }).sample('train', 17);
    const b = world.sample('train', 17);
    expect(b.caption).toBe(a.caption);
    expect(Buffer.from(b.image.data.buffer).equals(Buffer.from(a.image.data.buffer))).toBe(true);
    const other = new World({ seed: 2 }).sample('train', 17);
    expect(Buffer.from(other.image.data.buffer).equals(Buffer.from(a.image.data.buffer))).toBe(false);
    expect(world.sample('train', 18).image.data).not.toEqual(a.image.data);
    expect(splitOf(world.sample('heldout', 3).caption)).toBe('heldout');
    expect(splitOf(world.sample('train', 3).caption)).toBe('train');
    const c = world.sampleCaption('two red circles left of a blue square', 5);
    expect(world.sampleCaption('two red circles left of a blue square', 5).image.data).toEqual(c.image.data);
  });

  it.each([64, 32])('draws the objects the caption names, apart, inside, large enough, in relation (%i px)', (size) => {
    // Below 64 px sides and gaps have a floor in pixels (8 and 2).
    const minSide = Math.max(0.19 * size, 8);
    const minGap = Math.max(0.06 * size, 2);
    const seenCategories = new Set<string>();
    for (let i = 0; i < 400; i++) {
      const s = world.sample(i % 2 ? 'train' : 'heldout', i, size);
      seenCategories.add(s.spec.category);
      const want = s.spec.groups.reduce((n, g) => n + g.count, 0);
      expect(s.objects.length).toBe(want);
      if (s.spec.background) expect(s.background).toBe(s.spec.background);
      for (const o of s.objects) {
        const g = s.spec.groups[o.group];
        expect(o.shape).toBe(g.shape);
        if (g.colour) expect(o.colour).toBe(g.colour);
        const [x0, y0, x1, y1] = o.bbox;
        expect(Math.min(x0, y0)).toBeGreaterThanOrEqual(0.03 * size - 1e-9);
        expect(Math.max(x1, y1)).toBeLessThanOrEqual(0.97 * size + 1e-9);
        expect(x1 - x0).toBeGreaterThanOrEqual(minSide - 1e-9);
        // The interior (the centroid) is exactly the object colour.
        const cy = o.shape === 'triangle' ? o.centre[1] + (y1 - y0) / 6 : o.centre[1];
        const p = pixel(s, o.centre[0], cy);
        COLOURS[o.colour].forEach((v, c) => expect(p[c]).toBeCloseTo(v / 255, 6));
      }
      for (let a = 0; a < s.objects.length; a++) {
        for (let b = a + 1; b < s.objects.length; b++) {
          const [p, q] = [s.objects[a].bbox, s.objects[b].bbox];
          const gapX = Math.max(q[0] - p[2], p[0] - q[2]);
          const gapY = Math.max(q[1] - p[3], p[1] - q[3]);
          expect(Math.max(gapX, gapY)).toBeGreaterThanOrEqual(minGap - 1e-6);
        }
      }
      const rel = s.spec.relation;
      if (rel) {
        for (const a of s.objects.filter((o) => o.group === 0)) {
          for (const b of s.objects.filter((o) => o.group === 1)) expect(relationsBetween(a.bbox, b.bbox).has(rel)).toBe(true);
        }
      }
      // Corners are background.
      const bg = BACKGROUNDS[s.background];
      pixel(s, 0, 0).forEach((v, c) => expect(v).toBeCloseTo(bg[c] / 255, 6));
    }
    expect([...seenCategories].sort()).toEqual([...CATEGORIES].sort());
  });

  it('anti-aliased coverage equals the shapes\' areas', () => {
    const size = 256;
    const r = 40;
    const areas = { circle: Math.PI * r * r, square: 4 * r * r, triangle: 2 * r * r, diamond: 2 * r * r };
    for (const [shape, area] of Object.entries(areas)) {
      // Off-grid centre so edges cross pixels at every phase.
      const { image } = render({ background: 'black', objects: [{ shape: shape as 'circle', colour: 'white', cx: 0.4931, cy: 0.5127, side: (2 * r) / size, group: 0 }] }, size);
      const bg = BACKGROUNDS.black[0] / 255;
      const fg = COLOURS.white[0] / 255;
      let covered = 0;
      let partial = 0;
      for (let i = 0; i < size * size; i++) {
        const cov = (image.data[i] - bg) / (fg - bg);
        covered += cov;
        if (cov > 0.01 && cov < 0.99) partial++;
      }
      expect(Math.abs(covered - area) / area, shape).toBeLessThan(0.005);
      expect(partial, `${shape} edges are anti-aliased`).toBeGreaterThan(50);
    }
  });

  it('renders the same scene at 64, 128 and 256', () => {
    for (let i = 0; i < 10; i++) {
      const s64 = world.sample('train', i, 64);
      const s256 = world.sample('train', i, 256);
      const s128 = world.sample('train', i, 128);
      expect([s128.image.width, s256.image.height]).toEqual([128, 256]);
      expect(s256.caption).toBe(s64.caption);
      s256.objects.forEach((o, k) => o.bbox.forEach((v, j) => expect(v).toBeCloseTo(s64.objects[k].bbox[j] * 4, 9)));
      const down = resizeImage(s256.image, 64, 64, 'box');
      let worst = 0;
      let mean = 0;
      for (let j = 0; j < down.data.length; j++) {
        const d = Math.abs(down.data[j] - s64.image.data[j]);
        worst = Math.max(worst, d);
        mean += d / down.data.length;
      }
      expect(mean).toBeLessThan(0.003);
      expect(worst).toBeLessThan(0.2);
    }
  });

  it('weights choose the categories', () => {
    const only = new World({ seed: 3, weights: { counting: 1 } });
    for (let i = 0; i < 20; i++) expect(only.sample('train', i).spec.category).toBe('counting');
    const geneval = new World({ weights: Object.fromEntries(GENEVAL_CATEGORIES.map((c) => [c, 1])) });
    for (let i = 0; i < 50; i++) expect(geneval.sample('heldout', i).spec.category).not.toBe('composite');
    expect(() => new World({ weights: { counting: -1 } })).toThrow('world: weight of counting must be >= 0');
    expect(() => new World({ weights: { counting: 0 } })).toThrow('world: every category weight is 0');
    expect(() => world.sample('train', 0, 16)).toThrow('world: scene size 16 must be an integer >= 32 (objects are >= 8 px)');
    expect(() => render({ background: 'black', objects: [] }, 4)).toThrow('world: image size 4 must be an integer >= 8');
  });
});
