// CUDA kernels of the Binary Concrete adjacency sampler (maths in binary_concrete.h, same numbers as the CPU kernel).
//
// Forward and backward work on 32 x 32 tiles. A block of a symmetric graph takes the tile pair (I, J), I <= J: it
// draws z of the upper tile once (Philox words four at a time), keeps it in shared memory and writes both the tile
// and its mirror (J, I) coalesced, so the logits' lower triangle is never read and no noise is drawn twice. The
// backward of a relaxed float32/float64 sample reads the sample (bwd_sample_kernel); hard samples and
// half/bfloat16 recompute z (bwd_kernel), as on the CPU.
//
// The edge budget is a per-graph radix select on the device (no host sync): the keys (z in an order-preserving
// unsigned encoding) are histogrammed 12 bits at a time into per-graph histograms (integer atomics: deterministic
// counts), a one-block-per-graph kernel picks the digit holding the k-th largest, and so on down to the last bit;
// ties at the threshold z are then resolved by the lower flat index in the same way. The result is the threshold
// (z_t, index_t) that the output and backward kernels compare against.
#include <ATen/Dispatch.h>
#include <ATen/core/TensorBase.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "binary_concrete.h"
#include "cuda/binary_concrete_cuda.h"

namespace dfkd_fast {
namespace {

constexpr int kTile = 32;                    // tiles of kTile x kTile pairs
constexpr int kRows = 8;                     // a tile block is kTile x kRows threads
constexpr int kTileThreads = kTile * kRows;
constexpr int kGroupsPerRow = kTile / 4 + 1;  // Philox groups that kTile consecutive elements can touch
constexpr int kHistThreads = 256;            // one Philox group (4 elements) per thread
constexpr int kSelectThreads = 256;
constexpr int kDigitBits = 12;               // kBinaryConcreteBins == 1 << kDigitBits
constexpr int kMaxGridY = 65535;
constexpr int kIndexBits = 32;               // a graph's flat index i * n + j fits 32 bits (n <= 46340)

enum SelectPhase : int64_t { kPhaseZ = 0, kPhaseIndex = 1, kPhaseDone = 2 };
// state[b] = {z key prefix, rank k within the current bucket (1-based), phase, index key prefix}

template <typename scalar_t>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// Order-preserving unsigned keys of z (larger z, larger key); -0 is folded into +0 so that key equality is z equality.
template <typename acc_t>
struct Key;
template <>
struct Key<float> {
  using type = uint32_t;
  static constexpr int bits = 32;
  __device__ static uint32_t of(float z) {
    const uint32_t u = __float_as_uint(z == 0.f ? 0.f : z);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  __device__ static float value(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
  }
};
template <>
struct Key<double> {
  using type = uint64_t;
  static constexpr int bits = 64;
  static constexpr uint64_t sign = 0x8000000000000000ull;
  __device__ static uint64_t of(double z) {
    const uint64_t u = static_cast<uint64_t>(__double_as_longlong(z == 0.0 ? 0.0 : z));
    return (u & sign) ? ~u : (u | sign);
  }
  __device__ static double value(uint64_t k) {
    return __longlong_as_double(static_cast<long long>((k & sign) ? (k & ~sign) : ~k));
  }
};

__device__ __forceinline__ int graph_nodes(const int64_t* num_nodes, int64_t b, int n) {
  // Counts are validated on the host where that is free; on the device they are clamped, never trusted.
  return static_cast<int>(min(max(num_nodes[b], int64_t(0)), static_cast<int64_t>(n)));
}

__device__ __forceinline__ int64_t pair_count(int64_t nodes, bool symmetric) {
  return symmetric ? nodes * (nodes - 1) / 2 : nodes * (nodes - 1);
}

// Fills zs[r][c] with z of pair (i0 + r, j0 + c) for the candidates of the tile; other entries are left unset.
// Each work item is one Philox group of one tile row, so every block of four words is drawn once.
template <typename scalar_t, typename acc_t>
__device__ void tile_z(acc_t (*zs)[kTile + 1],        // [kTile][kTile + 1] shared
                       const scalar_t* __restrict__ logits,  // [B, n, n]
                       int64_t base, int n, int nodes, int i0, int j0, bool symmetric, uint64_t seed,
                       uint64_t offset) {
  const int tid = threadIdx.y * kTile + threadIdx.x;
  for (int item = tid; item < kTile * kGroupsPerRow; item += kTileThreads) {
    const int r = item / kGroupsPerRow;
    const int i = i0 + r;
    if (i >= nodes) continue;
    const int64_t row_start = base + static_cast<int64_t>(i) * n + j0;  // flat index of (i, j0)
    const int64_t group = (row_start >> 2) + item % kGroupsPerRow;
    bool needed = false;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t c = group * 4 + q - row_start;
      needed |= c >= 0 && c < kTile && bc::candidate(i, j0 + c, nodes, symmetric);
    }
    if (!needed) continue;
    uint32_t words[4];
    philox4x32_10(static_cast<uint64_t>(group), seed, offset, words);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t c = group * 4 + q - row_start;
      if (c >= 0 && c < kTile && bc::candidate(i, j0 + c, nodes, symmetric)) {
        zs[r][c] = static_cast<acc_t>(logits[row_start + c]) + bc::logistic<acc_t>(philox_uniform(words[q]));
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    fwd_kernel(scalar_t* __restrict__ out,                  // [B, n, n]
               const scalar_t* __restrict__ logits,         // [B, n, n]
               const int64_t* __restrict__ num_nodes,       // [B]
               const acc_t* __restrict__ threshold_z,       // [B]
               const int64_t* __restrict__ threshold_idx,   // [B]
               int64_t b0, int n, int tiles, acc_t tau, uint64_t seed, uint64_t offset, bool symmetric, bool hard,
               bool self_loops) {
  __shared__ acc_t zs[kTile][kTile + 1];
  const int I = blockIdx.x / tiles, J = blockIdx.x % tiles;
  if (symmetric && J < I) return;  // written by the block of (J, I)
  const int64_t b = b0 + blockIdx.y;
  const int nodes = graph_nodes(num_nodes, b, n);
  const int64_t base = b * n * n;
  const int i0 = I * kTile, j0 = J * kTile;
  const int r0 = threadIdx.y, c = threadIdx.x;
  tile_z(zs, logits, base, n, nodes, i0, j0, symmetric, seed, offset);
  __syncthreads();
  // z -> sample, once per pair (the mirrored write below reuses it).
  const acc_t tz = threshold_z[b];
  const int64_t ti = threshold_idx[b];
  for (int r = r0; r < kTile; r += kRows) {
    const int i = i0 + r, j = j0 + c;
    if (bc::candidate(i, j, nodes, symmetric)) {
      const acc_t z = zs[r][c];
      zs[r][c] = bc::kept<acc_t>(z, static_cast<int64_t>(i) * n + j, tz, ti) ? bc::sample<acc_t>(z, tau, hard)
                                                                             : acc_t(0);
    }
  }
  __syncthreads();
  for (int r = r0; r < kTile; r += kRows) {
    {
      const int i = i0 + r, j = j0 + c;
      if (i < n && j < n) {
        acc_t v = 0;
        if (i < nodes && j < nodes) {
          if (i == j) {
            v = self_loops ? acc_t(1) : acc_t(0);
          } else {
            v = symmetric && j < i ? zs[c][r] : zs[r][c];  // j < i only inside a diagonal tile
          }
        }
        out[base + static_cast<int64_t>(i) * n + j] = static_cast<scalar_t>(v);
      }
    }
    if (symmetric && I != J) {  // the mirror tile (J, I)
      const int i = j0 + r, j = i0 + c;
      if (i < n && j < n) {
        const acc_t v = i < nodes && j < nodes ? zs[c][r] : acc_t(0);
        out[base + static_cast<int64_t>(i) * n + j] = static_cast<scalar_t>(v);
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    bwd_kernel(scalar_t* __restrict__ grad_logits,          // [B, n, n]
               const scalar_t* __restrict__ grad,           // [B, n, n]
               const scalar_t* __restrict__ logits,         // [B, n, n]
               const int64_t* __restrict__ num_nodes,       // [B]
               const acc_t* __restrict__ threshold_z,       // [B]
               const int64_t* __restrict__ threshold_idx,   // [B]
               int64_t b0, int n, int tiles, acc_t tau, uint64_t seed, uint64_t offset, bool symmetric) {
  __shared__ acc_t zs[kTile][kTile + 1];
  __shared__ acc_t gm[kTile][kTile + 1];  // symmetric: grad of the mirror tile (J, I), read coalesced
  const int I = blockIdx.x / tiles, J = blockIdx.x % tiles;
  if (symmetric && J < I) return;
  const int64_t b = b0 + blockIdx.y;
  const int nodes = graph_nodes(num_nodes, b, n);
  const int64_t base = b * n * n;
  const int i0 = I * kTile, j0 = J * kTile;
  const int r0 = threadIdx.y, c = threadIdx.x;
  tile_z(zs, logits, base, n, nodes, i0, j0, symmetric, seed, offset);
  if (symmetric) {
    for (int r = r0; r < kTile; r += kRows) {
      const int i = j0 + r, j = i0 + c;
      gm[r][c] = i < nodes && j < nodes ? static_cast<acc_t>(grad[base + static_cast<int64_t>(i) * n + j]) : acc_t(0);
    }
  }
  __syncthreads();
  const acc_t tz = threshold_z[b];
  const int64_t ti = threshold_idx[b];
  for (int r = r0; r < kTile; r += kRows) {
    const int i = i0 + r, j = j0 + c;
    if (i < n && j < n) {
      acc_t d = 0;
      const int64_t e = base + static_cast<int64_t>(i) * n + j;
      if (bc::candidate(i, j, nodes, symmetric)) {
        const acc_t z = zs[r][c];
        if (bc::kept<acc_t>(z, static_cast<int64_t>(i) * n + j, tz, ti)) {
          const acc_t scale = bc::grad_scale<acc_t>(bc::relaxed<acc_t>(z, tau), tau);
          d = static_cast<acc_t>(grad[e]) * scale;
          if (symmetric) d += gm[c][r] * scale;  // grad[j][i]: the mirrored entry is the same variable
        }
      }
      grad_logits[e] = static_cast<scalar_t>(d);
    }
    if (symmetric && I != J) {  // the lower triangle gets no gradient
      const int im = j0 + r, jm = i0 + c;
      if (im < n && jm < n) grad_logits[base + static_cast<int64_t>(im) * n + jm] = static_cast<scalar_t>(0);
    }
  }
}

// Backward from the relaxed sample y: dlogit = dy * y (1 - y) / tau, the expression of bwd_kernel (the same bits for
// float32/float64), without the noise. Padding and dropped pairs have y = 0 and the diagonal y in {0, 1}, so only
// the lower triangle of a symmetric graph needs zeroing; its upper tile reads the grad of the mirror tile coalesced.
template <typename scalar_t>
__global__ void __launch_bounds__(kTileThreads)
    bwd_sample_kernel(scalar_t* __restrict__ grad_logits,  // [B, n, n]
                      const scalar_t* __restrict__ grad,   // [B, n, n]
                      const scalar_t* __restrict__ sample, // [B, n, n]
                      int64_t b0, int n, int tiles, scalar_t tau, bool symmetric) {
  __shared__ scalar_t gm[kTile][kTile + 1];
  const int I = blockIdx.x / tiles, J = blockIdx.x % tiles;
  if (symmetric && J < I) return;
  const int64_t base = (b0 + blockIdx.y) * n * n;
  const int i0 = I * kTile, j0 = J * kTile;
  const int r0 = threadIdx.y, c = threadIdx.x;
  if (symmetric) {
    for (int r = r0; r < kTile; r += kRows) {
      const int i = j0 + r, j = i0 + c;
      gm[r][c] = i < n && j < n ? grad[base + static_cast<int64_t>(i) * n + j] : scalar_t(0);
    }
    __syncthreads();
  }
  for (int r = r0; r < kTile; r += kRows) {
    const int i = i0 + r, j = j0 + c;
    if (i < n && j < n) {
      const int64_t e = base + static_cast<int64_t>(i) * n + j;
      scalar_t d = 0;
      if (!symmetric || j > i) {
        const scalar_t scale = bc::grad_scale<scalar_t>(sample[e], tau);
        d = grad[e] * scale;
        if (symmetric) d += gm[c][r] * scale;  // grad[j][i]: the mirrored entry is the same variable
      }
      grad_logits[e] = d;
    }
    if (symmetric && I != J) {  // the lower triangle gets no gradient
      const int im = j0 + r, jm = i0 + c;
      if (im < n && jm < n) grad_logits[base + static_cast<int64_t>(im) * n + jm] = scalar_t(0);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Budget selection

template <typename acc_t>
__global__ void select_init_kernel(int64_t* __restrict__ state,          // [B, 4]
                                   acc_t* __restrict__ threshold_z,      // [B]
                                   int64_t* __restrict__ threshold_idx,  // [B]
                                   const int64_t* __restrict__ num_nodes,  // [B]
                                   const int64_t* __restrict__ budget,   // [B] or nullptr
                                   int64_t batch, int n, bool symmetric) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const int64_t pairs = pair_count(graph_nodes(num_nodes, b, n), symmetric);
  const int64_t k = budget != nullptr ? budget[b] : std::numeric_limits<int64_t>::max();
  int64_t* st = state + 4 * b;
  st[0] = 0;
  st[1] = k;
  st[3] = 0;
  if (k <= 0) {  // keep nothing
    threshold_z[b] = std::numeric_limits<acc_t>::infinity();
    threshold_idx[b] = -1;
    st[2] = kPhaseDone;
  } else if (k >= pairs) {  // keep everything
    threshold_z[b] = -std::numeric_limits<acc_t>::infinity();
    threshold_idx[b] = std::numeric_limits<int64_t>::max();
    st[2] = kPhaseDone;
  } else {
    st[2] = kPhaseZ;
  }
}

// Histogram of one digit of the keys of the candidates still in the running bucket. The first pass computes z and
// writes the keys; later passes read them back.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kHistThreads)
    hist_kernel(typename Key<acc_t>::type* __restrict__ keys,  // [B, n * n]; candidates only
                int32_t* __restrict__ hist,                    // [B, kBinaryConcreteBins]
                const int64_t* __restrict__ state,             // [B, 4]
                const scalar_t* __restrict__ logits,           // [B, n, n]
                const int64_t* __restrict__ num_nodes,         // [B]
                int64_t b0, int n, uint64_t seed, uint64_t offset, bool symmetric, bool compute_keys, int phase,
                int shift, int bits) {
  using key_t = typename Key<acc_t>::type;
  __shared__ int32_t counts[kBinaryConcreteBins];
  const int64_t b = b0 + blockIdx.y;
  const int64_t* st = state + 4 * b;
  if (st[2] != phase) return;
  const key_t prefix = static_cast<key_t>(st[0]);
  const uint32_t index_prefix = static_cast<uint32_t>(st[3]);
  for (int t = threadIdx.x; t < kBinaryConcreteBins; t += kHistThreads) counts[t] = 0;
  __syncthreads();

  const int nodes = graph_nodes(num_nodes, b, n);
  const int64_t nn = static_cast<int64_t>(n) * n, base = b * nn;
  const int64_t group = (base >> 2) + static_cast<int64_t>(blockIdx.x) * kHistThreads + threadIdx.x;
  const int high = shift + bits;  // the bits above the digit must match the prefix
  const uint32_t digit_mask = (1u << bits) - 1u;
  bool is_candidate[4];
  bool any = false;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int64_t local = group * 4 + q - base;
    is_candidate[q] = local >= 0 && local < nn && bc::candidate(local / n, local % n, nodes, symmetric);
    any |= is_candidate[q];
  }
  uint32_t words[4];
  if (compute_keys && any) philox4x32_10(static_cast<uint64_t>(group), seed, offset, words);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    if (!is_candidate[q]) continue;
    const int64_t local = group * 4 + q - base;
    key_t key;
    if (compute_keys) {
      const acc_t z = static_cast<acc_t>(logits[base + local]) + bc::logistic<acc_t>(philox_uniform(words[q]));
      key = Key<acc_t>::of(z);
      keys[base + local] = key;
    } else {
      key = keys[base + local];
    }
    uint32_t digit;
    if (phase == kPhaseZ) {
      if (high < Key<acc_t>::bits && (key >> high) != (prefix >> high)) continue;
      digit = static_cast<uint32_t>(key >> shift) & digit_mask;
    } else {
      // Among the candidates whose z equals the threshold, the lower index ranks first: key ~index.
      const uint32_t index_key = ~static_cast<uint32_t>(local);
      if (key != prefix || (high < kIndexBits && (index_key >> high) != (index_prefix >> high))) continue;
      digit = (index_key >> shift) & digit_mask;
    }
    atomicAdd(&counts[digit], 1);
  }
  __syncthreads();
  int32_t* h = hist + b * kBinaryConcreteBins;
  for (int t = threadIdx.x; t < (1 << bits); t += kHistThreads) {
    if (counts[t]) atomicAdd(&h[t], counts[t]);
  }
}

// One block per graph: find the digit of the k-th largest key in the histogram, narrow the bucket, and clear the
// histogram for the next pass. After the last digit of z, the threshold z is known; if not every candidate equal to
// it is kept, the index phase picks the last kept one.
template <typename acc_t>
__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(int32_t* __restrict__ hist,             // [B, kBinaryConcreteBins]
                  int64_t* __restrict__ state,            // [B, 4]
                  acc_t* __restrict__ threshold_z,        // [B]
                  int64_t* __restrict__ threshold_idx,    // [B]
                  int phase, int shift, int bits) {
  using key_t = typename Key<acc_t>::type;
  __shared__ int64_t scan[kSelectThreads];
  const int64_t b = blockIdx.x;
  int64_t* st = state + 4 * b;
  if (st[2] != phase) return;
  const int64_t k = st[1];  // read by every thread before the syncs below, written after them
  int32_t* h = hist + b * kBinaryConcreteBins;
  const int bins = 1 << bits;
  const int per = (bins + kSelectThreads - 1) / kSelectThreads;
  const int t = threadIdx.x;
  // Thread t owns the bins of descending rank [t * per, (t + 1) * per): rank q is bin bins - 1 - q.
  int64_t own = 0;
  for (int q = t * per; q < min((t + 1) * per, bins); ++q) own += h[bins - 1 - q];
  scan[t] = own;
  __syncthreads();
  for (int step = 1; step < kSelectThreads; step <<= 1) {
    const int64_t add = t >= step ? scan[t - step] : 0;
    __syncthreads();
    scan[t] += add;
    __syncthreads();
  }
  const int64_t before = t ? scan[t - 1] : 0;
  if (before < k && k <= scan[t]) {
    int64_t above = before;
    for (int q = t * per; q < min((t + 1) * per, bins); ++q) {
      const int bin = bins - 1 - q;
      const int64_t count = h[bin];
      if (above + count < k) {
        above += count;
        continue;
      }
      const int64_t rank = k - above;  // rank within the chosen bucket
      st[1] = rank;
      if (phase == kPhaseZ) {
        const key_t prefix = static_cast<key_t>(st[0]) | (static_cast<key_t>(bin) << shift);
        st[0] = static_cast<int64_t>(prefix);
        if (shift == 0) {
          threshold_z[b] = Key<acc_t>::value(prefix);
          if (rank == count) {  // every candidate equal to the threshold is kept
            threshold_idx[b] = std::numeric_limits<int64_t>::max();
            st[2] = kPhaseDone;
          } else {
            st[2] = kPhaseIndex;
          }
        }
      } else {
        const uint32_t prefix = static_cast<uint32_t>(st[3]) | (static_cast<uint32_t>(bin) << shift);
        st[3] = prefix;
        if (shift == 0) {
          threshold_idx[b] = static_cast<int64_t>(~prefix);
          st[2] = kPhaseDone;
        }
      }
      break;
    }
  } else if (t == kSelectThreads - 1 && scan[t] < k) {
    // Fewer keys than the rank (only possible with non-finite logits): keep every candidate.
    threshold_z[b] = -std::numeric_limits<acc_t>::infinity();
    threshold_idx[b] = std::numeric_limits<int64_t>::max();
    st[2] = kPhaseDone;
  }
  __syncthreads();
  for (int q = t * per; q < min((t + 1) * per, bins); ++q) h[bins - 1 - q] = 0;
}

template <typename scalar_t, typename acc_t>
void select_budget(const at::TensorBase& threshold_z, const at::TensorBase& threshold_idx,
                   const at::TensorBase& logits, const int64_t* num_nodes, const at::TensorBase& budget,
                   const BudgetScratch& scratch, uint64_t seed, uint64_t offset, bool symmetric,
                   cudaStream_t stream) {
  using key_t = typename Key<acc_t>::type;
  const int64_t batch = logits.size(0);
  const int n = static_cast<int>(logits.size(2));
  int64_t* state = scratch.state.mutable_data_ptr<int64_t>();
  acc_t* tz = threshold_z.mutable_data_ptr<acc_t>();
  int64_t* ti = threshold_idx.mutable_data_ptr<int64_t>();
  const int64_t* budget_ptr = budget.defined() ? budget.const_data_ptr<int64_t>() : nullptr;
  select_init_kernel<acc_t><<<static_cast<unsigned>((batch + 255) / 256), 256, 0, stream>>>(
      state, tz, ti, num_nodes, budget_ptr, batch, n, symmetric);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (budget_ptr == nullptr) return;

  key_t* keys = reinterpret_cast<key_t*>(scratch.keys.mutable_data_ptr());
  int32_t* hist = scratch.hist.mutable_data_ptr<int32_t>();
  const int64_t groups = static_cast<int64_t>(n) * n / 4 + 2;  // Philox groups one graph can touch
  const unsigned blocks_x = static_cast<unsigned>((groups + kHistThreads - 1) / kHistThreads);
  bool first = true;
  for (int phase : {static_cast<int>(kPhaseZ), static_cast<int>(kPhaseIndex)}) {
    const int width = phase == kPhaseZ ? Key<acc_t>::bits : kIndexBits;
    for (int high = width; high > 0;) {
      const int bits = std::min(kDigitBits, high);
      const int shift = high - bits;
      for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridY) {
        const dim3 grid(blocks_x, static_cast<unsigned>(std::min<int64_t>(batch - b0, kMaxGridY)));
        hist_kernel<scalar_t, acc_t><<<grid, kHistThreads, 0, stream>>>(
            keys, hist, state, logits.const_data_ptr<scalar_t>(), num_nodes, b0, n, seed, offset, symmetric, first,
            phase, shift, bits);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      select_kernel<acc_t><<<static_cast<unsigned>(batch), kSelectThreads, 0, stream>>>(hist, state, tz, ti, phase,
                                                                                        shift, bits);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      first = false;
      high = shift;
    }
  }
}

int tile_count(int64_t n) {
  return static_cast<int>((n + kTile - 1) / kTile);
}

}  // namespace

void binary_concrete_fwd_cuda(const at::TensorBase& out, const at::TensorBase& threshold_z,
                              const at::TensorBase& threshold_idx, const at::TensorBase& logits,
                              const at::TensorBase& num_nodes, const at::TensorBase& budget,
                              const BudgetScratch& scratch, double tau, uint64_t seed, uint64_t offset,
                              bool symmetric, bool hard, bool self_loops) {
  const int64_t batch = logits.size(0), n = logits.size(2);
  if (batch == 0) return;
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "binary_concrete_fwd_cuda", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    const int64_t* nodes = num_nodes.const_data_ptr<int64_t>();
    select_budget<scalar_t, acc_t>(threshold_z, threshold_idx, logits, nodes, budget, scratch, seed, offset,
                                   symmetric, stream);
    if (n == 0) return;
    const int tiles = tile_count(n);
    for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridY) {
      const dim3 grid(static_cast<unsigned>(tiles) * tiles,
                      static_cast<unsigned>(std::min<int64_t>(batch - b0, kMaxGridY)));
      fwd_kernel<scalar_t, acc_t><<<grid, dim3(kTile, kRows), 0, stream>>>(
          out.mutable_data_ptr<scalar_t>(), logits.const_data_ptr<scalar_t>(), nodes,
          threshold_z.const_data_ptr<acc_t>(), threshold_idx.const_data_ptr<int64_t>(), b0, static_cast<int>(n),
          tiles, static_cast<acc_t>(tau), seed, offset, symmetric, hard, self_loops);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

void binary_concrete_bwd_cuda(const at::TensorBase& grad_logits, const at::TensorBase& grad,
                              const at::TensorBase& logits, const at::TensorBase& num_nodes,
                              const at::TensorBase& threshold_z, const at::TensorBase& threshold_idx, double tau,
                              uint64_t seed, uint64_t offset, bool symmetric) {
  const int64_t batch = logits.size(0), n = logits.size(2);
  if (batch == 0 || n == 0) return;
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int tiles = tile_count(n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "binary_concrete_bwd_cuda", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridY) {
      const dim3 grid(static_cast<unsigned>(tiles) * tiles,
                      static_cast<unsigned>(std::min<int64_t>(batch - b0, kMaxGridY)));
      bwd_kernel<scalar_t, acc_t><<<grid, dim3(kTile, kRows), 0, stream>>>(
          grad_logits.mutable_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
          logits.const_data_ptr<scalar_t>(), num_nodes.const_data_ptr<int64_t>(),
          threshold_z.const_data_ptr<acc_t>(), threshold_idx.const_data_ptr<int64_t>(), b0, static_cast<int>(n),
          tiles, static_cast<acc_t>(tau), seed, offset, symmetric);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

void binary_concrete_bwd_sample_cuda(const at::TensorBase& grad_logits, const at::TensorBase& grad,
                                     const at::TensorBase& sample, double tau, bool symmetric) {
  const int64_t batch = sample.size(0), n = sample.size(2);
  if (batch == 0 || n == 0) return;
  const c10::cuda::CUDAGuard guard(sample.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int tiles = tile_count(n);
  AT_DISPATCH_FLOATING_TYPES(sample.scalar_type(), "binary_concrete_bwd_sample_cuda", [&] {
    for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridY) {
      const dim3 grid(static_cast<unsigned>(tiles) * tiles,
                      static_cast<unsigned>(std::min<int64_t>(batch - b0, kMaxGridY)));
      bwd_sample_kernel<scalar_t><<<grid, dim3(kTile, kRows), 0, stream>>>(
          grad_logits.mutable_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
          sample.const_data_ptr<scalar_t>(), b0, static_cast<int>(n), tiles, static_cast<scalar_t>(tau), symmetric);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace dfkd_fast
