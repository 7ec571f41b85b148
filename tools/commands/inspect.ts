import type { Argv } from 'yargs';
import { getKind, kindNames } from '../../models/index.ts';
import { formatInspect, forward, inspect } from '../inspect.ts';
import { note } from './common.ts';

const inputHelp = (): string =>
  ['inputs per kind:', ...kindNames().map((n) => `  ${n}: ` + Object.entries(getKind(n).inputs).map(([k, d]) => `${k} (${d})`).join('; '))].join('\n');

export const registerInspect = <T>(y: Argv<T>) =>
  y
    .command(
      'inspect <config>',
      'build a model shape-only from a config.json (or a model folder) and print its parameter count and state-dict keys',
      (c) =>
        c
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
      (c) =>
        c
          .option('kind', { type: 'string', choices: kindNames(), describe: 'model kind (default: from config.json)' })
          .option('model', { type: 'string', demandOption: true, describe: 'folder with config.json and its weights (*.safetensors, a sharded index, or a .pt checkpoint)' })
          .option('inputs', { type: 'string', demandOption: true, describe: 'safetensors file of inputs named as the reference forward\'s arguments (see the list below)' })
          .option('out', { type: 'string', demandOption: true, describe: 'safetensors file to write the outputs to' })
          .option('dtype', { type: 'string', choices: ['f32', 'f16'], describe: 'weight dtype on the GPU (default: the model kind\'s, f32 for most)' })
          .epilogue(inputHelp()),
      async (a) => {
        const names = await forward({ kind: a.kind, model: a.model, inputs: a.inputs, out: a.out, dtype: a.dtype as 'f32' | 'f16' | undefined, log: note });
        note(`wrote ${names.join(', ')} to ${a.out}`);
      },
    );
