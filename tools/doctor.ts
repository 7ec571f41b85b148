// `layton-run doctor`: what the adapter is and whether our kernels compute correctly on it.
import { getDevice, matmul, softmax, tensor, tidy, type DeviceInfo } from '../runtime/index.ts';

interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

function cpuMatmul(a: Float64Array, b: Float64Array, m: number, k: number, n: number): Float64Array {
  const o = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) for (let j = 0; j < n; j++) o[i * n + j] += a[i * k + p] * b[p * n + j];
  return o;
}

const maxRel = (x: ArrayLike<number>, ref: ArrayLike<number>): number => {
  let e = 0;
  let m = 1e-12;
  for (let i = 0; i < ref.length; i++) {
    e = Math.max(e, Math.abs(x[i] - ref[i]));
    m = Math.max(m, Math.abs(ref[i]));
  }
  return e / m;
};

async function selfCheck(): Promise<Check[]> {
  const [m, k, n] = [67, 129, 45];
  const a = Float64Array.from({ length: m * k }, (_, i) => Math.fround(Math.sin(i * 0.37)));
  const b = Float64Array.from({ length: k * n }, (_, i) => Math.fround(Math.cos(i * 0.11)));
  const [mm, sm] = tidy(() => {
    const ta = tensor(Float32Array.from(a), [m, k]);
    return [matmul(ta, tensor(Float32Array.from(b), [k, n])), softmax(ta)];
  });
  const got = await mm.data();
  const smv = await sm.data();
  mm.dispose();
  sm.dispose();
  const e1 = maxRel(got, cpuMatmul(a, b, m, k, n));
  const ref = new Float64Array(m * k);
  for (let r = 0; r < m; r++) {
    let mx = -Infinity;
    for (let j = 0; j < k; j++) mx = Math.max(mx, a[r * k + j]);
    let s = 0;
    for (let j = 0; j < k; j++) s += Math.exp(a[r * k + j] - mx);
    for (let j = 0; j < k; j++) ref[r * k + j] = Math.exp(a[r * k + j] - mx) / s;
  }
  const e2 = maxRel(smv, ref);
  return [
    { name: `matmul ${m}x${k}x${n}`, ok: e1 < 1e-5, detail: `max rel error ${e1.toExponential(2)}` },
    { name: `softmax ${m}x${k}`, ok: e2 < 1e-5, detail: `max rel error ${e2.toExponential(2)}` },
  ];
}

export async function doctor(opts: { json: boolean; leakCheck: boolean }): Promise<boolean> {
  const dev = await getDevice();
  const info: DeviceInfo = dev.info();
  const checks = await selfCheck();
  let leak: unknown;
  if (opts.leakCheck) {
    const { leakCheck } = await import('./leakcheck.ts');
    try {
      leak = await leakCheck(1000, opts.json ? undefined : (m: string) => process.stderr.write(`${m}\n`));
      checks.push({ name: 'leak check (1000 MLP training steps)', ok: true, detail: 'memory flat' });
    } catch (e) {
      checks.push({ name: 'leak check (1000 MLP training steps)', ok: false, detail: (e as Error).message });
    }
  }
  const ok = checks.every((c) => c.ok);
  if (opts.json) {
    process.stdout.write(JSON.stringify({ ...info, checks, leak, ok }, null, 2) + '\n');
    return ok;
  }
  const lines = [
    `platform   ${info.platform}`,
    `adapter    ${info.adapter}`,
    `features   ${info.features.join(', ')}`,
    'limits',
    ...Object.entries(info.limits).map(([key, v]) => `  ${key.padEnd(36)} ${v}`),
    'self-check',
    ...checks.map((c) => `  ${c.ok ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail}`),
  ];
  if (leak) lines.push('pool', `  ${JSON.stringify(leak)}`);
  process.stdout.write(lines.join('\n') + '\n');
  return ok;
}
