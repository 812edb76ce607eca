// CUDA registration of golf::score_windows: the LM head over the scored positions only (cuBLAS, fp32 out; TF32
// as torch.backends.cuda.matmul.allow_tf32 says), the sparse logits added in CSR order, then the tiered_loss
// forward row kernel (kernels/tiered_loss.cu) without its lse. Indices: index_flags.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/index_flags.h"
#include "cuda/rows_args.h"
#include "ops.h"
#include "tiered_loss.h"

namespace golf::cuda {

at::Tensor score_windows(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& prior_tables,
                         const at::Tensor& prior_rows, const at::Tensor& targets, double softcap,
                         const std::optional<at::Tensor>& extra_ptr, const std::optional<at::Tensor>& extra_cols,
                         const std::optional<at::Tensor>& extra_vals, const std::optional<at::Tensor>& prior_scales) {
  check_score_windows_args(hidden, head_weight, prior_tables, prior_rows, targets, extra_ptr, extra_cols, extra_vals,
                           prior_scales, index_check_mode());
  const c10::cuda::CUDAGuard guard(hidden.device());
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  auto l2 = at::mm(hidden.to(at::kFloat), head_weight.to(at::kFloat).t()).contiguous();
  const int64_t n = l2.size(0), v = l2.size(1);
  if (extra_ptr.has_value()) {
    const auto ptr = extra_ptr->contiguous(), cols = extra_cols->contiguous(), vals = extra_vals->contiguous();
    const auto err = kernels::add_sparse_logits(l2.data_ptr<float>(), n, v, ptr.data_ptr<int64_t>(),
                                                cols.data_ptr<int64_t>(), vals.data_ptr<float>(), cols.size(0),
                                                device_flags(l2.device()), kernels::kFlagScoreWindows, stream);
    TORCH_CHECK(err == cudaSuccess, "golf::score_windows: CUDA launch failed: ", cudaGetErrorString(err));
  }
  const RowsInputs in(l2, prior_tables, prior_rows, targets, prior_scales);
  auto nll = at::empty({n}, l2.options());
  const auto err = kernels::tiered_loss_forward(in.args(softcap, kernels::kFlagScoreWindows), nll.data_ptr<float>(),
                                                nullptr, stream);
  TORCH_CHECK(err == cudaSuccess, "golf::score_windows: CUDA launch failed: ", cudaGetErrorString(err));
  return nll;
}

}  // namespace golf::cuda

TORCH_LIBRARY_IMPL(golf, CUDA, m) {
  m.impl("score_windows", &golf::cuda::score_windows);
}
