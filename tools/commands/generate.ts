// `generate`: captions -> LaytonGen tokens (KV-cache sampling, CFG) -> Layton decode -> PNGs.
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Argv } from 'yargs';
import { writeImage } from '../image.ts';
import { generateWith, openLaytonGen } from '../laytongen/generate.ts';
import { note, positiveInt, seconds, withDecode, withModel } from './common.ts';

/** "two red circles left of a blue square" -> "two-red-circles-left-of-a-blue-square" (file names) */
const slug = (caption: string): string =>
  caption.normalize('NFKC').toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 80) || 'caption';

export const registerGenerate = <T>(y: Argv<T>) =>
  y.command(
    'generate [captions..]',
    'generate images from captions with LaytonGen (GPT tokens with classifier-free guidance, decoded by Layton); write PNGs',
    (c) =>
      withDecode(withModel(c))
        .positional('captions', { type: 'string', array: true, describe: 'captions, e.g. "two red circles left of a blue square"' })
        .option('captions-file', { type: 'string', describe: 'UTF-8 text file, one caption per line (instead of or besides the arguments)' })
        .option('cfg', { type: 'number', default: 2, describe: 'classifier-free guidance scale s: l_u + s (l_c - l_u); 1 = conditional only' })
        .option('top-k', { type: 'number', default: 0, describe: 'keep the k most likely tokens (0: all)' })
        .option('top-p', { type: 'number', default: 1, describe: 'nucleus sampling: keep the smallest set of tokens with this probability mass' })
        .option('temperature', { type: 'number', default: 1, describe: 'softmax temperature' })
        .option('n', { type: 'number', default: 1, describe: 'images per caption' })
        .option('batch', { type: 'number', default: 16, describe: 'images generated together' })
        .option('out', { type: 'string', default: 'generated', describe: 'folder for <caption>.<k>.png' })
        .option('json', { type: 'boolean', default: false, describe: 'print {"images": [{"caption", "output", "tokens"}], ...}' })
        .epilogue('Same seed and options give the same images. Captions longer than the text encoder\'s caption tokens are cut with a warning; an empty caption or invalid UTF-8 is an error naming it.'),
    async (a) => {
      positiveInt(a.n, 'n');
      positiveInt(a.batch, 'batch');
      if (!Number.isInteger(a['top-k']) || a['top-k'] < 0) throw new Error(`--top-k must be a non-negative integer, got ${a['top-k']}`);
      if (!(a['top-p'] > 0 && a['top-p'] <= 1)) throw new Error(`--top-p must be in (0, 1], got ${a['top-p']}`);
      if (!(a.temperature > 0)) throw new Error(`--temperature must be positive, got ${a.temperature}`);
      const captions: string[] = [...((a.captions as string[] | undefined) ?? [])];
      if (a['captions-file']) {
        const bytes = await readFile(a['captions-file']).catch((e: Error) => {
          throw new Error(`--captions-file ${a['captions-file']}: ${e.message}`);
        });
        // split on newline bytes, so an invalid line is named by its number
        const utf8 = new TextDecoder('utf-8', { fatal: true });
        let [start, line] = [0, 0];
        for (let i = 0; i <= bytes.length; i++)
          if (i === bytes.length || bytes[i] === 0x0a) {
            const raw = bytes.subarray(start, i);
            [start, line] = [i + 1, line + 1];
            let text: string;
            try {
              text = utf8.decode(raw);
            } catch {
              throw new Error(`--captions-file ${a['captions-file']}: line ${line} (caption ${captions.length}) is not valid UTF-8`);
            }
            if (text.trim()) captions.push(text);
          }
      }
      if (captions.length === 0) throw new Error('generate: give captions as arguments or with --captions-file');
      captions.forEach((c, i) => {
        if (!c.trim()) throw new Error(`caption ${i} is empty${c.length ? ' (only whitespace)' : ''}`);
      });
      const t0 = performance.now();
      const m = await openLaytonGen(a.model);
      note(`loaded LaytonGen from ${a.model} in ${seconds(t0)}`);
      try {
        const t1 = performance.now();
        let last = 0;
        const g = await generateWith(m, {
          captions, cfg: a.cfg, topK: a['top-k'], topP: a['top-p'], temperature: a.temperature, seed: a.seed, n: a.n, steps: a.steps, batch: a.batch,
          warn: note,
          onToken: (done, total) => {
            const now = performance.now();
            if (done === total || now - last > 2000) {
              last = now;
              const rate = done / ((now - t1) / 1000);
              note(`tokens ${done}/${total} (${rate.toFixed(0)} tok/s, ETA ${((total - done) / Math.max(rate, 1e-9)).toFixed(0)} s)`);
            }
          },
        });
        await mkdir(a.out, { recursive: true });
        const images = [];
        for (const [i, img] of g.images.entries()) {
          const text = captions[Math.floor(i / a.n)];
          const output = join(a.out, `${slug(text)}.${i % a.n}.png`);
          await writeImage(output, img);
          images.push({ caption: text, output, tokens: Array.from(g.tokens[i]) });
          if (!a.json) process.stdout.write(`${JSON.stringify(text)} -> ${output}\n`);
        }
        if (a.json) process.stdout.write(JSON.stringify({ model: a.model, cfg: a.cfg, seed: a.seed, steps: a.steps, images }) + '\n');
        note(`generated ${g.images.length} image${g.images.length > 1 ? 's' : ''} in ${seconds(t1)}`);
      } finally {
        m.dispose();
      }
    },
  );
