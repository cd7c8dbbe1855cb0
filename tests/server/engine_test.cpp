// The serving engine on a fake model: concurrency, preemption, cancellation, queue limits and shutdown.
#include "engine/serving/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>

#include "engine/core/check.h"
#include "engine/serving/id_tokenizer.h"
#include "tests/server/fake_step_model.h"

namespace tessera::serving {
namespace {

using namespace std::chrono_literals;

constexpr int kVocab = 97;
constexpr int kEos = 2;

struct Result {
  std::vector<int> tokens;
  std::string text;
  FinishKind finish = FinishKind::kError;
};

Result collect(RequestStream& s) {
  Result r;
  for (;;) {
    StreamChunk c = s.next(1000ms);
    for (auto& t : c.tokens) {
      r.tokens.push_back(t.token);
      r.text += t.text;
    }
    r.text += c.tail;
    if (c.finished) {
      r.finish = c.finish;
      return r;
    }
  }
}

ServingRequest greedy(std::vector<int> prompt, int n) {
  ServingRequest r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = n;
  r.sampling.temperature = 0.0f;
  r.stop_at_eos = false;
  return r;
}

std::vector<int> prompt_of(int i, int len) {
  std::vector<int> p{1};
  for (int j = 1; j < len; ++j) p.push_back(3 + (i * 31 + j * 7) % (kVocab - 3));
  return p;
}

struct Harness {
  explicit Harness(EngineConfig config, int context = 256)
      : model(kVocab, context), tokenizer(kVocab, 1, kEos), engine(model, tokenizer, kEos, config, metrics) {}
  Result run_one(ServingRequest r) {
    Submission s = engine.submit({std::move(r)});
    TESSERA_CHECK(s.status == SubmitStatus::kOk);
    return collect(*s.streams[0]);
  }

