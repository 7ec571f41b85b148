// `layton-run inspect` and `layton-run forward`: build any registered model kind from a
// config (shape-only for inspect), load a checkpoint folder and run its forward on named
// inputs — how a user checks a port against the reference implementation.
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { getKind, kindNames, kindOfConfig, loadModel, type ModelKind } from '../models/index.ts';
import { readConfig } from '../models/checkpoint.ts';
import { type DType, type Tensor, buildMeta, getDevice, loadTensor } from '../runtime/index.ts';
import { toSafetensorsEntries } from '../runtime/nn.ts';
import { openSafetensors, saveSafetensors } from '../runtime/platform/node-fs.ts';
import { modelDir } from './modeldir.ts';

/** config.json of a folder, or a JSON file. */
async function loadConfigJson(path: string): Promise<Record<string, unknown>> {
  let isDir: boolean;
  try {
    isDir = (await stat(path)).isDirectory();
  } catch {
    throw new Error(`${path}: no such file or folder`);
  }
  if (isDir) return readConfig(await modelDir(path));
  let text: string;
  try {
    text = await readFile(path, 'utf8');
    const v = JSON.parse(text);
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v;
  } catch (e) {
    throw new Error(`${path}: not a JSON config (${(e as Error).message})`);
  }
}

function resolveKind(kind: string | undefined, json: Record<string, unknown>, where: string): ModelKind {
  if (kind) return getKind(kind);
  const k = kindOfConfig(json);
  if (!k) throw new Error(`${where}: cannot tell the model kind from its config (no known _class_name / architectures); pass --kind (${kindNames().join('|')})`);
  return k;
}

export interface InspectResult {
  kind: string;
  parameters: number;
  keys: Record<string, number[]>;
}

export async function inspect(path: string, kind?: string): Promise<InspectResult> {
  const json = await loadConfigJson(path);
  const k = resolveKind(kind, json, path);
  const config = k.parseConfig(json, path);
  const m = buildMeta(() => k.build(config));
  const r = { kind: k.kind, parameters: m.parameterCount(), keys: m.stateShapes() };
  m.dispose();
  return r;
}

export function formatInspect(r: InspectResult, withKeys: boolean): string {
  const lines = [`${r.kind}: ${r.parameters.toLocaleString('en-US')} parameters in ${Object.keys(r.keys).length} tensors`];
  if (withKeys) for (const [name, shape] of Object.entries(r.keys)) lines.push(`${name} [${shape.join(', ')}]`);
  return lines.join('\n');
}

export interface ForwardArgs {
  kind?: string;
  model: string;
  inputs: string;
  out: string;
  dtype?: DType;
  log?: (msg: string) => void;
}

/** Loads the model folder, runs forward on the named inputs, writes every output (atomically). */
export async function forward(a: ForwardArgs): Promise<string[]> {
  const log = a.log ?? (() => {});
  const files = await modelDir(a.model);
  const k = resolveKind(a.kind, await readConfig(files), join(a.model, 'config.json'));
  const dev = await getDevice();
  if (a.dtype === 'f16' && !dev.hasF16) throw new Error(`--dtype f16: this adapter (${dev.info().adapter}) lacks shader-f16`);
  const inFile = await openSafetensors(a.inputs);
  const inputs: Record<string, Tensor> = {};
  try {
    const unknown = inFile.keys().filter((n) => !(n in k.inputs));
    if (unknown.length) throw new Error(`${a.inputs}: unknown input(s) ${unknown.join(', ')} for --kind ${k.kind} (inputs: ${Object.keys(k.inputs).join(', ')})`);
    const t0 = performance.now();
    const { model, config } = await loadModel(files, k, { dtype: a.dtype });
    try {
      // frozen: forward may be async (host-side gathers), where noGrad would not reach past an await
      model.setTrainable(false);
      log(`loaded ${model.parameterCount().toLocaleString('en-US')} parameters from ${a.model} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      for (const n of inFile.keys()) inputs[n] = await loadTensor(inFile, n);
      const t1 = performance.now();
      const outputs = await k.forward(model, inputs, config);
      const entries = await toSafetensorsEntries(outputs);
      log(`forward in ${((performance.now() - t1) / 1000).toFixed(1)} s`);
      for (const t of Object.values(outputs)) t.dispose();
      await saveSafetensors(a.out, entries, { kind: k.kind, model: a.model });
      return Object.keys(entries);
    } finally {
      model.dispose();
    }
  } finally {
    for (const t of Object.values(inputs)) t.dispose();
    await inFile.source.close?.();
  }
}
