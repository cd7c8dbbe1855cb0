// Fork-join thread pool for data-parallel loops over a range. The calling thread takes part in the work.
// run() does not allocate: the job is passed by reference and workers wait on a generation counter.
// Waiting spins briefly before it blocks: a decode step makes a few hundred calls a few tens of microseconds long,
// and waking a blocked thread costs about as much as a call (measured ~12 us per call on the reference VM).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace tessera {

class ThreadPool {
 public:
  // n_threads counts the caller: 1 means no extra threads.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(begin, end) over disjoint chunks covering [0, n), chunk boundaries multiples of `grain`.
  // Work is split evenly, one chunk per thread; returns when every chunk is done. If a chunk throws, the first
  // exception is rethrown here on the calling thread after all chunks have finished (none escapes a worker).
  template <typename Fn>
  void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
    if (n <= 0) return;
    using F = std::remove_reference_t<Fn>;
    Job job{&invoke<F>, const_cast<void*>(static_cast<const void*>(&fn)), n, grain < 1 ? 1 : grain};
    run(job);
  }

  // Number of cores the process may use (cgroup/affinity aware), at least 1.
  static int default_threads();

 private:
  struct Job {
    void (*call)(void* ctx, int64_t begin, int64_t end);
    void* ctx;
    int64_t n;
    int64_t grain;
  };
  template <typename F>
  static void invoke(void* ctx, int64_t begin, int64_t end) {
    (*static_cast<F*>(ctx))(begin, end);
  }

  void run(const Job& job);
  void do_chunk(const Job& job, int index);
  void worker_loop(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  // Written by run() before generation_ is advanced (release), read by workers after they see it (acquire).
  const Job* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::exception_ptr error_;  // first exception thrown by a chunk of the current job
};

}  // namespace tessera
