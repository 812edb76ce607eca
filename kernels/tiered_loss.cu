// golf::tiered_loss (forward, backward, the prior tables' gradient) and the row part of golf::score_windows on
// CUDA. The arithmetic and the order of every sum are kernels/tiered_loss_math.h's, which the CPU ops
// (csrc/cpu/tiered_rows.h) also follow: a CUDA op equals its CPU op bit for bit (tests/cuda checks it).
//
// A row of V logits belongs to T threads (row_layout: one warp up to V = 2,048, more beyond); a block holds
// floor(256 / T) whole rows, or one row of T > 256 threads (kernels/launch_plans.h, audited on the host). Forward:
// each thread builds its elements' logits in registers (l2 through the softcap, then the prior rows in slot order,
// 16-byte loads where aligned), takes their max and the chunk-tree sum of e^(z - max), and the row's partials meet
// in the warp (shuffles) and across its warps (shared memory); thread 0 writes lse and nll. Backward: one streaming
// pass (lse is known), writing d l2 and, where asked, d logits (for the tables) and the per-slot scale gradients.
// Train (tiered_loss_train): the forward whose threads, once the row's lse is known to all of them, write the
// gradient from the logits and tanh still in their registers (rows up to 4 chunks a thread, V <= 1,024 per warp;
// longer rows reread theirs), so training reads l2 and the priors once. No [N, V] fp32 array is ever made for the
// forward.
// Reference: golf.ops.ref_tiered_loss; CPU: csrc/cpu/tiered_loss.cpp.
#include "tiered_loss.h"

#include <cstdint>

#include "common.cuh"

