// The prior tables' gradient, grouped by table row: which (position, slot) pairs of prior_rows read each row, in
// a fixed order, so the CPU op and the CUDA kernel sum every row's contributions alike (and without atomics).
#pragma once

#include <ATen/core/Tensor.h>

namespace golf {

struct PriorSegments {
  at::Tensor members;  // int64 [M]: flat indices p = n * K + q of prior_rows with a row (>= 0), by row, p ascending
  at::Tensor starts;   // int64 [S + 1]: segment s holds members[starts[s] .. starts[s+1])
  at::Tensor rows;     // int64 [S]: the table row of segment s (ascending)
  int64_t count = 0;   // S
};

// On prior_rows' device (a stable sort and a run-length count; a host sync for the sizes).
PriorSegments prior_segments(const at::Tensor& prior_rows);

}  // namespace golf
