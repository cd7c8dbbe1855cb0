// Matmuls over Q4 / Q4A weights on tensor cores, for any number of activation rows (decode and prefill).
//
// mma.sync m16n8k16 with fp16 operands and fp32 accumulators: the weights are A (16 output rows x 16 inputs), the
// activations B (16 inputs x 8 activation rows). The fp32 GEMV this replaces spent about 14 instructions per weight
// decoding nibbles and multiplying, so it was issue-bound at a third of the memory bandwidth, and its cost grew with
// every activation row; here a lane spends about two instructions per weight whatever the row count.
//
// Codes: the tiled layout (device_layout.h) gives each lane its A fragments of four k-tiles in one 16-byte load.
// (word & 0x000f000f) | 0x64006400 is the half2 (1024 + q, 1024 + q') exactly, the mask 0x00f000f0 gives
// 1024 + 16 q; one subtract (or fma by 1/16) leaves q - 8 (Q4) or q (Q4A) exactly, and one multiply by the group
// scale (Q4A: fma with scale and minimum) rounds the weight once to fp16. Activations are rounded to fp16 as each
// lane loads its B fragment (L1-cached: every warp of the SM reads them); |x| above 65504 would overflow.
// Expect a relative error near 1e-3 against the fp32 reference, as for the other tensor-core paths. Each lane
// holds 16 consecutive columns of a block (device_layout.h): its activations are four float4 loads per block.
//
// Work: a block owns one tile of 16 weight rows (and the same rows of `up` in the fused MLP) for 8 x NT activation
// rows; its warps take the 64-column blocks of K round robin, each keeping the loads (codes, scale pairs,
// activations) of 4 / (NT x operands) blocks in flight in a ring of register slots, and add their partial sums in
// shared memory in a fixed order, so results do not depend on timing.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "engine/backend/cuda/cuda_check.h"
#include "engine/backend/cuda/device_common.cuh"
#include "engine/backend/cuda/kernels.h"

namespace tessera::cuda {

namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t bits) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(a), "r"(mask), "r"(bits));  // (a & mask) | bits
  return r;
}

__device__ __forceinline__ __half2 as_half2(uint32_t v) {
  return *reinterpret_cast<const __half2*>(&v);
}
__device__ __forceinline__ uint32_t as_u32(__half2 h) {
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ __half2 half2_bits(uint16_t bits) {
  const __half h = __ushort_as_half(bits);
  return __halves2half2(h, h);
}

// d += a * b for one m16n8k16 tile.
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A fragment of one k-tile from the lane's code word (device_layout.h): a0/a2 are row g, a1/a3 row g + 8. s_lo /
// s_hi: the scale of row g / g + 8 in both halves (the lane's columns lie in one group); m_lo / m_hi the same for
// Q4A minimums.
template <DType T>
__device__ __forceinline__ void dequant(uint32_t w, __half2 s_lo, __half2 s_hi, __half2 m_lo, __half2 m_hi,
                                        uint32_t (&a)[4]) {
  constexpr uint32_t kMagic = 0x64006400u;  // the half 1024 in both halves
  const uint32_t w8 = w >> 8;
  __half2 q[4] = {as_half2(and_or(w, 0x000f000fu, kMagic)), as_half2(and_or(w, 0x00f000f0u, kMagic)),
                  as_half2(and_or(w8, 0x000f000fu, kMagic)), as_half2(and_or(w8, 0x00f000f0u, kMagic))};
  // Q4: q - 8 = (1024 + q) - 1032 = (1024 + 16 q) / 16 - 72; Q4A: q = (1024 + q) - 1024 = (...) / 16 - 64.
  const __half2 lo_off = half2_bits(T == DType::Q4 ? 0x6408 : 0x6400);  // 1032 | 1024
  const __half2 hi_off = half2_bits(T == DType::Q4 ? 0xd480 : 0xd400);  // -72 | -64
  const __half2 sixteenth = half2_bits(0x2c00);
  q[0] = __hsub2(q[0], lo_off);
  q[2] = __hsub2(q[2], lo_off);
  q[1] = __hfma2(q[1], sixteenth, hi_off);
  q[3] = __hfma2(q[3], sixteenth, hi_off);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (T == DType::Q4) {
      a[i] = as_u32(__hmul2(q[i], (i & 1) ? s_hi : s_lo));
    } else {
      a[i] = as_u32(__hfma2(q[i], (i & 1) ? s_hi : s_lo, (i & 1) ? m_hi : m_lo));
    }
  }
}

