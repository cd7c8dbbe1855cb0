// Private measurement tool (not a test): decode GEMV time of 2:4 sparse weights against their dense schemes on the
// selected kernel set, 1 thread, matrices rotated over > 64 MiB so the weights come from memory; the kinds are
// interleaved and the best of 40 passes kept, so load from other processes hits all of them alike.
//   sparse_kernel_bench [rows cols]   (default 5632 2048: tinyllama-1.1b's w_gate)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "quant/quant_traits.h"

using namespace tessera;

int main(int argc, char** argv) {
  const int64_t rows = argc > 2 ? std::atoll(argv[1]) : 5632, cols = argc > 2 ? std::atoll(argv[2]) : 2048;
  struct Kind {
    DType dtype;
    int group;
    std::vector<std::vector<uint8_t>> mats;
    double best = 1e30;
  };
  std::vector<Kind> kinds = {{DType::Q8, 0, {}}, {DType::S24Q8, 0, {}}, {DType::Q4, 64, {}}, {DType::S24Q4, 0, {}}};
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> row(static_cast<size_t>(cols));
  for (Kind& k : kinds) {
    const size_t rb = dtype_row_bytes(k.dtype, cols, k.group);
    const int count = static_cast<int>(std::max<size_t>(2, (size_t{64} << 20) / (rb * static_cast<size_t>(rows)) + 1));
    for (int m = 0; m < count; ++m) {
      std::vector<uint8_t> bytes(rb * static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) {
        for (float& v : row) v = dist(rng);
        quant::quant_traits(k.dtype).quantize_row(row.data(), cols, k.group, nullptr, bytes.data() + r * rb);
      }
      k.mats.push_back(std::move(bytes));
    }
  }
  CpuBackend be(1);
  std::vector<float> x(static_cast<size_t>(cols)), y(static_cast<size_t>(rows));
  for (float& v : x) v = dist(rng);
  for (int pass = 0; pass < 40; ++pass) {
    for (Kind& k : kinds) {
      const auto t0 = std::chrono::steady_clock::now();
      for (const auto& m : k.mats)
        be.matmul(x.data(), 1, Matrix{k.dtype, rows, cols, m.data(), k.group}, nullptr, y.data());
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      k.best = std::min(k.best, s / static_cast<double>(k.mats.size()));
    }
  }
  std::printf("%s, %lld x %lld, 1 thread, best of 40\n", be.name().c_str(), static_cast<long long>(rows),
              static_cast<long long>(cols));
  for (const Kind& k : kinds) {
    const double bytes = static_cast<double>(dtype_row_bytes(k.dtype, cols, k.group)) * static_cast<double>(rows);
    std::printf("  %-10s %8.3f ms  %6.2f GB/s  %6.2f MB\n",
                (std::string(dtype_name(k.dtype)) + (k.group ? ":g" + std::to_string(k.group) : "")).c_str(),
                k.best * 1e3, bytes / k.best / 1e9, bytes / 1e6);
  }
  std::printf("  int8-2:4 vs int8: %.2fx; int4-2:4 vs int4:g64: %.2fx\n", kinds[0].best / kinds[1].best,
              kinds[2].best / kinds[3].best);
  return 0;
}
