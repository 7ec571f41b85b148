// Shared math and indexing helpers for kernels that #include "common".

// erf with |error| < 1.2e-7 (Numerical Recipes erfc Chebyshev fit); WGSL has no erf.
fn erf_(x: f32) -> f32 {
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.5 * z);
  let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
          t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
  return select(r - 1.0, 1.0 - r, x >= 0.0);
}
fn sigmoid_(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }
// tanh from exp of a non-positive argument: no overflow for large |x|
fn tanh_(x: f32) -> f32 { let e = exp(-2.0 * abs(x)); return sign(x) * (1.0 - e) / (1.0 + e); }
fn gelu_(x: f32) -> f32 { return 0.5 * x * (1.0 + erf_(x * 0.70710678118654752)); }
fn gelu_grad_(x: f32) -> f32 { return 0.5 * (1.0 + erf_(x * 0.70710678118654752)) + x * exp(-0.5 * x * x) * 0.3989422804014327; }
fn gelu_tanh_(x: f32) -> f32 { return 0.5 * x * (1.0 + tanh_(0.7978845608028654 * (x + 0.044715 * x * x * x))); }
fn gelu_tanh_grad_(x: f32) -> f32 {
  let t = tanh_(0.7978845608028654 * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
}
fn silu_(x: f32) -> f32 { return x * sigmoid_(x); }
fn silu_grad_(x: f32) -> f32 { let s = sigmoid_(x); return s * (1.0 + x * (1.0 - s)); }

// Epilogue activations by code: 0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh), 4 silu.
fn activate(x: f32, code: u32) -> f32 {
  switch code {
    case 1u: { return max(x, 0.0); }
    case 2u: { return gelu_(x); }
    case 3u: { return gelu_tanh_(x); }
    case 4u: { return silu_(x); }
    default: { return x; }
  }
}

fn at8(v: array<vec4<u32>, 2>, i: u32) -> u32 { return v[i / 4u][i % 4u]; }

// Philox4x32-10 (Salmon et al. 2011), as cuRAND and PyTorch use it: four random words for
// counter c under key k; a stream is reproducible from (key, counter) alone.
fn mulhilo_(a: u32, b: u32) -> vec2<u32> {
  // 32x32 -> 64-bit product from 16-bit halves (WGSL has no u64)
  let a0 = a & 0xffffu; let a1 = a >> 16u;
  let b0 = b & 0xffffu; let b1 = b >> 16u;
  let lo0 = a0 * b0;
  let mid1 = a1 * b0;
  let mid2 = a0 * b1;
  let hi = a1 * b1;
  let mid = (lo0 >> 16u) + (mid1 & 0xffffu) + (mid2 & 0xffffu);
  let lo = (lo0 & 0xffffu) | (mid << 16u);
  let h = hi + (mid1 >> 16u) + (mid2 >> 16u) + (mid >> 16u);
  return vec2<u32>(h, lo);
}

fn philox_(c0: vec4<u32>, k0: vec2<u32>) -> vec4<u32> {
  var c = c0;
  var k = k0;
  for (var r = 0; r < 10; r++) {
    let p0 = mulhilo_(0xD2511F53u, c.x);
    let p1 = mulhilo_(0xCD9E8D57u, c.z);
    c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
  }
  return c;
}

fn unit_(w: u32) -> f32 { return f32(w >> 8u) * (1.0 / 16777216.0); }  // [0, 1), 24 bits
