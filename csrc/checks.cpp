// The argument and index checks of every golf op (declared and specified in checks.h).
#include "checks.h"

#include <ATen/ATen.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "tiered_loss_math.h"

namespace golf {
namespace {

// "[i, j]": the position of flat element `flat` in a tensor of these sizes ("" for a 0-d tensor).
std::string position(at::IntArrayRef sizes, int64_t flat) {
  std::vector<int64_t> at_dim(sizes.size());
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    at_dim[d] = flat % sizes[d];
    flat /= sizes[d];
  }
  std::ostringstream out;
  if (!at_dim.empty()) {
    out << "[";
    for (size_t d = 0; d < at_dim.size(); ++d) out << (d ? ", " : "") << at_dim[d];
    out << "]";
  }
  return out.str();
}

template <typename T>
int64_t first_outside(const T* p, int64_t n, int64_t lo, int64_t hi) {
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] < lo || p[i] >= hi) return i;
  }
  return -1;
}

bool is_float(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kBFloat16 || s == at::kHalf;
}

void check_same_device(const char* op, const at::Tensor& ref, std::initializer_list<const at::Tensor*> others) {
  for (const at::Tensor* t : others) {
    TORCH_CHECK(t->device() == ref.device(), op, ": all tensors must be on ", ref.device(), ", found one on ",
                t->device());
  }
}

// What tiered_loss and score_windows share: V within the kernels' row layout, prior_tables fp32 [R, V],
// prior_rows int32 [N, K] (-1 or a row), targets int64 [N] (ids), prior_scales fp32 [N, K] when given.
void check_priors_and_targets(const char* op, int64_t n, int64_t v, const at::Tensor& prior_tables,
                              const at::Tensor& prior_rows, const at::Tensor& targets,
                              const std::optional<at::Tensor>& prior_scales, IndexCheck where);

}  // namespace

void check_indices(const char* op, const char* arg, const at::Tensor& idx, int64_t size, NoneIndex none) {
  if (idx.numel() == 0) return;
  const int64_t lo = none == NoneIndex::kMinusOne ? -1 : 0;
  const auto flat = idx.contiguous().view(-1);
  int64_t bad = -1;
  if (flat.is_cpu()) {
    AT_DISPATCH_INDEX_TYPES(flat.scalar_type(), "golf_check_indices", [&] {
      bad = first_outside(flat.data_ptr<index_t>(), flat.numel(), lo, size);
    });
  } else {  // one reduction and a host read; CUDA kernels may instead raise a device-side flag
    const auto where = at::logical_or(flat < lo, flat >= size).nonzero();
    if (where.size(0) > 0) bad = where[0][0].item<int64_t>();
  }
  if (bad >= 0) index_error(op, arg, idx, bad, size, none);
}

void index_error(const char* op, const char* arg, const at::Tensor& idx, int64_t flat, int64_t size, NoneIndex none) {
  const int64_t value = idx.reshape(-1)[flat].item<int64_t>();
  TORCH_CHECK_INDEX(false, op, ": ", arg, position(idx.sizes(), flat), " = ", value, ": expected ",
                    none == NoneIndex::kMinusOne ? "-1 (none) or " : "", "a value in [0, ", size, ")");
}

namespace {

void check_priors_and_targets(const char* op, int64_t n, int64_t v, const at::Tensor& prior_tables,
                              const at::Tensor& prior_rows, const at::Tensor& targets,
                              const std::optional<at::Tensor>& prior_scales, IndexCheck where) {
  TORCH_CHECK(v >= 1 && v <= math::kMaxVocab, op, ": the vocabulary must have 1 to ", math::kMaxVocab,
              " ids (the kernels' row layout), found ", v);
  TORCH_CHECK(prior_tables.dim() == 2 && prior_tables.size(1) == v && prior_tables.scalar_type() == at::kFloat, op,
              ": prior_tables must be float32 [R, ", v, "], found ", prior_tables.scalar_type(), " ",
              prior_tables.sizes());
  TORCH_CHECK(prior_rows.dim() == 2 && prior_rows.size(0) == n && prior_rows.scalar_type() == at::kInt, op,
              ": prior_rows must be int32 [", n, ", K], found ", prior_rows.scalar_type(), " ", prior_rows.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == n && targets.scalar_type() == at::kLong, op,
              ": targets must be int64 [", n, "], found ", targets.scalar_type(), " ", targets.sizes());
  if (prior_scales.has_value()) {
    TORCH_CHECK(prior_scales->dim() == 2 && prior_scales->size(0) == n &&
                    prior_scales->size(1) == prior_rows.size(1) && prior_scales->scalar_type() == at::kFloat,
                op, ": prior_scales must be float32 [", n, ", ", prior_rows.size(1), "] like prior_rows, found ",
                prior_scales->scalar_type(), " ", prior_scales->sizes());
    check_same_device(op, prior_rows, {&*prior_scales});
  }
  if (where == IndexCheck::kInKernel) return;
  check_indices(op, "prior_rows", prior_rows, prior_tables.size(0), NoneIndex::kMinusOne);
  check_indices(op, "targets", targets, v, NoneIndex::kForbidden);
}

}  // namespace

