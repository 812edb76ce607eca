// golf::tiered_loss on CPU: cross-entropy of  sum_k prior_tables[prior_rows[n,k]] + softcap*tanh(logits2/softcap)
// over the full vocabulary, one row at a time (the summed fp32 logits never exist for the whole batch),
// and its backward. Reference: golf.ops.ref_tiered_loss.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "ops.h"

namespace golf {

void check_tiered_loss_args(const at::Tensor& logits2, const at::Tensor& prior_tables, const at::Tensor& prior_rows,
                            const at::Tensor& targets) {
  TORCH_CHECK(logits2.dim() == 2, "golf::tiered_loss: logits2 must be [N, V], found ", logits2.sizes());
  const int64_t n = logits2.size(0), v = logits2.size(1);
  TORCH_CHECK(logits2.scalar_type() == at::kFloat || logits2.scalar_type() == at::kBFloat16 ||
                  logits2.scalar_type() == at::kHalf,
              "golf::tiered_loss: logits2 must be float32, bfloat16 or float16, found ", logits2.scalar_type());
  TORCH_CHECK(prior_tables.dim() == 2 && prior_tables.size(1) == v && prior_tables.scalar_type() == at::kFloat,
              "golf::tiered_loss: prior_tables must be float32 [R, ", v, "], found ", prior_tables.scalar_type(), " ",
              prior_tables.sizes());
  TORCH_CHECK(prior_rows.dim() == 2 && prior_rows.size(0) == n && prior_rows.scalar_type() == at::kInt,
              "golf::tiered_loss: prior_rows must be int32 [", n, ", K], found ", prior_rows.scalar_type(), " ",
              prior_rows.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == n && targets.scalar_type() == at::kLong,
              "golf::tiered_loss: targets must be int64 [", n, "], found ", targets.scalar_type(), " ",
              targets.sizes());
  for (const at::Tensor* t : {&prior_tables, &prior_rows, &targets}) {
    TORCH_CHECK(t->device() == logits2.device(), "golf::tiered_loss: all tensors must be on ", logits2.device());
  }
}

namespace cpu {
namespace {

struct Rows {
  const float* l2;
  const float* tables;
  const int32_t* rows;
  const int64_t* targets;
  int64_t n, v, k, r;
  double cap;
};

// z[0..v) for row i; returns false (and the bad id) when a row or target index is out of range.
bool summed_logits(const Rows& a, int64_t i, float* z, int64_t* bad) {
  const float* l2 = a.l2 + i * a.v;
  if (a.cap > 0) {
    const float c = static_cast<float>(a.cap), inv = 1.0f / c;
    for (int64_t j = 0; j < a.v; ++j) z[j] = c * std::tanh(l2[j] * inv);
  } else {
    for (int64_t j = 0; j < a.v; ++j) z[j] = l2[j];
  }
  for (int64_t q = 0; q < a.k; ++q) {
    const int64_t row = a.rows[i * a.k + q];
    if (row < 0) continue;
    if (row >= a.r) { *bad = row; return false; }
    const float* t = a.tables + row * a.v;
    for (int64_t j = 0; j < a.v; ++j) z[j] += t[j];
  }
  const int64_t y = a.targets[i];
  if (y < 0 || y >= a.v) { *bad = y; return false; }
  return true;
}

float log_sum_exp(const float* z, int64_t v) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < v; ++j) m = std::max(m, z[j]);
  double s = 0;
  for (int64_t j = 0; j < v; ++j) s += std::exp(static_cast<double>(z[j] - m));
  return m + static_cast<float>(std::log(s));
}

Rows make_rows(const at::Tensor& l2, const at::Tensor& tables, const at::Tensor& rows, const at::Tensor& targets,
               double cap) {
  return Rows{l2.data_ptr<float>(), tables.data_ptr<float>(), rows.data_ptr<int32_t>(), targets.data_ptr<int64_t>(),
              l2.size(0), l2.size(1), rows.size(1), tables.size(0), cap};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> tiered_loss(const at::Tensor& logits2, const at::Tensor& prior_tables,
                                               const at::Tensor& prior_rows, const at::Tensor& targets,
                                               double softcap) {
  check_tiered_loss_args(logits2, prior_tables, prior_rows, targets);
  const auto l2 = logits2.to(at::kFloat).contiguous();
  const auto tables = prior_tables.contiguous();
  const auto rows = prior_rows.contiguous();
  const auto tgt = targets.contiguous();
  const Rows a = make_rows(l2, tables, rows, tgt, softcap);
  auto nll = at::empty({a.n}, l2.options());
  auto lse = at::empty({a.n}, l2.options());
  float* nll_p = nll.data_ptr<float>();
  float* lse_p = lse.data_ptr<float>();
  std::atomic<int64_t> bad{-1};
  at::parallel_for(0, a.n, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> z(a.v);
    for (int64_t i = begin; i < end; ++i) {
      int64_t b = -1;
      if (!summed_logits(a, i, z.data(), &b)) { bad.store(b); continue; }
      const float m = log_sum_exp(z.data(), a.v);
      lse_p[i] = m;
      nll_p[i] = m - z[a.targets[i]];
    }
  });
  TORCH_CHECK(bad.load() < 0, "golf::tiered_loss: index out of range (prior row >= ", a.r, " or target >= ", a.v,
              "): ", bad.load());
  return {nll, lse};
}

std::tuple<at::Tensor, at::Tensor> tiered_loss_backward(const at::Tensor& grad_nll, const at::Tensor& grad_lse,
                                                        const at::Tensor& logits2, const at::Tensor& prior_tables,
                                                        const at::Tensor& prior_rows, const at::Tensor& targets,
                                                        const at::Tensor& lse_in, double softcap, bool tables_grad) {
  check_tiered_loss_args(logits2, prior_tables, prior_rows, targets);
  const auto l2 = logits2.to(at::kFloat).contiguous();
  const auto tables = prior_tables.contiguous();
  const auto rows = prior_rows.contiguous();
  const auto tgt = targets.contiguous();
  const auto g_nll = grad_nll.to(at::kFloat).contiguous();
  const auto g_lse = grad_lse.to(at::kFloat).contiguous();
  const auto lse = lse_in.to(at::kFloat).contiguous();
  const Rows a = make_rows(l2, tables, rows, tgt, softcap);
  // dz: gradient w.r.t. the summed logits; kept for the table scatter when the tables train.
  auto dz = at::empty({a.n, a.v}, l2.options());
  auto grad_l2 = at::empty({a.n, a.v}, l2.options());
  float* dz_p = dz.data_ptr<float>();
  float* gl2_p = grad_l2.data_ptr<float>();
  const float* gn = g_nll.data_ptr<float>();
  const float* gs = g_lse.data_ptr<float>();
  const float* lse_p = lse.data_ptr<float>();
  std::atomic<int64_t> bad{-1};
  at::parallel_for(0, a.n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* z = dz_p + i * a.v;
      int64_t b = -1;
      if (!summed_logits(a, i, z, &b)) { bad.store(b); continue; }
      const float m = lse_p[i], g = gn[i] + gs[i];
      for (int64_t j = 0; j < a.v; ++j) z[j] = g * std::exp(z[j] - m);  // (g_nll + g_lse) * softmax
      z[a.targets[i]] -= gn[i];
      const float* x = a.l2 + i * a.v;
      float* out = gl2_p + i * a.v;
      if (a.cap > 0) {
        const float inv = 1.0f / static_cast<float>(a.cap);
        for (int64_t j = 0; j < a.v; ++j) {
          const float t = std::tanh(x[j] * inv);
          out[j] = z[j] * (1.0f - t * t);
        }
      } else {
        for (int64_t j = 0; j < a.v; ++j) out[j] = z[j];
      }
    }
  });
  TORCH_CHECK(bad.load() < 0, "golf::tiered_loss_backward: index out of range: ", bad.load());
  at::Tensor grad_tables;
  if (tables_grad) {
    grad_tables = at::zeros_like(tables);
    for (int64_t q = 0; q < a.k; ++q) {
      const auto col = rows.select(1, q).to(at::kLong);
      const auto keep = col >= 0;
      grad_tables.index_add_(0, col.masked_select(keep), dz.index({keep}));
    }
  } else {
    grad_tables = at::zeros({0, a.v}, tables.options());
  }
  return {grad_l2.to(logits2.scalar_type()), grad_tables};
}

}  // namespace cpu
}  // namespace golf
