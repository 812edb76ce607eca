// CUDA registrations of the quantisation ops: golf::hessian_accumulate (fp32 cuBLAS, TF32 off), golf::gptq_quantize
// (gptq_pipeline's steps on the GPU, TF32 off, with kernels/gptq.cu's column loop), golf::pack_int6 and
// golf::unpack_int6 (kernels/gptq.cu).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "checks.h"
#include "gptq.h"
#include "gptq_pipeline.h"
#include "launch_plans.h"
#include "ops.h"

namespace golf::cuda {
namespace {

// fp32 GEMMs in full fp32 while it lives (GPTQ's Hessians and updates; torch.backends.cuda.matmul.allow_tf32
// may be on for training).
struct NoTF32 {
  const bool was = at::globalContext().allowTF32CuBLAS();
  NoTF32() { at::globalContext().setAllowTF32CuBLAS(false); }
  ~NoTF32() { at::globalContext().setAllowTF32CuBLAS(was); }
};

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

// The lowest flat index a kernel recorded in `first_bad` (preset to INT64_MAX), or -1.
int64_t first_bad_index(const at::Tensor& first_bad) {
  const int64_t i = first_bad.item<int64_t>();
  return i == std::numeric_limits<int64_t>::max() ? -1 : i;
}

// The column loop keeps a block's columns of 64 rows in shared memory (launch_plans.h: gptq_plan): a block the device
// cannot hold is refused before any work.
void check_block_fits(const at::Tensor& W, int64_t block) {
  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, W.device().index()));
  const int64_t need = plans::gptq_plan(1, std::min(block, W.size(1))).smem_bytes;
  TORCH_CHECK(need <= limit, "golf::gptq_quantize: block ", block, " needs ", need, " bytes of shared memory (",
              plans::kGptqRows, " rows of its columns), more than the ", limit, " this device allows a block: use a "
              "block of at most ", limit / (sizeof(float) * plans::kGptqRows) - 1, " columns");
}

}  // namespace

void hessian_accumulate(const at::Tensor& H, const at::Tensor& X) {
  check_hessian_accumulate_args(H, X);
  const c10::cuda::CUDAGuard guard(H.device());
  const NoTF32 exact;
  hessian_accumulate_chunks(H, X);
}

// The column loop: kernels/gptq.cu, a thread per row.
void columns(at::Tensor& Ws, at::Tensor& Q, at::Tensor& err, at::Tensor& loss, const at::Tensor& S,
             const at::Tensor& U, int64_t i1, int64_t i2, float qmax) {
  check_launch(kernels::gptq_columns(Ws.data_ptr<float>(), Q.data_ptr<float>(), err.data_ptr<float>(),
                                     loss.data_ptr<float>(), S.data_ptr<float>(), U.data_ptr<float>(), Ws.size(0),
                                     Ws.size(1), i1, i2, qmax, c10::cuda::getCurrentCUDAStream().stream()),
               "golf::gptq_quantize");
}

std::tuple<at::Tensor, at::Tensor> gptq_quantize(const at::Tensor& W, const at::Tensor& H, int64_t bits, int64_t block,
                                                 bool act_order, double damp, const at::Tensor& clip_candidates) {
  check_gptq_quantize_args(W, H, bits, block, damp, clip_candidates);
  const c10::cuda::CUDAGuard guard(W.device());
  check_block_fits(W, block);
  const NoTF32 exact;
  const auto scales = [&](const at::Tensor& Wd, float qmax) { return quantile_scales(Wd, clip_candidates, qmax); };
  return gptq_pipeline(W, H, bits, block, act_order, damp, scales, columns);
}

std::tuple<at::Tensor, at::Tensor> gptq_quantize_scaled(const at::Tensor& W, const at::Tensor& H,
                                                        const at::Tensor& scales, int64_t bits, int64_t block,
                                                        bool act_order, double damp) {
  check_gptq_quantize_scaled_args(W, H, scales, bits, block, damp);
  const c10::cuda::CUDAGuard guard(W.device());
  check_block_fits(W, block);
  const NoTF32 exact;
  return gptq_pipeline(W, H, bits, block, act_order, damp, [&](const at::Tensor&, float) { return scales; }, columns);
}

at::Tensor pack_int6(const at::Tensor& q_in) {
  check_pack_int6_args(q_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const auto q = q_in.contiguous().view(-1);
  const int64_t n = q.numel();
  auto out = at::empty({(n + 3) / 4 * 3}, q.options().dtype(at::kByte));
  auto bad = at::full({1}, std::numeric_limits<int64_t>::max(), q.options().dtype(at::kLong));
  check_launch(kernels::pack_int6(q.data_ptr<int8_t>(), n, out.data_ptr<uint8_t>(), bad.data_ptr<int64_t>(),
                                  c10::cuda::getCurrentCUDAStream().stream()),
               "golf::pack_int6");
  const int64_t b = first_bad_index(bad);  // one sync: the export packs once
  TORCH_CHECK(b < 0, "golf::pack_int6: value ", q[b].item<int>(), " at flat index ", b, " is outside [-31, 31]");
  return out;
}

at::Tensor unpack_int6(const at::Tensor& packed_in, int64_t numel) {
  check_unpack_int6_args(packed_in, numel);
  const c10::cuda::CUDAGuard guard(packed_in.device());
  const auto packed = packed_in.contiguous();
  auto out = at::empty({numel}, packed.options().dtype(at::kChar));
  auto bad = at::full({1}, std::numeric_limits<int64_t>::max(), packed.options().dtype(at::kLong));
  check_launch(kernels::unpack_int6(packed.data_ptr<uint8_t>(), numel, out.data_ptr<int8_t>(),
                                    bad.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream().stream()),
               "golf::unpack_int6");
  const int64_t b = first_bad_index(bad);
  TORCH_CHECK(b < 0, "golf::unpack_int6: code 63 (value 32, outside [-31, 31]) at flat index ", b,
              ": the packed bytes are corrupt");
  return out;
}

}  // namespace golf::cuda

TORCH_LIBRARY_IMPL(golf, CUDA, m) {
  m.impl("hessian_accumulate", &golf::cuda::hessian_accumulate);
  m.impl("gptq_quantize", &golf::cuda::gptq_quantize);
  m.impl("gptq_quantize_scaled", &golf::cuda::gptq_quantize_scaled);
  m.impl("pack_int6", &golf::cuda::pack_int6);
  m.impl("unpack_int6", &golf::cuda::unpack_int6);
}
