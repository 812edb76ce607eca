// The device-side index-error flag of the CUDA ops (kernels/common.cuh's IndexFlag bits), and where a call checks
// its indices (GOLF_CHECK_INDICES=1: on the host, before the launch, naming the first bad one; otherwise in the
// kernel, through the flag).
#pragma once

#include <c10/core/Device.h>

#include "checks.h"

namespace golf::cuda {

// The flag of `device` (an int32 in device memory, zero until a kernel meets a bad index).
int* device_flags(const c10::Device& device);

// The flag's bits since the last call, then 0 again (one host sync).
int take_index_errors(int device_index);

IndexCheck index_check_mode();

}  // namespace golf::cuda
