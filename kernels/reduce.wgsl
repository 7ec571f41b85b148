// Reduction over the middle axis of a [outer, R, inner] view. OP: 0 sum, 1 max, 2 min,
// 3 argmax, 4 argmin (ties: lowest index, like PyTorch). SCALE multiplies the result.
// ACC_T is f32 for float inputs and the input's own type for integers (exact past 2^24).
// Two entry points:
//   rows:    one workgroup per output, threads stride over R, then a shared-memory tree;
//            for long axes with few outputs (coalesced when inner == 1).
//   columns: one thread per output walking R; adjacent threads read adjacent elements
//            when inner > 1 (coalesced), and short axes leave no thread idle.
override OP: u32 = 0u;
const WG = 64u;

struct Params { outer: u32, r: u32, inner: u32, offIn: u32, scale: f32 }

@group(0) @binding(0) var<storage, read> x: array<{{IN_T}}>;
@group(0) @binding(1) var<storage, read_write> out: array<{{OUT_T}}>;
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> sv: array<{{ACC_T}}, WG>;
var<workgroup> si: array<u32, WG>;

// An accumulator: value and index (NONE until the first element; max/min take that one
// unconditionally, so the start value 0 never competes).
const NONE = 0xffffffffu;
struct Acc { v: {{ACC_T}}, i: u32 }

fn better(a: Acc, b: Acc) -> bool {
  // true when b should replace a
  if (b.i == NONE) { return false; }
  if (a.i == NONE) { return true; }
  if (OP == 1u || OP == 3u) { return b.v > a.v || (b.v == a.v && b.i < a.i) || (b.v != b.v && a.v == a.v); }
  return b.v < a.v || (b.v == a.v && b.i < a.i) || (b.v != b.v && a.v == a.v);
}

fn combine(a: Acc, b: Acc) -> Acc {
  if (OP == 0u) { return Acc(a.v + b.v, 0u); }
  if (better(a, b)) { return b; }
  return a;
}

fn element(base: u32, k: u32) -> Acc { return Acc({{ACC_T}}(x[base + k * p.inner]), k); }

fn baseOf(o: u32) -> u32 { return p.offIn + (o / p.inner) * p.r * p.inner + o % p.inner; }

fn store(o: u32, a: Acc) {
  if (OP >= 3u) { out[o] = {{OUT_T}}(a.i); }
  else if (p.scale == 1.0) { out[o] = {{OUT_T}}(a.v); }
  else { out[o] = {{OUT_T}}(f32(a.v) * p.scale); }
}

@compute @workgroup_size(WG)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let o = wid.x + wid.y * nwg.x;
  if (o >= p.outer * p.inner) { return; }  // uniform per workgroup
  let base = baseOf(o);
  var acc = Acc({{ACC_T}}(0), NONE);
  for (var k = lid; k < p.r; k += WG) { acc = combine(acc, element(base, k)); }
  sv[lid] = acc.v;
  si[lid] = acc.i;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let c = combine(Acc(sv[lid], si[lid]), Acc(sv[lid + s], si[lid + s]));
      sv[lid] = c.v;
      si[lid] = c.i;
    }
    workgroupBarrier();
  }
  if (lid == 0u) { store(o, Acc(sv[0], si[0])); }
}

@compute @workgroup_size(WG)
fn columns(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let o = gid.x + gid.y * nwg.x * WG;
  if (o >= p.outer * p.inner) { return; }
  let base = baseOf(o);
  var acc = Acc({{ACC_T}}(0), NONE);
  for (var k = 0u; k < p.r; k++) { acc = combine(acc, element(base, k)); }
  store(o, acc);
}
