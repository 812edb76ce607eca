// The per-element arithmetic of GPTQ and of the int6 packing, written once: csrc/cpu/gptq.cpp,
// csrc/cpu/pack_int6.cpp and kernels/gptq.cu include it. Reference: golf.ops.ref_gptq_quantize, ref_pack_int6.
//
// GPTQ's column step, for one (stacked) row with fp16-rounded scale s and the damped inverse Hessian's upper
// Cholesky factor U (golf.ops.ref_gptq_quantize, step 5):
//   q_j = clamp(round_half_even(w_j / s), -qmax, qmax);   err_j = (w_j - q_j s) / U_jj;   loss += err_j^2;
//   w_k = w_k - err_j U_jk for the block's later columns k.
// Both sides compile it without FMA contraction, so a row's codes inside a block are the same bits on CPU and GPU.
// The int6 code of q in [-31, 31] is u = q + 31; four codes fill a 24-bit little-endian word u0 | u1<<6 | u2<<12 |
// u3<<18; code 63 is never written (it marks corrupt bytes).
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace golf::math {

GOLF_HOST_DEVICE float round_half_even(float x) {
#if defined(__CUDA_ARCH__)
  return rintf(x);
#else
  return std::nearbyint(x);  // the default rounding mode: to nearest, ties to even
#endif
}

GOLF_HOST_DEVICE float gptq_code(float w, float scale, float qmax) {
  const float q = round_half_even(w / scale);
  return q < -qmax ? -qmax : (q > qmax ? qmax : q);
}

GOLF_HOST_DEVICE float gptq_error(float w, float q, float scale, float diagonal) { return (w - q * scale) / diagonal; }

GOLF_HOST_DEVICE float gptq_update(float w, float err, float u) { return w - err * u; }

constexpr int kInt6Max = 31;
constexpr int kInt6Bad = 63;  // the code no value maps to

// The 24-bit word of four values (each in [-31, 31]; outside values are the caller's error).
GOLF_HOST_DEVICE uint32_t pack_int6_word(int v0, int v1, int v2, int v3) {
  return static_cast<uint32_t>((v0 + kInt6Max) & 63) | static_cast<uint32_t>((v1 + kInt6Max) & 63) << 6 |
         static_cast<uint32_t>((v2 + kInt6Max) & 63) << 12 | static_cast<uint32_t>((v3 + kInt6Max) & 63) << 18;
}

// Code k (0..3) of a word; kInt6Bad means corrupt bytes.
GOLF_HOST_DEVICE int int6_code(uint32_t word, int k) { return static_cast<int>((word >> (6 * k)) & 63); }

}  // namespace golf::math
