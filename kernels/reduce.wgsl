// Reduction over the middle axis of a [outer, R, inner] view: one workgroup per output,
// threads stride over R, then a shared-memory tree. OP: 0 sum, 1 max, 2 min, 3 argmax,
// 4 argmin (ties: lowest index, like PyTorch). SCALE multiplies the result (1/R for mean).
override OP: u32 = 0u;
const WG = 64u;

struct Params { outer: u32, r: u32, inner: u32, offIn: u32, scale: f32 }

@group(0) @binding(0) var<storage, read> x: array<{{IN_T}}>;
@group(0) @binding(1) var<storage, read_write> out: array<{{OUT_T}}>;
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> sv: array<f32, WG>;
var<workgroup> si: array<u32, WG>;

fn better(a: f32, ia: u32, b: f32, ib: u32) -> bool {
  // true when (b, ib) should replace (a, ia)
  if (OP == 1u || OP == 3u) { return b > a || (b == a && ib < ia) || (b != b && a == a); }
  return b < a || (b == a && ib < ia) || (b != b && a == a);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let o = wid.x + wid.y * nwg.x;
  if (o >= p.outer * p.inner) { return; }  // uniform per workgroup
  let base = p.offIn + (o / p.inner) * p.r * p.inner + o % p.inner;
  var acc = 0.0;
  var idx = 0xffffffffu;
  if (OP != 0u) { acc = select(0x1.fffffep+127, -0x1.fffffep+127, OP == 1u || OP == 3u); }
  for (var k = lid; k < p.r; k += WG) {
    let v = f32(x[base + k * p.inner]);
    if (OP == 0u) { acc += v; } else if (idx == 0xffffffffu || better(acc, idx, v, k)) { acc = v; idx = k; }
  }
  sv[lid] = acc;
  si[lid] = idx;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      if (OP == 0u) { sv[lid] += sv[lid + s]; }
      else if (si[lid + s] != 0xffffffffu && (si[lid] == 0xffffffffu || better(sv[lid], si[lid], sv[lid + s], si[lid + s]))) {
        sv[lid] = sv[lid + s];
        si[lid] = si[lid + s];
      }
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    if (OP >= 3u) { out[o] = {{OUT_T}}(si[0]); } else { out[o] = {{OUT_T}}(sv[0] * p.scale); }
  }
}
