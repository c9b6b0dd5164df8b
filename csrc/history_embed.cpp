// History Reference (HER) input embeddings (docs/spec.md §3): argument checks and the CPU kernels.
//
// Forward, per position p = (b, l) (at::parallel_for over positions):
//   rows with history_len[b] == 0:  out[p] = E[x_p]                      (a plain copy)
//   otherwise:                      s = sum_{j < history_len[b]} hw[j] * Rot_j(E[h_j]) * g_p   (acc dtype)
//                                   out[p] = E[x_p] + (s - mean(s)) * rstd(s) * gamma + beta
// The rotation pairs dimension k with k + D/2 (odd D: the last one passes through), so the inner
// loops run over k = 0 .. D/2 - 1 with unit stride and vectorise.
//
// Backward recomputes s (one more gather) instead of storing it:
//   phase 1 (parallel over positions): gamma / beta gradients into per-thread partials, and
//            ds = d loss / d s into a [N, D] buffer when the weight needs a gradient;
//   phase 2 (parallel over column ranges, every thread walks all positions): scatter-add of the
//            current-token rows and of hw[j] * Rot_j^T(ds) into the history rows. Each thread owns
//            its columns, so there are no races and the result is deterministic.
#include "history_embed.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace rmk {

namespace {

void check_1d(const char* name, const at::Tensor& t, int64_t n, at::ScalarType dtype, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, name, " must have shape [", n, "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == weight.device(), name, " is on ", t.device(), " but weight is on ", weight.device());
}

}  // namespace

void check_grad_out(const at::Tensor& grad_out, const HerSizes& n, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({n.B, n.L, n.D}) &&
                        grad_out.scalar_type() == weight.scalar_type() && grad_out.device() == weight.device(),
                    "grad_out must be [B, L, D] = [", n.B, ", ", n.L, ", ", n.D, "] in ", weight.scalar_type(),
                    " on ", weight.device(), ", got ", grad_out.sizes(), " ", grad_out.scalar_type(), " on ",
                    grad_out.device());
}

HerSizes check_her_args(const at::Tensor& weight, const at::Tensor& input_ids, const at::Tensor& history_ids,
                        const at::Tensor& history_len, const at::Tensor& token_mask, const at::Tensor& cos,
                        const at::Tensor& sin, const at::Tensor& hw, const std::optional<at::Tensor>& ln_weight,
                        const std::optional<at::Tensor>& ln_bias) {
  TORCH_CHECK_VALUE(weight.dim() == 2, "weight must be 2-D [V, D], got shape ", weight.sizes());
  const auto wt = weight.scalar_type();
  TORCH_CHECK_VALUE(wt == at::kFloat || wt == at::kHalf || wt == at::kBFloat16 || wt == at::kDouble,
                    "weight must be float32, float16, bfloat16 or float64, got ", wt);
  HerSizes n{0, 0, 0, weight.size(0), weight.size(1)};
  TORCH_CHECK_VALUE(n.V > 0 && n.D > 0, "weight must have at least one row and one column, got shape ", weight.sizes());
  TORCH_CHECK_VALUE(input_ids.dim() == 2, "input_ids must be 2-D [B, L], got shape ", input_ids.sizes());
  n.B = input_ids.size(0);
  n.L = input_ids.size(1);
  TORCH_CHECK_VALUE(history_ids.dim() == 3 && history_ids.size(0) == n.B && history_ids.size(2) == n.L,
                    "history_ids must have shape [B, H, L] = [", n.B, ", H, ", n.L, "], got ", history_ids.sizes());
  n.H = history_ids.size(1);
  TORCH_CHECK_VALUE(token_mask.sizes() == input_ids.sizes(), "token_mask must have shape ", input_ids.sizes(),
                    ", got ", token_mask.sizes());
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"input_ids", &input_ids},
                         {"history_ids", &history_ids}, {"history_len", &history_len}}) {
    TORCH_CHECK_VALUE(t->scalar_type() == at::kLong, name, " must be int64, got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == weight.device(), name, " is on ", t->device(), " but weight is on ",
                      weight.device());
  }
  check_1d("history_len", history_len, n.B, at::kLong, weight);
  TORCH_CHECK_VALUE(token_mask.scalar_type() == at::kBool, "token_mask must be bool, got ", token_mask.scalar_type());
  TORCH_CHECK_VALUE(token_mask.device() == weight.device(), "token_mask is on ", token_mask.device(),
                    " but weight is on ", weight.device());
  const auto acc = her_acc_type(wt);
  const int64_t half = n.D / 2;
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"cos", &cos}, {"sin", &sin}}) {
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == n.H && t->size(1) == half, name, " must have shape [H, D/2] = [",
                      n.H, ", ", half, "], got ", t->sizes());
    TORCH_CHECK_VALUE(t->scalar_type() == acc, name, " must have dtype ", acc, ", got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == weight.device(), name, " is on ", t->device(), " but weight is on ",
                      weight.device());
  }
  check_1d("hw", hw, n.H, acc, weight);
  if (ln_weight.has_value()) check_1d("ln_weight", *ln_weight, n.D, acc, weight);
  if (ln_bias.has_value()) check_1d("ln_bias", *ln_bias, n.D, acc, weight);
  return n;
}

