// The elementwise steps of golf::leaky_relu2_mlp where its GEMMs run unfused (cuBLAS): a dtype other than bf16, a
// shape or a device the CUTLASS kernels do not take. One thread per element (grid-stride); the math is
// mlp_math.h's, as in the fused epilogues and the CPU op.
#include "common.cuh"
#include "mlp.h"
#include "mlp_math.h"

namespace golf::kernels {
namespace {

template <typename T>
__global__ void act_forward_kernel(plans::StridePlan p, const float* __restrict__ acc, int64_t n, float slope,
                                   T* __restrict__ pre, T* __restrict__ post) {
  for (int64_t i = p.first(blockIdx.x, threadIdx.x); i < n; i += p.step()) {
    const float a = acc[i];
    pre[i] = from_float<T>(a);
    post[i] = from_float<T>(math::leaky_relu2(a, slope));
  }
}

template <typename T>
__global__ void act_backward_kernel(plans::StridePlan p, const float* __restrict__ grad_post,
                                    const T* __restrict__ pre, int64_t n, float slope, T* __restrict__ dpre) {
  for (int64_t i = p.first(blockIdx.x, threadIdx.x); i < n; i += p.step()) {
    dpre[i] = from_float<T>(math::leaky_relu2_backward(grad_post[i], to_float(pre[i]), slope));
  }
}

template <typename T>
cudaError_t forward(const float* acc, int64_t n, float slope, void* pre, void* post, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const plans::StridePlan p = plans::stride_plan(n, plans::kStrideBlock, sm_count());
  act_forward_kernel<T><<<static_cast<unsigned>(p.grid), p.block, 0, stream>>>(
      p, acc, n, slope, static_cast<T*>(pre), static_cast<T*>(post));
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward(const float* grad_post, const void* pre, int64_t n, float slope, void* dpre,
                     cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const plans::StridePlan p = plans::stride_plan(n, plans::kStrideBlock, sm_count());
  act_backward_kernel<T><<<static_cast<unsigned>(p.grid), p.block, 0, stream>>>(
      p, grad_post, static_cast<const T*>(pre), n, slope, static_cast<T*>(dpre));
  return cudaGetLastError();
}

}  // namespace

cudaError_t mlp_act_forward(const float* acc, int64_t n, float slope, Dtype dtype, void* pre, void* post,
                            cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32: return forward<float>(acc, n, slope, pre, post, stream);
    case Dtype::kBFloat16: return forward<__nv_bfloat16>(acc, n, slope, pre, post, stream);
    case Dtype::kFloat16: return forward<__half>(acc, n, slope, pre, post, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t mlp_act_backward(const float* grad_post, const void* pre, int64_t n, float slope, Dtype dtype,
                             void* dpre, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32: return backward<float>(grad_post, pre, n, slope, dpre, stream);
    case Dtype::kBFloat16: return backward<__nv_bfloat16>(grad_post, pre, n, slope, dpre, stream);
    case Dtype::kFloat16: return backward<__half>(grad_post, pre, n, slope, dpre, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace golf::kernels
