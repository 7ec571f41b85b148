// `demo`: the README's main job. With the shipped models (or --model), renders held-out images
// of the procedural world, reconstructs them through Layton (1 step) and the plain VQ decoder
// with PSNR / SSIM, then generates images from held-out captions with LaytonGen and checks each
// with the GenEval checker. Everything lands as PNGs under --out.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Argv } from 'yargs';
import { Generator } from '../../runtime/index.ts';
import { scoreImage } from '../geneval.ts';
import { writeImage } from '../image.ts';
import { generateWith, openLaytonGen } from '../laytongen/generate.ts';
import { genevalCaptions } from '../laytongen/geneval.ts';
import { as8bit, decode, decodeVq, encode, laytonInfo, prepare, score } from '../reconstruct.ts';
import { trainWorld } from '../train/stage.ts';
import { note, positiveInt, seconds, withModel } from './common.ts';

const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;

export const registerDemo = <T>(y: Argv<T>) =>
  y.command(
    'demo',
    'reconstruct held-out world images and generate images from held-out captions with the shipped models; write PNGs and print the scores',
    (c) =>
      withModel(c)
        .option('images', { type: 'number', default: 8, describe: 'held-out images to reconstruct' })
        .option('captions', { type: 'number', default: 6, describe: 'held-out captions to generate from (round-robin over GenEval\'s six categories)' })
        .option('cfg', { type: 'number', default: 2, describe: 'classifier-free guidance scale of the generation' })
        .option('seed', { type: 'number', default: 0, describe: 'seed of the decoder noise and token sampling' })
        .option('out', { type: 'string', default: 'layton-demo', describe: 'folder for input/, reconstruction/ and generated/' }),
    async (a) => {
      positiveInt(a.images, 'images');
      positiveInt(a.captions, 'captions');
      const t0 = performance.now();
      const info = await laytonInfo(a.model);
      const m = await openLaytonGen(a.model);
      note(`loaded Layton + LaytonGen from ${a.model} in ${seconds(t0)}`);
      try {
        const world = trainWorld();
        const size = info.config.imageSize;
        for (const d of ['input', 'reconstruction', 'generated']) await mkdir(join(a.out, d), { recursive: true });
        // reconstruction: the held-out images as 8-bit PNGs, their tokens, Layton and VQ decodes
        const samples = Array.from({ length: a.images }, (_, i) => world.sample('heldout', i, size));
        const items = samples.map((s) => prepare(as8bit(s.image), info.config));
        const t1 = performance.now();
        const tokens = await encode(m.layton, items.map((p) => p.small));
        const outs = await decode(m.layton, tokens, info.grid, 1, new Generator(a.seed));
        const vqs = await decodeVq(m.layton, tokens, info.grid);
        const rows: { psnr: number; ssim: number; vq_psnr: number; vq_ssim: number }[] = [];
        process.stdout.write(`reconstruction: ${a.images} held-out images at ${size}x${size}, ${info.grid[0] * info.grid[1]} tokens each (${seconds(t1)})\n`);
        for (const [i, s] of samples.entries()) {
          const name = `${String(i).padStart(3, '0')}`;
          await writeImage(join(a.out, 'input', `${name}.png`), items[i].target);
          await writeImage(join(a.out, 'reconstruction', `${name}.png`), outs[i]);
          await writeImage(join(a.out, 'reconstruction', `${name}.vq.png`), vqs[i]);
          const [l, v] = [score(outs[i], items[i].target), score(vqs[i], items[i].target)];
          rows.push({ psnr: l.psnr, ssim: l.ssim, vq_psnr: v.psnr, vq_ssim: v.ssim });
          process.stdout.write(`  ${name}.png  Layton ${l.psnr.toFixed(2)} dB / ${l.ssim.toFixed(3)}   VQ decoder ${v.psnr.toFixed(2)} dB / ${v.ssim.toFixed(3)}   "${s.caption}"\n`);
        }
        process.stdout.write(
          `  mean       Layton ${mean(rows.map((r) => r.psnr)).toFixed(2)} dB / ${mean(rows.map((r) => r.ssim)).toFixed(3)}   VQ decoder ${mean(rows.map((r) => r.vq_psnr)).toFixed(2)} dB / ${mean(rows.map((r) => r.vq_ssim)).toFixed(3)}\n`,
        );
        // generation: held-out captions (never seen in training), checked by the GenEval checker
        // (taken round-robin over GenEval's categories: 6 captions are one of each)
        const picked = genevalCaptions(a.captions, 1, 1).map((c) => c.spec);
        const t2 = performance.now();
        const g = await generateWith(m, { captions: picked.map((s) => s.caption), cfg: a.cfg, seed: a.seed, warn: note });
        process.stdout.write(`generation: ${picked.length} held-out captions, cfg ${a.cfg} (${seconds(t2)})\n`);
        let right = 0;
        for (const [i, s] of picked.entries()) {
          const file = join(a.out, 'generated', `${String(i).padStart(3, '0')}.png`);
          await writeImage(file, g.images[i]);
          const r = scoreImage(g.images[i], s);
          right += r.correct ? 1 : 0;
          process.stdout.write(`  ${file}  ${r.correct ? 'correct' : 'wrong  '}  ${s.category.padEnd(13)} "${s.caption}"\n`);
        }
        process.stdout.write(`  ${right}/${picked.length} correct by the checker; PNGs in ${a.out}/ (total ${seconds(t0)})\n`);
      } finally {
        m.dispose();
      }
    },
  );