namespace {

// ---------------------------------------------------------------------------------------------
// CPU building blocks (acc_t = float for float32 / float16 / bfloat16 weights, double for float64)
// ---------------------------------------------------------------------------------------------
void check_ids_cpu(const at::Tensor& ids, int64_t V, const char* name) {
  const int64_t* p = ids.data_ptr<int64_t>();
  const int64_t n = ids.numel();
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) bad |= (p[i] < 0) | (p[i] >= V);
  if (!bad) return;
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < V, name, " holds ids outside [0, V=", V, "): flattened element ", i,
                      " is ", p[i]);
}

void check_lengths_cpu(const at::Tensor& history_len, int64_t H) {
  const int64_t* p = history_len.data_ptr<int64_t>();
  for (int64_t b = 0; b < history_len.numel(); ++b)
    TORCH_CHECK_VALUE(p[b] >= 0 && p[b] <= H, "history_len must be in [0, H=", H, "], got history_len[", b,
                      "] = ", p[b]);
}

// A row of the table as acc_t: the row itself when no conversion is needed, else converted into buf.
template <typename scalar_t, typename acc_t>
inline const acc_t* row_as_acc(const scalar_t* src, acc_t* buf, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(src[i]);
    return buf;
  }
}

// sum_{k < n} f(k) with 16 independent partial sums, so the loop vectorises without -ffast-math.
template <typename acc_t, typename F>
inline acc_t lane_sum(int64_t n, F f) {
  constexpr int LANES = 16;
  acc_t part[LANES] = {};
  int64_t k = 0;
  for (; k + LANES <= n; k += LANES)
    for (int u = 0; u < LANES; ++u) part[u] += f(k + u);
  acc_t total = 0;
  for (; k < n; ++k) total += f(k);
  for (int u = 0; u < LANES; ++u) total += part[u];
  return total;
}

// Everything the per-position routines need, with raw pointers into contiguous tensors.
template <typename scalar_t, typename acc_t>
struct HerView {
  const scalar_t* W;  // [V, ws0]
  int64_t ws0, H, L, D;
  const int64_t* x;     // [B * L]
  const int64_t* hid;   // [B, H, L]
  const int64_t* hlen;  // [B]
  const bool* mask;     // [B * L]
  const acc_t* cos;     // [H, D/2]
  const acc_t* sin;     // [H, D/2]
  const acc_t* hw;      // [H]
  const acc_t* gamma;   // [D]
  double eps;

  // s[0:D] = sum_{j < hb} hw[j] * Rot_j(E[h_j]) for position p (buf: D scratch values)
  void history_sum(int64_t p, int64_t hb, acc_t* __restrict__ s, acc_t* buf) const {
    const int64_t half = D / 2, b = p / L, l = p % L;
    std::fill(s, s + D, acc_t(0));
    for (int64_t j = 0; j < hb; ++j) {
      const acc_t* __restrict__ e = row_as_acc(W + hid[(b * H + j) * L + l] * ws0, buf, D);
      const acc_t* __restrict__ c = cos + j * half;
      const acc_t* __restrict__ sn = sin + j * half;
      const acc_t w = hw[j];
      for (int64_t k = 0; k < half; ++k) {
        const acc_t a = e[k], bb = e[half + k];
        s[k] += w * (a * c[k] - bb * sn[k]);
        s[half + k] += w * (a * sn[k] + bb * c[k]);
      }
      if (D & 1) s[D - 1] += w * e[D - 1];
    }
  }

