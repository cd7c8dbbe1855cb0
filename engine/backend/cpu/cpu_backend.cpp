#include "engine/backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <new>
#include <string>
#include <vector>

#include "engine/backend/cpu/kernels.h"
#include "engine/core/check.h"
#include "engine/core/cpu_features.h"

namespace tessera {

namespace {

using cpu::kGemmMR;
using cpu::kGemmNR;

// GEMM blocking. A kKc x kGemmNR fp32 panel (16 KiB) stays in L1 while every row of an n block streams past it;
// an n block of x (kMc rows x kKc) is small enough to stay in L2 across the panels of one thread.
constexpr int64_t kKc = 256;
constexpr int kMc = 96;  // multiple of kGemmMR
static_assert(kMc % kGemmMR == 0);

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

// Scratch owned by one pool slot; fixed sizes (set by the blocking constants), allocated once.
struct SlotScratch {
  AlignedFloats panel = AlignedFloats(static_cast<size_t>(kKc) * kGemmNR);
  AlignedFloats tile = AlignedFloats(static_cast<size_t>(kMc) * kGemmNR);  // C of ragged and fused tiles
  AlignedFloats init = AlignedFloats(kGemmNR);                             // zero-padded bias of a ragged tile
  AlignedFloats attend;  // K/V block copies; grown (outside the hot loop) when a wider batch span appears
};

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

struct CpuBackend::Impl {
  const cpu::Kernels* k = nullptr;
  std::vector<SlotScratch> slots;  // one per pool slot
};

CpuBackend::CpuBackend(int n_threads, CpuKernels kernels)
    : pool_(n_threads <= 0 ? ThreadPool::default_threads() : n_threads), impl_(std::make_unique<Impl>()) {
  const bool avx2 = cpu_features().has_avx2_fma();
  if (kernels == CpuKernels::kAvx2 && !avx2) {
    throw Error("AVX2 kernels requested, but this CPU (or TESSERA_CPU_FEATURES) does not offer AVX2+FMA+F16C");
  }
  const bool use_avx2 = kernels == CpuKernels::kAvx2 || (kernels == CpuKernels::kAuto && avx2);
  impl_->k = use_avx2 ? &cpu::avx2_kernels() : &cpu::portable_kernels();
  impl_->slots.resize(static_cast<size_t>(pool_.size()));
}

CpuBackend::~CpuBackend() = default;

std::string CpuBackend::name() const {
  const int t = pool_.size();
  return std::string("cpu(") + impl_->k->name + ", " + std::to_string(t) + (t == 1 ? " thread)" : " threads)");
}

// ---- matmul ----

namespace {

// Decode: one x row against every weight row. Memory-bound, so threads take contiguous row ranges (each streams
// its own part of the matrix) and the kernel reads four rows per pass over x.
void gemv(ThreadPool& pool, const cpu::Kernels& k, const float* x, const Matrix& w, const float* bias, float* y) {
  const auto dot4 = k.dot4[static_cast<int>(w.dtype)];
  const auto dot1 = k.dot1[static_cast<int>(w.dtype)];
  const int64_t groups = (w.rows + 3) / 4;
  const int n_slots = static_cast<int>(std::min<int64_t>(pool.size(), groups));
  for_each_slot(pool, n_slots, [&](int t) {
    const Range g = split(groups, t, n_slots);
    const int64_t r_begin = g.begin * 4, r_end = std::min(w.rows, g.end * 4);
    int64_t r = r_begin;
    for (; r + 4 <= r_end; r += 4) {
      const void* rows[4] = {w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)};
      const void* next[4] = {w.row(r + 4), w.row(r + 5), w.row(r + 6), w.row(r + 7)};  // prefetch only
      dot4(x, rows, r + 8 <= r_end ? next : nullptr, w.cols, y + r);
    }
    for (; r < r_end; ++r) y[r] = dot1(x, w.row(r), w.cols);
    if (bias != nullptr) {
      for (r = r_begin; r < r_end; ++r) y[r] += bias[r];
    }
  });
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

// Prefill: y[n][rows] = x[n][K] w^T (+ bias). For each 16-row tile of w and k block, the weights are converted to
// an fp32 panel once and reused by every x row of the n block (6 rows per micro-kernel call).
void gemm_part(const cpu::Kernels& k, SlotScratch& s, const float* x, int64_t n_begin, int64_t n_end,
               int64_t tile_begin, int64_t tile_end, const Matrix& w, const float* bias, float* y) {
  const auto pack = k.pack[static_cast<int>(w.dtype)];
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
        pack(w.row(r0), K, nr, kGemmNR, kb, kc, s.panel.data());
        for (int64_t i = 0; i < mb; i += kGemmMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kGemmMR, mb - i));
          k.gemm_tile(x + (nb + i) * K + kb, K, mr, s.panel.data(), kc, kb == 0 ? init : nullptr, c + i * ldc, ldc);
        }
      }
      if (!full) {
        for (int64_t i = 0; i < mb; ++i) std::copy_n(s.tile.data() + i * kGemmNR, nr, y + (nb + i) * rows + r0);
      }
    }
  }
}

}  // namespace

