// golf::leaky_relu2_mlp's steps (mlp_steps.h), on the tensors' device.
#include "mlp_steps.h"

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace golf {
namespace {
// The op's precision is its own (fp32 accumulators for the elementwise steps): autocast must not recast its GEMMs.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};
}  // namespace

std::tuple<at::Tensor, at::Tensor> mlp_up_unfused(const at::Tensor& x, const at::Tensor& w1, double slope,
                                                  const MlpActForward& act) {
  const NoAutocast exact;
  // fp32 operands: the products of bf16/fp16 values are exact in fp32, so this is the fused GEMM's accumulator up
  // to the order of its sums.
  const auto acc = at::mm(x.to(at::kFloat), w1.to(at::kFloat).t()).contiguous();
  auto pre = at::empty(acc.sizes(), x.options());
  auto post = at::empty(acc.sizes(), x.options());
  act(acc, pre, post, slope);
  return {pre, post};
}

at::Tensor mlp_dpre_unfused(const at::Tensor& grad_out, const at::Tensor& w2, const at::Tensor& pre, double slope,
                            const MlpActBackward& act) {
  const NoAutocast exact;
  const auto grad_post = at::mm(grad_out.to(at::kFloat), w2.to(at::kFloat)).contiguous();
  auto dpre = at::empty(grad_post.sizes(), pre.options());
  act(grad_post, pre.contiguous(), dpre, slope);
  return dpre;
}

at::Tensor mlp_down(const at::Tensor& post, const at::Tensor& w2) {
  const NoAutocast exact;
  return at::mm(post, w2.t());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_input_and_weight_grads(const at::Tensor& grad_out,
                                                                          const at::Tensor& x, const at::Tensor& w1,
                                                                          const at::Tensor& post,
                                                                          const at::Tensor& dpre) {
  const NoAutocast exact;
  return {at::mm(dpre, w1), at::mm(dpre.t(), x), at::mm(grad_out.t(), post)};
}

}  // namespace golf
