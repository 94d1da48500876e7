// CUDA launchers of dfkd_fast::binary_concrete_fwd / _bwd (kernels in binary_concrete_cuda.cu, maths in
// binary_concrete.h). Light header: the callers in binary_concrete.cpp validate and allocate; the launchers take
// contiguous tensors on one device (num_nodes and budget as int64) and run on the current stream.
#pragma once

#include <ATen/core/TensorBase.h>

#include <cstdint>

namespace dfkd_fast {

// Scratch of the per-graph budget selection (a radix select over (z, index) keys), allocated by the caller:
// keys [B * n * n] int32 (float z) or int64 (double z), hist [B, kBinaryConcreteBins] int32 zeros, state [B, 4] int64.
constexpr int kBinaryConcreteBins = 4096;

struct BudgetScratch {
  at::TensorBase keys, hist, state;
};

// out [B, n, n], threshold_z [B] (float or double), threshold_idx [B] int64. `budget` may be undefined (no budget),
// and `scratch` is only used with a budget.
void binary_concrete_fwd_cuda(const at::TensorBase& out, const at::TensorBase& threshold_z,
                              const at::TensorBase& threshold_idx, const at::TensorBase& logits,
                              const at::TensorBase& num_nodes, const at::TensorBase& budget,
                              const BudgetScratch& scratch, double tau, uint64_t seed, uint64_t offset,
                              bool symmetric, bool hard, bool self_loops);

void binary_concrete_bwd_cuda(const at::TensorBase& grad_logits, const at::TensorBase& grad,
                              const at::TensorBase& logits, const at::TensorBase& num_nodes,
                              const at::TensorBase& threshold_z, const at::TensorBase& threshold_idx, double tau,
                              uint64_t seed, uint64_t offset, bool symmetric);

// grad_logits [B, n, n] from grad and the relaxed sample [B, n, n] (float32 or float64), nothing recomputed.
void binary_concrete_bwd_sample_cuda(const at::TensorBase& grad_logits, const at::TensorBase& grad,
                                     const at::TensorBase& sample, double tau, bool symmetric);

}  // namespace dfkd_fast