namespace golf::kernels {
namespace {

namespace gm = golf::math;

// A block holds whole rows (launch_plans.h: rows_plan, row_thread, rows_smem). Rows of up to kRowBlock threads
// (V <= 16,384) keep their logits in registers; a longer row takes a block of its own (up to 512 threads, and up to
// 16 chunks each) and recomputes its logits for the second pass instead (the same arithmetic, so the same bits).
using plans::RowsPlan;
using plans::RowThread;
constexpr int kBlock = plans::kRowBlock;

// Whether prior slot q of row n is a valid row (a bad one, below -1 or past the tables, sets `bad`).
__device__ __forceinline__ bool prior_row(const RowsArgs& a, int64_t n, int64_t q, int64_t& row, bool& bad) {
  row = a.rows[n * a.k + q];
  if (row == -1) return false;
  if (row < -1 || row >= a.table_rows) {
    bad = true;
    return false;
  }
  return true;
}

// The logits z and the softcap's tanh th of the row's elements j0 .. j0+7 (past V: whatever; callers mask).
template <typename L2T>
__device__ __forceinline__ void chunk_logits(const RowsArgs& a, const L2T* l2row, int64_t n, int64_t j0, bool vec_l2,
                                             bool vec_t, float inv_cap, float z[gm::kVec], float th[gm::kVec],
                                             bool& bad) {
  load8(l2row, j0, a.v, vec_l2, z);
#pragma unroll
  for (int u = 0; u < gm::kVec; ++u) z[u] = gm::softcap(z[u], a.cap, inv_cap, th[u]);
  for (int64_t q = 0; q < a.k; ++q) {
    int64_t row;
    if (!prior_row(a, n, q, row, bad)) continue;
    const float scale = a.scales != nullptr ? a.scales[n * a.k + q] : 1.0f;
    float t[gm::kVec];
    load8(a.tables + row * a.v, j0, a.v, vec_t, t);
#pragma unroll
    for (int u = 0; u < gm::kVec; ++u) z[u] = gm::add_prior(z[u], scale, t[u]);
  }
}

// z of one element, by the same steps as chunk_logits.
template <typename L2T>
__device__ __forceinline__ float element_logit(const RowsArgs& a, const L2T* l2row, int64_t n, int64_t j,
                                               float inv_cap, bool& bad) {
  float th;
  float z = gm::softcap(to_float(l2row[j]), a.cap, inv_cap, th);
  for (int64_t q = 0; q < a.k; ++q) {
    int64_t row;
    if (!prior_row(a, n, q, row, bad)) continue;
    const float scale = a.scales != nullptr ? a.scales[n * a.k + q] : 1.0f;
    z = gm::add_prior(z, scale, a.tables[row * a.v + j]);
  }
  return z;
}

// The gradient of the row's elements j0 .. j0+7 from their logits z and tanh th: d l2 into grad_row, d logits into
// dz_row (nullptr: not kept), and each present prior slot's dz . table into part[q] (scales: wanted).
template <typename L2T>
__device__ __forceinline__ void chunk_grad(const RowsArgs& a, int64_t n, int64_t j0, const float z[gm::kVec],
                                           const float th[gm::kVec], float lse, float g_total, float g_nll, int64_t y,
                                           bool vec_l2, bool vec_t, L2T* grad_row, float* dz_row, bool scales,
                                           float part[kMaxScaleSlots], bool& bad) {
  float dz[gm::kVec], g[gm::kVec];
#pragma unroll
  for (int u = 0; u < gm::kVec; ++u) {
    dz[u] = j0 + u < a.v ? gm::dlogit(z[u], lse, g_total, g_nll, j0 + u == y) : 0.0f;
    g[u] = gm::through_softcap(dz[u], th[u], a.cap);
  }
  store8(grad_row, j0, a.v, vec_l2, g);
  if (dz_row != nullptr) store8(dz_row, j0, a.v, vec_t, dz);
  if (!scales) return;
#pragma unroll
  for (int q = 0; q < kMaxScaleSlots; ++q) {
    int64_t row;
    if (q >= a.k || !prior_row(a, n, q, row, bad)) continue;
    float tv[gm::kVec], prod[gm::kVec];
    load8(a.tables + row * a.v, j0, a.v, vec_t, tv);
#pragma unroll
    for (int u = 0; u < gm::kVec; ++u) prod[u] = j0 + u < a.v ? dz[u] * tv[u] : 0.0f;
    part[q] += gm::chunk_sum(prod);
  }
}

// Each slot's scale gradient: the row's partials part[q] summed over its warp (shuffles) and its warps in order
// (warp_sums: plans::sums_index in shared memory), written by the row's thread 0 (0 for a slot without a prior
// row). Every thread of the block calls it: it synchronises.
__device__ __forceinline__ void write_scale_grads(const RowsArgs& a, const float part[kMaxScaleSlots],
                                                  float* warp_sums, const RowsPlan& p, const RowThread& r,
                                                  float* grad_scales) {
#pragma unroll
  for (int q = 0; q < kMaxScaleSlots; ++q) {
    if (q >= a.k) break;
    float total = warp_reduce(part[q]);
    if (p.warps > 1) {
      if (r.lane == 0) warp_sums[plans::sums_index(p, r.local, r.w, q)] = total;
      __syncthreads();
      total = warp_sums[plans::sums_index(p, r.local, 0, q)];
      for (int i = 1; i < p.warps; ++i) total = total + warp_sums[plans::sums_index(p, r.local, i, q)];
    }
    int64_t row;
    bool ignored = false;
    if (r.live && r.t == 0) grad_scales[r.row * a.k + q] = prior_row(a, r.row, q, row, ignored) ? total : 0.0f;
  }
}

// The gradient outputs of the train variant: d l2 for grad_nll = weight, grad_lse = 0; scales: nullptr or [N, K].
struct TrainOut {
  float weight;
  void* grad_l2;
  float* grad_scales;
};

// kChunks > 0: the thread's logits (and, training, their tanh) stay in registers between the passes; 0: each
// later pass recomputes them. kTrain: the gradient pass follows (TrainOut).
template <typename L2T, int kChunks, int kMaxThreads, bool kTrain>
__global__ void __launch_bounds__(kMaxThreads) forward_kernel(RowsArgs a, RowsPlan p, bool vec_l2, bool vec_t,
                                                              float* nll, float* lse, TrainOut train) {
  extern __shared__ gm::MaxSum warp_parts[];  // plans::rows_smem: the warps' partials, then (kTrain) the scale sums
  const RowThread r = plans::row_thread(p, blockIdx.x, threadIdx.x, a.n);
  const int threads = p.threads, chunks = p.chunks, warps = p.warps, t = r.t, lane = r.lane;
  const int64_t n = r.row;
  const bool live = r.live;
  const L2T* l2row = static_cast<const L2T*>(a.l2) + (live ? n : 0) * a.v;
  const float inv_cap = a.cap > 0.0f ? 1.0f / a.cap : 0.0f;
  bool bad = false;
  constexpr int kKept = kChunks > 0 ? kChunks : 1;
  float z[kKept][gm::kVec], th[kKept][gm::kVec];
  float m = gm::kNegInf;
  // z of chunk c into out (and its tanh into th_out), -inf past V (padding: e^-inf = 0 in the sums).
  auto logits = [&](int c, float out[gm::kVec], float th_out[gm::kVec]) {
    const int64_t j0 = gm::element(c, t, 0, threads);
    chunk_logits(a, l2row, n, j0, vec_l2, vec_t, inv_cap, out, th_out, bad);
#pragma unroll
    for (int u = 0; u < gm::kVec; ++u) out[u] = j0 + u < a.v ? out[u] : gm::kNegInf;
  };
  auto exps = [&](const float* zc, float ref) {
    float e[gm::kVec];
#pragma unroll
    for (int u = 0; u < gm::kVec; ++u) e[u] = gm::exp_f32(zc[u] - ref);
    return gm::chunk_sum(e);
  };
  float s = 0.0f;
  if (live && kChunks > 0) {
#pragma unroll
    for (int c = 0; c < kKept; ++c) {
      if (c >= chunks) break;
      logits(c, z[c], th[c]);
#pragma unroll
      for (int u = 0; u < gm::kVec; ++u) m = z[c][u] > m ? z[c][u] : m;
    }
    const float ref = gm::exp_reference(m);
#pragma unroll
    for (int c = 0; c < kKept; ++c) {
      if (c >= chunks) break;
      s += exps(z[c], ref);
    }
  } else if (live) {
    for (int c = 0; c < chunks; ++c) {
      logits(c, z[0], th[0]);
#pragma unroll
      for (int u = 0; u < gm::kVec; ++u) m = z[0][u] > m ? z[0][u] : m;
    }
    const float ref = gm::exp_reference(m);
    for (int c = 0; c < chunks; ++c) {
      logits(c, z[0], th[0]);
      s += exps(z[0], ref);
    }
  }
  gm::MaxSum total = warp_reduce(gm::MaxSum{m, s});
  if (warps > 1) {
    if (lane == 0) warp_parts[plans::parts_index(p, r.local, r.w)] = total;
    __syncthreads();
    total = warp_parts[plans::parts_index(p, r.local, 0)];
    for (int i = 1; i < warps; ++i) total = gm::merge(total, warp_parts[plans::parts_index(p, r.local, i)]);
  }
  // Every thread of the row now holds its total (the warp's butterfly, then the same merge order everywhere).
  const int64_t y = live ? a.targets[n] : 0;
  const float row_lse = gm::row_lse(total);
  if (kTrain) {
    float part[kMaxScaleSlots];
#pragma unroll
    for (int q = 0; q < kMaxScaleSlots; ++q) part[q] = 0.0f;
    if (live) {
      L2T* grad_row = static_cast<L2T*>(train.grad_l2) + n * a.v;
      const bool scales = train.grad_scales != nullptr;
      const float w_ = train.weight;
      if (kChunks > 0) {
#pragma unroll
        for (int c = 0; c < kKept; ++c) {
          if (c >= chunks) break;
          chunk_grad(a, n, gm::element(c, t, 0, threads), z[c], th[c], row_lse, w_, w_, y, vec_l2, vec_t, grad_row,
                     nullptr, scales, part, bad);
        }
      } else {
        for (int c = 0; c < chunks; ++c) {
          logits(c, z[0], th[0]);
          chunk_grad(a, n, gm::element(c, t, 0, threads), z[0], th[0], row_lse, w_, w_, y, vec_l2, vec_t, grad_row,
                     nullptr, scales, part, bad);
        }
      }
    }
    if (train.grad_scales != nullptr) {
      float* warp_sums = reinterpret_cast<float*>(warp_parts + plans::rows_smem(p, plans::RowKernel::kTrain).parts);
      write_scale_grads(a, part, warp_sums, p, r, train.grad_scales);
    }
  }
  if (!live || t != 0) return;
  float out_lse = row_lse;
  float out_nll = 0.0f;
  if (y < 0 || y >= a.v) {
    bad = true;
  } else {
    out_nll = out_lse - element_logit(a, l2row, n, y, inv_cap, bad);
  }
  if (bad) {
    out_nll = out_lse = __int_as_float(0x7fc00000);
    flag_index_error(a.flags, a.flag_bit);
  }
  nll[n] = out_nll;
  if (lse != nullptr) lse[n] = out_lse;
}

template <typename L2T, int kMaxThreads>
__global__ void __launch_bounds__(kMaxThreads) backward_kernel(RowsArgs a, RowsPlan p, bool vec_l2, bool vec_t,
                                                               const float* lse, const float* grad_nll,
                                                               const float* grad_lse, L2T* grad_l2, float* dz_out,
                                                               float* grad_scales) {
  extern __shared__ float warp_sums[];  // plans::rows_smem(kBackward): the scale-gradient sums
  const RowThread r = plans::row_thread(p, blockIdx.x, threadIdx.x, a.n);
  const int threads = p.threads, chunks = p.chunks, t = r.t;
  const int64_t n = r.row;
  const bool live = r.live;
  const L2T* l2row = static_cast<const L2T*>(a.l2) + (live ? n : 0) * a.v;
  const float inv_cap = a.cap > 0.0f ? 1.0f / a.cap : 0.0f;
  bool bad = false;
  float part[kMaxScaleSlots];
#pragma unroll
  for (int q = 0; q < kMaxScaleSlots; ++q) part[q] = 0.0f;
  if (live) {
    const float row_lse = lse[n], g_nll = grad_nll[n], g_total = grad_nll[n] + grad_lse[n];
    const int64_t y = a.targets[n];
    if (y < 0 || y >= a.v) bad = true;
    for (int c = 0; c < chunks; ++c) {
      const int64_t j0 = gm::element(c, t, 0, threads);
      float z[gm::kVec], th[gm::kVec];
      chunk_logits(a, l2row, n, j0, vec_l2, vec_t, inv_cap, z, th, bad);
      chunk_grad(a, n, j0, z, th, row_lse, g_total, g_nll, y, vec_l2, vec_t, grad_l2 + n * a.v,
                 dz_out != nullptr ? dz_out + n * a.v : nullptr, grad_scales != nullptr, part, bad);
    }
  }
  if (grad_scales != nullptr) write_scale_grads(a, part, warp_sums, p, r, grad_scales);
  if (live && t == 0 && bad) flag_index_error(a.flags, a.flag_bit);
}

__global__ void table_grad_kernel(plans::TableGradPlan p, const float* dz, int64_t v, int64_t k,
                                  const int64_t* members, const int64_t* seg_start, const int64_t* seg_rows,
                                  int64_t segments, const float* scales, float* grad_tables) {
  for (int64_t s = blockIdx.x; s < segments; s += p.grid) {
    const int64_t begin = seg_start[s], end = seg_start[s + 1];
    float* out = grad_tables + seg_rows[s] * v;
    for (int64_t j = threadIdx.x; j < v; j += p.block) {
      float acc = 0.0f;
      for (int64_t m = begin; m < end; ++m) {
        const int64_t p = members[m];
        const float scale = scales != nullptr ? scales[p] : 1.0f;
        acc = acc + scale * dz[(p / k) * v + j];
      }
      out[j] = acc;
    }
  }
}

__global__ void sparse_kernel(plans::StridePlan p, float* l2, int64_t n, int64_t v, const int64_t* ptr,
                              const int64_t* cols, const float* vals, int64_t nnz, int* flags, int flag_bit) {
  for (int64_t i = p.first(blockIdx.x, threadIdx.x); i < n; i += p.step()) {
    const int64_t begin = ptr[i], end = ptr[i + 1];
    bool bad = begin < 0 || end < begin || end > nnz || (i == 0 && begin != 0) || (i == n - 1 && end != nnz);
    if (!bad) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t c = cols[e];
        if (c < 0 || c >= v) {
          bad = true;
          continue;
        }
        l2[i * v + c] += vals[e];
      }
    }
    if (bad) {
      l2[i * v] = __int_as_float(0x7fc00000);
      flag_index_error(flags, flag_bit);
    }
  }
}

