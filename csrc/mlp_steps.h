// golf::leaky_relu2_mlp and its backward as steps, shared by the CPU and the CUDA op: ATen GEMMs on the tensors'
// device, and the elementwise steps (kernels/mlp_math.h) the device's own (csrc/cpu/mlp.cpp: a loop on the host;
// kernels/mlp_act.cu: a thread per element). The CUDA op replaces the up-projection and the down-projection's input
// gradient with the fused CUTLASS GEMMs where they apply. Reference: golf.ops.ref_leaky_relu2_mlp.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <tuple>

namespace golf {

// pre, post [M, H] (x's dtype) from the fp32 accumulator acc [M, H]: pre = acc, post = act(acc).
using MlpActForward = std::function<void(const at::Tensor& acc, at::Tensor& pre, at::Tensor& post, double slope)>;
// dpre [M, H] (pre's dtype) = grad_post ⊙ act'(pre), grad_post [M, H] fp32.
using MlpActBackward =
    std::function<void(const at::Tensor& grad_post, const at::Tensor& pre, at::Tensor& dpre, double slope)>;

// (pre, post): acc = x · w1ᵀ in fp32, then the elementwise step.
std::tuple<at::Tensor, at::Tensor> mlp_up_unfused(const at::Tensor& x, const at::Tensor& w1, double slope,
                                                  const MlpActForward& act);
// dpre: acc = grad_out · w2 in fp32, then the elementwise step.
at::Tensor mlp_dpre_unfused(const at::Tensor& grad_out, const at::Tensor& w2, const at::Tensor& pre, double slope,
                            const MlpActBackward& act);
// out [M, D] = post · w2ᵀ, in the operands' dtype.
at::Tensor mlp_down(const at::Tensor& post, const at::Tensor& w2);
// (grad_x = dpre · w1, grad_w1 = dpreᵀ · x, grad_w2 = grad_outᵀ · post), in the operands' dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_input_and_weight_grads(const at::Tensor& grad_out,
                                                                          const at::Tensor& x, const at::Tensor& w1,
                                                                          const at::Tensor& post,
                                                                          const at::Tensor& dpre);

}  // namespace golf
