// The row loops of the CPU tiered_loss and score_windows ops, over kernels/tiered_loss_math.h: the logits of a row,
// its log-sum-exp and its per-prior dot products, reduced in the CUDA kernels' order (the row layout there), so
// the CPU op is what the GPU computes. The element loops are vectorised and built twice (AVX2 and baseline
// x86-64, picked at load time); the per-thread sums run in the kernels' (chunk, element) order.
#pragma once

#include <cstdint>
#include <vector>

#include "clones.h"
#include "tiered_loss_math.h"

namespace golf::cpu {
namespace {

namespace gm = golf::math;

// The prior part of the logits: rows [N, K] into tables [R, V], scaled by scales [N, K] (nullptr: 1).
struct Priors {
  const float* tables;
  const int32_t* rows;
  const float* scales;
  int64_t k;
};

// Per-task scratch for one row at a time: the logits padded to the layout, the softcap's tanh, the exps, and
// the row's threads' partials.
struct RowScratch {
  gm::RowLayout layout;
  int64_t padded;
  std::vector<float> z, th, e, part;
  std::vector<gm::MaxSum> parts;

  explicit RowScratch(int64_t v)
      : layout(gm::row_layout(v)),
        padded(static_cast<int64_t>(layout.chunks) * gm::kVec * layout.threads),
        z(padded),
        th(v),
        e(padded),
        part(layout.threads),
        parts(layout.threads) {}
};

// z[0, padded) for row i: softcap(l2) plus the scaled prior rows (-1: none) in slot order, -inf past v;
// th[0, v): the tanh. One pass over the row with every prior row streamed at once (the tables are far larger
// than the caches: several streams in flight keep the memory busy).
template <int K>
void add_priors(float* z, const float* l2, float* th, int64_t v, float cap, float inv_cap,
                const float* const* t, const float* scale) {
#pragma omp simd
  for (int64_t j = 0; j < v; ++j) {
    float x = gm::softcap(l2[j], cap, inv_cap, th[j]);
    for (int q = 0; q < K; ++q) x = gm::add_prior(x, scale[q], t[q][j]);
    z[j] = x;
  }
}

GOLF_ROW_CLONES void row_logits(const float* l2, int64_t v, float cap, const Priors& p, int64_t i, RowScratch& s) {
  constexpr int kMaxK = 4;
  const float* t[kMaxK];
  float scale[kMaxK];
  float* z = s.z.data();
  float* th = s.th.data();
  const float inv_cap = cap > 0.0f ? 1.0f / cap : 0.0f;
  int64_t q = 0;
  bool first = true;
  while (first || q < p.k) {  // up to kMaxK present rows per pass; a second pass adds to the first's z
    int used = 0;
    for (; q < p.k && used < kMaxK; ++q) {
      const int64_t row = p.rows[i * p.k + q];
      if (row < 0) continue;  // -1: no prior row at this slot (checks.h)
      t[used] = p.tables + row * v;
      scale[used++] = p.scales != nullptr ? p.scales[i * p.k + q] : 1.0f;
    }
    // Later passes start from z itself: softcap with cap <= 0 and inv 0 is the identity, th untouched.
    const float* src = first ? l2 : z;
    float* th_out = first ? th : s.e.data();
    const float pass_cap = first ? cap : 0.0f;
    const float pass_inv = first ? inv_cap : 0.0f;
    switch (used) {
      case 0: add_priors<0>(z, src, th_out, v, pass_cap, pass_inv, t, scale); break;
      case 1: add_priors<1>(z, src, th_out, v, pass_cap, pass_inv, t, scale); break;
      case 2: add_priors<2>(z, src, th_out, v, pass_cap, pass_inv, t, scale); break;
      case 3: add_priors<3>(z, src, th_out, v, pass_cap, pass_inv, t, scale); break;
      default: add_priors<4>(z, src, th_out, v, pass_cap, pass_inv, t, scale); break;
    }
    first = false;
  }
  for (int64_t j = v; j < s.padded; ++j) z[j] = gm::kNegInf;
}

// log sum_j e^z_j of the row in s.z: each thread's max, its exps, their sums (chunk_sum per chunk, chunks in
// order), then the threads' partials through reduce_threads.
GOLF_ROW_CLONES float row_lse(RowScratch& s) {
  const int threads = s.layout.threads, chunks = s.layout.chunks;
  const float* z = s.z.data();
  float* e = s.e.data();
  gm::MaxSum* parts = s.parts.data();
  for (int t = 0; t < threads; ++t) {
    float m[gm::kVec];  // a max per element slot first, so that the chunks' loop vectorises
    for (int u = 0; u < gm::kVec; ++u) m[u] = gm::kNegInf;
    for (int c = 0; c < chunks; ++c) {
      const float* zz = z + gm::element(c, t, 0, threads);
#pragma omp simd
      for (int u = 0; u < gm::kVec; ++u) m[u] = zz[u] > m[u] ? zz[u] : m[u];
    }
    float mt = m[0];
    for (int u = 1; u < gm::kVec; ++u) mt = m[u] > mt ? m[u] : mt;
    parts[t].m = mt;
  }
  for (int c = 0; c < chunks; ++c) {
    for (int t = 0; t < threads; ++t) {
      const int64_t at = gm::element(c, t, 0, threads);
      const float ref = gm::exp_reference(parts[t].m);
#pragma omp simd
      for (int u = 0; u < gm::kVec; ++u) e[at + u] = gm::exp_f32(z[at + u] - ref);
    }
  }
  for (int t = 0; t < threads; ++t) {
    float sum = 0.0f;
    for (int c = 0; c < chunks; ++c) sum += gm::chunk_sum(e + gm::element(c, t, 0, threads));
    parts[t].s = sum;
  }
  return gm::row_lse(gm::reduce_threads(parts, threads, gm::Merge{}));
}

// sum_{j < v} a_j * b_j in the kernels' order (a, b: the row's [v] vectors; past v a product counts as 0).
GOLF_ROW_CLONES float row_dot(const float* a, const float* b, int64_t v, RowScratch& s) {
  const int threads = s.layout.threads, chunks = s.layout.chunks;
  float* prod = s.e.data();
#pragma omp simd
  for (int64_t j = 0; j < v; ++j) prod[j] = a[j] * b[j];
  for (int64_t j = v; j < s.padded; ++j) prod[j] = 0.0f;
  float* part = s.part.data();
  for (int t = 0; t < threads; ++t) {
    float sum = 0.0f;
    for (int c = 0; c < chunks; ++c) sum += gm::chunk_sum(prod + gm::element(c, t, 0, threads));
    part[t] = sum;
  }
  return gm::reduce_threads(part, threads, gm::Add{});
}

}  // namespace
}  // namespace golf::cpu
