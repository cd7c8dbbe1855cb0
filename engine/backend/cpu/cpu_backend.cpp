#include "engine/backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/backend/cpu/kernels.h"
#include "engine/backend/cpu/panel8.h"
#include "engine/backend/cpu/step_queues.h"
#include "engine/core/check.h"
#include "engine/core/cpu_features.h"
#include "quant/blocks.h"

namespace tessera {

namespace {

using cpu::kGemmMR;
using cpu::kGemmNR;

// GEMM blocking. A kKc x kGemmNR fp32 panel (16 KiB) stays in L1 while every row of an n block streams past it;
// an n block of x (kMc rows x kKc) is small enough to stay in L2 across the panels of one thread.
constexpr int64_t kKc = 256;
constexpr int kMc = 96;  // multiple of every tile height
static_assert(kMc % kGemmMR == 0 && kMc % cpu::kMaxGemmMR == 0);

// Below this many elements an element-wise op is not worth waking the pool for.
constexpr int64_t kMinParallelElems = 1 << 15;

template <typename T>
struct AlignedAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};  // cache line: no false sharing, aligned vector loads
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
  bool operator==(const AlignedAllocator&) const = default;
};
using AlignedFloats = std::vector<float, AlignedAllocator<float>>;
using AlignedInt16s = std::vector<int16_t, AlignedAllocator<int16_t>>;

// Scratch owned by one pool slot; fixed sizes (set by the blocking constants), allocated once.
struct SlotScratch {
  AlignedFloats panel = AlignedFloats(static_cast<size_t>(kKc) * kGemmNR);
  AlignedFloats tile = AlignedFloats(static_cast<size_t>(kMc) * kGemmNR);     // C of ragged, fused and int8 tiles
  AlignedFloats init = AlignedFloats(kGemmNR);                                // zero-padded bias of a ragged tile
  AlignedInt16s panel16 = AlignedInt16s(static_cast<size_t>(kKc) * kGemmNR);  // int8 GEMM weight panel
  AlignedFloats wscale = AlignedFloats(kGemmNR);                              // its rows' Q8 scales
  AlignedFloats attend;  // K/V block copies; grown (outside the hot loop) when a wider batch span appears
};
static_assert(kKc % cpu::kQ8ActBlock == 0 && kMc % cpu::kGemmI8MR == 0);

alignas(64) constexpr float kZeros[kGemmNR] = {};

// [begin, end) of part t of `total` units split evenly into `parts`.
struct Range {
  int64_t begin, end;
};
Range split(int64_t total, int t, int parts) {
  return {total * t / parts, total * (t + 1) / parts};
}

float silu_mul(float g, float u) {
  return g / (1.0f + std::exp(-g)) * u;
}

// Runs fn(slot) for slot in [0, n_slots) on the pool, each slot on exactly one thread at a time: a chunk of a
// parallel_for over n_slots <= pool size units holds at most one unit, so the slot index names its scratch.
template <typename Fn>
void for_each_slot(ThreadPool& pool, int n_slots, Fn&& fn) {
  if (n_slots <= 1) {
    fn(0);
    return;
  }
  pool.parallel_for(n_slots, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) fn(static_cast<int>(t));
  });
}

}  // namespace

// Activations quantized to int8 for one op call: n rows of `blocks` BlockQ8Act each, and for the integer GEMM the
// same values widened to int16 (rows of 32 * blocks) with their scales. Grown when a larger call comes, never in
// the hot loops.
struct ActScratch {
  std::vector<quant::BlockQ8Act> q;
  AlignedInt16s q16;
  AlignedFloats scales;
  int64_t blocks = 0;  // per row
  // bf16 activations (BF16 weights with set_bf16_activations): the rows as bf16 bits for the bf16 x bf16 kernels,
  // or as bf16 values in fp32 for the fp32-activation kernels of sets without those.
  std::vector<uint16_t, AlignedAllocator<uint16_t>> bf16;
  AlignedFloats rounded;
};

struct CpuBackend::Impl {
  explicit Impl(int threads) : steps(threads) {}
  const cpu::Kernels* k = nullptr;
  cpu::StepQueues steps;           // the batch-1 decode drivers' per-slot runs
  std::vector<SlotScratch> slots;  // one per pool slot
  ActScratch act;
  std::vector<BackendBuffer> panels;  // the panel-layout copies upload() made
};

CpuBackend::CpuBackend(int n_threads, CpuKernels kernels)
    : pool_(n_threads <= 0 ? ThreadPool::default_threads() : n_threads), impl_(std::make_unique<Impl>(pool_.size())) {
  const bool avx2 = cpu_features().has_avx2_fma();
  const bool avx512 = cpu_features().has_avx512();
  const bool avx512_bf16 = cpu_features().has_avx512_bf16();
  if (kernels == CpuKernels::kAvx2 && !avx2) {
    throw Error("AVX2 kernels requested, but this CPU (or TESSERA_CPU_FEATURES) does not offer AVX2+FMA+F16C");
  }
  if (kernels == CpuKernels::kAvx512 && !avx512) {
    throw Error(
        "AVX-512 kernels requested, but this CPU (or TESSERA_CPU_FEATURES) does not offer "
        "AVX-512 F+BW+VL+VNNI with AVX2+FMA+F16C");
  }
  if (kernels == CpuKernels::kAvx512Bf16 && !avx512_bf16) {
    throw Error(
        "AVX-512 BF16 kernels requested, but this CPU (or TESSERA_CPU_FEATURES) does not offer AVX512_BF16 with "
        "the AVX-512 set's features");
  }
  if (kernels == CpuKernels::kAvx512Bf16 || (kernels == CpuKernels::kAuto && avx512_bf16)) {
    impl_->k = &cpu::avx512_bf16_kernels();
  } else if (kernels == CpuKernels::kAvx512 || (kernels == CpuKernels::kAuto && avx512)) {
    impl_->k = &cpu::avx512_kernels();
  } else if (kernels == CpuKernels::kAvx2 || (kernels == CpuKernels::kAuto && avx2)) {
    impl_->k = &cpu::avx2_kernels();
  } else {
    impl_->k = &cpu::portable_kernels();
  }
  impl_->slots.resize(static_cast<size_t>(pool_.size()));
}

CpuBackend::~CpuBackend() = default;

// Q4/Q4A weights go into the panel layout their decode kernel streams (panel8.h); everything else is read in place.
Matrix CpuBackend::upload(const Matrix& host) {
  if (!cpu::panel8_applies(host)) return host;
  BackendBuffer& buf = impl_->panels.emplace_back(allocate_host_buffer(cpu::panel8_bytes(host)));
  return cpu::repack_panel8(host, static_cast<uint8_t*>(buf.data()), pool_);
}

std::string CpuBackend::name() const {
  const int t = pool_.size();
  return std::string("cpu(") + impl_->k->name + ", " + std::to_string(t) + (t == 1 ? " thread)" : " threads)");
}

// ---- matmul ----

namespace {

// Batched decode through Kernels::dot2xm (X = float) or bdot2xm (X = uint16_t, bf16 activations): x rows i..i+m-1
// against two weight rows. fn is null for weight types without the tile kernel (the drivers then keep to dotR /
// dotR2).
template <typename X>
struct RowTile {
  using Fn = void (*)(const X*, int64_t, int, const void* const*, const void* const*, int64_t, float*, int64_t);
  Fn fn = nullptr;
  const X* x = nullptr;
  int64_t cols = 0;
  int max_rows = 0;  // most x rows per call (Kernels::dot_tile_rows)

