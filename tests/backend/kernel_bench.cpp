// Private measurement tool for the CPU backend (not a test): memory read bandwidth and clock of this machine, then
// GEMV bandwidth (bf16/f16/f32 and the quantized types) and GEMM throughput (fp32, plus bf16, the fused MLP op and
// the quantized prefill paths) of one kernel set. Weights are laid out as CpuBackend::upload lays out a model's.
//
//   kernel_bench [--kernels auto|portable|avx2|avx512|avx512bf16] [--threads N] [--quick] [--quant-only]
//   [--per-call-min]
//
// --per-call-min (for a busy machine): every rate is taken from the fastest single call instead of the average
// over a loop of calls; calls are shorter than a scheduler time slice, so the fastest ones ran undisturbed. The
// clock estimate likewise takes the fastest of many short loops.
//
// Quantized GEMV lines report the bytes actually read (blocks with their scales) per second and the time per
// matrix relative to bf16 at the same shape ("x bf16" > 1 is faster). "int8+a8" is Q8 with int8 activations
// (ActQuant::kInt8); int4/nf4 GEMV always quantizes the activation vector to int8 blocks.
//
// GEMV is timed twice: "hot" repeats one matrix (it may sit partly in the last-level cache), "cold" rotates over
// enough copies (>= 256 MiB) that every pass streams from DRAM; cold is the number to compare with the read loop.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/cpu_features.h"
#include "engine/core/dtype.h"
#include "engine/core/thread_pool.h"
#include "quant/quant_traits.h"

namespace {

using Clock = std::chrono::steady_clock;
bool g_per_call_min = false;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Clock estimate: a chain of dependent integer adds retires one per cycle on any modern x86 core.
double estimate_ghz() {
  const uint64_t kIters = g_per_call_min ? 1'000'000 : 100'000'000;
  double best = 0;
  for (int rep = 0; rep < (g_per_call_min ? 300 : 5); ++rep) {
    uint64_t x = 0, i = kIters;
    const auto t0 = Clock::now();
#if defined(__x86_64__)
    asm volatile(
        "1:\n\t"
        "add $1, %0\n\t"
        "add $1, %0\n\t"
        "add $1, %0\n\t"
        "add $1, %0\n\t"
        "add $1, %0\n\t"
        "add $1, %0\n\t"
        "add $1, %0\n\t"
        "add $1, %0\n\t"
        "dec %1\n\t"
        "jnz 1b"
        : "+r"(x), "+r"(i));
#endif
    best = std::max(best, 8.0 * kIters / seconds_since(t0) / 1e9);
  }
  return best;
}

// Sums one thread's part of the buffer as `streams` interleaved sequential streams (1: plain sequential read;
// 4: the access pattern of a four-row GEMV). SSE only, so it runs everywhere.
float read_part_sse(const float* p, size_t len, int streams) {
  __m128 a0 = _mm_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  const size_t q = len / 4 / 4 * 4;  // floats per stream, a multiple of 4
  for (size_t i = 0; i < q; i += 4) {
    if (streams == 1) {
      a0 = _mm_add_ps(a0, _mm_loadu_ps(p + 4 * i));
      a1 = _mm_add_ps(a1, _mm_loadu_ps(p + 4 * i + 4));
      a2 = _mm_add_ps(a2, _mm_loadu_ps(p + 4 * i + 8));
      a3 = _mm_add_ps(a3, _mm_loadu_ps(p + 4 * i + 12));
    } else {
      a0 = _mm_add_ps(a0, _mm_loadu_ps(p + i));
      a1 = _mm_add_ps(a1, _mm_loadu_ps(p + q + i));
      a2 = _mm_add_ps(a2, _mm_loadu_ps(p + 2 * q + i));
      a3 = _mm_add_ps(a3, _mm_loadu_ps(p + 3 * q + i));
    }
  }
  return _mm_cvtss_f32(_mm_add_ps(_mm_add_ps(a0, a1), _mm_add_ps(a2, a3)));
}

// The same with 32-byte loads and two accumulators per stream (only called when the CPU has AVX2); with
// `prefetch`, each stream also prefetches 768 bytes ahead like the GEMV kernel, so the reference is not weaker
// than the kernel it judges.
__attribute__((target("avx2"))) float read_part_avx2(const float* p, size_t len, int streams, bool prefetch) {
  __m256 a[8];
  for (auto& v : a) v = _mm256_setzero_ps();
  const size_t q = len / 4 / 16 * 16;
  for (size_t i = 0; i < q; i += 16) {
    for (int s = 0; s < 4; ++s) {
      const float* ps = streams == 1 ? p + 4 * i + 16 * s : p + s * q + i;
      if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(ps + 192), _MM_HINT_T0);
      a[2 * s] = _mm256_add_ps(a[2 * s], _mm256_loadu_ps(ps));
      a[2 * s + 1] = _mm256_add_ps(a[2 * s + 1], _mm256_loadu_ps(ps + 8));
    }
  }
  for (int i = 1; i < 8; ++i) a[0] = _mm256_add_ps(a[0], a[i]);
  return _mm_cvtss_f32(_mm256_castps256_ps128(a[0]));
}

