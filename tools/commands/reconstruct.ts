// `reconstruct`, `encode`, `decode`: images to tokens and back through Layton.
import { mkdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Argv } from 'yargs';
import { Generator } from '../../runtime/index.ts';
import { writeImage } from '../image.ts';
import { type Prepared, decode, decodeVq, encode, laytonInfo, openLayton, prepareFile, readTokens, score, writeTokens } from '../reconstruct.ts';
import { note, seconds, stem, withDecode, withModel } from './common.ts';

const RESIZE_NOTE = 'Images (PNG or JPEG, any size) are centre-cropped to the model\'s image_size as LlamaGen does; the tokenizer sees that crop resized to tokenizer_size.';

async function loadModel(dir: string) {
  const info = await laytonInfo(dir);
  return { info, load: async () => {
    const t0 = performance.now();
    const m = await openLayton(info);
    note(`loaded Layton from ${dir} in ${seconds(t0)}`);
    return m;
  } };
}

const fmt = (s: { psnr: number; ssim: number }) => `PSNR ${s.psnr.toFixed(2)} dB  SSIM ${s.ssim.toFixed(4)}`;

export const registerReconstruct = <T>(y: Argv<T>) =>
  y
    .command(
      'reconstruct <images..>',
      'tokenize images and decode them with Layton; write PNGs (and the plain VQ decoder\'s, <name>.vq.png) and print PSNR / SSIM',
      (c) =>
        withDecode(withModel(c))
          .positional('images', { type: 'string', array: true, demandOption: true, describe: 'PNG or JPEG files' })
          .option('out', { type: 'string', default: 'reconstructions', describe: 'folder for <name>.png and <name>.vq.png' })
          .option('json', { type: 'boolean', default: false, describe: 'print one JSON document instead of a line per image' })
          .epilogue(`${RESIZE_NOTE} PSNR / SSIM compare the written 8-bit PNGs with that crop; the VQ decoder's output (tokenizer_size) is resized to image_size with bicubic.`),
      async (a) => {
        const { info, load } = await loadModel(a.model);
        const paths = a.images as string[];
        const seen = new Map<string, string>();
        for (const p of paths) {
          const n = stem(p);
          if (seen.has(n)) throw new Error(`${p}: would overwrite the output of ${seen.get(n)} (both are named ${n}.png)`);
          seen.set(n, p);
        }
        // read every image before the model, so a bad file fails fast
        const items: Prepared[] = [];
        for (const p of paths) items.push(await prepareFile(p, info.config));
        const m = await load();
        await mkdir(a.out, { recursive: true });
        const results = [];
        for (const [i, p] of paths.entries()) {
          const t0 = performance.now();
          const tokens = await encode(m, [items[i].small]);
          const [img] = await decode(m, tokens, info.grid, a.steps, new Generator(a.seed));
          const [vq] = await decodeVq(m, tokens, info.grid);
          const output = join(a.out, `${stem(p)}.png`);
          const vqOutput = join(a.out, `${stem(p)}.vq.png`);
          await writeImage(output, img);
          await writeImage(vqOutput, vq);
          const s = score(img, items[i].target);
          const v = score(vq, items[i].target);
          results.push({ input: p, output, vq_output: vqOutput, psnr: s.psnr, ssim: s.ssim, vq_psnr: v.psnr, vq_ssim: v.ssim });
          if (!a.json) process.stdout.write(`${p} -> ${output}  ${fmt(s)}  (VQ decoder: ${fmt(v)})\n`);
          note(`${i + 1}/${paths.length} ${basename(p)} in ${seconds(t0)}`);
        }
        if (a.json) process.stdout.write(JSON.stringify({ model: a.model, steps: a.steps, seed: a.seed, image_size: info.config.imageSize, images: results }) + '\n');
        m.dispose();
      },
    )
    .command(
      'encode <image>',
      'tokenize one image and write its token grid (.json or .safetensors)',
      (c) =>
        withModel(c)
          .positional('image', { type: 'string', demandOption: true, describe: 'PNG or JPEG file' })
          .option('out', { type: 'string', describe: 'tokens file: .json ({"model", "grid": [h, w], "tokens": [...]}, row-major) or .safetensors (i32 "tokens" [1, h, w])', defaultDescription: '<name>.tokens.json' })
          .epilogue(RESIZE_NOTE),
      async (a) => {
        const out = a.out ?? `${stem(a.image)}.tokens.json`;
        if (!/\.(json|safetensors)$/i.test(out)) throw new Error(`--out ${out}: token files end in .json or .safetensors`);
        const { info, load } = await loadModel(a.model);
        const item = await prepareFile(a.image, info.config);
        const m = await load();
        const [tokens] = await encode(m, [item.small]);
        m.dispose();
        await mkdir(dirname(out), { recursive: true });
        await writeTokens(out, { model: a.model, grid: info.grid, tokens });
        note(`wrote ${info.grid[0]}x${info.grid[1]} tokens of ${a.image} to ${out}`);
      },
    )
    .command(
      'decode <tokens>',
      'decode a token grid (written by encode) to a PNG with Layton',
      (c) =>
        withDecode(withModel(c))
          .positional('tokens', { type: 'string', demandOption: true, describe: 'tokens file (.json or .safetensors)' })
          .option('out', { type: 'string', describe: 'image file (.png, .jpg)', defaultDescription: '<name>.png' }),
      async (a) => {
        const out = a.out ?? `${basename(a.tokens).replace(/(\.tokens)?\.(json|safetensors)$/i, '')}.png`;
        if (!/\.(png|jpe?g)$/i.test(out)) throw new Error(`--out ${out}: unsupported image extension (use .png, .jpg or .jpeg)`);
        const { info, load } = await loadModel(a.model);
        const t = await readTokens(a.tokens, info);
        const m = await load();
        const [img] = await decode(m, [t.tokens], t.grid, a.steps, new Generator(a.seed));
        m.dispose();
        await mkdir(dirname(out), { recursive: true });
        await writeImage(out, img);
        note(`wrote ${out} (${img.width}x${img.height}, ${a.steps} step${a.steps > 1 ? 's' : ''}, seed ${a.seed})`);
      },
    );
