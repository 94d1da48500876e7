// CPU kernels of the Binary Concrete adjacency sampler: one graph per task of at::parallel_for.
//
// Forward, per graph: z of each row's candidate pairs (Philox blocks drawn a row chunk at a time, all rounds of a
// chunk vectorised), turned into samples straight into the output row; with a budget, z of the whole graph goes to
// a per-thread buffer first and the threshold is found by a radix select on order-preserving integer keys. The
// lower triangle of a symmetric graph is then mirrored from the upper one, and only the diagonal and the padding
// are filled: no element is written twice and nothing the size of the batch is allocated besides the output.
//
// Backward: from the relaxed output (grad = dy * y (1 - y) / tau, nothing recomputed), or, for hard samples and
// half/bfloat16 outputs, recomputing z from (seed, offset) and the budget thresholds.
//
// Profile (perf, one thread, (64, 128, 128) relaxed, ~4.7 ms): arithmetic-bound, not allocation-bound: ~73% in
// noisy_logits (Philox and the float64 log, vectorised), ~17% in write_samples (the float sigmoid), ~10% mirroring
// and filling the diagonal and padding; the only allocation of the batch's size is the output itself.

// Every backend rounds each float operation of the sampler alike (binary_concrete.h): no a * b + c contraction.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "cpu/binary_concrete_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "binary_concrete.h"

namespace dfkd_fast {
namespace {

// The per-element loops are compiled for AVX2 as well as the baseline and picked at load time (GCC function
// multiversioning): 4 doubles / 8 floats a vector instead of 2 / 4. AVX2 without FMA: nothing is contracted.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DFKD_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DFKD_VECTOR_CLONES
#endif

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

int64_t grain_for(int64_t n) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(n * n, 1));
}

int64_t checked_nodes(const int64_t* num_nodes, int64_t b, int64_t n) {
  const int64_t nodes = num_nodes[b];
  TORCH_CHECK(nodes >= 0 && nodes <= n, "binary_concrete: num_nodes[", b, "] = ", nodes,
              " is outside [0, n = ", n, "]");
  return nodes;
}

// The first column of row i that the sampler draws.
int64_t row_begin(int64_t i, bool symmetric) {
  return symmetric ? i + 1 : 0;
}

// z = logit + noise of the flat elements [first, first + count) into z[0, count): Philox a chunk of blocks at a
// time (each block drawn once), then the noise (a scalar log per element), then the sum.
template <typename scalar_t, typename acc_t>
DFKD_VECTOR_CLONES void noisy_logits(acc_t* z, const scalar_t* logits, uint64_t first, int64_t count, uint64_t seed,
                                     uint64_t offset) {
  static_assert(kPhiloxMaxBlocks % 2 == 0, "whole vectors of 8 words");
  uint32_t words[4 * kPhiloxMaxBlocks];
  acc_t noise[4 * kPhiloxMaxBlocks];
  for (int64_t done = 0; done < count;) {
    const uint64_t e0 = first + static_cast<uint64_t>(done);
    const int skip = static_cast<int>(e0 & 3);
    const int m = static_cast<int>(std::min<int64_t>(count - done, 4 * kPhiloxMaxBlocks - skip));
    // An even number of blocks: the noise of all their words is computed in whole vectors, without a scalar tail
    // (a few unused words cost less than the tail's scalar logs).
    const int blocks = ((skip + m + 3) / 4 + 1) & ~1;
    philox_blocks(e0 >> 2, blocks, seed, offset, words);
    for (int t = 0; t < 4 * blocks; ++t) noise[t] = bc::logistic<acc_t>(philox_uniform(words[t]));
    for (int t = 0; t < m; ++t) z[done + t] = static_cast<acc_t>(logits[done + t]) + noise[skip + t];
    done += m;
  }
}

