// The full SDXL base UNet (2,567,463,684 parameters, the published unet/config.json) for one
// denoising step on a 1024² image's latent [1, 4, 128, 128], with 77 text tokens of 2048,
// pooled text embeds [1, 1280] and time ids [1, 6]; or, with --model vae, the SDXL VAE's
// decode (--tiled: decodeTiled, as a 1024² decode needs under a 128 MiB binding limit).
// Random weights: the modules' torch-default inits (U(±1/√fan_in), norms 1 and 0) drawn on the
// GPU by the Philox kernel, so no weight value is made on the host. Weights are f16 where the
// adapter has shader-f16 (the VAE: f32, its force_upcast), or --dtype.
// Prints the build and step times, the process CPU time of the step (on a CPU adapter such as
// lavapipe that is the work done), GFLOPS over the counted conv/linear/attention FLOPs, the
// peak host memory (RSS sampled every 100 ms, and the kernel's high-water mark VmHWM, which
// also catches peaks inside synchronous work), and the buffer pool's peaks: bytes held by live
// tensors, bytes allocated (live + free lists), and the largest single buffer against the
// storage-binding limit.
// A standalone script, not a defineBench() case (minutes per op on a software adapter):
//   npx tsx bench/sdxl-unet.ts [--model unet|vae] [--dtype f16|f32] [--latent 128] [--tiled] [--steps 1]
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { type DType, Generator, type Tensor, device, getDevice, noGrad, randn, withBuild } from '../runtime/index.ts';
import { UNet2DConditionModel, parseUNetConfig } from '../models/unet.ts';
import { AutoencoderKL, parseVaeConfig, vaeDType } from '../models/vae.ts';
import { SDXL_UNET_CONFIG, SDXL_VAE_CONFIG, countFlops, unetInputs, unetStep } from './diffusion.bench.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'unet' },
    dtype: { type: 'string' },
    latent: { type: 'string', default: '128' },
    tiled: { type: 'boolean', default: false },
    steps: { type: 'string', default: '1' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  console.log('usage: npx tsx bench/sdxl-unet.ts [--model unet|vae] [--dtype f16|f32] [--latent 128] [--tiled (vae)] [--steps 1]');
  process.exit(0);
}
const positiveInt = (name: string, s: string): number => {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got '${s}'`);
  return n;
};
const latent = positiveInt('latent', values.latent!);
const steps = positiveInt('steps', values.steps!);
if (values.model !== 'unet' && values.model !== 'vae') throw new Error(`--model must be unet or vae, got '${values.model}'`);
if (values.dtype !== undefined && values.dtype !== 'f16' && values.dtype !== 'f32') throw new Error(`--dtype must be f16 or f32, got '${values.dtype}'`);
if (values.tiled && values.model !== 'vae') throw new Error('--tiled applies to --model vae only');

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const mib = (b: number) => `${(b / MiB).toFixed(0)} MiB`;
const gib = (b: number) => `${(b / GiB).toFixed(2)} GiB`;

/** The process's peak resident set so far (VmHWM, Linux), in bytes; undefined elsewhere. */
function vmHWM(): number | undefined {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

let peakRss = 0;
const sampleRss = () => void (peakRss = Math.max(peakRss, process.memoryUsage().rss));
const sampler = setInterval(sampleRss, 100);

await getDevice();
const dev = device();
const dtype: DType = (values.dtype as DType | undefined) ?? (values.model === 'vae' ? vaeDType(parseVaeConfig(SDXL_VAE_CONFIG)) : dev.hasF16 ? 'f16' : 'f32');
if (dtype === 'f16' && !dev.hasF16) throw new Error("--dtype f16: this adapter lacks the 'shader-f16' feature");

// The pool's peaks, tracked on every allocation (the forward launches synchronously, so a timer would miss them).
const pool = dev.pool;
const acquire = pool.acquire.bind(pool);
const peak = { live: 0, held: 0, largest: 0 };
pool.acquire = (bytes: number) => {
  const buf = acquire(bytes);
  const s = pool.getStats();
  peak.live = Math.max(peak.live, s.inUseBytes);
  peak.held = Math.max(peak.held, s.inUseBytes + s.pooledBytes);
  peak.largest = Math.max(peak.largest, bytes);
  return buf;
};

const info = dev.info();
console.log(`adapter: ${info.adapter} (${info.platform}); maxStorageBufferBindingSize ${mib(dev.maxBinding)}`);

const gen = new Generator(0);
let t0 = performance.now();
let run: () => Tensor;
let what: string;
let dispose: () => void;
if (values.model === 'unet') {
  const config = parseUNetConfig(SDXL_UNET_CONFIG, 'SDXL unet/config.json');
  const model = withBuild({ generator: gen, dtype }, () => new UNet2DConditionModel(config));
  const x = unetInputs(config, 1, latent, 77, gen);
  run = () => unetStep(model, x);
  what = `SDXL UNet (${model.parameterCount().toLocaleString('en')} parameters) step, latent [1, 4, ${latent}, ${latent}] (${latent * 8}²), 77 text tokens`;
  dispose = () => {
    model.dispose();
    for (const t of Object.values(x)) t.dispose();
  };
} else {
  const config = parseVaeConfig(SDXL_VAE_CONFIG, 'SDXL vae/config.json');
  const model = withBuild({ generator: gen, dtype }, () => new AutoencoderKL(config));
  const z = randn([1, config.latentChannels, latent, latent], { generator: gen });
  run = values.tiled ? () => model.decodeTiled(z) : () => model.decode(z);
  const tiles = values.tiled ? `, decodeTiled (latent tiles of ${model.defaultTileLatent()}, overlap 0.25)` : '';
  what = `SDXL VAE (${model.parameterCount().toLocaleString('en')} parameters) decode, latent [1, 4, ${latent}, ${latent}] -> ${latent * 8}²${tiles}`;
  dispose = () => {
    model.dispose();
    z.dispose();
  };
}
await dev.sync();
const buildMs = performance.now() - t0;
console.log(`${what}, ${dtype} weights`);
console.log(`build (weights initialised on the GPU): ${(buildMs / 1000).toFixed(1)} s; pool after build: ${gib(pool.getStats().inUseBytes)} live`);

for (let s = 0; s < steps; s++) {
  const cpu0 = process.cpuUsage();
  t0 = performance.now();
  const { result: y, flops } = countFlops(() => noGrad(run));
  const launchMs = performance.now() - t0;
  await dev.sync();
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const cpuMs = (cpu.user + cpu.system) / 1000;
  const out = (await y.data()) as Float32Array;
  let bad = 0;
  let absSum = 0;
  for (const v of out) {
    if (Number.isFinite(v)) absSum += Math.abs(v);
    else bad++;
  }
  const shape = y.shape;
  y.dispose();
  console.log(
    `step ${s + 1}: ${(ms / 1000).toFixed(1)} s wall (${(launchMs / 1000).toFixed(1)} s of it launching), ${(cpuMs / 1000).toFixed(1)} s CPU; ` +
      `${(flops / 1e12).toFixed(3)} TFLOP counted: ${(flops / ms / 1e6).toFixed(1)} GFLOPS wall; output [${shape}] mean |y| ${(absSum / (out.length - bad)).toPrecision(3)}` +
      (bad ? `, ${bad} non-finite values` : ''),
  );
}

sampleRss();
clearInterval(sampler);
const hwm = vmHWM();
console.log(`peak host RSS: ${gib(peakRss)} (sampled every 100 ms)${hwm === undefined ? '' : `, VmHWM ${gib(hwm)}`}`);
console.log(
  `buffer pool peaks: ${gib(peak.live)} in live tensors, ${gib(peak.held)} allocated (live + free lists); ` +
    `largest buffer ${mib(peak.largest)} (binding limit ${mib(dev.maxBinding)})`,
);
dispose();
