#include "engine/core/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <utility>

namespace tessera {

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  workers_.reserve(static_cast<size_t>(n_threads_ - 1));
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &job;
    pending_ = n_threads_ - 1;
    ++generation_;
  }
  start_cv_.notify_all();
  do_chunk(job, 0);
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [this] { return pending_ == 0; });
  job_ = nullptr;
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    const Job* job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
    }
    do_chunk(*job, index);
    {
      std::lock_guard<std::mutex> lock(mu_);
      --pending_;
      if (pending_ == 0) done_cv_.notify_one();
    }
  }
}

}  // namespace tessera
