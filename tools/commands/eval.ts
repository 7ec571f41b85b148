// `eval reconstruction`: Layton 1- and 2-step and the plain VQ decoder on held-out world images.
// `eval geneval`: mini-GenEval of LaytonGen on held-out captions, scored by the analytic checker.
import type { Argv } from 'yargs';
import { evalReconstruction, laytonInfo, openLayton } from '../reconstruct.ts';
import { evalGeneval } from '../laytongen/geneval.ts';
import { note, positiveInt, withModel } from './common.ts';

export const registerEval = <T>(y: Argv<T>) =>
  y.command('eval', 'evaluate a model', (e) =>
    e
      .command(
        'reconstruction',
        'PSNR / SSIM of Layton (1 and 2 steps) and of the plain VQ decoder of the same tokens, on held-out world images',
        (c) =>
          withModel(c)
            .option('n', { type: 'number', default: 256, describe: 'number of held-out images (the first n of the world\'s held-out split)' })
            .option('seed', { type: 'number', default: 0, describe: 'seed of the decoder\'s noise' })
            .option('batch', { type: 'number', default: 8, describe: 'images per decode batch' })
            .option('json', { type: 'boolean', default: false, describe: 'print {"psnr", "ssim", "psnr_2step", "ssim_2step", "vq_psnr", "vq_ssim", "n", "seconds", ...}' })
            .epilogue(
              'Images are rendered at the model\'s image_size and scored as 8-bit PNGs would be; the VQ decoder\'s output is resized to image_size (bicubic). ' +
                'LPIPS and rFID are not available: they need pretrained feature networks (VGG / Inception) whose weights this package does not ship.',
            ),
        async (a) => {
          positiveInt(a.n, 'n');
          positiveInt(a.batch, 'batch');
          const info = await laytonInfo(a.model);
          const m = await openLayton(info);
          const r = await evalReconstruction(info, m, { n: a.n, seed: a.seed, batch: a.batch, log: note });
          m.dispose();
          if (a.json) return void process.stdout.write(JSON.stringify(r) + '\n');
          const row = (name: string, p: number, s: number) => `${name.padEnd(18)} ${p.toFixed(2).padStart(9)} ${s.toFixed(4).padStart(7)}`;
          process.stdout.write(
            [
              `${r.n} held-out images at ${r.image_size}x${r.image_size}, ${r.tokens} tokens each (${r.seconds.toFixed(1)} s)`,
              `${'decoder'.padEnd(18)} ${'PSNR (dB)'.padStart(9)} ${'SSIM'.padStart(7)}`,
              row('Layton 1-step', r.psnr, r.ssim),
              row('Layton 2-step', r.psnr_2step, r.ssim_2step),
              row('VQ decoder', r.vq_psnr, r.vq_ssim),
            ].join('\n') + '\n',
          );
        },
      )
      .command(
        'geneval',
        'mini-GenEval: generate images for held-out captions and score object presence, count, colour and position with the analytic checker',
        (c) =>
          withModel(c)
            .option('cfg', { type: 'number', default: 2, describe: 'classifier-free guidance scale' })
            .option('captions', { type: 'number', default: 200, describe: 'distinct held-out captions (spread over GenEval\'s six categories)' })
            .option('seed', { type: 'number', default: 0, describe: 'seed of token sampling and decoder noise' })
            .option('steps', { type: 'number', choices: [1, 2], default: 1, describe: 'Layton decoding steps' })
            .option('decoder', { type: 'string', choices: ['layton', 'vq'], default: 'layton', describe: 'vq: score the same tokens through the plain VQ decoder (tells the GPT from the decoder)' })
            .option('top-k', { type: 'number', default: 0, describe: 'keep the k most likely tokens (0: all)' })
            .option('top-p', { type: 'number', default: 1, describe: 'nucleus sampling mass' })
            .option('temperature', { type: 'number', default: 1, describe: 'softmax temperature' })
            .option('batch', { type: 'number', default: 32, describe: 'images generated together' })
            .option('reconstructed', {
              type: 'boolean', default: false,
              describe: 'score the tokenizer instead of the GPT: the world\'s own images of the same captions, tokenised and decoded (what a GPT producing real images\' tokens would score; needs no gpt/)',
            })
            .option('json', { type: 'boolean', default: false, describe: 'print {"overall", "categories": {...}, "source", "decoder", "captions", "images", "cfg", "seed", "seconds"}' }),
        async (a) => {
          positiveInt(a.captions, 'captions');
          positiveInt(a.batch, 'batch');
          if (!(Number.isFinite(a.cfg) && a.cfg >= 1)) throw new Error(`--cfg must be a number >= 1, got ${a.cfg}`);
          const r = await evalGeneval({
            root: a.model, cfg: a.cfg, nCaptions: a.captions, seed: a.seed, steps: a.steps, decoder: a.decoder as 'layton' | 'vq', topK: a['top-k'], topP: a['top-p'], temperature: a.temperature, batch: a.batch, log: note,
            reconstructed: a.reconstructed,
          });
          if (a.json) return void process.stdout.write(JSON.stringify(r) + '\n');
          const rows = Object.entries(r.counts).map(([k, c]) => `${k.padEnd(14)} ${(c.correct / c.total).toFixed(3)} (${c.correct}/${c.total})`);
          const what = r.source === 'reconstructed' ? 'reconstructions of the world\'s images' : `cfg ${r.cfg}`;
          process.stdout.write([`mini-GenEval, ${what}, ${r.decoder} decoder: ${r.images} images of ${r.captions} held-out captions (${r.seconds.toFixed(1)} s)`, ...rows, `${'overall'.padEnd(14)} ${r.overall.toFixed(3)}`].join('\n') + '\n');
        },
      )
      .demandCommand(1, 'name what to evaluate (see eval --help)'),
  );
