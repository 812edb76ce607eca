// CUDA registration of golf::leaky_relu2_mlp and its backward. In bf16 on an sm_90a build and a 9.0 device, the
// up-projection and the down-projection's input gradient are the fused CUTLASS GEMMs of kernels/mlp_fwd.cu and
// kernels/mlp_bwd.cu (the activation and its derivative in their epilogues); otherwise (another dtype, a shape or
// pointer CUTLASS refuses, a build without CUTLASS) the same steps unfused: cuBLAS, then kernels/mlp_act.cu. The
// other GEMMs are cuBLAS's either way (csrc/mlp_steps.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "checks.h"
#include "mlp.h"
#include "mlp_steps.h"
#include "ops.h"

namespace golf::cuda {
namespace {

kernels::Dtype dtype_of(const at::Tensor& t) {
  const auto type = t.scalar_type();
  return type == at::kBFloat16 ? kernels::Dtype::kBFloat16
         : type == at::kHalf   ? kernels::Dtype::kFloat16
                               : kernels::Dtype::kFloat32;
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

void act_forward(const at::Tensor& acc, at::Tensor& pre, at::Tensor& post, double slope) {
  check_launch(kernels::mlp_act_forward(acc.data_ptr<float>(), acc.numel(), static_cast<float>(slope),
                                        dtype_of(pre), pre.data_ptr(), post.data_ptr(),
                                        c10::cuda::getCurrentCUDAStream().stream()),
               "golf::leaky_relu2_mlp");
}

void act_backward(const at::Tensor& grad_post, const at::Tensor& pre, at::Tensor& dpre, double slope) {
  check_launch(kernels::mlp_act_backward(grad_post.data_ptr<float>(), pre.data_ptr(), grad_post.numel(),
                                         static_cast<float>(slope), dtype_of(pre), dpre.data_ptr(),
                                         c10::cuda::getCurrentCUDAStream().stream()),
               "golf::leaky_relu2_mlp_backward");
}

#ifdef GOLF_WITH_CUTLASS_MLP
// Whether the fused GEMMs take these operands: bf16, contiguous, 16-byte aligned (TMA), on a device and a shape
// they run on.
bool fused(std::initializer_list<const at::Tensor*> operands, bool (*can_implement)(int64_t, int64_t, int64_t),
           int64_t m, int64_t n, int64_t k) {
  for (const auto* t : operands) {
    if (t->scalar_type() != at::kBFloat16 || !t->is_contiguous() ||
        reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0) {
      return false;
    }
  }
  return m > 0 && kernels::mlp_fused_supported((*operands.begin())->device().index()) && can_implement(m, n, k);
}
#endif

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> leaky_relu2_mlp(const at::Tensor& x_in, const at::Tensor& w1_in,
                                                               const at::Tensor& w2_in, double slope) {
  check_leaky_relu2_mlp_args(x_in, w1_in, w2_in, slope);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous(), w1 = w1_in.contiguous(), w2 = w2_in.contiguous();
  const int64_t m = x.size(0), n = w1.size(0), k = x.size(1);
  at::Tensor pre, post;
#ifdef GOLF_WITH_CUTLASS_MLP
  if (fused({&x, &w1}, kernels::mlp_up_can_implement, m, n, k)) {
    pre = at::empty({m, n}, x.options());
    post = at::empty({m, n}, x.options());
    auto workspace = at::empty({static_cast<int64_t>(kernels::mlp_up_workspace(m, n, k))}, x.options().dtype(at::kByte));
    check_launch(kernels::mlp_up(x.data_ptr(), w1.data_ptr(), pre.data_ptr(), post.data_ptr(), m, n, k,
                                 static_cast<float>(slope), workspace.data_ptr(),
                                 c10::cuda::getCurrentCUDAStream().stream()),
                 "golf::leaky_relu2_mlp");
  }
#endif
  if (!pre.defined()) std::tie(pre, post) = mlp_up_unfused(x, w1, slope, act_forward);
  return {mlp_down(post, w2), pre, post};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> leaky_relu2_mlp_backward(const at::Tensor& grad_out_in,
                                                                        const at::Tensor& x, const at::Tensor& w1,
                                                                        const at::Tensor& w2_in,
                                                                        const at::Tensor& pre_in,
                                                                        const at::Tensor& post, double slope) {
  check_leaky_relu2_mlp_backward_args(grad_out_in, x, w1, w2_in, pre_in, post, slope);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto grad_out = grad_out_in.contiguous(), w2 = w2_in.contiguous(), pre = pre_in.contiguous();
  const int64_t m = grad_out.size(0), n = w2.size(1), k = w2.size(0);
  at::Tensor dpre;
#ifdef GOLF_WITH_CUTLASS_MLP
  if (fused({&grad_out, &w2, &pre}, kernels::mlp_down_grad_can_implement, m, n, k)) {
    dpre = at::empty({m, n}, pre.options());
    auto workspace =
        at::empty({static_cast<int64_t>(kernels::mlp_down_grad_workspace(m, n, k))}, pre.options().dtype(at::kByte));
    check_launch(kernels::mlp_down_grad(grad_out.data_ptr(), w2.data_ptr(), pre.data_ptr(), dpre.data_ptr(), m, n, k,
                                        static_cast<float>(slope), workspace.data_ptr(),
                                        c10::cuda::getCurrentCUDAStream().stream()),
                 "golf::leaky_relu2_mlp_backward");
  }
#endif
  if (!dpre.defined()) dpre = mlp_dpre_unfused(grad_out, w2, pre, slope, act_backward);
  return mlp_input_and_weight_grads(grad_out, x, w1, post, dpre);
}

}  // namespace golf::cuda

TORCH_LIBRARY_IMPL(golf, CUDA, m) {
  m.impl("leaky_relu2_mlp", &golf::cuda::leaky_relu2_mlp);
  m.impl("leaky_relu2_mlp_backward", &golf::cuda::leaky_relu2_mlp_backward);
}
