// The VQ bottleneck of LlamaGen's tokenizer at its sizes: nearest-code search over the
// 16384 x 8 codebook for one 256-token image and a 4096-token batch (against the simplest
// kernel, below), the token-to-code lookup of decoding, and a training step of quantize.
import { defineBench } from './harness.ts';
import { device } from '../runtime/device.ts';
import { noGrad } from '../runtime/autograd.ts';
import { Tensor, tidy } from '../runtime/tensor.ts';
import { add, lookup, mul, nearestCode, quantize, randn, sum, tensor } from '../runtime/ops/index.ts';
import { grid1d } from '../runtime/ops/util.ts';

const [K, C] = [16384, 8];

// One thread per query vector, every code read from global memory and normalised on the way.
const naiveNearestWGSL = /* wgsl */ `
struct Params { m: u32, c: u32, k: u32 }
@group(0) @binding(0) var<storage, read> z: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> idx: array<i32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = gid.x + gid.y * nwg.x * 64u;
  if (r >= p.m) { return; }
  var zz = 0.0;
  for (var c = 0u; c < p.c; c++) { zz += z[r * p.c + c] * z[r * p.c + c]; }
  let iz = 1.0 / max(sqrt(zz), 1e-12);
  var best = 3.0e38;
  var arg = 0u;
  for (var k = 0u; k < p.k; k++) {
    var ww = 0.0;
    var zw = 0.0;
    for (var c = 0u; c < p.c; c++) {
      let v = w[k * p.c + c];
      ww += v * v;
      zw += v * z[r * p.c + c];
    }
    let iw = 1.0 / max(sqrt(ww), 1e-12);
    let d = ww * iw * iw - 2.0 * zw * iz * iw;
    if (d < best) { best = d; arg = k; }
  }
  idx[r] = i32(arg);
}
`;

function naiveNearest(z: Tensor, w: Tensor): Tensor {
  const m = z.shape[0];
  const idx = Tensor.empty([m], 'i32');
  device().dispatch({ kernel: 'nearest_naive', source: naiveNearestWGSL, buffers: [z.binding(), w.binding(), idx.binding()], params: [m, C, K], workgroups: grid1d(m, 64) });
  return idx;
}

for (const m of [256, 4096]) {
  defineBench({
    name: `nearestCode ${m} vectors, ${K}x${C} codebook`,
    group: 'codebook',
    flops: 2 * m * K * C,
    setup: () => ({ z: randn([m, C]), w: randn([K, C]) }),
    run: ({ z, w }) => nearestCode(z, w),
    reference: ({ z, w }) => naiveNearest(z, w),
  });
}

defineBench({
  name: `lookup 4096 tokens -> [16, ${C}, 16, 16], ${K}x${C} codebook`,
  group: 'codebook',
  bytes: 4 * 4096 + 2 * 4 * 4096 * C,
  setup: () => ({ ids: tensor(Array.from({ length: 4096 }, (_, i) => (i * 7919) % K), [16, 16, 16], 'i32'), w: randn([K, C]) }),
  run: ({ ids, w }) => noGrad(() => lookup(ids, w)),
});

defineBench({
  name: `quantize forward + backward [16, ${C}, 16, 16], ${K}x${C} codebook`,
  group: 'codebook',
  setup: () => ({ z: randn([16, C, 16, 16]).requireGrad(), w: randn([K, C]).requireGrad(), gy: randn([16, C, 16, 16]) }),
  run: ({ z, w, gy }) => {
    const q = quantize(z, w, { beta: 0.25 });
    const loss = tidy(() => add(sum(mul(q.zq, gy)), add(q.vqLoss, q.commitLoss)));
    loss.backward();
    const out = [loss, q.zq, q.indices, q.vqLoss, q.commitLoss, z.grad!, w.grad!];
    z.grad = null;
    w.grad = null;
    return out;
  },
  note: 'straight-through, vq and commit losses, gradients of z and the codebook',
});
