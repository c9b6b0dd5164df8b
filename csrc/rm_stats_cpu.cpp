// rm_stats on the CPU (docs/spec.md §1): the same statistics as the Triton kernel, one row per task.
//
// Per row (at::parallel_for over rows), with z the row converted to float32 on the fly:
//   pass 1: max and the NaN flag (vectorisable reductions); then the first id holding the max
//           (an early-exit scan) and, only when that id is the mask, the first maximum of the
//           row with the mask excluded;
//   pass 2: s = sum exp(z - max) with a branch-free polynomial exp the compiler vectorises,
//           summed in float lanes per tile and in double across tiles;
//   then the four probabilities exp(z_k - max) / s with std::exp.
// With temperature > 0 the candidates are the Gumbel-max of z / T with the counter RNG of
// rmkernels/reference/rng.py (bit-identical noise), computed in a separate scan.
// Row status flags match the reference: 1 NaN, 2 all -inf, 4 token outside [0, V); flagged rows
// get ids -1 and NaN probabilities, and an out-of-range token is never dereferenced.
#pragma GCC diagnostic ignored "-Wpsabi"  // v8f in internal helpers: no ABI crosses this file

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>

#include "rng.h"

namespace rmk {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// 8-float SIMD vectors (GCC/Clang vector extensions: SSE pairs by default, one AVX2 register in the
// avx2 clone of the kernel below).
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

// exp(x) for x <= 0 (the arguments are z - max): Cephes-style range reduction and polynomial,
// |rel err| < 2e-7 on [-87, 0]; below -87 the result is ~1e-38 (negligible in a sum).
inline v8f exp_nonpos(v8f x) {
  x = x < -87.0f ? v8f{} - 87.0f : x;
  const v8f n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest integer
  const v8f r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
  v8f p = v8f{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;  // 2^n as float bits
  v8f scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
}

template <typename T>
inline float to_f(T v) {
  return static_cast<float>(v);
}

template <typename T>
inline v8f load8(const T* z) {
  v8f out;
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(&out, z, sizeof(out));
  } else {
    for (int l = 0; l < 8; ++l) out[l] = static_cast<float>(z[l]);
  }
  return out;
}

// Max over z[0, V) and whether any element is NaN.
template <typename T>
inline float row_max(const T* z, int64_t V, int* nan) {
  v8f m0 = v8f{} + kNegInf, m1 = m0;
  v8i n0 = v8i{}, n1 = v8i{};
  const int64_t V16 = V - V % 16;
  for (int64_t v = 0; v < V16; v += 16) {
    const v8f a = load8(z + v), b = load8(z + v + 8);
    n0 |= (a != a);
    n1 |= (b != b);
    m0 = a > m0 ? a : m0;
    m1 = b > m1 ? b : m1;
  }
  m0 = m1 > m0 ? m1 : m0;
  n0 |= n1;
  float m = kNegInf;
  int any_nan = 0;
  for (int l = 0; l < 8; ++l) {
    m = m0[l] > m ? m0[l] : m;
    any_nan |= n0[l] != 0;
  }
  for (int64_t v = V16; v < V; ++v) {
    const float x = to_f(z[v]);
    any_nan |= (x != x);
    m = x > m ? x : m;
  }
  *nan = any_nan;
  return m;
}

// sum_v exp(z[v] - m): float lanes within tiles of 1024, double across tiles.
template <typename T>
inline double row_sum_exp(const T* z, int64_t V, float m) {
  constexpr int64_t kTile = 1024;
  const int64_t V16 = V - V % 16;
  double s = 0.0;
  for (int64_t t0 = 0; t0 < V16; t0 += kTile) {
    const int64_t t1 = t0 + kTile < V16 ? t0 + kTile : V16;
    v8f a0 = v8f{}, a1 = v8f{};
    for (int64_t v = t0; v < t1; v += 16) {
      a0 += exp_nonpos(load8(z + v) - m);
      a1 += exp_nonpos(load8(z + v + 8) - m);
    }
    a0 += a1;
    for (int l = 0; l < 8; ++l) s += a0[l];
  }
  for (int64_t v = V16; v < V; ++v) s += std::exp(to_f(z[v]) - m);
  return s;
}

template <typename T>
void rm_stats_rows(const T* base, int64_t row_begin, int64_t row_end, int64_t V, int64_t L1, int64_t stride0,
                   int64_t stride1, const int64_t* tokens, const int64_t* counters, int64_t mask_id, double temperature,
                   uint32_t seed_key, int64_t* top_id, float* top_p, float* mask_p, float* cur_p, int64_t* best_id,
                   float* best_p, int32_t* status) {
  const bool sample = temperature > 0;
  const float temp_f = static_cast<float>(temperature);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* z = base + (r / L1) * stride0 + (r % L1) * stride1;
    // pass 1: max and NaN flag
    int nan = 0;
    const float m = row_max(z, V, &nan);
    const int64_t tok = tokens[r];
    const bool tok_ok = tok >= 0 && tok < V;
    const int32_t st = (nan ? 1 : 0) | (m == kNegInf ? 2 : 0) | (tok_ok ? 0 : 4);
    status[r] = st;
    if (st != 0) {
      top_id[r] = best_id[r] = -1;
      top_p[r] = mask_p[r] = cur_p[r] = best_p[r] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    // candidates
    int64_t ti = 0, bi = 0;
    if (!sample) {
      while (to_f(z[ti]) != m) ++ti;  // first id holding the max
      if (ti != mask_id) {
        bi = ti;
      } else {  // the mask holds the max: first maximum with the mask excluded (id 0 if none is finite,
                // as torch.argmax of an all -inf row)
        float bv = kNegInf;
        for (int64_t v = 0; v < V; ++v) {
          const float x = v == mask_id ? kNegInf : to_f(z[v]);
          if (x > bv) { bv = x; bi = v; }
        }
      }
    } else {
      const rng::RowKey key = rng::row_key(seed_key, counters[r]);  // all 64 counter bits (docs/spec.md §7)
      float tv = kNegInf, bv = kNegInf;
      for (int64_t v = 0; v < V; ++v) {
        const float score = to_f(z[v]) / temp_f + rng::gumbel(key, v);
        if (score > tv) { tv = score; ti = v; }
        if (v != mask_id && score > bv) { bv = score; bi = v; }
      }
    }
    // pass 2: s = sum exp(z - m)
    const double s = row_sum_exp(z, V, m);
    const float inv_s = static_cast<float>(1.0 / s);
    auto prob = [&](int64_t id) { return std::exp(to_f(z[id]) - m) * inv_s; };
    top_id[r] = ti;
    best_id[r] = bi;
    top_p[r] = prob(ti);
    best_p[r] = prob(bi);
    mask_p[r] = prob(mask_id);
    cur_p[r] = prob(tok);
  }
}

// The same rows compiled for AVX2 + FMA (every helper above is inlined into it); chosen at run time.
#if defined(__x86_64__) || defined(__i386__)
#define RMK_AVX2_CLONE __attribute__((target("avx2,fma"), flatten))
#else
#define RMK_AVX2_CLONE
#endif
template <typename T>
RMK_AVX2_CLONE void rm_stats_rows_avx2(
    const T* base, int64_t row_begin, int64_t row_end, int64_t V, int64_t L1, int64_t stride0, int64_t stride1,
    const int64_t* tokens, const int64_t* counters, int64_t mask_id, double temperature, uint32_t seed_key,
    int64_t* top_id, float* top_p, float* mask_p, float* cur_p, int64_t* best_id, float* best_p, int32_t* status) {
  rm_stats_rows<T>(base, row_begin, row_end, V, L1, stride0, stride1, tokens, counters, mask_id, temperature,
                   seed_key, top_id, top_p, mask_p, cur_p, best_id, best_p, status);
}

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

void check_out(const char* name, const at::Tensor& t, int64_t n, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == dtype && t.dim() == 1 && t.size(0) == n && t.is_contiguous(),
                    name, " must be a contiguous CPU ", dtype, " tensor of shape [", n, "]");
}

