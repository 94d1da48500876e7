// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), host and device.
//
// The same numbers as dfkd_fast/reference/philox.py on every device: element e of a flat tensor of stream
// (seed, offset) takes word e % 4 of philox4x32_10(counter = (g_lo, g_hi, offset_lo, offset_hi), key = (seed_lo,
// seed_hi)) for g = e / 4, and becomes the uniform ((word >> 9) + 0.5) * 2^-23, exact in float and inside (0, 1).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DFKD_HOST_DEVICE __host__ __device__ __forceinline__
#define DFKD_UNROLL _Pragma("unroll")
#else
#define DFKD_HOST_DEVICE inline
#define DFKD_UNROLL
#endif

namespace dfkd_fast {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

DFKD_HOST_DEVICE void mulhilo32(uint32_t a, uint32_t m, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, m);
  lo = a * m;
#else
  const uint64_t p = static_cast<uint64_t>(a) * m;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
#endif
}

// The four words of block `group` of stream (seed, offset).
DFKD_HOST_DEVICE void philox4x32_10(uint64_t group, uint64_t seed, uint64_t offset, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(group), c1 = static_cast<uint32_t>(group >> 32);
  uint32_t c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
DFKD_UNROLL
  for (int r = 0; r < 10; ++r) {
    if (r) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(c0, kPhiloxM0, hi0, lo0);
    mulhilo32(c2, kPhiloxM1, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// A Philox word as a uniform in (0, 1): 23 random bits, centred, so neither 0 nor 1 can occur.
DFKD_HOST_DEVICE double philox_uniform(uint32_t word) {
  return (static_cast<double>(word >> 9) + 0.5) * 0x1p-23;
}

// Uniforms of the flat elements [first, first + count) into u[0, count), each Philox block drawn once. The blocks
// are independent iterations, so consecutive ones overlap in the pipeline.
inline void philox_uniforms(double* u, uint64_t first, int64_t count, uint64_t seed, uint64_t offset) {
  if (count <= 0) return;
  const uint64_t end = first + static_cast<uint64_t>(count);
  for (uint64_t g = first >> 2; g <= (end - 1) >> 2; ++g) {
    uint32_t words[4];
    philox4x32_10(g, seed, offset, words);
    for (uint64_t q = 0; q < 4; ++q) {
      const uint64_t e = 4 * g + q;
      if (e >= first && e < end) u[e - first] = philox_uniform(words[q]);
    }
  }
}

}  // namespace dfkd_fast