// Memory read bandwidth: each thread sums its part of a 1 GiB buffer; best over 1 and 4 streams, SSE and (when
// available) AVX2 loads without and with software prefetch, 4 runs each.
double read_bandwidth_gbs(tessera::ThreadPool& pool) {
  const size_t n = (size_t{1} << 30) / sizeof(float);
  std::vector<float> buf(n, 1.0f);
  const int parts = pool.size();
  std::vector<float> sums(static_cast<size_t>(parts) * 16);
  const bool avx2 = tessera::cpu_features().avx2;
  double best = 0;
  for (int variant = 0; variant < (avx2 ? 6 : 2); ++variant) {
    for (int rep = 0; rep < 4; ++rep) {
      const auto t0 = Clock::now();
      pool.parallel_for(parts, 1, [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
          const size_t lo = n * t / parts, len = n * (t + 1) / parts - lo;
          const int streams = variant % 2 == 0 ? 1 : 4;
          sums[static_cast<size_t>(t) * 16] += variant < 2
                                                   ? read_part_sse(buf.data() + lo, len, streams)
                                                   : read_part_avx2(buf.data() + lo, len, streams, variant >= 4);
        }
      });
      best = std::max(best, static_cast<double>(n * sizeof(float)) / seconds_since(t0) / 1e9);
    }
  }
  float total = 0;
  for (float s : sums) total += s;
  if (total == 42) std::printf(" ");  // keep the loads alive
  return best;
}

struct Weights {
  std::vector<uint8_t> bytes;
  tessera::Matrix m;
};

// A weight format for the benchmarks: dtype, group, and whether activations are quantized too (Q8: int8; BF16:
// rounded to bf16, CpuBackend::set_bf16_activations).
// Weights go through CpuBackend::upload as a model's do (Q4/Q4A into the panel layout) unless `rows` asks for the
// canonical row layout (for comparison; shown as "/rows").
struct Format {
  tessera::DType dtype;
  int group = 0;
  bool act_int8 = false;
  bool rows = false;
  bool act_bf16 = false;
  std::string name() const {
    std::string n(tessera::dtype_name(dtype));
    if (group) n += "-g" + std::to_string(group);
    if (act_int8) n += "+a8";
    if (act_bf16) n += "+b16";
    if (rows) n += "/rows";
    return n;
  }
};

Weights make_weights(tessera::DType t, int64_t rows, int64_t cols, uint32_t seed, int group = 0) {
  Weights w;
  const size_t count = static_cast<size_t>(rows * cols);
  uint32_t s = seed;
  if (tessera::is_quantized(t)) {
    const size_t row_bytes = tessera::dtype_row_bytes(t, cols, group);
    w.bytes.resize(static_cast<size_t>(rows) * row_bytes);
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (auto& v : row) {
        s = s * 1664525u + 1013904223u;
        v = static_cast<float>(static_cast<int32_t>(s >> 8) - (1 << 23)) / static_cast<float>(1 << 23);
      }
      tessera::quant::quant_traits(t).quantize_row(row.data(), cols, group, nullptr,
                                                   w.bytes.data() + static_cast<size_t>(r) * row_bytes);
    }
    w.m = tessera::Matrix{t, rows, cols, w.bytes.data(), group};
    return w;
  }
  w.bytes.resize(count * tessera::dtype_size(t));
  for (size_t i = 0; i < count; ++i) {
    s = s * 1664525u + 1013904223u;
    const float v = static_cast<float>(static_cast<int32_t>(s >> 8) - (1 << 23)) / static_cast<float>(1 << 23);
    if (t == tessera::DType::F32) {
      std::memcpy(w.bytes.data() + 4 * i, &v, 4);
    } else {
      const uint16_t h = t == tessera::DType::F16 ? tessera::f32_to_f16(v) : tessera::f32_to_bf16(v);
      std::memcpy(w.bytes.data() + 2 * i, &h, 2);
    }
  }
  w.m = tessera::Matrix{t, rows, cols, w.bytes.data()};
  return w;
}

