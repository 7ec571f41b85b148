// The model graphs: every kind the loaders and the CLI know is registered here.
import { registerKind } from './registry.ts';

export { getKind, kindNames, kindOfConfig, registerKind, type ModelKind } from './registry.ts';
export * from './layers.ts';
export * from './checkpoint.ts';
export { ConfigReader } from './config.ts';
export * from './schedulers.ts';

for (const k of [] as Parameters<typeof registerKind>[0][]) registerKind(k);
