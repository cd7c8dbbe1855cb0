// MPI communicator tests: one GoogleTest binary that every rank runs (mpiexec -n 1..4); each TEST is collective,
// so every rank runs the same tests in the same order. Only rank 0 prints the usual report; other ranks print
// their failures, prefixed with their rank. The job fails if any rank fails (and a rank that leaves a collective
// early makes the others time out loudly rather than hang).
#include "parallel/mpi_communicator.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/core/check.h"
#include "parallel/consistency.h"

namespace tessera {
namespace {

MpiRuntime* g_runtime = nullptr;
MpiCommunicator* g_world = nullptr;
constexpr double kTimeout = 60.0;

MpiCommunicator& world() {
  return *g_world;
}

// True on every rank iff `ok` on every rank (so all ranks take the same branch afterwards).
bool all_ranks(Communicator& comm, bool ok) {
  float bad = ok ? 0.0f : 1.0f;
  comm.all_reduce_sum(&bad, 1);
  return bad == 0.0f;
}

TEST(MpiWorld, RankSizeName) {
  EXPECT_EQ(world().rank(), g_runtime->world_rank());
  EXPECT_EQ(world().size(), g_runtime->world_size());
  EXPECT_EQ(world().name(), "mpi:world");
  EXPECT_EQ(world().timeout_seconds(), kTimeout);
  world().barrier();
}

TEST(MpiWorld, TimeoutMustBePositive) {
  EXPECT_THROW(MpiCommunicator(*g_runtime, 0.0), Error);
  EXPECT_THROW(MpiCommunicator(*g_runtime, -1.0), Error);
  EXPECT_THROW(MpiCommunicator(*g_runtime, std::nan("")), Error);
  MpiCommunicator unbounded(*g_runtime, std::numeric_limits<double>::infinity(), "unbounded");
  unbounded.barrier();
}

TEST(MpiAllReduce, ExactSumsOnRaggedSizes) {
  const int p = world().size();
  const int r = world().rank();
  for (size_t count : {size_t{0}, size_t{1}, size_t{3}, size_t{7}, size_t{1000}, (size_t{1} << 20) + 3}) {
    std::vector<float> x(count);
    for (size_t i = 0; i < count; ++i) x[i] = static_cast<float>((r + 1) * static_cast<int>(i % 17 + 1));
    world().all_reduce_sum(x.data(), count);
    size_t wrong = 0;
    for (size_t i = 0; i < count; ++i) {
      wrong += x[i] != static_cast<float>(static_cast<int>(i % 17 + 1) * p * (p + 1) / 2);
    }
    EXPECT_EQ(wrong, 0u) << "count " << count;
  }
}

// Tensor-parallel ranks must see the very same sums, bit for bit, or their sampled tokens drift apart.
TEST(MpiAllReduce, BitwiseIdenticalOnEveryRank) {
  const int p = world().size();
  for (size_t count : {size_t{4099}, (size_t{1} << 20) + 3}) {  // small and large messages take other algorithms
    auto input = [&](int rank) {
      std::mt19937 gen(1234 + rank);
      std::normal_distribution<float> dist(0.0f, 3.0f);
      std::vector<float> v(count);
      for (float& f : v) f = dist(gen);
      return v;
    };
    std::vector<float> x = input(world().rank());
    world().all_reduce_sum(x.data(), count);
    std::vector<double> reference(count, 0.0);
    for (int q = 0; q < p; ++q) {
      const std::vector<float> v = input(q);
      for (size_t i = 0; i < count; ++i) reference[i] += v[i];
    }
    size_t far = 0;
    for (size_t i = 0; i < count; ++i) far += std::fabs(x[i] - reference[i]) > 1e-5 * (1 + std::fabs(reference[i]));
    EXPECT_EQ(far, 0u) << "count " << count;
    std::vector<float> everyone(count * p);
    world().all_gather(x.data(), count, everyone.data());
    for (int q = 0; q < p; ++q) {
      EXPECT_EQ(std::memcmp(everyone.data() + q * count, x.data(), count * sizeof(float)), 0)
          << "rank " << q << " count " << count;
    }
  }
}

TEST(MpiAllGather, RaggedSizes) {
  const int p = world().size();
  for (size_t count : {size_t{0}, size_t{1}, size_t{5}, size_t{4099}, (size_t{1} << 18) + 1}) {
    std::vector<float> in(count);
    for (size_t i = 0; i < count; ++i) in[i] = static_cast<float>(1000 * world().rank() + static_cast<int>(i % 1000));
    std::vector<float> out(count * p + 1, -1.0f);  // one guard element past the end
    world().all_gather(in.data(), count, out.data());
    size_t wrong = 0;
    for (int q = 0; q < p; ++q) {
      for (size_t i = 0; i < count; ++i) wrong += out[q * count + i] != static_cast<float>(1000 * q + (i % 1000));
    }
    EXPECT_EQ(wrong, 0u) << "count " << count;
    EXPECT_EQ(out.back(), -1.0f) << "wrote past the end, count " << count;
  }
}

TEST(MpiAllGather, OddByteCounts) {
  const int p = world().size();
  for (size_t bytes : {size_t{3}, size_t{13}}) {
    std::vector<unsigned char> in(bytes, static_cast<unsigned char>(0x40 + world().rank()));
    std::vector<unsigned char> out(bytes * p);
    world().all_gather_bytes(in.data(), bytes, out.data());
    for (int q = 0; q < p; ++q) {
      for (size_t i = 0; i < bytes; ++i) ASSERT_EQ(out[q * bytes + i], 0x40 + q);
    }
  }
}

TEST(MpiBroadcast, EveryRootRaggedSizes) {
  const int p = world().size();
  for (int root = 0; root < p; ++root) {
    for (size_t bytes : {size_t{0}, size_t{1}, size_t{13}, size_t{4101}, (size_t{1} << 20) + 1}) {
      std::vector<unsigned char> buf(bytes);
      for (size_t i = 0; i < bytes; ++i) {
        buf[i] = world().rank() == root ? static_cast<unsigned char>(i * 7 + root) : 0xEE;
      }
      world().broadcast(buf.data(), bytes, root);
      size_t wrong = 0;
      for (size_t i = 0; i < bytes; ++i) wrong += buf[i] != static_cast<unsigned char>(i * 7 + root);
      EXPECT_EQ(wrong, 0u) << "root " << root << " bytes " << bytes;
    }
  }
}

// A control message: a small step plan from rank 0.
TEST(MpiBroadcast, StepPlanStruct) {
  struct Plan {
    int32_t step;
    int32_t n_tokens;
    int64_t seq_ids[4];
  } plan{};
  if (world().rank() == 0) plan = {17, 3, {5, 6, 7, -1}};
  world().broadcast(&plan, sizeof(plan), 0);
  EXPECT_EQ(plan.step, 17);
  EXPECT_EQ(plan.n_tokens, 3);
  EXPECT_EQ(plan.seq_ids[2], 7);
}

// Each rank passes a message to the next around the ring. Even ranks send first, odd ranks receive first, so a
// large (rendezvous) send always finds its receive.
TEST(MpiSendRecv, RingSmallAndLarge) {
  const int p = world().size();
  if (p < 2) GTEST_SKIP() << "needs 2 ranks";
  const int r = world().rank();
  const int next = (r + 1) % p;
  const int prev = (r + p - 1) % p;
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{100}, (size_t{1} << 20) + 3}) {
    std::vector<unsigned char> out(bytes), in(bytes, 0xEE);
    for (size_t i = 0; i < bytes; ++i) out[i] = static_cast<unsigned char>(i + 31 * r);
    if (r % 2 == 0) {
      world().send(out.data(), bytes, next, 3);
      world().recv(in.data(), bytes, prev, 3);
    } else {
      world().recv(in.data(), bytes, prev, 3);
      world().send(out.data(), bytes, next, 3);
    }
    size_t wrong = 0;
    for (size_t i = 0; i < bytes; ++i) wrong += in[i] != static_cast<unsigned char>(i + 31 * prev);
    EXPECT_EQ(wrong, 0u) << "bytes " << bytes;
  }
}

