// Causal attention over the KV cache, flash-attention style: one kernel for prefill and decode.
//
// A block of 4 warps takes one kv head and up to 16 (query row, query head) items that read it: for GQA the
// query heads sharing the kv head (up to 16 of them) times as many consecutive query rows as fit. It walks the
// keys in tiles of 32 staged in shared memory (loaded once for all its items), and each warp keeps, per item,
// the running max, the running sum and the unnormalized output in registers (online softmax: no score matrix).
// Lane j scores key j of the tile; each lane accumulates head dims lane, lane + 32, ...
//
// Decode (few blocks) splits the keys into ranges handled by separate blocks (split-K / flash-decoding); each
// writes (max, sum, unnormalized output) and a second kernel merges the ranges.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "engine/backend/cuda/cuda_check.h"
#include "engine/backend/cuda/device_common.cuh"
#include "engine/backend/cuda/kernels.h"

namespace tessera::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kItems = 16;  // (row, head) items per block
constexpr int kItemsPerWarp = kItems / kWarps;
constexpr int kTile = 32;  // keys per shared-memory tile (one per lane)
constexpr int kMaxU = kMaxHeadDim / 32;

struct Plan {
  int heads_per_block;  // query heads of one kv group handled together
  int rows_per_block;
  int head_chunks;  // blocks per kv head along the group
  int row_blocks;
  int64_t max_keys;
};

Plan make_plan(const AttentionArgs& a) {
  Plan p;
  const int group = a.n_heads / a.n_kv_heads;
  p.heads_per_block = std::min(group, kItems);
  p.rows_per_block = std::max(1, kItems / p.heads_per_block);
  p.head_chunks = (group + p.heads_per_block - 1) / p.heads_per_block;
  p.row_blocks = (a.n + p.rows_per_block - 1) / p.rows_per_block;
  p.max_keys = static_cast<int64_t>(a.pos0) + a.n;
  return p;
}

int split_len(const Plan& p, int splits) {
  const int64_t per = (p.max_keys + splits - 1) / splits;
  return static_cast<int>((per + kTile - 1) / kTile * kTile);
}

size_t smem_bytes(int hd) {
  return static_cast<size_t>(kItems * hd + kTile * (hd + 1) + kTile * hd) * sizeof(float);
}

__global__ void __launch_bounds__(kWarps * 32)
    attention_kernel(AttentionArgs a, int heads_per_block, int rows_per_block, int head_chunks, int split_len,
                     int splits, float* __restrict__ partials) {
  extern __shared__ float sm[];
  const int hd = a.head_dim;
  float* qs = sm;                     // [kItems][hd], pre-scaled by 1/sqrt(hd)
  float* ks = qs + kItems * hd;       // [kTile][hd + 1] (padded: lane j reads row j without bank conflicts)
  float* vs = ks + kTile * (hd + 1);  // [kTile][hd]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int group = a.n_heads / a.n_kv_heads;
  const int kvh = blockIdx.y / head_chunks, hc = blockIdx.y % head_chunks;
  const int row0 = blockIdx.x * rows_per_block;
  const int n_items = rows_per_block * heads_per_block;
  const int64_t q_stride = static_cast<int64_t>(a.n_heads) * hd;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));

  // Item t: query row row0 + t / heads_per_block, query head kvh * group + hc * heads_per_block + t % hpb.
  auto item_row = [&](int t) { return row0 + t / heads_per_block; };
  auto item_head_in_group = [&](int t) { return hc * heads_per_block + t % heads_per_block; };
  auto item_valid = [&](int t) { return t < n_items && item_row(t) < a.n && item_head_in_group(t) < group; };

  for (int idx = tid; idx < kItems * hd; idx += blockDim.x) {
    const int t = idx / hd, d = idx % hd;
    float v = 0.0f;
    if (item_valid(t)) {
      const int h = kvh * group + item_head_in_group(t);
      v = a.q[item_row(t) * q_stride + static_cast<int64_t>(h) * hd + d] * scale;
    }
    qs[idx] = v;
  }

  const int last_row = min(row0 + rows_per_block, a.n) - 1;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * split_len;
  const int64_t k_end = min(k_begin + split_len, static_cast<int64_t>(a.pos0) + last_row + 1);

  float m[kItemsPerWarp], l[kItemsPerWarp], acc[kItemsPerWarp][kMaxU];
#pragma unroll
  for (int it = 0; it < kItemsPerWarp; ++it) {
    m[it] = -INFINITY;
    l[it] = 0.0f;
#pragma unroll
    for (int u = 0; u < kMaxU; ++u) acc[it][u] = 0.0f;
  }

  const int64_t kv_off = static_cast<int64_t>(kvh) * hd;
  for (int64_t j0 = k_begin; j0 < k_end; j0 += kTile) {
    __syncthreads();  // the previous tile (and, the first time, qs) is complete / consumed
    for (int idx = tid; idx < kTile * hd; idx += blockDim.x) {
      const int jj = idx / hd, d = idx % hd;
      const int64_t j = j0 + jj;
      const bool in = j < k_end;
      ks[jj * (hd + 1) + d] = in ? a.k[j * a.kv_stride + kv_off + d] : 0.0f;
      vs[jj * hd + d] = in ? a.v[j * a.kv_stride + kv_off + d] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int it = 0; it < kItemsPerWarp; ++it) {
      const int t = warp + kWarps * it;
      if (!item_valid(t)) continue;                                                     // warp-uniform
      const int64_t kmax = min(static_cast<int64_t>(a.pos0) + item_row(t) + 1, k_end);  // causal bound
      const int64_t j = j0 + lane;
      float s = -INFINITY;
      if (j < kmax) {
        const float* qv = qs + t * hd;
        const float* kr = ks + lane * (hd + 1);
        float dot = 0.0f;
        for (int d = 0; d < hd; ++d) dot = fmaf(qv[d], kr[d], dot);
        s = dot;
      }
      const float m_new = fmaxf(m[it], dev::warp_max(s));
      if (m_new == -INFINITY) continue;  // no key of this item in the tile yet (warp-uniform)
      const float p = j < kmax ? expf(s - m_new) : 0.0f;
      const float corr = expf(m[it] - m_new);  // 0 when m was -inf
      l[it] = l[it] * corr + dev::warp_sum(p);
      m[it] = m_new;
#pragma unroll
      for (int u = 0; u < kMaxU; ++u) acc[it][u] *= corr;
      const int n_valid = static_cast<int>(kmax - j0 < kTile ? kmax - j0 : kTile);
      for (int jj = 0; jj < n_valid; ++jj) {
        const float pj = __shfl_sync(dev::kFullMask, p, jj);
#pragma unroll
        for (int u = 0; u < kMaxU; ++u) {
          const int d = lane + 32 * u;
          if (d < hd) acc[it][u] = fmaf(pj, vs[jj * hd + d], acc[it][u]);
        }
      }
    }
  }