  // Worth it from three rows on (two go through dotR2 as well).
  bool applies(int n) const { return fn != nullptr && n >= 3; }
  void operator()(int i, int m, const void* const* rows, const void* const* next, float* out, int64_t ldo) const {
    fn(x + i * cols, cols, m, rows, next, cols, out, ldo);
  }
};

// Tiled decode blocking: x rows are taken kTileXRows at a time (their tiles stay in L2), and weight rows in blocks of
// about kTileBlockBytes that stay in L2 while every tile of those x rows passes over them, so the matrix still comes
// from memory once per kTileXRows rows. (Block sizes from 12 to 96 KiB measured the same on a Zen 3 EPYC.)
constexpr int kTileXRows = 96;
constexpr size_t kTileBlockBytes = size_t{48} << 10;
int64_t tile_block_rows(size_t row_bytes) {
  return std::max<int64_t>(2, static_cast<int64_t>(kTileBlockBytes / row_bytes) & ~int64_t{1});
}

// The tiled decode's order of calls over weight units [begin, end) (rows, `step` per call, or hidden units) and x rows
// [0, n): visit(i, m, unit, first) for x rows i..i+m-1, where first marks the first tile over a block in this
// pass (the one that prefetches the next block, unit + block, while it runs).
template <typename Visit>
void for_each_tile(int n, int tile_rows, int64_t begin, int64_t end, int64_t step, int64_t block, const Visit& visit) {
  for (int nb = 0; nb < n; nb += kTileXRows) {
    const int ne = std::min(n, nb + kTileXRows);
    for (int64_t ub = begin; ub < end; ub += block) {
      const int64_t ue = std::min(ub + block, end);
      for (int i = nb; i < ne; i += tile_rows) {
        const int m = std::min(tile_rows, ne - i);
        for (int64_t u = ub; u < ue; u += step) visit(i, m, u, i == nb);
      }
    }
  }
}

// Batch-1 decode reads each thread's part of a matrix as S sequential streams: the part's first S * per units (rows,
// hidden units or panels) are cut into S runs of `per` walked in lockstep, step k taking unit k of each run
// (stream_units). At one thread a single stream of short row groups or panels kept too few cache misses in flight to
// reach the memory bandwidth (Intel VM, 1.1B int8 decode: four streams of 2 KiB rows read 12.0 GB/s where four
// adjacent rows at a time read 9.3). The steps go through cpu::StepQueues, so a thread that finishes early takes
// the last steps of the others.
template <int S>
void stream_units(int64_t begin, int64_t per, int64_t k, int64_t* at) {
  for (int s = 0; s < S; ++s) at[s] = begin + s * per + k;
}
// Steps per StepQueues block: about 32 KiB of weights, so a block is a few microseconds of streaming.
int64_t steal_block_steps(int64_t step_bytes) {
  return std::max<int64_t>(1, (int64_t{32} << 10) / std::max<int64_t>(1, step_bytes));
}

// One step's R weight rows against x rows 0..n-1, two x rows per call where dotR2 can (the prefetch hint `pre` goes
// with the first call only); emit(i, d) gets x row i's R results.
template <int R, typename DotR, typename DotR2, typename Emit>
void dot_x_rows(int n, const void* const* rows, const void* const* pre, const DotR& dotR, const DotR2& dotR2,
                const Emit& emit) {
  float d[2][R];
  for (int i = 0; i < n;) {
    const int m = i + 2 <= n ? 2 : 1;
    if (m == 2) {
      dotR2(i, rows, i == 0 ? pre : nullptr, d[0], R);
    } else {
      dotR(i, rows, i == 0 ? pre : nullptr, d[0]);
    }
    for (int e = 0; e < m; ++e) emit(i + e, d[e]);
    i += m;
  }
}

// Decode: x rows (one per sequence of a batch step, or a single one) against every weight row.
// Memory-bound, so threads take contiguous row ranges (each streams its own part of the matrix) and the kernel
// reads R weight rows per call, one from each of R streams over the range (stream_units; the threads share the
// calls through StepQueues); each group of R rows is run against every x row while it is still in L1/L2, so the
// matrix comes from memory once per step whatever the batch. dotR(i, rows, next, out) and dot1(i, row) wrap the
// kernel of the weight type and activation form (fp32 or int8 blocks) for x row i, dotR2(i, rows, next, out, ldo)
// for x rows i and i + 1 (out and out + ldo); next names the row after each of the R in its stream (prefetch
// only), or is null at the streams' ends. y is [n][w.rows].
// With three or more x rows and a tile kernel, the rows the R-row kernel would take go through dot2xm instead, in
// blocks of weight rows with every tile of x rows run against a block (same arithmetic per row, fewer weight
// conversions and loads per FMA); the ragged rows stay with dot1 either way.
template <int R, typename DotR, typename DotR2, typename Dot1, typename Tile>
void gemv(ThreadPool& pool, cpu::StepQueues& queues, const Matrix& w, int n, const float* bias, float* y,
          const DotR& dotR, const DotR2& dotR2, const Dot1& dot1, const Tile& tile) {
  static_assert(R % 2 == 0);
  const int64_t groups = (w.rows + R - 1) / R;
  const int n_slots = static_cast<int>(std::min<int64_t>(pool.size(), groups));
  const int64_t block = tile_block_rows(w.row_bytes());
  const bool tiled = tile.applies(n);
  // Slot t's rows; its full groups [begin, begin + R * per) go through the tile kernel or as R streams.
  const auto rows_of = [&](int t) {
    const Range g = split(groups, t, n_slots);
    return Range{g.begin * R, std::min(w.rows, g.end * R)};
  };
  const auto per_of = [&](const Range& rr) { return (rr.end - rr.begin) / R; };
  for (int t = 0; t < n_slots; ++t) queues.reset(t, tiled ? 0 : per_of(rows_of(t)));
  const auto put = [&](int i, int64_t r, float v) { y[i * w.rows + r] = bias != nullptr ? v + bias[r] : v; };
  const auto step = [&](int t, int64_t k) {
    const Range rr = rows_of(t);
    const int64_t per = per_of(rr);
    int64_t at[R];
    stream_units<R>(rr.begin, per, k, at);
    const void* rows[R];
    const void* next[R];  // prefetch only
    for (int j = 0; j < R; ++j) {
      rows[j] = w.row(at[j]);
      next[j] = w.row(at[j] + 1);
    }
    const void* const* pre = k + 1 < per ? next : nullptr;
    dot_x_rows<R>(n, rows, pre, dotR, dotR2, [&](int i, const float* d) {
      for (int j = 0; j < R; ++j) put(i, at[j], d[j]);
    });
  };
  for_each_slot(pool, n_slots, [&](int t) {
    const Range rr = rows_of(t);
    const int64_t r_full = rr.begin + per_of(rr) * R;
    if (tiled) {
      for_each_tile(n, tile.max_rows, rr.begin, r_full, 2, block, [&](int i, int m, int64_t p, bool first) {
        const void* rows[2] = {w.row(p), w.row(p + 1)};
        const void* ahead[2] = {w.row(p + block), w.row(p + block + 1)};  // prefetch only
        tile(i, m, rows, first && p + block + 2 <= r_full ? ahead : nullptr, y + i * w.rows + p, w.rows);
      });
      if (bias != nullptr) {
        for (int i = 0; i < n; ++i)
          for (int64_t r = rr.begin; r < r_full; ++r) y[i * w.rows + r] += bias[r];
      }
    }
    for (int64_t r = r_full; r < rr.end; ++r) {
      for (int i = 0; i < n; ++i) put(i, r, dot1(i, w.row(r)));
    }
    cpu::run_steps(queues, t, n_slots, steal_block_steps(R * static_cast<int64_t>(w.row_bytes())), step);
  });
}

// Decode over panel-layout weights (panel8.h): visit(q, i) for panel q (rows 8q..8q+7) and x row i. Threads take
// contiguous panel ranges (each streams its own part of the matrix) and every x row is run against a panel while it
// is in L1.
template <typename Visit>
void for_each_panel(ThreadPool& pool, int64_t rows, int n, const Visit& visit) {
  const int64_t panels = (rows + cpu::kPanelRows - 1) / cpu::kPanelRows;
  const int n_slots = static_cast<int>(std::min<int64_t>(pool.size(), panels));
  for_each_slot(pool, n_slots, [&](int t) {
    const Range p = split(panels, t, n_slots);
    for (int64_t q = p.begin; q < p.end; ++q)
      for (int i = 0; i < n; ++i) visit(q, i);
  });
}

// Batch-1 decode over panel-layout weights, S panels at a time: each thread's contiguous panel range is cut into S
// streams (stream_units), visit(q) getting S panel indices (q[s] in stream s), single(q) the panels left over. The
// streams are for the kernels' multi-panel forms (Kernels::qdot_panel4).
template <int S, typename VisitS, typename Visit1>
void for_each_panel_streams(ThreadPool& pool, cpu::StepQueues& queues, int64_t rows, int64_t step_bytes,
                            const VisitS& visit, const Visit1& single) {
  const int64_t panels = (rows + cpu::kPanelRows - 1) / cpu::kPanelRows;
  const int n_slots = static_cast<int>(std::min<int64_t>(pool.size(), panels));
  for (int t = 0; t < n_slots; ++t) {
    const Range p = split(panels, t, n_slots);
    queues.reset(t, (p.end - p.begin) / S);
  }
  for_each_slot(pool, n_slots, [&](int t) {
    const Range p = split(panels, t, n_slots);
    const int64_t part = (p.end - p.begin) / S;
    for (int64_t r = p.begin + S * part; r < p.end; ++r) single(r);
    cpu::run_steps(queues, t, n_slots, steal_block_steps(step_bytes), [&](int u, int64_t k) {
      const Range pu = split(panels, u, n_slots);
      int64_t q[S];
      stream_units<S>(pu.begin, (pu.end - pu.begin) / S, k, q);
      visit(q);
    });
  });
}

// GEMM packing of weight rows [r0, r0 + nr) (nr <= width), columns [k0, k0 + kc), into panel columns [0, width):
// canonical rows through Kernels::pack, panel-layout ones (r0 a multiple of 8) a panel at a time. Both zero the
// columns past nr.
void pack_rows(const cpu::Kernels& k, const Matrix& w, int64_t r0, int nr, int width, int64_t k0, int64_t kc,
               float* panel) {
  const int dt = static_cast<int>(w.dtype);
  if (w.layout != MatrixLayout::kPanels8) {
    k.pack[dt](w.row(r0), w.row_bytes(), w.group, nr, width, k0, kc, panel);
    return;
  }
  for (int h = 0; h < width; h += cpu::kPanelRows) {
    if (h < nr) {
      k.pack_panel[dt](w.row(r0 + h), w.group, k0, kc, panel + h);
    } else {
      for (int64_t kk = 0; kk < kc; ++kk) std::fill_n(panel + kk * kGemmNR + h, cpu::kPanelRows, 0.0f);
    }
  }
}

// How a GEMM-shaped op splits over threads: by output tiles when there are enough of them, else by x rows.
struct GemmSplit {
  int n_slots;
  bool by_tiles;
};
GemmSplit plan_gemm(int threads, int64_t tiles, int n) {
  const int64_t row_groups = (n + kGemmMR - 1) / kGemmMR;
  if (tiles >= threads || tiles >= row_groups) return {static_cast<int>(std::min<int64_t>(threads, tiles)), true};
  return {static_cast<int>(std::min<int64_t>(threads, row_groups)), false};
}

// The activation rows [n_begin, n_end) and weight tiles [t_begin, t_end) that slot t of the plan computes.
struct GemmPart {
  int64_t n_begin, n_end, t_begin, t_end;
};
GemmPart gemm_part_of(const GemmSplit& plan, int t, int64_t tiles, int n) {
  if (plan.by_tiles) {
    const Range r = split(tiles, t, plan.n_slots);
    return {0, n, r.begin, r.end};
  }
  const Range g = split((n + kGemmMR - 1) / kGemmMR, t, plan.n_slots);
  return {g.begin * kGemmMR, std::min<int64_t>(n, g.end * kGemmMR), 0, tiles};
}

// bf16 activations: x's `count` values rounded to bf16 (to nearest even) into `out`, as bf16 bits (Out = uint16_t,
// for the bf16 x bf16 kernels) or as those values in fp32 (Out = float, for the fp32-activation kernels). Every
// kernel set rounds with this one function, so the sets differ only in how they sum the (exact) products.
template <typename Out>
const Out* round_to_bf16(ThreadPool& pool, const float* x, int64_t count,
                         std::vector<Out, AlignedAllocator<Out>>& out) {
  if (out.size() < static_cast<size_t>(count)) out.resize(static_cast<size_t>(count));  // never in the hot loops
  Out* o = out.data();
  const auto run = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint16_t h = f32_to_bf16(x[i]);
      if constexpr (std::is_same_v<Out, uint16_t>) {
        o[i] = h;
      } else {
        o[i] = bf16_to_f32(h);
      }
    }
  };
  if (count < kMinParallelElems) {
    run(0, count);
  } else {
    pool.parallel_for(count, 4096, run);
  }
  return o;
}