  FakeStepModel model;
  IdTokenizer tokenizer;
  ServingMetrics metrics;
  ServingEngine engine;
};

TEST(ServingEngine, ConcurrentGreedyOutputsEqualSingleRuns) {
  const int n = 24;
  std::vector<Result> alone;
  {
    Harness h({.max_num_seqs = 1, .max_queue = 8, .max_step_tokens = 512, .block_size = 4, .num_blocks = 256});
    for (int i = 0; i < n; ++i) alone.push_back(h.run_one(greedy(prompt_of(i, 5 + i % 13), 6 + i % 9)));
  }
  Harness h({.max_num_seqs = 8, .max_queue = 64, .max_step_tokens = 16, .block_size = 4, .num_blocks = 256});
  std::vector<std::thread> clients;
  std::vector<Result> together(n);
  for (int i = 0; i < n; ++i)
    clients.emplace_back(
        [&, i] { together[static_cast<size_t>(i)] = h.run_one(greedy(prompt_of(i, 5 + i % 13), 6 + i % 9)); });
  for (auto& t : clients) t.join();
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(together[static_cast<size_t>(i)].tokens, alone[static_cast<size_t>(i)].tokens) << "request " << i;
    EXPECT_EQ(together[static_cast<size_t>(i)].text, alone[static_cast<size_t>(i)].text);
    EXPECT_EQ(together[static_cast<size_t>(i)].finish, FinishKind::kLength);
  }
  EXPECT_EQ(h.model.violations.load(), 0);
  EXPECT_LE(h.model.max_step_tokens.load(), 16);
}

TEST(ServingEngine, PreemptedRequestsStillCompleteWithTheSameOutput) {
  // 12 blocks of 4 rows for 6 requests of 4 + 12 rows each (4 blocks each): they cannot all grow at once.
  std::vector<Result> alone;
  {
    Harness h({.max_num_seqs = 1, .max_queue = 8, .max_step_tokens = 64, .block_size = 4, .num_blocks = 12});
    for (int i = 0; i < 6; ++i) alone.push_back(h.run_one(greedy(prompt_of(i, 4), 12)));
  }
  Harness h({.max_num_seqs = 6, .max_queue = 8, .max_step_tokens = 64, .block_size = 4, .num_blocks = 12});
  std::vector<ServingRequest> batch;
  for (int i = 0; i < 6; ++i) batch.push_back(greedy(prompt_of(i, 4), 12));
  Submission s = h.engine.submit(std::move(batch));
  ASSERT_EQ(s.status, SubmitStatus::kOk);
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(collect(*s.streams[static_cast<size_t>(i)]).tokens, alone[static_cast<size_t>(i)].tokens);
  const MetricsSnapshot m = h.metrics.snapshot();
  EXPECT_GT(m.preemptions, 0u);
  EXPECT_EQ(h.model.violations.load(), 0);
  h.engine.shutdown();
  EXPECT_EQ(h.metrics.snapshot().kv_blocks_used, 0);
}

TEST(ServingEngine, CancellingAStreamFreesItsBlocks) {
  Harness h({.max_num_seqs = 4, .max_queue = 8, .max_step_tokens = 64, .block_size = 4, .num_blocks = 64});
  h.model.step_delay_us = 2000;  // 200 tokens take 0.4 s: the cancel lands mid-generation
  Submission s = h.engine.submit({greedy(prompt_of(0, 8), 200)});
  ASSERT_EQ(s.status, SubmitStatus::kOk);
  // Wait for the first token: the sequence is running and holds blocks.
  StreamChunk c;
  while (c.tokens.empty()) c = s.streams[0]->next(1000ms);
  // The gauges are published after the step that produced the token: wait for them (bounded).
  for (int i = 0; i < 5000 && h.metrics.snapshot().kv_blocks_used == 0; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_GT(h.metrics.snapshot().kv_blocks_used, 0);
  s.streams[0]->cancel();
  h.engine.notify_cancel();
  Result r = collect(*s.streams[0]);
  EXPECT_EQ(r.finish, FinishKind::kCancelled);
  EXPECT_LT(r.tokens.size() + 1, 200u);
  h.engine.shutdown();
  const MetricsSnapshot m = h.metrics.snapshot();
  EXPECT_EQ(m.kv_blocks_used, 0);
  EXPECT_EQ(m.cancelled, 1u);
}

TEST(ServingEngine, RefusesWhenTheQueueIsFullAndAfterShutdown) {
  Harness h({.max_num_seqs = 1, .max_queue = 2, .max_step_tokens = 64, .block_size = 4, .num_blocks = 64});
  std::vector<ServingRequest> three;
  for (int i = 0; i < 3; ++i) three.push_back(greedy(prompt_of(i, 4), 4));
  EXPECT_EQ(h.engine.submit(std::move(three)).status, SubmitStatus::kQueueFull);  // all or none
  Submission ok = h.engine.submit({greedy(prompt_of(0, 4), 4)});
  EXPECT_EQ(ok.status, SubmitStatus::kOk);
  h.engine.shutdown();  // drains: the accepted request completes
  EXPECT_EQ(collect(*ok.streams[0]).tokens.size(), 4u);
  EXPECT_EQ(h.engine.submit({greedy(prompt_of(0, 4), 4)}).status, SubmitStatus::kShuttingDown);
}

TEST(ServingEngine, ValidationRejectsRequestsThatCanNeverRun) {
  Harness h({.max_num_seqs = 1, .max_queue = 2, .max_step_tokens = 64, .block_size = 4, .num_blocks = 8}, 64);
  EXPECT_THROW(h.engine.validate(greedy({}, 4)), Error);
  EXPECT_THROW(h.engine.validate(greedy(prompt_of(0, 64), 1)), Error);  // context
  EXPECT_THROW(h.engine.validate(greedy(prompt_of(0, 30), 8)), Error);  // 38 rows > 32 in the pool
  EXPECT_THROW(h.engine.validate(greedy({1, kVocab}, 1)), Error);       // token id
  EXPECT_THROW(h.engine.validate(greedy({1, 5}, -1)), Error);
  EXPECT_NO_THROW(h.engine.validate(greedy({1, 5}, 0)));  // scoring the prompt only (echo with max_tokens 0)
  ServingRequest r = greedy({1, 5}, 4);
  r.sampling.top_p = 0.0f;
  EXPECT_THROW(h.engine.validate(r), Error);
  EXPECT_NO_THROW(h.engine.validate(greedy(prompt_of(0, 20), 8)));
}

TEST(ServingEngine, StopStringsEosAndLogprobs) {
  Harness h({.max_num_seqs = 2, .max_queue = 8, .max_step_tokens = 64, .block_size = 4, .num_blocks = 64});
  const Result free_run = h.run_one(greedy(prompt_of(3, 6), 10));
  ASSERT_EQ(free_run.tokens.size(), 10u);
  // Stop at the text of the third generated token: the text ends before it.
  const std::string third = std::to_string(free_run.tokens[2]);
  ServingRequest r = greedy(prompt_of(3, 6), 10);
  r.stop = {" " + third};
  const Result stopped = h.run_one(r);
  EXPECT_EQ(stopped.finish, FinishKind::kStop);
  EXPECT_EQ(stopped.text, " " + std::to_string(free_run.tokens[0]) + " " + std::to_string(free_run.tokens[1]));
  // Logprobs: greedy token is the most likely one, top list sorted.
  ServingRequest lp = greedy(prompt_of(3, 6), 3);
  lp.top_logprobs = 3;
  Submission s = h.engine.submit({lp});
  ASSERT_EQ(s.status, SubmitStatus::kOk);
  std::vector<TokenOutput> outs;
  for (;;) {
    StreamChunk c = s.streams[0]->next(1000ms);
    for (auto& t : c.tokens) outs.push_back(t);
    if (c.finished) break;
  }
  ASSERT_EQ(outs.size(), 3u);
  for (const TokenOutput& t : outs) {
    ASSERT_EQ(t.top.size(), 3u);
    EXPECT_EQ(t.top[0].token, t.token);
    EXPECT_FLOAT_EQ(t.top[0].logprob, t.logprob);
    EXPECT_LE(t.logprob, 0.0f);
    EXPECT_GE(t.top[0].logprob, t.top[1].logprob);
  }
}

struct Outputs {
  std::vector<TokenOutput> prompt, tokens;
  int prompt_chunks_before_tokens = 0;  // reads that brought prompt entries before any generated token had come
};

Outputs collect_outputs(RequestStream& s) {
  Outputs o;
  for (;;) {
    StreamChunk c = s.next(1000ms);
    if (!c.prompt.empty() && o.tokens.empty()) ++o.prompt_chunks_before_tokens;
    for (auto& t : c.prompt) o.prompt.push_back(t);
    for (auto& t : c.tokens) o.tokens.push_back(t);
    if (c.finished) return o;
  }
}

TEST(ServingEngine, PromptLogprobsScoreEveryPromptTokenFromItsOwnRows) {
  // A 9-token prompt prefilled in chunks of 4 ([0,4) [4,8) [8,9)) next to a plain request: prompt token p is
  // scored from the row after token p - 1, only the chunks holding such rows ask for every row's logits, and the
  // generated tokens (of both requests) are those of runs without prompt logprobs.
  const EngineConfig config{.max_num_seqs = 4, .max_queue = 8, .max_step_tokens = 4, .block_size = 4, .num_blocks = 64};
  const std::vector<int> prompt = prompt_of(5, 9);
  ServingRequest plain = greedy(prompt, 6), other = greedy(prompt_of(6, 7), 6);
  plain.top_logprobs = other.top_logprobs = 2;
  std::vector<TokenOutput> alone, other_alone;
  {
    Harness h(config);
    alone = collect_outputs(*h.engine.submit({plain}).streams[0]).tokens;
    other_alone = collect_outputs(*h.engine.submit({other}).streams[0]).tokens;
    EXPECT_EQ(h.model.all_logits_chunks.load(), 0);  // nobody asked: no chunk pays for every row
  }
  Harness h(config);
  ServingRequest scored = plain;
  scored.prompt_logprobs = true;
  Submission s = h.engine.submit({scored, other});
  ASSERT_EQ(s.status, SubmitStatus::kOk);
  const Outputs got = collect_outputs(*s.streams[0]);
  const Outputs got_other = collect_outputs(*s.streams[1]);

  ASSERT_EQ(got.prompt.size(), prompt.size());
  EXPECT_EQ(got.prompt_chunks_before_tokens, 1);  // all at once, before the first generated token
  EXPECT_FALSE(got.prompt[0].has_logprob);
  EXPECT_TRUE(got.prompt[0].top.empty());
  std::string spelled;
  std::vector<float> row(kVocab);
  for (size_t p = 0; p < prompt.size(); ++p) {
    const TokenOutput& t = got.prompt[p];
    EXPECT_EQ(t.token, prompt[p]);
    EXPECT_TRUE(t.text.empty());
    spelled += t.piece;
    if (p == 0) continue;
    // Independently: log softmax of the logits after tokens 0..p-1, at token p.
    h.model.fill_logits(prompt, static_cast<int>(p), row.data());
    double z = 0.0;
    for (float v : row) z += std::exp(static_cast<double>(v));
    EXPECT_TRUE(t.has_logprob);
    EXPECT_NEAR(t.logprob, row[static_cast<size_t>(prompt[p])] - std::log(z), 1e-5) << "prompt token " << p;
    ASSERT_EQ(t.top.size(), 2u);
    const size_t best = static_cast<size_t>(std::max_element(row.begin(), row.end()) - row.begin());
    EXPECT_EQ(t.top[0].token, static_cast<int>(best));
    EXPECT_NEAR(t.top[0].logprob, row[best] - std::log(z), 1e-5);
    EXPECT_GE(t.top[0].logprob, t.top[1].logprob);
    const std::string best_id = std::to_string(best);
    EXPECT_EQ(t.top[0].piece, " " + best_id);  // the alternative's text in context
  }
  EXPECT_EQ(spelled, h.tokenizer.decode(prompt));  // the pieces spell the prompt

  ASSERT_EQ(got.tokens.size(), alone.size());
  for (size_t i = 0; i < alone.size(); ++i) {
    EXPECT_EQ(got.tokens[i].token, alone[i].token);
    EXPECT_EQ(got.tokens[i].logprob, alone[i].logprob);
    EXPECT_EQ(got.tokens[i].piece, alone[i].piece);
  }
  ASSERT_EQ(got_other.tokens.size(), other_alone.size());
  for (size_t i = 0; i < other_alone.size(); ++i) EXPECT_EQ(got_other.tokens[i].token, other_alone[i].token);
  EXPECT_TRUE(got_other.prompt.empty());
  // Rows 0..7 score tokens 1..8: the chunks [0,4) and [4,8); the last chunk's only row is the sampling row.
  EXPECT_EQ(h.model.all_logits_chunks.load(), 2);
  EXPECT_EQ(h.model.all_logits_rows.load(), 8);
  EXPECT_EQ(h.model.violations.load(), 0);
}

TEST(ServingEngine, PromptLogprobsOfAOneTokenPromptAndValidation) {
  Harness h({.max_num_seqs = 2, .max_queue = 2, .max_step_tokens = 64, .block_size = 4, .num_blocks = 64});
  ServingRequest r = greedy({1}, 3);
  r.prompt_logprobs = true;
  EXPECT_THROW(h.engine.validate(r), Error);  // prompt logprobs need logprobs
  r.top_logprobs = 0;
  Submission s = h.engine.submit({r});
  ASSERT_EQ(s.status, SubmitStatus::kOk);
  const Outputs got = collect_outputs(*s.streams[0]);
  ASSERT_EQ(got.prompt.size(), 1u);
  EXPECT_FALSE(got.prompt[0].has_logprob);
  EXPECT_EQ(got.tokens.size(), 3u);
  EXPECT_EQ(h.model.all_logits_chunks.load(), 0);
}

TEST(ServingEngine, MaxTokensZeroScoresThePromptAndGeneratesNothing) {
  // A 9-token prompt prefilled in chunks of 4 next to a generating request: with max_new_tokens 0 the request
  // ends (length) right after its prompt is scored, with the same prompt logprobs as with max_new_tokens 1, no
  // generated token and no completion tokens; its last prompt row, which would only feed the sampler, is not run.
  const EngineConfig config{.max_num_seqs = 4, .max_queue = 8, .max_step_tokens = 4, .block_size = 4, .num_blocks = 64};
  ServingRequest one = greedy(prompt_of(5, 9), 1), other = greedy(prompt_of(6, 7), 6);
  one.top_logprobs = 3;
  one.prompt_logprobs = true;
  std::vector<TokenOutput> want;
  std::vector<int> other_alone;
  {
    Harness h(config);
    want = collect_outputs(*h.engine.submit({one}).streams[0]).prompt;
    other_alone = h.run_one(other).tokens;
  }
  Harness h(config);
  ServingRequest zero = one;
  zero.max_new_tokens = 0;
  Submission s = h.engine.submit({zero, other});
  ASSERT_EQ(s.status, SubmitStatus::kOk);
  Outputs got;
  StreamChunk last;
  for (;;) {
    StreamChunk c = s.streams[0]->next(1000ms);
    for (auto& t : c.prompt) got.prompt.push_back(t);
    for (auto& t : c.tokens) got.tokens.push_back(t);
    if (c.finished) {
      last = c;
      break;
    }
  }
  EXPECT_EQ(last.finish, FinishKind::kLength);
  EXPECT_EQ(last.completion_tokens, 0);
  EXPECT_EQ(last.prompt_tokens, 9);
  EXPECT_TRUE(last.tail.empty());
  EXPECT_TRUE(got.tokens.empty());
  ASSERT_EQ(got.prompt.size(), want.size());
  for (size_t p = 0; p < want.size(); ++p) {
    EXPECT_EQ(got.prompt[p].token, want[p].token);
    EXPECT_EQ(got.prompt[p].has_logprob, want[p].has_logprob);
    EXPECT_EQ(got.prompt[p].logprob, want[p].logprob);
    EXPECT_EQ(got.prompt[p].piece, want[p].piece);
    ASSERT_EQ(got.prompt[p].top.size(), want[p].top.size());
    for (size_t k = 0; k < want[p].top.size(); ++k) EXPECT_EQ(got.prompt[p].top[k].token, want[p].top[k].token);
  }
  EXPECT_EQ(collect(*s.streams[1]).tokens, other_alone);  // the request beside it is unaffected
  // Rows 0..7 score the prompt: the chunks [0,4) and [4,8); the chunk [8,9) would only feed the sampler.
  EXPECT_EQ(h.model.all_logits_chunks.load(), 2);
  EXPECT_EQ(h.model.all_logits_rows.load(), 8);
  EXPECT_EQ(h.model.violations.load(), 0);
  h.engine.shutdown();
  EXPECT_EQ(h.metrics.snapshot().kv_blocks_used, 0);
  // Alone: two steps ([0,4) and [4,8)), not a third for [8,9).
  Harness alone(config);
  EXPECT_EQ(collect(*alone.engine.submit({zero}).streams[0]).finish, FinishKind::kLength);
  EXPECT_EQ(alone.model.steps.load(), 2);
}

TEST(ServingEngine, MaxTokensZeroWithoutPromptLogprobsFinishesAtOnce) {
  // Nothing to score and nothing to generate: the request ends without a model step; also for a prompt of one
  // token with prompt logprobs (its only token has no logprob).
  Harness h({.max_num_seqs = 2, .max_queue = 8, .max_step_tokens = 64, .block_size = 4, .num_blocks = 64});
  ServingRequest plain = greedy(prompt_of(2, 6), 0), bos = greedy({1}, 0);
  bos.top_logprobs = 2;
  bos.prompt_logprobs = true;
  Submission s = h.engine.submit({plain, bos});
  ASSERT_EQ(s.status, SubmitStatus::kOk);
  const Result r = collect(*s.streams[0]);
  EXPECT_EQ(r.finish, FinishKind::kLength);
  EXPECT_TRUE(r.tokens.empty());
  EXPECT_TRUE(r.text.empty());
  const Outputs o = collect_outputs(*s.streams[1]);
  ASSERT_EQ(o.prompt.size(), 1u);
  EXPECT_FALSE(o.prompt[0].has_logprob);
  EXPECT_TRUE(o.tokens.empty());
  h.engine.shutdown();
  EXPECT_EQ(h.model.steps.load(), 0);
  EXPECT_EQ(h.metrics.snapshot().kv_blocks_used, 0);
}

TEST(ServingEngine, LogprobTokenStringsSpellTheGeneratedText) {
  Harness h({.max_num_seqs = 2, .max_queue = 8, .max_step_tokens = 64, .block_size = 4, .num_blocks = 64});
  ServingRequest r = greedy(prompt_of(3, 6), 8);
  r.top_logprobs = 1;
  Submission s = h.engine.submit({r});
  ASSERT_EQ(s.status, SubmitStatus::kOk);
  std::string text, spelled;
  for (;;) {
    StreamChunk c = s.streams[0]->next(1000ms);
    for (auto& t : c.tokens) {
      text += t.text;
      spelled += t.piece;
      const std::string id = std::to_string(t.token);
      EXPECT_EQ(t.piece, " " + id);  // with its leading space, after the prompt
    }
    text += c.tail;
    if (c.finished) break;
  }
  EXPECT_EQ(spelled, text);
}

}  // namespace
}  // namespace tessera::serving
