// The launch plans of kernels/launch_plans.h, walked thread by thread on the host: what a GPU would do with them,
// without a GPU. For a family and a shape, launch_plan gives the plan's numbers and audit_launch_plan enumerates every
// (block, thread) of the launch and every item, shared-memory index and global index that thread touches (as the
// kernel computes them, through the same functions), and counts what goes wrong: an item covered twice or never, a
// thread mapped outside its range, a shared-memory access outside its allocation or shared by two rows, a warp
// split across rows. tests/test_launch_plans.py runs it over every vocabulary and shape range.
//
// A row kernel's coverage of (row, element) is checked in two independent parts, whose product is the whole:
// (block, thread) -> (row, thread of the row) is a bijection onto [0, N) x [0, T) ("rows"), and
// (thread of the row, chunk, u) -> element, which no kernel makes depend on the row, covers [0, V) once ("elements").
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "launch_plans.h"
#ifdef GOLF_WITH_CUTLASS_MLP
#include "mlp.h"
#endif

namespace golf {
namespace {

namespace py = pybind11;
namespace gm = golf::math;
using namespace golf::plans;

constexpr int64_t kMaxGrid = 2147483647;  // gridDim.x
constexpr int kMaxBlock = 1024;
constexpr int64_t kH100OptinSmem = 232448;  // the H100's and H200's opt-in shared memory per block (227 KB)

// Counts what a plan gets wrong; the first few violations are kept in words.
struct Audit {
  int64_t threads = 0, items = 0, covered = 0, errors = 0;
  std::string first;