  // Prefetch the embedding rows position p will read (random rows of a large table are latency bound).
  void prefetch(int64_t p) const {
    const int64_t bytes = D * static_cast<int64_t>(sizeof(scalar_t)), b = p / L, l = p % L, hb = hlen[b];
    auto row = [&](int64_t id) {
      const char* r = reinterpret_cast<const char*>(W + id * ws0);
      for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(r + off);
    };
    row(x[p]);
    if (mask[p])
      for (int64_t j = 0; j < hb; ++j) row(hid[(b * H + j) * L + l]);
  }

  // s for a position with history (zero on prompt positions), then (mean, rstd) as layer_norm
  std::pair<acc_t, acc_t> normalised_sum(int64_t p, int64_t hb, acc_t* s, acc_t* buf) const {
    if (mask[p]) {
      history_sum(p, hb, s, buf);
    } else {
      std::fill(s, s + D, acc_t(0));
    }
    const acc_t mean = lane_sum<acc_t>(D, [&](int64_t k) { return s[k]; }) / acc_t(D);
    const acc_t var = lane_sum<acc_t>(D, [&](int64_t k) { const acc_t d = s[k] - mean; return d * d; }) / acc_t(D);
    return {mean, acc_t(1) / std::sqrt(var + acc_t(eps))};
  }
};

template <typename scalar_t, typename acc_t>
HerView<scalar_t, acc_t> make_view(const at::Tensor& weight, const HerSizes& n, const at::Tensor& x,
                                   const at::Tensor& hid, const at::Tensor& hlen, const at::Tensor& mask,
                                   const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& hw,
                                   const at::Tensor& gamma, double eps) {
  return {weight.data_ptr<scalar_t>(), weight.stride(0), n.H, n.L, n.D,
          x.data_ptr<int64_t>(), hid.data_ptr<int64_t>(), hlen.data_ptr<int64_t>(), mask.data_ptr<bool>(),
          cos.data_ptr<acc_t>(), sin.data_ptr<acc_t>(), hw.data_ptr<acc_t>(), gamma.data_ptr<acc_t>(), eps};
}

// Contiguous copies of the small inputs, validated ids, gamma (ones when absent).
struct Prepared {
  at::Tensor weight, x, hid, hlen, mask, cos, sin, hw, gamma, beta;
};

Prepared prepare_cpu(const at::Tensor& weight, const at::Tensor& input_ids, const at::Tensor& history_ids,
                     const at::Tensor& history_len, const at::Tensor& token_mask, const at::Tensor& cos,
                     const at::Tensor& sin, const at::Tensor& hw, const std::optional<at::Tensor>& ln_weight,
                     const std::optional<at::Tensor>& ln_bias, const HerSizes& n) {
  Prepared r{weight.stride(1) == 1 ? weight : weight.contiguous(), input_ids.contiguous(), history_ids.contiguous(),
             history_len.contiguous(), token_mask.contiguous(), cos.contiguous(), sin.contiguous(), hw.contiguous(),
             {}, {}};
  check_ids_cpu(r.x, n.V, "input_ids");
  check_ids_cpu(r.hid, n.V, "history_ids");
  check_lengths_cpu(r.hlen, n.H);
  const auto opts = cos.options();
  r.gamma = ln_weight.has_value() ? ln_weight->contiguous() : at::ones({n.D}, opts);
  r.beta = ln_bias.has_value() ? ln_bias->contiguous() : at::zeros({n.D}, opts);
  return r;
}

