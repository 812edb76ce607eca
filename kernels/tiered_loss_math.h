// The per-row arithmetic of golf::tiered_loss and golf::score_windows, written once. csrc/cpu/tiered_loss.cpp,
// csrc/cpu/score_windows.cpp and kernels/tiered_loss.cu include it, so the CPU suite tests the arithmetic the
// GPU runs. Both sides compile it without contracting a*b+c into an FMA (g++ -ffp-contract=off, nvcc
// --fmad=false) and reduce in the same order (row layout below), so a CUDA op equals its CPU op bit for bit.
//
// The logits of a row (reference: golf.ops.ref_tiered_loss):
//   z_j = softcap(l2_j) + sum_k scale_k * prior_tables[row_k, j]      (row_k = -1: no term; scale_k = 1 absent)
//   softcap(x) = cap * tanh(x / cap)   (cap <= 0: x)
//   lse = log sum_j e^(z_j),  nll = lse - z_target
// Backward, with upstream gradients g_nll (of nll) and g_lse (of lse):
//   dz_j = (g_nll + g_lse) * e^(z_j - lse) - g_nll * [j == target]
//   dl2_j = dz_j * (1 - tanh^2)   (cap <= 0: dz_j),   dscale_k = sum_j dz_j * prior_tables[row_k, j]
//
// Row layout: a row of V logits is covered by T threads (a multiple of 32: one warp per 2,048 ids, at most 512),
// each owning kVec consecutive elements per chunk: thread t owns j = c*kVec*T + kVec*t + u for chunks
// c < C and u < kVec (j >= V is padding, contributing e^-inf = 0 or a product of 0). A thread sums each chunk's
// kVec values as a pairwise tree (chunk_sum), and the chunks in order; the T partials then meet in a halving tree
// over the 32 lanes of each warp (offsets 16, 8, 4, 2, 1: what a butterfly of shuffles leaves in lane 0) and the
// warps' results in warp order. chunk_sum and reduce_threads below are that order, spelled out.
#pragma once

#include <cmath>

#include "host_device.h"

namespace golf::math {

constexpr float kNegInf = -INFINITY;
constexpr int kVec = 8;             // elements per thread per chunk: one 16-byte load of bf16 logits
constexpr int kWarp = 32;
constexpr int kMaxChunks = 8;       // chunks per thread while a row has at most 256 threads (V <= 16,384)
constexpr int kMaxRowThreads = 512;
constexpr long kMaxVocab = 65536;   // 512 threads x 16 chunks x 8

struct RowLayout {
  int threads;  // T, a multiple of 32
  int chunks;   // C
};

// One warp per 2,048 ids (8 chunks of 8 per thread), up to 512 threads; longer rows then take more chunks.
GOLF_HOST_DEVICE RowLayout row_layout(int64_t vocab) {
  const int64_t per_warp = int64_t{kWarp} * kVec * kMaxChunks;  // 2,048
  int threads = kWarp * static_cast<int>((vocab + per_warp - 1) / per_warp);
  threads = threads < kMaxRowThreads ? threads : kMaxRowThreads;
  const int64_t span = int64_t{kVec} * threads;
  return {threads, static_cast<int>((vocab + span - 1) / span)};
}

// The element of the row that thread t holds at chunk c, position u.
GOLF_HOST_DEVICE int64_t element(int c, int t, int u, int threads) {
  return static_cast<int64_t>(c) * kVec * threads + kVec * t + u;
}

// e^x in fp32, branch-free: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), e^r by Cephes' degree-7
// polynomial (relative error ~2 ulp), 2^n through the exponent bits. Below -87.3 (e^x no longer a normal
// float; -inf included) the result is 0; above 80 it is e^80 (callers pass x <= 0 or a softcapped value).
// NaN stays NaN.
GOLF_HOST_DEVICE float exp_f32(float x) {
  const float xc = x < -87.3f ? -87.3f : (x > 80.0f ? 80.0f : x);
  const float shifted = xc * 1.44269504089f + 12582912.0f;  // 1.5 * 2^23: rounds x / ln2 to an integer
  const float n = shifted - 12582912.0f;
  const int32_t ni = float_bits(shifted) - 0x4B400000;
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float value = p * bits_float((ni + 127) << 23);
  return x < -87.3f ? 0.0f : value;
}

// tanh in fp32, branch-free: an odd Taylor polynomial below |x| = 0.1 (error < 1e-13; no cancellation near 0),
// else 1 - 2/(e^2|x| + 1) (error ~1e-7; e^2|x| saturates harmlessly). NaN stays NaN.
GOLF_HOST_DEVICE float tanh_f32(float x) {
  const float a = x < 0.0f ? -x : x;
  const float x2 = x * x;
  const float small = a * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315 + x2 * (62.0f / 2835)))));
  const float twice = 2.0f * a;
  const float large = 1.0f - 2.0f / (exp_f32(twice > 80.0f ? 80.0f : twice) + 1.0f);
  const float t = a < 0.1f ? small : large;
  return x < 0.0f ? -t : t;
}

