// The rmkernels._C extension: operator schemas and the Python module.
//
// The Python side registers Triton ops in the same `rmkernels` namespace through
// torch.library.custom_op, so the C++ schemas are added with TORCH_LIBRARY_FRAGMENT. Device
// implementations are registered next to their kernels (history_embed.cpp: CPU,
// history_embed_cuda.cu: CUDA); fake (meta) implementations and autograd are registered in Python
// (rmkernels/ops/history_embed.py).
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(rmkernels, m) {
  m.def(
      "history_embed(Tensor weight, Tensor input_ids, Tensor history_ids, Tensor history_len, Tensor token_mask, "
      "Tensor cos, Tensor sin, Tensor hw, Tensor? ln_weight, Tensor? ln_bias, float eps) -> Tensor");
  m.def(
      "history_embed_backward(Tensor grad_out, Tensor weight, Tensor input_ids, Tensor history_ids, "
      "Tensor history_len, Tensor token_mask, Tensor cos, Tensor sin, Tensor hw, Tensor? ln_weight, float eps, "
      "bool weight_grad) -> (Tensor, Tensor, Tensor)");
  // rm_linear_stats' CPU path (rm_stats_cpu.cpp): fold one [N, C] float32 logits chunk of columns
  // [col0, col0 + C) into the running per-row state (SPEC §9)
  m.def(
      "linear_stats_chunk_cpu_(Tensor z, int col0, Tensor tokens, Tensor counters, int mask_id, float temperature, "
      "int seed_key, Tensor(a!) state, Tensor(b!) best_id) -> ()");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rmkernels C++/CUDA kernels (ops are registered under torch.ops.rmkernels)";
  m.def(
      "with_cuda",
      [] {
#ifdef RMK_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "True when the extension was built with its CUDA kernels");
}
