// One declaration per golf op: the schema lives in bindings.cpp, the CPU kernels in cpu/,
// the CUDA registrations in cuda/ (device code in ../kernels, torch-free).
#pragma once

#include <ATen/core/Tensor.h>

namespace golf {

// Shape/dtype/device checks shared by every implementation of target_bytes.
// prev, target: same shape, int32 or int64, same dtype; tables: 1-D of one length V,
// base_bytes int32, leading_space and boundary bool; everything on target's device.
void check_target_bytes_args(const at::Tensor& prev, const at::Tensor& target, const at::Tensor& base_bytes,
                             const at::Tensor& leading_space, const at::Tensor& boundary);

namespace cpu {
// int32, shaped like target: base_bytes[target] + (leading_space[target] && !boundary[prev]).
at::Tensor target_bytes(const at::Tensor& prev, const at::Tensor& target, const at::Tensor& base_bytes,
                        const at::Tensor& leading_space, const at::Tensor& boundary);
}  // namespace cpu

#ifdef GOLF_WITH_CUDA
namespace cuda {
at::Tensor target_bytes(const at::Tensor& prev, const at::Tensor& target, const at::Tensor& base_bytes,
                        const at::Tensor& leading_space, const at::Tensor& boundary);
}  // namespace cuda
#endif

}  // namespace golf