// One weight matrix as a lane sees it: its codes of the block's row tile and its scale pairs (device_layout.h).
struct Operand {
  const uint4* codes;
  const uint8_t* pairs;  // group 0's pair for rows (g, g + 8); group grp at pairs + grp * 8 * pair bytes
};

__device__ __forceinline__ Operand operand_of(const DeviceLayout& l, const uint8_t* base, int64_t rt, int lane) {
  return Operand{reinterpret_cast<const uint4*>(base) + rt * l.kblocks() * 32 + lane,
                 base + l.scale_offset(rt * 16 + (lane >> 2), 0)};
}

// What a lane loads of one 64-column block of one operand: its codes for four k-tiles and the (row g, row g + 8)
// scale (and minimum) pair of its columns' group.
struct Loaded {
  uint4 codes;
  __half2 sc, mn;
};

template <DType T>
__device__ __forceinline__ void load_block(const Operand& o, int64_t kb, int grp, Loaded* out) {
  out->codes = dev::load_codes16(o.codes + kb * 32);
  if constexpr (T == DType::Q4A) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(o.pairs + grp * 64));
    out->sc = as_half2(v.x);
    out->mn = as_half2(v.y);
  } else {
    out->sc = as_half2(__ldg(reinterpret_cast<const uint32_t*>(o.pairs + grp * 32)));
    out->mn = out->sc;  // unused by Q4
  }
}

// x[c .. c + 4) of one activation row element by element; zeros past the row's end or for rows past n (ok false).
// Out of line: these loads (a block past the row's end, unaligned rows) keep their registers and instructions out
// of the main loop.
__device__ __noinline__ float4 load_x4_slow(const float* __restrict__ xr, int c, int cols, bool ok) {
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (ok && c < cols) {
    v.x = __ldg(xr + c);
    if (c + 1 < cols) v.y = __ldg(xr + c + 1);
    if (c + 2 < cols) v.z = __ldg(xr + c + 2);
    if (c + 3 < cols) v.w = __ldg(xr + c + 3);
  }
  return v;
}

// Issues every load of block kb for a lane: each operand's codes and scale pair, and its activations. A block
// inside the row of 16-byte aligned rows (vec) takes four float4 loads per row with one range check for all: the
// kernel is bound by instruction issue, and a check per float4 cost about a tenth of its instructions.
template <DType T, int NT, int S>
__device__ __forceinline__ void load_slot(const Operand (&op)[S], int64_t kb, int t, int gshift, int groups,
                                          const float* const (&xr)[NT], const bool (&x_ok)[NT], int cols, bool vec,
                                          Loaded (&ld)[S], float4 (&xv)[NT][4]) {
  const int c0 = static_cast<int>(kb) * 64 + 16 * t;
  const int grp = min(c0 >> gshift, groups - 1);  // past kpad (a last block of 32 columns): any group
#pragma unroll
  for (int s = 0; s < S; ++s) load_block<T>(op[s], kb, grp, &ld[s]);
  if (vec && static_cast<int>(kb) * 64 + 64 <= cols) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const float4* p = reinterpret_cast<const float4*>(xr[nt] + c0);
#pragma unroll
      for (int j = 0; j < 4; ++j) xv[nt][j] = x_ok[nt] ? __ldg(p + j) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  } else {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) xv[nt][j] = load_x4_slow(xr[nt], c0 + 4 * j, cols, x_ok[nt]);
  }
}

