// History Reference (HER) input embeddings (docs/spec.md §3): the CUDA kernels.
//
// Forward: one block per position. Threads own "pair-vectors": VEC consecutive dimensions k and the
// VEC dimensions k + D/2 they rotate with (VEC = 16 bytes of the weight dtype when D, the row
// stride and the pointers allow 16-byte loads, else 1), ITEMS pair-vectors per thread held in
// registers. The block reads the H + 1 ids once into shared memory, accumulates
// s = sum_j hw[j] * Rot_j(E[h_j]) in float32 (float64 for float64 weights), computes the LayerNorm
// statistics with two block reductions (mean, then the centred variance), and writes
// E[x] + LayerNorm(s) once. Rows without history copy E[x]. An id outside [0, V) or a history
// length outside [0, H] is never dereferenced: that position's row is written as NaN.
//
// Backward: blocks stride over positions with fixed columns per thread, recompute s, accumulate
// the gamma / beta gradients in registers (written as per-block partials, summed on the host
// side with one reduction), and scatter-add the weight gradient with atomicAdd into a float32
// (float64) buffer.
#include "history_embed.h"

// Only c10/core (not c10/cuda) headers are used on the host side, so that this file also compiles
// against the headers of a CPU-only torch (csrc/compile_cuda_objects.sh, CI without a GPU).
#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace rmk {
namespace {

constexpr int kMaxItems = 8;
constexpr int kThreadsTarget = 256;

template <int N>
using IntC = std::integral_constant<int, N>;

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <int VEC, typename T>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* __restrict__ p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

template <int VEC, typename T, typename A>
__device__ __forceinline__ void unpack(const Pack<T, VEC>& pk, A (&out)[VEC]) {
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = static_cast<A>(pk.v[i]);
}

template <int VEC, typename T, typename A>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, A (&out)[VEC]) {
  unpack(load_pack<VEC>(p), out);
}

// VEC values of an optional [D] parameter (the LayerNorm affine): `dflt` when absent
template <int VEC, typename A>
__device__ __forceinline__ void load_param(const A* __restrict__ p, int64_t k, A dflt, A (&out)[VEC]) {
  if (p) {
    load_vec<VEC>(p + k, out);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = dflt;
  }
}

template <int VEC, typename T, typename A>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const A (&in)[VEC]) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int i = 0; i < VEC; ++i) pk.v[i] = static_cast<T>(in[i]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
}

// Sum over the block (blockDim.x a multiple of 32); every thread gets the total.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // red is free again
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  v = lane < static_cast<int>(blockDim.x >> 5) ? red[lane] : A(0);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T, typename A>
struct Params {
  const T* W;  // [V, ws0]
  int64_t ws0, V, H, L, D, N;
  const int64_t* x;     // [N]
  const int64_t* hid;   // [B, H, L]
  const int64_t* hlen;  // [B]
  const bool* mask;     // [N]
  const A* cos;         // [H, D/2]
  const A* sin;         // [H, D/2]
  const A* hw;          // [H]
  const A* gamma;       // [D] or null
  const A* beta;        // [D] or null
  A eps;
  T* out;         // forward: [N, D]
  const T* gout;  // backward: [N, D]
  A* gw;          // backward: [V, D] or null
  A* part;        // backward: [gridDim.x, 2, D]
};

// This thread's share of one position: dims k .. k+VEC-1 (lo) and half+k .. (hi) of its pair-vectors,
// plus the odd-D last dimension on thread 0.
template <typename A, int VEC, int ITEMS>
struct RowPart {
  A lo[ITEMS][VEC];
  A hi[ITEMS][VEC];
  A tail;

  __device__ void zero() {
#pragma unroll
    for (int it = 0; it < ITEMS; ++it)
#pragma unroll
      for (int i = 0; i < VEC; ++i) lo[it][i] = hi[it][i] = A(0);
    tail = A(0);
  }
};

__device__ __forceinline__ int64_t pair_vector(int it) { return threadIdx.x + static_cast<int64_t>(it) * blockDim.x; }

