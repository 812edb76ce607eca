// golf::score_windows on CPU: the per-target NLL of the tiered logits at the scored positions of eval windows,
//   z = softcap*tanh((hidden @ head_weight^T + E) / softcap) + sum_k scale_k prior_tables[prior_rows[:, k]],
//   nll = logsumexp(z) - z[target]                                     (forward only; fp32 out)
// E: optional sparse tier-2 logits in CSR form (row n's entries at extra_ptr[n] .. extra_ptr[n+1]-1 of
// extra_cols / extra_vals; repeated columns add up, in that order), the copy head's (golf.model.CopyHead).
// The tiered_loss forward on logits2 = hidden @ head_weight^T (the same row arithmetic: tiered_rows.h over
// kernels/tiered_loss_math.h), with the LM head fused in, so the [N, V] logits of the whole window never exist.
// Reference: golf.ops.ref_score_windows.
//
// Layout of the work: at::parallel_for over rows; each task walks its rows in blocks of kBlock, one
// single-threaded GEMM per block (at::mm_out into a task-local [kBlock, V] buffer; inside a parallel
// region ATen's BLAS runs on the calling thread), then the sparse logits and the row loops.
// History (4,096 rows, D=512, V=1024, K=3, 2 shared cores; the GEMM alone: 184 ms):
//   v1 scalar std::tanh and fp64 exp loop per row        340 ms
//   v2 softcap via ATen's vectorised tanh_ on the block  277 ms
//   v3 + max and exp via ATen on the block, fp64 sums    255 ms
//   v4 the shared row arithmetic of tiered_loss (polynomial tanh/exp, the kernels' order of sums)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "checks.h"
#include "ops.h"
#include "tiered_rows.h"

namespace golf::cpu {
namespace {

constexpr int64_t kBlock = 64;  // rows per GEMM: [64, D] @ [D, V] reuses head_weight 64 times per load

}  // namespace

at::Tensor score_windows(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& prior_tables,
                         const at::Tensor& prior_rows, const at::Tensor& targets, double softcap,
                         const std::optional<at::Tensor>& extra_ptr, const std::optional<at::Tensor>& extra_cols,
                         const std::optional<at::Tensor>& extra_vals, const std::optional<at::Tensor>& prior_scales) {
  check_score_windows_args(hidden, head_weight, prior_tables, prior_rows, targets, extra_ptr, extra_cols, extra_vals,
                           prior_scales);
  const auto h = hidden.to(at::kFloat).contiguous();
  const auto wt = head_weight.to(at::kFloat).t();  // [D, V] view; the GEMM reads it transposed, no copy
  const auto tables = prior_tables.contiguous();
  const auto rows = prior_rows.contiguous();
  const auto tgt = targets.contiguous();
  const auto scales = prior_scales.has_value() ? prior_scales->contiguous() : at::Tensor();
  const int64_t n = h.size(0), v = wt.size(1);
  auto nll = at::empty({n}, h.options());
  if (n == 0) return nll;

  const Priors priors{tables.data_ptr<float>(), rows.data_ptr<int32_t>(),
                      scales.defined() ? scales.data_ptr<float>() : nullptr, rows.size(1)};
  const int64_t* tgt_p = tgt.data_ptr<int64_t>();
  float* nll_p = nll.data_ptr<float>();
  const float cap = static_cast<float>(softcap);

  at::Tensor ptr, cols, vals;
  if (extra_ptr.has_value()) {
    ptr = extra_ptr->contiguous();
    cols = extra_cols->contiguous();
    vals = extra_vals->contiguous();
  }
  const int64_t* ptr_p = ptr.defined() ? ptr.data_ptr<int64_t>() : nullptr;
  const int64_t* cols_p = ptr.defined() ? cols.data_ptr<int64_t>() : nullptr;
  const float* vals_p = ptr.defined() ? vals.data_ptr<float>() : nullptr;

  at::parallel_for(0, n, kBlock, [&](int64_t begin, int64_t end) {
    auto logits = at::empty({kBlock, v}, h.options());
    RowScratch s(v);
    for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
      const int64_t rows_here = std::min(kBlock, end - b0);
      auto l2_block = logits.narrow(0, 0, rows_here);
      at::mm_out(l2_block, h.narrow(0, b0, rows_here), wt);
      float* l2_base = l2_block.data_ptr<float>();
      for (int64_t i = 0; i < rows_here; ++i) {
        const int64_t row = b0 + i;
        float* l2 = l2_base + i * v;
        if (ptr_p != nullptr) {  // the sparse tier-2 logits, before the softcap like the head's
          for (int64_t e = ptr_p[row]; e < ptr_p[row + 1]; ++e) l2[cols_p[e]] += vals_p[e];
        }
        row_logits(l2, v, cap, priors, row, s);
        nll_p[row] = row_lse(s) - s.z[tgt_p[row]];
      }
    }
  });
  return nll;
}

}  // namespace golf::cpu
