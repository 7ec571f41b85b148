// The column matrix of a convolution and its adjoint, for the GEMM path of conv2d
// (runtime/ops/conv.ts), NCHW, groups = 1:
//   im2col  cols[n, (c, r, s), oh, ow] = x[n, c, oh·S − padT + r, ow·S − padL + s], 0 in the padding
//   col2im  dx[n, c, ih, iw] = Σ cols[n, (c, r, s), oh, ow] over the taps with oh·S = ih + padT − r
//           and ow·S = iw + padL − s: a gather per input pixel, so no atomics
// Both are bound by memory, the GEMMs around them do the FLOPs. Integer division by a runtime
// value is a scalar loop over the lanes on CPU adapters (no SIMD divide), so neither divides
// per element: im2col runs a thread per output row (n, c, r, s, oh) along ow, and col2im
// steps through the taps of its pixel's stride phase (r ≡ ih + padT mod S) instead of testing
// every tap's divisibility.
struct Params {
  c: u32, h: u32, w: u32, oh: u32, ow: u32, kh: u32, kw: u32,
  stride: u32, padT: u32, padL: u32, offIn: u32,
  total: u32,  // threads: im2col rows N·C·KH·KW·OH, col2im input elements N·C·H·W
}

@group(0) @binding(0) var<storage, read> src: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> dst: array<{{T}}>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = gid.x + gid.y * nwg.x * 256u;
  if (row >= p.total) { return; }
  let oh = row % p.oh;
  let planeTap = row / p.oh;  // (n·C + c)·taps + tap
  let taps = p.kh * p.kw;
  let tap = planeTap % taps;
  let r = tap / p.kw;
  let s = tap - r * p.kw;
  let ih = i32(oh * p.stride + r) - i32(p.padT);
  let out = row * p.ow;
  if (ih < 0 || ih >= i32(p.h)) {
    for (var ow = 0u; ow < p.ow; ow++) { dst[out + ow] = {{T}}(0.0); }
    return;
  }
  let inRow = p.offIn + (planeTap / taps * p.h + u32(ih)) * p.w;
  var iw = i32(s) - i32(p.padL);
  for (var ow = 0u; ow < p.ow; ow++) {
    var v = {{T}}(0.0);
    if (iw >= 0 && iw < i32(p.w)) { v = src[inRow + u32(iw)]; }
    dst[out + ow] = v;
    iw += i32(p.stride);
  }
}

@compute @workgroup_size(256)
fn col2im(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= p.total) { return; }
  let iw = i % p.w;
  let rowIdx = i / p.w;
  let ih = rowIdx % p.h;
  let plane = rowIdx / p.h;  // n·C + c
  let S = p.stride;
  // taps r = r0 + S·j reach output row oh0 − j (and likewise along w)
  let y = ih + p.padT;
  let r0 = y % S;
  let oh0 = y / S;
  let x = iw + p.padL;
  let s0 = x % S;
  let ow0 = x / S;
  let base = p.offIn + plane * p.kh * p.kw * p.oh * p.ow;
  var acc = 0.0;
  for (var j = 0u; r0 + j * S < p.kh && j <= oh0; j++) {
    let oh = oh0 - j;
    if (oh >= p.oh) { continue; }
    let r = r0 + j * S;
    for (var k = 0u; s0 + k * S < p.kw && k <= ow0; k++) {
      let ow = ow0 - k;
      if (ow >= p.ow) { continue; }
      acc += f32(src[base + ((r * p.kw + s0 + k * S) * p.oh + oh) * p.ow + ow]);
    }
  }
  dst[i] = {{T}}(acc);
}
