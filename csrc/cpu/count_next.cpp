// golf::count_next on CPU: a 2-D histogram of (context, next) pairs, the counting behind tiers 0 and 1.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "ops.h"

namespace golf {

void check_count_next_args(const at::Tensor& ctx, const at::Tensor& next, int64_t num_ctx, int64_t vocab) {
  TORCH_CHECK(ctx.sizes() == next.sizes(), "golf::count_next: ctx has shape ", ctx.sizes(), " but next has shape ",
              next.sizes());
  for (const at::Tensor* t : {&ctx, &next}) {
    TORCH_CHECK(t->scalar_type() == at::kLong || t->scalar_type() == at::kInt,
                "golf::count_next: ids must be int64 or int32, found ", t->scalar_type());
  }
  TORCH_CHECK(ctx.scalar_type() == next.scalar_type(), "golf::count_next: ctx is ", ctx.scalar_type(),
              " but next is ", next.scalar_type());
  TORCH_CHECK(ctx.device() == next.device(), "golf::count_next: ctx on ", ctx.device(), ", next on ", next.device());
  TORCH_CHECK(num_ctx > 0 && vocab > 0, "golf::count_next: num_ctx and vocab must be positive, got ", num_ctx, " and ",
              vocab);
}

namespace cpu {

at::Tensor count_next(const at::Tensor& ctx_in, const at::Tensor& next_in, int64_t num_ctx, int64_t vocab) {
  check_count_next_args(ctx_in, next_in, num_ctx, vocab);
  const auto ctx = ctx_in.contiguous();
  const auto next = next_in.contiguous();
  auto counts = at::zeros({num_ctx, vocab}, ctx.options().dtype(at::kLong));
  int64_t* out = counts.data_ptr<int64_t>();
  const int64_t n = ctx.numel();
  const int64_t cells = num_ctx * vocab;
  int64_t bad = -1;
  AT_DISPATCH_INDEX_TYPES(ctx.scalar_type(), "golf_count_next_cpu", [&] {
    const index_t* c = ctx.data_ptr<index_t>();
    const index_t* y = next.data_ptr<index_t>();
    // Small tables: one private histogram per thread, summed at the end (no atomics on the hot loop).
    // Large tables: one sequential pass (private copies would cost more memory traffic than they save).
    const int threads = at::get_num_threads();
    if (threads > 1 && cells <= (int64_t{1} << 20) && n >= (int64_t{1} << 16)) {
      std::vector<std::vector<int64_t>> local(threads);
      std::vector<int64_t> bad_at(threads, -1);
      at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          auto& h = local[t];
          h.assign(cells, 0);
          const int64_t lo = n * t / threads, hi = n * (t + 1) / threads;
          for (int64_t i = lo; i < hi; ++i) {
            const int64_t ci = c[i], yi = y[i];
            if (ci < 0) continue;
            if (ci >= num_ctx || yi < 0 || yi >= vocab) { bad_at[t] = i; break; }
            ++h[ci * vocab + yi];
          }
        }
      });
      for (int t = 0; t < threads; ++t) {
        if (bad_at[t] >= 0 && bad < 0) bad = bad_at[t];
        for (int64_t k = 0; k < cells && !local[t].empty(); ++k) out[k] += local[t][k];
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const int64_t ci = c[i], yi = y[i];
        if (ci < 0) continue;
        if (ci >= num_ctx || yi < 0 || yi >= vocab) { bad = i; break; }
        ++out[ci * vocab + yi];
      }
    }
  });
  TORCH_CHECK(bad < 0, "golf::count_next: pair out of range at flat index ", bad, " (ctx=",
              ctx.view(-1)[bad].item<int64_t>(), " must be < ", num_ctx, ", next=", next.view(-1)[bad].item<int64_t>(),
              " must be in [0, ", vocab, "))");
  return counts;
}

}  // namespace cpu
}  // namespace golf
