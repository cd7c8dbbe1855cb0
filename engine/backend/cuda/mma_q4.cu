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
// shared memory in a fixed order, so results do not depend on timing. Refinements (see the kernel): the scale after
// the mma for symmetric groups >= 64 (DEFER), activations staged in shared memory for one or two rows of large
// matrices (STAGE: the ring then holds only weights, 8 deep), and programmatic dependent launch (weights loaded
// while the previous kernel finishes).
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

// DEFER (symmetric Q4, groups of 64 or more, so each lane's block lies in one group and so does every k slot of
// its mma): the A fragment of one k-tile without the scale. Row g gets q - 8 and row g + 8 gets 16 (q - 8), both
// exact in fp16 (one subtract each), so a block's four mma need no multiply per weight; its sum is scaled once in
// fp32 by the group scale, and rows g + 8 by 1/16 at the end (exact).
__device__ __forceinline__ void dequant_unscaled(uint32_t w, uint32_t (&a)[4]) {
  constexpr uint32_t kMagic = 0x64006400u;
  const uint32_t w8 = w >> 8;
  const __half2 lo_off = half2_bits(0x6408);  // 1032: (1024 + q) - 1032 = q - 8
  const __half2 hi_off = half2_bits(0x6480);  // 1152: (1024 + 16 q) - 1152 = 16 (q - 8)
  a[0] = as_u32(__hsub2(as_half2(and_or(w, 0x000f000fu, kMagic)), lo_off));
  a[1] = as_u32(__hsub2(as_half2(and_or(w, 0x00f000f0u, kMagic)), hi_off));
  a[2] = as_u32(__hsub2(as_half2(and_or(w8, 0x000f000fu, kMagic)), lo_off));
  a[3] = as_u32(__hsub2(as_half2(and_or(w8, 0x00f000f0u, kMagic)), hi_off));
}

// A launch's pointers and the layout's constants, computed once on the host: the layout's 64-bit divisions, done
// per warp, cost the small shapes more than their matmul.
struct Args {
  const float* x;
  const uint8_t* w;
  const uint8_t* up;
  const float* bias;
  float* y;
  int n, rows, cols;
  int kblocks, groups, gshift;
  bool vec;        // activation rows 16-byte aligned
  int kvec;        // blocks [0, kvec) lie inside such rows: four float4 loads per row
  int64_t scales;  // byte offset of the scale plane
  int xstride;     // STAGE: halves between activation rows in shared memory
};

// One weight matrix as a lane sees it: its codes of the block's row tile and its scale pairs (device_layout.h).
struct Operand {
  const uint4* codes;    // the lane's 16 bytes of block 0
  const uint8_t* pairs;  // group 0's pair for rows (g, g + 8); group grp at pairs + grp * 8 * pair bytes
};

template <DType T>
__device__ __forceinline__ Operand operand_of(const Args& a, const uint8_t* base, int rt, int lane) {
  constexpr int kPairBytes = T == DType::Q4A ? 8 : 4;
  return Operand{reinterpret_cast<const uint4*>(base) + (static_cast<int64_t>(rt) * a.kblocks * 32 + lane),
                 base + a.scales + (static_cast<int64_t>(rt) * a.groups * 8 + (lane >> 2)) * kPairBytes};
}

// What a lane loads of one 64-column block of one operand: its codes for four k-tiles and the (row g, row g + 8)
// scale (and minimum) pair of its columns' group.
struct Loaded {
  uint4 codes;
  __half2 sc, mn;
};

