// History Reference (HER) input embeddings (docs/spec.md §3): declarations shared by the CPU and CUDA kernels.
//
// Both implementations take the rotation / decay tables precomputed once per call (by the Python
// wrapper, see rmkernels/ops/history_embed.py):
//   cos, sin [H, D/2]  the rotation of distance d = j + 1 (cos = 1, sin = 0 when rotation is off)
//   hw       [H]       the decay weights w_d
// in the accumulation dtype ("acc": float32 for float32/float16/bfloat16 tables, float64 for
// float64 ones). ln_weight / ln_bias, when given, are [D] in the acc dtype as well.
#pragma once

#include <optional>

#include <ATen/ATen.h>

namespace rmk {

struct HerSizes {
  int64_t B, H, L, V, D;
};

// Shape, dtype and device checks shared by every implementation (errors name the argument).
HerSizes check_her_args(const at::Tensor& weight, const at::Tensor& input_ids, const at::Tensor& history_ids,
                        const at::Tensor& history_len, const at::Tensor& token_mask, const at::Tensor& cos,
                        const at::Tensor& sin, const at::Tensor& hw, const std::optional<at::Tensor>& ln_weight,
                        const std::optional<at::Tensor>& ln_bias);

// grad_out must be [B, L, D] in weight's dtype and on weight's device.
void check_grad_out(const at::Tensor& grad_out, const HerSizes& n, const at::Tensor& weight);

// The accumulation dtype of a weight dtype.
inline at::ScalarType her_acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// out [B, L, D] in weight.dtype
at::Tensor history_embed_cpu(const at::Tensor& weight, const at::Tensor& input_ids, const at::Tensor& history_ids,
                             const at::Tensor& history_len, const at::Tensor& token_mask, const at::Tensor& cos,
                             const at::Tensor& sin, const at::Tensor& hw, const std::optional<at::Tensor>& ln_weight,
                             const std::optional<at::Tensor>& ln_bias, double eps);

// grad_out [B, L, D] (contiguous, weight.dtype) -> (grad_weight [V, D] in weight.dtype, or [0, D] when
// weight_grad is false; grad_ln_weight [D] and grad_ln_bias [D] in the acc dtype). ln_bias does not
// enter the gradients.
std::tuple<at::Tensor, at::Tensor, at::Tensor> history_embed_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& input_ids, const at::Tensor& history_ids,
    const at::Tensor& history_len, const at::Tensor& token_mask, const at::Tensor& cos, const at::Tensor& sin,
    const at::Tensor& hw, const std::optional<at::Tensor>& ln_weight, double eps, bool weight_grad);

}  // namespace rmk