#pragma unroll
  for (int it = 0; it < kItemsPerWarp; ++it) {
    const int t = warp + kWarps * it;
    if (!item_valid(t)) continue;
    const int row = item_row(t), h = kvh * group + item_head_in_group(t);
    if (splits == 1) {
      // Split 0 always holds key 0, which every row sees, so l > 0.
      float* o = a.out + row * q_stride + static_cast<int64_t>(h) * hd;
#pragma unroll
      for (int u = 0; u < kMaxU; ++u) {
        const int d = lane + 32 * u;
        if (d < hd) o[d] = acc[it][u] / l[it];
      }
    } else {
      float* p = partials + ((static_cast<int64_t>(row) * a.n_heads + h) * splits + blockIdx.z) * (hd + 2);
      if (lane == 0) {
        p[0] = m[it];
        p[1] = l[it];
      }
#pragma unroll
      for (int u = 0; u < kMaxU; ++u) {
        const int d = lane + 32 * u;
        if (d < hd) p[2 + d] = acc[it][u];
      }
    }
  }
}

// Merges the key ranges of one (row, head): out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
__global__ void attention_combine_kernel(const float* __restrict__ partials, int n_heads, int hd, int splits,
                                         float* __restrict__ out) {
  const int64_t item = blockIdx.x;  // row * n_heads + head
  const float* p = partials + item * splits * (hd + 2);
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) {
    if (p[s * (hd + 2) + 1] > 0.0f) mx = fmaxf(mx, p[s * (hd + 2)]);
  }
  float sum = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float l = p[s * (hd + 2) + 1];
    if (l > 0.0f) sum += l * expf(p[s * (hd + 2)] - mx);
  }
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float l = p[s * (hd + 2) + 1];
      if (l > 0.0f) acc += p[s * (hd + 2) + 2 + d] * expf(p[s * (hd + 2)] - mx);
    }
    out[item * hd + d] = acc / sum;
  }
}

}  // namespace

int attention_splits(const AttentionArgs& a, int n_sm) {
  const Plan p = make_plan(a);
  const int64_t blocks = static_cast<int64_t>(p.row_blocks) * a.n_kv_heads * p.head_chunks;
  // Enough blocks already, or too few keys for a split to pay: one pass. Else aim at two blocks per SM with at
  // least 4 tiles of keys per split.
  if (blocks >= n_sm || p.max_keys <= 4 * kTile) return 1;
  const int64_t want = (2 * static_cast<int64_t>(n_sm) + blocks - 1) / blocks;
  const int64_t most = (p.max_keys + 4 * kTile - 1) / (4 * kTile);
  const int splits = static_cast<int>(std::clamp<int64_t>(std::min(want, most), 1, 64));
  const int len = split_len(p, splits);
  return static_cast<int>((p.max_keys + len - 1) / len);
}

size_t attention_partials_floats(const AttentionArgs& a, int splits) {
  if (splits <= 1) return 0;
  return static_cast<size_t>(a.n) * a.n_heads * splits * (a.head_dim + 2);
}

void configure_attention_kernel() {
  TESSERA_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem_bytes(kMaxHeadDim))));
}

void launch_attention(const AttentionArgs& a, int splits, float* partials, cudaStream_t stream) {
  TESSERA_CHECK(a.n_kv_heads > 0 && a.n_heads % a.n_kv_heads == 0);
  TESSERA_CHECK_MSG(a.head_dim > 0 && a.head_dim <= kMaxHeadDim, "attention: head_dim above 256");
  TESSERA_CHECK(splits >= 1 && (splits == 1 || partials != nullptr));
  if (a.n == 0) return;
  const Plan p = make_plan(a);
  const int len = split_len(p, splits);
  const dim3 grid(static_cast<unsigned>(p.row_blocks), static_cast<unsigned>(a.n_kv_heads * p.head_chunks),
                  static_cast<unsigned>(splits));
  attention_kernel<<<grid, kWarps * 32, smem_bytes(a.head_dim), stream>>>(a, p.heads_per_block, p.rows_per_block,
                                                                          p.head_chunks, len, splits, partials);
  TESSERA_CUDA_CHECK_LAUNCH();
  if (splits > 1) {
    attention_combine_kernel<<<static_cast<unsigned>(a.n * a.n_heads), 128, 0, stream>>>(partials, a.n_heads,
                                                                                         a.head_dim, splits, a.out);
    TESSERA_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace tessera::cuda