// One k block [kb, kb + kc) of a 16-wide weight tile packed into s.panel, against x rows [row0, row0 + mb) (K values
// apart): c[i*ldc + j] for i < mb starts from init (null: from c) as in Kernels::gemm_tile.
void gemm_block(const cpu::Kernels& k, SlotScratch& s, const float* x, int64_t K, int64_t row0, int64_t mb, int64_t kb,
                int64_t kc, const float* init, float* c, int64_t ldc) {
  for (int64_t i = 0; i < mb; i += k.gemm_tile_rows) {
    const int mr = static_cast<int>(std::min<int64_t>(k.gemm_tile_rows, mb - i));
    k.gemm_tile(x + (row0 + i) * K + kb, K, mr, s.panel.data(), kc, init, c + i * ldc, ldc);
  }
}

// Prefill: y[n][rows] = x[n][K] w^T (+ bias). For each 16-row tile of w and k block, the weights are converted to
// an fp32 panel once and reused by every x row of the n block (6 rows per micro-kernel call).
void gemm_part(const cpu::Kernels& k, SlotScratch& s, const float* x, int64_t n_begin, int64_t n_end,
               int64_t tile_begin, int64_t tile_end, const Matrix& w, const float* bias, float* y) {
  const int64_t K = w.cols, rows = w.rows;
  for (int64_t nb = n_begin; nb < n_end; nb += kMc) {
    const int64_t mb = std::min<int64_t>(kMc, n_end - nb);
    for (int64_t rt = tile_begin; rt < tile_end; ++rt) {
      const int64_t r0 = rt * kGemmNR;
      const int nr = static_cast<int>(std::min<int64_t>(kGemmNR, rows - r0));
      const bool full = nr == kGemmNR;
      // A ragged tile computes all 16 columns into scratch (padding rows are zero) and copies out the valid ones.
      const float* init = kZeros;
      if (bias != nullptr) {
        if (full) {
          init = bias + r0;
        } else {
          std::fill(s.init.begin(), s.init.end(), 0.0f);
          std::copy(bias + r0, bias + r0 + nr, s.init.begin());
          init = s.init.data();
        }
      }
      float* c = full ? y + nb * rows + r0 : s.tile.data();
      const int64_t ldc = full ? rows : kGemmNR;
      for (int64_t kb = 0; kb < K; kb += kKc) {
        const int64_t kc = std::min(kKc, K - kb);
        pack_rows(k, w, r0, nr, kGemmNR, kb, kc, s.panel.data());
        gemm_block(k, s, x, K, nb, mb, kb, kc, kb == 0 ? init : nullptr, c, ldc);
      }
      if (!full) {
        for (int64_t i = 0; i < mb; ++i) std::copy_n(s.tile.data() + i * kGemmNR, nr, y + (nb + i) * rows + r0);
      }
    }
  }
}