template <typename scalar_t, typename acc_t>
void forward_cpu_kernel(const Prepared& in, const HerSizes& n, double eps, at::Tensor& out) {
  const auto v = make_view<scalar_t, acc_t>(in.weight, n, in.x, in.hid, in.hlen, in.mask, in.cos, in.sin, in.hw,
                                             in.gamma, eps);
  const acc_t* beta = in.beta.data_ptr<acc_t>();
  scalar_t* o_all = out.data_ptr<scalar_t>();
  const int64_t D = n.D;
  at::parallel_for(0, n.B * n.L, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> s(D), buf(D);
    for (int64_t p = begin; p < end; ++p) {
      if (p + 1 < end) v.prefetch(p + 1);
      const scalar_t* cur = v.W + v.x[p] * v.ws0;
      scalar_t* o = o_all + p * D;
      const int64_t hb = v.hlen[p / n.L];
      if (hb == 0) {
        std::copy(cur, cur + D, o);
        continue;
      }
      const auto [mean, rstd] = v.normalised_sum(p, hb, s.data(), buf.data());
      const acc_t* c = row_as_acc(cur, buf.data(), D);
      for (int64_t k = 0; k < D; ++k)
        o[k] = static_cast<scalar_t>(c[k] + ((s[k] - mean) * rstd * v.gamma[k] + beta[k]));
    }
  });
}

template <typename scalar_t, typename acc_t>
void backward_cpu_kernel(const Prepared& in, const HerSizes& n, double eps, const at::Tensor& grad_out,
                         at::Tensor* grad_w, at::Tensor& grad_gamma, at::Tensor& grad_beta) {
  const auto v = make_view<scalar_t, acc_t>(in.weight, n, in.x, in.hid, in.hlen, in.mask, in.cos, in.sin, in.hw,
                                             in.gamma, eps);
  const int64_t N = n.B * n.L, D = n.D, half = D / 2;
  const scalar_t* go_all = grad_out.data_ptr<scalar_t>();
  // phase 1: gamma / beta partials per thread, ds per position
  const int nthreads = at::get_num_threads();
  at::Tensor partial = at::zeros({nthreads, 2, D}, in.cos.options());
  at::Tensor ds_all = grad_w ? at::empty({N, D}, in.cos.options()) : at::Tensor();
  acc_t* part = partial.data_ptr<acc_t>();
  acc_t* ds_ptr = grad_w ? ds_all.data_ptr<acc_t>() : nullptr;
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    TORCH_CHECK(tid < nthreads, "history_embed_backward: thread id ", tid, " >= ", nthreads);
    acc_t* dg = part + tid * 2 * D;
    acc_t* db = dg + D;
    std::vector<acc_t> s(D), buf(D), go(D), xhat(D);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t hb = v.hlen[p / n.L];
      if (hb == 0) continue;
      const auto [mean, rstd] = v.normalised_sum(p, hb, s.data(), buf.data());
      const acc_t* g = row_as_acc(go_all + p * D, go.data(), D);
      for (int64_t k = 0; k < D; ++k) {
        xhat[k] = (s[k] - mean) * rstd;
        dg[k] += g[k] * xhat[k];
        db[k] += g[k];
      }
      if (!ds_ptr || !v.mask[p]) continue;
      // d xhat = go * gamma;  ds = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
      const acc_t m1 = lane_sum<acc_t>(D, [&](int64_t k) { return g[k] * v.gamma[k]; }) / acc_t(D);
      const acc_t m2 = lane_sum<acc_t>(D, [&](int64_t k) { return g[k] * v.gamma[k] * xhat[k]; }) / acc_t(D);
      acc_t* ds = ds_ptr + p * D;
      for (int64_t k = 0; k < D; ++k) ds[k] = rstd * (g[k] * v.gamma[k] - m1 - xhat[k] * m2);
    }
  });
  at::Tensor summed = partial.sum(0);  // [2, D]
  grad_gamma.copy_(summed[0]);
  grad_beta.copy_(summed[1]);
  if (!grad_w) return;
  // phase 2: scatter-add by column ranges; "column" c < half stands for the pair (c, c + half),
  // c == half for the odd-D last dimension
  at::Tensor acc_w = std::is_same_v<scalar_t, acc_t> ? *grad_w : at::zeros({n.V, D}, in.cos.options());
  acc_t* gw = acc_w.data_ptr<acc_t>();
  at::parallel_for(0, half + (D & 1), 64, [&](int64_t c0, int64_t c1) {
    const int64_t p0 = std::min(c1, half);  // pairs are [c0, p0)
    const bool tail = c1 > half;
    for (int64_t p = 0; p < N; ++p) {
      const scalar_t* g = go_all + p * D;
      acc_t* row = gw + v.x[p] * D;
      for (int64_t k = c0; k < p0; ++k) {
        row[k] += static_cast<acc_t>(g[k]);
        row[half + k] += static_cast<acc_t>(g[half + k]);
      }
      if (tail) row[D - 1] += static_cast<acc_t>(g[D - 1]);
      const int64_t hb = v.hlen[p / n.L];
      if (hb == 0 || !v.mask[p]) continue;
      const acc_t* ds = ds_ptr + p * D;
      const int64_t b = p / n.L, l = p % n.L;
      for (int64_t j = 0; j < hb; ++j) {
        acc_t* hrow = gw + v.hid[(b * n.H + j) * n.L + l] * D;
        const acc_t* c = v.cos + j * half;
        const acc_t* sn = v.sin + j * half;
        const acc_t w = v.hw[j];
        for (int64_t k = c0; k < p0; ++k) {
          hrow[k] += w * (c[k] * ds[k] + sn[k] * ds[half + k]);
          hrow[half + k] += w * (c[k] * ds[half + k] - sn[k] * ds[k]);
        }
        if (tail) hrow[D - 1] += w * ds[D - 1];
      }
    }
  });
  if (!std::is_same_v<scalar_t, acc_t>) grad_w->copy_(acc_w);
}

}  // namespace