// Messages match by tag, not by arrival order (small messages, which MPI sends eagerly).
TEST(MpiSendRecv, TagsMatchOutOfOrder) {
  const int p = world().size();
  if (p < 2) GTEST_SKIP() << "needs 2 ranks";
  if (world().rank() == 0) {
    for (int dst = 1; dst < p; ++dst) {
      const int64_t first = 500 + dst, second = 900 + dst;
      world().send(&first, sizeof(first), dst, 5);
      world().send(&second, sizeof(second), dst, kMaxTag);
    }
  } else {
    int64_t a = 0, b = 0;
    world().recv(&b, sizeof(b), 0, kMaxTag);
    world().recv(&a, sizeof(a), 0, 5);
    EXPECT_EQ(a, 500 + world().rank());
    EXPECT_EQ(b, 900 + world().rank());
  }
  world().barrier();
}

// Pipeline parallelism: activations go stage 0 -> 1 -> ... -> p-1, each stage adding its rank.
TEST(MpiSendRecv, PipelineChain) {
  const int p = world().size();
  const int r = world().rank();
  const size_t count = 3 * 1000 + 1;
  std::vector<float> act(count, 0.0f);
  if (r > 0) world().recv(act.data(), count * sizeof(float), r - 1, 11);
  for (size_t i = 0; i < count; ++i) act[i] += static_cast<float>(r + i % 3);
  if (r + 1 < p) world().send(act.data(), count * sizeof(float), r + 1, 11);
  if (r == p - 1) {
    size_t wrong = 0;
    for (size_t i = 0; i < count; ++i) wrong += act[i] != static_cast<float>(p * (p - 1) / 2 + p * (i % 3));
    EXPECT_EQ(wrong, 0u);
  }
  world().barrier();
}

