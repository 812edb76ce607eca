// The contiguous inputs of a tiered_loss / score_windows launch and kernels::RowsArgs over them.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "cuda/index_flags.h"
#include "tiered_loss.h"

namespace golf::cuda {

struct RowsInputs {
  at::Tensor l2, tables, rows, targets, scales;  // contiguous; scales undefined when absent

  RowsInputs(const at::Tensor& logits2, const at::Tensor& prior_tables, const at::Tensor& prior_rows,
             const at::Tensor& targets_in, const std::optional<at::Tensor>& prior_scales)
      : l2(logits2.contiguous()),
        tables(prior_tables.contiguous()),
        rows(prior_rows.contiguous()),
        targets(targets_in.contiguous()),
        scales(prior_scales.has_value() ? prior_scales->contiguous() : at::Tensor()) {}

  kernels::RowsArgs args(double softcap, int flag_bit) const {
    const auto type = l2.scalar_type();
    const auto dtype = type == at::kBFloat16 ? kernels::Dtype::kBFloat16
                       : type == at::kHalf   ? kernels::Dtype::kFloat16
                                             : kernels::Dtype::kFloat32;
    return {l2.data_ptr(), dtype, l2.size(0), l2.size(1), tables.data_ptr<float>(), tables.size(0),
            rows.data_ptr<int32_t>(), scales.defined() ? scales.data_ptr<float>() : nullptr, rows.size(1),
            targets.data_ptr<int64_t>(), static_cast<float>(softcap), device_flags(l2.device()), flag_bit};
  }
};

}  // namespace golf::cuda
