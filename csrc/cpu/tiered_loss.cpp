// golf::tiered_loss on CPU: cross-entropy of  sum_k prior_tables[prior_rows[n,k]] + softcap*tanh(logits2/softcap)
// over the full vocabulary, and its backward. Reference: golf.ops.ref_tiered_loss.
//
// at::parallel_for over rows, one row at a time through a task-local buffer (the summed logits never exist for
// the whole batch). A tanh and an exp per logit dominate, so both are branch-free fp32 polynomials that the
// compiler vectorises, and the row loops are built twice (AVX2 and baseline x86-64, picked at load time).
// History (N 4,096, V 1,024, K 3, cap 30, 2 shared cores; forward / forward + backward, `bench.tiered_loss`):
//   v1 scalar std::tanh per logit, fp64 std::exp; backward recomputes tanh twice        59 ms / 150 ms
//   v2 blocks of 32 rows through ATen's tanh_/exp_ (tanh_ alone: 4.9 ns per logit)      27 ms /  57 ms
//   v3 vectorised polynomial tanh and exp, fused row loops                              20 ms /  38 ms
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "checks.h"
#include "ops.h"

// The row loops, once per instruction set (GCC/Clang function multi-versioning on x86-64).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GOLF_ROW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GOLF_ROW_CLONES
#endif

namespace golf {

namespace cpu {
namespace {

// e^x in fp32, branch-free (vectorisable): x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), e^r by
// Cephes' degree-7 polynomial (relative error ~2 ulp), 2^n through the exponent bits. x is clamped to
// [-87.3, 80] (callers pass x <= 80), so e^x stays a normal float: e^-87.3 ~ 1e-38 stands in for anything
// smaller, which the callers only sum or scale gradients by.
inline float exp_f32(float x) {
  x = std::min(std::max(x, -87.3f), 80.0f);
  const float shifted = x * 1.44269504089f + 12582912.0f;  // 1.5 * 2^23: rounds x / ln2 to an integer
  const float n = shifted - 12582912.0f;
  const int32_t ni = std::bit_cast<int32_t>(shifted) - 0x4B400000;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((ni + 127) << 23);
}

// tanh in fp32, branch-free: an odd Taylor polynomial below |x| = 0.1 (error < 1e-13; no cancellation near 0),
// else 1 - 2/(e^2|x| + 1) (error ~1e-7; e^2|x| saturates harmlessly).
inline float tanh_f32(float x) {
  const float a = std::fabs(x);
  const float x2 = x * x;
  const float small = a * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315 + x2 * (62.0f / 2835)))));
  const float large = 1.0f - 2.0f / (exp_f32(std::min(2.0f * a, 80.0f)) + 1.0f);
  return std::copysign(a < 0.1f ? small : large, x);
}

// z = cap * tanh(l2 / cap) with th = tanh(l2 / cap) kept for the backward (or z = l2 when cap <= 0).
GOLF_ROW_CLONES void capped_row(const float* l2, int64_t v, float cap, float* z, float* th) {
  if (cap <= 0) {
    std::copy(l2, l2 + v, z);
    return;
  }
  const float inv = 1.0f / cap;
#pragma omp simd
  for (int64_t j = 0; j < v; ++j) {
    th[j] = tanh_f32(l2[j] * inv);
    z[j] = cap * th[j];
  }
}

GOLF_ROW_CLONES void add_row(float* z, const float* t, int64_t v) {
#pragma omp simd
  for (int64_t j = 0; j < v; ++j) z[j] += t[j];
}

// log(sum_j e^z[j]): fp32 exponentials (each in (0, 1]) summed in fp64.
GOLF_ROW_CLONES float log_sum_exp_row(const float* z, int64_t v) {
  float m = -INFINITY;
  for (int64_t j = 0; j < v; ++j) m = std::max(m, z[j]);  // cheap next to the exps; left scalar
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < v; ++j) s += exp_f32(z[j] - m);
  return m + static_cast<float>(std::log(s));
}

// z becomes g * softmax(z), given log(sum e^z).
GOLF_ROW_CLONES void scaled_softmax_row(float* z, int64_t v, float lse, float g) {
#pragma omp simd
  for (int64_t j = 0; j < v; ++j) z[j] = g * exp_f32(z[j] - lse);
}

// out = dz * (1 - th^2): through the softcap.
GOLF_ROW_CLONES void cap_grad_row(const float* dz, const float* th, int64_t v, float* out) {
#pragma omp simd
  for (int64_t j = 0; j < v; ++j) out[j] = dz[j] * (1.0f - th[j] * th[j]);
}

