// layton-run: the command-line entry point.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { doctor } from './doctor.ts';

await yargs(hideBin(process.argv))
  .scriptName('layton-run')
  .command(
    'doctor',
    'print the WebGPU adapter, its limits and features, and run a self-check kernel',
    (y) =>
      y
        .option('json', { type: 'boolean', default: false, describe: 'print one JSON document' })
        .option('leak-check', { type: 'boolean', default: false, describe: 'also run 1000 MLP training steps and check that GPU and host memory stay flat' }),
    async (a) => {
      const ok = await doctor({ json: a.json, leakCheck: a['leak-check'] });
      process.exitCode = ok ? 0 : 1;
    },
  )
  .demandCommand(1, 'name a command (see --help)')
  .strict()
  .help()
  .fail((msg, err, y) => {
    if (err) {
      process.stderr.write(`layton-run: ${err.message}\n`);
      process.exit(1);
    }
    process.stderr.write(`${y.help()}\n\nlayton-run: ${msg}\n`);
    process.exit(2);
  })
  .parseAsync();
