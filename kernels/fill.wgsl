// out[off + i] = T(value + step * i): fill (step 0) and arange.
struct Params { n: u32, off: u32, value: f32, step: f32 }

@group(0) @binding(0) var<storage, read_write> out: array<{{T}}>;
@group(0) @binding(1) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= p.n) { return; }
  out[p.off + i] = {{T}}(p.value + p.step * f32(i));
}
