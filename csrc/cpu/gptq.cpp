// golf::hessian_accumulate and golf::gptq_quantize on CPU: the calibration half of the int6 export.
//
// The GPTQ follows golf.ops.ref_gptq_quantize step for step: gptq_pipeline.cpp makes the same ATen calls for
// everything but the in-block column loop, which the reference runs one column at a time over all rows (a Python
// loop) and this file runs one row at a time over the block's columns, rows in parallel: rows never interact inside
// a block, and a row's block slice is contiguous. Every arithmetic step (kernels/gptq_math.h, shared with the
// CUDA kernel) is the same IEEE operation in the same order, compiled without FMA contraction, so q matches the
// reference bit for bit.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "checks.h"
#include "gptq_math.h"
#include "gptq_pipeline.h"
#include "ops.h"

namespace golf::cpu {

void hessian_accumulate(const at::Tensor& H, const at::Tensor& X) {
  check_hessian_accumulate_args(H, X);
  hessian_accumulate_chunks(H, X);
}

namespace {
// The column loop: one row at a time over the block's columns, rows in parallel (rows never interact).
void columns(at::Tensor& Ws, at::Tensor& Q, at::Tensor& err, at::Tensor& loss, const at::Tensor& S,
             const at::Tensor& U, int64_t i1, int64_t i2, float qmax) {
  const int64_t rows = Ws.size(0), cols = Ws.size(1), nb = i2 - i1;
  float* ws = Ws.data_ptr<float>();
  float* qs = Q.data_ptr<float>();
  float* ep = err.data_ptr<float>();
  float* ls = loss.data_ptr<float>();
  const float* sp = S.data_ptr<float>();
  const float* up = U.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* w = ws + r * cols + i1;
      float* q = qs + r * cols + i1;
      float* e = ep + r * nb;
      const float s = sp[r];
      float l = ls[r];
      for (int64_t j = 0; j < nb; ++j) {
        const float* u = up + (i1 + j) * cols + i1;
        q[j] = math::gptq_code(w[j], s, qmax);
        e[j] = math::gptq_error(w[j], q[j], s, u[j]);
        l = l + e[j] * e[j];
        for (int64_t k = j + 1; k < nb; ++k) w[k] = math::gptq_update(w[k], e[j], u[k]);
      }
      ls[r] = l;
    }
  });
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> gptq_quantize(const at::Tensor& W, const at::Tensor& H, int64_t bits,
                                                 int64_t block, bool act_order, double damp,
                                                 const at::Tensor& clip_candidates) {
  check_gptq_quantize_args(W, H, bits, block, damp, clip_candidates);
  const auto scales = [&](const at::Tensor& Wd, float qmax) { return quantile_scales(Wd, clip_candidates, qmax); };
  return gptq_pipeline(W, H, bits, block, act_order, damp, scales, columns);
}

std::tuple<at::Tensor, at::Tensor> gptq_quantize_scaled(const at::Tensor& W, const at::Tensor& H,
                                                        const at::Tensor& scales, int64_t bits, int64_t block,
                                                        bool act_order, double damp) {
  check_gptq_quantize_scaled_args(W, H, scales, bits, block, damp);
  return gptq_pipeline(W, H, bits, block, act_order, damp, [&](const at::Tensor&, float) { return scales; }, columns);
}

}  // namespace golf::cpu
