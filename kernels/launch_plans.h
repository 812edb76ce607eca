// The launch plan of every kernel family in kernels/*.cu, written once for the host and the device: the launchers
// take their grid, block and shared-memory size from it, the kernels map their threads with it, and
// tests/test_launch_plans.py (through csrc/launch_audit.cpp) checks on the host, for every vocabulary and shape a
// GPU would meet, that every item is covered by exactly one thread of exactly one block, that no thread maps
// outside its range and that every shared-memory index lies inside its allocation. A GPU is not needed to find a
// plan's races.
#pragma once

#include <cstdint>

#include "host_device.h"
#include "tiered_loss_math.h"

namespace golf::plans {

namespace gm = golf::math;

// --- the row kernels of kernels/tiered_loss.cu (forward, train, backward: golf::tiered_loss, score_windows) -----

constexpr int kRowBlock = 256;      // threads of a block shared by rows of up to this many threads
constexpr int kMaxScaleSlots = 8;   // prior slots whose scale gradient a row kernel reduces

// A row of V logits belongs to `threads` threads (gm::row_layout); a block holds whole rows only: rows_per_block
// rows of `threads` threads (block = rows_per_block * threads <= kRowBlock), or one row of more than kRowBlock
// threads. `kept` / `kept_train`: the chunks a thread keeps in registers between the passes in the forward and
// train kernels (a template argument; 0: it recomputes them), `max_threads` the kernels' __launch_bounds__.
struct RowsPlan {
  int threads, chunks, warps;  // per row
  int rows_per_block, block;
  int kept, kept_train, max_threads;
  int64_t grid;
};

GOLF_HOST_DEVICE int kept_chunks(int threads, int chunks, bool train) {
  if (threads > kRowBlock) return 0;
  if (chunks <= 1) return 1;
  if (chunks <= 2) return 2;
  if (chunks <= 4) return 4;
  return train ? 0 : gm::kMaxChunks;  // training keeps a tanh beside each logit: registers up to 4 chunks
}

GOLF_HOST_DEVICE RowsPlan rows_plan(int64_t n, int64_t v) {
  const gm::RowLayout layout = gm::row_layout(v);
  RowsPlan p{};
  p.threads = layout.threads;
  p.chunks = layout.chunks;
  p.warps = layout.threads / gm::kWarp;
  p.rows_per_block = layout.threads > kRowBlock ? 1 : kRowBlock / layout.threads;
  p.block = p.rows_per_block * layout.threads;
  p.kept = kept_chunks(p.threads, p.chunks, false);
  p.kept_train = kept_chunks(p.threads, p.chunks, true);
  p.max_threads = layout.threads > kRowBlock ? gm::kMaxRowThreads : kRowBlock;
  p.grid = (n + p.rows_per_block - 1) / p.rows_per_block;
  return p;
}

// Thread `thread` of block `block`: the row it serves (`row`, live while < n), its place in that row (t, warp w,
// lane) and the row's place in the block (`local`).
struct RowThread {
  int local, t, w, lane;
  int64_t row;
  bool live;
};

GOLF_HOST_DEVICE RowThread row_thread(const RowsPlan& p, int64_t block, int thread, int64_t n) {
  RowThread r{};
  r.local = thread / p.threads;
  r.t = thread % p.threads;
  r.w = r.t / gm::kWarp;
  r.lane = r.t % gm::kWarp;
  r.row = block * p.rows_per_block + r.local;
  r.live = r.row < n;
  return r;
}

// Shared memory of a row kernel: the warps' (max, sum) partials, [rows_per_block][warps] gm::MaxSum, then (train,
// backward) the warps' scale-gradient partials, [rows_per_block][warps][kMaxScaleSlots] float. The backward has
// only the second array, at offset 0.
struct RowsSmem {
  int64_t parts, sums;        // entries of each array (0: absent)
  int64_t sums_offset_bytes;  // where the second array starts
  int64_t bytes;
};

enum class RowKernel { kForward, kTrain, kBackward };

GOLF_HOST_DEVICE RowsSmem rows_smem(const RowsPlan& p, RowKernel kernel) {
  const int64_t slots = int64_t{p.rows_per_block} * p.warps;
  RowsSmem s{};
  s.parts = kernel == RowKernel::kBackward ? 0 : slots;
  s.sums = kernel == RowKernel::kForward ? 0 : slots * kMaxScaleSlots;
  s.sums_offset_bytes = s.parts * static_cast<int64_t>(sizeof(gm::MaxSum));
  s.bytes = s.sums_offset_bytes + s.sums * static_cast<int64_t>(sizeof(float));
  return s;
}

GOLF_HOST_DEVICE int parts_index(const RowsPlan& p, int local, int w) { return local * p.warps + w; }

GOLF_HOST_DEVICE int sums_index(const RowsPlan& p, int local, int w, int q) {
  return (local * p.warps + w) * kMaxScaleSlots + q;
}

// --- grid-stride loops (the int6 packing, target_bytes, the sparse logits, the tables' gradient) ---------------

// Item i of [0, work) belongs to the thread with first(b, t) + k * step == i: blocks of `block` threads, a grid of
// enough blocks to fill the device (`per_sm` resident blocks on each of `sms` multiprocessors), never more than
// the work needs, at least one.
struct StridePlan {
  int64_t grid;
  int block;
  GOLF_HOST_DEVICE int64_t first(int64_t b, int t) const { return b * block + t; }
  GOLF_HOST_DEVICE int64_t step() const { return grid * block; }
};

GOLF_HOST_DEVICE StridePlan stride_plan(int64_t work, int block, int sms, int per_sm = 8) {
  const int64_t needed = (work + block - 1) / block;
  const int64_t fill = int64_t{sms} * per_sm;
  return {needed < fill ? (needed > 0 ? needed : 1) : fill, block};
}

constexpr int kStrideBlock = 256;

// The tables' gradient (table_grad_kernel): block b takes segments b, b + grid, ...; its threads the columns
// t, t + block, ... of each.
struct TableGradPlan {
  int64_t grid;
  int block;
};

constexpr int64_t kMaxTableGradGrid = 65535 * 16;

GOLF_HOST_DEVICE TableGradPlan table_grad_plan(int64_t segments) {
  return {segments < kMaxTableGradGrid ? segments : kMaxTableGradGrid, kStrideBlock};
}

// --- GPTQ's column loop (kernels/gptq.cu) ----------------------------------------------------------------------

// A thread per stacked row, kGptqRows to a block; the block's slice of its rows (nb columns) in shared memory,
// [kGptqRows][nb + 1] floats (padded by one: neighbouring threads' rows fall in different banks).
constexpr int kGptqRows = 64;
constexpr int64_t kDefaultSmemBytes = 48 * 1024;  // more needs cudaFuncAttributeMaxDynamicSharedMemorySize

struct GptqPlan {
  int64_t grid;
  int block;
  int64_t pitch;  // floats per row of the slab
  int64_t smem_bytes;
};

GOLF_HOST_DEVICE GptqPlan gptq_plan(int64_t rows, int64_t nb) {
  return {(rows + kGptqRows - 1) / kGptqRows, kGptqRows, nb + 1,
          static_cast<int64_t>(sizeof(float)) * kGptqRows * (nb + 1)};
}

GOLF_HOST_DEVICE int64_t gptq_row(const GptqPlan& p, int64_t b, int t) { return b * p.block + t; }

GOLF_HOST_DEVICE int64_t gptq_slab_index(const GptqPlan& p, int t, int64_t j) { return t * p.pitch + j; }

}  // namespace golf::plans