// Two blocks per SM (16 warps to hide the load latency) where the registers allow it without spilling.
constexpr int min_blocks_per_sm(int nt, bool silu) {
  return nt * (silu ? 2 : 1) >= 8 ? 1 : 2;
}

template <DType T, int NT, bool SILU>
__global__ void __launch_bounds__(kWarps * 32, min_blocks_per_sm(NT, SILU))
    mma_q4_kernel(const float* __restrict__ x, int n, DeviceLayout l, const uint8_t* __restrict__ w,
                  const uint8_t* __restrict__ up, const float* __restrict__ bias, float* __restrict__ y, bool vec) {
  // Operands: W (and up).
  constexpr int S = SILU ? 2 : 1;
  constexpr int kUnroll = NT * S >= 4 ? 1 : 4 / (NT * S);  // 64-column blocks whose loads are in flight together
  // Independent accumulator chains (k-tile j adds into chain j % kChains): back-to-back mma.sync on one
  // accumulator wait for each other, and a warp has few other instructions to issue meanwhile.
  constexpr int kChains = kUnroll >= 2 ? 2 : 1;
  __shared__ float partial[kWarps][S * NT * 4][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int64_t rt = blockIdx.y, kblocks = l.kblocks();
  const int groups = static_cast<int>(l.groups()), cols = static_cast<int>(l.cols);
  const int col0 = static_cast<int>(blockIdx.x) * NT * 8;
  const int gshift = __ffs(l.group) - 1;
  Operand op[S];
  op[0] = operand_of(l, w, rt, lane);
  if constexpr (SILU) op[1] = operand_of(l, up, rt, lane);
  // This lane's B fragments are activation row col0 + 8 nt + g at its 16 columns of each block.
  const float* xr[NT];
  bool x_ok[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int i = col0 + 8 * nt + g;
    x_ok[nt] = i < n;
    xr[nt] = x + static_cast<int64_t>(min(i, n - 1)) * l.cols;
  }
  float acc[kChains][S][NT][4];
#pragma unroll
  for (int c = 0; c < kChains; ++c)
#pragma unroll
    for (int s = 0; s < S; ++s)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[c][s][nt][i] = 0.0f;

  // A ring of kUnroll slots: block kb0 + u * kWarps sits in slot u, and as soon as slot u is computed it is
  // refilled with the block kUnroll steps later, so a warp keeps loads in flight while it computes.
  Loaded ld[kUnroll][S];
  float4 xv[kUnroll][NT][4];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    if (warp + u * kWarps < kblocks)
      load_slot<T, NT, S>(op, warp + u * kWarps, t, gshift, groups, xr, x_ok, cols, vec, ld[u], xv[u]);
  }
  for (int64_t kb0 = warp; kb0 < kblocks; kb0 += kWarps * kUnroll) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t kb = kb0 + u * kWarps;
      if (kb >= kblocks) break;
      __half2 s_lo[S], s_hi[S], m_lo[S], m_hi[S];
#pragma unroll
      for (int s = 0; s < S; ++s) {
        s_lo[s] = __low2half2(ld[u][s].sc);
        s_hi[s] = __high2half2(ld[u][s].sc);
        m_lo[s] = __low2half2(ld[u][s].mn);
        m_hi[s] = __high2half2(ld[u][s].mn);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t b[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const float4 v = xv[u][nt][j];
          b[nt][0] = as_u32(__floats2half2_rn(v.x, v.y));
          b[nt][1] = as_u32(__floats2half2_rn(v.z, v.w));
        }
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const uint4& c = ld[u][s].codes;
          const uint32_t word = j == 0 ? c.x : j == 1 ? c.y : j == 2 ? c.z : c.w;
          uint32_t a[4];
          dequant<T>(word, s_lo[s], s_hi[s], m_lo[s], m_hi[s], a);
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) mma16816(acc[j % kChains][s][nt], a, b[nt][0], b[nt][1]);
        }
      }
      const int64_t next = kb + kWarps * kUnroll;
      if (next < kblocks) load_slot<T, NT, S>(op, next, t, gshift, groups, xr, x_ok, cols, vec, ld[u], xv[u]);
    }
  }

  // Sum the chains, then the warps' partials in a fixed order. acc[.][s][nt][i] is row g + 8 (i >= 2), activation
  // row col0 + 8 nt + 2t + (i & 1).
