// Binary Concrete adjacency sampling: the per-element maths shared by the CPU and CUDA kernels, so both compute the
// same numbers as dfkd_fast/reference/binary_concrete.py.
//
//   u ~ Philox(seed, offset)[e]   L = log(u / (1 - u))     (in double, rounded once to acc_t)
//   z = logit + L (acc_t)         y = sigmoid(z / tau)     hard = 1[z > 0]
//   L (log_pos) and, for float, y (exp_neg) use only correctly rounded arithmetic: the same bits in the reference,
//   the CPU kernel and the CUDA kernel.
//   budget: a candidate pair is kept iff (z, index) ranks at or before the graph's threshold (z_t, index_t) in the
//   order "larger z first, then lower flat index"; (-inf, INT64_MAX) keeps everything, (+inf, -1) nothing.
//   gradient: dlogit = dy * y * (1 - y) / tau on kept pairs (both mirrored dy of a symmetric pair).
// acc_t is float (half, bfloat16 and float logits) or double (double logits).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "philox.h"

namespace dfkd_fast {
namespace bc {

template <typename acc_t>
DFKD_HOST_DEVICE acc_t exp_(acc_t x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);  // the float overload is expf
#else
  return std::exp(x);
#endif
}

// float arithmetic that is never contracted into fused multiply-adds (nvcc contracts a * b + c by default; the CPU
// kernels are compiled with contraction off), so that every backend rounds each step alike.
DFKD_HOST_DEVICE float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
DFKD_HOST_DEVICE float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
DFKD_HOST_DEVICE float fsub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
DFKD_HOST_DEVICE float fdiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
DFKD_HOST_DEVICE float bits_to_float(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}
DFKD_HOST_DEVICE int32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
#endif
}

DFKD_HOST_DEVICE double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
DFKD_HOST_DEVICE double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
DFKD_HOST_DEVICE double dsub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
DFKD_HOST_DEVICE double ddiv(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
DFKD_HOST_DEVICE double bits_to_double(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
#endif
}
DFKD_HOST_DEVICE uint64_t double_to_bits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  return bits;
#endif
}

// log(q) for a positive normal double, fdlibm's (musl's) __ieee754_log (< 1 ulp) with only correctly rounded
// +, -, *, / and integer operations on the bits, so that the CPU kernels (vectorised), the CUDA kernels and the
// plain-PyTorch transcription dfkd_fast.reference.binary_concrete.log_f64 give the same bits.
DFKD_HOST_DEVICE double log_pos(double q) {
  // q = 2^k * f with f in [sqrt(2)/2, sqrt(2)), from the high word of q.
  const uint64_t bits = double_to_bits(q);
  const uint64_t hx = (bits >> 32) + (0x3ff00000u - 0x3fe6a09eu);
  // k + 1024 >= 0 is exact in the low mantissa bits of 2^52: dk = k as a double, without an int -> double conversion.
  const double dk = dsub(bits_to_double(0x4330000000000000ull + (hx >> 20) - 0x3ffu + 1024u), 4503599627371520.0);
  const double f = dsub(bits_to_double((((hx & 0xfffffu) + 0x3fe6a09eu) << 32) | (bits & 0xffffffffu)), 1.0);
  const double hfsq = dmul(dmul(0.5, f), f);
  const double s = ddiv(f, dadd(2.0, f));
  const double z = dmul(s, s);
  const double w = dmul(z, z);
  const double t1 = dmul(w, dadd(3.999999999940941908e-01,
                                 dmul(w, dadd(2.222219843214978396e-01, dmul(w, 1.531383769920937332e-01)))));
  const double t2 = dmul(z, dadd(6.666666666666735130e-01,
                                 dmul(w, dadd(2.857142874366239149e-01,
                                              dmul(w, dadd(1.818357216161805012e-01,
                                                           dmul(w, 1.479819860511658591e-01)))))));
  const double r = dadd(t2, t1);
  // s (hfsq + R) + k ln2_lo - hfsq + f + k ln2_hi, left to right.
  const double lo = dadd(dmul(s, dadd(hfsq, r)), dmul(dk, 1.90821492927058770002e-10));
  return dadd(dadd(dsub(lo, hfsq), f), dmul(dk, 6.93147180369123816490e-01));
}

// Logistic noise L = log(u / (1 - u)) of a Philox uniform (binary_concrete.h's u has 24 significant bits, so 1 - u
// and hence the quotient's only rounding are exact or correctly rounded), in double, rounded once to acc_t. Within
// 1 ulp of float64's log(u) - log1p(-u); the same bits on every backend.
template <typename acc_t>
DFKD_HOST_DEVICE acc_t logistic(double u) {
  return static_cast<acc_t>(log_pos(ddiv(u, dsub(1.0, u))));
}

