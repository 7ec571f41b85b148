// The column matrix of a convolution and its adjoint, for the GEMM path of conv2d
// (runtime/ops/conv.ts), NCHW, groups = 1:
//   im2col  cols[n, (c, r, s), oh, ow] = x[n, c, oh·S − padT + r, ow·S − padL + s], 0 in the padding;
//           with flip, tap (r, s) gathers at (KH−1−r, KW−1−s): the column matrix of dY whose
//           GEMM with the weights gives a stride-1 conv's dX (the transposed convolution)
//   col2im  dx[n, c, ih, iw] = Σ cols[n, (c, r, s), oh, ow] over the taps with oh·S = ih + padT − r
//           and ow·S = iw + padL − s: a gather per input pixel, so no atomics (strided convs' dX)
// Both are bound by memory, the GEMMs around them do the FLOPs. On llvmpipe every load or
// store whose address varies per invocation is a scalar sequence per lane, and integer division
// by a runtime value is a scalar loop over the lanes (no SIMD divide), so neither divides per
// element: im2col runs a thread per output row (n, c, r, s, oh) along ow, and col2im steps
// through the taps of its pixel's stride phase (r ≡ ih + padT mod S) instead of testing every
// tap's divisibility. im2col_vec4 is im2col for stride 1 with rows of whole vec4s: a row of
// the column matrix is its input row shifted by s − padL, so it slides a window of two input
// vec4s along the row and picks the shifted four with selects: one vec4 load and one vec4
// store per four values instead of four of each.
struct Params {
  c: u32, h: u32, w: u32, oh: u32, ow: u32, kh: u32, kw: u32,
  stride: u32, padT: u32, padL: u32, offIn: u32,
  total: u32,  // threads: im2col rows N·C·KH·KW·OH, col2im input elements N·C·H·W
  flip: u32,   // im2col: 1 gathers tap (r, s) at (KH−1−r, KW−1−s)
}

@group(0) @binding(0) var<storage, read> src: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> dst: array<{{T}}>;
@group(0) @binding(2) var<uniform> p: Params;
// im2col_vec4's views of the same bindings (an entry point uses one pair or the other)
@group(0) @binding(0) var<storage, read> src4: array<vec4<{{T}}>>;
@group(0) @binding(1) var<storage, read_write> dst4: array<vec4<{{T}}>>;

// The gather geometry of im2col row `row` (n, c, tap, oh): input row ih (may be outside
// [0, H)), the start of input plane n·C + c, and the input column of output column 0.
struct Row { ih: i32, plane: u32, iw0: i32 }

fn rowOf(row: u32) -> Row {
  let oh = row % p.oh;
  let planeTap = row / p.oh;  // (n·C + c)·taps + tap
  let taps = p.kh * p.kw;
  let tap = planeTap % taps;
  var r = tap / p.kw;
  var s = tap - r * p.kw;
  if (p.flip != 0u) {
    r = p.kh - 1u - r;
    s = p.kw - 1u - s;
  }
  let ih = i32(oh * p.stride + r) - i32(p.padT);
  return Row(ih, p.offIn + planeTap / taps * p.h * p.w, i32(s) - i32(p.padL));
}

@compute @workgroup_size(256)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = gid.x + gid.y * nwg.x * 256u;
  if (row >= p.total) { return; }
  let g = rowOf(row);
  let out = row * p.ow;
  if (g.ih < 0 || g.ih >= i32(p.h)) {
    for (var ow = 0u; ow < p.ow; ow++) { dst[out + ow] = {{T}}(0.0); }
    return;
  }
  let inRow = g.plane + u32(g.ih) * p.w;
  var iw = g.iw0;
  for (var ow = 0u; ow < p.ow; ow++) {
    var v = {{T}}(0.0);
    if (iw >= 0 && iw < i32(p.w)) { v = src[inRow + u32(iw)]; }
    dst[out + ow] = v;
    iw += i32(p.stride);
  }
}

// Input vec4 j of the row starting at vec4 `row4` (W / 4 of them), zero outside it.
fn quad(row4: u32, j: i32, w4: u32) -> vec4<f32> {
  let v = vec4<f32>(src4[row4 + u32(clamp(j, 0, i32(w4) - 1))]);
  return select(vec4<f32>(0.0), v, j >= 0 && j < i32(w4));
}

// Stride 1, W, OW and offIn multiples of 4 (runtime/ops/conv.ts checks): output vec4 q holds
// input columns 4q + iw0 .. +3, i.e. lanes m.. of input vec4 q + (iw0 >> 2) and the rest of the next.
@compute @workgroup_size(256)
fn im2col_vec4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = gid.x + gid.y * nwg.x * 256u;
  if (row >= p.total) { return; }
  let g = rowOf(row);
  let ow4 = p.ow / 4u;
  let out4 = row * ow4;
  if (g.ih < 0 || g.ih >= i32(p.h)) {
    for (var q = 0u; q < ow4; q++) { dst4[out4 + q] = vec4<{{T}}>(0.0); }
    return;
  }
  let w4 = p.w / 4u;
  let row4 = (g.plane + u32(g.ih) * p.w) / 4u;
  let j0 = g.iw0 >> 2u;  // floor division: an arithmetic shift
  let m = u32(g.iw0 & 3);
  var a = quad(row4, j0, w4);
  for (var q = 0u; q < ow4; q++) {
    let b = quad(row4, j0 + i32(q) + 1, w4);
    let v = select(select(select(a, vec4<f32>(a.yzw, b.x), m == 1u), vec4<f32>(a.zw, b.xy), m == 2u), vec4<f32>(a.w, b.xyz), m == 3u);
    dst4[out4 + q] = vec4<{{T}}>(v);
    a = b;
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
