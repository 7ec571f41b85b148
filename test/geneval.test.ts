// The analytic GenEval-style checker: on ground-truth held-out world images (32 px, the size
// the models are trained at, and 64, 128, 256 px; clean and with noise) it must find every
// object (shape, colour, box) and score >= 0.995 (>= 0.98 at 64 px with 150 noisy images);
// on images degraded as a small generator's (3x3 box blur and noise) >= 0.95; on deliberately
// wrong images or captions (blank, wrong count, colour, shape, swapped colours, swapped or
// mirrored positions), at 64 and 32 px, it must say incorrect.
import { describe, expect, it } from 'vitest';
import { type RgbImage } from '../tools/image.ts';
import { detectObjects, scoreImage, summarise } from '../tools/geneval.ts';
import {
  BACKGROUNDS, COLOUR_NAMES, GENEVAL_CATEGORIES, Rng, SHAPES, World, groupPhrase, parseCaption, type CaptionSpec,
  type Category, type Relation,
} from '../tools/world.ts';

const world = new World({ seed: 7 });
const genevalOnly = new World({ seed: 7, weights: Object.fromEntries(GENEVAL_CATEGORIES.map((c) => [c, 1])) });

function withNoise(img: RgbImage, sigma: number, seed: number): RgbImage {
  const rng = new Rng(seed);
  const data = img.data.map((v) => {
    const g = Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
    return Math.min(1, Math.max(0, v + sigma * g));
  });
  return { ...img, data };
}

/** 3x3 box blur (the window clipped at the borders). */
function boxBlur(img: RgbImage): RgbImage {
  const { width: w, height: h } = img;
  const data = new Float32Array(img.data.length);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        let sum = 0;
        let k = 0;
        for (let yy = Math.max(0, y - 1); yy <= Math.min(h - 1, y + 1); yy++) {
          for (let xx = Math.max(0, x - 1); xx <= Math.min(w - 1, x + 1); xx++, k++) sum += img.data[c * w * h + yy * w + xx];
        }
        data[c * w * h + y * w + x] = sum / k;
      }
    }
  }
  return { ...img, data };
}

function mirror(img: RgbImage): RgbImage {
  const { width: w, height: h } = img;
  const data = new Float32Array(img.data.length);
  for (let c = 0; c < 3; c++) for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) data[c * w * h + y * w + x] = img.data[c * w * h + y * w + (w - 1 - x)];
  return { ...img, data };
}

/** The caption with its groups / relation changed (re-parsed so the category follows). */
function recaption(spec: CaptionSpec, groups: CaptionSpec['groups'], relation = spec.relation): CaptionSpec {
  const body = groups.length === 1 ? groupPhrase(groups[0]) : `${groupPhrase(groups[0])} ${relation ?? 'and'} ${groupPhrase(groups[1])}`;
  return parseCaption(spec.background ? `${body} on a ${spec.background} background` : body);
}

const OPPOSITE: Record<Relation, Relation> = { 'left of': 'right of', 'right of': 'left of', above: 'below', below: 'above' };

function heldoutOf(category: Category, n: number, size = 64) {
  const caps = world.captions('heldout', category);
  return Array.from({ length: n }, (_, i) => world.sampleCaption(caps[i % caps.length], i, size));
}

/** Held-out images of the GenEval categories, and of composite captions, at `size` px. */
function heldoutSet(size: number, offset: number, n: number, nComposite: number) {
  const caps = world.captions('heldout', 'composite');
  return [
    ...Array.from({ length: n }, (_, i) => genevalOnly.sample('heldout', offset + i, size)),
    ...Array.from({ length: nComposite }, (_, i) => world.sampleCaption(caps[(i * 97) % caps.length], offset + i, size)),
  ];
}

const fmt = (s: ReturnType<typeof summarise>) =>
  `overall ${s.overall.toFixed(4)} ` + Object.entries(s.categories).map(([k, v]) => `${k} ${v!.toFixed(3)}`).join(', ');

