// Shared pieces of the command modules: stderr progress, the --model option, output names.
import { basename, extname } from 'node:path';
import type { Argv } from 'yargs';
import { DEFAULT_MODEL } from '../reconstruct.ts';

/** Progress and notes go to stderr; stdout carries only results. */
export const note = (line: string): void => void process.stderr.write(line + '\n');

export const seconds = (t0: number): string => `${((performance.now() - t0) / 1000).toFixed(1)} s`;

export const withModel = <T>(y: Argv<T>) =>
  y.option('model', { type: 'string', default: DEFAULT_MODEL, defaultDescription: 'models/default (the shipped model)', describe: 'Layton folder: layton.json, vq/, unet/, controlnet/, vae/, scheduler/' });

export const withDecode = <T>(y: Argv<T>) =>
  y
    .option('steps', { type: 'number', choices: [1, 2], default: 1, describe: 'consistency decoding steps' })
    .option('seed', { type: 'number', default: 0, describe: 'seed of the decoder\'s noise (same seed, same image)' });

/** "dir/cat.photo.jpg" -> "cat.photo" */
export const stem = (path: string): string => basename(path, extname(path));

/** Argument checks at the command line's boundary (the library functions trust their options). */
export function positiveInt(v: number | undefined, name: string): void {
  if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new Error(`--${name} must be a positive integer, got ${v}`);
}