template <DType T>
__device__ __forceinline__ void load_block(const Operand& o, int kb, int grp, Loaded* out) {
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

// x[c .. c + 4) of one activation row element by element, zeros past the row's end. Out of line: these loads (a
// block past the row's end, unaligned rows) keep their registers and instructions out of the main loop.
__device__ __noinline__ float4 load_x4_slow(const float* __restrict__ xr, int c, int cols) {
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (c < cols) {
    v.x = __ldg(xr + c);
    if (c + 1 < cols) v.y = __ldg(xr + c + 1);
    if (c + 2 < cols) v.z = __ldg(xr + c + 2);
    if (c + 3 < cols) v.w = __ldg(xr + c + 3);
  }
  return v;
}

// Issues the weight loads of block kb for a lane: each operand's codes and scale pair.
template <DType T, int S>
__device__ __forceinline__ void load_weights(const Args& a, const Operand (&op)[S], int kb, int t, Loaded (&ld)[S]) {
  // Past kpad (a last block of 32 columns) any group will do.
  const int grp = min((kb * 64 + 16 * t) >> a.gshift, a.groups - 1);
#pragma unroll
  for (int s = 0; s < S; ++s) load_block<T>(op[s], kb, grp, &ld[s]);
}

// Issues the activation loads of block kb for a lane (activations in registers). A block inside aligned rows
// takes four float4 loads per row with one range check for all (a check per float4 cost about a tenth of the
// kernel's instructions). Lanes past the last activation row load row n - 1: their mma columns are never stored.
template <int NX>
__device__ __forceinline__ void load_x(const Args& a, int kb, int t, const float* const (&xr)[NX],
                                       float4 (&xv)[NX][4]) {
  const int c0 = kb * 64 + 16 * t;
  if (kb < a.kvec) {
#pragma unroll
    for (int nt = 0; nt < NX; ++nt) {
      const float4* p = reinterpret_cast<const float4*>(xr[nt] + c0);
#pragma unroll
      for (int j = 0; j < 4; ++j) xv[nt][j] = __ldg(p + j);
    }
  } else {
#pragma unroll
    for (int nt = 0; nt < NX; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) xv[nt][j] = load_x4_slow(xr[nt], c0 + 4 * j, a.cols);
  }
}

// Programmatic dependent launch (sm_90): the kernel is launched while the previous kernel in the stream still runs
// and may read only what does not come from it (the weights) before wait_for_previous_kernel(); lets_next_start()
// allows the next such launch to start its weight loads while this one finishes (the small matmuls of a decode
// step lose a large share of their time to the gap between kernels otherwise).
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void lets_next_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// STAGE: the activations (n <= 8 rows) rounded to fp16 in shared memory once per block, rows a.xstride halves
// apart (a multiple of 8 plus 8, so the two rows a quarter warp reads sit in different banks), zero past the row's
// end. Each warp then reads a block's B fragments with two 16-byte loads instead of four float4 loads and eight
// conversions per row, and its ring holds only weights, so it can be twice as deep.
constexpr int kMaxStageBytes = 40 * 1024;
constexpr int kStageMinRowTiles = 512;

__device__ __forceinline__ void stage_activations(const Args& a, __half* xs) {
  const int chunks = a.kblocks * 16;  // of 4 columns
  for (int r = 0; r < a.n; ++r) {
    const float* xr = a.x + static_cast<int64_t>(r) * a.cols;
    for (int c4 = threadIdx.x; c4 < chunks; c4 += kWarps * 32) {
      const int c = 4 * c4;
      const float4 v =
          a.vec && c + 4 <= a.cols ? __ldg(reinterpret_cast<const float4*>(xr + c)) : load_x4_slow(xr, c, a.cols);
      const __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
      *reinterpret_cast<uint2*>(xs + r * a.xstride + c) = make_uint2(as_u32(lo), as_u32(hi));
    }
  }
}

// Two blocks per SM (16 warps to hide the load latency) where the registers allow it without spilling; three
// when the activations are staged (the ring holds only weights).
constexpr int min_blocks_per_sm(int nt, bool silu, bool stage) {
  return stage ? (silu ? 2 : 3) : nt * (silu ? 2 : 1) >= 8 ? 1 : 2;
}

template <DType T, int NT, bool SILU, bool DEFER, bool STAGE>
__global__ void __launch_bounds__(kWarps * 32, min_blocks_per_sm(NT, SILU, STAGE)) mma_q4_kernel(const Args a) {
  static_assert(!STAGE || NT == 1, "staged activations: at most 8 rows");
  static_assert(!DEFER || T == DType::Q4, "the scale goes after the mma for symmetric Q4 only");
  // Operands: W (and up).
  constexpr int S = SILU ? 2 : 1;
  // 64-column blocks whose loads are in flight together (a register ring).
  constexpr int kUnroll = STAGE ? 8 / S : NT * S >= 4 ? 1 : 4 / (NT * S);
  constexpr int NX = STAGE ? 0 : NT;  // activation rows in the ring
  // Independent accumulator chains (k-tile j adds into chain j % kChains): back-to-back mma.sync on one
  // accumulator wait for each other, and a warp has few other instructions to issue meanwhile.
  constexpr int kChains = (DEFER ? S * NT == 1 : kUnroll >= 2) ? 2 : 1;
  // DEFER keeps its chains per block and one running sum; array extents stay >= 1 when a dimension is unused.
  constexpr int kAccChains = DEFER ? 1 : kChains, kXRows = NX > 0 ? NX : 1, kXSlots = NX > 0 ? kUnroll : 1;
  __shared__ float partial[kWarps][S * NT * 4][32];
  extern __shared__ uint4 staged[];  // STAGE only
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int rt = static_cast<int>(blockIdx.y), kblocks = a.kblocks;
  const int col0 = static_cast<int>(blockIdx.x) * NT * 8;
  Operand op[S];
  op[0] = operand_of<T>(a, a.w, rt, lane);
  if constexpr (SILU) op[1] = operand_of<T>(a, a.up, rt, lane);
  // This lane's B fragments are activation row col0 + 8 nt + g at its 16 columns of each block.
  const float* xr[kXRows];
#pragma unroll
  for (int nt = 0; nt < kXRows; ++nt) {
    xr[nt] = a.x + static_cast<int64_t>(min(col0 + 8 * nt + g, a.n - 1)) * a.cols;
  }
  float acc[kAccChains][S][NT][4];
#pragma unroll
  for (int c = 0; c < kAccChains; ++c)
#pragma unroll
    for (int s = 0; s < S; ++s)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[c][s][nt][i] = 0.0f;

  // A ring of kUnroll slots: block kb0 + u * kWarps sits in slot u, and as soon as slot u is computed it is
  // refilled with the block kUnroll steps later, so a warp keeps loads in flight while it computes.
  Loaded ld[kUnroll][S];
  float4 xv[kXSlots][kXRows][4];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    if (warp + u * kWarps < kblocks) load_weights<T, S>(a, op, warp + u * kWarps, t, ld[u]);
  }
  lets_next_start();
  wait_for_previous_kernel();
  if constexpr (NX > 0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (warp + u * kWarps < kblocks) load_x<NX>(a, warp + u * kWarps, t, xr, xv[u]);
    }
  }
  const uint4* xs_lane = nullptr;  // STAGE: this lane's 16 columns of block 0 in its activation row
  if constexpr (STAGE) {
    stage_activations(a, reinterpret_cast<__half*>(staged));
    __syncthreads();
    xs_lane = staged + (min(g, a.n - 1) * a.xstride + 16 * t) / 8;
  }
  for (int kb0 = warp; kb0 < kblocks; kb0 += kWarps * kUnroll) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int kb = kb0 + u * kWarps;
      if (kb >= kblocks) break;
      // B fragments of the block's four k-tiles: k-tile j holds the lane's columns 4j .. 4j + 3.
      uint32_t b[NT][4][2];
      if constexpr (STAGE) {
        const uint4 v0 = xs_lane[kb * 8], v1 = xs_lane[kb * 8 + 1];
        b[0][0][0] = v0.x, b[0][0][1] = v0.y, b[0][1][0] = v0.z, b[0][1][1] = v0.w;
        b[0][2][0] = v1.x, b[0][2][1] = v1.y, b[0][3][0] = v1.z, b[0][3][1] = v1.w;
      } else {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const float4 v = xv[u][nt][j];
            b[nt][j][0] = as_u32(__floats2half2_rn(v.x, v.y));
            b[nt][j][1] = as_u32(__floats2half2_rn(v.z, v.w));
          }
      }
      if constexpr (DEFER) {
        float bacc[S][NT][kChains][4];
#pragma unroll
        for (int s = 0; s < S; ++s)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int c = 0; c < kChains; ++c)
