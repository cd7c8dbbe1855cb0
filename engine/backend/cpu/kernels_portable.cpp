// Portable kernel set: plain C++ for any CPU. Written so the compiler can vectorize the inner loops with the
// baseline instruction set; also what TESSERA_CPU_FEATURES=portable selects.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "engine/backend/cpu/kernels.h"

namespace tessera::cpu {

namespace {

// GCC/Clang vector extensions: 4 floats, lowered to SSE2 on baseline x86-64, NEON on ARM, scalars elsewhere.
typedef float V4 __attribute__((vector_size(16)));
typedef uint32_t U4 __attribute__((vector_size(16)));

inline V4 load4(const float* p) {
  V4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store4(float* p, V4 v) {
  std::memcpy(p, &v, sizeof v);
}
inline V4 splat4(float f) {
  return V4{f, f, f, f};
}
inline V4 bits_to_v4(U4 u) {
  V4 v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
inline U4 v4_to_bits(V4 v) {
  U4 u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
typedef uint16_t U16x4 __attribute__((vector_size(8)));
// Four 16-bit values zero-extended to 32-bit lanes (one 8-byte load and an unpack, not four scalar loads).
inline U4 widen4(const uint16_t* p) {
  U16x4 h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, U4);
}

// Half -> float without F16C (after F. Giesen): rebias the exponent, then patch inf/NaN and subnormals with
// selects, so it vectorizes and random signs or exponents cost no branch mispredictions.
inline U4 f16_bits_to_f32_bits(U4 h) {
  constexpr uint32_t kShiftedExp = 0x7c00u << 13;
  U4 o = (h & 0x7fffu) << 13;
  const U4 exp = o & kShiftedExp;
  o += (127u - 15u) << 23;
  o += reinterpret_cast<U4>(exp == kShiftedExp) & ((128u - 16u) << 23);                 // inf / NaN: exponent to 255
  const U4 sub = reinterpret_cast<U4>(exp == 0);                                        // zero / subnormal: renormalise
  const U4 renorm = v4_to_bits(bits_to_v4(o + (1u << 23)) - splat4(6.103515625e-05f));  // - 2^-14
  o = (renorm & sub) | (o & ~sub);
  return o | ((h & 0x8000u) << 16);
}

// Weight element loaders, one per storage type, so the inner loops are specialised at compile time: load4 gives
// four elements as fp32 lanes, cvt one element.
struct LoadF32 {
  using T = float;
  static V4 load4(const float* p) { return ::tessera::cpu::load4(p); }
  static float cvt(float v) { return v; }
};
struct LoadF16 {
  using T = uint16_t;
  static V4 load4(const uint16_t* p) { return bits_to_v4(f16_bits_to_f32_bits(widen4(p))); }
  static float cvt(uint16_t h) { return f16_to_f32(h); }
};
struct LoadBF16 {
  using T = uint16_t;
  static V4 load4(const uint16_t* p) { return bits_to_v4(widen4(p) << 16); }
  static float cvt(uint16_t v) { return bf16_to_f32(v); }
};

inline float hsum4(V4 v) {
  return (v[0] + v[1]) + (v[2] + v[3]);
}

// R weight rows against one x row: four lane accumulators per row, their sum, then the ragged tail in order. Each
// row's arithmetic is the same for every R, which is what lets dot4, dot4x2 and dot2xm agree bit for bit.
template <typename L, int R>
void dot_rows(const float* x, const void* const* rows, int64_t cols, float* out) {
  using T = typename L::T;
  const T* r[R];
  V4 a[R];
  for (int j = 0; j < R; ++j) {
    r[j] = static_cast<const T*>(rows[j]);
    a[j] = splat4(0);
  }
  int64_t c = 0;
  for (; c + 4 <= cols; c += 4) {
    const V4 xc = load4(x + c);
    for (int j = 0; j < R; ++j) a[j] += xc * L::load4(r[j] + c);
  }
  for (int j = 0; j < R; ++j) {
    float s = hsum4(a[j]);
    for (int64_t k = c; k < cols; ++k) s += x[k] * L::cvt(r[j][k]);
    out[j] = s;
  }
}

template <typename L>
void dot4(const float* x, const void* const* rows, const void* const* /*next*/, int64_t cols, float* out) {
  dot_rows<L, 4>(x, rows, cols, out);
}

// Two x rows: dot4 for each, so every row's dots are exactly what dot4 gives it alone (the contract of dot4x2).
template <typename L>
void dot4x2(const float* x, int64_t ldx, const void* const* rows, const void* const* next, int64_t cols, float* out,
            int64_t ldo) {
  dot4<L>(x, rows, next, cols, out);
  dot4<L>(x + ldx, rows, nullptr, cols, out + ldo);
}

// Two weight rows against m x rows, each as dot4 computes it.
template <typename L>
void dot2xm(const float* x, int64_t ldx, int m, const void* const* rows, const void* const* /*next*/, int64_t cols,
            float* out, int64_t ldo) {
  for (int i = 0; i < m; ++i) dot_rows<L, 2>(x + i * ldx, rows, cols, out + i * ldo);
}

template <typename L>
float dot1(const float* x, const void* row, int64_t cols) {
  const auto* r = static_cast<const typename L::T*>(row);
  float acc = 0;
  for (int64_t c = 0; c < cols; ++c) acc += x[c] * L::cvt(r[c]);
  return acc;
}

template <typename L>
void pack(const void* w, size_t row_bytes, int /*group*/, int nr, int width, int64_t k0, int64_t kc, float* panel) {
  const auto* base = static_cast<const typename L::T*>(w);
  const auto ld = static_cast<int64_t>(row_bytes / sizeof(typename L::T));
  for (int r = 0; r < width; ++r) {
    if (r < nr) {
      const auto* row = base + r * ld + k0;
      for (int64_t k = 0; k < kc; ++k) panel[k * kGemmNR + r] = L::cvt(row[k]);
    } else {
      for (int64_t k = 0; k < kc; ++k) panel[k * kGemmNR + r] = 0.0f;
    }
  }
}

// Two rows of x at a time: 2 x 4 vector accumulators fit the 16 registers of baseline x86-64 SSE (and NEON).
void gemm_tile(const float* x, int64_t ldx, int mr, const float* panel, int64_t kc, const float* init, float* c,
               int64_t ldc) {
  static_assert(kGemmNR == 16);
  for (int i = 0; i < mr; i += 2) {
    const bool two = i + 1 < mr;
    const float* x0 = x + i * ldx;
    const float* x1 = two ? x0 + ldx : x0;  // a lone last row is computed twice, stored once
    float* c0 = c + i * ldc;
    float* c1 = two ? c0 + ldc : c0;
    const float* s0 = init ? init : c0;
    const float* s1 = init ? init : c1;
    V4 a0 = load4(s0), a1 = load4(s0 + 4), a2 = load4(s0 + 8), a3 = load4(s0 + 12);
    V4 b0 = load4(s1), b1 = load4(s1 + 4), b2 = load4(s1 + 8), b3 = load4(s1 + 12);
    for (int64_t k = 0; k < kc; ++k) {
      const float* p = panel + k * kGemmNR;
      const V4 p0 = load4(p), p1 = load4(p + 4), p2 = load4(p + 8), p3 = load4(p + 12);
      const V4 v0 = splat4(x0[k]), v1 = splat4(x1[k]);
      a0 += v0 * p0;
      a1 += v0 * p1;
      a2 += v0 * p2;
      a3 += v0 * p3;
      b0 += v1 * p0;
      b1 += v1 * p1;
      b2 += v1 * p2;
      b3 += v1 * p3;
    }
    if (two) {
      store4(c1, b0);
      store4(c1 + 4, b1);
      store4(c1 + 8, b2);
      store4(c1 + 12, b3);
    }
    store4(c0, a0);
    store4(c0 + 4, a1);
    store4(c0 + 8, a2);
    store4(c0 + 12, a3);
  }
}

float dot_f32(const float* a, const float* b, int64_t n) {
  float acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void attend_one(const float* q, const KvLayer& kv, int64_t head_offset, int n_keys, int head_dim, float scale,
                float* out) {
  // Online softmax, one key at a time: m is the running max, l the running sum of exp(s - m); whenever the max
  // grows the accumulator and the sum are rescaled by exp(m_old - m_new).
  for (int d = 0; d < head_dim; ++d) out[d] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int j = 0; j < n_keys; ++j) {
    const float s = dot_f32(q, kv.k_row(j) + head_offset, head_dim) * scale;
    if (s > m) {
      const float alpha = std::exp(m - s);  // 0 on the first key (m = -inf)
      for (int d = 0; d < head_dim; ++d) out[d] *= alpha;
      l *= alpha;
      m = s;
    }
    const float p = std::exp(s - m);
    l += p;
    const float* vj = kv.v_row(j) + head_offset;
    for (int d = 0; d < head_dim; ++d) out[d] += p * vj[d];
  }
  const float inv = 1.0f / l;
  for (int d = 0; d < head_dim; ++d) out[d] *= inv;
}

void attend(const AttendBatch& batch, const KvLayer& kv, int head_dim, float scale, float* /*scratch*/) {
  for (int b = 0; b < batch.count; ++b) {
    const int64_t off = static_cast<int64_t>(batch.kv_head[b]) * head_dim;
    attend_one(batch.q[b], kv, off, batch.n_keys[b], head_dim, scale, batch.out[b]);
  }
}

float sum_squares(const float* x, int64_t n) {
  float acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += x[i] * x[i];
  return acc;
}

void scale_mul(const float* x, const float* w, float s, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * s * w[i];
}

void add(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

template <typename L>
void dequant(const void* row, int /*group*/, int64_t k0, int64_t kc, float* out) {
  const auto* r = static_cast<const typename L::T*>(row) + k0;
  for (int64_t i = 0; i < kc; ++i) out[i] = L::cvt(r[i]);
}

float max_value(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] > m) m = x[i];  // false for NaN
  }
  return m;
}

Kernels make() {
  Kernels k{};
  k.name = "portable";
  k.dot4[kF32] = dot4<LoadF32>;
  k.dot4[kF16] = dot4<LoadF16>;
  k.dot4[kBF16] = dot4<LoadBF16>;
  k.dot4x2[kF32] = dot4x2<LoadF32>;
  k.dot4x2[kF16] = dot4x2<LoadF16>;
  k.dot4x2[kBF16] = dot4x2<LoadBF16>;
  k.dot2xm[kF32] = dot2xm<LoadF32>;
  k.dot2xm[kF16] = dot2xm<LoadF16>;
  k.dot2xm[kBF16] = dot2xm<LoadBF16>;
  k.dot_tile_rows = 6;  // any count works here; the AVX2 set's
  k.gemm_tile_rows = kGemmMR;
  k.dot1[kF32] = dot1<LoadF32>;
  k.dot1[kF16] = dot1<LoadF16>;
  k.dot1[kBF16] = dot1<LoadBF16>;
  k.pack[kF32] = pack<LoadF32>;
  k.pack[kF16] = pack<LoadF16>;
  k.pack[kBF16] = pack<LoadBF16>;
  k.gemm_tile = gemm_tile;
  k.attend = attend;
  k.sum_squares = sum_squares;
  k.scale_mul = scale_mul;
  k.add = add;
  k.dequant[kF32] = dequant<LoadF32>;
  k.dequant[kF16] = dequant<LoadF16>;
  k.dequant[kBF16] = dequant<LoadBF16>;
  k.max_value = max_value;
  add_quant_portable_kernels(k);
  add_sparse_portable_kernels(k);
  return k;
}

}  // namespace

const Kernels& portable_kernels() {
  static const Kernels kernels = make();
  return kernels;
}

}  // namespace tessera::cpu
