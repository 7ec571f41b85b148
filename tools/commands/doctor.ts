import type { Argv } from 'yargs';
import { doctor } from '../doctor.ts';

export const registerDoctor = <T>(y: Argv<T>) =>
  y.command(
    'doctor',
    'print the WebGPU adapter, its limits and features, and run a self-check kernel',
    (c) =>
      c
        .option('json', { type: 'boolean', default: false, describe: 'print one JSON document' })
        .option('leak-check', { type: 'boolean', default: false, describe: 'also run 1000 MLP training steps and check that GPU and host memory stay flat' }),
    async (a) => {
      const ok = await doctor({ json: a.json, leakCheck: a['leak-check'] });
      process.exitCode = ok ? 0 : 1;
    },
  );
