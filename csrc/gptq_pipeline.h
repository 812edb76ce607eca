// golf::gptq_quantize around its column loop, shared by the CPU and the CUDA op: ATen calls on the weights'
// device for everything but the loop over a block's columns, which is the device's (csrc/cpu/gptq.cpp: rows in
// parallel on the host; kernels/gptq.cu: a thread per row). Reference: golf.ops.ref_gptq_quantize.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <tuple>

namespace golf {

// Columns [i1, i2) of every stacked row r (kernels/gptq_math.h's step): codes into Q [R, cols], errors into
// err [R, i2 - i1], loss [R] += err^2, and the block's later columns of Ws [R, cols] updated. S [R]: the rows'
// fp16-rounded scales (as fp32); U [cols, cols]: the upper Cholesky factor of the damped inverse Hessian.
using GptqColumns = std::function<void(at::Tensor& Ws, at::Tensor& Q, at::Tensor& err, at::Tensor& loss,
                                       const at::Tensor& S, const at::Tensor& U, int64_t i1, int64_t i2, float qmax)>;

// H += X^T X (X flattened to rows), a chunk of rows at a time so that a large bf16 batch is never widened to fp32
// whole (16 MB per chunk); ATen's GEMM on H's device.
void hessian_accumulate_chunks(const at::Tensor& H, const at::Tensor& X);

// The candidate scales fp16 [C, out] of W [out, in] (its dead columns already zeroed) at qmax.
using GptqScales = std::function<at::Tensor(const at::Tensor& W, float qmax)>;

// golf::gptq_quantize's candidates: per row max(quantile_p(|w|) / qmax, 2^-14) for each p in clip_candidates.
at::Tensor quantile_scales(const at::Tensor& W, const at::Tensor& clip_candidates, float qmax);

// (q int8 [out, in], scale fp16 [out]: per row the candidate with the least GPTQ loss) after the op's checks.
std::tuple<at::Tensor, at::Tensor> gptq_pipeline(const at::Tensor& W, const at::Tensor& H, int64_t bits, int64_t block,
                                                 bool act_order, double damp, const GptqScales& candidate_scales,
                                                 const GptqColumns& columns);

}  // namespace golf