// Reads the ids of position `pos` into s_ids (0: current token, 1 + j: history slot j). Returns
// true (for the whole block) when an id or the row's history length is out of range.
template <typename T, typename A>
__device__ bool load_position(const Params<T, A>& P, int64_t pos, int64_t* s_ids) {
  const int64_t b = pos / P.L, l = pos % P.L;
  __syncthreads();  // the previous position's readers of s_ids are done
  int bad = 0;
  for (int64_t t = threadIdx.x; t <= P.H; t += blockDim.x) {
    const int64_t id = t == 0 ? P.x[pos] : P.hid[(b * P.H + t - 1) * P.L + l];
    bad |= (id < 0) | (id >= P.V);
    s_ids[t] = id;
  }
  const int64_t hb = P.hlen[b];
  bad |= (hb < 0) | (hb > P.H);
  return __syncthreads_or(bad) != 0;
}

// s = sum_{j < hb} hw[j] * Rot_j(E[h_j]) (this thread's part)
template <int VEC, int ITEMS, typename T, typename A>
__device__ void history_sum(const Params<T, A>& P, const int64_t* s_ids, int64_t hb, RowPart<A, VEC, ITEMS>& r) {
  const int64_t half = P.D / 2, npv = half / VEC;
  r.zero();
#pragma unroll 2  // two slots' loads in flight per thread
  for (int64_t j = 0; j < hb; ++j) {
    const T* e = P.W + s_ids[1 + j] * P.ws0;
    const A* c = P.cos + j * half;
    const A* sn = P.sin + j * half;
    const A w = P.hw[j];
#pragma unroll
    for (int it = 0; it < ITEMS; ++it) {
      const int64_t pv = pair_vector(it);
      if (pv < npv) {
        const int64_t k = pv * VEC;
        A a[VEC], bb[VEC], cv[VEC], sv[VEC];
        load_vec<VEC>(e + k, a);
        load_vec<VEC>(e + half + k, bb);
        load_vec<VEC>(c + k, cv);
        load_vec<VEC>(sn + k, sv);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          r.lo[it][i] += w * (a[i] * cv[i] - bb[i] * sv[i]);
          r.hi[it][i] += w * (a[i] * sv[i] + bb[i] * cv[i]);
        }
      }
    }
    if ((P.D & 1) && threadIdx.x == 0) r.tail += w * static_cast<A>(e[P.D - 1]);
  }
}

// s for a position with history (zero on prompt positions) and its (mean, rstd) as layer_norm.
template <int VEC, int ITEMS, typename T, typename A>
__device__ void normalised_sum(const Params<T, A>& P, int64_t pos, const int64_t* s_ids, int64_t hb,
                               RowPart<A, VEC, ITEMS>& r, A* red, A& mean, A& rstd) {
  if (P.mask[pos]) {
    history_sum<VEC, ITEMS>(P, s_ids, hb, r);
  } else {
    r.zero();
  }
  const int64_t npv = P.D / 2 / VEC;
  const bool tail = (P.D & 1) && threadIdx.x == 0;
  A acc = tail ? r.tail : A(0);
#pragma unroll
  for (int it = 0; it < ITEMS; ++it)
    if (pair_vector(it) < npv)
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc += r.lo[it][i] + r.hi[it][i];
  mean = block_sum(acc, red) / A(P.D);
  acc = tail ? (r.tail - mean) * (r.tail - mean) : A(0);
#pragma unroll
  for (int it = 0; it < ITEMS; ++it)
    if (pair_vector(it) < npv)
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const A dl = r.lo[it][i] - mean, dh = r.hi[it][i] - mean;
        acc += dl * dl + dh * dh;
      }
  const A var = block_sum(acc, red) / A(P.D);
  rstd = A(1) / sqrt(var + P.eps);
}

