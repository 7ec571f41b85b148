// Embedding lookup (gather) and its weight gradient, a deterministic scatter-add without
// float atomics: the positions of the ids are bucketed by vocabulary row (a counting sort),
// then each gradient element sums its row's bucket in position order.
//   gather      out[i, :] = table[ids[i], :]        (ids outside [0, V) give zero rows)
//   count       counts[v] = #{i : ids[i] = v}       (u32 atomics; counts zeroed first)
//   scan        starts = exclusive prefix sum of counts, starts[V] = total (one workgroup)
//   place       positions of each bucket, in arbitrary order (atomics consume counts)
//   sort        each bucket in increasing position: a position's rank is the number of
//               smaller positions in its bucket (work Σ bucket², small for real id streams)
//   accumulate  grad[v, d] = Σ dy[i, d] over bucket v, in position order
const WG = 256u;

struct Params {
  n: u32,      // ids
  dim: u32,    // D, the row length
  vocab: u32,  // V, the table's rows
  offIds: u32, offTable: u32, offG: u32,  // element offsets of ids, table, dy in their bindings
}

// Bindings per entry point ((w) = written):
//   gather      ids0 table1 out2(w)                   params3
//   count       ids0 counts1(atomic)                   params2
//   scan        counts0 starts1(w)                     params2
//   place       ids0 counts1(atomic) starts2 pos3(w)  params4
//   sort        ids0 pos1 starts2 pos3(w)              params4
//   accumulate  dy0 pos1 starts2 grad3(w)              params4
@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> table: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> rows: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> counts: array<atomic<u32>>;
@group(0) @binding(0) var<storage, read> countsIn: array<u32>;
@group(0) @binding(1) var<storage, read_write> startsOut: array<u32>;
@group(0) @binding(2) var<storage, read> starts: array<u32>;
@group(0) @binding(1) var<storage, read> pos: array<u32>;
@group(0) @binding(3) var<storage, read_write> posOut: array<u32>;
@group(0) @binding(0) var<storage, read> dy: array<{{T}}>;
@group(0) @binding(3) var<storage, read_write> grad: array<{{T}}>;
@group(0) @binding(2) var<uniform> p2: Params;
@group(0) @binding(3) var<uniform> p3: Params;
@group(0) @binding(4) var<uniform> p4: Params;

fn linearId(gid: vec3<u32>, nwg: vec3<u32>) -> u32 { return gid.x + gid.y * nwg.x * WG; }
fn validId(q: Params, id: i32) -> bool { return id >= 0 && u32(id) < q.vocab; }

@compute @workgroup_size(WG)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let q = p3;
  let li = linearId(gid, nwg);
  if (li >= q.n * q.dim) { return; }
  let id = ids[q.offIds + li / q.dim];
  var v = {{T}}(0);
  if (validId(q, id)) { v = table[q.offTable + u32(id) * q.dim + li % q.dim]; }
  rows[li] = v;
}

@compute @workgroup_size(WG)
fn count(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let q = p2;
  let i = linearId(gid, nwg);
  if (i >= q.n) { return; }
  let id = ids[q.offIds + i];
  if (validId(q, id)) { atomicAdd(&counts[u32(id)], 1u); }
}

var<workgroup> sums: array<u32, WG>;

// Each thread scans a contiguous block of V / WG counts; the block totals are scanned in
// workgroup memory (Hillis-Steele).
@compute @workgroup_size(WG)
fn scan(@builtin(local_invocation_index) lid: u32) {
  let q = p2;
  let per = (q.vocab + WG - 1u) / WG;
  let v0 = min(lid * per, q.vocab);
  let v1 = min(v0 + per, q.vocab);
  var total = 0u;
  for (var v = v0; v < v1; v++) { total += countsIn[v]; }
  sums[lid] = total;
  workgroupBarrier();
  for (var off = 1u; off < WG; off <<= 1u) {
    var t = 0u;
    if (lid >= off) { t = sums[lid - off]; }
    workgroupBarrier();
    sums[lid] += t;
    workgroupBarrier();
  }
  var run = sums[lid] - total;
  for (var v = v0; v < v1; v++) {
    startsOut[v] = run;
    run += countsIn[v];
  }
  if (lid == WG - 1u) { startsOut[q.vocab] = sums[lid]; }
}

@compute @workgroup_size(WG)
fn place(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let q = p4;
  let i = linearId(gid, nwg);
  if (i >= q.n) { return; }
  let id = ids[q.offIds + i];
  if (validId(q, id)) { posOut[starts[u32(id)] + atomicSub(&counts[u32(id)], 1u) - 1u] = i; }
}

@compute @workgroup_size(WG)
fn sort(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let q = p4;
  let i = linearId(gid, nwg);
  if (i >= q.n) { return; }
  let id = ids[q.offIds + i];
  if (!validId(q, id)) { return; }
  let s = starts[u32(id)];
  let e = starts[u32(id) + 1u];
  var rank = 0u;
  for (var k = s; k < e; k++) { rank += select(0u, 1u, pos[k] < i); }
  posOut[s + rank] = i;
}

// One thread per (v, d): neighbouring threads share v and read one dy row together.
@compute @workgroup_size(WG)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let q = p4;
  let li = linearId(gid, nwg);
  if (li >= q.vocab * q.dim) { return; }
  let v = li / q.dim;
  let d = li % q.dim;
  var acc = 0.0;
  for (var k = starts[v]; k < starts[v + 1u]; k++) { acc += f32(dy[q.offG + pos[k] * q.dim + d]); }
  grad[li] = {{T}}(acc);
}
