// `train <stage>` and `train layton` (the whole recipe in order). The stages live in
// tools/train/; they are imported when run, so the other commands start without them.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Argv } from 'yargs';
import { getDevice } from '../../runtime/index.ts';
import { writeFileAtomic } from '../../runtime/platform/node-fs.ts';
import { DEFAULT_MODEL } from '../reconstruct.ts';
import type { StageSummary } from '../train/loop.ts';
import type { StageOptions } from '../train/stage.ts';
import { note, positiveInt } from './common.ts';

const STAGES: Record<string, (o: StageOptions) => Promise<StageSummary>> = {
  vae: async (o) => (await import('../train/autoencoders.ts')).trainVae(o),
  ldm: async (o) => (await import('../train/diffusion.ts')).trainLdm(o),
  consistency: async (o) => (await import('../train/diffusion.ts')).trainConsistency(o),
  vq: async (o) => (await import('../train/autoencoders.ts')).trainVq(o),
  'layton-stage1': async (o) => (await import('../train/diffusion.ts')).trainLaytonStage1(o),
  'layton-stage2': async (o) => (await import('../train/diffusion.ts')).trainLaytonStage2(o),
  laytongen: async (o) => (await import('../laytongen/train.ts')).trainLaytonGen(o),
};
/** `train layton`: the paper's recipe, each stage reading the parts the earlier ones wrote (laytongen then trains on its tokens). */
const RECIPE = ['vae', 'ldm', 'consistency', 'vq', 'layton-stage1', 'layton-stage2'];

export const registerTrain = <T>(y: Argv<T>) =>
  y.command(
    'train <stage>',
    'train one stage of the recipe, or all of it in order (layton)',
    (c) =>
      c
        .positional('stage', { type: 'string', choices: [...RECIPE, 'layton', 'laytongen'], demandOption: true, describe: `one stage, or layton: ${RECIPE.join(' -> ')}; laytongen (text-to-image GPT and text encoder) needs the trained vq/` })
        .option('out', { type: 'string', default: DEFAULT_MODEL, defaultDescription: 'models/default', describe: 'model root: each stage writes its part here (vae/, unet/, vq/, controlnet/, gpt/, text_encoder/, ...) and its checkpoints under train/<stage>/' })
        .option('resume', { type: 'boolean', default: false, describe: 'continue from the stage\'s latest checkpoint (a finished stage is skipped)' })
        .option('steps', { type: 'number', describe: 'steps of each stage run (default: the recipe\'s)' })
        .option('batch', { type: 'number', describe: 'batch size (default: the recipe\'s)' })
        .option('seed', { type: 'number', default: 0, describe: 'seed of data, noise and initialisation (recorded in each summary)' }),
    async (a) => {
      positiveInt(a.steps, 'steps');
      positiveInt(a.batch, 'batch');
      if (!Number.isInteger(a.seed) || a.seed < 0) throw new Error(`--seed must be a non-negative integer, got ${a.seed}`);
      await getDevice();
      const stages = a.stage === 'layton' ? RECIPE : [a.stage];
      const o: StageOptions = { root: a.out, steps: a.steps, batch: a.batch, seed: a.seed, resume: a.resume };
      // seconds: this process's wall time for the stage (loading and evaluation included);
      // step_seconds: the summary's, the stage's training steps over every process that ran them
      const times: { stage: string; seconds: number; step_seconds: number; final_loss: number }[] = [];
      const t0 = performance.now();
      for (const stage of stages) {
        note(`train ${stage}: root ${a.out}, seed ${a.seed}${a.resume ? ', resuming' : ''}`);
        const t = performance.now();
        const s = await STAGES[stage](o);
        const seconds = (performance.now() - t) / 1000;
        times.push({ stage, seconds, step_seconds: s.seconds, final_loss: s.final_loss });
        note(`train ${stage}: done in ${seconds.toFixed(1)} s (final loss ${s.final_loss.toPrecision(4)})`);
      }
      if (a.stage !== 'layton') return;
      const total = (performance.now() - t0) / 1000;
      process.stdout.write([...times.map((r) => `${r.stage.padEnd(14)} ${r.seconds.toFixed(1).padStart(8)} s`), `${'total'.padEnd(14)} ${total.toFixed(1).padStart(8)} s`].join('\n') + '\n');
      await mkdir(join(a.out, 'train'), { recursive: true });
      const record = { recipe: RECIPE, seed: a.seed, steps: a.steps ?? null, batch: a.batch ?? null, resumed: a.resume, stages: times, total_seconds: total };
      await writeFileAtomic(join(a.out, 'train', 'recipe.json'), [new TextEncoder().encode(JSON.stringify(record, null, 2) + '\n')]);
    },
  );