void check_row_pointers(const char* op, const char* arg, const at::Tensor& ptr, int64_t nnz) {
  const auto p = ptr.to(at::kCPU).contiguous();
  const int64_t* v = p.data_ptr<int64_t>();
  const int64_t n = p.numel() - 1;
  TORCH_CHECK_INDEX(v[0] == 0, op, ": ", arg, "[0] = ", v[0], ": expected 0 (CSR row pointers start at 0)");
  for (int64_t i = 1; i <= n; ++i) {
    TORCH_CHECK_INDEX(v[i] >= v[i - 1], op, ": ", arg, "[", i, "] = ", v[i], ": expected >= ", arg, "[", i - 1,
                      "] = ", v[i - 1], " (CSR row pointers never fall)");
  }
  TORCH_CHECK_INDEX(v[n] == nnz, op, ": ", arg, "[", n, "] = ", v[n], ": expected ", nnz,
                    " (the number of entries)");
}

void check_target_bytes_args(const at::Tensor& prev, const at::Tensor& target, const at::Tensor& base_bytes,
                             const at::Tensor& leading_space, const at::Tensor& boundary,
                             IndexCheck where) {
  constexpr const char* op = "golf::target_bytes";
  TORCH_CHECK(prev.sizes() == target.sizes(), op, ": prev has shape ", prev.sizes(), " but target has shape ",
              target.sizes());
  for (const at::Tensor* t : {&prev, &target}) {
    TORCH_CHECK(t->scalar_type() == at::kLong || t->scalar_type() == at::kInt, op,
                ": token ids must be int64 or int32, found ", t->scalar_type());
  }
  TORCH_CHECK(prev.scalar_type() == target.scalar_type(), op, ": prev is ", prev.scalar_type(), " but target is ",
              target.scalar_type());
  TORCH_CHECK(base_bytes.dim() == 1 && base_bytes.scalar_type() == at::kInt, op,
              ": base_bytes must be 1-D int32, found ", base_bytes.dim(), "-D ", base_bytes.scalar_type());
  const auto vocab = base_bytes.size(0);
  TORCH_CHECK(leading_space.dim() == 1 && leading_space.scalar_type() == at::kBool && leading_space.size(0) == vocab,
              op, ": leading_space must be 1-D bool of length ", vocab);
  TORCH_CHECK(boundary.dim() == 1 && boundary.scalar_type() == at::kBool && boundary.size(0) == vocab, op,
              ": boundary must be 1-D bool of length ", vocab);
  check_same_device(op, target, {&prev, &base_bytes, &leading_space, &boundary});
  if (where == IndexCheck::kInKernel) return;
  check_indices(op, "prev", prev, vocab, NoneIndex::kForbidden);
  check_indices(op, "target", target, vocab, NoneIndex::kForbidden);
}