  template <class... A>
  void fail(const A&... what) {
    if (errors++ < 3) {
      std::ostringstream s;
      (s << ... << what);
      first += (first.empty() ? "" : "; ") + s.str();
    }
  }
  // Every item of `marks` visited exactly once.
  void coverage(const std::vector<uint8_t>& marks, const char* what) {
    items += static_cast<int64_t>(marks.size());
    for (size_t i = 0; i < marks.size(); ++i) {
      if (marks[i] == 1) {
        ++covered;
      } else {
        fail(what, " ", i, " covered ", static_cast<int>(marks[i]), " times");
      }
    }
  }
  void bound(int64_t value, int64_t lo, int64_t hi, const char* what) {
    if (value < lo || value > hi) fail(what, " = ", value, ": expected a value in [", lo, ", ", hi, "]");
  }
  py::dict result() const {
    py::dict d;
    d["threads"] = threads;
    d["items"] = items;
    d["covered"] = covered;
    d["errors"] = errors;
    d["first_error"] = first;
    return d;
  }
};

void mark(std::vector<uint8_t>& marks, int64_t i) {
  if (marks[i] < 255) ++marks[i];
}

// --- the row kernels -------------------------------------------------------------------------------------------

void audit_row_map(const RowsPlan& p, int64_t n, Audit& a) {
  a.bound(p.block, 32, p.max_threads, "block");
  a.bound(p.max_threads, 32, kMaxBlock, "max_threads");
  a.bound(p.grid, 0, kMaxGrid, "grid");
  if (p.threads % gm::kWarp != 0 || p.block % gm::kWarp != 0) {
    a.fail("threads ", p.threads, " / block ", p.block, " not whole warps");
  }
  if (p.rows_per_block * p.threads != p.block) a.fail("block ", p.block, " != rows_per_block x threads");
  std::vector<uint8_t> marks(static_cast<size_t>(n) * p.threads, 0);
  for (int64_t b = 0; b < p.grid; ++b) {
    int warp_local = 0;
    for (int th = 0; th < p.block; ++th) {
      ++a.threads;
      const RowThread r = row_thread(p, b, th, n);
      // The warp's shuffles reduce one row: all 32 lanes must serve the row of its lane 0.
      if (th % gm::kWarp == 0) warp_local = r.local;
      if (r.local != warp_local) a.fail("block ", b, " thread ", th, ": its warp spans two rows");
      if (r.local < 0 || r.local >= p.rows_per_block) {
        a.fail("block ", b, " thread ", th, ": local row ", r.local, " outside [0, ", p.rows_per_block, ")");
      }
      if (r.t < 0 || r.t >= p.threads) a.fail("block ", b, " thread ", th, ": row thread ", r.t);
      if (r.live != (r.row >= 0 && r.row < n)) a.fail("block ", b, " thread ", th, ": live flag of row ", r.row);
      if (r.live) mark(marks, r.row * p.threads + r.t);
    }
  }
  a.coverage(marks, "(row x thread)");
}

// The thread -> element map of a row of v: every element of the layout's span [0, threads * chunks * 8) covered once
// (the kernels mask j >= v, so every v up to the span is then covered once), and the span reaching v.
void audit_elements(const RowsPlan& p, int64_t v, Audit& a) {
  const int64_t span = int64_t{p.threads} * p.chunks * gm::kVec;
  if (span < v) a.fail("the layout's ", span, " elements do not reach V = ", v);
  std::vector<uint8_t> marks(static_cast<size_t>(span), 0);
  for (int t = 0; t < p.threads; ++t) {
    for (int c = 0; c < p.chunks; ++c) {
      for (int u = 0; u < gm::kVec; ++u) {
        const int64_t j = gm::element(c, t, u, p.threads);
        if (j < 0 || j >= span) {
          a.fail("thread ", t, " chunk ", c, " maps to element ", j, " outside [0, ", span, ")");
        } else {
          mark(marks, j);
        }
      }
    }
  }
  a.coverage(marks, "element");
  // A kernel keeping K chunks in registers handles chunks c < K only: K must reach every chunk, and name a template.
  for (const int kept : {p.kept, p.kept_train}) {
    if (kept != 0 && kept < p.chunks) a.fail("kept ", kept, " chunks of ", p.chunks, " in registers");
    if (kept != 0 && p.max_threads != kRowBlock) a.fail("registers kept in a ", p.max_threads, "-thread kernel");
  }
  if (p.kept != 0 && p.kept != 1 && p.kept != 2 && p.kept != 4 && p.kept != gm::kMaxChunks) a.fail("kept ", p.kept);
  if (p.kept_train != 0 && p.kept_train != 1 && p.kept_train != 2 && p.kept_train != 4) {
    a.fail("kept_train ", p.kept_train);
  }
}

// Every shared-memory access of one block of each row kernel (the pattern is the same in every block): inside the
// allocation, and each byte touched by the threads of one row only (and for one array only).
void audit_rows_smem(const RowsPlan& p, Audit& a) {
  for (const RowKernel kernel : {RowKernel::kForward, RowKernel::kTrain, RowKernel::kBackward}) {
    const RowsSmem s = rows_smem(p, kernel);
    if (s.bytes > kDefaultSmemBytes) a.fail("shared memory ", s.bytes, " bytes above the default ", kDefaultSmemBytes);
    std::vector<int> owner(static_cast<size_t>(s.bytes), -1);
    auto access = [&](int64_t offset, int64_t size, int row_key, int th) {
      if (offset < 0 || offset + size > s.bytes) {
        a.fail("kernel ", static_cast<int>(kernel), " thread ", th, ": bytes [", offset, ", ", offset + size,
               ") outside the ", s.bytes, "-byte allocation");
        return;
      }
      for (int64_t i = offset; i < offset + size; ++i) {
        if (owner[i] == -1) owner[i] = row_key;
        if (owner[i] != row_key) {
          a.fail("kernel ", static_cast<int>(kernel), " thread ", th, ": shared byte ", i, " also used by another ",
                 "row or array");
          return;
        }
      }
    };
    if (p.warps == 1) continue;  // one warp per row: its shuffles do it all
    for (int th = 0; th < p.block; ++th) {
      const RowThread r = row_thread(p, 0, th, 0);
      const int parts_key = 2 * r.local, sums_key = 2 * r.local + 1;
      for (int i = 0; i < p.warps; ++i) {  // lane 0 writes entry w; every thread reads entries 0 .. warps-1
        if (s.parts > 0) access(parts_index(p, r.local, i) * int64_t{sizeof(gm::MaxSum)}, sizeof(gm::MaxSum),
                                parts_key, th);
        for (int q = 0; s.sums > 0 && q < kMaxScaleSlots; ++q) {
          access(s.sums_offset_bytes + sums_index(p, r.local, i, q) * int64_t{sizeof(float)}, sizeof(float), sums_key,
                 th);
        }
      }
    }
  }
}

// --- grid-stride loops -----------------------------------------------------------------------------------------

// Items [0, work) of a StridePlan: each visited once. `touch(i)`: what item i reads and writes, checked by the caller.
template <class Touch>
void audit_stride(const StridePlan& p, int64_t work, Audit& a, Touch touch) {
  a.bound(p.grid, 1, kMaxGrid, "grid");
  a.bound(p.block, 32, kMaxBlock, "block");
  std::vector<uint8_t> marks(static_cast<size_t>(work), 0);
  for (int64_t b = 0; b < p.grid; ++b) {
    for (int th = 0; th < p.block; ++th) {
      ++a.threads;
      for (int64_t i = p.first(b, th); i < work; i += p.step()) {
        if (i < 0) {
          a.fail("block ", b, " thread ", th, " visits item ", i);
          break;
        }
        mark(marks, i);
        touch(i);
      }
    }
  }
  a.coverage(marks, "item");
}

// The tables' gradient: (segment, column) over segments x v, blocks striding the segments, threads the columns.
void audit_table_grad(int64_t segments, int64_t v, Audit& a) {
  const TableGradPlan p = table_grad_plan(segments);
  a.bound(p.grid, 0, kMaxGrid, "grid");
  a.bound(p.block, 32, kMaxBlock, "block");
  std::vector<uint8_t> segs(static_cast<size_t>(segments), 0), cols(static_cast<size_t>(v), 0);
  for (int64_t b = 0; b < p.grid; ++b) {
    a.threads += p.block;
    for (int64_t s = b; s < segments; s += p.grid) mark(segs, s);
  }
  for (int th = 0; th < p.block; ++th) {
    for (int64_t j = th; j < v; j += p.block) mark(cols, j);
  }
  a.coverage(segs, "segment");
  if (segments > 0) a.coverage(cols, "column");
}

// GPTQ's column loop over columns [i1, i1 + nb) of rows x cols: every row once, its slab slice private to its thread
// and inside the allocation, its global indices inside W and U; the slab within the device's opt-in shared memory.
void audit_gptq(int64_t rows, int64_t cols, int64_t i1, int64_t nb, int64_t smem_limit, Audit& a) {
  const GptqPlan p = gptq_plan(rows, nb);
  a.bound(p.grid, 0, kMaxGrid, "grid");
  a.bound(p.smem_bytes, 0, smem_limit, "shared memory bytes");
  if (i1 < 0 || nb < 1 || i1 + nb > cols) a.fail("columns [", i1, ", ", i1 + nb, ") outside [0, ", cols, ")");
  std::vector<uint8_t> marks(static_cast<size_t>(rows), 0);
  for (int64_t b = 0; b < p.grid; ++b) {
    for (int th = 0; th < p.block; ++th) {
      ++a.threads;
      const int64_t r = gptq_row(p, b, th);
      if (r < 0) a.fail("block ", b, " thread ", th, " maps to row ", r);
      if (r >= 0 && r < rows) mark(marks, r);
    }
  }
  a.coverage(marks, "row");
  // The slab: thread t owns [t * pitch, t * pitch + nb), inside [0, kGptqRows * pitch), shared with no other thread.
  const int64_t floats = p.smem_bytes / static_cast<int64_t>(sizeof(float));
  std::vector<int> owner(static_cast<size_t>(floats), -1);
  for (int th = 0; th < p.block; ++th) {
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t i = gptq_slab_index(p, th, j);
      if (i < 0 || i >= floats) {
        a.fail("thread ", th, " column ", j, ": slab index ", i, " outside [0, ", floats, ")");
        break;
      }
      if (owner[i] != -1 && owner[i] != th) a.fail("slab index ", i, " shared by threads ", owner[i], " and ", th);
      owner[i] = th;
    }
  }
  // Global indices of the last row and the block's corner of U (the largest any thread forms).
  if (rows > 0 && (rows - 1) * cols + i1 + nb - 1 >= rows * cols) a.fail("W index past the matrix");
  if ((i1 + nb - 1) * cols + i1 + nb - 1 >= cols * cols) a.fail("U index past the factor");
}

py::dict rows_plan_dict(int64_t n, int64_t v) {
  const RowsPlan p = rows_plan(n, v);
  py::dict d;
  d["threads"] = p.threads;
  d["chunks"] = p.chunks;
  d["warps"] = p.warps;
  d["rows_per_block"] = p.rows_per_block;
  d["block"] = p.block;
  d["grid"] = p.grid;
  d["kept"] = p.kept;
  d["kept_train"] = p.kept_train;
  d["max_threads"] = p.max_threads;
  d["smem_forward"] = rows_smem(p, RowKernel::kForward).bytes;
  d["smem_train"] = rows_smem(p, RowKernel::kTrain).bytes;
  d["smem_backward"] = rows_smem(p, RowKernel::kBackward).bytes;
  return d;
}

py::dict stride_dict(const StridePlan& p) {
  py::dict d;
  d["grid"] = p.grid;
  d["block"] = p.block;
  return d;
}

bool has(const std::string& parts, const char* part) { return parts == "all" || parts.find(part) != std::string::npos; }

void check_shape(int64_t value, const char* name) {
  if (value < 0) throw py::value_error(std::string(name) + " must be >= 0");
}

}  // namespace