// Samples of one row segment from its z (branch-free loops, so that they vectorise); `first_idx` is the flat index
// within the graph of z[0], for the budget comparison.
template <typename scalar_t, typename acc_t>
DFKD_VECTOR_CLONES void write_samples(scalar_t* out, const acc_t* z, int64_t count, acc_t tau, bool hard, bool budget,
                                      acc_t tz, int64_t ti, int64_t first_idx) {
  if (hard) {
    for (int64_t t = 0; t < count; ++t) {
      const bool keep = !budget || bc::kept<acc_t>(z[t], first_idx + t, tz, ti);
      out[t] = static_cast<scalar_t>(keep && z[t] > acc_t(0) ? acc_t(1) : acc_t(0));
    }
    return;
  }
  if (!budget) {
    for (int64_t t = 0; t < count; ++t) out[t] = static_cast<scalar_t>(bc::relaxed<acc_t>(z[t], tau));
    return;
  }
  for (int64_t t = 0; t < count; ++t) {
    const acc_t y = bc::relaxed<acc_t>(z[t], tau);
    out[t] = static_cast<scalar_t>(bc::kept<acc_t>(z[t], first_idx + t, tz, ti) ? y : acc_t(0));
  }
}

// Order-preserving unsigned keys of z (larger z, larger key; -0 folded into +0, so that key equality is z equality).
uint32_t ordered_key(float z) {
  uint32_t u;
  z = z == 0.f ? 0.f : z;
  std::memcpy(&u, &z, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
uint64_t ordered_key(double z) {
  uint64_t u;
  z = z == 0.0 ? 0.0 : z;
  std::memcpy(&u, &z, sizeof u);
  return (u & (1ull << 63)) ? ~u : (u | (1ull << 63));
}
template <typename acc_t, typename key_t>
acc_t key_value(key_t key) {
  constexpr key_t sign = key_t(1) << (sizeof(key_t) * 8 - 1);
  const key_t u = (key & sign) ? (key & ~sign) : ~key;
  acc_t z;
  std::memcpy(&z, &u, sizeof z);
  return z;
}

// The k-th largest (1-based) of keys[0, count): a radix select, 11 bits a pass, each pass keeping only the keys of
// the chosen digit (in place, in `keys`). Returns the key and sets `rank` to k's rank among the keys equal to it.
template <typename key_t>
key_t kth_largest(key_t* keys, int64_t count, int64_t k, int64_t& rank) {
  constexpr int kDigit = 11;
  key_t prefix = 0;
  int64_t hist[1 << kDigit];
  for (int shift = static_cast<int>(sizeof(key_t) * 8); shift > 0;) {
    const int width = std::min(shift, kDigit);
    shift -= width;
    const key_t mask = (key_t(1) << width) - 1;
    std::fill(hist, hist + (1 << width), int64_t(0));
    for (int64_t t = 0; t < count; ++t) ++hist[(keys[t] >> shift) & mask];
    key_t bin = mask;
    while (hist[bin] < k) k -= hist[bin--];
    prefix |= bin << shift;
    int64_t kept = 0;
    for (int64_t t = 0; t < count; ++t) {
      if (((keys[t] >> shift) & mask) == bin) keys[kept++] = keys[t];
    }
    count = kept;
  }
  rank = k;
  return prefix;
}

// The budget threshold (z_t, index_t) of one graph: its k-th candidate in the order (larger z, lower index).
// z holds the graph's candidates at their flat indices.
template <typename acc_t, typename key_t>
void budget_threshold(const acc_t* z, int64_t n, int64_t nodes, bool symmetric, int64_t k, std::vector<key_t>& keys,
                      acc_t& threshold_z, int64_t& threshold_idx) {
  const int64_t pairs = symmetric ? nodes * (nodes - 1) / 2 : nodes * (nodes - 1);
  if (k <= 0) {
    threshold_z = std::numeric_limits<acc_t>::infinity();
    threshold_idx = -1;
    return;
  }
  if (k >= pairs) return;  // keep every candidate: the caller's default (-inf, INT64_MAX)
  keys.resize(pairs);
  int64_t m = 0;
  for (int64_t i = 0; i < nodes; ++i) {
    const acc_t* row = z + i * n;
    for (int64_t j = row_begin(i, symmetric); j < nodes; ++j) {
      if (j != i) keys[m++] = ordered_key(row[j]);
    }
  }
  int64_t need = 0;  // how many of the candidates equal to z_t are kept: the first ones in index order
  const acc_t zk = key_value<acc_t>(kth_largest(keys.data(), pairs, k, need));
  threshold_z = zk;
  for (int64_t i = 0; i < nodes && need > 0; ++i) {
    for (int64_t j = row_begin(i, symmetric); j < nodes; ++j) {
      if (j != i && z[i * n + j] == zk && --need == 0) {
        threshold_idx = i * n + j;
        break;
      }
    }
  }
}

// The rest of a graph's output once the drawn pairs are written: the mirrored lower triangle (symmetric), the
// diagonal and the padding.
template <typename scalar_t>
void finish_graph(scalar_t* g, int64_t n, int64_t nodes, bool symmetric, bool self_loops) {
  for (int64_t i = 0; i < n; ++i) {
    scalar_t* row = g + i * n;
    if (i >= nodes) {
      std::fill(row, row + n, scalar_t(0));
      continue;
    }
    if (symmetric) {
      for (int64_t j = 0; j < i; ++j) row[j] = g[j * n + i];
    }
    row[i] = self_loops ? scalar_t(1) : scalar_t(0);
    std::fill(row + nodes, row + n, scalar_t(0));
  }
}

template <typename scalar_t>
void fwd_kernel(scalar_t* out, acc_type<scalar_t>* threshold_z, int64_t* threshold_idx, const scalar_t* logits,
                const int64_t* num_nodes, const int64_t* budget, int64_t batch, int64_t n, double tau_, uint64_t seed,
                uint64_t offset, bool symmetric, bool hard, bool self_loops) {
  using acc_t = acc_type<scalar_t>;
  const acc_t tau = static_cast<acc_t>(tau_);
  const int64_t nn = n * n;
  at::parallel_for(0, batch, grain_for(n), [&](int64_t begin, int64_t end) {
    // z of a row, or with a budget of the whole graph (candidates at their flat index, the rest unused).
    std::vector<acc_t> z(budget != nullptr ? nn : n);
    std::vector<decltype(ordered_key(acc_t(0)))> keys;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t nodes = checked_nodes(num_nodes, b, n);
      const int64_t base = b * nn;
      scalar_t* g = out + base;
      acc_t tz = -std::numeric_limits<acc_t>::infinity();
      int64_t ti = std::numeric_limits<int64_t>::max();
      if (budget != nullptr) {
        for (int64_t i = 0; i < nodes; ++i) {
          const int64_t e = i * n + row_begin(i, symmetric);
          noisy_logits(z.data() + e, logits + base + e, static_cast<uint64_t>(base + e),
                       nodes - row_begin(i, symmetric), seed, offset);
        }
        budget_threshold(z.data(), n, nodes, symmetric, budget[b], keys, tz, ti);
      }
      threshold_z[b] = tz;
      threshold_idx[b] = ti;
      for (int64_t i = 0; i < nodes; ++i) {
        const int64_t e = i * n + row_begin(i, symmetric);
        const int64_t count = nodes - row_begin(i, symmetric);
        const acc_t* zr = z.data();
        if (budget != nullptr) {
          zr += e;
        } else {
          noisy_logits(z.data(), logits + base + e, static_cast<uint64_t>(base + e), count, seed, offset);
        }
        write_samples(g + e, zr, count, tau, hard, budget != nullptr, tz, ti, e);
      }
      finish_graph(g, n, nodes, symmetric, self_loops);
    }
  });
}

// Backward by recomputing z (hard samples, half/bfloat16): the kept pairs from the thresholds.
template <typename scalar_t>
void bwd_kernel(scalar_t* grad_logits, const scalar_t* grad, const scalar_t* logits, const int64_t* num_nodes,
                const acc_type<scalar_t>* threshold_z, const int64_t* threshold_idx, int64_t batch, int64_t n,
                double tau_, uint64_t seed, uint64_t offset, bool symmetric) {
  using acc_t = acc_type<scalar_t>;
  const acc_t tau = static_cast<acc_t>(tau_);
  const int64_t nn = n * n;
  at::parallel_for(0, batch, grain_for(n), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> z(n);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t nodes = checked_nodes(num_nodes, b, n);
      const int64_t base = b * nn;
      const acc_t tz = threshold_z[b];
      const int64_t ti = threshold_idx[b];
      for (int64_t i = 0; i < n; ++i) {
        scalar_t* row = grad_logits + base + i * n;
        if (i >= nodes) {
          std::fill(row, row + n, scalar_t(0));
          continue;
        }
        const int64_t j_begin = std::min(row_begin(i, symmetric), nodes);
        noisy_logits(z.data() + j_begin, logits + base + i * n + j_begin,
                     static_cast<uint64_t>(base + i * n + j_begin), nodes - j_begin, seed, offset);
        std::fill(row, row + j_begin, scalar_t(0));
        for (int64_t j = j_begin; j < nodes; ++j) {
          acc_t d = 0;
          if (j != i && bc::kept<acc_t>(z[j], i * n + j, tz, ti)) {
            const acc_t scale = bc::grad_scale<acc_t>(bc::relaxed<acc_t>(z[j], tau), tau);
            d = static_cast<acc_t>(grad[base + i * n + j]) * scale;
            // The mirrored entry (j, i) of a symmetric graph is the same variable.
            if (symmetric) d += static_cast<acc_t>(grad[base + j * n + i]) * scale;
          }
          row[j] = static_cast<scalar_t>(d);
        }
        std::fill(row + nodes, row + n, scalar_t(0));
      }
    }
  });
}