void check_count_next_args(const at::Tensor& ctx, const at::Tensor& next, int64_t num_ctx, int64_t vocab,
                           IndexCheck where) {
  constexpr const char* op = "golf::count_next";
  TORCH_CHECK(ctx.sizes() == next.sizes(), op, ": ctx has shape ", ctx.sizes(), " but next has shape ", next.sizes());
  for (const at::Tensor* t : {&ctx, &next}) {
    TORCH_CHECK(t->scalar_type() == at::kLong || t->scalar_type() == at::kInt, op,
                ": ids must be int64 or int32, found ", t->scalar_type());
  }
  TORCH_CHECK(ctx.scalar_type() == next.scalar_type(), op, ": ctx is ", ctx.scalar_type(), " but next is ",
              next.scalar_type());
  check_same_device(op, ctx, {&next});
  TORCH_CHECK(num_ctx > 0, op, ": num_ctx must be > 0, found ", num_ctx);
  TORCH_CHECK(vocab > 0, op, ": vocab must be > 0, found ", vocab);
  if (where == IndexCheck::kInKernel) return;
  check_indices(op, "ctx", ctx, num_ctx, NoneIndex::kMinusOne);
  check_indices(op, "next", next, vocab, NoneIndex::kForbidden);
}

void check_tiered_loss_args(const at::Tensor& logits2, const at::Tensor& prior_tables, const at::Tensor& prior_rows,
                            const at::Tensor& targets, const std::optional<at::Tensor>& prior_scales,
                            IndexCheck where) {
  constexpr const char* op = "golf::tiered_loss";
  TORCH_CHECK(logits2.dim() == 2 && is_float(logits2), op, ": logits2 must be float32/bfloat16/float16 [N, V], found ",
              logits2.scalar_type(), " ", logits2.sizes());
  const int64_t n = logits2.size(0), v = logits2.size(1);
  check_same_device(op, logits2, {&prior_tables, &prior_rows, &targets});
  check_priors_and_targets(op, n, v, prior_tables, prior_rows, targets, prior_scales, where);
}

void check_tiered_loss_backward_args(const at::Tensor& grad_nll, const at::Tensor& grad_lse, const at::Tensor& logits2,
                                     const at::Tensor& prior_tables, const at::Tensor& prior_rows,
                                     const at::Tensor& targets, const at::Tensor& lse,
                                     const std::optional<at::Tensor>& prior_scales,
                                     IndexCheck where) {
  check_tiered_loss_args(logits2, prior_tables, prior_rows, targets, prior_scales, where);
  const int64_t n = logits2.size(0);
  const std::pair<const char*, const at::Tensor*> per_row[] = {{"grad_nll", &grad_nll}, {"grad_lse", &grad_lse},
                                                               {"lse", &lse}};
  for (const auto& [name, t] : per_row) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == n && is_float(*t), "golf::tiered_loss_backward: ", name,
                " must be float32/bfloat16/float16 [", n, "], found ", t->scalar_type(), " ", t->sizes());
  }
  check_same_device("golf::tiered_loss_backward", logits2, {&grad_nll, &grad_lse, &lse});
}

void check_tiered_loss_train_args(const at::Tensor& logits2, const at::Tensor& prior_tables,
                                  const at::Tensor& prior_rows, const at::Tensor& targets, double grad_weight,
                                  const std::optional<at::Tensor>& prior_scales, IndexCheck where) {
  check_tiered_loss_args(logits2, prior_tables, prior_rows, targets, prior_scales, where);
  TORCH_CHECK(std::isfinite(grad_weight), "golf::tiered_loss_train: grad_weight must be finite, found ", grad_weight);
}

