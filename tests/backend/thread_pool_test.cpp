// ThreadPool::parallel_for: every index visited exactly once, chunk boundaries on the grain, any n (including n
// smaller than the thread count), and the pool reusable for many jobs in a row.
#include "engine/core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

namespace tessera {
namespace {

struct Visits {
  explicit Visits(int64_t n) : count(static_cast<size_t>(n)) {}
  std::vector<std::atomic<int>> count;
  std::atomic<int> bad_chunks{0};
  std::atomic<int> chunks{0};
};

void run_and_check(ThreadPool& pool, int64_t n, int64_t grain) {
  SCOPED_TRACE(::testing::Message() << "threads=" << pool.size() << " n=" << n << " grain=" << grain);
  Visits v(n);
  const int64_t g = grain < 1 ? 1 : grain;
  pool.parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    v.chunks.fetch_add(1);
    // Non-empty, in range, starting on a grain boundary and ending on one (or at n).
    if (!(0 <= begin && begin < end && end <= n && begin % g == 0 && (end % g == 0 || end == n))) {
      v.bad_chunks.fetch_add(1);
    }
    for (int64_t i = begin; i < end; ++i) v.count[static_cast<size_t>(i)].fetch_add(1);
  });
  EXPECT_EQ(v.bad_chunks.load(), 0);
  EXPECT_LE(v.chunks.load(), pool.size());
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(v.count[static_cast<size_t>(i)].load(), 1) << "index " << i;
}

TEST(ThreadPool, EveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 4, 7}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 2, 3, 5, 6, 7, 8, 16, 17, 100, 1001, 65537}) {
      for (int64_t grain : {0, 1, 2, 3, 4, 8, 64, 1000, 100000}) run_and_check(pool, n, grain);
    }
  }
}

TEST(ThreadPool, SizesBelowThreadCount) {
  // Fewer units than threads: some threads get nothing, none may get a unit twice.
  ThreadPool pool(8);
  for (int64_t n = 0; n < 8; ++n) {
    run_and_check(pool, n, 1);
    run_and_check(pool, n, 3);
  }
  // Slot-style use (n == threads, grain 1): each chunk is exactly one index.
  std::atomic<int> bad{0};
  pool.parallel_for(8, 1, [&](int64_t begin, int64_t end) {
    if (end != begin + 1) bad.fetch_add(1);
  });
  EXPECT_EQ(bad.load(), 0);
}

TEST(ThreadPool, ManyJobsInARow) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  for (int iter = 0; iter < 2000; ++iter) {
    pool.parallel_for(10, 1, [&](int64_t begin, int64_t end) { total.fetch_add(end - begin); });
  }
  EXPECT_EQ(total.load(), 20000);
}

TEST(ThreadPool, CallerTakesPartAndWorkersRun) {
  // With enough units every thread of the pool gets a chunk.
  ThreadPool pool(4);
  std::mutex mu;
  std::vector<std::thread::id> ids;
  pool.parallel_for(4, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    ids.push_back(std::this_thread::get_id());
  });
  ASSERT_EQ(ids.size(), 4u);
  int caller = 0;
  for (auto id : ids) caller += id == std::this_thread::get_id();
  EXPECT_EQ(caller, 1);
}

// An exception in a worker's chunk reaches the caller (after every chunk finished), never std::terminate.
TEST(ThreadPool, ExceptionsReachTheCaller) {
  ThreadPool pool(3);
  for (int throwing_chunk = 0; throwing_chunk < 3; ++throwing_chunk) {
    std::atomic<int> finished{0};
    EXPECT_THROW(pool.parallel_for(3, 1,
                                   [&](int64_t b, int64_t) {
                                     if (b == throwing_chunk) throw std::runtime_error("chunk failed");
                                     finished.fetch_add(1);
                                   }),
                 std::runtime_error);
    EXPECT_EQ(finished.load(), 2);
  }
  // The pool is still usable afterwards.
  std::atomic<int64_t> sum{0};
  pool.parallel_for(100, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sum.fetch_add(i);
  });
  EXPECT_EQ(sum.load(), 4950);
}

TEST(ThreadPool, DefaultThreadsPositive) {
  EXPECT_GE(ThreadPool::default_threads(), 1);
}

}  // namespace
}  // namespace tessera