// Quantizes the n activation rows of x (cols values each) into act: BlockQ8Act blocks and, for the integer GEMM
// (widen), the int16 rows and scales. Rows are split over the pool when there are many.
void quantize_rows(ThreadPool& pool, const cpu::Kernels& k, const float* x, int n, int64_t cols, bool widen,
                   ActScratch& act) {
  act.blocks = (cols + cpu::kQ8ActBlock - 1) / cpu::kQ8ActBlock;
  const auto blocks = static_cast<size_t>(act.blocks);
  if (act.q.size() < static_cast<size_t>(n) * blocks) act.q.resize(static_cast<size_t>(n) * blocks);
  if (widen) {
    const size_t values = static_cast<size_t>(n) * blocks * cpu::kQ8ActBlock;
    if (act.q16.size() < values) act.q16.resize(values);
    if (act.scales.size() < static_cast<size_t>(n) * blocks) act.scales.resize(static_cast<size_t>(n) * blocks);
  }
  const auto rows = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      quant::BlockQ8Act* q = act.q.data() + i * act.blocks;
      k.quantize_act(x + i * cols, cols, q);
      if (widen) {
        k.expand_act(q, act.blocks, act.q16.data() + i * act.blocks * cpu::kQ8ActBlock,
                     act.scales.data() + i * act.blocks);
      }
    }
  };
  if (n == 1 || static_cast<int64_t>(n) * cols < kMinParallelElems) {
    rows(0, n);
  } else {
    pool.parallel_for(n, 1, [&](int64_t b, int64_t e) { rows(b, e); });
  }
}

// The integer GEMM packs each 16-row weight tile once for the whole (padded) k extent and then runs every x row
// of the part against it, kGemmI8MR rows per micro-kernel call over all of k: packing (widening and transposing)
// costs a sixth of the micro-kernel's time per panel, too much to repeat for every block of x rows. The panel
// (kp x 16 int16, 64 KiB at k = 2048) stays in L2, and a call's x rows (kGemmI8MR x kp int16) in L1/L2.
// pack_tile(kb, kc) fills panel columns for k in [kb, kb + kc); finish(i, c) consumes the 16 sums of x row i.
template <typename PackTile, typename Finish>
void gemm_i8_tile_rows(const cpu::Kernels& k, SlotScratch& s, const ActScratch& act, int64_t n_begin, int64_t n_end,
                       const PackTile& pack_tile, const Finish& finish) {
  const int64_t kp = act.blocks * cpu::kQ8ActBlock;  // padded k extent
  for (int64_t kb = 0; kb < kp; kb += kKc) pack_tile(kb, std::min(kKc, kp - kb));
  for (int64_t i = n_begin; i < n_end; i += cpu::kGemmI8MR) {
    const int mr = static_cast<int>(std::min<int64_t>(cpu::kGemmI8MR, n_end - i));
    k.gemm_i8_tile(act.q16.data() + i * kp, kp, act.scales.data() + i * act.blocks, act.blocks, mr, s.panel16.data(),
                   kp, true, s.tile.data(), kGemmNR);
    for (int r = 0; r < mr; ++r) finish(i + r, s.tile.data() + r * kGemmNR);
  }
}

// Prefill with Q8 weights and int8 activations: int16 panels and the integer micro-kernel; each output is then
// scaled by its weight row's Q8 scale (and biased).
void gemm_i8_part(const cpu::Kernels& k, SlotScratch& s, const ActScratch& act, int64_t n_begin, int64_t n_end,
                  int64_t tile_begin, int64_t tile_end, const Matrix& w, const float* bias, float* y) {
  const int64_t rows = w.rows;
  const size_t row_bytes = w.row_bytes();
  for (int64_t rt = tile_begin; rt < tile_end; ++rt) {
    const int64_t r0 = rt * kGemmNR;
    const int nr = static_cast<int>(std::min<int64_t>(kGemmNR, rows - r0));
    gemm_i8_tile_rows(
        k, s, act, n_begin, n_end,
        [&](int64_t kb, int64_t kc) {
          k.pack_i8(w.row(r0), row_bytes, w.cols, nr, kGemmNR, kb, kc, s.panel16.data() + kb * kGemmNR,
                    s.wscale.data());
        },
        [&](int64_t i, const float* c) {
          float* yi = y + i * rows + r0;
          for (int j = 0; j < nr; ++j) yi[j] = c[j] * s.wscale[static_cast<size_t>(j)] + (bias ? bias[r0 + j] : 0.0f);
        });
  }
}

// Makes every slot's int16 panel hold kp x kGemmNR values (outside the hot loops; kept for later calls).
// Decode over panel-layout weights: quantizes the n x rows of x to int8 blocks once, and returns dot(i, panel, out):
// the eight dots of one panel of w's type and shape (or another matrix of the same ones) for x row i.
auto panel_dots(ThreadPool& pool, const cpu::Kernels& k, ActScratch& act, const float* x, int n, const Matrix& w) {
  quantize_rows(pool, k, x, n, w.cols, false, act);
  return [qdot = k.qdot_panel[static_cast<int>(w.dtype)], xq = act.q.data(), blocks = act.blocks, cols = w.cols,
          group = w.group](int i, const void* panel, float* out) { qdot(xq + i * blocks, panel, cols, group, out); };
}

void reserve_panels(std::vector<SlotScratch>& slots, int n_slots, int64_t kp) {
  for (int t = 0; t < n_slots; ++t) {
    AlignedInt16s& p = slots[static_cast<size_t>(t)].panel16;
    if (p.size() < static_cast<size_t>(kp) * kGemmNR) p.resize(static_cast<size_t>(kp) * kGemmNR);
  }
}

// Uses int8 activation blocks for this weight? (See the table above CpuBackend::matmul.)
// rowwise: the decode kernels (one x row, or matmul_rows); otherwise the GEMM.
bool uses_int8_activations(const Matrix& w, bool rowwise, ActQuant mode) {
  if (is_sparse24(w.dtype)) return rowwise;  // 2:4 decode: integer dots over the kept values only
  return w.dtype == DType::Q8 ? mode == ActQuant::kInt8 : is_grouped(w.dtype) && rowwise;
}

