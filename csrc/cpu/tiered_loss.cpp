// golf::tiered_loss on CPU: cross-entropy of  sum_k scale_k prior_tables[prior_rows[n,k]] + softcap*tanh(logits2/softcap)
// over the full vocabulary, and its backward. Reference: golf.ops.ref_tiered_loss; the arithmetic and the order of
// every sum: kernels/tiered_loss_math.h (shared with the CUDA kernels), the row loops: tiered_rows.h.
//
// at::parallel_for over rows, one row at a time through task-local buffers (the summed logits never exist for
// the whole batch). A tanh and an exp per logit dominate; both are branch-free fp32 polynomials the compiler
// vectorises. History (N 4,096, V 1,024, K 3, cap 30, 2 shared cores; forward / forward + backward,
// `bench.tiered_loss`):
//   v1 scalar std::tanh per logit, fp64 std::exp; backward recomputes tanh twice        59 ms / 150 ms
//   v2 blocks of 32 rows through ATen's tanh_/exp_ (tanh_ alone: 4.9 ns per logit)      27 ms /  57 ms
//   v3 vectorised polynomial tanh and exp, fused row loops                              20 ms /  38 ms
//   v4 the shared math header; sums in the CUDA kernels' order (per-thread, then a tree)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "checks.h"
#include "ops.h"
#include "prior_segments.h"
#include "tiered_rows.h"

