// golf::pack_int6 / golf::unpack_int6 on CPU: int6 codes stored 4 per 3 bytes.
// Code u = q + 31 in [0, 62]; a group of 4 codes is the 24-bit word u0 | u1<<6 | u2<<12 | u3<<18, written
// little-endian; the last group is padded with q = 0. Code 63 is never written, so unpack treats it as corrupt.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>
#include <limits>

#include "checks.h"
#include "gptq_math.h"
#include "ops.h"

namespace golf {

namespace {
constexpr int kQmax = math::kInt6Max;
constexpr int64_t kGrain = 1 << 14;  // groups per task: far above the per-task overhead

// Lowest index seen by any thread (so the error names the first bad element, whatever the scheduling).
void record_min(std::atomic<int64_t>& slot, int64_t i) {
  int64_t cur = slot.load();
  while (i < cur && !slot.compare_exchange_weak(cur, i)) {
  }
}
}  // namespace

namespace cpu {

at::Tensor pack_int6(const at::Tensor& q_in) {
  check_pack_int6_args(q_in);
  const auto q = q_in.contiguous().view(-1);
  const int64_t n = q.numel(), groups = (n + 3) / 4;
  auto out = at::empty({groups * 3}, q.options().dtype(at::kByte));
  const int8_t* src = q.data_ptr<int8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  std::atomic<int64_t> bad{std::numeric_limits<int64_t>::max()};
  at::parallel_for(0, groups, kGrain, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      int v[4];
      for (int k = 0; k < 4; ++k) {
        const int64_t i = 4 * g + k;
        v[k] = i < n ? src[i] : 0;
        if (v[k] < -kQmax || v[k] > kQmax) record_min(bad, i);
      }
      const uint32_t word = math::pack_int6_word(v[0], v[1], v[2], v[3]);
      dst[3 * g] = static_cast<uint8_t>(word);
      dst[3 * g + 1] = static_cast<uint8_t>(word >> 8);
      dst[3 * g + 2] = static_cast<uint8_t>(word >> 16);
    }
  });
  const int64_t b = bad.load();
  TORCH_CHECK(b == std::numeric_limits<int64_t>::max(), "golf::pack_int6: value ", static_cast<int>(src[b]),
              " at flat index ", b, " is outside [-31, 31]");
  return out;
}

at::Tensor unpack_int6(const at::Tensor& packed_in, int64_t numel) {
  check_unpack_int6_args(packed_in, numel);
  const auto packed = packed_in.contiguous();
  auto out = at::empty({numel}, packed.options().dtype(at::kChar));
  const uint8_t* src = packed.data_ptr<uint8_t>();
  int8_t* dst = out.data_ptr<int8_t>();
  const int64_t groups = (numel + 3) / 4;
  std::atomic<int64_t> bad{std::numeric_limits<int64_t>::max()};
  at::parallel_for(0, groups, kGrain, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const uint32_t word = src[3 * g] | (static_cast<uint32_t>(src[3 * g + 1]) << 8) |
                            (static_cast<uint32_t>(src[3 * g + 2]) << 16);
      for (int k = 0; k < 4; ++k) {
        const int64_t i = 4 * g + k;
        if (i >= numel) break;
        const int u = math::int6_code(word, k);
        if (u == math::kInt6Bad) record_min(bad, i);
        dst[i] = static_cast<int8_t>(u - kQmax);
      }
    }
  });
  TORCH_CHECK(bad.load() == std::numeric_limits<int64_t>::max(), "golf::unpack_int6: code 63 (value 32, outside [-31, 31]) "
              "at flat index ", bad.load(), ": the packed bytes are corrupt");
  return out;
}

}  // namespace cpu
}  // namespace golf