// Vocab-parallel greedy sampling: the vocabulary (1003 entries) is cut into uneven shards; each rank reduces its
// shard and argmax_all must find the same token as a greedy pass over the whole vocabulary.
TEST(MpiArgmax, VocabShardsMatchWholeVocabulary) {
  const int p = world().size();
  const int r = world().rank();
  const int64_t vocab = 1003;
  for (int trial = 0; trial < 20; ++trial) {
    std::mt19937 gen(77 + trial);  // the same logits on every rank
    std::uniform_int_distribution<int> dist(-50, 50);
    std::vector<float> logits(vocab);
    for (float& f : logits) f = static_cast<float>(dist(gen)) * 0.25f;
    if (trial % 2 == 1) logits[vocab - 1] = logits[5] = 100.0f;  // a tie between the first and last shard
    if (trial == 4) logits[0] = std::numeric_limits<float>::quiet_NaN();
    int64_t expected = -1;
    for (int64_t i = 0; i < vocab; ++i) {
      if (std::isnan(logits[i])) continue;
      if (expected < 0 || logits[i] > logits[expected]) expected = i;
    }
    // Shard sizes vocab/p (+1 for the first vocab%p ranks).
    const int64_t base = vocab / p, extra = vocab % p;
    const int64_t begin = r * base + std::min<int64_t>(r, extra);
    const int64_t end = begin + base + (r < extra ? 1 : 0);
    ArgmaxCandidate local;
    for (int64_t i = begin; i < end; ++i) local = better_candidate(local, {logits[i], i});
    const ArgmaxCandidate best = world().argmax_all(local);
    EXPECT_EQ(best.index, expected) << "trial " << trial;
    EXPECT_EQ(best.value, logits[expected]) << "trial " << trial;
  }
}

TEST(MpiArgmax, TiesEmptyShardsAndNaN) {
  const int p = world().size();
  const int r = world().rank();
  // Equal maxima everywhere: the lowest global index wins, whichever rank holds it.
  EXPECT_EQ(world().argmax_all({2.5f, 100 - r}).index, 100 - (p - 1));
  // Rank 0 has an empty shard, rank 1 (if any) only NaN: the best number elsewhere wins.
  ArgmaxCandidate local{static_cast<float>(r), 10 + r};
  if (r == 0) local = {};
  if (r == 1) local = {std::numeric_limits<float>::quiet_NaN(), 3};
  const ArgmaxCandidate best = world().argmax_all(local);
  if (p == 1) {
    EXPECT_EQ(best.index, -1);
  } else if (p == 2) {
    EXPECT_EQ(best.index, 3);
  } else {
    EXPECT_EQ(best.index, 10 + p - 1);
  }
}

