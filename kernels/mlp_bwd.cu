// The LeakyReLU(s)² MLP's backward through the down-projection and the activation as one CUTLASS 3.x GEMM for
// sm_90a (kernels/mlp.h):
//
//   acc  = g [m, k] · w2 [k, n]                              fp32 accumulation of bf16 operands (TMA, WGMMA)
//   dpre = bf16(leaky_relu2_backward(acc, float(pre), s))    D, row-major [m, n]  (mlp_math.h, the CPU op's math)
//
// with pre [m, n] (bf16, row-major: the forward's aux output) loaded by the epilogue. Operands: g is row-major
// (K-major A); w2 is the down-projection's weight as stored, [k, n] row-major, i.e. an N-major B (CUTLASS
// LayoutB = RowMajor; bf16 WGMMA reads MN-major B from shared memory, so no transpose is made). No C source.
//
// Design (the tile and schedule: mlp_gemm.cuh; the epilogue streams a bf16 tensor in, pre, and one out, dpre):
// - Epilogue: TMA warp-specialised, EpilogueTileAuto, CUTLASS's LinCombDeEltAct fusion with a derivative functor:
//       Sm90EVT<Sm90Compute<LeakyReLU2Backward>,             D = bf16(act'(dY, Z))
//         Sm90LinearCombination(alpha = 1, beta = 0, C void),   dY = 1·acc (exact; the C term is compiled out)
//         Sm90AuxLoad<bf16, RowMajor>>                          Z = pre, TMA-loaded by the epilogue's load warp
//   The functor receives (dY, float(pre), slope) and calls mlp_math.h's leaky_relu2_backward(dY, pre, slope).
// - The slope reaches the kernel as the fusion's `activation` arguments (LeakyReLU2Backward::Arguments).
// Reference: golf.ops.ref_leaky_relu2_mlp (its backward); CPU: csrc/cpu/mlp.cpp.

#include "mlp_gemm.cuh"

namespace golf::kernels {
namespace {

// dpre = grad_post · act'(pre): a CUTLASS-style derivative functor as LinCombDeEltAct expects it (Sm90Compute
// instantiates it on Array<float, N>, passes dY then the aux input converted to float, and the scalar version's
// Arguments last).
template <class T>
struct LeakyReLU2Backward {
  struct Arguments {
    float slope = 0.5f;
  };
  CUTLASS_HOST_DEVICE T operator()(T const& grad_post, T const& pre, Arguments const& args = Arguments()) const {
    return T(golf::math::leaky_relu2_backward(static_cast<float>(grad_post), static_cast<float>(pre), args.slope));
  }
};

template <class T, int N>
struct LeakyReLU2Backward<cutlass::Array<T, N>> {
  using Arguments = typename LeakyReLU2Backward<T>::Arguments;
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& grad_post,
                                                      cutlass::Array<T, N> const& pre,
                                                      Arguments const& args = Arguments()) const {
    cutlass::Array<T, N> y;
    LeakyReLU2Backward<T> grad;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) y[i] = grad(grad_post[i], pre[i], args);
    return y;
  }
};

using namespace cute;
using namespace mlp_gemm;

using LayoutAux = cutlass::layout::RowMajor;  // pre [m, n]

// Z = pre (aux in), dY = 1·acc + 0·C with no C (ElementSource void drops the C term), D = act'(dY, Z).
using FusionOp = cutlass::epilogue::fusion::LinCombDeEltAct<LayoutAux, LeakyReLU2Backward, Bf16, float,
                                                            /*ElementAux=*/Bf16, /*ElementSource=*/void,
                                                            /*ElementScalar=*/float, kAlign, kRound>;

// w2 stored [k, n] row-major: an N-major B (RowMajor); bf16 WGMMA reads it from shared memory as it is.
using GemmTypes = GemmOf<cutlass::layout::RowMajor, FusionOp>;
using Gemm = GemmTypes::Gemm;

typename Gemm::Arguments make_arguments(const void* g, const void* w2, const void* pre, void* dpre, int64_t m,
                                        int64_t n, int64_t k, float slope,
                                        const cutlass::KernelHardwareInfo& hw_info) {
  const int M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
  using StrideA = typename Gemm::GemmKernel::StrideA;
  using StrideB = typename Gemm::GemmKernel::StrideB;
  using StrideD = typename Gemm::GemmKernel::StrideD;
  using EpilogueArguments = typename GemmTypes::CollectiveEpilogue::Arguments;
  using StrideAux = decltype(EpilogueArguments{}.thread.dAux);
  const StrideA stride_a = cutlass::make_cute_packed_stride(StrideA{}, make_shape(M, K, 1));    // (k, 1, m·k)
  const StrideB stride_b = cutlass::make_cute_packed_stride(StrideB{}, make_shape(N, K, 1));    // (1, n, n·k)
  const StrideD stride_d = cutlass::make_cute_packed_stride(StrideD{}, make_shape(M, N, 1));    // (n, 1, m·n)
  const StrideAux stride_aux = cutlass::make_cute_packed_stride(StrideAux{}, make_shape(M, N, 1));

  EpilogueArguments epilogue{};
  epilogue.thread.alpha = 1.0f;
  epilogue.thread.beta = 0.0f;
  epilogue.thread.activation.slope = slope;
  epilogue.thread.aux_ptr = static_cast<const Bf16*>(pre);
  epilogue.thread.dAux = stride_aux;
  epilogue.ptr_C = nullptr;
  epilogue.dC = stride_d;
  epilogue.ptr_D = static_cast<Bf16*>(dpre);
  epilogue.dD = stride_d;

  return typename Gemm::Arguments{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {M, N, K, 1},
      {static_cast<const Bf16*>(g), stride_a, static_cast<const Bf16*>(w2), stride_b},
      epilogue,
      hw_info,
  };
}

}  // namespace

GemmFacts mlp_down_grad_facts() { return facts<Gemm>(); }

bool mlp_down_grad_can_implement(int64_t m, int64_t n, int64_t k) {
  return fits_int(m, n, k) &&
         can_implement<Gemm>(make_arguments(nullptr, nullptr, nullptr, nullptr, m, n, k, 0.5f, {}));
}

size_t mlp_down_grad_workspace(int64_t m, int64_t n, int64_t k) {
  if (!fits_int(m, n, k)) return 0;
  return Gemm::get_workspace_size(make_arguments(nullptr, nullptr, nullptr, nullptr, m, n, k, 0.5f,
                                                 current_hw_info()));
}

cudaError_t mlp_down_grad(const void* g, const void* w2, const void* pre, void* dpre, int64_t m, int64_t n,
                          int64_t k, float slope, void* workspace, cudaStream_t stream) {
  if (!fits_int(m, n, k)) return cudaErrorInvalidValue;
  // TMA descriptors need 16-byte aligned bases (CUTLASS only prints a failed one); a null pre would silently read
  // as zeros (AuxLoad's null default).
  if (!aligned16(g) || !aligned16(w2) || !aligned16(pre) || !aligned16(dpre)) return cudaErrorInvalidValue;
  return run<Gemm>(make_arguments(g, w2, pre, dpre, m, n, k, slope, current_hw_info()), workspace, stream);
}

}  // namespace golf::kernels
