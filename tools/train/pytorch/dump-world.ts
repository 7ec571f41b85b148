// Writes 12,000 training and the first 256 held-out world images (32 px, and the tokenizer's
// 16 px copies) as raw uint8 HWC files for the PyTorch models here:
//   npx tsx tools/train/pytorch/dump-world.ts [dir (default /tmp/world)]
import { mkdirSync, writeFileSync } from 'node:fs';
import { World } from '../../world.ts';
import { toRgb8 } from '../../pixels.ts';
import { tokenizerCopy } from '../data.ts';
const dir = process.argv[2] ?? '/tmp/world';
mkdirSync(dir, { recursive: true });
const w = new World();
for (const [split, n] of [['train', 12000], ['heldout', 256]] as const) {
  const big = new Uint8Array(n * 32 * 32 * 3), small = new Uint8Array(n * 16 * 16 * 3);
  for (let i = 0; i < n; i++) {
    const img = w.sample(split, split === 'train' ? i * 7919 : i, 32).image;
    big.set(toRgb8(img).data, i * 3072);
    small.set(toRgb8(tokenizerCopy(img, 16)).data, i * 768);
  }
  writeFileSync(`${dir}/${split}_32.u8`, big);
  writeFileSync(`${dir}/${split}_16.u8`, small);
}
