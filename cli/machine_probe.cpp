#include "cli/machine_probe.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "engine/core/cpu_features.h"
#include "engine/core/thread_pool.h"

namespace tessera::cli {

// Defined in probe_avx2.cpp (compiled with AVX2/FMA flags; only called when cpuid says so).
uint64_t read_sum_avx2(const uint8_t* data, size_t bytes);
double fma_loop_avx2(long iterations);    // returns the flop count it executed
double fma_loop_avx512(long iterations);  // likewise; only with cpu_features().has_avx512()

namespace {

using Clock = std::chrono::steady_clock;

uint64_t read_sum_portable(const uint8_t* data, size_t bytes) {
  const auto* p = reinterpret_cast<const uint64_t*>(data);
  uint64_t a = 0, b = 0, c = 0, d = 0;
  for (size_t i = 0; i + 4 <= bytes / 8; i += 4) {
    a += p[i];
    b += p[i + 1];
    c += p[i + 2];
    d += p[i + 3];
  }
  return a ^ b ^ c ^ d;
}

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

}  // namespace

double measure_read_bandwidth_gbs(int threads) {
  constexpr size_t kBytes = size_t{1} << 30;  // 1 GiB: far beyond any cache
  std::unique_ptr<uint8_t, FreeDeleter> buf(static_cast<uint8_t*>(std::aligned_alloc(64, kBytes)));
  if (!buf) throw std::bad_alloc();
  std::memset(buf.get(), 1, kBytes);  // touch every page so the timing sees no page faults
  ThreadPool pool(threads);
  const bool avx2 = cpu_features().has_avx2_fma();
  constexpr int64_t kChunk = 1 << 20;
  volatile uint64_t sink = 0;
  double best = 0.0;
  for (int pass = 0; pass < 4; ++pass) {
    const auto t0 = Clock::now();
    pool.parallel_for(static_cast<int64_t>(kBytes) / kChunk, 1, [&](int64_t begin, int64_t end) {
      const uint8_t* p = buf.get() + begin * kChunk;
      const size_t n = static_cast<size_t>(end - begin) * kChunk;
      sink = sink + (avx2 ? read_sum_avx2(p, n) : read_sum_portable(p, n));
    });
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, static_cast<double>(kBytes) / s / 1e9);
  }
  return best;
}

double measure_fma_peak_gflops() {
  if (!cpu_features().has_avx2_fma()) return 0.0;
  // The peak of the widest FMA the CPU backend's kernels use (it picks AVX-512 whenever cpuid offers it).
  const auto loop = cpu_features().has_avx512() ? fma_loop_avx512 : fma_loop_avx2;
  loop(1 << 20);  // warm up the clock
  double best = 0.0;
  for (int pass = 0; pass < 3; ++pass) {
    const auto t0 = Clock::now();
    const double flops = loop(cpu_features().has_avx512() ? 20'000'000 : 40'000'000);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, flops / s / 1e9);
  }
  return best;
}

MachineFigures probe_machine(const std::vector<int>& threads) {
  auto measure = [&] {
    MachineFigures f;
    for (int t : threads) f.read_bandwidth_gbs.push_back(measure_read_bandwidth_gbs(t));
    f.fma_peak_gflops_per_core = measure_fma_peak_gflops();
    return f;
  };
  int fds[2];
  if (::pipe(fds) != 0) return measure();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return measure();
  }
  const size_t n = threads.size() + 1;
  if (pid == 0) {
    ::close(fds[0]);
    const MachineFigures f = measure();
    std::vector<double> out(f.read_bandwidth_gbs);
    out.push_back(f.fma_peak_gflops_per_core);
    const ssize_t written = ::write(fds[1], out.data(), n * sizeof(double));
    ::_exit(written == static_cast<ssize_t>(n * sizeof(double)) ? 0 : 1);
  }
  ::close(fds[1]);
  std::vector<double> in(n, 0.0);
  size_t got = 0;
  auto* bytes = reinterpret_cast<char*>(in.data());
  while (got < n * sizeof(double)) {
    const ssize_t r = ::read(fds[0], bytes + got, n * sizeof(double) - got);
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (got != n * sizeof(double)) return measure();
  MachineFigures f;
  f.read_bandwidth_gbs.assign(in.begin(), in.end() - 1);
  f.fma_peak_gflops_per_core = in.back();
  return f;
}

long long peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<long long>(ru.ru_maxrss) * 1024;
}

}  // namespace tessera::cli
