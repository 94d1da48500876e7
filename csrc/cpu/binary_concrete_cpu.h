// CPU kernels of dfkd_fast::binary_concrete_fwd / _bwd (see binary_concrete.h for the maths). The callers in
// binary_concrete.cpp validate the arguments and pass contiguous tensors: num_nodes and budget as int64.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dfkd_fast {

// out [B, n, n] (dtype of logits), threshold_z [B] (float, or double for double logits), threshold_idx [B] int64.
void binary_concrete_fwd_cpu(const at::Tensor& out, const at::Tensor& threshold_z, const at::Tensor& threshold_idx,
                             const at::Tensor& logits, const at::Tensor& num_nodes, const at::Tensor* budget,
                             double tau, uint64_t seed, uint64_t offset, bool symmetric, bool hard, bool self_loops);

// grad_logits [B, n, n] from grad [B, n, n], recomputing the noise; the thresholds come from the forward.
void binary_concrete_bwd_cpu(const at::Tensor& grad_logits, const at::Tensor& grad, const at::Tensor& logits,
                             const at::Tensor& num_nodes, const at::Tensor& threshold_z,
                             const at::Tensor& threshold_idx, double tau, uint64_t seed, uint64_t offset,
                             bool symmetric);

// grad_logits [B, n, n] from grad and the relaxed sample [B, n, n] (float32 or float64) the forward returned.
void binary_concrete_bwd_sample_cpu(const at::Tensor& grad_logits, const at::Tensor& grad, const at::Tensor& sample,
                                    double tau, bool symmetric);

}  // namespace dfkd_fast
