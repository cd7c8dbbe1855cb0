// Private measurement tool (not a test): how fast the row quantizers turn fp32 weights into each format, the
// traits' quantize_row (the AVX2 twin where the CPU has it) against the portable reference, one thread, on a
// tinyllama-1.1b w_down-shaped matrix of Gaussian weights (2048 x 5632, 46 MB: streamed from memory, as at load);
// "weighted" rows pass per-input importance weights, as activation-aware int4 does.
// Also confirms the two wrote the same bytes.
//
//   quantize_bench [--reps N]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "engine/core/cpu_features.h"
#include "engine/core/dtype.h"
#include "quant/quant_traits.h"

namespace {

using tessera::DType;
using tessera::quant::QuantizeRowFn;

// Best of `reps` passes over the matrix, in ns per value.
double ns_per_value(QuantizeRowFn fn, const std::vector<float>& x, const float* importance, int64_t rows, int64_t cols,
                    int group, size_t row_bytes, std::vector<uint8_t>& out, int reps) {
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < rows; ++r)
      fn(&x[static_cast<size_t>(r * cols)], cols, group, importance, &out[r * row_bytes]);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s * 1e9 / static_cast<double>(rows * cols));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::stoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: quantize_bench [--reps N]\n");
      return 2;
    }
  }
  const int64_t rows = 2048, cols = 5632;
  std::vector<float> x(static_cast<size_t>(rows * cols));
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  for (auto& v : x) v = dist(rng);
  std::printf("cpu: %s; %lld x %lld fp32 weights, best of %d passes, one thread\n",
              tessera::cpu_features().describe().c_str(), static_cast<long long>(rows), static_cast<long long>(cols),
              reps);
  std::printf("%-22s %14s %16s %8s %10s\n", "format", "fast ns/value", "reference ns/v", "speedup", "same bytes");
  // Importance weights as activation-aware quantization passes them: per input, positive, spread over decades.
  std::vector<float> importance(static_cast<size_t>(cols));
  std::normal_distribution<float> log_dist(0.0f, 2.0f);
  for (auto& v : importance) v = std::exp(log_dist(rng));
  struct Case {
    DType dtype;
    int group;
    bool weighted;
  };
  for (const Case c :
       {Case{DType::Q8, 0, false}, Case{DType::Q4, 32, false}, Case{DType::Q4, 128, false}, Case{DType::Q4A, 32, false},
        Case{DType::Q4A, 128, false}, Case{DType::NF4, 32, false}, Case{DType::NF4, 64, false},
        Case{DType::Q4, 32, true}, Case{DType::Q4, 128, true}, Case{DType::NF4, 64, true}}) {
    const auto& tr = tessera::quant::quant_traits(c.dtype);
    const size_t row_bytes = tessera::dtype_row_bytes(c.dtype, cols, c.group);
    std::vector<uint8_t> fast(row_bytes * rows), ref(row_bytes * rows);
    const float* w = c.weighted ? importance.data() : nullptr;
    const double f = ns_per_value(tr.quantize_row, x, w, rows, cols, c.group, row_bytes, fast, reps);
    const double r = ns_per_value(tr.reference_quantize_row, x, w, rows, cols, c.group, row_bytes, ref, reps);
    const std::string name =
        std::string(tr.name) + (c.group > 0 ? ":g" + std::to_string(c.group) : "") + (c.weighted ? " weighted" : "");
    std::printf("%-22s %14.2f %16.2f %7.1fx %10s\n", name.c_str(), f, r, r / f, fast == ref ? "yes" : "NO");
  }
  return 0;
}
