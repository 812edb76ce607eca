// golf::target_bytes on CPU: UTF-8 bytes credited to each target token (the challenge's BPB denominator).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>

#include "ops.h"

namespace golf {

void check_target_bytes_args(const at::Tensor& prev, const at::Tensor& target, const at::Tensor& base_bytes,
                             const at::Tensor& leading_space, const at::Tensor& boundary) {
  TORCH_CHECK(prev.sizes() == target.sizes(), "golf::target_bytes: prev has shape ", prev.sizes(),
              " but target has shape ", target.sizes());
  for (const at::Tensor* t : {&prev, &target}) {
    TORCH_CHECK(t->scalar_type() == at::kLong || t->scalar_type() == at::kInt,
                "golf::target_bytes: token ids must be int64 or int32, found ", t->scalar_type());
  }
  TORCH_CHECK(prev.scalar_type() == target.scalar_type(), "golf::target_bytes: prev is ", prev.scalar_type(),
              " but target is ", target.scalar_type());
  TORCH_CHECK(base_bytes.dim() == 1 && base_bytes.scalar_type() == at::kInt,
              "golf::target_bytes: base_bytes must be 1-D int32, found ", base_bytes.dim(), "-D ",
              base_bytes.scalar_type());
  const auto vocab = base_bytes.size(0);
  TORCH_CHECK(leading_space.dim() == 1 && leading_space.scalar_type() == at::kBool && leading_space.size(0) == vocab,
              "golf::target_bytes: leading_space must be 1-D bool of length ", vocab);
  TORCH_CHECK(boundary.dim() == 1 && boundary.scalar_type() == at::kBool && boundary.size(0) == vocab,
              "golf::target_bytes: boundary must be 1-D bool of length ", vocab);
  for (const at::Tensor* t : {&prev, &base_bytes, &leading_space, &boundary}) {
    TORCH_CHECK(t->device() == target.device(), "golf::target_bytes: all tensors must be on ", target.device(),
                ", found one on ", t->device());
  }
}

namespace cpu {

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
  const int64_t vocab = base.size(0);
  const int32_t* base_p = base.data_ptr<int32_t>();
  const bool* lead_p = lead.data_ptr<bool>();
  const bool* boundary_p = boundary.data_ptr<bool>();
  int32_t* out_p = out.data_ptr<int32_t>();
  std::atomic<int64_t> bad_index{-1};

  AT_DISPATCH_INDEX_TYPES(target.scalar_type(), "golf_target_bytes_cpu", [&] {
    const index_t* x = prev.data_ptr<index_t>();
    const index_t* y = target.data_ptr<index_t>();
    at::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t xi = x[i], yi = y[i];
        if (xi < 0 || xi >= vocab || yi < 0 || yi >= vocab) {
          bad_index.store(i, std::memory_order_relaxed);
          out_p[i] = 0;
          continue;
        }
        out_p[i] = base_p[yi] + static_cast<int32_t>(lead_p[yi] && !boundary_p[xi]);
      }
    });
  });
  const int64_t bad = bad_index.load();
  TORCH_CHECK(bad < 0, "golf::target_bytes: token id out of range [0, ", vocab, ") at flat index ", bad,
              " (prev=", prev.view(-1)[bad].item<int64_t>(), ", target=", target.view(-1)[bad].item<int64_t>(), ")");
  return out;
}

}  // namespace cpu
}  // namespace golf
