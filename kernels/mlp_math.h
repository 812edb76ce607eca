// The elementwise math of the LeakyReLU(s)² MLP, written once: csrc/cpu/mlp.cpp applies it after its matmuls,
// kernels/mlp_fwd.cu and kernels/mlp_bwd.cu in their GEMM epilogues. Reference: golf.ops.ref_leaky_relu2_mlp.
//
//   act(p)  = leaky(p)²  with leaky(p) = p > 0 ? p : s·p          (s = 0.5 in the records; s = 0: relu²)
//   act'(p) = p > 0 ? 2·p : (2·s·s)·p                             (2·s·s = 0.5 exactly for s = 0.5)
// p is the up-projection's fp32 accumulator in the forward (post = act(acc), pre = acc rounded to the storage
// dtype) and the stored pre in the backward (dpre = (g·W2) ⊙ act'(pre)). Both sides compile without FMA
// contraction (-ffp-contract=off, --fmad=false), so each product rounds once, alike.
#pragma once

#include "host_device.h"

namespace golf::math {

GOLF_HOST_DEVICE float leaky_relu2(float p, float slope) {
  const float y = p > 0.0f ? p : slope * p;
  return y * y;
}

GOLF_HOST_DEVICE float leaky_relu2_grad(float p, float slope) {
  const float negative = 2.0f * slope * slope;
  return p > 0.0f ? 2.0f * p : negative * p;
}

// d loss / d pre of one element, given d loss / d post (the down-projection's input gradient).
GOLF_HOST_DEVICE float leaky_relu2_backward(float grad_post, float p, float slope) {
  return grad_post * leaky_relu2_grad(p, slope);
}

}  // namespace golf::math
