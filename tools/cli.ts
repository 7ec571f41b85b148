// layton-run: the command-line entry point. Each command lives in tools/commands/.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { device, getDevice } from '../runtime/index.ts';
import { registerDemo } from './commands/demo.ts';
import { registerDoctor } from './commands/doctor.ts';
import { registerEval } from './commands/eval.ts';
import { registerExport } from './commands/export.ts';
import { registerGenerate } from './commands/generate.ts';
import { registerInspect } from './commands/inspect.ts';
import { registerReconstruct } from './commands/reconstruct.ts';
import { registerTrain } from './commands/train.ts';

let cli = yargs(hideBin(process.argv)).scriptName('layton-run');
for (const register of [registerDemo, registerDoctor, registerInspect, registerReconstruct, registerGenerate, registerEval, registerTrain, registerExport]) cli = register(cli);

const args = await cli
  .option('profile', { type: 'boolean', global: true, default: false, describe: 'time every GPU dispatch and print the time per kernel at the end (needs timestamp-query)' })
  .middleware(async (a) => {
    if (a.profile) (await getDevice()).startProfile();
  })
  .demandCommand(1, 'name a command (see --help)')
  .strict()
  .help()
  .fail((msg, err, y) => {
    if (err) {
      // one line, naming what is at fault (messages already start with the file or argument)
      process.stderr.write(`layton-run: ${err.message.replace(/\s*\n\s*/g, '; ')}\n`);
      process.exit(1);
    }
    process.stderr.write(`${y.help()}\n\nlayton-run: ${msg}\n`);
    process.exit(2);
  })
  .parseAsync();

if (args.profile) {
  const times = await device().stopProfile();
  const total = times.reduce((t, k) => t + k.ms, 0);
  const rows = times.map((k) => `${k.ms.toFixed(1).padStart(10)} ms ${((100 * k.ms) / total).toFixed(1).padStart(5)}% ${String(k.dispatches).padStart(8)}  ${k.kernel}`);
  process.stderr.write([`GPU time per kernel (${total.toFixed(1)} ms in all):`, `${'time'.padStart(13)} ${'share'.padStart(6)} ${'dispatches'.padStart(8)}  kernel:entry`, ...rows].join('\n') + '\n');
}
