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

// The words of the consecutive Philox blocks [g0, g0 + blocks) of stream (seed, offset), block-major:
// words[4 * l + q] is word q of block g0 + l. The rounds run over all blocks at once (independent lanes), so the
// compiler vectorises the 32 x 32 -> 64-bit products. blocks <= kPhiloxMaxBlocks.
constexpr int kPhiloxMaxBlocks = 32;
inline void philox_blocks(uint64_t g0, int blocks, uint64_t seed, uint64_t offset, uint32_t* words) {
  uint32_t c0[kPhiloxMaxBlocks], c1[kPhiloxMaxBlocks], c2[kPhiloxMaxBlocks], c3[kPhiloxMaxBlocks];
  for (int l = 0; l < blocks; ++l) {
    const uint64_t g = g0 + static_cast<uint64_t>(l);
    c0[l] = static_cast<uint32_t>(g);
    c1[l] = static_cast<uint32_t>(g >> 32);
    c2[l] = static_cast<uint32_t>(offset);
    c3[l] = static_cast<uint32_t>(offset >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    for (int l = 0; l < blocks; ++l) {
      const uint64_t p0 = static_cast<uint64_t>(c0[l]) * kPhiloxM0;
      const uint64_t p1 = static_cast<uint64_t>(c2[l]) * kPhiloxM1;
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
      c1[l] = static_cast<uint32_t>(p1);
      c3[l] = static_cast<uint32_t>(p0);
      c0[l] = n0;
      c2[l] = n2;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  for (int l = 0; l < blocks; ++l) {
    words[4 * l] = c0[l];
    words[4 * l + 1] = c1[l];
    words[4 * l + 2] = c2[l];
    words[4 * l + 3] = c3[l];
  }
}

}  // namespace dfkd_fast
