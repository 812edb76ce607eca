// Argument and index checks of every golf op, shared by the CPU and CUDA registrations: one place says what
// an op accepts. Each error names the op, the argument and, for an index, its position and value.
//
// Index rule (golf.ops' references follow it too):
//   token ids, targets, count_next's `next`, CSR columns     0 <= i < size
//   prior rows, count_next's `ctx`                           -1 (none) or 0 <= i < size; below -1 is an error
// A check runs before any output is allocated, so an op either fails or writes every element it returns.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace golf {

enum class NoneIndex { kForbidden, kMinusOne };  // whether -1 ("none") is allowed

// Where index values are checked. kBefore: here, before any output exists (the CPU ops; the CUDA ops under
// GOLF_CHECK_INDICES=1, at the cost of a host sync per call). kInKernel: only shapes, dtypes and devices here; the
// kernel tests every index as it reads it and writes a defined value (0 or NaN) where one is bad; then a CPU op
// raises index_error, a CUDA op raises its bit in a device-side flag that golf.ops.check_device_indices reads
// without stalling each step.
enum class IndexCheck { kBefore, kInKernel };

// The IndexError of check_indices for element `flat` of idx (what a kernel that checked in-kernel raises).
[[noreturn]] void index_error(const char* op, const char* arg, const at::Tensor& idx, int64_t flat, int64_t size,
                              NoneIndex none);

// IndexError at the first element of `idx` (int32 or int64, any device) outside the rule above for a dimension
// of `size`: "<op>: <arg>[i, j] = v: expected ...".
void check_indices(const char* op, const char* arg, const at::Tensor& idx, int64_t size, NoneIndex none);

// CSR row pointers of n rows over nnz entries: int64 [n+1], ptr[0] = 0, never falling, ptr[n] = nnz.
void check_row_pointers(const char* op, const char* arg, const at::Tensor& ptr, int64_t nnz);

// prev, target: same shape, int32 or int64, same dtype, ids in [0, V); tables: 1-D of one length V,
// base_bytes int32, leading_space and boundary bool; everything on target's device.
void check_target_bytes_args(const at::Tensor& prev, const at::Tensor& target, const at::Tensor& base_bytes,
                             const at::Tensor& leading_space, const at::Tensor& boundary,
                             IndexCheck where = IndexCheck::kBefore);

// ctx, next: same shape, int32 or int64, same dtype and device; num_ctx, vocab > 0; ctx -1 or in [0, num_ctx);
// next in [0, vocab).
void check_count_next_args(const at::Tensor& ctx, const at::Tensor& next, int64_t num_ctx, int64_t vocab,
                           IndexCheck where = IndexCheck::kBefore);

// logits2 [N, V] fp32/bf16/fp16 with V <= 65,536; prior_tables [R, V] fp32; prior_rows [N, K] int32 (-1 or in
// [0, R)); targets [N] int64 in [0, V); prior_scales (optional) fp32 [N, K]; same device.
void check_tiered_loss_args(const at::Tensor& logits2, const at::Tensor& prior_tables, const at::Tensor& prior_rows,
                            const at::Tensor& targets, const std::optional<at::Tensor>& prior_scales,
                            IndexCheck where = IndexCheck::kBefore);

// The forward's arguments, and grad_nll, grad_lse, lse: floating [N] on the same device.
void check_tiered_loss_backward_args(const at::Tensor& grad_nll, const at::Tensor& grad_lse, const at::Tensor& logits2,
                                     const at::Tensor& prior_tables, const at::Tensor& prior_rows,
                                     const at::Tensor& targets, const at::Tensor& lse,
                                     const std::optional<at::Tensor>& prior_scales,
                                     IndexCheck where = IndexCheck::kBefore);

// The forward's arguments, and grad_weight (the upstream gradient of every nll) finite.
void check_tiered_loss_train_args(const at::Tensor& logits2, const at::Tensor& prior_tables,
                                  const at::Tensor& prior_rows, const at::Tensor& targets, double grad_weight,
                                  const std::optional<at::Tensor>& prior_scales,
                                  IndexCheck where = IndexCheck::kBefore);

// hidden [N, D] and head_weight [V, D] fp32/bf16/fp16; prior_tables [R, V] fp32; prior_rows [N, K] int32
// (-1 or in [0, R)); targets [N] int64 in [0, V); extra_ptr int64 [N+1] (CSR row pointers), extra_cols int64 [E]
// in [0, V), extra_vals fp32 [E], all three or none; prior_scales (optional) fp32 [N, K]; V <= 65,536; same device.
void check_score_windows_args(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& prior_tables,
                              const at::Tensor& prior_rows, const at::Tensor& targets,
                              const std::optional<at::Tensor>& extra_ptr, const std::optional<at::Tensor>& extra_cols,
                              const std::optional<at::Tensor>& extra_vals,
                              const std::optional<at::Tensor>& prior_scales,
                              IndexCheck where = IndexCheck::kBefore);

// H [n, n] float32; X [..., n] float32/bfloat16/float16; same device.
void check_hessian_accumulate_args(const at::Tensor& H, const at::Tensor& X);

// W [out, in] float (non-empty); H [in, in] float32; bits in [2, 8]; block >= 1; damp >= 0;
// clip_candidates 1-D float32 on the CPU with values in (0, 1].
void check_gptq_quantize_args(const at::Tensor& W, const at::Tensor& H, int64_t bits, int64_t block, double damp,
                              const at::Tensor& clip_candidates);
// The same W, H, bits, block, damp; scales fp16 [C >= 1, out] on W's device, finite and > 0.
void check_gptq_quantize_scaled_args(const at::Tensor& W, const at::Tensor& H, const at::Tensor& scales, int64_t bits,
                                     int64_t block, double damp);

// --- the LeakyReLU(s)² MLP (golf::leaky_relu2_mlp) ---
// x [M, D], w1 [H, D], w2 [D, H]: one float dtype (float32, bfloat16, float16), one device; slope finite.
void check_leaky_relu2_mlp_args(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2, double slope);
// The forward's arguments, and grad_out [M, D], pre and post [M, H] in their dtype, on their device.
void check_leaky_relu2_mlp_backward_args(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1,
                                         const at::Tensor& w2, const at::Tensor& pre, const at::Tensor& post,
                                         double slope);

// q int8 (any shape); its values are checked by the kernel, which writes every byte either way.
void check_pack_int6_args(const at::Tensor& q);

// packed 1-D uint8 of exactly ceil(numel/4)*3 bytes; numel >= 0.
void check_unpack_int6_args(const at::Tensor& packed, int64_t numel);

}  // namespace golf
