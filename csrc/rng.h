// The counter-based RNG of rmkernels/reference/rng.py (SPEC §7) for the C++ kernels: the one place
// in csrc/ that knows the hash, so every kernel draws the same bits as the reference and Triton.
#pragma once

#include <cmath>
#include <cstdint>

namespace rmk {
namespace rng {

// lowbias32 integer finaliser (a bijection on 32-bit words)
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// Per-row key from the host-side seed key and the row's counter.
inline uint32_t row_key(uint32_t seed_key, int64_t counter) {
  return mix32(mix32(static_cast<uint32_t>(counter & 0xFFFFFFFF)) ^ seed_key);
}

// Standard Gumbel noise of column `col` of a row (float32, as the reference's bits).
inline float gumbel(uint32_t row_key, int64_t col) {
  const uint32_t h = mix32(row_key + static_cast<uint32_t>(col) * 0x9E3779B9u);
  const float u = (static_cast<float>(h >> 8) + 0.5f) * 5.9604644775390625e-08f;  // 2**-24
  return -std::log(-std::log(u));
}

}  // namespace rng
}  // namespace rmk
