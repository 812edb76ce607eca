// golf::target_bytes on CUDA: a memory-bound gather, one thread per target (grid-stride).
// Reference: golf.ops.ref_target_bytes; tests/cuda/test_target_bytes_cuda.py holds the two equal.
#include "target_bytes.h"

#include "common.cuh"

namespace golf::kernels {
namespace {

template <typename Id>
__global__ void target_bytes_kernel(plans::StridePlan p, const Id* __restrict__ prev, const Id* __restrict__ target,
                                    int64_t n, const int32_t* __restrict__ base_bytes,
                                    const bool* __restrict__ leading_space, const bool* __restrict__ boundary,
                                    int64_t vocab, int32_t* __restrict__ out, int32_t* __restrict__ bad_flag) {
  for (int64_t i = p.first(blockIdx.x, threadIdx.x); i < n; i += p.step()) {
    const int64_t x = prev[i], y = target[i];
    if (x < 0 || x >= vocab || y < 0 || y >= vocab) {
      out[i] = 0;
      *bad_flag = 1;
      continue;
    }
    out[i] = base_bytes[y] + static_cast<int32_t>(leading_space[y] && !boundary[x]);
  }
}

template <typename Id>
cudaError_t launch(const Id* prev, const Id* target, int64_t n, const int32_t* base_bytes, const bool* leading_space,
                   const bool* boundary, int64_t vocab, int32_t* out, int32_t* bad_flag, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const plans::StridePlan p = plans::stride_plan(n, plans::kStrideBlock, sm_count());
  target_bytes_kernel<Id><<<static_cast<unsigned>(p.grid), p.block, 0, stream>>>(
      p, prev, target, n, base_bytes, leading_space, boundary, vocab, out, bad_flag);
  return cudaGetLastError();
}

}  // namespace

cudaError_t target_bytes(const int64_t* prev, const int64_t* target, int64_t n, const int32_t* base_bytes,
                         const bool* leading_space, const bool* boundary, int64_t vocab, int32_t* out,
                         int32_t* bad_flag, cudaStream_t stream) {
  return launch(prev, target, n, base_bytes, leading_space, boundary, vocab, out, bad_flag, stream);
}

cudaError_t target_bytes(const int32_t* prev, const int32_t* target, int64_t n, const int32_t* base_bytes,
                         const bool* leading_space, const bool* boundary, int64_t vocab, int32_t* out,
                         int32_t* bad_flag, cudaStream_t stream) {
  return launch(prev, target, n, base_bytes, leading_space, boundary, vocab, out, bad_flag, stream);
}

}  // namespace golf::kernels
