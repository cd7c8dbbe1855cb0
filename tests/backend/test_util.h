// Shared helpers of the backend tests: random data, weight matrices of any dtype, NaN poisoning, L2 comparison.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <vector>

#include "engine/core/check.h"
#include "engine/core/dtype.h"
#include "engine/core/tensor.h"
#include "quant/quant_traits.h"

namespace tessera::test {

inline std::vector<float> random_vec(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Filled with NaN so an output element the op forgets to write fails the comparison.
inline std::vector<float> poisoned(size_t n) {
  return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN());
}
inline void poison(std::vector<float>& v) {
  std::fill(v.begin(), v.end(), std::numeric_limits<float>::quiet_NaN());
}

// A weight matrix that owns its storage, in any dtype (values rounded from uniform random fp32).
struct OwnedMatrix {
  std::vector<uint8_t> bytes;
  Matrix m;
};

inline OwnedMatrix random_matrix(std::mt19937& rng, DType t, int64_t rows, int64_t cols, float scale = 1.0f) {
  OwnedMatrix w;
  const std::vector<float> v = random_vec(rng, static_cast<size_t>(rows * cols), -scale, scale);
  w.bytes.resize(v.size() * dtype_size(t) + 1);  // +1: never empty, so data() is non-null for 0 columns
  for (size_t i = 0; i < v.size(); ++i) {
    switch (t) {
      case DType::F32:
        std::memcpy(w.bytes.data() + 4 * i, &v[i], 4);
        break;
      case DType::F16: {
        const uint16_t h = f32_to_f16(v[i]);
        std::memcpy(w.bytes.data() + 2 * i, &h, 2);
        break;
      }
      case DType::BF16: {
        const uint16_t h = f32_to_bf16(v[i]);
        std::memcpy(w.bytes.data() + 2 * i, &h, 2);
        break;
      }
      default:
        TESSERA_CHECK_MSG(false, "plain weight dtype expected");
    }
  }
  w.m = Matrix{t, rows, cols, w.bytes.data()};
  return w;
}

// A quantized weight matrix (Q8/Q4/Q4A/NF4; group ignored for Q8) from uniform random fp32 in [-scale, scale],
// quantized row by row with the reference quantizer.
inline OwnedMatrix quantized_matrix(std::mt19937& rng, DType t, int64_t rows, int64_t cols, int group,
                                    float scale = 1.0f) {
  OwnedMatrix w;
  const int g = is_grouped(t) ? group : 0;
  const size_t row_bytes = dtype_row_bytes(t, cols, g);
  w.bytes.resize(static_cast<size_t>(rows) * row_bytes + 1);
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> v = random_vec(rng, static_cast<size_t>(cols), -scale, scale);
    quant::quant_traits(t).quantize_row(v.data(), cols, g, nullptr,
                                        w.bytes.data() + static_cast<size_t>(r) * row_bytes);
  }
  w.m = Matrix{t, rows, cols, w.bytes.data(), g};
  return w;
}

// Any dtype: plain types via random_matrix, quantized via quantized_matrix.
inline OwnedMatrix any_matrix(std::mt19937& rng, DType t, int64_t rows, int64_t cols, int group, float scale = 1.0f) {
  return is_quantized(t) ? quantized_matrix(rng, t, rows, cols, group, scale)
                         : random_matrix(rng, t, rows, cols, scale);
}

// ||got - want|| / ||want|| <= tol, failing on any NaN/inf in got.
inline ::testing::AssertionResult near_l2(const std::vector<float>& got, const std::vector<float>& want,
                                          double tol = 1e-5) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return ::testing::AssertionFailure() << "element " << i << " is " << got[i];
    diff += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    norm += static_cast<double>(want[i]) * want[i];
  }
  const double rel = std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
  if (rel <= tol || diff == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "relative L2 error " << rel << " > " << tol;
}

}  // namespace tessera::test
