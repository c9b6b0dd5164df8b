// The counter-based RNG of rmkernels/reference/rng.py (docs/spec.md §7) for the C++ kernels: the one place
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

constexpr uint32_t kHiSalt = 0x85EBCA6Bu;  // rmkernels/reference/rng.py HI_SALT

// A row's state (k1, k2) packed as k1 | k2 << 32, from the host-side seed key and the row's whole
// 64-bit counter: for a fixed seed a bijection of the counter, so no two counters share noise.
using RowKey = uint64_t;

inline RowKey row_key(uint32_t seed_key, int64_t counter) {
  const uint64_t c = static_cast<uint64_t>(counter);
  const uint32_t k1 = mix32(mix32(static_cast<uint32_t>(c)) ^ seed_key);
  const uint32_t k2 = mix32(mix32(static_cast<uint32_t>(c >> 32) ^ kHiSalt) ^ k1);
  return static_cast<uint64_t>(k1) | (static_cast<uint64_t>(k2) << 32);
}

// The 32-bit hash of column `col` of a row.
inline uint32_t bits(RowKey key, int64_t col) {
  const uint32_t k1 = static_cast<uint32_t>(key), k2 = static_cast<uint32_t>(key >> 32);
  return mix32(mix32(k1 + static_cast<uint32_t>(col) * 0x9E3779B9u) ^ k2);
}

// Standard Gumbel noise of column `col` of a row (float32, as the reference's bits).
inline float gumbel(RowKey key, int64_t col) {
  const float u = (static_cast<float>(bits(key, col) >> 8) + 0.5f) * 5.9604644775390625e-08f;  // 2**-24
  return -std::log(-std::log(u));
}

}  // namespace rng
}  // namespace rmk
