// CPU kernels of the Binary Concrete adjacency sampler: one graph per task of at::parallel_for.
//
// Forward, per graph: draw z for the candidate pairs (upper triangle when symmetric) into a per-thread buffer, find
// the budget threshold with std::nth_element, turn kept z into samples in place, then write the [n, n] output row by
// row (mirroring from the buffer). Backward recomputes z from (seed, offset) and reads the thresholds.
#include "cpu/binary_concrete_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "binary_concrete.h"

namespace dfkd_fast {
namespace {

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

// Calls f(i, j) for the candidate pairs of a graph with `nodes` nodes, in increasing flat index i * n + j.
template <typename F>
void for_each_candidate(int64_t nodes, bool symmetric, F&& f) {
  for (int64_t i = 0; i < nodes; ++i) {
    for (int64_t j = symmetric ? i + 1 : 0; j < nodes; ++j) {
      if (j != i) f(i, j);
    }
  }
}

// The budget threshold (z_t, index_t) of one graph: its k-th candidate in the order (larger z, lower index).
template <typename acc_t>
void budget_threshold(const acc_t* z, int64_t n, int64_t nodes, bool symmetric, int64_t k, std::vector<acc_t>& scratch,
                      acc_t& threshold_z, int64_t& threshold_idx) {
  const int64_t pairs = symmetric ? nodes * (nodes - 1) / 2 : nodes * (nodes - 1);
  if (k <= 0) {
    threshold_z = std::numeric_limits<acc_t>::infinity();
    threshold_idx = -1;
    return;
  }
  if (k >= pairs) return;  // keep every candidate: the caller's default (-inf, INT64_MAX)
  scratch.clear();
  for_each_candidate(nodes, symmetric, [&](int64_t i, int64_t j) { scratch.push_back(z[i * n + j]); });
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(), std::greater<acc_t>());
  const acc_t zk = scratch[k - 1];
  int64_t need = k - std::count_if(scratch.begin(), scratch.end(), [zk](acc_t v) { return v > zk; });
  threshold_z = zk;
  // Among the candidates equal to z_t, the first `need` in index order are kept.
  for (int64_t i = 0; i < nodes && need > 0; ++i) {
    for (int64_t j = symmetric ? i + 1 : 0; j < nodes; ++j) {
      if (j != i && z[i * n + j] == zk && --need == 0) {
        threshold_idx = i * n + j;
        break;
      }
    }
  }
}

// z of the pairs (i, j), j in [j_begin, nodes), of one graph row (the diagonal's value is drawn but never used):
// first the uniforms, then the noise, in two tight loops.
template <typename scalar_t, typename acc_t>
void row_z(acc_t* z_row, double* u_row, const scalar_t* logits_row, uint64_t row_start, int64_t j_begin,
           int64_t nodes, uint64_t seed, uint64_t offset) {
  philox_uniforms(u_row + j_begin, row_start + j_begin, nodes - j_begin, seed, offset);
  for (int64_t j = j_begin; j < nodes; ++j) {
    z_row[j] = static_cast<acc_t>(logits_row[j]) + bc::logistic<acc_t>(u_row[j]);
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
    std::vector<acc_t> z(nn);  // z, then the sample, of each candidate pair at its flat index (the rest unused)
    std::vector<double> u(n);
    std::vector<acc_t> scratch;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t nodes = checked_nodes(num_nodes, b, n);
      const int64_t base = b * nn;
      for (int64_t i = 0; i < nodes; ++i) {
        row_z(z.data() + i * n, u.data(), logits + base + i * n, static_cast<uint64_t>(base + i * n),
              symmetric ? i + 1 : 0, nodes, seed, offset);
      }
      acc_t tz = -std::numeric_limits<acc_t>::infinity();
      int64_t ti = std::numeric_limits<int64_t>::max();
      if (budget != nullptr) budget_threshold(z.data(), n, nodes, symmetric, budget[b], scratch, tz, ti);
      threshold_z[b] = tz;
      threshold_idx[b] = ti;
      // z -> sample, mirrored into the lower triangle of the buffer so that output rows are read contiguously.
      for_each_candidate(nodes, symmetric, [&](int64_t i, int64_t j) {
        acc_t& v = z[i * n + j];
        v = bc::kept<acc_t>(v, i * n + j, tz, ti) ? bc::sample<acc_t>(v, tau, hard) : acc_t(0);
        if (symmetric) z[j * n + i] = v;
      });
      for (int64_t i = 0; i < n; ++i) {
        scalar_t* row = out + base + i * n;
        if (i >= nodes) {
          std::fill(row, row + n, scalar_t(0));
          continue;
        }
        for (int64_t j = 0; j < nodes; ++j) row[j] = static_cast<scalar_t>(z[i * n + j]);
        row[i] = static_cast<scalar_t>(self_loops ? acc_t(1) : acc_t(0));
        std::fill(row + nodes, row + n, scalar_t(0));
      }
    }
  });
}

template <typename scalar_t>
void bwd_kernel(scalar_t* grad_logits, const scalar_t* grad, const scalar_t* logits, const int64_t* num_nodes,
                const acc_type<scalar_t>* threshold_z, const int64_t* threshold_idx, int64_t batch, int64_t n,
                double tau_, uint64_t seed, uint64_t offset, bool symmetric) {
  using acc_t = acc_type<scalar_t>;
  const acc_t tau = static_cast<acc_t>(tau_);
  const int64_t nn = n * n;
  at::parallel_for(0, batch, grain_for(n), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> z(n);
    std::vector<double> u(n);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t nodes = checked_nodes(num_nodes, b, n);
      const int64_t base = b * nn;
      const acc_t tz = threshold_z[b];
      const int64_t ti = threshold_idx[b];
      for (int64_t i = 0; i < n; ++i) {
        scalar_t* row = grad_logits + base + i * n;
        const int64_t j_begin = symmetric ? std::min(i + 1, nodes) : 0;
        if (i >= nodes) {
          std::fill(row, row + n, scalar_t(0));
          continue;
        }
        row_z(z.data(), u.data(), logits + base + i * n, static_cast<uint64_t>(base + i * n), j_begin, nodes, seed,
              offset);
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

}  // namespace dfkd_fast
