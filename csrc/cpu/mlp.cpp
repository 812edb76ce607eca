// golf::leaky_relu2_mlp and its backward on CPU: ATen's GEMMs (csrc/mlp_steps.h) around the elementwise steps of
// kernels/mlp_math.h, run in parallel over the elements here.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "checks.h"
#include "mlp_math.h"
#include "mlp_steps.h"
#include "ops.h"

namespace golf::cpu {
namespace {

constexpr int64_t kGrain = 1 << 14;

void act_forward(const at::Tensor& acc, at::Tensor& pre, at::Tensor& post, double slope_in) {
  const float slope = static_cast<float>(slope_in);
  const float* a = acc.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, pre.scalar_type(), "golf_mlp_act_forward_cpu", [&] {
    scalar_t* p = pre.data_ptr<scalar_t>();
    scalar_t* q = post.data_ptr<scalar_t>();
    at::parallel_for(0, acc.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        p[i] = static_cast<scalar_t>(a[i]);
        q[i] = static_cast<scalar_t>(math::leaky_relu2(a[i], slope));
      }
    });
  });
}

void act_backward(const at::Tensor& grad_post, const at::Tensor& pre, at::Tensor& dpre, double slope_in) {
  const float slope = static_cast<float>(slope_in);
  const float* g = grad_post.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, pre.scalar_type(), "golf_mlp_act_backward_cpu", [&] {
    const scalar_t* p = pre.data_ptr<scalar_t>();
    scalar_t* d = dpre.data_ptr<scalar_t>();
    at::parallel_for(0, grad_post.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        d[i] = static_cast<scalar_t>(math::leaky_relu2_backward(g[i], static_cast<float>(p[i]), slope));
      }
    });
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> leaky_relu2_mlp(const at::Tensor& x, const at::Tensor& w1,
                                                               const at::Tensor& w2, double slope) {
  check_leaky_relu2_mlp_args(x, w1, w2, slope);
  auto [pre, post] = mlp_up_unfused(x, w1, slope, act_forward);
  return {mlp_down(post, w2), pre, post};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> leaky_relu2_mlp_backward(const at::Tensor& grad_out,
                                                                        const at::Tensor& x, const at::Tensor& w1,
                                                                        const at::Tensor& w2, const at::Tensor& pre,
                                                                        const at::Tensor& post, double slope) {
  check_leaky_relu2_mlp_backward_args(grad_out, x, w1, w2, pre, post, slope);
  const auto dpre = mlp_dpre_unfused(grad_out, w2, pre, slope, act_backward);
  return mlp_input_and_weight_grads(grad_out, x, w1, post, dpre);
}

}  // namespace golf::cpu
