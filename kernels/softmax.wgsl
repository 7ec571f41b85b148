// Row-wise softmax / log-softmax over the last axis (one workgroup per row) and its backward.
// forward: y = softmax(x) or log_softmax(x) (LOG). backward, given y and dy:
//   softmax:     dx = y * (dy - sum(dy * y))
//   log-softmax: dx = dy - exp(y) * sum(dy)
override LOG: bool = false;
const WG = 64u;

struct Params { rows: u32, d: u32 }

// forward binds (x, out, params); backward binds (y, dy, dx, params): entry points may
// give one binding number different variables.
@group(0) @binding(0) var<storage, read> x: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> out: array<{{T}}>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> dx: array<{{T}}>;
@group(0) @binding(3) var<uniform> pb: Params;

var<workgroup> red: array<f32, WG>;

fn reduceSum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn reduceMax(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn rowOf(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = rowOf(wid, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.d;
  var m = -0x1.fffffep+127;
  for (var k = lid; k < p.d; k += WG) { m = max(m, f32(x[base + k])); }
  m = reduceMax(m, lid);
  var s = 0.0;
  for (var k = lid; k < p.d; k += WG) { s += exp(f32(x[base + k]) - m); }
  s = reduceSum(s, lid);
  let ls = log(s);
  for (var k = lid; k < p.d; k += WG) {
    let z = f32(x[base + k]) - m;
    out[base + k] = {{T}}(select(exp(z) / s, z - ls, LOG));
  }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = rowOf(wid, nwg);
  if (row >= pb.rows) { return; }
  let base = row * pb.d;
  var s = 0.0;
  for (var k = lid; k < pb.d; k += WG) {
    s += select(f32(dy[base + k]) * f32(x[base + k]), f32(dy[base + k]), LOG);
  }
  s = reduceSum(s, lid);
  for (var k = lid; k < pb.d; k += WG) {
    let y = f32(x[base + k]);
    let g = f32(dy[base + k]);
    dx[base + k] = {{T}}(select(y * (g - s), g - exp(y) * s, LOG));
  }
}