#pragma unroll
              for (int i = 0; i < 4; ++i) bacc[s][nt][c][i] = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
          for (int s = 0; s < S; ++s) {
            const uint4& c = ld[u][s].codes;
            uint32_t af[4];
            dequant_unscaled(j == 0 ? c.x : j == 1 ? c.y : j == 2 ? c.z : c.w, af);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mma16816(bacc[s][nt][j % kChains], af, b[nt][j][0], b[nt][j][1]);
          }
        }
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const float2 sc = __half22float2(ld[u][s].sc);  // rows g, g + 8
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              float v = bacc[s][nt][0][i];
#pragma unroll
              for (int c = 1; c < kChains; ++c) v += bacc[s][nt][c][i];
              acc[0][s][nt][i] = fmaf(v, i < 2 ? sc.x : sc.y, acc[0][s][nt][i]);
            }
        }
      } else {
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
#pragma unroll
          for (int s = 0; s < S; ++s) {
            const uint4& c = ld[u][s].codes;
            const uint32_t word = j == 0 ? c.x : j == 1 ? c.y : j == 2 ? c.z : c.w;
            uint32_t af[4];
            dequant<T>(word, s_lo[s], s_hi[s], m_lo[s], m_hi[s], af);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mma16816(acc[j % kChains][s][nt], af, b[nt][j][0], b[nt][j][1]);
          }
        }
      }
      const int next = kb + kWarps * kUnroll;
      if (next < kblocks) {
        load_weights<T, S>(a, op, next, t, ld[u]);
        if constexpr (NX > 0) load_x<NX>(a, next, t, xr, xv[u]);
      }
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
        for (int c = 1; c < kAccChains; ++c) v += acc[c][s][nt][i];
        if (DEFER && i >= 2) v *= 0.0625f;  // rows g + 8 were 16 (q - 8)
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
    const int r = rt * 16 + (ln >> 2) + (i >= 2 ? 8 : 0);
    const int col = col0 + nt * 8 + (ln & 3) * 2 + (i & 1);
    if (r < a.rows && col < a.n) {
      a.y[static_cast<int64_t>(col) * a.rows + r] =
          SILU ? dev::silu_mul(sum[0], sum[S - 1]) : sum[0] + (a.bias != nullptr ? a.bias[r] : 0.0f);
    }
  }
}

