// Several sequences in one batch (LlamaModel::forward_batch, ModelRunner with several slots) give the logits each
// sequence gets when run alone: the rows share matmuls, never attention or KV rows.
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

TEST(BatchForward, SequencesInOneBatchMatchEachAlone) {
  const ModelData m = testing::tiny_model(testing::tiny_config(4, 2, /*qkv_bias=*/true), DType::F32, 21);
  CpuBackend be(2);
  const size_t V = static_cast<size_t>(m.config.vocab_size);
  // A: decode after a 6-token history; B: a fresh 5-token prefill; C: a 3-token chunk after 4 tokens.
  const std::vector<int> a{1, 4, 8, 15, 16, 23, 42}, b{1, 9, 9, 30, 2}, c{1, 50, 51, 52, 7, 6, 5};
  LlamaModel model(m, be, 64);
  KvCache ca = model.make_cache(64), cb = model.make_cache(64), cc = model.make_cache(64);
  std::vector<float> scratch(V);
  model.forward({a.data(), 6}, 0, ca, LogitsMode::kLast, scratch.data());
  model.forward({c.data(), 4}, 0, cc, LogitsMode::kLast, scratch.data());

  std::vector<int> tokens{a[6]};
  tokens.insert(tokens.end(), b.begin(), b.end());
  tokens.insert(tokens.end(), c.begin() + 4, c.end());
  const SequenceChunk chunks[] = {{&ca, 6, 1, true}, {&cb, 0, 5, true}, {&cc, 4, 3, true}};
  std::vector<float> got(3 * V);
  model.forward_batch(tokens, chunks, got.data());

  const std::vector<std::vector<float>> want{alone(m, be, a, 6), alone(m, be, b, 0), alone(m, be, c, 4)};
  for (size_t s = 0; s < 3; ++s)
    for (size_t i = 0; i < V; ++i) ASSERT_NEAR(got[s * V + i], want[s][i], 1e-5) << "sequence " << s << " logit " << i;
}

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

}  // namespace
}  // namespace tessera
