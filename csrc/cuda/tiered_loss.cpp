// CUDA registration of golf::tiered_loss, golf::tiered_loss_backward and golf::tiered_loss_train: checks, device guard, stream, then the
// torch-free launchers of kernels/tiered_loss.cu. Indices: index_flags.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/index_flags.h"
#include "cuda/rows_args.h"
#include "ops.h"
#include "prior_segments.h"
#include "tiered_loss.h"

namespace golf::cuda {

std::tuple<at::Tensor, at::Tensor> tiered_loss(const at::Tensor& logits2, const at::Tensor& prior_tables,
                                               const at::Tensor& prior_rows, const at::Tensor& targets,
                                               double softcap, const std::optional<at::Tensor>& prior_scales) {
  check_tiered_loss_args(logits2, prior_tables, prior_rows, targets, prior_scales, index_check_mode());
  const c10::cuda::CUDAGuard guard(logits2.device());
  const RowsInputs in(logits2, prior_tables, prior_rows, targets, prior_scales);
  auto nll = at::empty({in.l2.size(0)}, in.l2.options().dtype(at::kFloat));
  auto lse = at::empty_like(nll);
  const auto err = kernels::tiered_loss_forward(in.args(softcap, kernels::kFlagTieredLoss), nll.data_ptr<float>(),
                                                lse.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "golf::tiered_loss: CUDA launch failed: ", cudaGetErrorString(err));
  return {nll, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tiered_loss_backward(
    const at::Tensor& grad_nll, const at::Tensor& grad_lse, const at::Tensor& logits2, const at::Tensor& prior_tables,
    const at::Tensor& prior_rows, const at::Tensor& targets, const at::Tensor& lse, double softcap, bool tables_grad,
    const std::optional<at::Tensor>& prior_scales, bool scales_grad) {
  check_tiered_loss_backward_args(grad_nll, grad_lse, logits2, prior_tables, prior_rows, targets, lse, prior_scales,
                                  index_check_mode());
  TORCH_CHECK(!scales_grad || prior_rows.size(1) <= kernels::kMaxScaleSlots, "golf::tiered_loss_backward: the "
              "gradient of prior_scales takes at most ", kernels::kMaxScaleSlots, " slots on CUDA, found ",
              prior_rows.size(1));
  const c10::cuda::CUDAGuard guard(logits2.device());
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const RowsInputs in(logits2, prior_tables, prior_rows, targets, prior_scales);
  const int64_t n = in.l2.size(0), v = in.l2.size(1), k = in.rows.size(1);
  const auto fp32 = in.l2.options().dtype(at::kFloat);
  const auto g_nll = grad_nll.to(at::kFloat).contiguous();
  const auto g_lse = grad_lse.to(at::kFloat).contiguous();
  const auto lse_f = lse.to(at::kFloat).contiguous();
  auto grad_l2 = at::empty_like(in.l2);
  auto dz = tables_grad ? at::empty({n, v}, fp32) : at::Tensor();
  auto grad_scales = scales_grad ? at::empty({n, k}, fp32) : at::zeros({0, k}, fp32);
  auto err = kernels::tiered_loss_backward(in.args(softcap, kernels::kFlagTieredLossBackward), lse_f.data_ptr<float>(),
                                           g_nll.data_ptr<float>(), g_lse.data_ptr<float>(), grad_l2.data_ptr(),
                                           tables_grad ? dz.data_ptr<float>() : nullptr,
                                           scales_grad ? grad_scales.data_ptr<float>() : nullptr, stream);
  TORCH_CHECK(err == cudaSuccess, "golf::tiered_loss_backward: CUDA launch failed: ", cudaGetErrorString(err));
  at::Tensor grad_tables;
  if (tables_grad) {
    grad_tables = at::zeros_like(in.tables);
    const PriorSegments seg = prior_segments(in.rows);
    err = kernels::prior_table_grad(dz.data_ptr<float>(), v, k, seg.members.data_ptr<int64_t>(),
                                    seg.starts.data_ptr<int64_t>(), seg.rows.data_ptr<int64_t>(), seg.count,
                                    in.scales.defined() ? in.scales.data_ptr<float>() : nullptr,
                                    grad_tables.data_ptr<float>(), stream);
    TORCH_CHECK(err == cudaSuccess, "golf::tiered_loss_backward: CUDA launch failed: ", cudaGetErrorString(err));
  } else {
    grad_tables = at::zeros({0, v}, in.tables.options());
  }
  return {grad_l2.to(logits2.scalar_type()), grad_tables, grad_scales};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tiered_loss_train(
    const at::Tensor& logits2, const at::Tensor& prior_tables, const at::Tensor& prior_rows, const at::Tensor& targets,
    double softcap, double grad_weight, const std::optional<at::Tensor>& prior_scales, bool scales_grad) {
  check_tiered_loss_train_args(logits2, prior_tables, prior_rows, targets, grad_weight, prior_scales,
                               index_check_mode());
  TORCH_CHECK(!scales_grad || prior_rows.size(1) <= kernels::kMaxScaleSlots, "golf::tiered_loss_train: the "
              "gradient of prior_scales takes at most ", kernels::kMaxScaleSlots, " slots on CUDA, found ",
              prior_rows.size(1));
  const c10::cuda::CUDAGuard guard(logits2.device());
  const RowsInputs in(logits2, prior_tables, prior_rows, targets, prior_scales);
  const int64_t n = in.l2.size(0), k = in.rows.size(1);
  const auto fp32 = in.l2.options().dtype(at::kFloat);
  auto nll = at::empty({n}, fp32);
  auto lse = at::empty_like(nll);
  auto grad_l2 = at::empty_like(in.l2);
  auto grad_scales = scales_grad ? at::empty({n, k}, fp32) : at::zeros({0, k}, fp32);
  const auto err = kernels::tiered_loss_train(in.args(softcap, kernels::kFlagTieredLossTrain),
                                              static_cast<float>(grad_weight), nll.data_ptr<float>(),
                                              lse.data_ptr<float>(), grad_l2.data_ptr(),
                                              scales_grad ? grad_scales.data_ptr<float>() : nullptr,
                                              c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "golf::tiered_loss_train: CUDA launch failed: ", cudaGetErrorString(err));
  return {nll, lse, grad_l2.to(logits2.scalar_type()), grad_scales};
}

}  // namespace golf::cuda

TORCH_LIBRARY_IMPL(golf, CUDA, m) {
  m.impl("tiered_loss", &golf::cuda::tiered_loss);
  m.impl("tiered_loss_backward", &golf::cuda::tiered_loss_backward);
  m.impl("tiered_loss_train", &golf::cuda::tiered_loss_train);
}