template <typename T, typename A, int VEC, int ITEMS>
__global__ void __launch_bounds__(ITEMS == kMaxItems ? 1024 : kThreadsTarget)
    her_forward_kernel(const Params<T, A> P) {
  extern __shared__ int64_t s_ids[];  // [H + 1]
  __shared__ A red[32];
  const int64_t pos = blockIdx.x;
  const int64_t half = P.D / 2, npv = half / VEC;
  T* o = P.out + pos * P.D;
  if (load_position(P, pos, s_ids)) {
    for (int64_t k = threadIdx.x; k < P.D; k += blockDim.x) o[k] = static_cast<T>(std::numeric_limits<A>::quiet_NaN());
    return;
  }
  const T* cur = P.W + s_ids[0] * P.ws0;
  const int64_t hb = P.hlen[pos / P.L];
  if (hb == 0) {
    for (int64_t k = threadIdx.x * static_cast<int64_t>(VEC); k + VEC <= P.D; k += blockDim.x * static_cast<int64_t>(VEC)) {
      A v[VEC];
      load_vec<VEC>(cur + k, v);
      store_vec<VEC>(o + k, v);
    }
    return;  // (VEC > 1 only when D is a multiple of 2 * VEC, so this covers every dimension)
  }
  Pack<T, VEC> cur_lo[ITEMS], cur_hi[ITEMS];  // issued now, so these loads overlap the history's
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int64_t pv = pair_vector(it);
    if (pv < npv) {
      cur_lo[it] = load_pack<VEC>(cur + pv * VEC);
      cur_hi[it] = load_pack<VEC>(cur + half + pv * VEC);
    }
  }
  RowPart<A, VEC, ITEMS> r;
  A mean, rstd;
  normalised_sum<VEC, ITEMS>(P, pos, s_ids, hb, r, red, mean, rstd);
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int64_t pv = pair_vector(it);
    if (pv >= npv) continue;
    const int64_t k = pv * VEC;
    A c[VEC], g[VEC], bt[VEC], res[VEC];
    unpack(cur_lo[it], c);
    load_param<VEC>(P.gamma, k, A(1), g);
    load_param<VEC>(P.beta, k, A(0), bt);
#pragma unroll
    for (int i = 0; i < VEC; ++i) res[i] = c[i] + ((r.lo[it][i] - mean) * rstd * g[i] + bt[i]);
    store_vec<VEC>(o + k, res);
    unpack(cur_hi[it], c);
    load_param<VEC>(P.gamma, half + k, A(1), g);
    load_param<VEC>(P.beta, half + k, A(0), bt);
#pragma unroll
    for (int i = 0; i < VEC; ++i) res[i] = c[i] + ((r.hi[it][i] - mean) * rstd * g[i] + bt[i]);
    store_vec<VEC>(o + half + k, res);
  }
  if ((P.D & 1) && threadIdx.x == 0) {
    const int64_t k = P.D - 1;
    const A g = P.gamma ? P.gamma[k] : A(1), bt = P.beta ? P.beta[k] : A(0);
    o[k] = static_cast<T>(static_cast<A>(cur[k]) + ((r.tail - mean) * rstd * g + bt));
  }
}

