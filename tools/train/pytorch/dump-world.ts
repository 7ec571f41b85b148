// Writes 12,000 training and the first 256 held-out world images (IMAGE_SIZE, and the
// tokenizer's TOKENIZER_SIZE copies) as raw uint8 HWC files for the PyTorch models here:
//   npx tsx tools/train/pytorch/dump-world.ts [dir (default /tmp/world)]
import { mkdirSync, writeFileSync } from 'node:fs';
import { World } from '../../world.ts';
import { toRgb8 } from '../../pixels.ts';
import { IMAGE_SIZE, TOKENIZER_SIZE } from '../configs.ts';
import { tokenizerCopy } from '../data.ts';
const dir = process.argv[2] ?? '/tmp/world';
mkdirSync(dir, { recursive: true });
const w = new World();
for (const [split, n] of [['train', 12000], ['heldout', 256]] as const) {
  const [S, T] = [IMAGE_SIZE, TOKENIZER_SIZE];
  const big = new Uint8Array(n * S * S * 3), small = new Uint8Array(n * T * T * 3);
  for (let i = 0; i < n; i++) {
    const img = w.sample(split, split === 'train' ? i * 7919 : i, S).image;
    big.set(toRgb8(img).data, i * S * S * 3);
    small.set(toRgb8(tokenizerCopy(img, T)).data, i * T * T * 3);
  }
  writeFileSync(`${dir}/${split}_${S}.u8`, big);
  writeFileSync(`${dir}/${split}_${T}.u8`, small);
}
