// npm run bench [-- --filter <substring>] [--quick] [--json]
// Runs every case registered by bench/*.bench.ts (see bench/harness.ts) on the default
// adapter and prints a table, or with --json one JSON document on stdout. Progress goes to
// stderr.
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { device, getDevice } from '../runtime/device.ts';
import { formatTable, isCpuAdapter, registeredBenches, runBenches } from './harness.ts';

const { values } = parseArgs({
  options: {
    filter: { type: 'string', short: 'f' },
    quick: { type: 'boolean', short: 'q', default: false },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

if (values.help) {
  console.log('usage: npm run bench -- [--filter <substring of case name or group>] [--quick] [--json]');
  process.exit(0);
}

// Files that register cases with defineBench(); other *.bench.ts files are standalone scripts.
const dir = fileURLToPath(new URL('.', import.meta.url));
for (const f of readdirSync(dir).filter((f) => f.endsWith('.bench.ts')).sort()) {
  if (readFileSync(dir + f, 'utf8').includes('defineBench(')) await import(pathToFileURL(dir + f).href);
  else process.stderr.write(`skipping bench/${f}: a standalone script (run it with npx tsx), not defineBench() cases\n`);
}

await getDevice();
const info = device().info();
const header = `adapter: ${info.adapter} (${info.platform})`;
const total = registeredBenches().length;
process.stderr.write(`${header}\n`);

let done = 0;
const results = await runBenches({
  filter: values.filter,
  quick: values.quick,
  onResult: (r) => {
    done++;
    const what = r.error ? `ERROR ${r.error}` : `${r.ms!.toFixed(2)} ms`;
    process.stderr.write(`  [${done}] ${r.name}: ${what}\n`);
  },
});
if (!results.length) process.stderr.write(`no case matches '${values.filter}' (${total} registered)\n`);

if (values.json) {
  const doc = { adapter: info.adapter, platform: info.platform, date: new Date().toISOString(), quick: values.quick, results };
  console.log(JSON.stringify(doc, null, 2));
} else {
  const basis = isCpuAdapter(info.adapter) ? 'x naive / x peer: ratios of CPU time (a software adapter: the work done)' : 'x naive / x peer: ratios of wall time';
  console.log(`\n${header}${values.quick ? ' (--quick)' : ''}\n${basis}\n`);
  console.log(formatTable(results));
}
process.exit(results.some((r) => r.error) ? 1 : 0);