std::vector<float> make_x(size_t n) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>((i * 37) % 101) / 101.0f - 0.5f;
  return x;
}

void set_activations(tessera::CpuBackend& be, const Format& f) {
  be.set_activation_quant(f.act_int8 ? tessera::ActQuant::kInt8 : tessera::ActQuant::kNone);
  be.set_bf16_activations(f.act_bf16);
}

// Returns the cold time per matrix in seconds.
double bench_gemv(tessera::CpuBackend& be, const Format& f, int64_t rows, int64_t cols, double dram_gbs, bool quick,
                  double bf16_seconds = 0) {
  const tessera::DType t = f.dtype;
  set_activations(be, f);
  const size_t bytes = static_cast<size_t>(rows) * tessera::dtype_row_bytes(t, cols, f.group);
  const int copies = quick ? 2 : static_cast<int>(std::max<size_t>(2, ((size_t{256} << 20) + bytes - 1) / bytes));
  std::vector<Weights> ws;
  if (tessera::is_quantized(t)) {  // quantize once, copy: quantizing hundreds of MiB would dominate the run
    ws.push_back(make_weights(t, rows, cols, 7u, f.group));
    for (int c = 1; c < copies; ++c) {
      Weights w;
      w.bytes = ws[0].bytes;
      w.m = ws[0].m;
      w.m.data = w.bytes.data();
      ws.push_back(std::move(w));
    }
  } else {
    for (int c = 0; c < copies; ++c) ws.push_back(make_weights(t, rows, cols, 7u + static_cast<uint32_t>(c)));
  }
  if (!f.rows) {
    for (Weights& w : ws) w.m = be.upload(w.m);
  }
  const auto x = make_x(static_cast<size_t>(cols));
  std::vector<float> y(static_cast<size_t>(rows));

  // Hot: one matrix over and over.
  for (int i = 0; i < 3; ++i) be.matmul(x.data(), 1, ws[0].m, nullptr, y.data());
  const int hot_reps = quick ? 10 : 40;
  double hot = 0;
  if (g_per_call_min) {
    for (int i = 0; i < 5 * hot_reps; ++i) {
      const auto t1 = Clock::now();
      be.matmul(x.data(), 1, ws[0].m, nullptr, y.data());
      hot = std::max(hot, static_cast<double>(bytes) / seconds_since(t1) / 1e9);
    }
  } else {
    const auto t0 = Clock::now();
    for (int i = 0; i < hot_reps; ++i) be.matmul(x.data(), 1, ws[0].m, nullptr, y.data());
    hot = static_cast<double>(bytes) * hot_reps / seconds_since(t0) / 1e9;
  }

  // Cold: rotate over the copies so each pass streams from DRAM; best of several rounds.
  double cold = 0;
  for (int round = 0; round < (quick ? 2 : 5); ++round) {
    const auto t0 = Clock::now();
    for (int c = 0; c < copies; ++c) {
      const auto t1 = Clock::now();
      be.matmul(x.data(), 1, ws[static_cast<size_t>(c)].m, nullptr, y.data());
      if (g_per_call_min) cold = std::max(cold, static_cast<double>(bytes) / seconds_since(t1) / 1e9);
    }
    if (!g_per_call_min) cold = std::max(cold, static_cast<double>(bytes) * copies / seconds_since(t0) / 1e9);
  }
  const double seconds = static_cast<double>(bytes) / (cold * 1e9);
  std::printf("GEMV %-12s %5lldx%-5lld  hot %6.1f GB/s   cold %6.1f GB/s  (%3.0f%% of read loop)  %7.1f us",
              f.name().c_str(), static_cast<long long>(rows), static_cast<long long>(cols), hot, cold,
              100.0 * cold / dram_gbs, seconds * 1e6);
  if (bf16_seconds > 0) std::printf("  %.2fx bf16", bf16_seconds / seconds);
  std::printf("\n");
  set_activations(be, {});
  return seconds;
}