// Backward from the relaxed output y: dlogit = dy * y (1 - y) / tau, the same expression (and for float32/float64
// the same bits) as bwd_kernel's. Pairs that are not drawn need no mask: padding and dropped pairs have y = 0, the
// diagonal y in {0, 1}; only the lower triangle of a symmetric graph (which mirrors the upper one) is zeroed.
template <typename scalar_t>
void bwd_sample_kernel(scalar_t* grad_logits, const scalar_t* grad, const scalar_t* sample, int64_t batch, int64_t n,
                       double tau_, bool symmetric) {
  const scalar_t tau = static_cast<scalar_t>(tau_);
  const int64_t nn = n * n;
  at::parallel_for(0, batch, grain_for(n), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t base = b * nn;
      for (int64_t i = 0; i < n; ++i) {
        scalar_t* row = grad_logits + base + i * n;
        const scalar_t* y = sample + base + i * n;
        const scalar_t* g = grad + base + i * n;
        if (!symmetric) {
          for (int64_t j = 0; j < n; ++j) row[j] = g[j] * bc::grad_scale<scalar_t>(y[j], tau);
          continue;
        }
        std::fill(row, row + i + 1, scalar_t(0));
        const scalar_t* g_col = grad + base + i;  // g_col[j * n] = grad[j][i]
        for (int64_t j = i + 1; j < n; ++j) {
          const scalar_t scale = bc::grad_scale<scalar_t>(y[j], tau);
          row[j] = g[j] * scale + g_col[j * n] * scale;
        }
      }
    }
  });
}

}  // namespace