// Writes the statistics of the n_rows rows of `logits` (row r at (r / L1) * stride0 + (r % L1) * stride1
// elements from its first element; the last dimension contiguous) into the preallocated outputs.
void rm_stats_cpu_out(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& counters, int64_t L1,
                      int64_t stride0, int64_t stride1, int64_t mask_id, double temperature, int64_t seed_key,
                      at::Tensor& top_id, at::Tensor& top_p, at::Tensor& mask_p, at::Tensor& cur_p, at::Tensor& best_id,
                      at::Tensor& best_p, at::Tensor& status) {
  TORCH_CHECK_VALUE(logits.device().is_cpu(), "logits must be a CPU tensor for rm_stats_cpu_out");
  TORCH_CHECK_VALUE(logits.dim() >= 1 && logits.stride(-1) == 1, "logits must have a contiguous last dimension");
  const int64_t V = logits.size(-1);
  const int64_t n_rows = tokens.numel();
  TORCH_CHECK_VALUE(V > 0, "logits has an empty vocabulary dimension (V == 0)");
  TORCH_CHECK_VALUE(mask_id >= 0 && mask_id < V, "mask_id=", mask_id, " is outside [0, V=", V, ")");
  TORCH_CHECK_VALUE(tokens.scalar_type() == at::kLong && tokens.is_contiguous(), "tokens must be a contiguous int64 tensor");
  TORCH_CHECK_VALUE(counters.scalar_type() == at::kLong && counters.is_contiguous() && counters.numel() == n_rows,
                    "counters must be a contiguous int64 tensor of ", n_rows, " elements");
  TORCH_CHECK_VALUE(L1 >= 1, "L1 must be >= 1");
  check_out("top_id", top_id, n_rows, at::kLong);
  check_out("best_id", best_id, n_rows, at::kLong);
  check_out("top_p", top_p, n_rows, at::kFloat);
  check_out("mask_p", mask_p, n_rows, at::kFloat);
  check_out("cur_p", cur_p, n_rows, at::kFloat);
  check_out("best_p", best_p, n_rows, at::kFloat);
  check_out("status", status, n_rows, at::kInt);
  if (n_rows == 0) return;
  // the two-stride row layout must stay inside the tensor's storage
  const int64_t last = (n_rows - 1) / L1 * stride0 + (n_rows - 1) % L1 * stride1 + V;
  const int64_t avail =
      static_cast<int64_t>(logits.storage().nbytes() / logits.element_size()) - logits.storage_offset();
  TORCH_CHECK_VALUE(stride0 >= 0 && stride1 >= 0 && last <= avail, "row layout reads outside logits' storage");
  const uint32_t key = static_cast<uint32_t>(seed_key & 0xFFFFFFFF);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "rm_stats_cpu", [&] {
    const scalar_t* base = logits.const_data_ptr<scalar_t>();
    auto rows = cpu_has_avx2() ? &rm_stats_rows_avx2<scalar_t> : &rm_stats_rows<scalar_t>;
    at::parallel_for(0, n_rows, 1, [&](int64_t b, int64_t e) {
      rows(base, b, e, V, L1, stride0, stride1, tokens.const_data_ptr<int64_t>(),
                              counters.const_data_ptr<int64_t>(), mask_id, temperature, key,
                              top_id.data_ptr<int64_t>(), top_p.data_ptr<float>(), mask_p.data_ptr<float>(),
                              cur_p.data_ptr<float>(), best_id.data_ptr<int64_t>(), best_p.data_ptr<float>(),
                              status.data_ptr<int32_t>());
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Partial statistics of one vocabulary chunk, merged into a running per-row state (the CPU path of
// rm_linear_stats, docs/spec.md §9): the caller computes the logits of columns [col0, col0 + C) into a
// [N, C] float32 buffer, this pass folds them into the state, and the next chunk reuses the buffer.
//
// state [N, 8] float64 per row: 0 m (running max), 1 s (sum of exp(z - m); NaN once a NaN was
// seen), 2 best score (mask excluded), 3 logit at the best id, 4 mask logit, 5 mask score,
// 6 current-token logit (-inf until their columns pass), 7 unused. best_id [N] int64.
// Ties: chunks arrive in increasing column order and a later chunk replaces the best only with a
// strictly higher score, so the lowest id wins, as torch.argmax.
// ---------------------------------------------------------------------------------------------
enum : int { kM = 0, kS = 1, kBestScore = 2, kBestLogit = 3, kMaskLogit = 4, kMaskScore = 5, kCurLogit = 6, kState = 8 };

inline void chunk_row(const float* z, int64_t C, int64_t col0, int64_t tok, int64_t mask_id, bool sample,
                      float temp_f, rng::RowKey key, double* st, int64_t* best_id) {
  const int64_t local_mask = mask_id - col0;
  const bool has_mask = local_mask >= 0 && local_mask < C;
  if (has_mask) {
    const float zm = z[local_mask];
    st[kMaskLogit] = zm;
    st[kMaskScore] = sample ? zm / temp_f + rng::gumbel(key, mask_id) : zm;
  }
  if (tok >= col0 && tok < col0 + C) st[kCurLogit] = z[tok - col0];
  if (std::isnan(st[kS])) return;  // a NaN already flagged this row
  int nan = 0;
  const float mc = row_max(z, C, &nan);
  if (nan) {
    st[kS] = std::numeric_limits<double>::quiet_NaN();
    return;
  }
  if (mc == kNegInf) return;  // nothing in this chunk can change the state
  // online softmax merge in double
  const double m_old = st[kM];
  const double sc = row_sum_exp(z, C, mc);
  if (mc > m_old) {
    st[kS] = st[kS] * std::exp(m_old - static_cast<double>(mc)) + sc;  // exp(-inf) = 0 for the first chunk
    st[kM] = mc;
  } else {
    st[kS] += sc * std::exp(static_cast<double>(mc) - m_old);
  }
  // the chunk's best non-mask candidate
  float bv = kNegInf, bz = kNegInf;
  int64_t bi = -1;
  if (!sample) {
    int64_t ti = 0;
    while (z[ti] != mc) ++ti;  // first column holding the chunk's max
    if (ti != local_mask) {
      bi = ti;
      bv = bz = mc;
    } else {
      for (int64_t v = 0; v < C; ++v) {
        if (v != local_mask && z[v] > bv) { bv = z[v]; bi = v; }
      }
      bz = bv;
    }
  } else {
    for (int64_t v = 0; v < C; ++v) {
      if (v == local_mask) continue;
      const float score = z[v] / temp_f + rng::gumbel(key, col0 + v);
      if (score > bv) { bv = score; bi = v; }
    }
    if (bi >= 0) bz = z[bi];
  }
  if (bi >= 0 && bv > st[kBestScore]) {
    st[kBestScore] = bv;
    st[kBestLogit] = bz;
    *best_id = col0 + bi;
  }
}

void chunk_rows(const float* base, int64_t row_stride, int64_t b, int64_t e, int64_t C, int64_t col0,
                const int64_t* tokens, const int64_t* counters, int64_t mask_id, double temperature, uint32_t seed_key,
                double* state, int64_t* best_id) {
  const bool sample = temperature > 0;
  const float temp_f = static_cast<float>(temperature);
  for (int64_t r = b; r < e; ++r) {
    const rng::RowKey key = sample ? rng::row_key(seed_key, counters[r]) : 0u;
    chunk_row(base + r * row_stride, C, col0, tokens[r], mask_id, sample, temp_f, key, state + r * kState, best_id + r);
  }
}

RMK_AVX2_CLONE void chunk_rows_avx2(const float* base, int64_t row_stride, int64_t b, int64_t e, int64_t C,
                                    int64_t col0, const int64_t* tokens, const int64_t* counters, int64_t mask_id,
                                    double temperature, uint32_t seed_key, double* state, int64_t* best_id) {
  chunk_rows(base, row_stride, b, e, C, col0, tokens, counters, mask_id, temperature, seed_key, state, best_id);
}

// Fold the logits chunk z [N, C] (float32, unit column stride) of columns [col0, col0 + C) into
// `state` [N, 8] float64 and `best_id` [N] int64 (initialise with rm_linear_stats' _cpu_state).
void linear_stats_chunk_cpu_(const at::Tensor& z, int64_t col0, const at::Tensor& tokens, const at::Tensor& counters,
                             int64_t mask_id, double temperature, int64_t seed_key, at::Tensor& state,
                             at::Tensor& best_id) {
  TORCH_CHECK_VALUE(z.device().is_cpu() && z.scalar_type() == at::kFloat && z.dim() == 2 && z.stride(1) == 1 &&
                        z.stride(0) >= z.size(1),
                    "z must be a CPU float32 [N, C] tensor with unit column stride");
  const int64_t n_rows = z.size(0), C = z.size(1);
  TORCH_CHECK_VALUE(col0 >= 0, "col0 must be >= 0");
  TORCH_CHECK_VALUE(tokens.scalar_type() == at::kLong && tokens.is_contiguous() && tokens.numel() == n_rows,
                    "tokens must be a contiguous int64 tensor of ", n_rows, " elements");
  TORCH_CHECK_VALUE(counters.scalar_type() == at::kLong && counters.is_contiguous() && counters.numel() == n_rows,
                    "counters must be a contiguous int64 tensor of ", n_rows, " elements");
  TORCH_CHECK_VALUE(state.scalar_type() == at::kDouble && state.is_contiguous() && state.dim() == 2 &&
                        state.size(0) == n_rows && state.size(1) == kState,
                    "state must be a contiguous float64 tensor of shape [", n_rows, ", ", int(kState), "]");
  TORCH_CHECK_VALUE(best_id.scalar_type() == at::kLong && best_id.is_contiguous() && best_id.numel() == n_rows,
                    "best_id must be a contiguous int64 tensor of ", n_rows, " elements");
  if (n_rows == 0 || C == 0) return;
  const uint32_t key = static_cast<uint32_t>(seed_key & 0xFFFFFFFF);
  auto rows = cpu_has_avx2() ? &chunk_rows_avx2 : &chunk_rows;
  const float* base = z.const_data_ptr<float>();
  const int64_t row_stride = z.stride(0);
  at::parallel_for(0, n_rows, 1, [&](int64_t b, int64_t e) {
    rows(base, row_stride, b, e, C, col0, tokens.const_data_ptr<int64_t>(), counters.const_data_ptr<int64_t>(),
         mask_id, temperature, key, state.data_ptr<double>(), best_id.data_ptr<int64_t>());
  });
}

}  // namespace
}  // namespace rmk

// the schemas are in csrc/module.cpp
TORCH_LIBRARY_IMPL(rmkernels, CPU, m) {
  m.impl("rm_stats_cpu_out", &rmk::rm_stats_cpu_out);
  m.impl("linear_stats_chunk_cpu_", &rmk::linear_stats_chunk_cpu_);
}
