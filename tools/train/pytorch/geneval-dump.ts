// Scores a DUMP= file of vq.py (the 256 held-out reconstructions, uint8 HWC at IMAGE_SIZE) with
// the GenEval checker against the captions of dump-world.ts's held-out images; the ground-truth
// images score 1.0 (printed beside it):
//   npx tsx tools/train/pytorch/geneval-dump.ts /tmp/rec.u8
import { readFileSync } from 'node:fs';
import { World } from '../../world.ts';
import { scoreImage, summarise } from '../../geneval.ts';
import { IMAGE_SIZE } from '../configs.ts';
import { toImage } from '../../pixels.ts';
const S = IMAGE_SIZE;
const buf = readFileSync(process.argv[2]);
const n = buf.length / (S * S * 3);
if (!Number.isInteger(n)) throw new Error(`${process.argv[2]}: ${buf.length} bytes are not whole ${S}x${S} RGB images`);
const w = new World();
const real: ReturnType<typeof scoreImage>[] = [];
const rec: ReturnType<typeof scoreImage>[] = [];
for (let i = 0; i < n; i++) {
  const s = w.sample('heldout', i, S);
  real.push(scoreImage(s.image, s.spec));
  rec.push(scoreImage(toImage({ width: S, height: S, data: buf.subarray(i * S * S * 3, (i + 1) * S * S * 3) }), s.spec));
}
const fmt = (r: typeof rec) => {
  const m = summarise(r);
  return `${m.overall.toFixed(3)} (${Object.entries(m.categories).map(([k, v]) => `${k} ${v!.toFixed(2)}`).join(', ')})`;
};
console.log(`ground truth ${fmt(real)}\nreconstructions ${fmt(rec)}`);
