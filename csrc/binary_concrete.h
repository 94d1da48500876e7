// Binary Concrete adjacency sampling: the per-element maths shared by the CPU and CUDA kernels, so both compute the
// same numbers as dfkd_fast/reference/binary_concrete.py.
//
//   u ~ Philox(seed, offset)[e]   L = log u - log(1 - u)   (in double, rounded once to acc_t)
//   z = logit + L (acc_t)         y = sigmoid(z / tau)     hard = 1[z > 0]
//   budget: a candidate pair is kept iff (z, index) ranks at or before the graph's threshold (z_t, index_t) in the
//   order "larger z first, then lower flat index"; (-inf, INT64_MAX) keeps everything, (+inf, -1) nothing.
//   gradient: dlogit = dy * y * (1 - y) / tau on kept pairs (both mirrored dy of a symmetric pair).
// acc_t is float (half, bfloat16 and float logits) or double (double logits).
#pragma once

#include <cmath>
#include <cstdint>

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

// Logistic noise of a uniform, evaluated in double and rounded once, as the reference's log(u) - log1p(-u). One log
// of u / (1 - u) costs half as much: 1 - u is exact and the quotient is correctly rounded, so the double values agree
// to ~1e-16, and in float they are equal for all 2^23 uniforms (checked exhaustively against torch on CPU).
template <typename acc_t>
DFKD_HOST_DEVICE acc_t logistic(double u) {
#if defined(__CUDA_ARCH__)
  return static_cast<acc_t>(::log(u / (1.0 - u)));
#else
  return static_cast<acc_t>(std::log(u / (1.0 - u)));
#endif
}

// The relaxed value sigmoid(z / tau), written as the reference's 1 / (1 + exp(-x)).
template <typename acc_t>
DFKD_HOST_DEVICE acc_t relaxed(acc_t z, acc_t tau) {
  return acc_t(1) / (acc_t(1) + exp_<acc_t>(-(z / tau)));
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

// d y / d logit = y * (1 - y) / tau (the gradient is dy times this).
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
