// Launchers for kernels/tiered_loss.cu (golf::tiered_loss forward and backward, and the row part of
// golf::score_windows). Torch-free: raw pointers and a CUDA stream. The arithmetic: tiered_loss_math.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dtype.h"
#include "index_flag_bits.h"
#include "launch_plans.h"

namespace golf::kernels {

// The logits of N rows of V ids: l2 [N, V] (`dtype`), plus the prior rows: rows [N, K] int32 into tables [R, V]
// fp32 (-1: none), each times scales [N, K] fp32 (nullptr: 1); softcap `cap` (<= 0: none); targets [N] int64.
struct RowsArgs {
  const void* l2;
  Dtype dtype;
  int64_t n, v;
  const float* tables;
  int64_t table_rows;
  const int32_t* rows;
  const float* scales;
  int64_t k;
  const int64_t* targets;
  float cap;
  int* flags;     // device-side index-error flag (IndexFlag bits); nullptr: none
  int flag_bit;
};

// nll [N] and lse [N] (lse may be nullptr). A row with an index out of range gets NaN and raises args.flag_bit.
cudaError_t tiered_loss_forward(const RowsArgs& args, float* nll, float* lse, cudaStream_t stream);

// The backward of tiered_loss given lse [N] and the upstream grad_nll, grad_lse [N] fp32: grad_l2 [N, V] in
// args.dtype; where given, dz [N, V] fp32 (d loss / d logits, for the tables' gradient) and grad_scales [N, K]
// fp32 (K <= kMaxScaleSlots).
constexpr int kMaxScaleSlots = plans::kMaxScaleSlots;
cudaError_t tiered_loss_backward(const RowsArgs& args, const float* lse, const float* grad_nll,
                                 const float* grad_lse, void* grad_l2, float* dz, float* grad_scales,
                                 cudaStream_t stream);

// tiered_loss_forward and, in the same pass, the backward for grad_nll = weight, grad_lse = 0 (bit for bit what
// tiered_loss_backward writes for them): grad_l2 [N, V] in args.dtype and, where given, grad_scales [N, K] fp32
// (K <= kMaxScaleSlots).
cudaError_t tiered_loss_train(const RowsArgs& args, float weight, float* nll, float* lse, void* grad_l2,
                              float* grad_scales, cudaStream_t stream);

// grad_tables[seg_rows[s]] = sum over members m of segment s, in order, of scale[p] * dz[p / k] (p = members[m],
// a flat index n * k + q of prior_rows); segments: [seg_start[s], seg_start[s+1]) for s < segments. Rows of
// grad_tables that no segment names are left as they are (zeros). Deterministic: no atomics.
cudaError_t prior_table_grad(const float* dz, int64_t v, int64_t k, const int64_t* members, const int64_t* seg_start,
                             const int64_t* seg_rows, int64_t segments, const float* scales, float* grad_tables,
                             cudaStream_t stream);

// l2 [N, V] fp32 += the sparse logits in CSR form (row n: entries ptr[n] .. ptr[n+1]-1 of cols / vals, in order).
// Row pointers or columns out of range raise flag_bit and turn the row's first logit into NaN.
cudaError_t add_sparse_logits(float* l2, int64_t n, int64_t v, const int64_t* ptr, const int64_t* cols,
                              const float* vals, int64_t nnz, int* flags, int flag_bit, cudaStream_t stream);

}  // namespace golf::kernels