// Decode (one x row, or matmul_rows): picks the row-dot functors for w's type and activation handling (bf16_dots: the
// set's bf16 x bf16 kernels for a BF16 weight under bf16 activations) and calls
// drive(std::integral_constant<int, R>{}, dotR, dotR2, dot1, tile), where dotR(i, ...) computes R rows per call for
// x row i, dotR2(i, ..., out, ldo) the same for x rows i and i + 1, dot1(i, row) one row, and tile is the batched
// decode tile (RowTile; no kernel for the int8-activation forms). Shared by matmul and
// matmul_silu_mul so both pick kernels the same way. Every x row gets exactly the arithmetic it would get alone, so a
// sequence's logits do not depend on the batch around it.
template <typename Drive>
void dispatch_gemv(ThreadPool& pool, const cpu::Kernels& k, ActScratch& act, const float* x, int n, const Matrix& w,
                   bool int8_act, bool bf16_dots, const Drive& drive) {
  const int dt = static_cast<int>(w.dtype);
  const int64_t cols = w.cols;
  if (bf16_dots) {
    TESSERA_CHECK(w.dtype == DType::BF16 && k.bdot4 != nullptr);
    const uint16_t* xb = round_to_bf16(pool, x, n * cols, act.bf16);
    drive(
        std::integral_constant<int, 4>{},
        [&](int i, const void* const* rows, const void* const* next, float* out) {
          k.bdot4(xb + i * cols, rows, next, cols, out);
        },
        [&](int i, const void* const* rows, const void* const* next, float* out, int64_t ldo) {
          k.bdot4x2(xb + i * cols, cols, rows, next, cols, out, ldo);
        },
        [&](int i, const void* row) { return k.bdot1(xb + i * cols, row, cols); },
        RowTile<uint16_t>{k.bdot2xm, xb, cols, k.dot_tile_rows});
    return;
  }
  if (!int8_act) {
    const auto dot4 = k.dot4[dt];
    const auto dot4x2 = k.dot4x2[dt];
    const auto dot1 = k.dot1[dt];
    drive(
        std::integral_constant<int, 4>{},
        [&](int i, const void* const* rows, const void* const* next, float* out) {
          dot4(x + i * cols, rows, next, cols, out);
        },
        [&](int i, const void* const* rows, const void* const* next, float* out, int64_t ldo) {
          if (dot4x2 != nullptr) {
            dot4x2(x + i * cols, cols, rows, next, cols, out, ldo);
          } else {
            dot4(x + i * cols, rows, next, cols, out);
            dot4(x + (i + 1) * cols, rows, nullptr, cols, out + ldo);
          }
        },
        [&](int i, const void* row) { return dot1(x + i * cols, row, cols); },
        RowTile<float>{k.dot2xm[dt], x, cols, k.dot_tile_rows});
    return;
  }
  quantize_rows(pool, k, x, n, cols, false, act);
  const quant::BlockQ8Act* xq = act.q.data();
  const int64_t blocks = act.blocks;
  const auto qdot1 = [&, f = k.qdot1[dt]](int i, const void* row) { return f(xq + i * blocks, row, cols, w.group); };
  // Integer dots have no two-row kernel: two calls (the weight rows are in cache for the second).
  const auto pair = [](const auto& dotR) {
    return [&dotR](int i, const void* const* rows, const void* const* next, float* out, int64_t ldo) {
      dotR(i, rows, next, out);
      dotR(i + 1, rows, nullptr, out + ldo);
    };
  };
  if (const auto qdot8 = k.qdot8[dt]; qdot8 != nullptr) {
    const auto dotR = [&](int i, const void* const* rows, const void* const* next, float* out) {
      qdot8(xq + i * blocks, rows, next, cols, w.group, out);
    };
    drive(std::integral_constant<int, 8>{}, dotR, pair(dotR), qdot1, RowTile<float>{});
  } else {
    const auto dotR = [&, qdot4 = k.qdot4[dt]](int i, const void* const* rows, const void* const* next, float* out) {
      qdot4(xq + i * blocks, rows, next, cols, w.group, out);
    };
    drive(std::integral_constant<int, 4>{}, dotR, pair(dotR), qdot1, RowTile<float>{});
  }
}

}  // namespace

// How each weight type is computed (matmul and matmul_silu_mul alike):
//   F32/F16/BF16, and Q8 with ActQuant::kNone: fp32 activations; GEMV converts weights in registers, GEMM packs
//     (dequantizes) fp32 panels for the fp32 micro-kernel.
//   Q8 with ActQuant::kInt8: every activation row is quantized once per call to BlockQ8Act blocks; GEMV and GEMM
//     use integer dot products (GEMM: int16 panels, the integer micro-kernel), then the Q8 row scale.
// "Decode" is one x row, or any number through matmul_rows (each row then gets exactly what it would get alone).
//   Q4/Q4A/NF4: decode quantizes the activation vector to BlockQ8Act blocks and uses integer dots (needed
//     to stream at memory speed); prefill dequantizes panels for the fp32 GEMM (compute-bound anyway).
//   S24Q8/S24Q4 (2:4 sparse): as Q4 (int8 activation blocks at decode, dequantized panels at prefill); the decode
//     kernels read only the kept values and their 2-bit positions.
void CpuBackend::matmul(const float* x, int n, const Matrix& w, const float* bias, float* y) {
  matmul_impl(x, n, w, bias, y, /*rowwise=*/n == 1);
}

void CpuBackend::matmul_rows(const float* x, int n, const Matrix& w, const float* bias, float* y) {
  matmul_impl(x, n, w, bias, y, /*rowwise=*/true);
}

void CpuBackend::matmul_impl(const float* x, int n, const Matrix& w, const float* bias, float* y, bool rowwise) {
  TESSERA_CHECK(n >= 0 && w.rows >= 0 && w.cols >= 0);
  if (n == 0 || w.rows == 0) return;
  TESSERA_CHECK(w.data != nullptr);
  if (w.cols == 0) {  // empty sum: only the bias
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t r = 0; r < w.rows; ++r) y[i * w.rows + r] = bias ? bias[r] : 0.0f;
    }
    return;
  }
  const cpu::Kernels& k = *impl_->k;
  const bool int8_act = uses_int8_activations(w, rowwise, act_quant_);
  const bool bf16_act = bf16_act_ && w.dtype == DType::BF16;
  rowwise = rowwise || bf16_act;  // see CpuBackend::set_bf16_activations
  if (bf16_act && k.bdot4 == nullptr) x = round_to_bf16(pool_, x, n * w.cols, impl_->act.rounded);
  if (is_grouped(w.dtype)) TESSERA_CHECK_MSG(w.group == 32 || w.group == 64 || w.group == 128, "bad quant group");
  if (rowwise && w.layout == MatrixLayout::kPanels8) {
    const auto dot = panel_dots(pool_, k, impl_->act, x, n, w);
    const auto put = [&](int64_t q, int i, const float* out) {
      const int64_t r0 = q * cpu::kPanelRows;
      float* yi = y + i * w.rows;
      for (int64_t j = 0; j < cpu::kPanelRows && r0 + j < w.rows; ++j)
        yi[r0 + j] = bias != nullptr ? out[j] + bias[r0 + j] : out[j];
    };
    const auto one = [&](int64_t q, int i) {
      float out[cpu::kPanelRows];
      dot(i, w.row(q * cpu::kPanelRows), out);
      put(q, i, out);
    };
    const auto dot4 = k.qdot_panel4[static_cast<int>(w.dtype)];
    if (n == 1 && dot4 != nullptr) {
      for_each_panel_streams<4>(
          pool_, impl_->steps, w.rows, 4 * cpu::kPanelRows * static_cast<int64_t>(w.row_bytes()),
          [&](const int64_t* q) {
            float out[4][cpu::kPanelRows];
            const void* panels[4];
            float* outs[4];
            for (int s = 0; s < 4; ++s) {
              panels[s] = w.row(q[s] * cpu::kPanelRows);
              outs[s] = out[s];
            }
            dot4(impl_->act.q.data(), panels, w.cols, w.group, outs);
            for (int s = 0; s < 4; ++s) put(q[s], 0, out[s]);
          },
          [&](int64_t q) { one(q, 0); });
      return;
    }
    for_each_panel(pool_, w.rows, n, one);
    return;
  }
  if (rowwise) {
    dispatch_gemv(pool_, k, impl_->act, x, n, w, int8_act, bf16_act && k.bdot4 != nullptr,
                  [&](auto rows, const auto& dotR, const auto& dotR2, const auto& dot1, const auto& tile) {
                    gemv<decltype(rows)::value>(pool_, impl_->steps, w, n, bias, y, dotR, dotR2, dot1, tile);
                  });
    return;
  }
  const int64_t tiles = (w.rows + kGemmNR - 1) / kGemmNR;
  const GemmSplit plan = plan_gemm(pool_.size(), tiles, n);
  if (int8_act) {
    quantize_rows(pool_, k, x, n, w.cols, true, impl_->act);
    reserve_panels(impl_->slots, plan.n_slots, impl_->act.blocks * cpu::kQ8ActBlock);
  }
  for_each_slot(pool_, plan.n_slots, [&](int t) {
    SlotScratch& s = impl_->slots[static_cast<size_t>(t)];
    const auto [n_begin, n_end, t_begin, t_end] = gemm_part_of(plan, t, tiles, n);
    if (int8_act) {
      gemm_i8_part(k, s, impl_->act, n_begin, n_end, t_begin, t_end, w, bias, y);
    } else {
      gemm_part(k, s, x, n_begin, n_end, t_begin, t_end, w, bias, y);
    }
  });
}

// ---- matmul_silu_mul ----