// exp(-a) for a >= 0 in float32 from correctly rounded +, -, * only (Cephes' expf: Cody-Waite reduction by ln 2 and
// a degree-7 polynomial, < 2 ulp), so that it gives the same bits on every device and in the plain-PyTorch
// transcription dfkd_fast.reference.binary_concrete.exp_neg_f32; 0 beyond a = 87 (where exp(-a) < 2^-125).
// Branch-free, without float comparisons or float -> int conversions (which may trap), so that the CPU loops
// vectorise.
constexpr float kExpLimit = 87.f;
constexpr float kRoundMagic = 12582912.f;  // 1.5 * 2^23: adding it rounds |v| < 2^22 to an integer, to nearest even
DFKD_HOST_DEVICE float exp_neg(float a) {
  // min(a, 87) on the bits (monotone for a >= 0), and the mask of a < 87, in integer arithmetic: a float comparison
  // may trap, and a select lets the compiler split the loop body into branches; either stops vectorisation.
  const int32_t over = float_to_bits(a) - float_to_bits(kExpLimit);
  const int32_t below = over >> 31;  // -1 where a < 87, else 0
  const float x = -bits_to_float(float_to_bits(kExpLimit) + (over & below));  // a = inf or NaN gives -87: no NaN
  // k = round(x / ln 2) in [-126, 0]: the low mantissa bits of km hold k + 2^22, exactly.
  const float km = fadd(fmul(x, 1.44269504088896341f), kRoundMagic);
  const float k = fsub(km, kRoundMagic);
  const float r = fsub(fsub(x, fmul(k, 0.693359375f)), fmul(k, -2.12194440e-4f));
  float p = 1.9875691500e-4f;
  p = fadd(fmul(p, r), 1.3981999507e-3f);
  p = fadd(fmul(p, r), 8.3334519073e-3f);
  p = fadd(fmul(p, r), 4.1665795894e-2f);
  p = fadd(fmul(p, r), 1.6666665459e-1f);
  p = fadd(fmul(p, r), 5.0000001201e-1f);
  p = fadd(fadd(fmul(p, fmul(r, r)), r), 1.f);
  // 2^k (k >= -126, a normal float) from the bits of km.
  const float scale = bits_to_float((float_to_bits(km) - float_to_bits(kRoundMagic) + 127) << 23);
  // Computed unconditionally and multiplied by 0 or 1 (exact): a select after a trapping multiply would be a branch.
  return fmul(fmul(p, scale), bits_to_float(float_to_bits(1.f) & below));
}

// The relaxed value sigmoid(z / tau). float: 1 / (1 + e) or e / (1 + e) with e = exp(-|z / tau|) from exp_neg, the
// same bits on every backend; double: the reference's 1 / (1 + exp(-x)) with the platform's exp (agrees to ~1e-16).
template <typename acc_t>
DFKD_HOST_DEVICE acc_t relaxed(acc_t z, acc_t tau) {
  return acc_t(1) / (acc_t(1) + exp_<acc_t>(-(z / tau)));
}
template <>
DFKD_HOST_DEVICE float relaxed<float>(float z, float tau) {
  const float t = fdiv(z, tau);
  const float e = exp_neg(bits_to_float(float_to_bits(t) & 0x7fffffff));  // |t|
  const float d = fadd(1.f, e);
  // 1 where t >= 0, else e, from the sign bit (t = -0 gives e / (1 + e) = 1/2 as well).
  const int32_t negative = float_to_bits(t) >> 31;
  return fdiv(bits_to_float((float_to_bits(1.f) & ~negative) | (float_to_bits(e) & negative)), d);
}

// Whether a candidate with perturbed logit z and flat index idx (within its graph) survives the budget.
template <typename acc_t>
DFKD_HOST_DEVICE bool kept(acc_t z, int64_t idx, acc_t threshold_z, int64_t threshold_idx) {
  return z > threshold_z || (z == threshold_z && idx <= threshold_idx);
}

// The output of a kept pair: the relaxed value, or the hard sample 1[z > 0] (straight-through in backward).
template <typename acc_t>
DFKD_HOST_DEVICE acc_t sample(acc_t z, acc_t tau, bool hard) {
  if (hard) return z > acc_t(0) ? acc_t(1) : acc_t(0);
  return relaxed<acc_t>(z, tau);
}

// d y / d logit = y * (1 - y) / tau (the gradient is dy times this): a function of the relaxed output alone, so the
// backward of a relaxed sample reads the output instead of recomputing the noise.
template <typename acc_t>
DFKD_HOST_DEVICE acc_t grad_scale(acc_t y, acc_t tau) {
  return y * (acc_t(1) - y) / tau;
}

// Whether (i, j) is a pair the sampler draws: both nodes valid, off the diagonal, upper triangle if symmetric.
DFKD_HOST_DEVICE bool candidate(int64_t i, int64_t j, int64_t nodes, bool symmetric) {
  return i < nodes && j < nodes && (symmetric ? i < j : i != j);
}

}  // namespace bc
}  // namespace dfkd_fast
