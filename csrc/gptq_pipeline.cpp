// golf::gptq_quantize's steps around the column loop (gptq_pipeline.h), on the weights' device.
#include "gptq_pipeline.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace golf {

namespace {
// Smallest normal fp16: a stored scale never rounds to zero or to a subnormal (mirrors GPTQ_SCALE_FLOOR).
constexpr double kScaleFloor = 6.103515625e-05;  // 2^-14

// [C, rows] per-row quantiles of a [rows, cols] matrix, linear interpolation between order statistics
// (golf.ops.row_quantiles, same calls).
at::Tensor row_quantiles(const at::Tensor& absw, const at::Tensor& probs) {
  const auto sorted = std::get<0>(absw.sort(1));
  const int64_t cols = absw.size(1);
  const auto p = probs.contiguous();
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < p.numel(); ++i) {
    const double pos = static_cast<double>(p.data_ptr<float>()[i]) * static_cast<double>(cols - 1);
    const int64_t lo = static_cast<int64_t>(std::floor(pos));
    const int64_t hi = std::min(lo + 1, cols - 1);
    const double frac = pos - static_cast<double>(lo);
    const auto vlo = sorted.select(1, lo);
    out.push_back(vlo + (sorted.select(1, hi) - vlo) * frac);
  }
  return at::stack(out);
}

// Upper Cholesky factor of (H + d*I)^-1 with d = damp*mean(diag H); ten times more damping per retry when H
// is not positive definite (same retries as the reference).
at::Tensor upper_cholesky_of_inverse(const at::Tensor& H, double damp) {
  const double base = damp * H.diagonal().mean().item<double>();
  double d = base > 0 ? base : 1e-6;
  for (int attempt = 0; attempt < 4; ++attempt, d *= 10) {
    auto Hd = H.clone();
    Hd.diagonal().add_(d);
    auto [L, info] = at::linalg_cholesky_ex(Hd, /*upper=*/false, /*check_errors=*/false);
    if (info.item<int64_t>() != 0) continue;
    auto Hinv = at::cholesky_inverse(L, /*upper=*/false);
    auto [U, info2] = at::linalg_cholesky_ex(Hinv, /*upper=*/true, /*check_errors=*/false);
    if (info2.item<int64_t>() == 0) return U;
  }
  TORCH_CHECK(false, "golf::gptq_quantize: H is not positive definite even with damping ", d / 10,
              " (is it a Hessian X^T X?)");
  return {};
}

}  // namespace

void hessian_accumulate_chunks(const at::Tensor& H, const at::Tensor& X) {
  const int64_t n = H.size(0);
  const auto x = X.reshape({-1, n});
  const int64_t rows = x.size(0);
  const int64_t chunk = std::max<int64_t>(256, (int64_t{1} << 22) / std::max<int64_t>(n, 1));
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const auto xc = x.slice(0, r0, std::min(rows, r0 + chunk)).to(at::kFloat);
    H.addmm_(xc.t(), xc);
  }
}

at::Tensor quantile_scales(const at::Tensor& W, const at::Tensor& clip_candidates, float qmax) {
  return (row_quantiles(W.abs(), clip_candidates) / static_cast<double>(qmax)).clamp_min(kScaleFloor).to(at::kHalf);
}

std::tuple<at::Tensor, at::Tensor> gptq_pipeline(const at::Tensor& W_in, const at::Tensor& H_in, int64_t bits, int64_t block,
                                                 bool act_order, double damp, const GptqScales& candidate_scales,
                                                 const GptqColumns& columns) {
  const int64_t rows = W_in.size(0), cols = W_in.size(1);
  const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
  auto W = W_in.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();
  auto H = H_in.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();

  // Dead inputs (never active in calibration): any weight is as good as another, so quantize 0.
  const auto dead = H.diagonal().eq(0).nonzero().squeeze(1);
  if (dead.numel() > 0) {
    H.index_put_({dead, dead}, 1.0);
    W.index_fill_(1, dead, 0.0);
  }
  const auto perm = act_order ? at::argsort(H.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true)
                              : at::arange(cols, W.options().dtype(at::kLong));
  const auto Wp = W.index_select(1, perm);
  const auto Hp = H.index_select(0, perm).index_select(1, perm);
  const auto U = upper_cholesky_of_inverse(Hp, damp).contiguous();

  // Candidate scales per row, fp16 so that the loop quantizes on the grid that is stored.
  const auto s16 = candidate_scales(W, qmax).to(W.device(), at::kHalf);
  const int64_t C = s16.size(0);
  // One stacked row per (candidate, row) pair, minus pairs whose fp16 scale repeats an earlier candidate's.
  auto keep = at::ones({C, rows}, W.options().dtype(at::kBool));
  for (int64_t c = 1; c < C; ++c) {
    keep.select(0, c).copy_(s16.select(0, c).unsqueeze(0).ne(s16.slice(0, 0, c)).all(0));
  }
  const auto pairs = keep.nonzero();
  const auto cand_idx = pairs.select(1, 0), row_idx = pairs.select(1, 1);
  const auto S = s16.index({cand_idx, row_idx}).to(at::kFloat).contiguous();
  const int64_t R = S.numel();
  auto Ws = Wp.index_select(0, row_idx).contiguous();
  auto Q = at::empty_like(Ws);
  auto loss = at::zeros({R}, Ws.options());
  for (int64_t i1 = 0; i1 < cols; i1 += block) {
    const int64_t i2 = std::min(i1 + block, cols);
    auto err = at::empty({R, i2 - i1}, Ws.options());
    columns(Ws, Q, err, loss, S, U, i1, i2, qmax);
    // Lazy update: the block's error reaches the remaining columns in one GEMM.
    if (i2 < cols) Ws.slice(1, i2).sub_(at::mm(err, U.slice(0, i1, i2).slice(1, i2)));
  }

  // Per row, the candidate with the lowest GPTQ loss sum(err^2) = (w - q s) H_d (w - q s)^T (H_d damped).
  auto full = at::full({C, rows}, std::numeric_limits<float>::infinity(), loss.options());
  full.index_put_({cand_idx, row_idx}, loss);
  const auto best = full.argmin(0);
  auto slot = at::zeros({C, rows}, best.options());
  slot.index_put_({cand_idx, row_idx}, at::arange(R, best.options()));
  const auto rows_all = at::arange(rows, best.options());
  auto q_out = at::empty({rows, cols}, W.options());
  q_out.index_copy_(1, perm, Q.index_select(0, slot.index({best, rows_all})));
  return {q_out.to(at::kChar), s16.index({best, rows_all})};
}

}  // namespace golf