double bench_gemm(tessera::CpuBackend& be, const Format& f, int n, int64_t rows, int64_t cols, double peak_gflops,
                  bool fused, double fp32_gflops = 0) {
  const tessera::DType t = f.dtype;
  set_activations(be, f);
  auto w = make_weights(t, rows, cols, 11, f.group);
  auto w2 = make_weights(t, rows, cols, 13, f.group);
  if (!f.rows) {
    w.m = be.upload(w.m);
    w2.m = be.upload(w2.m);
  }
  const auto x = make_x(static_cast<size_t>(n) * cols);
  std::vector<float> y(static_cast<size_t>(n) * rows);
  const auto call = [&] {
    if (fused) {
      be.matmul_silu_mul(x.data(), n, w.m, w2.m, y.data());
    } else {
      be.matmul(x.data(), n, w.m, nullptr, y.data());
    }
  };
  call();
  double best = 0;
  for (int rep = 0; rep < (g_per_call_min ? 20 : 5); ++rep) {
    const int inner = g_per_call_min ? 1 : 3;
    const auto t0 = Clock::now();
    for (int i = 0; i < inner; ++i) call();
    const double flops = 2.0 * n * rows * cols * (fused ? 2 : 1) * inner;
    best = std::max(best, flops / seconds_since(t0) / 1e9);
  }
  std::printf("GEMM %-12s n=%-4d %5lldx%-5lld%s %7.1f GFLOP/s  (%3.0f%% of fp32 peak, %.1f GFLOP/s per thread)",
              f.name().c_str(), n, static_cast<long long>(rows), static_cast<long long>(cols),
              fused ? " silu_mul" : "         ", best, 100.0 * best / (peak_gflops * be.threads()),
              best / be.threads());
  if (fp32_gflops > 0) std::printf("  %.2fx fp32", best / fp32_gflops);
  std::printf("\n");
  set_activations(be, {});
  return best;
}

// Batched decode (Backend::matmul_rows: one x row per sequence, each bit for bit its single-row result): the
// serving engine's decode step at batch n. Reports the flop rate; the weights stay in cache across calls.
void bench_batched_decode(tessera::CpuBackend& be, const Format& f, int n, int64_t rows, int64_t cols,
                          double peak_gflops) {
  set_activations(be, f);
  auto w = make_weights(f.dtype, rows, cols, 17);
  w.m = be.upload(w.m);
  const auto x = make_x(static_cast<size_t>(n) * cols);
  std::vector<float> y(static_cast<size_t>(n) * rows);
  be.matmul_rows(x.data(), n, w.m, nullptr, y.data());
  double best = 0;
  for (int rep = 0; rep < (g_per_call_min ? 20 : 5); ++rep) {
    const int inner = g_per_call_min ? 1 : 5;
    const auto t0 = Clock::now();
    for (int i = 0; i < inner; ++i) be.matmul_rows(x.data(), n, w.m, nullptr, y.data());
    best = std::max(best, 2.0 * n * rows * cols * inner / seconds_since(t0) / 1e9);
  }
  std::printf("decode batch %-9s n=%-4d %5lldx%-5lld %7.1f GFLOP/s  (%3.0f%% of fp32 peak)\n", f.name().c_str(), n,
              static_cast<long long>(rows), static_cast<long long>(cols), best,
              100.0 * best / (peak_gflops * be.threads()));
  set_activations(be, {});
}

