// What every kernels/*.cu shares: error checks, the device's multiprocessor count (for launch_plans.h), 8-wide
// loads of a row, warp reductions in the order of kernels/tiered_loss_math.h, and the device-side index-error flag.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "index_flag_bits.h"
#include "launch_plans.h"
#include "tiered_loss_math.h"

// Return the first CUDA error from a launcher (launchers hand cudaError_t back to their torch-side caller).
#define GOLF_CUDA_TRY(expr)                    \
  do {                                         \
    const cudaError_t golf_err_ = (expr);      \
    if (golf_err_ != cudaSuccess) return golf_err_; \
  } while (0)

namespace golf::kernels {

// The current device's streaming-multiprocessor count (asked once per device).
inline int sm_count() {
  static int cached[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return 132;
  if (cached[device] == 0) {
    int count = 0;
    if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count <= 0) return 132;
    cached[device] = count;
  }
  return cached[device];
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }

// Elements j0 .. j0+7 of a row as fp32 (0 past `v`). `vec`: the row's start and j0 are 16-byte aligned for T, so
// whole chunks move as 16-byte loads (one for 8 bf16/fp16, two for 8 fp32).
template <typename T>
__device__ __forceinline__ void load8(const T* row, int64_t j0, int64_t v, bool vec, float out[math::kVec]) {
  if (vec && j0 + math::kVec <= v) {
    if constexpr (sizeof(T) == 4) {
      const float4 a = *reinterpret_cast<const float4*>(row + j0);
      const float4 b = *reinterpret_cast<const float4*>(row + j0 + 4);
      out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
    } else {
      const uint4 raw = *reinterpret_cast<const uint4*>(row + j0);
      const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int u = 0; u < math::kVec; ++u) out[u] = to_float(h[u]);
    }
    return;
  }
#pragma unroll
  for (int u = 0; u < math::kVec; ++u) out[u] = j0 + u < v ? to_float(row[j0 + u]) : 0.0f;
}

// Elements j0 .. j0+7 (those below v) of a row, written from fp32; whole aligned chunks as 16-byte stores.
template <typename T>
__device__ __forceinline__ void store8(T* row, int64_t j0, int64_t v, bool vec, const float in[math::kVec]) {
  if (vec && j0 + math::kVec <= v) {
    if constexpr (sizeof(T) == 4) {
      *reinterpret_cast<float4*>(row + j0) = make_float4(in[0], in[1], in[2], in[3]);
      *reinterpret_cast<float4*>(row + j0 + 4) = make_float4(in[4], in[5], in[6], in[7]);
    } else {
      uint4 raw;
      T* h = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int u = 0; u < math::kVec; ++u) h[u] = from_float<T>(in[u]);
      *reinterpret_cast<uint4*>(row + j0) = raw;
    }
    return;
  }
#pragma unroll
  for (int u = 0; u < math::kVec; ++u) {
    if (j0 + u < v) row[j0 + u] = from_float<T>(in[u]);
  }
}

// Whether rows of v elements of T starting at `base` can move as 16-byte chunks.
template <typename T>
inline bool rows_aligned(const void* base, int64_t v) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && (v * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}

// Lane 0 of the warp ends with the halving tree of math::reduce_threads over the 32 lanes (each lane merges its
// value with lane ^ offset for offsets 16 .. 1).
__device__ __forceinline__ math::MaxSum warp_reduce(math::MaxSum x) {
#pragma unroll
  for (int offset = math::kWarp / 2; offset >= 1; offset /= 2) {
    const math::MaxSum other{__shfl_xor_sync(0xffffffffu, x.m, offset), __shfl_xor_sync(0xffffffffu, x.s, offset)};
    x = math::merge(x, other);
  }
  return x;
}

__device__ __forceinline__ float warp_reduce(float x) {
#pragma unroll
  for (int offset = math::kWarp / 2; offset >= 1; offset /= 2) x = x + __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ void flag_index_error(int* flags, int bit) {
  if (flags != nullptr) atomicOr(flags, bit);
}

}  // namespace golf::kernels
