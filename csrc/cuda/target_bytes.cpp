// CUDA registration of golf::target_bytes: checks, device guard, stream, then the torch-free launcher.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/index_flags.h"
#include "ops.h"
#include "target_bytes.h"

namespace golf::cuda {

at::Tensor target_bytes(const at::Tensor& prev_in, const at::Tensor& target_in, const at::Tensor& base_in,
                        const at::Tensor& lead_in, const at::Tensor& boundary_in) {
  check_target_bytes_args(prev_in, target_in, base_in, lead_in, boundary_in, index_check_mode());
  const c10::cuda::CUDAGuard guard(target_in.device());
  const auto prev = prev_in.contiguous();
  const auto target = target_in.contiguous();
  const auto base = base_in.contiguous();
  const auto lead = lead_in.contiguous();
  const auto boundary = boundary_in.contiguous();
  auto out = at::empty(target.sizes(), target.options().dtype(at::kInt));
  auto bad = at::zeros({1}, target.options().dtype(at::kInt));
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  cudaError_t err;
  if (target.scalar_type() == at::kLong) {
    err = golf::kernels::target_bytes(prev.data_ptr<int64_t>(), target.data_ptr<int64_t>(), target.numel(),
                                      base.data_ptr<int32_t>(), lead.data_ptr<bool>(), boundary.data_ptr<bool>(),
                                      base.size(0), out.data_ptr<int32_t>(), bad.data_ptr<int32_t>(), stream);
  } else {
    err = golf::kernels::target_bytes(prev.data_ptr<int32_t>(), target.data_ptr<int32_t>(), target.numel(),
                                      base.data_ptr<int32_t>(), lead.data_ptr<bool>(), boundary.data_ptr<bool>(),
                                      base.size(0), out.data_ptr<int32_t>(), bad.data_ptr<int32_t>(), stream);
  }
  TORCH_CHECK(err == cudaSuccess, "golf::target_bytes: CUDA launch failed: ", cudaGetErrorString(err));
  // One sync to report bad ids: this op runs once per eval batch, never inside the training step.
  TORCH_CHECK(bad.item<int32_t>() == 0, "golf::target_bytes: token id out of range [0, ", base.size(0), ")");
  return out;
}

}  // namespace golf::cuda

TORCH_LIBRARY_IMPL(golf, CUDA, m) {
  m.impl("target_bytes", &golf::cuda::target_bytes);
}
