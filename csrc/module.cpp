// The rmkernels._C extension: every C++ operator schema, in this one block, and the Python module.
//
// Each backend file registers its implementations with TORCH_LIBRARY_IMPL next to its kernels
// (rm_stats_cpu.cpp, history_embed.cpp: CPU; history_embed_cuda.cu: CUDA). Fake (meta)
// implementations and autograd are registered in Python (rmkernels/ops/*.py). The Triton ops live
// in the same `rmkernels` namespace, registered from Python by torch.library.custom_op, which adds
// them as library fragments: they coexist with this block whichever is imported first
// (tests/test_layout.py checks both orders).
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(rmkernels, m) {
  // rm_stats (docs/spec.md §1), C++ CPU kernel writing into preallocated outputs
  m.def(
      "rm_stats_cpu_out(Tensor logits, Tensor tokens, Tensor counters, int L1, int stride0, int stride1, "
      "int mask_id, float temperature, int seed_key, Tensor(a!) top_id, Tensor(b!) top_p, Tensor(c!) mask_p, "
      "Tensor(d!) cur_p, Tensor(e!) best_id, Tensor(f!) best_p, Tensor(g!) status) -> ()");
  // history_embed (docs/spec.md §3), CPU and CUDA kernels
  m.def(
      "history_embed(Tensor weight, Tensor input_ids, Tensor history_ids, Tensor history_len, Tensor token_mask, "
      "Tensor cos, Tensor sin, Tensor hw, Tensor? ln_weight, Tensor? ln_bias, float eps) -> Tensor");
  m.def(
      "history_embed_backward(Tensor grad_out, Tensor weight, Tensor input_ids, Tensor history_ids, "
      "Tensor history_len, Tensor token_mask, Tensor cos, Tensor sin, Tensor hw, Tensor? ln_weight, float eps, "
      "bool weight_grad) -> (Tensor, Tensor, Tensor)");
  // rm_linear_stats' CPU path (rm_stats_cpu.cpp): fold one [N, C] float32 logits chunk of columns
  // [col0, col0 + C) into the running per-row state (docs/spec.md §9)
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
