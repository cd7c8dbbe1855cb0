// cpu::StepQueues / run_steps: every step of every slot is visited exactly once, whoever takes it, including when a
// thread starts late and the others take its steps from the back; and the CPU backend's decode, which balances its
// threads through them, gives every thread count the same bits. scripts/test.sh --tsan runs this suite again.
#include "engine/backend/cpu/step_queues.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "tests/backend/test_util.h"

namespace tessera {
namespace {

using cpu::StepQueues;

TEST(StepQueues, FrontAndBackSplitTheRun) {
  StepQueues q(2);
  q.reset(0, 10);
  q.reset(1, 0);
  EXPECT_EQ(q.take_back(1, 4).count, 0);
  const StepQueues::Taken a = q.take_front(0, 4);
  EXPECT_EQ(a.first, 0);
  EXPECT_EQ(a.count, 4);
  const StepQueues::Taken b = q.take_back(0, 4);
  EXPECT_EQ(b.first, 6);
  EXPECT_EQ(b.count, 4);
  const StepQueues::Taken c = q.take_front(0, 4);  // only steps 4 and 5 are left
  EXPECT_EQ(c.first, 4);
  EXPECT_EQ(c.count, 2);
  EXPECT_EQ(q.take_front(0, 4).count, 0);
  EXPECT_EQ(q.take_back(0, 4).count, 0);
  q.reset(0, 3);  // a new op starts from a full run again
  EXPECT_EQ(q.take_back(0, 8).count, 3);
}

// Threads run run_steps for their slots, concurrently, and one thread only after all the others have finished (a
// descheduled thread): the visits must cover every step of every slot exactly once, the late thread's slot emptied
// by the others.
TEST(StepQueues, EveryStepVisitedOnceAcrossThreads) {
  constexpr int kSlots = 4;
  std::mt19937 rng(5);
  StepQueues q(kSlots);
  for (int round = 0; round < 50; ++round) {
    std::vector<int64_t> steps(kSlots);
    std::vector<std::vector<std::atomic<int>>> seen;
    for (int t = 0; t < kSlots; ++t) {
      steps[t] = static_cast<int64_t>(rng() % 200);
      seen.emplace_back(static_cast<size_t>(steps[t]));
      q.reset(t, steps[t]);
    }
    const int late = round % kSlots;
    std::atomic<int> finished{0}, late_visits{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kSlots; ++t) {
      threads.emplace_back([&, t] {
        if (t == late) {
          while (finished.load(std::memory_order_acquire) < kSlots - 1) std::this_thread::yield();
        }
        cpu::run_steps(q, t, kSlots, 1 + t % 3, [&](int slot, int64_t k) {
          seen[static_cast<size_t>(slot)][static_cast<size_t>(k)].fetch_add(1, std::memory_order_relaxed);
          if (t == late) late_visits.fetch_add(1, std::memory_order_relaxed);
          std::this_thread::yield();  // give the others a chance to interleave
        });
        finished.fetch_add(1, std::memory_order_release);
      });
    }
    for (auto& th : threads) th.join();
    for (int t = 0; t < kSlots; ++t) {
      for (int64_t k = 0; k < steps[t]; ++k) {
        ASSERT_EQ(seen[t][k].load(), 1) << "round " << round << " slot " << t << " step " << k;
      }
    }
    EXPECT_EQ(late_visits.load(), 0) << "round " << round << ": the others left steps for the late thread";
  }
}

// Batch-1 decode shares its steps between threads; whoever computes a row, its bits are the one-thread ones. Row
// weights (bf16, int8 with fp32 or int8 activations, int4 in rows) and panel ones (int4 after upload).
TEST(StepQueues, DecodeBitsIndependentOfThreads) {
  struct Case {
    DType dtype;
    ActQuant act;
    bool upload;
  };
  std::mt19937 rng(9);
  const int64_t rows = 1000, cols = 256;
  for (const Case c : {Case{DType::BF16, ActQuant::kNone, false}, Case{DType::Q8, ActQuant::kNone, false},
                       Case{DType::Q8, ActQuant::kInt8, false}, Case{DType::Q4, ActQuant::kNone, false},
                       Case{DType::Q4, ActQuant::kNone, true}}) {
    SCOPED_TRACE(::testing::Message() << dtype_name(c.dtype) << (c.act == ActQuant::kInt8 ? " act-int8" : "")
                                      << (c.upload ? " uploaded" : ""));
    const test::OwnedMatrix host = test::any_matrix(rng, c.dtype, rows, cols, 32);
    const test::OwnedMatrix host_up = test::any_matrix(rng, c.dtype, rows, cols, 32);
    const auto x = test::random_vec(rng, static_cast<size_t>(cols));
    const auto bias = test::random_vec(rng, static_cast<size_t>(rows));
    std::vector<float> want(rows), want_ffn(rows);
    for (int threads : {1, 2, 3}) {
      CpuBackend be(threads);
      be.set_activation_quant(c.act);
      const Matrix w = c.upload ? be.upload(host.m) : host.m, up = c.upload ? be.upload(host_up.m) : host_up.m;
      for (int rep = 0; rep < (threads == 1 ? 1 : 20); ++rep) {
        std::vector<float> got = test::poisoned(rows), got_ffn = test::poisoned(rows);
        be.matmul(x.data(), 1, w, bias.data(), got.data());
        be.matmul_silu_mul(x.data(), 1, w, up, got_ffn.data());
        if (threads == 1) {
          want = got;
          want_ffn = got_ffn;
          continue;
        }
        ASSERT_EQ(std::memcmp(got.data(), want.data(), rows * sizeof(float)), 0) << threads << " threads";
        ASSERT_EQ(std::memcmp(got_ffn.data(), want_ffn.data(), rows * sizeof(float)), 0) << threads << " threads";
      }
    }
  }
}

}  // namespace
}  // namespace tessera