template <typename L2T, bool kTrain>
cudaError_t launch_forward(const RowsArgs& a, float* nll, float* lse, TrainOut train, cudaStream_t stream) {
  const RowsPlan p = plans::rows_plan(a.n, a.v);
  const bool vec_l2 = rows_aligned<L2T>(a.l2, a.v) && (!kTrain || rows_aligned<L2T>(train.grad_l2, a.v));
  const bool vec_t = rows_aligned<float>(a.tables, a.v);
  const auto smem = static_cast<size_t>(
      plans::rows_smem(p, kTrain ? plans::RowKernel::kTrain : plans::RowKernel::kForward).bytes);
  const dim3 grid(static_cast<unsigned>(p.grid)), block(p.block);
  auto go = [&](auto kernel) {
    kernel<<<grid, block, smem, stream>>>(a, p, vec_l2, vec_t, nll, lse, train);
    return cudaGetLastError();
  };
  // The plan's register-kept chunks, as the template argument (launch_plans.h: kept_chunks).
  switch (kTrain ? p.kept_train : p.kept) {
    case 1: return go(forward_kernel<L2T, 1, kBlock, kTrain>);
    case 2: return go(forward_kernel<L2T, 2, kBlock, kTrain>);
    case 4: return go(forward_kernel<L2T, 4, kBlock, kTrain>);
    case gm::kMaxChunks:
      if constexpr (!kTrain) return go(forward_kernel<L2T, gm::kMaxChunks, kBlock, false>);
      break;
    case 0:
      if (p.max_threads > kBlock) return go(forward_kernel<L2T, 0, gm::kMaxRowThreads, kTrain>);
      if constexpr (kTrain) return go(forward_kernel<L2T, 0, kBlock, true>);
      break;
  }
  return cudaErrorInvalidConfiguration;
}