// log x in fp32 for x > 0 (Cephes' logf: x = f 2^e with f in [sqrt(1/2), sqrt(2)), log f by a polynomial in
// f - 1, error ~1 ulp); 0 -> -inf, +inf -> +inf, x < 0 or NaN -> NaN. Used once per row, on the sum of exps.
GOLF_HOST_DEVICE float log_f32(float x) {
  const int32_t bits = float_bits(x);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  float f = bits_float((bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  if (f > 1.41421356f) {
    f = f * 0.5f;
    e = e + 1;
  }
  const float y = f - 1.0f;
  const float y2 = y * y;
  float p = 7.0376836292e-2f;
  p = p * y - 1.1514610310e-1f;
  p = p * y + 1.1676998740e-1f;
  p = p * y - 1.2420140846e-1f;
  p = p * y + 1.4249322787e-1f;
  p = p * y - 1.6668057665e-1f;
  p = p * y + 2.0000714765e-1f;
  p = p * y - 2.4999993993e-1f;
  p = p * y + 3.3333331174e-1f;
  const float fe = static_cast<float>(e);
  float r = p * y * y2;
  r = r + fe * -2.12194440e-4f;
  r = r - 0.5f * y2;
  float out = y + r;
  out = out + fe * 0.693359375f;
  if (x == 0.0f) return kNegInf;
  if (!(x > 0.0f)) return bits_float(0x7fc00000);  // negative or NaN
  return x == INFINITY ? x : out;
}

// softcap(l2), with th = tanh(l2 / cap) for the backward (0 when cap <= 0: no cap).
GOLF_HOST_DEVICE float softcap(float l2, float cap, float inv_cap, float& th) {
  if (cap <= 0.0f) {
    th = 0.0f;
    return l2;
  }
  th = tanh_f32(l2 * inv_cap);
  return cap * th;
}

// One prior row's contribution to z_j.
GOLF_HOST_DEVICE float add_prior(float z, float scale, float table_value) { return z + scale * table_value; }

// d loss / d z_j.
GOLF_HOST_DEVICE float dlogit(float z, float lse, float g_total, float g_nll, bool is_target) {
  const float p = g_total * exp_f32(z - lse);
  return is_target ? p - g_nll : p;
}

// d loss / d l2_j from d loss / d z_j.
GOLF_HOST_DEVICE float through_softcap(float dz, float th, float cap) { return cap > 0.0f ? dz * (1.0f - th * th) : dz; }

// A partial log-sum-exp: s = sum e^(z - m) over the elements seen; {-inf, 0} for none (or only -inf ones).
struct MaxSum {
  float m;
  float s;
};

// Two partials as one. Commutative bit for bit (a max and one sum of two products), which the warp's butterfly
// relies on; two empty partials stay empty instead of giving e^(-inf - -inf) = NaN.
GOLF_HOST_DEVICE MaxSum merge(MaxSum a, MaxSum b) {
  const float m = a.m > b.m ? a.m : b.m;
  if (m == kNegInf) return {kNegInf, 0.0f};
  return {m, a.s * exp_f32(a.m - m) + b.s * exp_f32(b.m - m)};
}

// The reference a thread subtracts before its exps: its max, or 0 when it holds nothing above -inf (its exps are
// then all 0).
GOLF_HOST_DEVICE float exp_reference(float m) { return m == kNegInf ? 0.0f : m; }

GOLF_HOST_DEVICE float row_lse(MaxSum total) { return total.m + log_f32(total.s); }

// The kVec values of one chunk of a thread, summed as a pairwise tree (no long chain of dependent adds).
GOLF_HOST_DEVICE float chunk_sum(const float* x) {
  static_assert(kVec == 8, "chunk_sum is written for 8 values");
  return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
}

struct Add {
  GOLF_HOST_DEVICE float operator()(float a, float b) const { return a + b; }
};
struct Merge {
  GOLF_HOST_DEVICE MaxSum operator()(MaxSum a, MaxSum b) const { return merge(a, b); }
};

// The row's total from its T threads' partials, in the kernels' order (see the top of this file). Overwrites v.
template <class T, class Op>
GOLF_HOST_DEVICE T reduce_threads(T* v, int threads, Op op) {
  for (int w = 0; w < threads; w += kWarp) {
    for (int offset = kWarp / 2; offset >= 1; offset /= 2) {
      for (int lane = 0; lane < offset; ++lane) v[w + lane] = op(v[w + lane], v[w + lane + offset]);
    }
  }
  T total = v[0];
  for (int w = kWarp; w < threads; w += kWarp) total = op(total, v[w]);
  return total;
}

}  // namespace golf::math
