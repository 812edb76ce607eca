// golf::target_bytes on CUDA: a memory-bound gather, one thread per target (grid-stride).
// Reference: golf.ops.ref_target_bytes; tests/cuda/test_target_bytes_cuda.py holds the two equal.
#include "target_bytes.h"

#include <algorithm>

namespace golf::kernels {
namespace {

template <typename Id>
__global__ void target_bytes_kernel(const Id* __restrict__ prev, const Id* __restrict__ target, int64_t n,
                                    const int32_t* __restrict__ base_bytes, const bool* __restrict__ leading_space,
                                    const bool* __restrict__ boundary, int64_t vocab, int32_t* __restrict__ out,
                                    int32_t* __restrict__ bad_flag) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
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
  constexpr int kThreads = 256;
  // Enough blocks to fill an H100 (132 SMs x 8 resident blocks); the grid-stride loop covers the rest.
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 132 * 8);
  target_bytes_kernel<Id><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      prev, target, n, base_bytes, leading_space, boundary, vocab, out, bad_flag);
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
