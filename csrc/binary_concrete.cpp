// dfkd_fast::binary_concrete_fwd / _bwd (schemas in dfkd_fast.cpp): argument checks, allocation, and the CPU and
// CUDA registrations. The kernels are in cpu/binary_concrete_cpu.cpp and cuda/binary_concrete_cuda.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "cpu/binary_concrete_cpu.h"
#ifdef WITH_CUDA
#include "cuda/binary_concrete_cuda.h"
#endif

namespace dfkd_fast {
namespace {

// The flat index i * n + j of a pair within its graph is ranked as 32 bits on the GPU.
constexpr int64_t kMaxNodes = 46340;

at::ScalarType acc_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

bool is_index_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kInt || t.scalar_type() == at::kLong;
}

// tau > 0 in the precision the kernels divide by (float unless the logits are double): 1e-300 is 0 in float.
void check_tau(const char* fn, double tau, at::ScalarType dtype) {
  TORCH_CHECK(std::isfinite(tau) && tau > 0, fn, ": tau must be a finite number > 0, got ", tau);
  TORCH_CHECK(dtype == at::kDouble || static_cast<float>(tau) > 0, fn, ": tau = ", tau,
              " is 0 in float32, the precision of the computation; use tau >= 1e-38 or float64 logits");
}

void check_graphs(const char* fn, const at::Tensor& logits, const at::Tensor& num_nodes, double tau, int64_t seed,
                  int64_t offset) {
  TORCH_CHECK(logits.dim() == 3 && logits.size(1) == logits.size(2), fn,
              ": logits must be [B, n, n] (square per graph), got shape ", logits.sizes());
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, fn,
              ": logits must be float16, bfloat16, float32 or float64, got ", dtype);
  TORCH_CHECK(logits.size(2) <= kMaxNodes, fn, ": at most ", kMaxNodes, " nodes per graph, got n = ",
              logits.size(2));
  TORCH_CHECK(num_nodes.dim() == 1 && num_nodes.size(0) == logits.size(0), fn,
              ": num_nodes must have one count per graph, shape [", logits.size(0), "], got ", num_nodes.sizes());
  TORCH_CHECK(is_index_dtype(num_nodes), fn, ": num_nodes must be int32 or int64, got ", num_nodes.scalar_type());
  TORCH_CHECK(num_nodes.device() == logits.device(), fn, ": num_nodes is on ", num_nodes.device(),
              " but logits is on ", logits.device());
  check_tau(fn, tau, logits.scalar_type());
  TORCH_CHECK(seed >= 0 && offset >= 0, fn, ": seed and offset must be >= 0, got ", seed, " and ", offset);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> binary_concrete_fwd(const at::Tensor& logits,
                                                                   const at::Tensor& num_nodes,
                                                                   const std::optional<at::Tensor>& budget,
                                                                   double tau, int64_t seed, int64_t offset,
                                                                   bool symmetric, bool hard, bool self_loops) {
  constexpr const char* fn = "binary_concrete_fwd";
  check_graphs(fn, logits, num_nodes, tau, seed, offset);
  const int64_t batch = logits.size(0);
  at::Tensor budget_t;
  if (budget.has_value()) {
    TORCH_CHECK(budget->dim() == 1 && budget->size(0) == batch && is_index_dtype(*budget), fn,
                ": budget must be an int32 or int64 tensor of shape [", batch, "], got ", budget->scalar_type(),
                " of shape ", budget->sizes());
    TORCH_CHECK(budget->device() == logits.device(), fn, ": budget is on ", budget->device(), " but logits is on ",
                logits.device());
    budget_t = budget->to(at::kLong).contiguous();
  }
  const at::Tensor l = logits.contiguous();
  const at::Tensor nodes = num_nodes.to(at::kLong).contiguous();
  at::Tensor out = at::empty_like(l);
  at::Tensor threshold_z = at::empty({batch}, l.options().dtype(acc_dtype(l.scalar_type())));
  at::Tensor threshold_idx = at::empty({batch}, l.options().dtype(at::kLong));
  if (l.is_cuda()) {
#ifdef WITH_CUDA
    BudgetScratch scratch;
    scratch.state = at::empty({batch, 4}, l.options().dtype(at::kLong));
    if (budget_t.defined()) {
      const auto key_dtype = l.scalar_type() == at::kDouble ? at::kLong : at::kInt;
      scratch.keys = at::empty({l.numel()}, l.options().dtype(key_dtype));
      scratch.hist = at::zeros({batch, kBinaryConcreteBins}, l.options().dtype(at::kInt));
    }
    binary_concrete_fwd_cuda(out, threshold_z, threshold_idx, l, nodes, budget_t, scratch, tau,
                             static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), symmetric, hard,
                             self_loops);
#else
    TORCH_CHECK(false, fn, ": dfkd_fast._C was built without CUDA kernels");
#endif
  } else {
    binary_concrete_fwd_cpu(out, threshold_z, threshold_idx, l, nodes, budget_t.defined() ? &budget_t : nullptr,
                            tau, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), symmetric, hard,
                            self_loops);
  }
  return {out, threshold_z, threshold_idx};
}