// Attention over a filled cache: decode reports the K/V read rate, prefill the flop rate (QK and PV, causal).
void bench_attention(tessera::CpuBackend& be, int n, int pos0) {
  const tessera::AttentionShape shape{32, 8, 128};
  const int capacity = pos0 + n;
  const size_t kv_dim = static_cast<size_t>(shape.n_kv_heads) * shape.head_dim;
  const auto k = make_x(static_cast<size_t>(capacity) * kv_dim);
  const auto v = make_x(static_cast<size_t>(capacity) * kv_dim);
  const auto q = make_x(static_cast<size_t>(n) * shape.n_heads * shape.head_dim);
  std::vector<float> out(q.size());
  const tessera::KvLayer kv{const_cast<float*>(k.data()), const_cast<float*>(v.data()), capacity,
                            static_cast<int>(kv_dim)};
  be.attention(q.data(), n, pos0, kv, shape, out.data());
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    be.attention(q.data(), n, pos0, kv, shape, out.data());
    best = std::min(best, seconds_since(t0));
  }
  double keys = 0;  // sum over query rows of the keys each one sees
  for (int i = 0; i < n; ++i) keys += pos0 + i + 1;
  const double flops = 4.0 * keys * shape.n_heads * shape.head_dim;
  std::printf("attention 32/8x128 n=%-4d pos0=%-5d %8.3f ms  %7.1f GFLOP/s  (K/V %.1f GB/s)\n", n, pos0, best * 1e3,
              flops / best / 1e9, 2.0 * capacity * kv_dim * sizeof(float) / best / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  tessera::CpuKernels kernels = tessera::CpuKernels::kAuto;
  int threads = 1;
  bool quick = false, quant_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--kernels" && i + 1 < argc) {
      const std::string k = argv[++i];
      kernels = k == "portable"     ? tessera::CpuKernels::kPortable
                : k == "avx2"       ? tessera::CpuKernels::kAvx2
                : k == "avx512"     ? tessera::CpuKernels::kAvx512
                : k == "avx512bf16" ? tessera::CpuKernels::kAvx512Bf16
                                    : tessera::CpuKernels::kAuto;
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::stoi(argv[++i]);
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--quant-only") {
      quant_only = true;
    } else if (a == "--per-call-min") {
      g_per_call_min = true;
    } else {
      std::fprintf(
          stderr,
          "usage: kernel_bench [--kernels auto|portable|avx2|avx512|avx512bf16] [--threads N] [--quick] [--quant-only] "
          "[--per-call-min]\n");
      return 2;
    }
  }
  tessera::CpuBackend be(threads, kernels);
  const double ghz = estimate_ghz();
  const double peak = 2 * 8 * 2 * ghz;  // per core: 2 FMA pipes x 8 fp32 lanes x 2 flops
  tessera::ThreadPool pool(be.threads());
  const double read_gbs = read_bandwidth_gbs(pool);
  std::printf("backend %s\n", be.name().c_str());
  std::printf("clock ~%.2f GHz (dependent-add loop) -> fp32 FMA peak %.1f GFLOP/s per core\n", ghz, peak);
  std::printf("memory read loop (1 GiB, %d threads): %.1f GB/s\n", be.threads(), read_gbs);

  using tessera::DType;
  if (!quant_only) {
    for (const Format& f :
         {Format{DType::BF16}, Format{DType::BF16, 0, false, false, true}, Format{DType::F16}, Format{DType::F32}}) {
      bench_gemv(be, f, 2048, 5632, read_gbs, quick);
      bench_gemv(be, f, 5632, 2048, read_gbs, quick);
    }
    bench_gemm(be, {DType::F32}, 128, 2048, 2048, peak, false);
    for (const Format& f : {Format{DType::BF16}, Format{DType::BF16, 0, false, false, true}}) {
      bench_gemm(be, f, 128, 2048, 2048, peak, false);
      bench_gemm(be, f, 128, 5632, 2048, peak, true);
      bench_gemm(be, f, 32, 768, 768, peak, false);
    }
    bench_gemm(be, {DType::F32}, 4, 2048, 2048, peak, false);
    const Format bf16_b16{DType::BF16, 0, false, false, true};
    for (const Format& f : {Format{DType::BF16}, bf16_b16}) {
      for (int n : {4, 16, 32, 64}) bench_batched_decode(be, f, n, 768, 768, peak);
    }
    for (int n : {16, 32, 64}) bench_gemm(be, {DType::BF16}, n, 768, 768, peak, false);
    bench_batched_decode(be, {DType::BF16}, 16, 2048, 768, peak);
    bench_batched_decode(be, bf16_b16, 16, 2048, 768, peak);
    bench_batched_decode(be, {DType::F32}, 16, 768, 768, peak);
    bench_attention(be, 1, 4095);
    bench_attention(be, 128, 0);
    bench_attention(be, 128, 1024);
  }

  // Quantized weights (tinyllama-1.1b shapes: w_gate/w_up 5632x2048, w_down 2048x5632).
  const Format quant_formats[] = {
      {DType::Q8},      {DType::Q8, 0, true}, {DType::Q4, 32},  {DType::Q4, 128},
      {DType::Q4A, 32}, {DType::NF4, 64},     {DType::NF4, 32}, {DType::Q4, 32, false, true}};
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{2048, 5632}, {5632, 2048}}) {
    const double bf16 = bench_gemv(be, {DType::BF16}, rows, cols, read_gbs, quick);
    for (const Format& f : quant_formats) bench_gemv(be, f, rows, cols, read_gbs, quick, bf16);
  }
  const double fp32 = bench_gemm(be, {DType::F32}, 512, 2048, 2048, peak, false);
  bench_gemm(be, {DType::Q8, 0, true}, 512, 2048, 2048, peak, false, fp32);
  bench_gemm(be, {DType::Q8, 0, true}, 512, 5632, 2048, peak, true, fp32);
  bench_gemm(be, {DType::Q8}, 512, 2048, 2048, peak, false, fp32);
  bench_gemm(be, {DType::Q4, 32}, 512, 2048, 2048, peak, false, fp32);
  bench_gemm(be, {DType::Q4, 32, false, true}, 512, 2048, 2048, peak, false, fp32);
  bench_gemm(be, {DType::NF4, 64}, 512, 2048, 2048, peak, false, fp32);
  return 0;
}