namespace {

// Decode: each kernel call streams gate and up rows of R/2 hidden units together (one from each of R/2 streams over
// the range, as in gemv), so both dots of an output are ready at once and silu(g) * u is applied straight away;
// every x row is run against a group while it is cached.
// dotR / dot1 as for gemv; out is [n][hidden].
// With a tile kernel and three or more x rows, each dot2xm call takes one hidden unit's gate and up rows, blocked as
// in gemv.
template <int R, typename DotR, typename DotR2, typename Dot1, typename Tile>
void gemv_silu_mul(ThreadPool& pool, cpu::StepQueues& queues, const Matrix& gate, const Matrix& up, int n, float* out,
                   const DotR& dotR, const DotR2& dotR2, const Dot1& dot1, const Tile& tile) {
  constexpr int kUnits = R / 2;
  const int64_t hidden = gate.rows;
  const int64_t groups = (hidden + kUnits - 1) / kUnits;
  const int n_slots = static_cast<int>(std::min<int64_t>(pool.size(), groups));
  const int64_t block = tile_block_rows(gate.row_bytes()) / 2;
  const bool tiled = tile.applies(n);
  // Slot t's hidden units; its full groups [begin, begin + kUnits * per) go through the tile kernel or as kUnits
  // streams through gate and as many through up.
  const auto units_of = [&](int t) {
    const Range g = split(groups, t, n_slots);
    return Range{g.begin * kUnits, std::min(hidden, g.end * kUnits)};
  };
  const auto per_of = [&](const Range& hr) { return (hr.end - hr.begin) / kUnits; };
  for (int t = 0; t < n_slots; ++t) queues.reset(t, tiled ? 0 : per_of(units_of(t)));
  const auto step = [&](int t, int64_t k) {
    const Range hr = units_of(t);
    const int64_t per = per_of(hr);
    int64_t at[kUnits];
    stream_units<kUnits>(hr.begin, per, k, at);
    const void* rows[R];
    const void* next[R];  // prefetch only
    for (int j = 0; j < kUnits; ++j) {
      rows[j] = gate.row(at[j]);
      rows[kUnits + j] = up.row(at[j]);
      next[j] = gate.row(at[j] + 1);
      next[kUnits + j] = up.row(at[j] + 1);
    }
    const void* const* pre = k + 1 < per ? next : nullptr;
    dot_x_rows<R>(n, rows, pre, dotR, dotR2, [&](int i, const float* d) {
      for (int j = 0; j < kUnits; ++j) out[i * hidden + at[j]] = silu_mul(d[j], d[kUnits + j]);
    });
  };
  for_each_slot(pool, n_slots, [&](int t) {
    const Range hr = units_of(t);
    const int64_t h_full = hr.begin + per_of(hr) * kUnits;
    if (tiled) {
      float d[cpu::kMaxDotTileRows * 2];
      for_each_tile(n, tile.max_rows, hr.begin, h_full, 1, block, [&](int i, int m, int64_t u, bool first) {
        const void* rows[2] = {gate.row(u), up.row(u)};
        const void* ahead[2] = {gate.row(u + block), up.row(u + block)};  // prefetch only
        tile(i, m, rows, first && u + block + 1 <= h_full ? ahead : nullptr, d, 2);
        for (int e = 0; e < m; ++e) out[(i + e) * hidden + u] = silu_mul(d[2 * e], d[2 * e + 1]);
      });
    }
    for (int64_t h = h_full; h < hr.end; ++h) {
      for (int i = 0; i < n; ++i) out[i * hidden + h] = silu_mul(dot1(i, gate.row(h)), dot1(i, up.row(h)));
    }
    cpu::run_steps(queues, t, n_slots, steal_block_steps(R * static_cast<int64_t>(gate.row_bytes())), step);
  });
}

// Prefill: a panel holds 8 gate rows in columns 0..7 and the matching 8 up rows in columns 8..15, so one micro-kernel
// pass yields both dots of 8 hidden units; the 16-wide partial sums live in the slot's small tile scratch across k
// blocks and only silu(g) * u is written out.
void gemm_silu_mul_part(const cpu::Kernels& k, SlotScratch& s, const float* x, int64_t n_begin, int64_t n_end,
                        int64_t tile_begin, int64_t tile_end, const Matrix& gate, const Matrix& up, float* out) {
  constexpr int kHalf = kGemmNR / 2;
  const int64_t K = gate.cols, hidden = gate.rows;
  for (int64_t nb = n_begin; nb < n_end; nb += kMc) {
    const int64_t mb = std::min<int64_t>(kMc, n_end - nb);
    for (int64_t ht = tile_begin; ht < tile_end; ++ht) {
      const int64_t h0 = ht * kHalf;
      const int nh = static_cast<int>(std::min<int64_t>(kHalf, hidden - h0));
      for (int64_t kb = 0; kb < K; kb += kKc) {
        const int64_t kc = std::min(kKc, K - kb);
        pack_rows(k, gate, h0, nh, kHalf, kb, kc, s.panel.data());
        pack_rows(k, up, h0, nh, kHalf, kb, kc, s.panel.data() + kHalf);
        gemm_block(k, s, x, K, nb, mb, kb, kc, kb == 0 ? kZeros : nullptr, s.tile.data(), kGemmNR);
      }
      for (int64_t i = 0; i < mb; ++i) {
        const float* c = s.tile.data() + i * kGemmNR;
        float* o = out + (nb + i) * hidden + h0;
        for (int j = 0; j < nh; ++j) o[j] = silu_mul(c[j], c[kHalf + j]);
      }
    }
  }
}

// Prefill of the fused op with Q8 weights and int8 activations: gate rows in panel columns 0..7, up rows in 8..15.
void gemm_i8_silu_mul_part(const cpu::Kernels& k, SlotScratch& s, const ActScratch& act, int64_t n_begin, int64_t n_end,
                           int64_t tile_begin, int64_t tile_end, const Matrix& gate, const Matrix& up, float* out) {
  constexpr int kHalf = kGemmNR / 2;
  const int64_t hidden = gate.rows;
  const size_t row_bytes = gate.row_bytes();
  for (int64_t ht = tile_begin; ht < tile_end; ++ht) {
    const int64_t h0 = ht * kHalf;
    const int nh = static_cast<int>(std::min<int64_t>(kHalf, hidden - h0));
    gemm_i8_tile_rows(
        k, s, act, n_begin, n_end,
        [&](int64_t kb, int64_t kc) {
          int16_t* panel = s.panel16.data() + kb * kGemmNR;
          k.pack_i8(gate.row(h0), row_bytes, gate.cols, nh, kHalf, kb, kc, panel, s.wscale.data());
          k.pack_i8(up.row(h0), row_bytes, up.cols, nh, kHalf, kb, kc, panel + kGemmNR, s.wscale.data() + kHalf);
        },
        [&](int64_t i, const float* c) {
          float* o = out + i * hidden + h0;
          for (int j = 0; j < nh; ++j) {
            o[j] = silu_mul(c[j] * s.wscale[static_cast<size_t>(j)],
                            c[kHalf + j] * s.wscale[static_cast<size_t>(kHalf + j)]);
          }
        });
  }
}

}  // namespace

void CpuBackend::matmul_silu_mul(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) {
  matmul_silu_mul_impl(x, n, gate, up, out, /*rowwise=*/n == 1);
}

void CpuBackend::matmul_silu_mul_rows(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) {
  matmul_silu_mul_impl(x, n, gate, up, out, /*rowwise=*/true);
}