void register_launch_audit(py::module_& m) {
  m.def("launch_plan", [](const std::string& family, int64_t n, int64_t v, int64_t nb, int sms) -> py::dict {
    check_shape(n, "n");
    if (family == "rows") return rows_plan_dict(n, v);
    if (family == "gptq") {
      const GptqPlan p = gptq_plan(n, nb);
      py::dict d;
      d["grid"] = p.grid;
      d["block"] = p.block;
      d["pitch"] = p.pitch;
      d["smem_bytes"] = p.smem_bytes;
      return d;
    }
    if (family == "table_grad") {
      const TableGradPlan p = table_grad_plan(n);
      return stride_dict({p.grid, p.block});
    }
    if (family == "pack_int6" || family == "unpack_int6") {
      return stride_dict(stride_plan((n + 3) / 4, kStrideBlock, sms));
    }
    if (family == "sparse" || family == "target_bytes" || family == "mlp_act") {
      return stride_dict(stride_plan(n, kStrideBlock, sms));
    }
    throw py::value_error("launch_plan: unknown family '" + family + "'");
  }, py::arg("family"), py::arg("n"), py::arg("v") = 0, py::arg("nb") = 0, py::arg("sms") = 132);

  m.def("audit_launch_plan", [](const std::string& family, int64_t n, int64_t v, int64_t cols, int64_t i1, int64_t nb,
                                int sms, int64_t smem_limit, const std::string& parts) -> py::dict {
    check_shape(n, "n");
    check_shape(v, "v");
    Audit a;
    if (family == "rows") {
      if (v < 1 || v > gm::kMaxVocab) throw py::value_error("audit_launch_plan: v must be in [1, 65536]");
      const RowsPlan p = rows_plan(n, v);
      if (has(parts, "rows")) audit_row_map(p, n, a);
      if (has(parts, "elements")) audit_elements(p, v, a);
      if (has(parts, "smem")) audit_rows_smem(p, a);
    } else if (family == "table_grad") {
      audit_table_grad(n, v, a);
    } else if (family == "gptq") {
      audit_gptq(n, cols, i1, nb, smem_limit, a);
    } else if (family == "pack_int6" || family == "unpack_int6") {
      // Group g reads values 4g .. 4g+3 (those below n) and writes bytes 3g .. 3g+2 (the inverse for unpacking).
      const int64_t groups = (n + 3) / 4;
      audit_stride(stride_plan(groups, kStrideBlock, sms), groups, a, [&](int64_t g) {
        if (3 * g + 2 >= 3 * groups) a.fail("group ", g, " writes byte ", 3 * g + 2, " of ", 3 * groups);
        if (4 * g >= n) a.fail("group ", g, " holds no value of ", n);
      });
    } else if (family == "sparse" || family == "target_bytes" || family == "mlp_act") {
      audit_stride(stride_plan(n, kStrideBlock, sms), n, a, [](int64_t) {});
    } else {
      throw py::value_error("audit_launch_plan: unknown family '" + family + "'");
    }
    return a.result();
  }, py::arg("family"), py::arg("n"), py::arg("v") = 0, py::arg("cols") = 0, py::arg("i1") = 0, py::arg("nb") = 0,
     py::arg("sms") = 132, py::arg("smem_limit") = kH100OptinSmem, py::arg("parts") = "all");

#ifdef GOLF_WITH_CUTLASS_MLP
  // The fused MLP GEMMs as CUTLASS built them, known without a device: tile, cluster, threads, shared memory
  // (against the H100's opt-in limit), and CUTLASS's own verdict on an [m, n, k] problem with its workspace.
  m.def("mlp_gemm", [](const std::string& kernel, int64_t m_, int64_t n, int64_t k) -> py::dict {
    const bool up = kernel == "up";
    if (!up && kernel != "down_grad") throw py::value_error("mlp_gemm: kernel must be 'up' or 'down_grad'");
    const kernels::GemmFacts f = up ? kernels::mlp_up_facts() : kernels::mlp_down_grad_facts();
    const bool ok = up ? kernels::mlp_up_can_implement(m_, n, k) : kernels::mlp_down_grad_can_implement(m_, n, k);
    py::dict d;
    d["tile"] = py::make_tuple(f.tile_m, f.tile_n, f.tile_k);
    d["cluster"] = py::make_tuple(f.cluster_m, f.cluster_n);
    d["threads"] = f.threads;
    d["smem_bytes"] = f.smem_bytes;
    d["smem_limit"] = kH100OptinSmem;
    d["can_implement"] = ok;
    d["workspace_bytes"] = ok ? static_cast<int64_t>(up ? kernels::mlp_up_workspace(m_, n, k)
                                                        : kernels::mlp_down_grad_workspace(m_, n, k))
                              : int64_t{-1};
    return d;
  }, py::arg("kernel"), py::arg("m"), py::arg("n"), py::arg("k"));
#endif
}

}  // namespace golf