template <typename L2T>
cudaError_t launch_backward(const RowsArgs& a, const float* lse, const float* grad_nll, const float* grad_lse,
                            void* grad_l2, float* dz, float* grad_scales, cudaStream_t stream) {
  const RowsPlan p = plans::rows_plan(a.n, a.v);
  // dz shares the tables' alignment rule (fp32 rows of v).
  const bool vec_l2 = rows_aligned<L2T>(a.l2, a.v) && rows_aligned<L2T>(grad_l2, a.v);
  const bool vec_t = rows_aligned<float>(a.tables, a.v) && (dz == nullptr || rows_aligned<float>(dz, a.v));
  const auto smem = static_cast<size_t>(plans::rows_smem(p, plans::RowKernel::kBackward).bytes);
  const dim3 grid(static_cast<unsigned>(p.grid)), block(p.block);
  if (p.max_threads > kBlock) {
    backward_kernel<L2T, gm::kMaxRowThreads><<<grid, block, smem, stream>>>(
        a, p, vec_l2, vec_t, lse, grad_nll, grad_lse, static_cast<L2T*>(grad_l2), dz, grad_scales);
  } else {
    backward_kernel<L2T, kBlock><<<grid, block, smem, stream>>>(
        a, p, vec_l2, vec_t, lse, grad_nll, grad_lse, static_cast<L2T*>(grad_l2), dz, grad_scales);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t tiered_loss_forward(const RowsArgs& args, float* nll, float* lse, cudaStream_t stream) {
  if (args.n == 0) return cudaSuccess;
  const TrainOut none{0.0f, nullptr, nullptr};
  switch (args.dtype) {
    case Dtype::kFloat32: return launch_forward<float, false>(args, nll, lse, none, stream);
    case Dtype::kBFloat16: return launch_forward<__nv_bfloat16, false>(args, nll, lse, none, stream);
    case Dtype::kFloat16: return launch_forward<__half, false>(args, nll, lse, none, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t tiered_loss_train(const RowsArgs& args, float weight, float* nll, float* lse, void* grad_l2,
                              float* grad_scales, cudaStream_t stream) {
  if (args.n == 0) return cudaSuccess;
  if (grad_scales != nullptr && args.k > kMaxScaleSlots) return cudaErrorInvalidValue;
  const TrainOut train{weight, grad_l2, grad_scales};
  switch (args.dtype) {
    case Dtype::kFloat32: return launch_forward<float, true>(args, nll, lse, train, stream);
    case Dtype::kBFloat16: return launch_forward<__nv_bfloat16, true>(args, nll, lse, train, stream);
    case Dtype::kFloat16: return launch_forward<__half, true>(args, nll, lse, train, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t tiered_loss_backward(const RowsArgs& args, const float* lse, const float* grad_nll,
                                 const float* grad_lse, void* grad_l2, float* dz, float* grad_scales,
                                 cudaStream_t stream) {
  if (args.n == 0) return cudaSuccess;
  if (grad_scales != nullptr && args.k > kMaxScaleSlots) return cudaErrorInvalidValue;
  switch (args.dtype) {
    case Dtype::kFloat32: return launch_backward<float>(args, lse, grad_nll, grad_lse, grad_l2, dz, grad_scales, stream);
    case Dtype::kBFloat16:
      return launch_backward<__nv_bfloat16>(args, lse, grad_nll, grad_lse, grad_l2, dz, grad_scales, stream);
    case Dtype::kFloat16: return launch_backward<__half>(args, lse, grad_nll, grad_lse, grad_l2, dz, grad_scales, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t prior_table_grad(const float* dz, int64_t v, int64_t k, const int64_t* members, const int64_t* seg_start,
                             const int64_t* seg_rows, int64_t segments, const float* scales, float* grad_tables,
                             cudaStream_t stream) {
  if (segments == 0) return cudaSuccess;
  const plans::TableGradPlan p = plans::table_grad_plan(segments);
  table_grad_kernel<<<static_cast<unsigned>(p.grid), p.block, 0, stream>>>(p, dz, v, k, members, seg_start, seg_rows,
                                                                          segments, scales, grad_tables);
  return cudaGetLastError();
}

cudaError_t add_sparse_logits(float* l2, int64_t n, int64_t v, const int64_t* ptr, const int64_t* cols,
                              const float* vals, int64_t nnz, int* flags, int flag_bit, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const plans::StridePlan p = plans::stride_plan(n, plans::kStrideBlock, sm_count());
  sparse_kernel<<<static_cast<unsigned>(p.grid), p.block, 0, stream>>>(p, l2, n, v, ptr, cols, vals, nnz, flags,
                                                                       flag_bit);
  return cudaGetLastError();
}

}  // namespace golf::kernels
