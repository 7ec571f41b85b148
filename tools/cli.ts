// layton-run: the command-line entry point. Each command lives in tools/commands/.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
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

await cli
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