void check_score_windows_args(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& prior_tables,
                              const at::Tensor& prior_rows, const at::Tensor& targets,
                              const std::optional<at::Tensor>& extra_ptr, const std::optional<at::Tensor>& extra_cols,
                              const std::optional<at::Tensor>& extra_vals,
                              const std::optional<at::Tensor>& prior_scales,
                              IndexCheck where) {
  constexpr const char* op = "golf::score_windows";
  TORCH_CHECK(hidden.dim() == 2 && is_float(hidden), op, ": hidden must be float32/bfloat16/float16 [N, D], found ",
              hidden.scalar_type(), " ", hidden.sizes());
  const int64_t n = hidden.size(0), d = hidden.size(1);
  TORCH_CHECK(head_weight.dim() == 2 && head_weight.size(1) == d && is_float(head_weight), op,
              ": head_weight must be float32/bfloat16/float16 [V, ", d, "], found ", head_weight.scalar_type(), " ",
              head_weight.sizes());
  const int64_t v = head_weight.size(0);
  check_same_device(op, hidden, {&head_weight, &prior_tables, &prior_rows, &targets});
  check_priors_and_targets(op, n, v, prior_tables, prior_rows, targets, prior_scales, where);

  TORCH_CHECK(extra_ptr.has_value() == extra_cols.has_value() && extra_ptr.has_value() == extra_vals.has_value(), op,
              ": extra_ptr, extra_cols and extra_vals come together or not at all");
  if (!extra_ptr.has_value()) return;
  TORCH_CHECK(extra_ptr->dim() == 1 && extra_ptr->size(0) == n + 1 && extra_ptr->scalar_type() == at::kLong, op,
              ": extra_ptr must be int64 [", n + 1, "], found ", extra_ptr->scalar_type(), " ", extra_ptr->sizes());
  TORCH_CHECK(extra_cols->dim() == 1 && extra_cols->scalar_type() == at::kLong, op,
              ": extra_cols must be int64 [E], found ", extra_cols->scalar_type(), " ", extra_cols->sizes());
  TORCH_CHECK(extra_vals->dim() == 1 && extra_vals->size(0) == extra_cols->size(0) &&
                  extra_vals->scalar_type() == at::kFloat,
              op, ": extra_vals must be float32 [", extra_cols->size(0), "], found ", extra_vals->scalar_type(), " ",
              extra_vals->sizes());
  check_same_device(op, hidden, {&*extra_ptr, &*extra_cols, &*extra_vals});
  if (where == IndexCheck::kInKernel) return;
  check_row_pointers(op, "extra_ptr", *extra_ptr, extra_cols->size(0));
  check_indices(op, "extra_cols", *extra_cols, v, NoneIndex::kForbidden);
}

void check_hessian_accumulate_args(const at::Tensor& H, const at::Tensor& X) {
  constexpr const char* op = "golf::hessian_accumulate";
  TORCH_CHECK(H.dim() == 2 && H.size(0) == H.size(1), op, ": H must be square [in, in], found shape ", H.sizes());
  TORCH_CHECK(H.scalar_type() == at::kFloat, op, ": H must be float32, found ", H.scalar_type());
  TORCH_CHECK(X.dim() >= 1 && X.size(-1) == H.size(0), op, ": X must be [..., ", H.size(0),
              "] to match H, found shape ", X.sizes());
  TORCH_CHECK(is_float(X), op, ": X must be float32, bfloat16 or float16, found ", X.scalar_type());
  check_same_device(op, H, {&X});
}

namespace {
void check_gptq_common(const char* op, const at::Tensor& W, const at::Tensor& H, int64_t bits, int64_t block,
                       double damp) {
  TORCH_CHECK(W.dim() == 2 && W.size(0) > 0 && W.size(1) > 0, op,
              ": W must be a non-empty 2-D [out, in] matrix, found shape ", W.sizes());
  TORCH_CHECK(is_float(W), op, ": W must be float32, bfloat16 or float16, found ", W.scalar_type());
  TORCH_CHECK(H.dim() == 2 && H.size(0) == W.size(1) && H.size(1) == W.size(1), op, ": H must be [in, in] = [",
              W.size(1), ", ", W.size(1), "], found shape ", H.sizes());
  TORCH_CHECK(H.scalar_type() == at::kFloat, op, ": H must be float32, found ", H.scalar_type());
  TORCH_CHECK(bits >= 2 && bits <= 8, op, ": bits must be in [2, 8], found ", bits);
  TORCH_CHECK(block >= 1, op, ": block must be >= 1, found ", block);
  TORCH_CHECK(std::isfinite(damp) && damp >= 0, op, ": damp must be finite and >= 0, found ", damp);
  check_same_device(op, W, {&H});
}
}  // namespace

void check_gptq_quantize_args(const at::Tensor& W, const at::Tensor& H, int64_t bits, int64_t block, double damp,
                              const at::Tensor& clip_candidates) {
  constexpr const char* op = "golf::gptq_quantize";
  check_gptq_common(op, W, H, bits, block, damp);
  TORCH_CHECK(clip_candidates.dim() == 1 && clip_candidates.numel() > 0 && clip_candidates.scalar_type() == at::kFloat,
              op, ": clip_candidates must be a non-empty 1-D float32 tensor, found ", clip_candidates.dim(), "-D ",
              clip_candidates.scalar_type(), " with ", clip_candidates.numel(), " elements");
  TORCH_CHECK(clip_candidates.device().is_cpu(), op, ": clip_candidates must be on the CPU, found ",
              clip_candidates.device());
  const auto c = clip_candidates.contiguous();
  const float* p = c.data_ptr<float>();
  for (int64_t i = 0; i < c.numel(); ++i) {
    TORCH_CHECK(p[i] > 0.0f && p[i] <= 1.0f, op, ": clip_candidates must lie in (0, 1], found ", p[i], " at index ", i);
  }
}

