// Bits of the device-side index flag (golf::cuda::take_index_errors, golf.ops.check_device_indices): which op's
// kernel met an index out of range. Shared by the kernels and the torch-side registrations.
#pragma once

namespace golf::kernels {

enum IndexFlag : int {
  kFlagTargetBytes = 1,
  kFlagTieredLoss = 2,
  kFlagTieredLossBackward = 4,
  kFlagScoreWindows = 8,
  kFlagTieredLossTrain = 16,
};

}  // namespace golf::kernels