void CpuBackend::matmul_silu_mul_impl(const float* x, int n, const Matrix& gate, const Matrix& up, float* out,
                                      bool rowwise) {
  TESSERA_CHECK(gate.rows == up.rows && gate.cols == up.cols && gate.dtype == up.dtype);
  TESSERA_CHECK_MSG(gate.group == up.group, "gate and up must share the quantization group");
  TESSERA_CHECK(n >= 0);
  if (n == 0 || gate.rows == 0) return;
  if (gate.cols == 0) {  // both dots are 0 and silu(0) * 0 = 0
    std::fill_n(out, static_cast<int64_t>(n) * gate.rows, 0.0f);
    return;
  }
  const cpu::Kernels& k = *impl_->k;
  const bool int8_act = uses_int8_activations(gate, rowwise, act_quant_);
  const bool bf16_act = bf16_act_ && gate.dtype == DType::BF16;
  rowwise = rowwise || bf16_act;  // see CpuBackend::set_bf16_activations
  if (bf16_act && k.bdot4 == nullptr) x = round_to_bf16(pool_, x, n * gate.cols, impl_->act.rounded);
  if (is_grouped(gate.dtype)) {
    TESSERA_CHECK_MSG(gate.group == 32 || gate.group == 64 || gate.group == 128, "bad quant group");
  }
  TESSERA_CHECK_MSG(gate.layout == up.layout, "gate and up must share the weight layout");
  if (rowwise && gate.layout == MatrixLayout::kPanels8) {
    const auto dot = panel_dots(pool_, k, impl_->act, x, n, gate);
    const int64_t hidden = gate.rows;
    const auto put = [&](int64_t q, int i, const float* g, const float* u) {
      const int64_t h0 = q * cpu::kPanelRows;
      float* oi = out + i * hidden;
      for (int64_t j = 0; j < cpu::kPanelRows && h0 + j < hidden; ++j) oi[h0 + j] = silu_mul(g[j], u[j]);
    };
    const auto one = [&](int64_t q, int i) {
      float g[cpu::kPanelRows], u[cpu::kPanelRows];
      dot(i, gate.row(q * cpu::kPanelRows), g);
      dot(i, up.row(q * cpu::kPanelRows), u);
      put(q, i, g, u);
    };
    const auto dot4 = k.qdot_panel4[static_cast<int>(gate.dtype)];
    if (n == 1 && dot4 != nullptr) {
      // Two parts of the range, each read from gate and from up: four streams.
      for_each_panel_streams<2>(
          pool_, impl_->steps, hidden, 4 * cpu::kPanelRows * static_cast<int64_t>(gate.row_bytes()),
          [&](const int64_t* q) {
            float res[4][cpu::kPanelRows];
            const void* panels[4] = {gate.row(q[0] * cpu::kPanelRows), up.row(q[0] * cpu::kPanelRows),
                                     gate.row(q[1] * cpu::kPanelRows), up.row(q[1] * cpu::kPanelRows)};
            float* outs[4] = {res[0], res[1], res[2], res[3]};
            dot4(impl_->act.q.data(), panels, gate.cols, gate.group, outs);
            put(q[0], 0, res[0], res[1]);
            put(q[1], 0, res[2], res[3]);
          },
          [&](int64_t q) { one(q, 0); });
      return;
    }
    for_each_panel(pool_, hidden, n, one);
    return;
  }
  if (rowwise) {
    dispatch_gemv(pool_, k, impl_->act, x, n, gate, int8_act, bf16_act && k.bdot4 != nullptr,
                  [&](auto rows, const auto& dotR, const auto& dotR2, const auto& dot1, const auto& tile) {
                    gemv_silu_mul<decltype(rows)::value>(pool_, impl_->steps, gate, up, n, out, dotR, dotR2, dot1,
                                                         tile);
                  });
    return;
  }
  const int64_t tiles = (gate.rows + kGemmNR / 2 - 1) / (kGemmNR / 2);
  const GemmSplit plan = plan_gemm(pool_.size(), tiles, n);
  if (int8_act) {
    quantize_rows(pool_, k, x, n, gate.cols, true, impl_->act);
    reserve_panels(impl_->slots, plan.n_slots, impl_->act.blocks * cpu::kQ8ActBlock);
  }
  for_each_slot(pool_, plan.n_slots, [&](int t) {
    SlotScratch& s = impl_->slots[static_cast<size_t>(t)];
    const auto [n_begin, n_end, t_begin, t_end] = gemm_part_of(plan, t, tiles, n);
    if (int8_act) {
      gemm_i8_silu_mul_part(k, s, impl_->act, n_begin, n_end, t_begin, t_end, gate, up, out);
    } else {
      gemm_silu_mul_part(k, s, x, n_begin, n_end, t_begin, t_end, gate, up, out);
    }
  });
}

// ---- rmsnorm, rope, add, embedding, argmax ----

void CpuBackend::rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) {
  TESSERA_CHECK(n >= 0 && dim > 0);
  const cpu::Kernels& k = *impl_->k;
  const auto rows = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* xi = x + i * dim;
      const float inv = 1.0f / std::sqrt(k.sum_squares(xi, dim) / static_cast<float>(dim) + eps);
      k.scale_mul(xi, w, inv, dim, y + i * dim);  // element-wise: y == x is fine
    }
  };
  if (static_cast<int64_t>(n) * dim < kMinParallelElems || n == 1) {
    rows(0, n);
  } else {
    pool_.parallel_for(n, 1, [&](int64_t b, int64_t e) { rows(b, e); });
  }
}

void CpuBackend::rope(float* x, int n, int n_heads, const int* positions, const RopeTable& table) {
  const int half = table.half_dim;
  const int head_dim = 2 * half;
  const bool interleaved = table.style == RopeStyle::kInterleaved;
  const auto rows = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int pos = positions[i];
      TESSERA_CHECK_MSG(pos >= 0 && pos < table.max_pos, "rope position " + std::to_string(pos) + " out of table");
      const float* cs = table.cos + static_cast<int64_t>(pos) * half;
      const float* sn = table.sin + static_cast<int64_t>(pos) * half;
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + (i * n_heads + h) * head_dim;
        if (interleaved) {  // pairs (v[2j], v[2j+1])
          for (int j = 0; j < half; ++j) {
            const float a = v[2 * j], b = v[2 * j + 1];
            v[2 * j] = a * cs[j] - b * sn[j];
            v[2 * j + 1] = a * sn[j] + b * cs[j];
          }
        } else {  // pairs (v[j], v[j + half]): contiguous halves, vectorizes as is
          float* lo = v;
          float* hi = v + half;
          for (int j = 0; j < half; ++j) {
            const float a = lo[j], b = hi[j];
            lo[j] = a * cs[j] - b * sn[j];
            hi[j] = a * sn[j] + b * cs[j];
          }
        }
      }
    }
  };
  if (static_cast<int64_t>(n) * n_heads * head_dim < kMinParallelElems || n == 1) {
    rows(0, n);
  } else {
    pool_.parallel_for(n, 1, [&](int64_t b, int64_t e) { rows(b, e); });
  }
}

void CpuBackend::add(float* y, const float* x, size_t count) {
  const cpu::Kernels& k = *impl_->k;
  const auto n = static_cast<int64_t>(count);
  if (n < kMinParallelElems) {
    k.add(y, x, n);
    return;
  }
  pool_.parallel_for(n, 64, [&](int64_t begin, int64_t end) { k.add(y + begin, x + begin, end - begin); });
}

void CpuBackend::embedding(const Matrix& table, const int* tokens, int n, float* out) {
  const auto dequant = impl_->k->dequant[static_cast<int>(table.dtype)];
  for (int i = 0; i < n; ++i) {
    TESSERA_CHECK_MSG(tokens[i] >= 0 && tokens[i] < table.rows,
                      "token id " + std::to_string(tokens[i]) + " out of range");
    float* row = out + static_cast<int64_t>(i) * table.cols;
    if (table.layout == MatrixLayout::kPanels8) {
      cpu::panel8_dequant_row(table, tokens[i], row);
    } else {
      dequant(table.row(tokens[i]), table.group, 0, table.cols, row);
    }
  }
}

int CpuBackend::argmax(const float* x, int n) {
  if (n <= 0) return 0;
  // Two passes: a vector max (NaNs ignored), then the first index holding it, which gives first-on-ties for free.
  const float m = impl_->k->max_value(x, n);
  for (int i = 0; i < n; ++i) {
    if (x[i] == m) return i;
  }
  return 0;  // every value NaN
}

