// The per-device index-error flag (index_flags.h).
#include "index_flags.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace golf::cuda {
namespace {

std::mutex mutex;
// Never destroyed: the tensors would otherwise be freed after the CUDA context at exit.
std::map<int, at::Tensor>& flags() {
  static auto* table = new std::map<int, at::Tensor>();
  return *table;
}

}  // namespace

int* device_flags(const c10::Device& device) {
  const std::lock_guard<std::mutex> lock(mutex);
  auto& table = flags();
  auto it = table.find(device.index());
  if (it == table.end()) {
    it = table.emplace(device.index(), at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(device))).first;
  }
  return it->second.data_ptr<int>();
}

int take_index_errors(int device_index) {
  const std::lock_guard<std::mutex> lock(mutex);
  auto& table = flags();
  const auto it = table.find(device_index);
  if (it == table.end()) return 0;
  const c10::cuda::CUDAGuard guard(it->second.device());
  const int bits = it->second.item<int>();
  if (bits != 0) it->second.zero_();
  return bits;
}

IndexCheck index_check_mode() {
  static const IndexCheck mode = [] {
    const char* env = std::getenv("GOLF_CHECK_INDICES");
    return env != nullptr && std::strcmp(env, "1") == 0 ? IndexCheck::kBefore : IndexCheck::kInKernel;
  }();
  return mode;
}

}  // namespace golf::cuda
