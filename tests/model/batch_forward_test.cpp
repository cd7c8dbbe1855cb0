// Several sequences in one batch (LlamaModel::forward_batch, ModelRunner with several slots) give, bit for bit, the
// logits each sequence gets when run alone: the rows share matmuls (decodes through the per-row kernels, prefill
// chunks through the blocked ones, each row independent of the others), never attention or KV rows.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "engine/model/llama_model.h"
#include "engine/runtime/model_runner.h"
#include "tests/model/tiny_model.h"

namespace tessera {
namespace {

// Logits of the last token of `tokens` run alone, after a history of `prefix` tokens.
std::vector<float> alone(const ModelData& m, Backend& be, const std::vector<int>& all, size_t prefix) {
  LlamaModel model(m, be, 64);
  KvCache cache = model.make_cache(64);
  std::vector<float> logits(static_cast<size_t>(m.config.vocab_size));
  if (prefix > 0) model.forward({all.data(), prefix}, 0, cache, LogitsMode::kLast, logits.data());
  model.forward({all.data() + prefix, all.size() - prefix}, static_cast<int>(prefix), cache, LogitsMode::kLast,
                logits.data());
  return logits;
}

class BatchForwardTypes : public ::testing::TestWithParam<DType> {};

TEST_P(BatchForwardTypes, SequencesInOneBatchMatchEachAloneExactly) {
  const ModelData m = testing::tiny_model(testing::tiny_config(4, 2, /*qkv_bias=*/true), GetParam(), 21);
  CpuBackend be(2);
  const size_t V = static_cast<size_t>(m.config.vocab_size);
  // A and D: decodes after 6- and 3-token histories; B: a fresh 5-token prefill; C: a 3-token chunk after 4
  // tokens; E: another decode after the prefill chunks (runs of decodes and prefill chunks interleave).
  const std::vector<int> a{1, 4, 8, 15, 16, 23, 42}, b{1, 9, 9, 30, 2}, c{1, 50, 51, 52, 7, 6, 5}, d{1, 3, 3, 60},
      e{1, 2, 3};
  LlamaModel model(m, be, 64);
  KvCache ca = model.make_cache(64), cb = model.make_cache(64), cc = model.make_cache(64), cd = model.make_cache(64),
          ce = model.make_cache(64);
  std::vector<float> scratch(V);
  model.forward({a.data(), 6}, 0, ca, LogitsMode::kLast, scratch.data());
  model.forward({c.data(), 4}, 0, cc, LogitsMode::kLast, scratch.data());
  model.forward({d.data(), 3}, 0, cd, LogitsMode::kLast, scratch.data());
  model.forward({e.data(), 2}, 0, ce, LogitsMode::kLast, scratch.data());

  std::vector<int> tokens{a[6], d[3]};
  tokens.insert(tokens.end(), b.begin(), b.end());
  tokens.insert(tokens.end(), c.begin() + 4, c.end());
  tokens.push_back(e[2]);
  const SequenceChunk chunks[] = {
      {&ca, 6, 1, true}, {&cd, 3, 1, true}, {&cb, 0, 5, true}, {&cc, 4, 3, true}, {&ce, 2, 1, true}};
  std::vector<float> got(5 * V);
  model.forward_batch(tokens, chunks, got.data());

  const std::vector<std::vector<float>> want{alone(m, be, a, 6), alone(m, be, d, 3), alone(m, be, b, 0),
                                             alone(m, be, c, 4), alone(m, be, e, 2)};
  for (size_t s = 0; s < want.size(); ++s)
    for (size_t i = 0; i < V; ++i) ASSERT_EQ(got[s * V + i], want[s][i]) << "sequence " << s << " logit " << i;
}

INSTANTIATE_TEST_SUITE_P(WeightTypes, BatchForwardTypes, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(BatchForward, RowsWithoutLogitsAreSkipped) {
  const ModelData m = testing::tiny_model(testing::tiny_config(), DType::F32, 22);
  CpuBackend be(1);
  const size_t V = static_cast<size_t>(m.config.vocab_size);
  LlamaModel model(m, be, 64);
  KvCache c1 = model.make_cache(16), c2 = model.make_cache(16);
  const std::vector<int> tokens{1, 3, 5, 1, 7};
  const SequenceChunk chunks[] = {{&c1, 0, 3, false}, {&c2, 0, 2, true}};
  std::vector<float> got(V, -1.0f);
  model.forward_batch(tokens, chunks, got.data());
  const std::vector<float> want = alone(m, be, {1, 7}, 0);
  for (size_t i = 0; i < V; ++i) ASSERT_NEAR(got[i], want[i], 1e-5);
}

TEST(BatchForward, AllLogitsChunkGivesEveryRowAndLeavesTheOthersExact) {
  // A prompt's log-probabilities need the logits of every row of its chunks; the chunk's last row and the other
  // sequences' rows must stay bit for bit what they are without it (greedy outputs do not change).
  const ModelData m = testing::tiny_model(testing::tiny_config(), DType::F32, 25);
  CpuBackend be(2);
  const size_t V = static_cast<size_t>(m.config.vocab_size);
  const std::vector<int> a{1, 4, 8, 15, 16, 23}, b{1, 9, 9, 30};
  LlamaModel model(m, be, 64);
  std::vector<float> every(a.size() * V);
  {
    KvCache cache = model.make_cache(64);
    model.forward(a, 0, cache, LogitsMode::kAll, every.data());
  }
  KvCache ca = model.make_cache(64), cb = model.make_cache(64);
  std::vector<float> scratch(V);
  model.forward({b.data(), 3}, 0, cb, LogitsMode::kLast, scratch.data());
  std::vector<int> tokens{b[3]};
  tokens.insert(tokens.end(), a.begin(), a.end());
  SequenceChunk chunks[] = {{&cb, 3, 1, true}, {&ca, 0, 6, true, /*all_logits=*/true}};
  std::vector<float> got((1 + a.size()) * V);
  model.forward_batch(tokens, chunks, got.data());
  const std::vector<float> want_b = alone(m, be, b, 3), want_last = alone(m, be, a, 0);
  for (size_t i = 0; i < V; ++i) ASSERT_EQ(got[i], want_b[i]) << "decode row, logit " << i;
  for (size_t r = 0; r < a.size(); ++r)
    for (size_t i = 0; i < V; ++i) ASSERT_NEAR(got[(1 + r) * V + i], every[r * V + i], 1e-4) << "row " << r;
  for (size_t i = 0; i < V; ++i) ASSERT_EQ(got[a.size() * V + i], want_last[i]) << "last row, logit " << i;
}

TEST(BatchForward, BatchLimitAndContextAreUserErrors) {
  const ModelData m = testing::tiny_model(testing::tiny_config(), DType::F32, 23);
  CpuBackend be(1);
  LlamaModel model(m, be, 4);
  KvCache cache = model.make_cache(4);
  const std::vector<int> five{1, 2, 3, 4, 5};
  std::vector<float> logits(static_cast<size_t>(m.config.vocab_size));
  const SequenceChunk too_many{&cache, 0, 5, true};
  EXPECT_THROW(model.forward_batch(five, {&too_many, 1}, logits.data()), Error);
  const SequenceChunk past_end{&cache, 2, 3, true};
  EXPECT_THROW(model.forward_batch({five.data(), 3}, {&past_end, 1}, logits.data()), Error);
}

TEST(ModelRunner, SlotsAreIndependentAndValidated) {
  const ModelData m = testing::tiny_model(testing::tiny_config(), DType::F32, 24);
  CpuBackend be(1);
  const size_t V = static_cast<size_t>(m.config.vocab_size);
  LlamaModel model(m, be, 16);
  ModelRunner runner(model);
  EXPECT_EQ(runner.max_in_flight(), 1);
  runner.open_slot(0, 8);
  runner.open_slot(5, 8);
  const std::vector<int> p{1, 9, 4};
  std::vector<float> l0(V), l5(V);
  const StepChunk both[] = {{0, 0, 3, 1}, {5, 0, 3, 1}};
  std::vector<int> tokens(p);
  tokens.insert(tokens.end(), p.begin(), p.end());
  std::vector<float> two(2 * V);
  runner.step(both, tokens, two.data());
  for (size_t i = 0; i < V; ++i) ASSERT_EQ(two[i], two[V + i]);  // same prompt, same logits, separate caches
  const std::vector<float> want = alone(m, be, p, 0);
  for (size_t i = 0; i < V; ++i) ASSERT_NEAR(two[i], want[i], 1e-5);

  // kAllRows: every row of that chunk, the other chunks' last rows; the prompt's last row as with kLastRow.
  runner.open_slot(1, 8);
  runner.open_slot(2, 8);
  const StepChunk rows_and_last[] = {{1, 0, 3, StepChunk::kAllRows}, {2, 0, 3, StepChunk::kLastRow}};
  std::vector<float> four(4 * V);
  runner.step(rows_and_last, tokens, four.data());
  std::vector<float> every(3 * V);
  {
    KvCache cache = model.make_cache(8);
    model.forward(p, 0, cache, LogitsMode::kAll, every.data());
  }
  for (size_t i = 0; i < 3 * V; ++i) ASSERT_NEAR(four[i], every[i], 1e-5);
  for (size_t i = 0; i < V; ++i) ASSERT_EQ(four[2 * V + i], two[i]);
  for (size_t i = 0; i < V; ++i) ASSERT_EQ(four[3 * V + i], two[V + i]);
  const StepChunk bad_mode{1, 3, 1, 3};
  EXPECT_THROW(runner.step({&bad_mode, 1}, {p.data(), 1}, l0.data()), Error);

  const StepChunk closed{3, 0, 1, 1};
  EXPECT_THROW(runner.step({&closed, 1}, {p.data(), 1}, l0.data()), Error);
  const StepChunk beyond{0, 8, 1, 1};
  EXPECT_THROW(runner.step({&beyond, 1}, {p.data(), 1}, l0.data()), Error);
  const int bad_token = 1000;
  const StepChunk next{0, 3, 1, 1};
  EXPECT_THROW(runner.step({&next, 1}, {&bad_token, 1}, l0.data()), Error);
  EXPECT_THROW(runner.open_slot(1, m.config.max_seq_len + 1), Error);
  runner.close_slot(5);
  EXPECT_EQ(runner.slot_capacity(5), 0);
}

// A paged runner (slots holding blocks of one pool, here of 4 rows, growing a block at a time while decoding, with
// another sequence's blocks freed and reused in between) gives, bit for bit, the logits of contiguous caches.
TEST(ModelRunner, PagedSlotsMatchContiguousCachesExactly) {
  const ModelData m = testing::tiny_model(testing::tiny_config(4, 2), DType::F32, 25);
  CpuBackend be(2);
  const size_t V = static_cast<size_t>(m.config.vocab_size);
  LlamaModel model(m, be, 32);
  ModelRunner contiguous(model);
  ModelRunner paged(model, nullptr, 1, PagedKvOptions{12, 4});
  ASSERT_NE(paged.kv_pool(), nullptr);
  EXPECT_EQ(contiguous.kv_pool(), nullptr);
  const std::vector<int> a{1, 4, 8, 15, 16, 23, 42, 7, 9}, b{1, 9, 9, 30, 2, 5, 6};
  for (ModelRunner* r : {&contiguous, &paged}) {
    r->open_slot(0, 6);
    r->open_slot(1, 2);
  }
  EXPECT_EQ(paged.kv_pool()->num_free(), 12 - 2 - 1);
  std::vector<float> want(2 * V), got(2 * V);
  const auto both = [&](const std::vector<StepChunk>& chunks, const std::vector<int>& tokens) {
    contiguous.step(chunks, tokens, want.data());
    paged.step(chunks, tokens, got.data());
    for (size_t i = 0; i < chunks.size() * V; ++i) ASSERT_EQ(got[i], want[i]) << "logit " << i;
  };
  // Prefill 6 tokens of a (two blocks, the second partly) and 2 of b.
  std::vector<int> tokens(a.begin(), a.begin() + 6);
  tokens.insert(tokens.end(), b.begin(), b.begin() + 2);
  both({{0, 0, 6, 1}, {1, 0, 2, 1}}, tokens);
  // A throw-away sequence takes blocks and gives them back, so the next blocks of a and b are not in order.
  paged.open_slot(2, 8);
  paged.close_slot(2);
  for (int pos = 6; pos < 9; ++pos) {
    const int pb = pos - 4;
    for (ModelRunner* r : {&contiguous, &paged}) {
      if (r->slot_capacity(0) < pos + 1) r->grow_slot(0, r == &paged ? pos + 1 : 16, pos);
      if (r->slot_capacity(1) < pb + 1) r->grow_slot(1, r == &paged ? pb + 1 : 16, pb);
    }
    both({{0, pos, 1, 1}, {1, pb, 1, 1}}, {a[static_cast<size_t>(pos)], b[static_cast<size_t>(pb)]});
  }
  EXPECT_EQ(paged.slot_capacity(0), 12);  // three blocks for 9 rows
  EXPECT_EQ(paged.slot_capacity(1), 8);
  EXPECT_EQ(paged.kv_pool()->num_free(), 12 - 3 - 2);
}

TEST(ModelRunner, PagedPoolExhaustionIsAUserErrorThatChangesNothing) {
  const ModelData m = testing::tiny_model(testing::tiny_config(), DType::F32, 26);
  CpuBackend be(1);
  LlamaModel model(m, be, 16);
  ModelRunner runner(model, nullptr, 1, PagedKvOptions{4, 8});
  runner.open_slot(0, 20);  // 3 blocks
  EXPECT_EQ(runner.kv_pool()->num_free(), 1);
  EXPECT_THROW(runner.open_slot(1, 9), Error);
  EXPECT_EQ(runner.slot_capacity(1), 0);
  EXPECT_THROW(runner.grow_slot(0, 32 + 1, 20), Error);
  EXPECT_EQ(runner.slot_capacity(0), 24);
  EXPECT_EQ(runner.kv_pool()->num_free(), 1);
  runner.open_slot(0, 32);  // reopening gives the old blocks back first
  EXPECT_EQ(runner.kv_pool()->num_free(), 0);
  runner.close_slot(0);
  EXPECT_EQ(runner.kv_pool()->num_free(), 4);
}

}  // namespace
}  // namespace tessera
