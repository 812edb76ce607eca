#include "prior_segments.h"

#include <ATen/ATen.h>

namespace golf {

PriorSegments prior_segments(const at::Tensor& prior_rows) {
  const auto flat = prior_rows.reshape(-1).to(at::kLong);
  const auto present = at::nonzero(flat >= 0).squeeze(1);
  const auto [keys, order] = at::sort(flat.index_select(0, present), /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto [rows, inverse, counts] = at::unique_consecutive(keys, /*return_inverse=*/false, /*return_counts=*/true);
  PriorSegments s;
  s.members = present.index_select(0, order).contiguous();
  s.starts = at::cat({at::zeros({1}, counts.options()), counts.cumsum(0)}).contiguous();
  s.rows = rows.contiguous();
  s.count = rows.size(0);
  return s;
}

}  // namespace golf
