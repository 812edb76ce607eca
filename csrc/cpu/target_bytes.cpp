// golf::target_bytes on CPU: UTF-8 bytes credited to each target token (the challenge's BPB denominator).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "checks.h"
#include "ops.h"

namespace golf::cpu {

at::Tensor target_bytes(const at::Tensor& prev_in, const at::Tensor& target_in, const at::Tensor& base_in,
                        const at::Tensor& lead_in, const at::Tensor& boundary_in) {
  check_target_bytes_args(prev_in, target_in, base_in, lead_in, boundary_in);
  const auto prev = prev_in.contiguous();
  const auto target = target_in.contiguous();
  const auto base = base_in.contiguous();
  const auto lead = lead_in.contiguous();
  const auto boundary = boundary_in.contiguous();
  auto out = at::empty(target.sizes(), target.options().dtype(at::kInt));
  const int64_t n = target.numel();
  const int32_t* base_p = base.data_ptr<int32_t>();
  const bool* lead_p = lead.data_ptr<bool>();
  const bool* boundary_p = boundary.data_ptr<bool>();
  int32_t* out_p = out.data_ptr<int32_t>();

  AT_DISPATCH_INDEX_TYPES(target.scalar_type(), "golf_target_bytes_cpu", [&] {
    const index_t* x = prev.data_ptr<index_t>();
    const index_t* y = target.data_ptr<index_t>();
    at::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t xi = x[i], yi = y[i];  // validated by check_target_bytes_args
        out_p[i] = base_p[yi] + static_cast<int32_t>(lead_p[yi] && !boundary_p[xi]);
      }
    });
  });
  return out;
}

}  // namespace golf::cpu
