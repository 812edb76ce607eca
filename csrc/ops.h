// One declaration per golf op: the schema lives in bindings.cpp, the CPU kernels in cpu/,
// the CUDA registrations in cuda/ (device code in ../kernels, torch-free), the argument checks in checks.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace golf {
namespace cpu {
// int32, shaped like target: base_bytes[target] + (leading_space[target] && !boundary[prev]).
at::Tensor target_bytes(const at::Tensor& prev, const at::Tensor& target, const at::Tensor& base_bytes,
                        const at::Tensor& leading_space, const at::Tensor& boundary);
// int64 [num_ctx, vocab]: counts of the pairs (ctx[i], next[i]); pairs with ctx[i] = -1 are skipped.
at::Tensor count_next(const at::Tensor& ctx, const at::Tensor& next, int64_t num_ctx, int64_t vocab);
// (nll [N], lse [N]) of z = sum_k prior_scales[:, k] * prior_tables[prior_rows[:, k]] + softcap*tanh(logits2/softcap)
// (softcap <= 0: no cap; prior_scales absent: 1).
std::tuple<at::Tensor, at::Tensor> tiered_loss(const at::Tensor& logits2, const at::Tensor& prior_tables,
                                               const at::Tensor& prior_rows, const at::Tensor& targets,
                                               double softcap, const std::optional<at::Tensor>& prior_scales);
// (grad_logits2, grad_prior_tables, grad_prior_scales) given grad_nll, grad_lse and the forward's lse;
// grad_prior_tables is [0, V] unless tables_grad, grad_prior_scales [0, K] unless scales_grad.
std::tuple<at::Tensor, at::Tensor, at::Tensor> tiered_loss_backward(
    const at::Tensor& grad_nll, const at::Tensor& grad_lse, const at::Tensor& logits2, const at::Tensor& prior_tables,
    const at::Tensor& prior_rows, const at::Tensor& targets, const at::Tensor& lse, double softcap, bool tables_grad,
    const std::optional<at::Tensor>& prior_scales, bool scales_grad);
// The forward and, from the same logits, the backward for grad_nll = grad_weight, grad_lse = 0 (bit for bit what
// tiered_loss_backward gives for them): (nll, lse, grad_logits2, grad_prior_scales [N, K] or [0, K]).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tiered_loss_train(
    const at::Tensor& logits2, const at::Tensor& prior_tables, const at::Tensor& prior_rows, const at::Tensor& targets,
    double softcap, double grad_weight, const std::optional<at::Tensor>& prior_scales, bool scales_grad);
// nll [N] fp32 of z = softcap*tanh((hidden @ head_weight^T + E) / softcap) + sum_k scale_k prior_tables[rows_k]
// (softcap <= 0: no cap); the tiered_loss forward with the LM head fused in, computed in fp32. E: the optional
// sparse extra logits, CSR (extra_ptr int64 [N+1], extra_cols int64 [E], extra_vals fp32 [E]).
at::Tensor score_windows(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& prior_tables,
                         const at::Tensor& prior_rows, const at::Tensor& targets, double softcap,
                         const std::optional<at::Tensor>& extra_ptr, const std::optional<at::Tensor>& extra_cols,
                         const std::optional<at::Tensor>& extra_vals, const std::optional<at::Tensor>& prior_scales);

// --- the LeakyReLU(s)² MLP (golf.model.MLP in training) ---
// (out [M, D], pre [M, H], post [M, H]) in x's dtype: acc = x · w1ᵀ (fp32), pre = acc, post = leaky_relu2(acc),
// out = post · w2ᵀ (kernels/mlp_math.h; slope 0: relu²).
std::tuple<at::Tensor, at::Tensor, at::Tensor> leaky_relu2_mlp(const at::Tensor& x, const at::Tensor& w1,
                                                               const at::Tensor& w2, double slope);
// (grad_x, grad_w1, grad_w2) given grad_out [M, D] and the forward's pre and post: dpre = (grad_out · w2, fp32) ⊙
// leaky_relu2'(pre); grad_x = dpre · w1, grad_w1 = dpreᵀ · x, grad_w2 = grad_outᵀ · post.
std::tuple<at::Tensor, at::Tensor, at::Tensor> leaky_relu2_mlp_backward(const at::Tensor& grad_out,
                                                                        const at::Tensor& x, const at::Tensor& w1,
                                                                        const at::Tensor& w2, const at::Tensor& pre,
                                                                        const at::Tensor& post, double slope);

