// Single-process tests: the argmax rule, the single-process communicator, fingerprints and the consistency
// check's message (through a fake communicator that plays several ranks' fingerprints).
#include "parallel/communicator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/core/check.h"
#include "parallel/consistency.h"
#include "parallel/single_process_communicator.h"

namespace tessera {
namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

TEST(DistributedArgmax, LargerValueWins) {
  EXPECT_EQ(better_candidate({1.0f, 7}, {2.0f, 3}).index, 3);
  EXPECT_EQ(better_candidate({2.0f, 3}, {1.0f, 7}).index, 3);
  EXPECT_EQ(better_candidate({-kInf, 1}, {-1e30f, 9}).index, 9);
}

TEST(DistributedArgmax, TiesGoToLowestIndex) {
  EXPECT_EQ(better_candidate({5.0f, 10}, {5.0f, 4}).index, 4);
  EXPECT_EQ(better_candidate({5.0f, 4}, {5.0f, 10}).index, 4);
  EXPECT_EQ(better_candidate({0.0f, 8}, {-0.0f, 2}).index, 2);  // +0 == -0
}

TEST(DistributedArgmax, NaNLosesToNumbersAndEmptyLosesToAll) {
  EXPECT_EQ(better_candidate({kNaN, 0}, {-kInf, 5}).index, 5);
  EXPECT_EQ(better_candidate({-kInf, 5}, {kNaN, 0}).index, 5);
  EXPECT_EQ(better_candidate({kNaN, 6}, {kNaN, 2}).index, 2);
  EXPECT_EQ(better_candidate({kNaN, 6}, {}).index, 6);
  EXPECT_EQ(better_candidate({}, {kNaN, 6}).index, 6);
  EXPECT_EQ(better_candidate({}, {}).index, -1);
}

// The distributed rule equals a single greedy pass over the whole vocabulary (first maximum, NaN skipped) however
// the vocabulary is cut into shards.
TEST(DistributedArgmax, ShardedEqualsWhole) {
  std::vector<float> logits(101);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>((i * 37) % 11);  // many ties at 10
  logits[3] = kNaN;
  logits[50] = kNaN;
  int64_t expected = -1;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isnan(logits[i])) continue;
    if (expected < 0 || logits[i] > logits[expected]) expected = static_cast<int64_t>(i);
  }
  for (size_t shards : {1, 2, 3, 7, 101, 150}) {
    std::vector<ArgmaxCandidate> candidates;
    const size_t per = (logits.size() + shards - 1) / shards;
    for (size_t s = 0; s < shards; ++s) {
      ArgmaxCandidate best;  // this shard's local argmax, with the global index
      for (size_t i = s * per; i < std::min(logits.size(), (s + 1) * per); ++i) {
        best = better_candidate(best, {logits[i], static_cast<int64_t>(i)});
      }
      candidates.push_back(best);
    }
    // Any order of the ranks gives the same winner.
    const ArgmaxCandidate forward = reduce_argmax(candidates.data(), candidates.size());
    std::vector<ArgmaxCandidate> reversed(candidates.rbegin(), candidates.rend());
    EXPECT_EQ(forward.index, expected) << shards << " shards";
    EXPECT_EQ(reduce_argmax(reversed.data(), reversed.size()).index, expected) << shards << " shards";
  }
  EXPECT_EQ(reduce_argmax(nullptr, 0).index, -1);
}

TEST(SingleProcessCommunicator, RankSizeName) {
  SingleProcessCommunicator comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  EXPECT_EQ(comm.name(), "single");
}

TEST(SingleProcessCommunicator, CollectivesAreIdentityOrCopy) {
  SingleProcessCommunicator comm;
  std::vector<float> x{1.5f, -2.0f, 3.25f};
  comm.all_reduce_sum(x.data(), x.size());
  EXPECT_EQ(x, (std::vector<float>{1.5f, -2.0f, 3.25f}));
  comm.all_reduce_sum(nullptr, 0);

  std::vector<float> out(3, 0.0f);
  comm.all_gather(x.data(), x.size(), out.data());
  EXPECT_EQ(out, x);
  comm.all_gather(nullptr, 0, nullptr);

  char msg[6] = "plan!";
  comm.broadcast(msg, sizeof(msg), 0);
  EXPECT_STREQ(msg, "plan!");
  comm.barrier();

  const ArgmaxCandidate best = comm.argmax_all({4.0f, 17});
  EXPECT_EQ(best.index, 17);
  EXPECT_EQ(best.value, 4.0f);
  EXPECT_EQ(comm.argmax_all({}).index, -1);
}

