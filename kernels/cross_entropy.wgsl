// Cross-entropy of logits [N, V] against integer targets [N], mean over the targets that
// are not ignore_index (F.cross_entropy): a fused log-softmax + NLL.
//   forward   (one workgroup per row) online max / sum-exp per thread, merged in workgroup
//             memory: row = (lse, loss) with loss = lse - x[target], 0 when ignored
//   mean      (one workgroup) total = (Σ loss / count, count); NaN when count = 0 like PyTorch
//   backward  (one thread per logit) dx = dL·(softmax - onehot(target)) / count, 0 on ignored rows
// A target outside [0, V) that is not ignore_index makes the loss NaN (PyTorch raises).
const WG = 256u;

struct Params {
  rows: u32, v: u32,
  offX: u32, offT: u32, offG: u32,  // element offsets of logits, targets, dL in their bindings
  ignore: i32,
  nan: f32,  // a NaN: WGSL cannot spell one as a constant
}

// Bindings per entry point ((w) = written):
//   forward   x0 targets1 rows2(w)                     params3
//   mean      rowsIn0 targets1 total2(w)               params3
//   backward  x0 targets1 rowsIn2 total3 dl4 dx5(w)    params6
@group(0) @binding(0) var<storage, read> x: array<{{T}}>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> rowsOut: array<vec2<f32>>;
@group(0) @binding(0) var<storage, read> rowsMean: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> totalOut: array<f32>;
@group(0) @binding(2) var<storage, read> rowsIn: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> total: array<f32>;
@group(0) @binding(4) var<storage, read> dl: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<{{T}}>;
@group(0) @binding(3) var<uniform> p3: Params;
@group(0) @binding(6) var<uniform> p6: Params;

var<workgroup> red: array<vec2<f32>, WG>;

// (max, Σ exp(x - max)) of two partial sums.
fn merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  let m = max(a.x, b.x);
  return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let q = p3;
  let row = wid.x + wid.y * nwg.x;
  if (row >= q.rows) { return; }
  let base = q.offX + row * q.v;
  var m = -0x1.fffffep+127;
  var s = 0.0;
  for (var k = lid; k < q.v; k += WG) {
    let v = f32(x[base + k]);
    if (v > m) {
      s = s * exp(m - v) + 1.0;
      m = v;
    } else {
      s += exp(v - m);
    }
  }
  red[lid] = vec2<f32>(m, s);
  workgroupBarrier();
  for (var h = WG / 2u; h > 0u; h >>= 1u) {
    if (lid < h) { red[lid] = merge(red[lid], red[lid + h]); }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let lse = red[0].x + log(red[0].y);
    let t = targets[q.offT + row];
    var loss = 0.0;
    if (t != q.ignore) { loss = select(q.nan, lse - f32(x[base + u32(t)]), t >= 0 && u32(t) < q.v); }
    rowsOut[row] = vec2<f32>(lse, loss);
  }
}

@compute @workgroup_size(WG)
fn mean(@builtin(local_invocation_index) lid: u32) {
  let q = p3;
  var acc = vec2<f32>(0.0);
  for (var r = lid; r < q.rows; r += WG) {
    if (targets[q.offT + r] != q.ignore) { acc += vec2<f32>(rowsMean[r].y, 1.0); }
  }
  red[lid] = acc;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let sum = red[0];
    totalOut[0] = select(sum.x / sum.y, q.nan, sum.y == 0.0);
    totalOut[1] = sum.y;
  }
}

@compute @workgroup_size(WG)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let q = p6;
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= q.rows * q.v) { return; }
  let row = i / q.v;
  let k = i % q.v;
  let t = targets[q.offT + row];
  var g = 0.0;
  if (t != q.ignore) {
    let sm = exp(f32(x[q.offX + i]) - rowsIn[row].x);
    g = (sm - select(0.0, 1.0, i32(k) == t)) * dl[q.offG] / total[1];
  }
  dx[i] = {{T}}(g);
}
