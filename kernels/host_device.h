// What a header needs to be compiled by both g++ (csrc/cpu) and nvcc (kernels/): GOLF_HOST_DEVICE for inline
// functions both sides call, and bit casts between float and int32 (data movement, no arithmetic).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define GOLF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GOLF_HOST_DEVICE inline
#endif

namespace golf::math {

GOLF_HOST_DEVICE int32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(x);
#else
  int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
#endif
}

GOLF_HOST_DEVICE float bits_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float x;
  std::memcpy(&x, &i, sizeof x);
  return x;
#endif
}

}  // namespace golf::math
