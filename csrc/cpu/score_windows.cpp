// golf::score_windows on CPU: the per-target NLL of the tiered logits at the scored positions of eval windows,
//   z = softcap*tanh((hidden @ head_weight^T + E) / softcap) + sum_k prior_tables[prior_rows[:, k]],
//   nll = logsumexp(z) - z[target]                                     (forward only; fp32 out)
// E: optional sparse tier-2 logits in CSR form (row n's entries at extra_ptr[n] .. extra_ptr[n+1]-1 of
// extra_cols / extra_vals; repeated columns add up), the copy head's (golf.model.CopyHead).
// The math of golf::tiered_loss's forward on logits2 = hidden @ head_weight^T (equal within fp32 rounding), with
// the LM head fused in, so the [N, V] logits of the whole window never exist. Reference: golf.ops.ref_score_windows.
//
// Layout of the work: at::parallel_for over rows; each task walks its rows in blocks of kBlock, one
// single-threaded GEMM per block (at::mm_out into a task-local [kBlock, V] buffer; inside a parallel
// region ATen's BLAS runs on the calling thread), then the softcap, the prior rows, the log-sum-exp and the
// target gather. History (4,096 rows, D=512, V=1024, K=3, 2 shared cores; the GEMM alone: 184 ms):
//   v1 scalar std::tanh and fp64 exp loop per row        340 ms
//   v2 softcap via ATen's vectorised tanh_ on the block  277 ms
//   v3 + max and exp via ATen on the block, fp64 sums    255 ms   kept
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>

#include "ops.h"

