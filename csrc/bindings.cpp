// golf._C: op schemas (TORCH_LIBRARY, reached as torch.ops.golf.*) and CPU registrations.
// pybind11 (torch's bundled headers) exposes only plain build facts; tensors cross through the dispatcher.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "ops.h"
#ifdef GOLF_WITH_CUTLASS_MLP
#include "mlp.h"
#endif

namespace golf {
void register_launch_audit(pybind11::module_& m);  // csrc/launch_audit.cpp
}

#ifndef GOLF_WITH_CUDA
#define GOLF_WITH_CUDA 0
#define GOLF_CUDA_VERSION ""
#endif

TORCH_LIBRARY(golf, m) {
  m.def("target_bytes(Tensor prev, Tensor target, Tensor base_bytes, Tensor leading_space, Tensor boundary) -> Tensor");
  m.def("count_next(Tensor ctx, Tensor next, int num_ctx, int vocab) -> Tensor");
  // prior_scales [N, K] fp32 (optional, 1 when absent): each gathered prior row times its scale.
  m.def("tiered_loss(Tensor logits2, Tensor prior_tables, Tensor prior_rows, Tensor targets, float softcap,"
        " Tensor? prior_scales=None) -> (Tensor nll, Tensor lse)");
  m.def("tiered_loss_backward(Tensor grad_nll, Tensor grad_lse, Tensor logits2, Tensor prior_tables,"
        " Tensor prior_rows, Tensor targets, Tensor lse, float softcap, bool tables_grad,"
        " Tensor? prior_scales=None, bool scales_grad=False)"
        " -> (Tensor grad_logits2, Tensor grad_prior_tables, Tensor grad_prior_scales)");
  // The training step's tiered_loss: nll and lse, and in the same pass the gradient of grad_weight * sum(nll)
  // w.r.t. logits2 (and, with scales_grad, w.r.t. prior_scales; [0, K] otherwise). The prior tables get none.
  m.def("tiered_loss_train(Tensor logits2, Tensor prior_tables, Tensor prior_rows, Tensor targets, float softcap,"
        " float grad_weight, Tensor? prior_scales=None, bool scales_grad=False)"
        " -> (Tensor nll, Tensor lse, Tensor grad_logits2, Tensor grad_prior_scales)");
  // Forward-only tiered_loss with the LM head fused in, over the scored positions of eval windows: nll [N] fp32;
  // the optional CSR triple adds sparse tier-2 logits (the copy head's) before the softcap.
  m.def("score_windows(Tensor hidden, Tensor head_weight, Tensor prior_tables, Tensor prior_rows, Tensor targets,"
        " float softcap, Tensor? extra_ptr=None, Tensor? extra_cols=None, Tensor? extra_vals=None,"
        " Tensor? prior_scales=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(golf, CPU, m) {
  m.impl("target_bytes", &golf::cpu::target_bytes);
  m.impl("count_next", &golf::cpu::count_next);
  m.impl("tiered_loss", &golf::cpu::tiered_loss);
  m.impl("tiered_loss_backward", &golf::cpu::tiered_loss_backward);
  m.impl("tiered_loss_train", &golf::cpu::tiered_loss_train);
  m.impl("score_windows", &golf::cpu::score_windows);
}

// --- the LeakyReLU(s)² MLP (golf.model.MLP in training) ------------------------------------------------
TORCH_LIBRARY_FRAGMENT(golf, m) {
  // x [M, D], w1 [H, D], w2 [D, H]: out = leaky_relu2(x · w1ᵀ) · w2ᵀ, with pre = x · w1ᵀ and post =
  // leaky_relu2(pre) (from the fp32 accumulator) returned for the backward. slope 0.5: LeakyReLU(0.5)², 0: relu².
  m.def("leaky_relu2_mlp(Tensor x, Tensor w1, Tensor w2, float slope) -> (Tensor out, Tensor pre, Tensor post)");
  m.def("leaky_relu2_mlp_backward(Tensor grad_out, Tensor x, Tensor w1, Tensor w2, Tensor pre, Tensor post,"
        " float slope) -> (Tensor grad_x, Tensor grad_w1, Tensor grad_w2)");
}

TORCH_LIBRARY_IMPL(golf, CPU, m) {
  m.impl("leaky_relu2_mlp", &golf::cpu::leaky_relu2_mlp);
  m.impl("leaky_relu2_mlp_backward", &golf::cpu::leaky_relu2_mlp_backward);
}

// --- quantisation (golf.quant) ------------------------------------------------------------------------
TORCH_LIBRARY_FRAGMENT(golf, m) {
  m.def("hessian_accumulate(Tensor(a!) H, Tensor X) -> ()");
  m.def("gptq_quantize(Tensor W, Tensor H, int bits, int block, bool act_order, float damp,"
        " Tensor clip_candidates) -> (Tensor q, Tensor scale)");
  m.def("gptq_quantize_scaled(Tensor W, Tensor H, Tensor scales, int bits, int block, bool act_order,"
        " float damp) -> (Tensor q, Tensor scale)");
  m.def("pack_int6(Tensor q) -> Tensor");
  m.def("unpack_int6(Tensor packed, int numel) -> Tensor");
}

TORCH_LIBRARY_IMPL(golf, CPU, m) {
  m.impl("hessian_accumulate", &golf::cpu::hessian_accumulate);
  m.impl("gptq_quantize", &golf::cpu::gptq_quantize);
  m.impl("gptq_quantize_scaled", &golf::cpu::gptq_quantize_scaled);
  m.impl("pack_int6", &golf::cpu::pack_int6);
  m.impl("unpack_int6", &golf::cpu::unpack_int6);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "golf C++/CUDA ops; use them through golf.ops";
#if GOLF_WITH_CUDA
  // Plain ints only: which CUDA ops met an index out of range on a device since the last call (resets it).
  m.def("take_index_errors", &golf::cuda::take_index_errors);
#endif
#ifdef GOLF_WITH_CUTLASS_MLP
  // Whether golf::leaky_relu2_mlp runs its fused CUTLASS GEMMs on this device (sm_90a code, a 9.0 device).
  m.def("mlp_fused_supported", [](int device) { return golf::kernels::mlp_fused_supported(device); });
#endif
  golf::register_launch_audit(m);  // the kernels' launch plans, walked on the host (tests/test_launch_plans.py)
  m.def("build_info", []() {
    pybind11::dict info;
    info["torch_version"] = GOLF_TORCH_VERSION;  // the torch this extension was compiled against
    info["cuda"] = static_cast<bool>(GOLF_WITH_CUDA);
    info["cuda_reason"] = GOLF_CUDA_REASON;
    info["cuda_archs"] = GOLF_CUDA_ARCHS;
    info["nvcc_version"] = GOLF_CUDA_VERSION;
#ifdef GOLF_WITH_CUTLASS_MLP
    info["fused_mlp"] = true;  // the CUTLASS GEMMs of golf::leaky_relu2_mlp are built
#else
    info["fused_mlp"] = false;
#endif
    return info;
  });
}