template <typename T, typename A, int VEC, int ITEMS>
__global__ void __launch_bounds__(ITEMS == kMaxItems ? 1024 : kThreadsTarget)
    her_backward_kernel(const Params<T, A> P) {
  extern __shared__ int64_t s_ids[];  // [H + 1]
  __shared__ A red[32];
  const int64_t half = P.D / 2, npv = half / VEC;
  const bool tail = (P.D & 1) && threadIdx.x == 0;
  RowPart<A, VEC, ITEMS> dg, db;  // gamma / beta gradients of this thread's columns, over its positions
  dg.zero();
  db.zero();
  for (int64_t pos = blockIdx.x; pos < P.N; pos += gridDim.x) {
    if (load_position(P, pos, s_ids)) continue;  // the forward wrote NaN there: no gradient
    const T* go = P.gout + pos * P.D;
    if (P.gw) {
      A* row = P.gw + s_ids[0] * P.D;
      for (int64_t k = threadIdx.x; k < P.D; k += blockDim.x) atomicAdd(row + k, static_cast<A>(go[k]));
    }
    const int64_t hb = P.hlen[pos / P.L];
    if (hb == 0) continue;
    RowPart<A, VEC, ITEMS> r;  // s, then xhat, then ds
    RowPart<A, VEC, ITEMS> dx;  // d loss / d xhat = go * gamma
    dx.zero();
    A mean, rstd;
    normalised_sum<VEC, ITEMS>(P, pos, s_ids, hb, r, red, mean, rstd);
    A m1 = 0, m2 = 0;  // partial sums of dx and dx * xhat
#pragma unroll
    for (int it = 0; it < ITEMS; ++it) {
      const int64_t pv = pair_vector(it);
      if (pv >= npv) continue;
      const int64_t k = pv * VEC;
      A gl[VEC], gh[VEC], wl[VEC], wh[VEC];
      load_vec<VEC>(go + k, gl);
      load_vec<VEC>(go + half + k, gh);
      load_param<VEC>(P.gamma, k, A(1), wl);
      load_param<VEC>(P.gamma, half + k, A(1), wh);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        r.lo[it][i] = (r.lo[it][i] - mean) * rstd;
        r.hi[it][i] = (r.hi[it][i] - mean) * rstd;
        dg.lo[it][i] += gl[i] * r.lo[it][i];
        dg.hi[it][i] += gh[i] * r.hi[it][i];
        db.lo[it][i] += gl[i];
        db.hi[it][i] += gh[i];
        dx.lo[it][i] = gl[i] * wl[i];
        dx.hi[it][i] = gh[i] * wh[i];
        m1 += dx.lo[it][i] + dx.hi[it][i];
        m2 += dx.lo[it][i] * r.lo[it][i] + dx.hi[it][i] * r.hi[it][i];
      }
    }
    if (tail) {
      const A g = static_cast<A>(go[P.D - 1]);
      r.tail = (r.tail - mean) * rstd;
      dg.tail += g * r.tail;
      db.tail += g;
      dx.tail = g * (P.gamma ? P.gamma[P.D - 1] : A(1));
      m1 += dx.tail;
      m2 += dx.tail * r.tail;
    }
    if (!P.gw || !P.mask[pos]) continue;
    m1 = block_sum(m1, red) / A(P.D);
    m2 = block_sum(m2, red) / A(P.D);
#pragma unroll
    for (int it = 0; it < ITEMS; ++it)
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        r.lo[it][i] = rstd * (dx.lo[it][i] - m1 - r.lo[it][i] * m2);
        r.hi[it][i] = rstd * (dx.hi[it][i] - m1 - r.hi[it][i] * m2);
      }
    r.tail = rstd * (dx.tail - m1 - r.tail * m2);
    for (int64_t j = 0; j < hb; ++j) {
      A* row = P.gw + s_ids[1 + j] * P.D;
      const A* c = P.cos + j * half;
      const A* sn = P.sin + j * half;
      const A w = P.hw[j];
#pragma unroll
      for (int it = 0; it < ITEMS; ++it) {
        const int64_t pv = pair_vector(it);
        if (pv >= npv) continue;
        const int64_t k = pv * VEC;
        A cv[VEC], sv[VEC];
        load_vec<VEC>(c + k, cv);
        load_vec<VEC>(sn + k, sv);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          atomicAdd(row + k + i, w * (cv[i] * r.lo[it][i] + sv[i] * r.hi[it][i]));
          atomicAdd(row + half + k + i, w * (cv[i] * r.hi[it][i] - sv[i] * r.lo[it][i]));
        }
      }
      if (tail) atomicAdd(row + P.D - 1, w * r.tail);
    }
  }
  A* pg = P.part + static_cast<int64_t>(blockIdx.x) * 2 * P.D;
  A* pb = pg + P.D;
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int64_t pv = pair_vector(it);
    if (pv >= npv) continue;
    const int64_t k = pv * VEC;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      pg[k + i] = dg.lo[it][i];
      pg[half + k + i] = dg.hi[it][i];
      pb[k + i] = db.lo[it][i];
      pb[half + k + i] = db.hi[it][i];
    }
  }
  if (tail) {
    pg[P.D - 1] = dg.tail;
    pb[P.D - 1] = db.tail;
  }
}

