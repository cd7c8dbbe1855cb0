// The serving engine on a fake model: concurrency, preemption, cancellation, queue limits and shutdown.
#include "engine/serving/engine.h"

#include <gtest/gtest.h>

#include <chrono>
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
  EXPECT_THROW(h.engine.validate(greedy({1, 5}, 0)), Error);
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

}  // namespace
}  // namespace tessera::serving
