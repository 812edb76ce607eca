// The LeakyReLU(s)² MLP's up-projection as one CUTLASS 3.x GEMM for sm_90a (kernels/mlp.h):
//
//   acc  = x [m, k] · w1 [n, k]ᵀ               fp32 accumulation of bf16 operands (TMA loads, WGMMA)
//   pre  = bf16(acc)                           the aux output, row-major [m, n]
//   post = bf16(leaky_relu2(acc, slope))       D, row-major [m, n]  (mlp_math.h, the CPU op's math)
//
// Operands: x is row-major (K-major A); w1 is stored [n, k] row-major, which is a K-major B (CUTLASS
// LayoutB = ColumnMajor, a "TN" GEMM). There is no C source (ElementC = void) and no bias.
//
// Design (the tile and schedule: mlp_gemm.cuh):
// - Epilogue: TMA warp-specialised, EpilogueTileAuto (64x32 sub-tiles for ping-pong), fused as an epilogue
//   visitor tree built here rather than LinCombPerRowBiasEltActAux: with no alpha/beta/bias node in the tree,
//   aux holds exactly bf16(acc) (no 1·acc + 0, which would turn -0 into +0) and nothing spends registers on a
//   broadcast bias:
//       Sm90EVT<Sm90Compute<LeakyReLU2>,                 D   = bf16(act(acc))
//         Sm90EVT<Sm90AuxStore<bf16, RowMajor>,          aux = bf16(acc); passes the fp32 acc on unchanged
//           Sm90AccFetch>>                                     acc
//   Sm90AuxStore::visit returns its fp32 input (not the rounded aux), so post is the activation of the fp32
//   accumulator, as the CPU op computes it. The AuxStore node's shared-memory layout, copy atom and stage
//   count come from CUTLASS's AuxStoreDescriptor, i.e. what the builder itself derives for fused aux outputs.
// - The slope reaches the kernel as the Sm90Compute node's arguments (LeakyReLU2::Arguments).
// Reference: golf.ops.ref_leaky_relu2_mlp; CPU: csrc/cpu/mlp.cpp.

#include "mlp_gemm.cuh"

namespace golf::kernels {
namespace {

// post = leaky_relu2(acc): a CUTLASS-style activation (Sm90Compute instantiates it on Array<float, N> and passes
// the scalar version's Arguments as the last argument).
template <class T>
struct LeakyReLU2 {
  struct Arguments {
    float slope = 0.5f;
  };
  CUTLASS_HOST_DEVICE T operator()(T const& p, Arguments const& args = Arguments()) const {
    return T(golf::math::leaky_relu2(static_cast<float>(p), args.slope));
  }
};

template <class T, int N>
struct LeakyReLU2<cutlass::Array<T, N>> {
  using Arguments = typename LeakyReLU2<T>::Arguments;
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& p,
                                                      Arguments const& args = Arguments()) const {
    cutlass::Array<T, N> y;
    LeakyReLU2<T> act;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) y[i] = act(p[i], args);
    return y;
  }
};

using namespace cute;
using namespace mlp_gemm;
namespace fusion = cutlass::epilogue::fusion;

using LayoutAux = cutlass::layout::RowMajor;  // pre [m, n]

// The epilogue tile and stage counts the builder will pick for these types, and the AuxStore node's smem layout
// and register-to-smem copy that go with them.
namespace epi_detail = cutlass::epilogue::collective::detail;
using EpiDesc = epi_detail::EpilogueDescriptor<TileShape, EpilogueTileType, void, Bf16, EpilogueSchedule>;  // C: void
using AuxDesc = epi_detail::AuxStoreDescriptor<EpiDesc, LayoutAux, Bf16>;

using StorePre = fusion::Sm90AuxStore<AuxDesc::Stages, typename EpiDesc::EpilogueTile, Bf16, kRound,
                                      typename AuxDesc::Stride, typename AuxDesc::SmemLayoutAtom,
                                      typename AuxDesc::CopyOpR2S, kAlign>;
using FusionTree = fusion::Sm90EVT<fusion::Sm90Compute<LeakyReLU2, Bf16, float, kRound>,  // post = act(acc)
                                   fusion::Sm90EVT<StorePre,                              // pre = acc
                                                   fusion::Sm90AccFetch>>;

// w1 stored [n, k] row-major: a K-major B (ColumnMajor), a "TN" GEMM.
using Gemm = GemmOf<cutlass::layout::ColumnMajor, FusionTree>::Gemm;

typename Gemm::Arguments make_arguments(const void* x, const void* w1, void* pre, void* post, int64_t m, int64_t n,
                                        int64_t k, float slope, const cutlass::KernelHardwareInfo& hw_info) {
  const int M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
  using StrideA = typename Gemm::GemmKernel::StrideA;
  using StrideB = typename Gemm::GemmKernel::StrideB;
  using StrideD = typename Gemm::GemmKernel::StrideD;
  using StrideAux = typename AuxDesc::Stride;
  const StrideA stride_a = cutlass::make_cute_packed_stride(StrideA{}, make_shape(M, K, 1));    // (k, 1, m·k)
  const StrideB stride_b = cutlass::make_cute_packed_stride(StrideB{}, make_shape(N, K, 1));    // (k, 1, n·k)
  const StrideD stride_d = cutlass::make_cute_packed_stride(StrideD{}, make_shape(M, N, 1));    // (n, 1, m·n)
  const StrideAux stride_aux = cutlass::make_cute_packed_stride(StrideAux{}, make_shape(M, N, 1));

  typename FusionTree::Arguments tree{
      {
          {},                                            // acc
          {static_cast<Bf16*>(pre), stride_aux},         // aux store: pre
      },
      {slope},                                           // activation
  };

  return typename Gemm::Arguments{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {M, N, K, 1},
      {static_cast<const Bf16*>(x), stride_a, static_cast<const Bf16*>(w1), stride_b},
      {tree, nullptr, stride_d, static_cast<Bf16*>(post), stride_d},
      hw_info,
  };
}

}  // namespace

bool mlp_fused_supported(int device) {
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();  // a failed query is "no", not an error left behind for the next launch
    return false;
  }
  return major == 9 && minor == 0;
}

GemmFacts mlp_up_facts() { return facts<Gemm>(); }

bool mlp_up_can_implement(int64_t m, int64_t n, int64_t k) {
  return fits_int(m, n, k) &&
         can_implement<Gemm>(make_arguments(nullptr, nullptr, nullptr, nullptr, m, n, k, 0.5f, {}));
}

size_t mlp_up_workspace(int64_t m, int64_t n, int64_t k) {
  if (!fits_int(m, n, k)) return 0;
  return Gemm::get_workspace_size(make_arguments(nullptr, nullptr, nullptr, nullptr, m, n, k, 0.5f,
                                                 current_hw_info()));
}

cudaError_t mlp_up(const void* x, const void* w1, void* pre, void* post, int64_t m, int64_t n, int64_t k,
                   float slope, void* workspace, cudaStream_t stream) {
  if (!fits_int(m, n, k)) return cudaErrorInvalidValue;
  // TMA descriptors need 16-byte aligned bases; CUTLASS only prints a failed one.
  if (!aligned16(x) || !aligned16(w1) || !aligned16(pre) || !aligned16(post)) return cudaErrorInvalidValue;
  return run<Gemm>(make_arguments(x, w1, pre, post, m, n, k, slope, current_hw_info()), workspace, stream);
}

}  // namespace golf::kernels