int g_path = 0;         // set_mma_q4_path
bool g_overlap = true;  // set_mma_q4_overlap

template <DType T, int NT, bool DEFER, bool STAGE>
void launch_kernel(const Args& a, int row_tiles, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((a.n + 8 * NT - 1) / (8 * NT)), static_cast<unsigned>(row_tiles));
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(kWarps * 32);
  config.dynamicSmemBytes = STAGE ? static_cast<size_t>(a.n) * a.xstride * 2 : 0;
  config.stream = stream;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = g_overlap ? 1 : 0;
  config.attrs = &attr;
  config.numAttrs = 1;
  if (a.up != nullptr) {
    TESSERA_CUDA_CHECK(cudaLaunchKernelEx(&config, mma_q4_kernel<T, NT, true, DEFER, STAGE>, a));
  } else {
    TESSERA_CUDA_CHECK(cudaLaunchKernelEx(&config, mma_q4_kernel<T, NT, false, DEFER, STAGE>, a));
  }
  TESSERA_CUDA_CHECK_LAUNCH();
}

template <DType T, bool DEFER>
void launch_typed(const Args& a, int row_tiles, cudaStream_t stream) {
  if (a.n <= 8) {
    // Staging pays where each SM runs several blocks in turn (on an H100, 4096 x 4096 at one row was faster
    // without: 7.7 vs 8.0 us; 32000 x 4096 faster with: 31 vs 36 us) and for one or two rows (four rows of
    // 4096 made a 7B decode step 15% slower: every block reads all of them from L2).
    const bool stage = g_path == 0 && a.n <= 2 && row_tiles >= kStageMinRowTiles &&
                       static_cast<int64_t>(a.n) * a.xstride * 2 <= kMaxStageBytes;
    if (stage) return launch_kernel<T, 1, DEFER, true>(a, row_tiles, stream);
    return launch_kernel<T, 1, DEFER, false>(a, row_tiles, stream);
  }
  if (a.n <= 16) return launch_kernel<T, 2, DEFER, false>(a, row_tiles, stream);
  // Prefill: the per-block accumulators of DEFER would spill at 32 activation rows.
  launch_kernel<T, 4, false, false>(a, row_tiles, stream);
}

}  // namespace

void set_mma_q4_path(int path) {
  TESSERA_CHECK(path >= 0 && path <= 2);
  g_path = path;
}

void set_mma_q4_overlap(bool on) {
  g_overlap = on;
}

void launch_mma_q4(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                   float* y, cudaStream_t stream) {
  TESSERA_CHECK_MSG(l.tiled(), "mma_q4: Q4 or Q4A weights only");
  TESSERA_CHECK_MSG(up == nullptr || bias == nullptr, "the fused MLP takes no bias");
  TESSERA_CHECK(n >= 1 && n <= 65535 * 32);
  TESSERA_CHECK_MSG(l.row_tiles() <= 65535, "mma_q4: more than 65535 x 16 weight rows");
  if (l.rows == 0) return;
  TESSERA_CHECK_MSG(l.kblocks() * 64 < (int64_t{1} << 31), "mma_q4: rows longer than 2^31 columns");
  TESSERA_CHECK_MSG(l.group >= 32 && (l.group & (l.group - 1)) == 0, "mma_q4: group must be a power of two >= 32");
  Args a{};
  a.x = x;
  a.w = static_cast<const uint8_t*>(w);
  a.up = static_cast<const uint8_t*>(up);
  a.bias = bias;
  a.y = y;
  a.n = n;
  a.rows = static_cast<int>(l.rows);
  a.cols = static_cast<int>(l.cols);
  a.kblocks = static_cast<int>(l.kblocks());
  a.groups = static_cast<int>(l.groups());
  a.gshift = __builtin_ctz(static_cast<unsigned>(l.group));
  // Vector loads need every activation row 16-byte aligned.
  a.vec = l.cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  a.kvec = a.vec ? a.cols / 64 : 0;
  a.scales = l.scales_offset();
  a.xstride = a.kblocks * 64 + 8;
  const int row_tiles = static_cast<int>(l.row_tiles());
  if (l.dtype == DType::Q4A) return launch_typed<DType::Q4A, false>(a, row_tiles, stream);
  // The scale after the mma needs each lane's block inside one group.
  if (g_path != 1 && l.group >= 64) return launch_typed<DType::Q4, true>(a, row_tiles, stream);
  launch_typed<DType::Q4, false>(a, row_tiles, stream);
}

}  // namespace tessera::cuda