void binary_concrete_fwd_cpu(const at::Tensor& out, const at::Tensor& threshold_z, const at::Tensor& threshold_idx,
                             const at::Tensor& logits, const at::Tensor& num_nodes, const at::Tensor* budget,
                             double tau, uint64_t seed, uint64_t offset, bool symmetric, bool hard, bool self_loops) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "binary_concrete_fwd_cpu", [&] {
    fwd_kernel<scalar_t>(out.data_ptr<scalar_t>(), threshold_z.data_ptr<acc_type<scalar_t>>(),
                         threshold_idx.data_ptr<int64_t>(), logits.const_data_ptr<scalar_t>(),
                         num_nodes.const_data_ptr<int64_t>(),
                         budget != nullptr ? budget->const_data_ptr<int64_t>() : nullptr, logits.size(0),
                         logits.size(2), tau, seed, offset, symmetric, hard, self_loops);
  });
}

void binary_concrete_bwd_cpu(const at::Tensor& grad_logits, const at::Tensor& grad, const at::Tensor& logits,
                             const at::Tensor& num_nodes, const at::Tensor& threshold_z,
                             const at::Tensor& threshold_idx, double tau, uint64_t seed, uint64_t offset,
                             bool symmetric) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "binary_concrete_bwd_cpu", [&] {
    bwd_kernel<scalar_t>(grad_logits.data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                         logits.const_data_ptr<scalar_t>(), num_nodes.const_data_ptr<int64_t>(),
                         threshold_z.const_data_ptr<acc_type<scalar_t>>(), threshold_idx.const_data_ptr<int64_t>(),
                         logits.size(0), logits.size(2), tau, seed, offset, symmetric);
  });
}

void binary_concrete_bwd_sample_cpu(const at::Tensor& grad_logits, const at::Tensor& grad, const at::Tensor& sample,
                                    double tau, bool symmetric) {
  AT_DISPATCH_FLOATING_TYPES(sample.scalar_type(), "binary_concrete_bwd_sample_cpu", [&] {
    bwd_sample_kernel<scalar_t>(grad_logits.data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                                sample.const_data_ptr<scalar_t>(), sample.size(0), sample.size(2), tau, symmetric);
  });
}

}  // namespace dfkd_fast
