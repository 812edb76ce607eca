// Launchers for kernels/gptq.cu (golf::gptq_quantize's column loop, golf::pack_int6, golf::unpack_int6).
// Torch-free: raw pointers and a CUDA stream. The arithmetic: gptq_math.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace golf::kernels {

// Columns [i1, i2) of rows stacked [rows, cols] fp32 (ws, q; err [rows, i2 - i1]; loss, scales [rows]; u: the
// [cols, cols] upper Cholesky factor): gptq_math.h's step, a thread per row, the row's block slice in shared
// memory. A row's codes are the CPU op's bit for bit.
cudaError_t gptq_columns(float* ws, float* q, float* err, float* loss, const float* scales, const float* u,
                         int64_t rows, int64_t cols, int64_t i1, int64_t i2, float qmax, cudaStream_t stream);

// int8 values (n) -> uint8 [ceil(n/4) * 3]; *first_bad (int64, preset by the caller to INT64_MAX) gets the lowest
// flat index of a value outside [-31, 31] (the bytes are written regardless).
cudaError_t pack_int6(const int8_t* values, int64_t n, uint8_t* packed, int64_t* first_bad, cudaStream_t stream);

// The inverse; *first_bad gets the lowest flat index holding code 63 (corrupt bytes).
cudaError_t unpack_int6(const uint8_t* packed, int64_t n, int8_t* values, int64_t* first_bad, cudaStream_t stream);

}  // namespace golf::kernels