at::Tensor history_embed_cpu(const at::Tensor& weight, const at::Tensor& input_ids, const at::Tensor& history_ids,
                             const at::Tensor& history_len, const at::Tensor& token_mask, const at::Tensor& cos,
                             const at::Tensor& sin, const at::Tensor& hw, const std::optional<at::Tensor>& ln_weight,
                             const std::optional<at::Tensor>& ln_bias, double eps) {
  const HerSizes n =
      check_her_args(weight, input_ids, history_ids, history_len, token_mask, cos, sin, hw, ln_weight, ln_bias);
  TORCH_CHECK_VALUE(eps > 0, "eps must be > 0, got ", eps);
  const Prepared in = prepare_cpu(weight, input_ids, history_ids, history_len, token_mask, cos, sin, hw, ln_weight,
                                  ln_bias, n);
  at::Tensor out = at::empty({n.B, n.L, n.D}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "history_embed_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    forward_cpu_kernel<scalar_t, acc_t>(in, n, eps, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> history_embed_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& input_ids, const at::Tensor& history_ids,
    const at::Tensor& history_len, const at::Tensor& token_mask, const at::Tensor& cos, const at::Tensor& sin,
    const at::Tensor& hw, const std::optional<at::Tensor>& ln_weight, double eps, bool weight_grad) {
  const HerSizes n =
      check_her_args(weight, input_ids, history_ids, history_len, token_mask, cos, sin, hw, ln_weight, std::nullopt);
  check_grad_out(grad_out, n, weight);
  const Prepared in = prepare_cpu(weight, input_ids, history_ids, history_len, token_mask, cos, sin, hw, ln_weight,
                                  std::nullopt, n);
  const at::Tensor go = grad_out.contiguous();
  at::Tensor grad_w = at::zeros({weight_grad ? n.V : 0, n.D}, weight.options());
  at::Tensor grad_gamma = at::empty({n.D}, cos.options());
  at::Tensor grad_beta = at::empty({n.D}, cos.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "history_embed_backward_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    backward_cpu_kernel<scalar_t, acc_t>(in, n, eps, go, weight_grad ? &grad_w : nullptr, grad_gamma, grad_beta);
  });
  return {grad_w, grad_gamma, grad_beta};
}

TORCH_LIBRARY_IMPL(rmkernels, CPU, m) {
  m.impl("history_embed", &history_embed_cpu);
  m.impl("history_embed_backward", &history_embed_backward_cpu);
}

}  // namespace rmk
