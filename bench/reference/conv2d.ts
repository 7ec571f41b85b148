// The simplest correct conv2d: one thread per output element, direct loops over C·KH·KW,
// every operand read straight from global memory. The speed baseline of bench/conv.bench.ts
// and an independent second reference in test/conv.test.ts (f32 only).
import { device } from '../../runtime/device.ts';
import { Tensor } from '../../runtime/tensor.ts';
import { grid1d } from '../../runtime/ops/util.ts';

export const naiveConv2dWGSL = /* wgsl */ `
struct Params {
  n: u32, c: u32, h: u32, w: u32, o: u32, oh: u32, ow: u32,
  kh: u32, kw: u32, stride: u32, padT: u32, padL: u32, hasBias: u32,
}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= p.n * p.o * p.oh * p.ow) { return; }
  let ow = i % p.ow;
  let oh = i / p.ow % p.oh;
  let o = i / (p.ow * p.oh) % p.o;
  let n = i / (p.ow * p.oh * p.o);
  var acc = 0.0;
  if (p.hasBias != 0u) { acc = bias[o]; }
  for (var c = 0u; c < p.c; c++) {
    for (var r = 0u; r < p.kh; r++) {
      let ih = i32(oh * p.stride + r) - i32(p.padT);
      if (ih < 0 || ih >= i32(p.h)) { continue; }
      for (var s = 0u; s < p.kw; s++) {
        let iw = i32(ow * p.stride + s) - i32(p.padL);
        if (iw < 0 || iw >= i32(p.w)) { continue; }
        acc += x[((n * p.c + c) * p.h + u32(ih)) * p.w + u32(iw)] * wt[((o * p.c + c) * p.kh + r) * p.kw + s];
      }
    }
  }
  y[i] = acc;
}
`;

/** conv2d on the naive kernel: fresh f32 tensors x [N, C, H, W], w [O, C, KH, KW], b [O]; padding [top, bottom, left, right]. */
export function naiveConv2d(x: Tensor, w: Tensor, b: Tensor | null, stride: number, pad: readonly [number, number, number, number]): Tensor {
  const [n, c, h, wd] = x.shape;
  const [o, , kh, kw] = w.shape;
  const oh = Math.floor((h + pad[0] + pad[1] - kh) / stride) + 1;
  const ow = Math.floor((wd + pad[2] + pad[3] - kw) / stride) + 1;
  const y = Tensor.empty([n, o, oh, ow]);
  device().dispatch({
    kernel: 'conv2d_naive',
    source: naiveConv2dWGSL,
    buffers: [x.binding(), w.binding(), (b ?? w).binding(), y.binding()],
    params: [n, c, h, wd, o, oh, ow, kh, kw, stride, pad[0], pad[2], b ? 1 : 0],
    workgroups: grid1d(y.size),
  });
  return y;
}
