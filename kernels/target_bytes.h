// Launchers for kernels/target_bytes.cu. Torch-free: raw pointers and a CUDA stream.
#pragma once

#include <cuda_runtime_api.h>
#include <cstdint>

namespace golf::kernels {

// out[i] = base_bytes[target[i]] + (leading_space[target[i]] && !boundary[prev[i]]) for i < n.
// An id outside [0, vocab) writes 0 there and sets *bad_flag to 1 (the caller checks it).
cudaError_t target_bytes(const int64_t* prev, const int64_t* target, int64_t n, const int32_t* base_bytes,
                         const bool* leading_space, const bool* boundary, int64_t vocab, int32_t* out,
                         int32_t* bad_flag, cudaStream_t stream);
cudaError_t target_bytes(const int32_t* prev, const int32_t* target, int64_t n, const int32_t* base_bytes,
                         const bool* leading_space, const bool* boundary, int64_t vocab, int32_t* out,
                         int32_t* bad_flag, cudaStream_t stream);

}  // namespace golf::kernels