void check_gptq_quantize_scaled_args(const at::Tensor& W, const at::Tensor& H, const at::Tensor& scales, int64_t bits,
                                     int64_t block, double damp) {
  constexpr const char* op = "golf::gptq_quantize_scaled";
  check_gptq_common(op, W, H, bits, block, damp);
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) > 0 && scales.size(1) == W.size(0), op,
              ": scales must be [candidates, out] = [C, ", W.size(0), "] with C >= 1, found shape ", scales.sizes());
  TORCH_CHECK(scales.scalar_type() == at::kHalf, op, ": scales must be float16 (the stored grid), found ",
              scales.scalar_type());
  check_same_device(op, W, {&scales});
  // One sync: the export quantizes each matrix once.
  TORCH_CHECK(scales.isfinite().logical_and(scales.gt(0)).all().item<bool>(), op,
              ": scales must be finite and > 0");
}

void check_leaky_relu2_mlp_args(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2, double slope) {
  constexpr const char* op = "golf::leaky_relu2_mlp";
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [tokens, dim], found shape ", x.sizes());
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == x.size(1) && w1.size(0) > 0, op,
              ": w1 (the up-projection) must be [hidden, ", x.size(1), "], found shape ", w1.sizes());
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == x.size(1) && w2.size(1) == w1.size(0), op,
              ": w2 (the down-projection) must be [", x.size(1), ", ", w1.size(0), "], found shape ", w2.sizes());
  TORCH_CHECK(is_float(x), op, ": x must be float32, bfloat16 or float16, found ", x.scalar_type());
  TORCH_CHECK(w1.scalar_type() == x.scalar_type() && w2.scalar_type() == x.scalar_type(), op,
              ": x, w1 and w2 must share one dtype, found ", x.scalar_type(), ", ", w1.scalar_type(), ", ",
              w2.scalar_type());
  TORCH_CHECK(std::isfinite(slope), op, ": slope must be finite, found ", slope);
  check_same_device(op, x, {&w1, &w2});
}

void check_leaky_relu2_mlp_backward_args(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1,
                                         const at::Tensor& w2, const at::Tensor& pre, const at::Tensor& post,
                                         double slope) {
  constexpr const char* op = "golf::leaky_relu2_mlp_backward";
  check_leaky_relu2_mlp_args(x, w1, w2, slope);
  TORCH_CHECK(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type(), op,
              ": grad_out must be ", x.scalar_type(), " ", x.sizes(), " like x, found ", grad_out.scalar_type(), " ",
              grad_out.sizes());
  const std::vector<int64_t> hidden{x.size(0), w1.size(0)};
  for (const auto* t : {&pre, &post}) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef(hidden) && t->scalar_type() == x.scalar_type(), op,
                ": pre and post must be ", x.scalar_type(), " ", at::IntArrayRef(hidden), ", found ",
                t->scalar_type(), " ", t->sizes());
  }
  check_same_device(op, x, {&grad_out, &pre, &post});
}

void check_pack_int6_args(const at::Tensor& q) {
  TORCH_CHECK(q.scalar_type() == at::kChar, "golf::pack_int6: q must be int8 (values in [-31, 31]), found ",
              q.scalar_type());
}

void check_unpack_int6_args(const at::Tensor& packed, int64_t numel) {
  constexpr const char* op = "golf::unpack_int6";
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 1, op, ": packed must be 1-D uint8, found ",
              packed.dim(), "-D ", packed.scalar_type());
  TORCH_CHECK(numel >= 0, op, ": numel must be >= 0, found ", numel);
  const int64_t want = (numel + 3) / 4 * 3;
  TORCH_CHECK(packed.numel() == want, op, ": ", numel, " values need ", want, " packed bytes, found ", packed.numel());
}

}  // namespace golf
