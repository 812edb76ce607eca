// Launchers for the LeakyReLU(s)² MLP's two fused GEMMs (golf::leaky_relu2_mlp and its backward), CUTLASS 3.x
// kernels for sm_90a (TMA + WGMMA, warp-specialised, persistent), bf16 operands, fp32 accumulation:
//   kernels/mlp_fwd.cu  up-projection, its epilogue writes pre and post = act(acc)            (mlp_math.h)
//   kernels/mlp_bwd.cu  the down-projection's input gradient, its epilogue (an epilogue visitor tree) loads pre
//                       and writes dpre = acc ⊙ act'(pre)
// Torch-free and CUTLASS-free for its callers: raw pointers (bf16, row-major, 16-byte aligned) and a CUDA stream.
// Built only with CUTLASS headers (CMake defines GOLF_WITH_CUTLASS_MLP); the op runs unfused without them: its
// GEMMs by cuBLAS and the elementwise steps by kernels/mlp_act.cu (any dtype, always built).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "dtype.h"

namespace golf::kernels {

// --- the unfused path's elementwise steps (kernels/mlp_act.cu) -----------------------------------------------
// pre[i] = acc[i] and post[i] = leaky_relu2(acc[i], slope), both stored in `dtype`; acc fp32, n elements.
cudaError_t mlp_act_forward(const float* acc, int64_t n, float slope, Dtype dtype, void* pre, void* post,
                            cudaStream_t stream);
// dpre[i] = leaky_relu2_backward(grad_post[i], pre[i], slope) in `dtype`; grad_post fp32, pre in `dtype`.
cudaError_t mlp_act_backward(const float* grad_post, const void* pre, int64_t n, float slope, Dtype dtype,
                             void* dpre, cudaStream_t stream);

// --- the fused GEMMs (kernels/mlp_fwd.cu, kernels/mlp_bwd.cu; sm_90a, bf16) ------------------------------------

// What a GPU would tell about a kernel's launch, known on the host: the tile, the cluster, the threads of a block
// and its dynamic shared memory.
struct GemmFacts {
  int tile_m, tile_n, tile_k;
  int cluster_m, cluster_n;
  int threads;
  int64_t smem_bytes;
};

// True when this build holds sm_90a code for the fused GEMMs and `device` is compute capability 9.0 (an sm_90a
// image runs on nothing else).
bool mlp_fused_supported(int device);

// --- forward: pre, post [m, n] = x [m, k] · w1[n, k]ᵀ, act ----------------------------------------------------
GemmFacts mlp_up_facts();
// CUTLASS's own verdict on the problem (host only, no device): false means the caller must run it unfused.
bool mlp_up_can_implement(int64_t m, int64_t n, int64_t k);
size_t mlp_up_workspace(int64_t m, int64_t n, int64_t k);
// pre = bf16(acc), post = bf16(leaky_relu2(acc, slope)) with acc the fp32 accumulator of x · w1ᵀ.
cudaError_t mlp_up(const void* x, const void* w1, void* pre, void* post, int64_t m, int64_t n, int64_t k,
                   float slope, void* workspace, cudaStream_t stream);

// --- backward: dpre [m, n] = (g [m, k] · w2 [k, n]) ⊙ act'(pre [m, n]) -----------------------------------------
GemmFacts mlp_down_grad_facts();
bool mlp_down_grad_can_implement(int64_t m, int64_t n, int64_t k);
size_t mlp_down_grad_workspace(int64_t m, int64_t n, int64_t k);
// g: the gradient of the MLP's output [m, k]; w2: the down-projection's weight [k, n] (row-major, as stored);
// dpre = bf16(leaky_relu2_backward(acc, float(pre), slope)) with acc the fp32 accumulator of g · w2.
cudaError_t mlp_down_grad(const void* g, const void* w2, const void* pre, void* dpre, int64_t m, int64_t n,
                          int64_t k, float slope, void* workspace, cudaStream_t stream);

}  // namespace golf::kernels
