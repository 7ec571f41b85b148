// layton-run: the command-line entry point.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { doctor } from './doctor.ts';
import { formatInspect, forward, inspect } from './inspect.ts';
import { getKind, kindNames } from '../models/index.ts';

function inputHelp(): string {
  return ['inputs per kind:', ...kindNames().map((n) => `  ${n}: ` + Object.entries(getKind(n).inputs).map(([k, d]) => `${k} (${d})`).join('; '))].join('\n');
}

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
  .command(
    'inspect <config>',
    'build a model shape-only from a config.json (or a model folder) and print its parameter count and state-dict keys',
    (y) =>
      y
        .positional('config', { type: 'string', demandOption: true, describe: 'a config.json file or a folder holding one' })
        .option('kind', { type: 'string', choices: kindNames(), describe: 'model kind (default: from the config\'s _class_name / architectures)' })
        .option('keys', { type: 'boolean', default: false, describe: 'list every state-dict key with its shape' })
        .option('json', { type: 'boolean', default: false, describe: 'print {"parameters": N, "keys": {name: shape}}' }),
    async (a) => {
      const r = await inspect(a.config, a.kind);
      process.stdout.write(a.json ? JSON.stringify({ kind: r.kind, parameters: r.parameters, keys: r.keys }) + '\n' : formatInspect(r, a.keys) + '\n');
    },
  )
  .command(
    'forward',
    'load a model folder, run its forward pass on named inputs from a safetensors file, and write every output tensor',
    (y) =>
      y
        .option('kind', { type: 'string', choices: kindNames(), describe: 'model kind (default: from config.json)' })
        .option('model', { type: 'string', demandOption: true, describe: 'folder with config.json and its weights (*.safetensors, a sharded index, or a .pt checkpoint)' })
        .option('inputs', { type: 'string', demandOption: true, describe: 'safetensors file of inputs named as the reference forward\'s arguments (see the list below)' })
        .option('out', { type: 'string', demandOption: true, describe: 'safetensors file to write the outputs to' })
        .option('dtype', { type: 'string', choices: ['f32', 'f16'], describe: 'weight dtype on the GPU (default: the model kind\'s, f32 for most)' })
        .epilogue(inputHelp()),
    async (a) => {
      const names = await forward({ kind: a.kind, model: a.model, inputs: a.inputs, out: a.out, dtype: a.dtype as 'f32' | 'f16' | undefined, log: (m) => process.stderr.write(m + '\n') });
      process.stderr.write(`wrote ${names.join(', ')} to ${a.out}\n`);
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