#define RMK_CUDA_CHECK(expr)                                                                      \
  do {                                                                                            \
    const cudaError_t err_ = (expr);                                                              \
    TORCH_CHECK(err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(err_), " (", #expr, ")"); \
  } while (0)

// torch's current stream on `device` (what at::cuda::getCurrentCUDAStream returns)
cudaStream_t current_stream(const c10::Device& device) {
  const c10::Stream s = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(device);
  return static_cast<cudaStream_t>(s.native_handle());
}

inline bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Launches the forward (grid = N) or backward (grid = `grid`) kernel with the widest vector width
// the layout allows and the fewest items per thread that keep the block within its thread limit.
template <typename T, typename A>
void launch(const Params<T, A>& P, bool backward, int64_t grid, cudaStream_t stream) {
  constexpr int VMAX = 16 / sizeof(T);
  const size_t avec = sizeof(A) * VMAX;
  const bool vec_ok = P.D % (2 * VMAX) == 0 && P.ws0 % VMAX == 0 && aligned(P.W, 16) && aligned(P.cos, avec) &&
                      aligned(P.sin, avec) && (!P.gamma || aligned(P.gamma, avec)) &&
                      (!P.beta || aligned(P.beta, avec)) && (!P.out || aligned(P.out, 16)) &&
                      (!P.gout || aligned(P.gout, 16));
  const int vec = vec_ok ? VMAX : 1;
  const int64_t npv = P.D / 2 / vec;
  int items = 1;
  while (items < kMaxItems && (npv + items - 1) / items > kThreadsTarget) items *= 2;
  const int64_t threads = std::max<int64_t>(32, ((npv + items - 1) / items + 31) / 32 * 32);
  TORCH_CHECK_VALUE(threads <= 1024, "history_embed (CUDA): D = ", P.D, " is larger than supported (",
                    2 * 1024 * kMaxItems * vec, ")");
  TORCH_CHECK_VALUE(P.H + 1 <= 4096, "history_embed (CUDA): H = ", P.H, " is larger than supported (4095)");
  const size_t smem = static_cast<size_t>(P.H + 1) * sizeof(int64_t);
  auto go = [&](auto vec_c, auto items_c) {
    constexpr int V = decltype(vec_c)::value, I = decltype(items_c)::value;
    if (backward) {
      her_backward_kernel<T, A, V, I><<<static_cast<unsigned>(grid), static_cast<unsigned>(threads), smem, stream>>>(P);
    } else {
      her_forward_kernel<T, A, V, I><<<static_cast<unsigned>(grid), static_cast<unsigned>(threads), smem, stream>>>(P);
    }
    RMK_CUDA_CHECK(cudaGetLastError());
  };
  auto with_items = [&](auto vec_c) {
    switch (items) {
      case 1: go(vec_c, IntC<1>{}); break;
      case 2: go(vec_c, IntC<2>{}); break;
      case 4: go(vec_c, IntC<4>{}); break;
      default: go(vec_c, IntC<kMaxItems>{}); break;
    }
  };
  if (vec == 1) {
    with_items(IntC<1>{});
  } else {
    with_items(IntC<VMAX>{});
  }
}

struct CudaInputs {
  at::Tensor weight, x, hid, hlen, mask, cos, sin, hw, gamma, beta;
};

template <typename T, typename A>
Params<T, A> make_params(const CudaInputs& in, const HerSizes& n, double eps) {
  Params<T, A> P{};
  P.W = in.weight.data_ptr<T>();
  P.ws0 = in.weight.stride(0);
  P.V = n.V;
  P.H = n.H;
  P.L = n.L;
  P.D = n.D;
  P.N = n.B * n.L;
  P.x = in.x.data_ptr<int64_t>();
  P.hid = in.hid.data_ptr<int64_t>();
  P.hlen = in.hlen.data_ptr<int64_t>();
  P.mask = in.mask.data_ptr<bool>();
  P.cos = in.cos.data_ptr<A>();
  P.sin = in.sin.data_ptr<A>();
  P.hw = in.hw.data_ptr<A>();
  P.gamma = in.gamma.defined() ? in.gamma.data_ptr<A>() : nullptr;
  P.beta = in.beta.defined() ? in.beta.data_ptr<A>() : nullptr;
  P.eps = static_cast<A>(eps);
  return P;
}

CudaInputs prepare_cuda(const at::Tensor& weight, const at::Tensor& input_ids, const at::Tensor& history_ids,
                        const at::Tensor& history_len, const at::Tensor& token_mask, const at::Tensor& cos,
                        const at::Tensor& sin, const at::Tensor& hw, const std::optional<at::Tensor>& ln_weight,
                        const std::optional<at::Tensor>& ln_bias, const HerSizes& n) {
  TORCH_CHECK_VALUE(n.B * n.L <= std::numeric_limits<int32_t>::max(), "history_embed (CUDA): B * L = ", n.B * n.L,
                    " positions is more than one launch supports");
  return {weight.stride(1) == 1 ? weight : weight.contiguous(),
          input_ids.contiguous(),
          history_ids.contiguous(),
          history_len.contiguous(),
          token_mask.contiguous(),
          cos.contiguous(),
          sin.contiguous(),
          hw.contiguous(),
          ln_weight.has_value() ? ln_weight->contiguous() : at::Tensor(),
          ln_bias.has_value() ? ln_bias->contiguous() : at::Tensor()};
}

at::Tensor history_embed_cuda(const at::Tensor& weight, const at::Tensor& input_ids, const at::Tensor& history_ids,
                              const at::Tensor& history_len, const at::Tensor& token_mask, const at::Tensor& cos,
                              const at::Tensor& sin, const at::Tensor& hw, const std::optional<at::Tensor>& ln_weight,
                              const std::optional<at::Tensor>& ln_bias, double eps) {
  const HerSizes n =
      check_her_args(weight, input_ids, history_ids, history_len, token_mask, cos, sin, hw, ln_weight, ln_bias);
  TORCH_CHECK_VALUE(eps > 0, "eps must be > 0, got ", eps);
  const c10::DeviceGuard guard(weight.device());
  const CudaInputs in =
      prepare_cuda(weight, input_ids, history_ids, history_len, token_mask, cos, sin, hw, ln_weight, ln_bias, n);
  at::Tensor out = at::empty({n.B, n.L, n.D}, weight.options());
  if (n.B * n.L == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "history_embed_cuda", [&] {
    using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    Params<scalar_t, A> P = make_params<scalar_t, A>(in, n, eps);
    P.out = out.data_ptr<scalar_t>();
    launch(P, /*backward=*/false, P.N, current_stream(weight.device()));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> history_embed_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& input_ids, const at::Tensor& history_ids,
    const at::Tensor& history_len, const at::Tensor& token_mask, const at::Tensor& cos, const at::Tensor& sin,
    const at::Tensor& hw, const std::optional<at::Tensor>& ln_weight, double eps, bool weight_grad) {
  const HerSizes n =
      check_her_args(weight, input_ids, history_ids, history_len, token_mask, cos, sin, hw, ln_weight, std::nullopt);
  check_grad_out(grad_out, n, weight);
  const c10::DeviceGuard guard(weight.device());
  const CudaInputs in =
      prepare_cuda(weight, input_ids, history_ids, history_len, token_mask, cos, sin, hw, ln_weight, std::nullopt, n);
  const at::Tensor go = grad_out.contiguous();
  const auto acc_opts = cos.options();
  const bool same = her_acc_type(weight.scalar_type()) == weight.scalar_type();
  at::Tensor grad_w = at::zeros({weight_grad ? n.V : 0, n.D}, weight.options());
  at::Tensor gw_acc = (weight_grad && !same) ? at::zeros({n.V, n.D}, acc_opts) : grad_w;
  const int64_t N = n.B * n.L;
  if (N == 0) return {grad_w, at::zeros({n.D}, acc_opts), at::zeros({n.D}, acc_opts)};
  int sms = 0;
  RMK_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, weight.device().index()));
  const int64_t grid = std::min<int64_t>(N, 8 * static_cast<int64_t>(sms));
  at::Tensor part = at::empty({grid, 2, n.D}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "history_embed_backward_cuda", [&] {
    using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    Params<scalar_t, A> P = make_params<scalar_t, A>(in, n, eps);
    P.gout = go.data_ptr<scalar_t>();
    P.gw = weight_grad ? gw_acc.data_ptr<A>() : nullptr;
    P.part = part.data_ptr<A>();
    launch(P, /*backward=*/true, grid, current_stream(weight.device()));
  });
  if (weight_grad && !same) grad_w.copy_(gw_acc);
  return {grad_w, part.select(1, 0).sum(0), part.select(1, 1).sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(rmkernels, CUDA, m) {
  m.impl("history_embed", &history_embed_cuda);
  m.impl("history_embed_backward", &history_embed_backward_cuda);
}

}  // namespace rmk
