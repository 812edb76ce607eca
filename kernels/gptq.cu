// GPTQ's column loop and the int6 packing on CUDA; the arithmetic is gptq_math.h's, which the CPU ops share.
//
// The column loop: once U is known the stacked rows never interact, so a thread owns a row. Its slice of the block
// (up to `block` columns) lives in shared memory (launch_plans.h: gptq_plan, rows padded by one float:
// neighbouring threads' rows fall in different banks); U's block is read from global memory, where every thread of
// a warp reads the same element (one broadcast). The lazy update of the later columns is a GEMM on the host side
// (gptq_pipeline).
// Reference: golf.ops.ref_gptq_quantize; CPU: csrc/cpu/gptq.cpp.
#include "gptq.h"

#include <climits>

#include "common.cuh"
#include "gptq_math.h"

namespace golf::kernels {
namespace {

namespace gm = golf::math;

__global__ void __launch_bounds__(plans::kGptqRows) columns_kernel(plans::GptqPlan p, float* ws, float* q, float* err,
                                                                    float* loss, const float* scales, const float* u,
                                                                    int64_t rows, int64_t cols, int64_t i1, int nb,
                                                                    float qmax) {
  extern __shared__ float slab[];  // [kGptqRows][p.pitch]
  const int64_t r = plans::gptq_row(p, blockIdx.x, threadIdx.x);
  if (r >= rows) return;
  float* w = slab + plans::gptq_slab_index(p, threadIdx.x, 0);
  for (int j = 0; j < nb; ++j) w[j] = ws[r * cols + i1 + j];
  const float s = scales[r];
  float l = loss[r];
  for (int j = 0; j < nb; ++j) {
    const float* uj = u + (i1 + j) * cols + i1;
    const float code = gm::gptq_code(w[j], s, qmax);
    const float e = gm::gptq_error(w[j], code, s, uj[j]);
    q[r * cols + i1 + j] = code;
    err[r * nb + j] = e;
    l = l + e * e;
    for (int k = j + 1; k < nb; ++k) w[k] = gm::gptq_update(w[k], e, uj[k]);
  }
  loss[r] = l;
  for (int j = 0; j < nb; ++j) ws[r * cols + i1 + j] = w[j];
}

__device__ __forceinline__ void record_first(int64_t* first_bad, int64_t i) {
  atomicMin(reinterpret_cast<unsigned long long*>(first_bad), static_cast<unsigned long long>(i));
}

__global__ void pack_kernel(plans::StridePlan p, const int8_t* values, int64_t n, uint8_t* packed,
                            int64_t* first_bad) {
  const int64_t groups = (n + 3) / 4;
  for (int64_t g = p.first(blockIdx.x, threadIdx.x); g < groups; g += p.step()) {
    int v[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * g + k;
      v[k] = i < n ? values[i] : 0;
      if (v[k] < -gm::kInt6Max || v[k] > gm::kInt6Max) record_first(first_bad, i);
    }
    const uint32_t word = gm::pack_int6_word(v[0], v[1], v[2], v[3]);
    packed[3 * g] = static_cast<uint8_t>(word);
    packed[3 * g + 1] = static_cast<uint8_t>(word >> 8);
    packed[3 * g + 2] = static_cast<uint8_t>(word >> 16);
  }
}

__global__ void unpack_kernel(plans::StridePlan p, const uint8_t* packed, int64_t n, int8_t* values,
                              int64_t* first_bad) {
  const int64_t groups = (n + 3) / 4;
  for (int64_t g = p.first(blockIdx.x, threadIdx.x); g < groups; g += p.step()) {
    const uint32_t word = packed[3 * g] | static_cast<uint32_t>(packed[3 * g + 1]) << 8 |
                          static_cast<uint32_t>(packed[3 * g + 2]) << 16;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * g + k;
      if (i >= n) break;
      const int code = gm::int6_code(word, k);
      if (code == gm::kInt6Bad) record_first(first_bad, i);
      values[i] = static_cast<int8_t>(code - gm::kInt6Max);
    }
  }
}

}  // namespace

cudaError_t gptq_columns(float* ws, float* q, float* err, float* loss, const float* scales, const float* u,
                         int64_t rows, int64_t cols, int64_t i1, int64_t i2, float qmax, cudaStream_t stream) {
  if (rows == 0 || i2 <= i1) return cudaSuccess;
  const int nb = static_cast<int>(i2 - i1);
  const plans::GptqPlan p = plans::gptq_plan(rows, nb);
  if (p.smem_bytes > plans::kDefaultSmemBytes) {  // beyond the default: ask for it (the block's columns of 64 rows)
    GOLF_CUDA_TRY(cudaFuncSetAttribute(columns_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(p.smem_bytes)));
  }
  columns_kernel<<<static_cast<unsigned>(p.grid), p.block, static_cast<size_t>(p.smem_bytes), stream>>>(
      p, ws, q, err, loss, scales, u, rows, cols, i1, nb, qmax);
  return cudaGetLastError();
}

cudaError_t pack_int6(const int8_t* values, int64_t n, uint8_t* packed, int64_t* first_bad, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const plans::StridePlan p = plans::stride_plan((n + 3) / 4, plans::kStrideBlock, sm_count());
  pack_kernel<<<static_cast<unsigned>(p.grid), p.block, 0, stream>>>(p, values, n, packed, first_bad);
  return cudaGetLastError();
}

cudaError_t unpack_int6(const uint8_t* packed, int64_t n, int8_t* values, int64_t* first_bad, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const plans::StridePlan p = plans::stride_plan((n + 3) / 4, plans::kStrideBlock, sm_count());
  unpack_kernel<<<static_cast<unsigned>(p.grid), p.block, 0, stream>>>(p, packed, n, values, first_bad);
  return cudaGetLastError();
}

}  // namespace golf::kernels