void CpuBackend::matmul(const float* x, int n, const Matrix& w, const float* bias, float* y) {
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
  if (n == 1) {
    gemv(pool_, k, x, w, bias, y);
    return;
  }
  const int64_t tiles = (w.rows + kGemmNR - 1) / kGemmNR;
  const GemmSplit plan = plan_gemm(pool_.size(), tiles, n);
  for_each_slot(pool_, plan.n_slots, [&](int t) {
    SlotScratch& s = impl_->slots[static_cast<size_t>(t)];
    if (plan.by_tiles) {
      const Range r = split(tiles, t, plan.n_slots);
      gemm_part(k, s, x, 0, n, r.begin, r.end, w, bias, y);
    } else {
      const Range g = split((n + kGemmMR - 1) / kGemmMR, t, plan.n_slots);
      gemm_part(k, s, x, g.begin * kGemmMR, std::min<int64_t>(n, g.end * kGemmMR), 0, tiles, w, bias, y);
    }
  });
}

// ---- matmul_silu_mul ----

namespace {

// Decode: each kernel call streams gate and up rows of two hidden units together, so both dots of an output are
// ready at once and silu(g) * u is applied straight away.
void gemv_silu_mul(ThreadPool& pool, const cpu::Kernels& k, const float* x, const Matrix& gate, const Matrix& up,
                   float* out) {
  const auto dot4 = k.dot4[static_cast<int>(gate.dtype)];
  const auto dot1 = k.dot1[static_cast<int>(gate.dtype)];
  const int64_t hidden = gate.rows;
  const int64_t pairs = (hidden + 1) / 2;
  const int n_slots = static_cast<int>(std::min<int64_t>(pool.size(), pairs));
  for_each_slot(pool, n_slots, [&](int t) {
    const Range p = split(pairs, t, n_slots);
    const int64_t h_end = std::min(hidden, p.end * 2);
    int64_t h = p.begin * 2;
    for (; h + 2 <= h_end; h += 2) {
      const void* rows[4] = {gate.row(h), gate.row(h + 1), up.row(h), up.row(h + 1)};
      const void* next[4] = {gate.row(h + 2), gate.row(h + 3), up.row(h + 2), up.row(h + 3)};  // prefetch only
      float d[4];
      dot4(x, rows, h + 4 <= h_end ? next : nullptr, gate.cols, d);
      out[h] = silu_mul(d[0], d[2]);
      out[h + 1] = silu_mul(d[1], d[3]);
    }
    for (; h < h_end; ++h) out[h] = silu_mul(dot1(x, gate.row(h), gate.cols), dot1(x, up.row(h), up.cols));
  });
}

// Prefill: a panel holds 8 gate rows in columns 0..7 and the matching 8 up rows in columns 8..15, so one micro-kernel
// pass yields both dots of 8 hidden units; the 16-wide partial sums live in the slot's small tile scratch across k
// blocks and only silu(g) * u is written out.
void gemm_silu_mul_part(const cpu::Kernels& k, SlotScratch& s, const float* x, int64_t n_begin, int64_t n_end,
                        int64_t tile_begin, int64_t tile_end, const Matrix& gate, const Matrix& up, float* out) {
  constexpr int kHalf = kGemmNR / 2;
  const auto pack = k.pack[static_cast<int>(gate.dtype)];
  const int64_t K = gate.cols, hidden = gate.rows;
  for (int64_t nb = n_begin; nb < n_end; nb += kMc) {
    const int64_t mb = std::min<int64_t>(kMc, n_end - nb);
    for (int64_t ht = tile_begin; ht < tile_end; ++ht) {
      const int64_t h0 = ht * kHalf;
      const int nh = static_cast<int>(std::min<int64_t>(kHalf, hidden - h0));
      for (int64_t kb = 0; kb < K; kb += kKc) {
        const int64_t kc = std::min(kKc, K - kb);
        pack(gate.row(h0), K, nh, kHalf, kb, kc, s.panel.data());
        pack(up.row(h0), K, nh, kHalf, kb, kc, s.panel.data() + kHalf);
        for (int64_t i = 0; i < mb; i += kGemmMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kGemmMR, mb - i));
          k.gemm_tile(x + (nb + i) * K + kb, K, mr, s.panel.data(), kc, kb == 0 ? kZeros : nullptr,
                      s.tile.data() + i * kGemmNR, kGemmNR);
        }
      }
      for (int64_t i = 0; i < mb; ++i) {
        const float* c = s.tile.data() + i * kGemmNR;
        float* o = out + (nb + i) * hidden + h0;
        for (int j = 0; j < nh; ++j) o[j] = silu_mul(c[j], c[kHalf + j]);
      }
    }
  }
}

}  // namespace