namespace golf {

void check_score_windows_args(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& prior_tables,
                              const at::Tensor& prior_rows, const at::Tensor& targets) {
  auto floating = [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
  };
  TORCH_CHECK(hidden.dim() == 2 && floating(hidden),
              "golf::score_windows: hidden must be float32/bfloat16/float16 [N, D], found ", hidden.scalar_type(), " ",
              hidden.sizes());
  const int64_t n = hidden.size(0), d = hidden.size(1);
  TORCH_CHECK(head_weight.dim() == 2 && head_weight.size(1) == d && floating(head_weight),
              "golf::score_windows: head_weight must be float32/bfloat16/float16 [V, ", d, "], found ",
              head_weight.scalar_type(), " ", head_weight.sizes());
  const int64_t v = head_weight.size(0);
  TORCH_CHECK(prior_tables.dim() == 2 && prior_tables.size(1) == v && prior_tables.scalar_type() == at::kFloat,
              "golf::score_windows: prior_tables must be float32 [R, ", v, "], found ", prior_tables.scalar_type(), " ",
              prior_tables.sizes());
  TORCH_CHECK(prior_rows.dim() == 2 && prior_rows.size(0) == n && prior_rows.scalar_type() == at::kInt,
              "golf::score_windows: prior_rows must be int32 [", n, ", K], found ", prior_rows.scalar_type(), " ",
              prior_rows.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == n && targets.scalar_type() == at::kLong,
              "golf::score_windows: targets must be int64 [", n, "], found ", targets.scalar_type(), " ",
              targets.sizes());
  for (const at::Tensor* t : {&head_weight, &prior_tables, &prior_rows, &targets}) {
    TORCH_CHECK(t->device() == hidden.device(), "golf::score_windows: all tensors must be on ", hidden.device(),
                ", found one on ", t->device());
  }
}

void check_score_windows_extra(const at::Tensor& hidden, const std::optional<at::Tensor>& extra_ptr,
                               const std::optional<at::Tensor>& extra_cols,
                               const std::optional<at::Tensor>& extra_vals) {
  TORCH_CHECK(extra_ptr.has_value() == extra_cols.has_value() && extra_ptr.has_value() == extra_vals.has_value(),
              "golf::score_windows: extra_ptr, extra_cols and extra_vals come together or not at all");
  if (!extra_ptr.has_value()) return;
  const int64_t n = hidden.size(0);
  TORCH_CHECK(extra_ptr->dim() == 1 && extra_ptr->size(0) == n + 1 && extra_ptr->scalar_type() == at::kLong,
              "golf::score_windows: extra_ptr must be int64 [", n + 1, "], found ", extra_ptr->scalar_type(), " ",
              extra_ptr->sizes());
  TORCH_CHECK(extra_cols->dim() == 1 && extra_cols->scalar_type() == at::kLong,
              "golf::score_windows: extra_cols must be int64 [E], found ", extra_cols->scalar_type(), " ",
              extra_cols->sizes());
  TORCH_CHECK(extra_vals->dim() == 1 && extra_vals->size(0) == extra_cols->size(0) &&
                  extra_vals->scalar_type() == at::kFloat,
              "golf::score_windows: extra_vals must be float32 [", extra_cols->size(0), "], found ",
              extra_vals->scalar_type(), " ", extra_vals->sizes());
  for (const auto* t : {&extra_ptr, &extra_cols, &extra_vals}) {
    TORCH_CHECK((*t)->device() == hidden.device(), "golf::score_windows: all tensors must be on ", hidden.device(),
                ", found one on ", (*t)->device());
  }
}

namespace cpu {
namespace {

constexpr int64_t kBlock = 64;  // rows per GEMM: [64, D] @ [D, V] reuses head_weight 64 times per load

}  // namespace

at::Tensor score_windows(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& prior_tables,
                         const at::Tensor& prior_rows, const at::Tensor& targets, double softcap,
                         const std::optional<at::Tensor>& extra_ptr, const std::optional<at::Tensor>& extra_cols,
                         const std::optional<at::Tensor>& extra_vals) {
  check_score_windows_args(hidden, head_weight, prior_tables, prior_rows, targets);
  check_score_windows_extra(hidden, extra_ptr, extra_cols, extra_vals);
  const auto h = hidden.to(at::kFloat).contiguous();
  const auto wt = head_weight.to(at::kFloat).t();  // [D, V] view; the GEMM reads it transposed, no copy
  const auto tables = prior_tables.contiguous();
  const auto rows = prior_rows.contiguous();
  const auto tgt = targets.contiguous();
  const int64_t n = h.size(0), v = wt.size(1), k = rows.size(1), r = tables.size(0);
  auto nll = at::empty({n}, h.options());
  if (n == 0) return nll;

  const float* tables_p = tables.data_ptr<float>();
  const int32_t* rows_p = rows.data_ptr<int32_t>();
  const int64_t* tgt_p = tgt.data_ptr<int64_t>();
  float* nll_p = nll.data_ptr<float>();
  const float cap = static_cast<float>(softcap), inv_cap = softcap > 0 ? 1.0f / cap : 0.0f;
  std::atomic<int64_t> bad{-1};

  at::Tensor ptr, cols, vals;
  if (extra_ptr.has_value()) {
    ptr = extra_ptr->contiguous();
    cols = extra_cols->contiguous();
    vals = extra_vals->contiguous();
    const int64_t* p = ptr.data_ptr<int64_t>();
    bool ok = p[0] == 0 && p[n] == cols.size(0);
    for (int64_t i = 0; ok && i < n; ++i) ok = p[i] <= p[i + 1];
    TORCH_CHECK(ok, "golf::score_windows: extra_ptr must rise from 0 to len(extra_cols) = ", cols.size(0));
  }
  const int64_t* ptr_p = ptr.defined() ? ptr.data_ptr<int64_t>() : nullptr;
  const int64_t* cols_p = ptr.defined() ? cols.data_ptr<int64_t>() : nullptr;
  const float* vals_p = ptr.defined() ? vals.data_ptr<float>() : nullptr;

  at::parallel_for(0, n, kBlock, [&](int64_t begin, int64_t end) {
    auto logits = at::empty({kBlock, v}, h.options());
    for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
      const int64_t rows_here = std::min(kBlock, end - b0);
      auto z_block = logits.narrow(0, 0, rows_here);
      at::mm_out(z_block, h.narrow(0, b0, rows_here), wt);
      if (ptr_p != nullptr) {  // the sparse tier-2 logits, before the softcap like the head's
        float* z_base = z_block.data_ptr<float>();
        for (int64_t i = 0; i < rows_here; ++i) {
          for (int64_t e = ptr_p[b0 + i]; e < ptr_p[b0 + i + 1]; ++e) {
            const int64_t c = cols_p[e];
            if (c < 0 || c >= v) { bad.store(c); continue; }
            z_base[i * v + c] += vals_p[e];
          }
        }
      }
      // The softcap through ATen's vectorised tanh (the scalar std::tanh loop cost as much as the GEMM).
      if (softcap > 0) z_block.mul_(inv_cap).tanh_().mul_(cap);
      float* z_base = z_block.data_ptr<float>();
      for (int64_t i = 0; i < rows_here; ++i) {
        const int64_t row = b0 + i;
        float* z = z_base + i * v;
        for (int64_t q = 0; q < k; ++q) {
          const int64_t pr = rows_p[row * k + q];
          if (pr < 0) continue;  // -1: no prior row at this slot
          if (pr >= r) { bad.store(pr); break; }
          const float* t = tables_p + pr * v;
          for (int64_t j = 0; j < v; ++j) z[j] += t[j];
        }
      }
      // log-sum-exp with ATen's vectorised max and exp (fp32), the sum of the exponentials in fp64.
      const auto m = std::get<0>(z_block.max(1, /*keepdim=*/true));
      const auto sums = (z_block - m).exp_().sum(1, /*keepdim=*/false, at::kDouble);
      const float* m_p = m.data_ptr<float>();
      const double* s_p = sums.data_ptr<double>();
      for (int64_t i = 0; i < rows_here; ++i) {
        const int64_t row = b0 + i, y = tgt_p[row];
        if (y < 0 || y >= v) { bad.store(y); continue; }
        nll_p[row] = (m_p[i] + static_cast<float>(std::log(s_p[i]))) - z_base[i * v + y];
      }
    }
  });
  TORCH_CHECK(bad.load() < 0, "golf::score_windows: index out of range (prior row >= ", r, ", or target or",
              " extra column >= ", v, "): ", bad.load());
  return nll;
}

}  // namespace cpu
}  // namespace golf
