// What the two fused MLP GEMMs (kernels/mlp_fwd.cu, kernels/mlp_bwd.cu) share: the CUTLASS headers, their tile and
// schedule, and the launcher's steps (argument checks, CUTLASS's verdict, the facts of a kernel). Include it first.
//
// Tile 128x128x64, cluster 1x1x1, KernelTmaWarpSpecializedPingpong, persistent, for both: with k = 512 a tile's
// mainloop is only 8 k-blocks while its epilogue streams two bf16 [m, n] tensors, so the GEMM is about as much
// memory traffic as math; ping-pong gives each of the two consumer warp groups a whole tile and lets one run its
// epilogue while the other runs its MMAs. A 128x128 fp32 accumulator is 128 registers a thread, within the 232 a
// ping-pong consumer gets. The weight (n·k bf16, 2 MiB) stays in L2, so a cluster's TMA multicast would save little.
#pragma once

// CUTLASS's device-side asserts, live without NDEBUG, become calls to __assertfail inside the kernel: ptxas then
// serialises the WGMMA pipeline across the call and spills. The kernels are built in their release form whatever
// the build type (before any header, so every <cassert> sees it).
#ifndef NDEBUG
#define NDEBUG
#endif

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/numeric_types.h>
#include <cutlass/util/packed_stride.hpp>

#include <climits>
#include <cstdint>

#include "common.cuh"
#include "mlp.h"
#include "mlp_math.h"

namespace golf::kernels::mlp_gemm {

using Bf16 = cutlass::bfloat16_t;
constexpr int kAlign = 128 / cutlass::sizeof_bits<Bf16>::value;  // 8 elements: TMA's 16 bytes
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

using TileShape = cute::Shape<cute::_128, cute::_128, cute::_64>;
using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;
using EpilogueTileType = cutlass::epilogue::collective::EpilogueTileAuto;

// The GEMM of bf16 A [m, k] row-major and B (LayoutB: ColumnMajor for a stored [n, k], RowMajor for a stored
// [k, n]), fp32 accumulation, no C, D bf16 [m, n] row-major through the epilogue fusion `Fusion`.
template <class LayoutB, class Fusion>
struct GemmOf {
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutD = cutlass::layout::RowMajor;
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape, EpilogueTileType, float, float,
      void, LayoutD, kAlign,  // no C
      Bf16, LayoutD, kAlign, EpilogueSchedule, Fusion>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Bf16, LayoutA, kAlign, Bf16, LayoutB, kAlign, float,
      TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue, cutlass::gemm::PersistentScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  static_assert(static_cast<int>(Kernel::SharedStorageSize) <= 227 * 1024, "shared memory over an H100 block's");
};

// The problem's dimensions fit CUTLASS's int problem shape, each positive.
inline bool fits_int(int64_t m, int64_t n, int64_t k) {
  return m > 0 && n > 0 && k > 0 && m <= INT_MAX && n <= INT_MAX && k <= INT_MAX;
}

inline bool aligned16(const void* p) { return p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The device and SM count the persistent tile scheduler sizes its grid by (the current device's). Without a
// device (host-only checks) both stay 0 and no error is left behind.
inline cutlass::KernelHardwareInfo current_hw_info() {
  cutlass::KernelHardwareInfo hw_info;
  if (cudaGetDevice(&hw_info.device_id) != cudaSuccess) {
    cudaGetLastError();
    hw_info.device_id = 0;
    return hw_info;
  }
  hw_info.sm_count = sm_count();
  return hw_info;
}

// A CUTLASS refusal or failure as the CUDA error the launcher returns.
inline cudaError_t to_cuda_error(cutlass::Status status) {
  switch (status) {
    case cutlass::Status::kSuccess:
      return cudaSuccess;
    case cutlass::Status::kErrorMisalignedOperand:
    case cutlass::Status::kErrorInvalidDataType:
    case cutlass::Status::kErrorInvalidLayout:
    case cutlass::Status::kErrorInvalidProblem:
    case cutlass::Status::kErrorWorkspaceNull:
      return cudaErrorInvalidValue;
    default:  // kInvalid, kErrorNotSupported, kErrorArchMismatch, kErrorInternal (a failed launch), ...
      return cudaErrorNotSupported;
  }
}

template <class Gemm>
GemmFacts facts() {
  using Kernel = typename Gemm::GemmKernel;
  return GemmFacts{cute::size<0>(TileShape{}),
                   cute::size<1>(TileShape{}),
                   cute::size<2>(TileShape{}),
                   cute::size<0>(ClusterShape{}),
                   cute::size<1>(ClusterShape{}),
                   static_cast<int>(Kernel::MaxThreadsPerBlock),
                   static_cast<int64_t>(Kernel::SharedStorageSize)};
}

// CUTLASS's verdict on a problem, from arguments made without pointers or hardware (neither plays a part in it:
// shapes and strides, TMA's 16-byte rows), so it asks no device; the launcher checks the real pointers.
template <class Gemm>
bool can_implement(const typename Gemm::Arguments& args) {
  return Gemm::can_implement(args) == cutlass::Status::kSuccess;
}

// Verdict, initialisation (TMA descriptors, the scheduler's grid) and launch on `stream`.
template <class Gemm>
cudaError_t run(const typename Gemm::Arguments& args, void* workspace, cudaStream_t stream) {
  if (!can_implement<Gemm>(args)) return cudaErrorNotSupported;
  Gemm gemm;
  cutlass::Status status = gemm.initialize(args, workspace, stream);
  if (status == cutlass::Status::kSuccess) status = gemm.run(stream);
  return to_cuda_error(status);
}

}  // namespace golf::kernels::mlp_gemm