struct Rows {
  const float* l2;
  const float* tables;
  const int32_t* rows;
  const int64_t* targets;
  int64_t n, v, k;
  float cap;
};

// z[0..v) for row i (th[0..v): the softcap's tanh values). Indices were validated by check_tiered_loss_args.
void summed_logits(const Rows& a, int64_t i, float* z, float* th) {
  capped_row(a.l2 + i * a.v, a.v, a.cap, z, th);
  for (int64_t q = 0; q < a.k; ++q) {
    const int64_t row = a.rows[i * a.k + q];
    if (row < 0) continue;  // -1: no prior row at this slot
    add_row(z, a.tables + row * a.v, a.v);
  }
}

Rows make_rows(const at::Tensor& l2, const at::Tensor& tables, const at::Tensor& rows, const at::Tensor& targets,
               double cap) {
  return Rows{l2.data_ptr<float>(), tables.data_ptr<float>(), rows.data_ptr<int32_t>(), targets.data_ptr<int64_t>(),
              l2.size(0), l2.size(1), rows.size(1), static_cast<float>(cap)};
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
  at::parallel_for(0, a.n, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> z(a.v), th(a.v);
    for (int64_t i = begin; i < end; ++i) {
      summed_logits(a, i, z.data(), th.data());
      lse_p[i] = log_sum_exp_row(z.data(), a.v);
      nll_p[i] = lse_p[i] - z[a.targets[i]];
    }
  });
  return {nll, lse};
}

std::tuple<at::Tensor, at::Tensor> tiered_loss_backward(const at::Tensor& grad_nll, const at::Tensor& grad_lse,
                                                        const at::Tensor& logits2, const at::Tensor& prior_tables,
                                                        const at::Tensor& prior_rows, const at::Tensor& targets,
                                                        const at::Tensor& lse_in, double softcap, bool tables_grad) {
  check_tiered_loss_backward_args(grad_nll, grad_lse, logits2, prior_tables, prior_rows, targets, lse_in);
  const auto l2 = logits2.to(at::kFloat).contiguous();
  const auto tables = prior_tables.contiguous();
  const auto rows = prior_rows.contiguous();
  const auto tgt = targets.contiguous();
  const auto g_nll = grad_nll.to(at::kFloat).contiguous();
  const auto g_lse = grad_lse.to(at::kFloat).contiguous();
  const auto lse = lse_in.to(at::kFloat).contiguous();
  const Rows a = make_rows(l2, tables, rows, tgt, softcap);
  // dz = d loss / d z (the summed logits): (g_nll + g_lse) * softmax(z) - g_nll * onehot(target). Kept whole only
  // when the tables train (their gradient is a scatter of it); grad_l2 = dz * (1 - tanh^2).
  auto grad_l2 = at::empty({a.n, a.v}, l2.options());
  auto dz_all = tables_grad ? at::empty({a.n, a.v}, l2.options()) : at::Tensor();
  float* gl2_p = grad_l2.data_ptr<float>();
  float* dz_all_p = tables_grad ? dz_all.data_ptr<float>() : nullptr;
  const float* gn = g_nll.data_ptr<float>();
  const float* gs = g_lse.data_ptr<float>();
  const float* lse_p = lse.data_ptr<float>();
  at::parallel_for(0, a.n, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> z_buf(a.v), th(a.v);
    for (int64_t i = begin; i < end; ++i) {
      float* z = dz_all_p != nullptr ? dz_all_p + i * a.v : z_buf.data();
      summed_logits(a, i, z, th.data());
      scaled_softmax_row(z, a.v, lse_p[i], gn[i] + gs[i]);
      z[a.targets[i]] -= gn[i];
      float* out = gl2_p + i * a.v;
      if (a.cap > 0) {
        cap_grad_row(z, th.data(), a.v, out);
      } else {
        std::copy(z, z + a.v, out);
      }
    }
  });
  at::Tensor grad_tables;
  if (tables_grad) {
    grad_tables = at::zeros_like(tables);
    for (int64_t q = 0; q < a.k; ++q) {
      const auto col = rows.select(1, q).to(at::kLong);
      const auto keep = col >= 0;
      grad_tables.index_add_(0, col.masked_select(keep), dz_all.index({keep}));
    }
  } else {
    grad_tables = at::zeros({0, a.v}, tables.options());
  }
  return {grad_l2.to(logits2.scalar_type()), grad_tables};
}

}  // namespace cpu
}  // namespace golf