TEST(SingleProcessCommunicator, MisuseIsAProgrammerError) {
  SingleProcessCommunicator comm;
  char b = 0;
  EXPECT_DEATH(comm.send(&b, 1, 0, 0), "single-process");
  EXPECT_DEATH(comm.recv(&b, 1, 0, 0), "single-process");
  EXPECT_DEATH(comm.broadcast(&b, 1, 1), "broadcast root 1");
}

TEST(SingleProcessCommunicator, CommunicatorsAreNotCopyable) {
  static_assert(!std::is_copy_constructible_v<SingleProcessCommunicator>);
  static_assert(!std::is_copy_assignable_v<Communicator>);
}

TEST(Fingerprint, StableAndSensitive) {
  // FNV-1a of no bytes is the offset basis; of "a" a published constant.
  EXPECT_EQ(Fingerprint().value(), 14695981039346656037ull);
  EXPECT_EQ(Fingerprint().add_bytes("a", 1).value(), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(Fingerprint().add(uint64_t{42}).add("cfg").value(), Fingerprint().add(uint64_t{42}).add("cfg").value());
  EXPECT_NE(Fingerprint().add("ab").add("c").value(), Fingerprint().add("a").add("bc").value());
  EXPECT_NE(Fingerprint().add(uint64_t{1}).value(), Fingerprint().add(uint64_t{2}).value());
}

// Plays `values.size()` ranks: all_gather_bytes returns every rank's fingerprint.
class FakeRanks final : public Communicator {
 public:
  explicit FakeRanks(std::vector<uint64_t> values) : values_(std::move(values)) {}
  int rank() const override { return 0; }
  int size() const override { return static_cast<int>(values_.size()); }
  std::string name() const override { return "fake"; }
  void all_reduce_sum(float*, size_t) override {}
  void all_gather_bytes(const void* in, size_t bytes, void* out) override {
    TESSERA_CHECK(bytes == sizeof(uint64_t));
    std::memcpy(out, values_.data(), values_.size() * sizeof(uint64_t));
  }
  void send(const void*, size_t, int, int) override {}
  void recv(void*, size_t, int, int) override {}
  uint64_t start_send(const void*, size_t, int, int) override { return 0; }
  void wait_send(uint64_t) override {}
  void broadcast(void*, size_t, int) override {}
  void barrier() override {}

 private:
  std::vector<uint64_t> values_;
};

std::string consistency_error(std::vector<uint64_t> values) {
  FakeRanks comm(std::move(values));
  try {
    check_consistent(comm, "model file m.gguf", 0);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ConsistencyCheck, AgreementPasses) {
  SingleProcessCommunicator single;
  EXPECT_NO_THROW(check_consistent(single, "model", 123));
  EXPECT_EQ(consistency_error({7, 7, 7, 7}), "");
}

TEST(ConsistencyCheck, NamesTheOddRanks) {
  EXPECT_EQ(consistency_error({7, 7, 9, 7}),
            "start-up check failed: model file m.gguf differs between ranks: rank 2 disagrees with rank 0 "
            "(ranks 0, 1, 3: 0x0000000000000007; rank 2: 0x0000000000000009)");
  // The majority is the reference even when rank 0 is the odd one.
  EXPECT_EQ(consistency_error({1, 2, 2}),
            "start-up check failed: model file m.gguf differs between ranks: rank 0 disagrees with rank 1 "
            "(rank 0: 0x0000000000000001; ranks 1, 2: 0x0000000000000002)");
  // A tie goes to rank 0's value; three-way splits name every rank outside the reference group.
  EXPECT_NE(consistency_error({1, 2}).find("rank 1 disagrees with rank 0"), std::string::npos);
  EXPECT_NE(consistency_error({1, 2, 3, 1}).find("ranks 1, 2 disagree with rank 0"), std::string::npos);
}

}  // namespace
}  // namespace tessera