namespace golf::cpu {
namespace {

struct Args {
  at::Tensor l2, tables, rows, targets, scales;  // contiguous; l2 fp32; scales undefined when absent
  Priors priors;
  int64_t n, v;
  float cap;
};

Args prepare(const at::Tensor& logits2, const at::Tensor& prior_tables, const at::Tensor& prior_rows,
             const at::Tensor& targets, double softcap, const std::optional<at::Tensor>& prior_scales) {
  Args a;
  a.l2 = logits2.to(at::kFloat).contiguous();
  a.tables = prior_tables.contiguous();
  a.rows = prior_rows.contiguous();
  a.targets = targets.contiguous();
  if (prior_scales.has_value()) a.scales = prior_scales->contiguous();
  a.priors = {a.tables.data_ptr<float>(), a.rows.data_ptr<int32_t>(),
              a.scales.defined() ? a.scales.data_ptr<float>() : nullptr, a.rows.size(1)};
  a.n = a.l2.size(0);
  a.v = a.l2.size(1);
  a.cap = static_cast<float>(softcap);
  return a;
}

// Row i's gradient from its logits and tanh (s.z, s.th: row_logits) and its lse, for upstream gradients g_nll of
// nll and g_total = g_nll + g_lse: dz = d loss / d z into dz [v], d loss / d l2 into out [v] and, where gs is
// given, each present prior slot's scale gradient into gs [k].
GOLF_ROW_CLONES void row_grad(const Args& a, RowScratch& s, int64_t i, float lse, float g_total, float g_nll,
                              int64_t y, float* dz, float* out, float* gs) {
  const float* z = s.z.data();
  const float* th = s.th.data();
#pragma omp simd
  for (int64_t j = 0; j < a.v; ++j) dz[j] = gm::dlogit(z[j], lse, g_total, g_nll, false);
  dz[y] = gm::dlogit(z[y], lse, g_total, g_nll, true);
#pragma omp simd
  for (int64_t j = 0; j < a.v; ++j) out[j] = gm::through_softcap(dz[j], th[j], a.cap);
  if (gs == nullptr) return;
  for (int64_t q = 0; q < a.priors.k; ++q) {
    const int64_t row = a.priors.rows[i * a.priors.k + q];
    if (row >= 0) gs[q] = row_dot(dz, a.priors.tables + row * a.v, a.v, s);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> tiered_loss(const at::Tensor& logits2, const at::Tensor& prior_tables,
                                               const at::Tensor& prior_rows, const at::Tensor& targets,
                                               double softcap, const std::optional<at::Tensor>& prior_scales) {
  check_tiered_loss_args(logits2, prior_tables, prior_rows, targets, prior_scales);
  const Args a = prepare(logits2, prior_tables, prior_rows, targets, softcap, prior_scales);
  auto nll = at::empty({a.n}, a.l2.options());
  auto lse = at::empty({a.n}, a.l2.options());
  float* nll_p = nll.data_ptr<float>();
  float* lse_p = lse.data_ptr<float>();
  const float* l2_p = a.l2.data_ptr<float>();
  const int64_t* y = a.targets.data_ptr<int64_t>();
  at::parallel_for(0, a.n, 16, [&](int64_t begin, int64_t end) {
    RowScratch s(a.v);
    for (int64_t i = begin; i < end; ++i) {
      row_logits(l2_p + i * a.v, a.v, a.cap, a.priors, i, s);
      lse_p[i] = row_lse(s);
      nll_p[i] = lse_p[i] - s.z[y[i]];
    }
  });
  return {nll, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tiered_loss_backward(
    const at::Tensor& grad_nll, const at::Tensor& grad_lse, const at::Tensor& logits2, const at::Tensor& prior_tables,
    const at::Tensor& prior_rows, const at::Tensor& targets, const at::Tensor& lse_in, double softcap,
    bool tables_grad, const std::optional<at::Tensor>& prior_scales, bool scales_grad) {
  check_tiered_loss_backward_args(grad_nll, grad_lse, logits2, prior_tables, prior_rows, targets, lse_in,
                                  prior_scales);
  const Args a = prepare(logits2, prior_tables, prior_rows, targets, softcap, prior_scales);
  const auto g_nll = grad_nll.to(at::kFloat).contiguous();
  const auto g_lse = grad_lse.to(at::kFloat).contiguous();
  const auto lse = lse_in.to(at::kFloat).contiguous();
  const int64_t k = a.priors.k;
  // dz = d loss / d z (the summed logits), the gradient of everything below the softcap. Kept whole only when the
  // tables train (their gradient is a scatter of it); grad_l2 = dz * (1 - tanh^2).
  auto grad_l2 = at::empty({a.n, a.v}, a.l2.options());
  auto dz_all = tables_grad ? at::empty({a.n, a.v}, a.l2.options()) : at::Tensor();
  auto grad_scales = scales_grad ? at::zeros({a.n, k}, a.l2.options()) : at::zeros({0, k}, a.l2.options());
  float* gl2_p = grad_l2.data_ptr<float>();
  float* dz_all_p = tables_grad ? dz_all.data_ptr<float>() : nullptr;
  float* gs_p = scales_grad ? grad_scales.data_ptr<float>() : nullptr;
  const float* l2_p = a.l2.data_ptr<float>();
  const float* gn = g_nll.data_ptr<float>();
  const float* gl = g_lse.data_ptr<float>();
  const float* lse_p = lse.data_ptr<float>();
  const int64_t* y = a.targets.data_ptr<int64_t>();
  at::parallel_for(0, a.n, 16, [&](int64_t begin, int64_t end) {
    RowScratch s(a.v);
    std::vector<float> dz_buf(a.v);
    for (int64_t i = begin; i < end; ++i) {
      row_logits(l2_p + i * a.v, a.v, a.cap, a.priors, i, s);
      float* dz = dz_all_p != nullptr ? dz_all_p + i * a.v : dz_buf.data();
      row_grad(a, s, i, lse_p[i], gn[i] + gl[i], gn[i], y[i], dz, gl2_p + i * a.v,
               gs_p != nullptr ? gs_p + i * k : nullptr);
    }
  });
  at::Tensor grad_tables;
  if (tables_grad) {  // each table row: scale * dz of the positions reading it, in prior_segments' order
    grad_tables = at::zeros_like(a.tables);
    const PriorSegments seg = prior_segments(a.rows);
    const int64_t* members = seg.members.data_ptr<int64_t>();
    const int64_t* starts = seg.starts.data_ptr<int64_t>();
    const int64_t* seg_rows = seg.rows.data_ptr<int64_t>();
    float* gt_p = grad_tables.data_ptr<float>();
    const float* scales_p = a.priors.scales;
    at::parallel_for(0, seg.count, 1, [&](int64_t begin, int64_t end) {
      for (int64_t sgm = begin; sgm < end; ++sgm) {
        float* out = gt_p + seg_rows[sgm] * a.v;
        for (int64_t m = starts[sgm]; m < starts[sgm + 1]; ++m) {
          const int64_t pos = members[m];
          const float scale = scales_p != nullptr ? scales_p[pos] : 1.0f;
          const float* d = dz_all_p + (pos / k) * a.v;
#pragma omp simd
          for (int64_t j = 0; j < a.v; ++j) out[j] = out[j] + scale * d[j];
        }
      }
    });
  } else {
    grad_tables = at::zeros({0, a.v}, a.tables.options());
  }
  return {grad_l2.to(logits2.scalar_type()), grad_tables, grad_scales};
}


std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tiered_loss_train(
    const at::Tensor& logits2, const at::Tensor& prior_tables, const at::Tensor& prior_rows, const at::Tensor& targets,
    double softcap, double grad_weight, const std::optional<at::Tensor>& prior_scales, bool scales_grad) {
  check_tiered_loss_train_args(logits2, prior_tables, prior_rows, targets, grad_weight, prior_scales);
  const Args a = prepare(logits2, prior_tables, prior_rows, targets, softcap, prior_scales);
  const int64_t k = a.priors.k;
  const float w = static_cast<float>(grad_weight);
  auto nll = at::empty({a.n}, a.l2.options());
  auto lse = at::empty({a.n}, a.l2.options());
  auto grad_l2 = at::empty({a.n, a.v}, a.l2.options());
  auto grad_scales = scales_grad ? at::zeros({a.n, k}, a.l2.options()) : at::zeros({0, k}, a.l2.options());
  float* nll_p = nll.data_ptr<float>();
  float* lse_p = lse.data_ptr<float>();
  float* gl2_p = grad_l2.data_ptr<float>();
  float* gs_p = scales_grad ? grad_scales.data_ptr<float>() : nullptr;
  const float* l2_p = a.l2.data_ptr<float>();
  const int64_t* y = a.targets.data_ptr<int64_t>();
  at::parallel_for(0, a.n, 16, [&](int64_t begin, int64_t end) {
    RowScratch s(a.v);
    std::vector<float> dz(a.v);
    for (int64_t i = begin; i < end; ++i) {  // the logits once: loss and gradient from the same z and tanh
      row_logits(l2_p + i * a.v, a.v, a.cap, a.priors, i, s);
      lse_p[i] = row_lse(s);
      nll_p[i] = lse_p[i] - s.z[y[i]];
      row_grad(a, s, i, lse_p[i], w, w, y[i], dz.data(), gl2_p + i * a.v, gs_p != nullptr ? gs_p + i * k : nullptr);
    }
  });
  return {nll, lse, grad_l2.to(logits2.scalar_type()), grad_scales};
}

}  // namespace golf::cpu
