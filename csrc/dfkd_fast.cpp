// dfkd_fast._C: operator schemas and the Python module. This is the only translation unit that includes
// torch/extension.h (pybind); kernels live in cpu/ and cuda/ and register their implementations there.
#include <torch/extension.h>

TORCH_LIBRARY(dfkd_fast, m) {
  // Schemas of the C++ ops are declared here; their CPU and CUDA kernels register with TORCH_LIBRARY_IMPL
  // in csrc/cpu and csrc/cuda, and their fake kernels and autograd formulas in dfkd_fast/ops (Python).

  // Binary Concrete adjacency sampling (csrc/binary_concrete.cpp): the adjacency [B, n, n] and the per-graph budget
  // thresholds (z, flat index) that let the backward rebuild the kept pairs without saving anything of size n^2.
  // The backward of a relaxed float32/float64 sample reads the sample instead (binary_concrete_bwd_sample).
  m.def("binary_concrete_fwd(Tensor logits, Tensor num_nodes, Tensor? budget, float tau, int seed, int offset, "
        "bool symmetric, bool hard, bool self_loops) -> (Tensor, Tensor, Tensor)");
  m.def("binary_concrete_bwd(Tensor grad, Tensor logits, Tensor num_nodes, Tensor threshold_z, "
        "Tensor threshold_idx, float tau, int seed, int offset, bool symmetric) -> Tensor");
  m.def("binary_concrete_bwd_sample(Tensor grad, Tensor sample, float tau, bool symmetric) -> Tensor");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dfkd_fast C++/CUDA kernels (ops are registered under torch.ops.dfkd_fast)";
  m.def("with_cuda", []() {
#ifdef WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the extension was compiled with its CUDA kernels.");
}
