#include "engine/core/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <utility>

namespace tessera {

namespace {

// Polls before a waiter blocks on its condition variable: a few thousand pauses, tens of microseconds to a couple of
// hundred depending on the CPU's pause latency (65 cycles on Zen 3, about 140 on recent Intel cores).
constexpr int kSpinIterations = 4000;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Polls `done` up to kSpinIterations times; true as soon as it holds.
template <typename Done>
bool spin_until(const Done& done) {
  for (int i = 0; i < kSpinIterations; ++i) {
    if (done()) return true;
    cpu_relax();
  }
  return false;
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  workers_.reserve(static_cast<size_t>(n_threads_ - 1));
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true, std::memory_order_release);
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

int ThreadPool::default_threads() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

void ThreadPool::do_chunk(const Job& job, int index) {
  // Even split in units of `grain`, so every chunk but the last is a multiple of it.
  const int64_t units = (job.n + job.grain - 1) / job.grain;
  const int64_t begin_unit = units * index / n_threads_;
  const int64_t end_unit = units * (index + 1) / n_threads_;
  const int64_t begin = begin_unit * job.grain;
  const int64_t end = std::min(job.n, end_unit * job.grain);
  if (begin >= end) return;
  try {
    job.call(job.ctx, begin, end);
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_) error_ = std::current_exception();
  }
}

void ThreadPool::run(const Job& job) {
  if (n_threads_ == 1) {
    job.call(job.ctx, 0, job.n);  // on the calling thread: exceptions propagate as usual
    return;
  }
  job_ = &job;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  {
    // Under the lock, so a worker that found no new generation and is about to block cannot miss the notify.
    std::lock_guard<std::mutex> lock(mu_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  start_cv_.notify_all();
  do_chunk(job, 0);
  const auto finished = [this] { return pending_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(finished)) {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, finished);
  }
  job_ = nullptr;
  std::lock_guard<std::mutex> lock(mu_);  // error_ is written under it by the chunks
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  const auto woken = [&] {
    return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
  };
  for (;;) {
    if (!spin_until(woken)) {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, woken);
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen = generation_.load(std::memory_order_acquire);
    do_chunk(*job_, index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);  // the caller checks pending_ under it before it blocks
      done_cv_.notify_one();
    }
  }
}

}  // namespace tessera
