#include "engine/runtime/generator.h"

#include <gtest/gtest.h>

#include "engine/backend/cpu/reference_backend.h"
#include "engine/core/check.h"
#include "tests/model/fake_tokenizer.h"
#include "tests/model/tiny_model.h"

namespace tessera {
namespace {

// A tokenizer for the tiny model's 61 ids: every id is a word "▁w<id>".
testing::FakeTokenizer word_tokenizer() {
  std::vector<std::string> pieces{"<unk>", "<s>", "</s>"};
  for (int i = 3; i < 61; ++i) pieces.push_back("\xE2\x96\x81w" + std::to_string(i));
  return testing::FakeTokenizer(pieces);
}

struct Fixture {
  ModelData data = testing::tiny_model(testing::tiny_config(), DType::F32, 5);
  ReferenceBackend backend;
  LlamaModel model{data, backend};
  ModelRunner runner{model};
};

TEST(Generator, GreedyIsArgmaxOfTheModel) {
  Fixture f;
  Generator gen(f.runner, nullptr);
  GenerationRequest req;
  req.prompt = {1, 7, 9};
  req.max_new_tokens = 6;
  req.sampling.temperature = 0.0f;
  req.stop_at_eos = false;
  const GenerationResult r = gen.generate(req);
  ASSERT_EQ(r.tokens.size(), 6u);
  EXPECT_EQ(r.finish, FinishReason::kLength);
  // Replay by hand with full prefill each step.
  std::vector<int> seq = req.prompt;
  for (int expected : r.tokens) {
    KvCache cache(f.data.config, static_cast<int>(seq.size()));
    std::vector<float> logits(static_cast<size_t>(f.data.config.vocab_size));
    f.model.forward(seq, 0, cache, LogitsMode::kLast, logits.data());
    EXPECT_EQ(static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin()), expected);
    seq.push_back(expected);
  }
}

TEST(Generator, SeedMakesSamplingReproducible) {
  Fixture f;
  Generator gen(f.runner, nullptr);
  GenerationRequest req;
  req.prompt = {1};
  req.max_new_tokens = 12;
  req.sampling.temperature = 1.5f;
  req.sampling.seed = 99;
  req.stop_at_eos = false;
  EXPECT_EQ(gen.generate(req).tokens, gen.generate(req).tokens);
}

TEST(Generator, StopsAtContextEnd) {
  Fixture f;
  Generator gen(f.runner, nullptr);
  GenerationRequest req;
  req.prompt = std::vector<int>(60, 5);
  req.max_new_tokens = 100;
  req.sampling.temperature = 0.0f;
  req.stop_at_eos = false;
  const GenerationResult r = gen.generate(req);
  EXPECT_EQ(r.finish, FinishReason::kContext);
  EXPECT_EQ(r.tokens.size(), 5u);  // positions 60..63 are fed, the 64th sample ends it: 64 - 60 + 1
}

TEST(Generator, StopStringsAndText) {
  Fixture f;
  const auto tok = word_tokenizer();
  Generator gen(f.runner, &tok);
  GenerationRequest req;
  req.prompt = {1, 7};
  req.max_new_tokens = 8;
  req.sampling.temperature = 0.0f;
  req.stop_at_eos = false;
  std::string streamed;
  const GenerationResult full = gen.generate(req, [&](std::string_view s) { streamed += s; });
  EXPECT_EQ(streamed, full.text);
  ASSERT_GE(full.tokens.size(), 3u);
  // Stop on the third generated word: the text ends just before it.
  const std::string third = "w" + std::to_string(full.tokens[2]);
  req.stop = {third};
  const GenerationResult stopped = gen.generate(req);
  EXPECT_EQ(stopped.finish, FinishReason::kStop);
  EXPECT_EQ(full.text.substr(0, full.text.find(third)), stopped.text);
}

TEST(Generator, RejectsBadRequests) {
  Fixture f;
  Generator gen(f.runner, nullptr);
  GenerationRequest req;
  EXPECT_THROW(gen.generate(req), Error);  // empty prompt
  req.prompt = {1};
  req.stop = {"x"};
  EXPECT_THROW(gen.generate(req), Error);  // stop strings without a tokenizer
  req.stop.clear();
  req.prompt = std::vector<int>(65, 3);
  EXPECT_THROW(gen.generate(req), Error);  // longer than the context
}

}  // namespace
}  // namespace tessera