describe('ground-truth images', () => {
  it('scores held-out images >= 0.98 at 64 px', () => {
    const results = Array.from({ length: 300 }, (_, i) => {
      const s = genevalOnly.sample('heldout', i, 64);
      return scoreImage(s.image, s.spec);
    });
    const composite = Array.from({ length: 60 }, (_, i) => {
      const s = world.sampleCaption(world.captions('heldout', 'composite')[i * 97], i);
      return scoreImage(s.image, s.spec);
    });
    const summary = summarise(results);
    console.log(`held-out 64 px: overall ${summary.overall.toFixed(4)}`, JSON.stringify(summary.counts),
      `composite ${summarise(composite).overall.toFixed(4)}`);
    expect(Object.keys(summary.categories).sort()).toEqual([...GENEVAL_CATEGORIES].sort());
    expect(summary.overall).toBeGreaterThanOrEqual(0.98);
    for (const v of Object.values(summary.categories)) expect(v).toBeGreaterThanOrEqual(0.95);
    expect(summarise(composite).overall).toBeGreaterThanOrEqual(0.98);
  });

  it('scores held-out images >= 0.995 at 32 px, clean and noisy', () => {
    for (const sigma of [0, 0.05]) {
      const summary = summarise(heldoutSet(32, 0, 300, 60).map((s, i) => scoreImage(sigma ? withNoise(s.image, sigma, i) : s.image, s.spec)));
      console.log(`held-out 32 px, noise ${sigma}: ${fmt(summary)}`);
      expect(Object.keys(summary.categories).sort()).toEqual([...GENEVAL_CATEGORIES, 'composite'].sort());
      expect(summary.overall, `noise ${sigma}`).toBeGreaterThanOrEqual(0.995);
      for (const v of Object.values(summary.categories)) expect(v).toBeGreaterThanOrEqual(0.98);
    }
  });

  it('scores blurred (3x3 box) and noisy (sigma 0.05) held-out images >= 0.95 at 32 px', () => {
    const degraded = heldoutSet(32, 3000, 300, 60).map((s, i) => scoreImage(withNoise(boxBlur(s.image), 0.05, i), s.spec));
    const summary = summarise(degraded);
    console.log(`held-out 32 px, blur + noise 0.05: ${fmt(summary)}`);
    expect(summary.overall).toBeGreaterThanOrEqual(0.95);
    for (const v of Object.values(summary.categories)) expect(v).toBeGreaterThanOrEqual(0.9);
  });

  it.each([64, 32])('finds every object: shape, colour and box (%i px)', (size) => {
    let worstEdge = 0;
    for (let i = 0; i < 150; i++) {
      const s = world.sample('heldout', i, size);
      const found = detectObjects(s.image);
      expect(found.length, s.caption).toBe(s.objects.length);
      for (const o of s.objects) {
        const d = found.find((f) => Math.hypot((f.bbox[0] + f.bbox[2]) / 2 - o.centre[0], (f.bbox[1] + f.bbox[3]) / 2 - o.centre[1]) < 2);
        expect(d, `${s.caption}: object at ${o.centre}`).toBeDefined();
        expect([d!.shape, d!.colour]).toEqual([o.shape, o.colour]);
        worstEdge = Math.max(worstEdge, ...o.bbox.map((v, j) => Math.abs(v - d!.bbox[j])));
      }
    }
    console.log(`${size} px: largest box edge error ${worstEdge.toFixed(2)} px`);
    // Threshold clipping eats anti-aliased rims and the tips of diamonds and triangles.
    expect(worstEdge).toBeLessThan(2.5);
  });

  it('scores 128 / 256 px and noisy images', () => {
    for (const size of [128, 256]) {
      const r = Array.from({ length: 24 }, (_, i) => {
        const s = genevalOnly.sample('heldout', 1000 + i, size);
        return scoreImage(s.image, s.spec);
      });
      expect(summarise(r).overall, `${size} px`).toBe(1);
    }
    const noisy = Array.from({ length: 150 }, (_, i) => {
      const s = genevalOnly.sample('heldout', 2000 + i);
      return scoreImage(withNoise(s.image, 0.08, i), s.spec);
    });
    const summary = summarise(noisy);
    console.log(`noise sigma 0.08: overall ${summary.overall.toFixed(4)}`);
    expect(summary.overall).toBeGreaterThanOrEqual(0.98);
  });
});