// color = rank % 2, key = -rank: two groups, each in reverse rank order.
TEST(MpiSplit, EvenOddReversed) {
  const int p = world().size();
  const int r = world().rank();
  auto group = world().split(r % 2, -r);
  const int members = (p + 1 - r % 2) / 2;
  EXPECT_EQ(group->size(), members);
  EXPECT_EQ(group->rank(), members - 1 - r / 2);
  EXPECT_EQ(group->name(), "mpi:world/c" + std::to_string(r % 2));
  EXPECT_EQ(group->timeout_seconds(), kTimeout);
  float x = static_cast<float>(r);
  group->all_reduce_sum(&x, 1);
  float expected = 0;
  for (int q = r % 2; q < p; q += 2) expected += static_cast<float>(q);
  EXPECT_EQ(x, expected);
  // Point to point inside the group uses group ranks.
  if (group->size() >= 2) {
    int32_t token = -1;
    if (group->rank() == 0) token = 4242 + r;
    if (group->rank() == 0) {
      for (int q = 1; q < group->size(); ++q) group->send(&token, sizeof(token), q, 1);
    } else {
      group->recv(&token, sizeof(token), 0, 1);
    }
    const int group_root_world_rank = r % 2 + 2 * (members - 1);  // key -rank: the largest world rank leads
    EXPECT_EQ(token, 4242 + group_root_world_rank);
  }
  world().barrier();
}

// Tensor parallelism inside pipeline stages: tp ranks per stage (2 when the size is even), one group per stage
// and one pipeline per tp slot; the groups work independently and concurrently.
TEST(MpiSplit, TensorByPipelineGrid) {
  const int p = world().size();
  const int r = world().rank();
  const int tp = p % 2 == 0 ? 2 : 1;
  const int stage = r / tp, slot = r % tp;
  auto tp_group = world().split(stage, slot, "tp" + std::to_string(stage));
  auto pp_group = world().split(slot, stage, "pp" + std::to_string(slot));
  EXPECT_EQ(tp_group->size(), tp);
  EXPECT_EQ(tp_group->rank(), slot);
  EXPECT_EQ(pp_group->size(), p / tp);
  EXPECT_EQ(pp_group->rank(), stage);
  EXPECT_EQ(tp_group->name(), "mpi:world/tp" + std::to_string(stage));

  std::vector<float> partial(257, static_cast<float>(r + 1));
  tp_group->all_reduce_sum(partial.data(), partial.size());
  float expected = 0;
  for (int s = 0; s < tp; ++s) expected += static_cast<float>(stage * tp + s + 1);
  EXPECT_EQ(partial[0], expected);
  EXPECT_EQ(partial[256], expected);

  // Each pipeline gathers its stages' ids; and a split of a split names its path.
  std::vector<int32_t> ids(pp_group->size());
  const int32_t mine = stage;
  pp_group->all_gather_bytes(&mine, sizeof(mine), ids.data());
  for (int s = 0; s < pp_group->size(); ++s) EXPECT_EQ(ids[s], s);
  auto sub = tp_group->split(0, 0);
  EXPECT_EQ(sub->size(), tp);
  EXPECT_EQ(sub->name(), "mpi:world/tp" + std::to_string(stage) + "/c0");
  world().barrier();
}

TEST(MpiConsistency, AgreementPasses) {
  EXPECT_NO_THROW(check_consistent(world(), "model file m.gguf", Fingerprint().add("m.gguf").add(123u).value()));
}

// The last rank loaded another file: every rank refuses, with the same message naming that rank.
TEST(MpiConsistency, MismatchIsRefusedOnEveryRankNamingTheOddRank) {
  const int p = world().size();
  if (p < 2) GTEST_SKIP() << "needs 2 ranks";
  Fingerprint fp;
  fp.add("m.gguf").add(uint64_t{world().rank() == p - 1 ? 999u : 123u});
  std::string message;
  try {
    check_consistent(world(), "model file m.gguf", fp.value());
  } catch (const Error& e) {
    message = e.what();
  }
  const std::string expected_part = "rank " + std::to_string(p - 1) + " disagrees with rank 0";
  EXPECT_NE(message.find(expected_part), std::string::npos) << message;
  EXPECT_NE(message.find("model file m.gguf"), std::string::npos) << message;
  EXPECT_TRUE(all_ranks(world(), !message.empty()));
}

// Prints a non-zero rank's failures (rank 0 keeps GoogleTest's normal report).
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, result.file_name() ? result.file_name() : "?",
                 result.line_number(), result.summary());
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  tessera::MpiRuntime runtime(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (runtime.world_rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new tessera::RankFailurePrinter(runtime.world_rank()));
  }
  int failed = 0;
  {
    tessera::MpiCommunicator world(runtime, tessera::kTimeout);
    tessera::g_runtime = &runtime;
    tessera::g_world = &world;
    failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
    failed = tessera::all_ranks(world, failed == 0) ? 0 : 1;
    if (runtime.world_rank() == 0) std::printf("%d ranks: %s\n", world.size(), failed ? "FAILED" : "passed");
    tessera::g_world = nullptr;
  }
  return failed;
}
