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

// Uniforms of consecutive flat elements, drawing each Philox block once for its four elements.
struct PhiloxStream {
  uint64_t seed, offset;
  uint64_t group = ~uint64_t(0);
  uint32_t words[4] = {0, 0, 0, 0};

  DFKD_HOST_DEVICE PhiloxStream(uint64_t seed_, uint64_t offset_) : seed(seed_), offset(offset_) {}

  DFKD_HOST_DEVICE double uniform(uint64_t element) {
    const uint64_t g = element >> 2;
    if (g != group) {
      group = g;
      philox4x32_10(g, seed, offset, words);
    }
    return philox_uniform(words[element & 3]);
  }
};

}  // namespace dfkd_fast
