// golf::count_next on CPU: a 2-D histogram of (context, next) pairs, the counting behind tiers 0 and 1.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "checks.h"
#include "ops.h"

namespace golf::cpu {

at::Tensor count_next(const at::Tensor& ctx_in, const at::Tensor& next_in, int64_t num_ctx, int64_t vocab) {
  check_count_next_args(ctx_in, next_in, num_ctx, vocab);
  const auto ctx = ctx_in.contiguous();
  const auto next = next_in.contiguous();
  auto counts = at::zeros({num_ctx, vocab}, ctx.options().dtype(at::kLong));
  int64_t* out = counts.data_ptr<int64_t>();
  const int64_t n = ctx.numel();
  const int64_t cells = num_ctx * vocab;
  AT_DISPATCH_INDEX_TYPES(ctx.scalar_type(), "golf_count_next_cpu", [&] {
    const index_t* c = ctx.data_ptr<index_t>();
    const index_t* y = next.data_ptr<index_t>();
    // Small tables: one private histogram per thread, summed at the end (no atomics on the hot loop).
    // Large tables: one sequential pass (private copies would cost more memory traffic than they save).
    const int threads = at::get_num_threads();
    if (threads > 1 && cells <= (int64_t{1} << 20) && n >= (int64_t{1} << 16)) {
      std::vector<std::vector<int64_t>> local(threads);
      at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          auto& h = local[t];
          h.assign(cells, 0);
          const int64_t lo = n * t / threads, hi = n * (t + 1) / threads;
          for (int64_t i = lo; i < hi; ++i) {
            if (c[i] >= 0) ++h[c[i] * vocab + y[i]];  // -1: no context (ranges checked up front)
          }
        }
      });
      for (int t = 0; t < threads; ++t) {
        for (int64_t k = 0; k < cells && !local[t].empty(); ++k) out[k] += local[t][k];
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        if (c[i] >= 0) ++out[c[i] * vocab + y[i]];
      }
    }
  });
  return counts;
}

}  // namespace golf::cpu