// --- quantisation (golf.quant) ---
// H += X^T X with X flattened to rows and products summed in fp32 (mutates H).
void hessian_accumulate(const at::Tensor& H, const at::Tensor& X);
// Full-Hessian GPTQ (see golf.ops.ref_gptq_quantize): (q int8 [out, in] in [-qmax, qmax], scale fp16 [out]).
std::tuple<at::Tensor, at::Tensor> gptq_quantize(const at::Tensor& W, const at::Tensor& H, int64_t bits,
                                                 int64_t block, bool act_order, double damp,
                                                 const at::Tensor& clip_candidates);
// GPTQ on given candidate scales fp16 [C, out] (golf.ops.ref_gptq_quantize_scaled): per row the least-loss one.
std::tuple<at::Tensor, at::Tensor> gptq_quantize_scaled(const at::Tensor& W, const at::Tensor& H,
                                                        const at::Tensor& scales, int64_t bits, int64_t block,
                                                        bool act_order, double damp);
// int8 values in [-31, 31] (flattened) -> uint8 [ceil(n/4)*3], 4 values per 3 bytes.
at::Tensor pack_int6(const at::Tensor& q);
// The inverse: int8 [numel].
at::Tensor unpack_int6(const at::Tensor& packed, int64_t numel);
}  // namespace cpu

#ifdef GOLF_WITH_CUDA
// The CUDA kernels (cuda/<op>.cpp over ../kernels/<op>.cu), with the CPU ops' semantics.
namespace cuda {
at::Tensor target_bytes(const at::Tensor& prev, const at::Tensor& target, const at::Tensor& base_bytes,
                        const at::Tensor& leading_space, const at::Tensor& boundary);
std::tuple<at::Tensor, at::Tensor> tiered_loss(const at::Tensor& logits2, const at::Tensor& prior_tables,
                                               const at::Tensor& prior_rows, const at::Tensor& targets,
                                               double softcap, const std::optional<at::Tensor>& prior_scales);
std::tuple<at::Tensor, at::Tensor, at::Tensor> tiered_loss_backward(
    const at::Tensor& grad_nll, const at::Tensor& grad_lse, const at::Tensor& logits2, const at::Tensor& prior_tables,
    const at::Tensor& prior_rows, const at::Tensor& targets, const at::Tensor& lse, double softcap, bool tables_grad,
    const std::optional<at::Tensor>& prior_scales, bool scales_grad);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tiered_loss_train(
    const at::Tensor& logits2, const at::Tensor& prior_tables, const at::Tensor& prior_rows, const at::Tensor& targets,
    double softcap, double grad_weight, const std::optional<at::Tensor>& prior_scales, bool scales_grad);
at::Tensor score_windows(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& prior_tables,
                         const at::Tensor& prior_rows, const at::Tensor& targets, double softcap,
                         const std::optional<at::Tensor>& extra_ptr, const std::optional<at::Tensor>& extra_cols,
                         const std::optional<at::Tensor>& extra_vals, const std::optional<at::Tensor>& prior_scales);
std::tuple<at::Tensor, at::Tensor, at::Tensor> leaky_relu2_mlp(const at::Tensor& x, const at::Tensor& w1,
                                                               const at::Tensor& w2, double slope);
std::tuple<at::Tensor, at::Tensor, at::Tensor> leaky_relu2_mlp_backward(const at::Tensor& grad_out,
                                                                        const at::Tensor& x, const at::Tensor& w1,
                                                                        const at::Tensor& w2, const at::Tensor& pre,
                                                                        const at::Tensor& post, double slope);
void hessian_accumulate(const at::Tensor& H, const at::Tensor& X);
std::tuple<at::Tensor, at::Tensor> gptq_quantize(const at::Tensor& W, const at::Tensor& H, int64_t bits,
                                                 int64_t block, bool act_order, double damp,
                                                 const at::Tensor& clip_candidates);
std::tuple<at::Tensor, at::Tensor> gptq_quantize_scaled(const at::Tensor& W, const at::Tensor& H,
                                                        const at::Tensor& scales, int64_t bits, int64_t block,
                                                        bool act_order, double damp);
at::Tensor pack_int6(const at::Tensor& q);
at::Tensor unpack_int6(const at::Tensor& packed, int64_t numel);
// The bits of the device-side index flag of device_index since the last call (kernels/index_flag_bits.h).
int take_index_errors(int device_index);
}  // namespace cuda
#endif

}  // namespace golf