// ---- attention ----

namespace {

// How one attention call is cut into tasks, each one batch for the attend kernel: qr query rows x kvb kv heads x hb
// heads of each of their groups (hb < group only when kvb == 1). Each K/V block is then fetched once per batch, not
// once per (row, head) pair. Decode batches whole GQA groups of neighbouring kv heads (their slices of a cache row
// are contiguous); prefill batches rows of one group. Batches shrink (kv heads, heads, then rows) until every
// thread has work. The plan depends only on n, the shape and the thread count, so a sequence's attention is cut the
// same way whatever else runs in the step (the kernel's blocking, and so its bits, follow the batch shape).
struct AttentionPlan {
  int group = 1, hb = 1, kvb = 1, qr = 1;
  int64_t head_blocks = 0, kv_blocks = 0, row_blocks = 0, tasks = 0;
  size_t scratch_floats = 0;

  AttentionPlan(int n, const AttentionShape& shape, int threads) {
    group = shape.n_heads / shape.n_kv_heads;
    hb = std::min(group, cpu::kMaxAttendBatch);
    kvb = n == 1 ? std::min(shape.n_kv_heads, std::max(1, cpu::kMaxAttendBatch / hb)) : 1;
    qr = n == 1 ? 1 : std::max(1, cpu::kMaxAttendBatch / hb);
    const auto count_tasks = [&] {
      head_blocks = (group + hb - 1) / hb;
      kv_blocks = (shape.n_kv_heads + kvb - 1) / kvb;
      row_blocks = (n + qr - 1) / qr;
      tasks = row_blocks * kv_blocks * head_blocks;
    };
    const auto shrink_until_enough_tasks = [&](int& size) {
      for (count_tasks(); tasks < threads && size > 1; count_tasks()) size = (size + 1) / 2;
    };
    shrink_until_enough_tasks(kvb);
    shrink_until_enough_tasks(hb);
    shrink_until_enough_tasks(qr);
    // The last kv block may be narrower, and a narrower span gets a longer key block: size for the worst span.
    int64_t worst = 0;
    for (int count = 1; count <= kvb; ++count) {
      worst = std::max(worst, cpu::attend_scratch_floats(static_cast<int64_t>(count) * shape.head_dim));
    }
    scratch_floats = static_cast<size_t>(worst);
  }
};

// Runs task `task` of call c under `plan`.
void run_attention_task(const cpu::Kernels& k, const AttentionPlan& plan, const AttentionCall& c,
                        const AttentionShape& shape, int64_t task, float* scratch) {
  const int hd = shape.head_dim;
  const int64_t q_stride = static_cast<int64_t>(shape.n_heads) * hd;
  const int64_t hblk = task % plan.head_blocks;
  const int64_t kvblk = task / plan.head_blocks % plan.kv_blocks;
  const int64_t rb = task / plan.head_blocks / plan.kv_blocks;
  cpu::AttendBatch batch;
  batch.kv_first = static_cast<int>(kvblk) * plan.kvb;
  batch.kv_count = std::min(shape.n_kv_heads - batch.kv_first, plan.kvb);
  batch.count = 0;
  const int64_t i_end = std::min<int64_t>(c.n, (rb + 1) * plan.qr);
  for (int64_t i = rb * plan.qr; i < i_end; ++i) {
    for (int kvh = batch.kv_first; kvh < batch.kv_first + batch.kv_count; ++kvh) {
      const int h_begin = kvh * plan.group + static_cast<int>(hblk) * plan.hb;
      const int h_end = std::min(kvh * plan.group + plan.group, h_begin + plan.hb);
      for (int h = h_begin; h < h_end; ++h) {
        const int64_t off = i * q_stride + static_cast<int64_t>(h) * hd;
        batch.q[batch.count] = c.q + off;
        batch.out[batch.count] = c.out + off;
        batch.n_keys[batch.count] = c.pos0 + static_cast<int>(i) + 1;  // causal: sees cache rows 0..pos0+i
        batch.kv_head[batch.count] = kvh;                              // GQA: head h reads kv head h / group
        ++batch.count;
      }
    }
  }
  k.attend(batch, c.kv, hd, 1.0f / std::sqrt(static_cast<float>(hd)), scratch);
}

void check_attention_call(const AttentionCall& c, const AttentionShape& shape) {
  TESSERA_CHECK(shape.n_heads > 0 && shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0);
  TESSERA_CHECK(shape.head_dim > 0);
  TESSERA_CHECK(c.n >= 0 && c.pos0 >= 0 && c.pos0 + c.n <= c.kv.capacity);
  TESSERA_CHECK_MSG(c.kv.stride == shape.n_kv_heads * shape.head_dim, "KV rows must be n_kv_heads * head_dim floats");
}

}  // namespace

void CpuBackend::reserve_attend_scratch(int n_slots, size_t floats) {
  for (int t = 0; t < n_slots; ++t) {
    AlignedFloats& buf = impl_->slots[static_cast<size_t>(t)].attend;
    if (buf.size() < floats) buf.resize(floats);
  }
}

void CpuBackend::attention(const float* q, int n, int pos0, const KvLayer& kv, const AttentionShape& shape,
                           float* out) {
  const AttentionCall call{q, out, n, pos0, kv};
  check_attention_call(call, shape);
  if (n == 0) return;
  const cpu::Kernels& k = *impl_->k;
  const AttentionPlan plan(n, shape, pool_.size());
  const int n_slots = static_cast<int>(std::min<int64_t>(pool_.size(), plan.tasks));
  reserve_attend_scratch(n_slots, plan.scratch_floats);
  for_each_slot(pool_, n_slots, [&](int t) {
    float* scratch = impl_->slots[static_cast<size_t>(t)].attend.data();
    const auto run = [&](int64_t task) { run_attention_task(k, plan, call, shape, task, scratch); };
    if (n == 1) {
      // Decode: equal work per task; contiguous ranges.
      const Range r = split(plan.tasks, t, n_slots);
      for (int64_t task = r.begin; task < r.end; ++task) run(task);
    } else {
      // Prefill: later rows see more keys, so deal tasks round-robin to balance the causal triangle.
      for (int64_t task = t; task < plan.tasks; task += n_slots) run(task);
    }
  });
}

// The single-row calls of a batch step (one decoded token per sequence) share one trip through the pool: each is
// cut into tasks exactly as attention() cuts it, and the threads take contiguous ranges of all their tasks. Waking
// the pool once per sequence and layer cost more than the attention itself at short contexts.
void CpuBackend::attention_batch(std::span<const AttentionCall> calls, const AttentionShape& shape) {
  int singles = 0;
  for (const AttentionCall& c : calls) {
    check_attention_call(c, shape);
    if (c.n > 1) attention(c.q, c.n, c.pos0, c.kv, shape, c.out);
    singles += c.n == 1 ? 1 : 0;
  }
  if (singles == 0) return;
  const cpu::Kernels& k = *impl_->k;
  const AttentionPlan plan(1, shape, pool_.size());
  const int64_t tasks = plan.tasks * singles;
  const int n_slots = static_cast<int>(std::min<int64_t>(pool_.size(), tasks));
  reserve_attend_scratch(n_slots, plan.scratch_floats);
  // The single-row calls' tasks numbered in call order; each thread runs a contiguous range of them.
  for_each_slot(pool_, n_slots, [&](int t) {
    float* scratch = impl_->slots[static_cast<size_t>(t)].attend.data();
    const Range r = split(tasks, t, n_slots);
    int64_t first = 0;  // number of the current call's task 0
    for (const AttentionCall& c : calls) {
      if (c.n != 1) continue;
      const int64_t lo = std::max(r.begin, first), hi = std::min(r.end, first + plan.tasks);
      for (int64_t u = lo; u < hi; ++u) run_attention_task(k, plan, c, shape, u - first, scratch);
      first += plan.tasks;
    }
  });
}

}  // namespace tessera