describe.each([64, 32])('wrong images are scored incorrect (%i px)', (size) => {
  const allWrong = (what: string, pairs: [RgbImage, CaptionSpec][]) => {
    expect(pairs.length, what).toBeGreaterThanOrEqual(20);
    const right = pairs.filter(([img, spec]) => scoreImage(img, spec).correct).map(([, spec]) => spec.caption);
    expect(right, `${what}: scored correct`).toEqual([]);
  };

  it('blank images', () => {
    const n = size * size;
    const blanks = Object.values(BACKGROUNDS).map((c) => {
      const data = new Float32Array(3 * n);
      for (let k = 0; k < 3; k++) data.fill(c[k] / 255, k * n, (k + 1) * n);
      return { width: size, height: size, data };
    });
    allWrong('blank', Array.from({ length: 40 }, (_, i) => {
      const s = genevalOnly.sample('heldout', i, size);
      return [withNoise(blanks[i % blanks.length], 0.03, i), s.spec];
    }));
  });

  it('wrong count', () => {
    allWrong('count', heldoutOf('counting', 40, size).map((s, i) => {
      const g = s.spec.groups[0];
      const n = g.count === 4 || (g.count > 2 && i % 2) ? g.count - 1 : g.count + 1;
      return [s.image, recaption(s.spec, [{ ...g, count: n }])];
    }));
  });

  it('wrong colour and wrong shape', () => {
    allWrong('colour', heldoutOf('colors', 40, size).map((s, i) => {
      const g = s.spec.groups[0];
      const others = COLOUR_NAMES.filter((c) => c !== g.colour);
      return [s.image, recaption(s.spec, [{ ...g, colour: others[i % others.length] }])];
    }));
    allWrong('shape', heldoutOf('single_object', 40, size).map((s, i) => {
      const g = s.spec.groups[0];
      const others = SHAPES.filter((c) => c !== g.shape);
      return [s.image, recaption(s.spec, [{ ...g, shape: others[i % others.length] }])];
    }));
  });

  it('colours swapped between the two objects (attribute binding)', () => {
    const pairs = heldoutOf('color_attr', 80, size)
      // Same-shape pairs ("a red circle and a blue circle") read the same swapped.
      .filter(({ spec: { groups: [a, b] } }) => a.colour !== b.colour && a.shape !== b.shape)
      .map((s): [RgbImage, CaptionSpec] => {
        const [a, b] = s.spec.groups;
        return [s.image, recaption(s.spec, [{ ...a, colour: b.colour }, { ...b, colour: a.colour }])];
      });
    allWrong('swapped colours', pairs);
  });

  it('swapped and mirrored positions', () => {
    const samples = heldoutOf('position', 60, size);
    allWrong('opposite relation', samples.map((s) => [s.image, recaption(s.spec, s.spec.groups, OPPOSITE[s.spec.relation!])]));
    allWrong('mirrored image', samples.filter((s) => s.spec.relation!.endsWith('of')).map((s) => [mirror(s.image), s.spec]));
  });
});

describe('summarise and inputs', () => {
  it('averages categories, then categories', () => {
    const s = summarise([
      { category: 'counting', correct: true }, { category: 'counting', correct: false },
      { category: 'colors', correct: true }, { category: 'counting', correct: true },
    ]);
    expect(s.categories).toEqual({ counting: 2 / 3, colors: 1 });
    expect(s.overall).toBeCloseTo((2 / 3 + 1) / 2, 12);
    expect(s.counts.counting).toEqual({ correct: 2, total: 3 });
    expect(() => summarise([])).toThrow('summarise: no results');
  });

  it('takes caption text and explains failures', () => {
    const s = world.sampleCaption('two red circles left of a blue square', 0);
    expect(scoreImage(s.image, 'two red circles left of a blue square').correct).toBe(true);
    const r = scoreImage(s.image, 'three red circles left of a blue square');
    expect(r.correct).toBe(false);
    expect(r.details.reasons).toEqual(['expected three red circles, found 2']);
    expect(() => scoreImage(s.image, 'a red hexagon')).toThrow('caption "a red hexagon"');
    expect(() => detectObjects({ width: 4, height: 4, data: new Float32Array(5) })).toThrow('detectObjects: 5 values do not hold a 3x4x4 image');
  });
});
