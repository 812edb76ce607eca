// The storage dtypes the torch-free launchers take (their callers map torch's dtypes onto these).
#pragma once

namespace golf::kernels {

enum class Dtype { kFloat32, kBFloat16, kFloat16 };

}  // namespace golf::kernels