at::Tensor binary_concrete_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& num_nodes,
                               const at::Tensor& threshold_z, const at::Tensor& threshold_idx, double tau,
                               int64_t seed, int64_t offset, bool symmetric) {
  constexpr const char* fn = "binary_concrete_bwd";
  check_graphs(fn, logits, num_nodes, tau, seed, offset);
  const int64_t batch = logits.size(0);
  TORCH_CHECK(grad.sizes() == logits.sizes() && grad.scalar_type() == logits.scalar_type() &&
                  grad.device() == logits.device(),
              fn, ": grad must match logits (", logits.scalar_type(), " ", logits.sizes(), "), got ",
              grad.scalar_type(), " ", grad.sizes(), " on ", grad.device());
  TORCH_CHECK(threshold_z.dim() == 1 && threshold_z.size(0) == batch &&
                  threshold_z.scalar_type() == acc_dtype(logits.scalar_type()) &&
                  threshold_z.device() == logits.device(),
              fn, ": threshold_z must be a [", batch, "] ", acc_dtype(logits.scalar_type()), " tensor, got ",
              threshold_z.scalar_type(), " ", threshold_z.sizes());
  TORCH_CHECK(threshold_idx.dim() == 1 && threshold_idx.size(0) == batch &&
                  threshold_idx.scalar_type() == at::kLong && threshold_idx.device() == logits.device(),
              fn, ": threshold_idx must be a [", batch, "] int64 tensor, got ", threshold_idx.scalar_type(), " ",
              threshold_idx.sizes());
  const at::Tensor l = logits.contiguous();
  const at::Tensor g = grad.contiguous();
  const at::Tensor nodes = num_nodes.to(at::kLong).contiguous();
  const at::Tensor tz = threshold_z.contiguous();
  const at::Tensor ti = threshold_idx.contiguous();
  at::Tensor grad_logits = at::empty_like(l);
  if (l.is_cuda()) {
#ifdef WITH_CUDA
    binary_concrete_bwd_cuda(grad_logits, g, l, nodes, tz, ti, tau, static_cast<uint64_t>(seed),
                             static_cast<uint64_t>(offset), symmetric);
#else
    TORCH_CHECK(false, fn, ": dfkd_fast._C was built without CUDA kernels");
#endif
  } else {
    binary_concrete_bwd_cpu(grad_logits, g, l, nodes, tz, ti, tau, static_cast<uint64_t>(seed),
                            static_cast<uint64_t>(offset), symmetric);
  }
  return grad_logits;
}

at::Tensor binary_concrete_bwd_sample(const at::Tensor& grad, const at::Tensor& sample, double tau, bool symmetric) {
  constexpr const char* fn = "binary_concrete_bwd_sample";
  TORCH_CHECK(sample.dim() == 3 && sample.size(1) == sample.size(2), fn,
              ": sample must be [B, n, n] (square per graph), got shape ", sample.sizes());
  TORCH_CHECK(sample.scalar_type() == at::kFloat || sample.scalar_type() == at::kDouble, fn,
              ": sample must be float32 or float64 (lower precisions recompute the noise), got ", sample.scalar_type());
  TORCH_CHECK(grad.sizes() == sample.sizes() && grad.scalar_type() == sample.scalar_type() &&
                  grad.device() == sample.device(),
              fn, ": grad must match sample (", sample.scalar_type(), " ", sample.sizes(), "), got ",
              grad.scalar_type(), " ", grad.sizes(), " on ", grad.device());
  check_tau(fn, tau, sample.scalar_type());
  const at::Tensor y = sample.contiguous();
  const at::Tensor g = grad.contiguous();
  at::Tensor grad_logits = at::empty_like(y);
  if (y.is_cuda()) {
#ifdef WITH_CUDA
    binary_concrete_bwd_sample_cuda(grad_logits, g, y, tau, symmetric);
#else
    TORCH_CHECK(false, fn, ": dfkd_fast._C was built without CUDA kernels");
#endif
  } else {
    binary_concrete_bwd_sample_cpu(grad_logits, g, y, tau, symmetric);
  }
  return grad_logits;
}

}  // namespace
}  // namespace dfkd_fast

TORCH_LIBRARY_IMPL(dfkd_fast, CPU, m) {
  m.impl("binary_concrete_fwd", &dfkd_fast::binary_concrete_fwd);
  m.impl("binary_concrete_bwd", &dfkd_fast::binary_concrete_bwd);
  m.impl("binary_concrete_bwd_sample", &dfkd_fast::binary_concrete_bwd_sample);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(dfkd_fast, CUDA, m) {
  m.impl("binary_concrete_fwd", &dfkd_fast::binary_concrete_fwd);
  m.impl("binary_concrete_bwd", &dfkd_fast::binary_concrete_bwd);
  m.impl("binary_concrete_bwd_sample", &dfkd_fast::binary_concrete_bwd_sample);
}
#endif
