// Nearest-neighbour 2x upsampling of [planes, H, W] to [planes, 2H, 2W] and its backward
// (an input pixel's gradient is the sum of its 2x2 output block). One thread per input
// pixel both ways: forward writes its block as two pairs of neighbours, backward reads them.
struct Params { n: u32, w: u32, offIn: u32 }  // n = planes·H·W input pixels

@group(0) @binding(0) var<storage, read> src: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> dst: array<{{T}}>;
@group(0) @binding(2) var<uniform> p: Params;

// Index of the block's top-left output: output row 2·(plane·H + row) of width 2W.
fn blockStart(i: u32) -> u32 { return i / p.w * 4u * p.w + i % p.w * 2u; }

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= p.n) { return; }
  let o = blockStart(i);
  let v = src[p.offIn + i];
  dst[o] = v;
  dst[o + 1u] = v;
  dst[o + 2u * p.w] = v;
  dst[o + 2u * p.w + 1u] = v;
}

@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= p.n) { return; }
  let o = p.offIn + blockStart(i);
  let w2 = 2u * p.w;
  dst[i] = {{T}}(f32(src[o]) + f32(src[o + 1u]) + f32(src[o + w2]) + f32(src[o + w2 + 1u]));
}
