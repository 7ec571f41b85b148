// out[off + i] = T(value + step * i): fill (step 0) and arange. CT, the type of value and
// step, is T's integer type for integer tensors (exact past 2^24) and f32 for floats.
struct Params { n: u32, off: u32, value: {{CT}}, step: {{CT}} }

@group(0) @binding(0) var<storage, read_write> out: array<{{T}}>;
@group(0) @binding(1) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= p.n) { return; }
  out[p.off + i] = {{T}}(p.value + p.step * {{CT}}(i));
}