#pragma unroll
  for (int s = 0; s < S; ++s)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float v = acc[0][s][nt][i];
#pragma unroll
        for (int c = 1; c < kChains; ++c) v += acc[c][s][nt][i];
        partial[warp][(s * NT + nt) * 4 + i][lane] = v;
      }
  __syncthreads();
  for (int idx = threadIdx.x; idx < NT * 4 * 32; idx += kWarps * 32) {
    const int ln = idx & 31, v = idx >> 5, nt = v >> 2, i = v & 3;
    float sum[S];
#pragma unroll
    for (int s = 0; s < S; ++s) {
      sum[s] = 0.0f;
#pragma unroll
      for (int wp = 0; wp < kWarps; ++wp) sum[s] += partial[wp][s * NT * 4 + v][ln];
    }
    const int64_t r = rt * 16 + (ln >> 2) + (i >= 2 ? 8 : 0);
    const int col = col0 + nt * 8 + (ln & 3) * 2 + (i & 1);
    if (r < l.rows && col < n) {
      y[static_cast<int64_t>(col) * l.rows + r] =
          SILU ? dev::silu_mul(sum[0], sum[S - 1]) : sum[0] + (bias != nullptr ? bias[r] : 0.0f);
    }
  }
}

template <DType T, int NT>
void launch_nt(const float* x, int n, const DeviceLayout& l, const uint8_t* w, const uint8_t* up, const float* bias,
               float* y, bool vec, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((n + 8 * NT - 1) / (8 * NT)), static_cast<unsigned>(l.row_tiles()));
  if (up != nullptr) {
    mma_q4_kernel<T, NT, true><<<grid, kWarps * 32, 0, stream>>>(x, n, l, w, up, nullptr, y, vec);
  } else {
    mma_q4_kernel<T, NT, false><<<grid, kWarps * 32, 0, stream>>>(x, n, l, w, nullptr, bias, y, vec);
  }
  TESSERA_CUDA_CHECK_LAUNCH();
}

template <DType T>
void launch_typed(const float* x, int n, const DeviceLayout& l, const uint8_t* w, const uint8_t* up, const float* bias,
                  float* y, bool vec, cudaStream_t stream) {
  if (n <= 8) return launch_nt<T, 1>(x, n, l, w, up, bias, y, vec, stream);
  if (n <= 16) return launch_nt<T, 2>(x, n, l, w, up, bias, y, vec, stream);
  return launch_nt<T, 4>(x, n, l, w, up, bias, y, vec, stream);
}

}  // namespace

void launch_mma_q4(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                   float* y, cudaStream_t stream) {
  TESSERA_CHECK_MSG(l.tiled(), "mma_q4: Q4 or Q4A weights only");
  TESSERA_CHECK_MSG(up == nullptr || bias == nullptr, "the fused MLP takes no bias");
  TESSERA_CHECK(n >= 1 && n <= 65535 * 32);
  TESSERA_CHECK_MSG(l.row_tiles() <= 65535, "mma_q4: more than 65535 x 16 weight rows");
  if (l.rows == 0) return;
  TESSERA_CHECK_MSG(l.kblocks() * 64 < (int64_t{1} << 31), "mma_q4: rows longer than 2^31 columns");
  // Vector loads need every activation row 16-byte aligned.
  const bool vec = l.cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ub = static_cast<const uint8_t*>(up);
  if (l.dtype == DType::Q4) return launch_typed<DType::Q4>(x, n, l, wb, ub, bias, y, vec, stream);
  launch_typed<DType::Q4A>(x, n, l, wb, ub, bias, y, vec, stream);
}

}  // namespace tessera::cuda