void CpuBackend::matmul_silu_mul(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) {
  TESSERA_CHECK(gate.rows == up.rows && gate.cols == up.cols && gate.dtype == up.dtype);
  TESSERA_CHECK(n >= 0);
  if (n == 0 || gate.rows == 0) return;
  if (gate.cols == 0) {  // both dots are 0 and silu(0) * 0 = 0
    std::fill_n(out, static_cast<int64_t>(n) * gate.rows, 0.0f);
    return;
  }
  const cpu::Kernels& k = *impl_->k;
  if (n == 1) {
    gemv_silu_mul(pool_, k, x, gate, up, out);
    return;
  }
  const int64_t tiles = (gate.rows + kGemmNR / 2 - 1) / (kGemmNR / 2);
  const GemmSplit plan = plan_gemm(pool_.size(), tiles, n);
  for_each_slot(pool_, plan.n_slots, [&](int t) {
    SlotScratch& s = impl_->slots[static_cast<size_t>(t)];
    if (plan.by_tiles) {
      const Range r = split(tiles, t, plan.n_slots);
      gemm_silu_mul_part(k, s, x, 0, n, r.begin, r.end, gate, up, out);
    } else {
      const Range g = split((n + kGemmMR - 1) / kGemmMR, t, plan.n_slots);
      gemm_silu_mul_part(k, s, x, g.begin * kGemmMR, std::min<int64_t>(n, g.end * kGemmMR), 0, tiles, gate, up, out);
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
  const auto to_f32 = impl_->k->to_f32[static_cast<int>(table.dtype)];
  for (int i = 0; i < n; ++i) {
    TESSERA_CHECK_MSG(tokens[i] >= 0 && tokens[i] < table.rows,
                      "token id " + std::to_string(tokens[i]) + " out of range");
    to_f32(table.row(tokens[i]), table.cols, out + static_cast<int64_t>(i) * table.cols);
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

void CpuBackend::attention(const float* q, int n, int pos0, const KvLayer& kv, const AttentionShape& shape,
                           float* out) {
  const int hd = shape.head_dim;
  TESSERA_CHECK(shape.n_heads > 0 && shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0 && hd > 0);
  TESSERA_CHECK(n >= 0 && pos0 >= 0 && pos0 + n <= kv.capacity);
  if (n == 0) return;
  const cpu::Kernels& k = *impl_->k;
  const int group = shape.n_heads / shape.n_kv_heads;
  const int64_t kv_stride = static_cast<int64_t>(shape.n_kv_heads) * hd;
  const int64_t q_stride = static_cast<int64_t>(shape.n_heads) * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  // A task is one batch for the attend kernel: qr query rows x kvb kv heads x hb heads of each of their groups
  // (hb < group only when kvb == 1). Each K/V block is then fetched once per batch, not once per (row, head) pair.
  // Decode batches whole GQA groups of neighbouring kv heads (their slices of a cache row are contiguous);
  // prefill batches rows of one group. Batches shrink (kv heads, heads, then rows) until every thread has work.
  const int threads = pool_.size();
  int hb = std::min(group, cpu::kMaxAttendBatch);
  int kvb = n == 1 ? std::min(shape.n_kv_heads, std::max(1, cpu::kMaxAttendBatch / hb)) : 1;
  int qr = n == 1 ? 1 : std::max(1, cpu::kMaxAttendBatch / hb);
  int64_t head_blocks = 0, kv_blocks = 0, row_blocks = 0, tasks = 0;
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

  const auto run_task = [&](int64_t task, float* scratch) {
    const int64_t hblk = task % head_blocks;
    const int64_t kvblk = task / head_blocks % kv_blocks;
    const int64_t rb = task / head_blocks / kv_blocks;
    cpu::AttendBatch batch;
    batch.kv_first = static_cast<int>(kvblk) * kvb;
    batch.kv_count = std::min(shape.n_kv_heads - batch.kv_first, kvb);
    batch.count = 0;
    const int64_t i_end = std::min<int64_t>(n, (rb + 1) * qr);
    for (int64_t i = rb * qr; i < i_end; ++i) {
      for (int kvh = batch.kv_first; kvh < batch.kv_first + batch.kv_count; ++kvh) {
        const int h_begin = kvh * group + static_cast<int>(hblk) * hb;
        const int h_end = std::min(kvh * group + group, h_begin + hb);
        for (int h = h_begin; h < h_end; ++h) {
          const int64_t off = i * q_stride + static_cast<int64_t>(h) * hd;
          batch.q[batch.count] = q + off;
          batch.out[batch.count] = out + off;
          batch.n_keys[batch.count] = pos0 + static_cast<int>(i) + 1;  // causal: sees cache rows 0..pos0+i
          batch.kv_head[batch.count] = kvh;                            // GQA: head h reads kv head h / group
          ++batch.count;
        }
      }
    }
    k.attend(batch, kv.k, kv.v, kv_stride, hd, scale, scratch);
  };
  const int n_slots = static_cast<int>(std::min<int64_t>(threads, tasks));
  // The last kv block may be narrower, and a narrower span gets a longer key block: size for the worst span.
  int64_t worst_scratch = 0;
  for (int count = 1; count <= kvb; ++count)
    worst_scratch = std::max(worst_scratch, cpu::attend_scratch_floats(static_cast<int64_t>(count) * hd));
  const auto scratch_floats = static_cast<size_t>(worst_scratch);
  for (int t = 0; t < n_slots; ++t) {
    AlignedFloats& buf = impl_->slots[static_cast<size_t>(t)].attend;
    if (buf.size() < scratch_floats) buf.resize(scratch_floats);
  }
  for_each_slot(pool_, n_slots, [&](int t) {
    float* scratch = impl_->slots[static_cast<size_t>(t)].attend.data();
    const auto run = [&](int64_t task) { run_task(task, scratch); };
    if (n == 1) {
      // Decode: equal work per task; contiguous ranges.
      const Range r = split(tasks, t, n_slots);
      for (int64_t task = r.begin; task < r.end; ++task) run(task);
    } else {
      // Prefill: later rows see more keys, so deal tasks round-robin to balance the causal triangle.
      for (int64_t task = t; task < tasks; task += n_slots) run(task);
    }
  });
}

}  // namespace tessera
