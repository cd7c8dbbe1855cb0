// The serving engine: one thread owns every sequence, the scheduler and the KV block pool, and runs
// iteration-level steps (continuous batching): between two steps it takes in new requests and cancellations,
// asks the Scheduler for the next step, runs it through the StepModel, samples one token per sequence whose
// chunk produced logits and pushes the results into each request's RequestStream. Log-probabilities (of sampled
// tokens, and of prompt tokens for requests with prompt_logprobs, whose prefill chunks alone ask the model for
// every row's logits) are computed here too, with each token's text in context (TextStream::peek). A request with
// max_new_tokens 0 only scores its prompt: it ends (kLength) once its prompt logprobs are pushed, sampling nothing.
//
// HTTP threads only call submit() (which validates and enqueues) and read/cancel their streams. The engine
// never blocks on a client: results wait in the stream until read. shutdown() stops accepting, finishes every
// request already accepted, then joins the thread. No exception leaves the thread: a failed step ends the
// requests in it with FinishKind::kError and the engine goes on.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/runtime/tokenizer.h"
#include "engine/serving/block_manager.h"
#include "engine/serving/metrics.h"
#include "engine/serving/request.h"
#include "engine/serving/scheduler.h"
#include "engine/serving/step_model.h"

namespace tessera::serving {

struct EngineConfig {
  int max_num_seqs = 64;      // sequences running at once
  int max_queue = 256;        // requests waiting for admission; more are refused (HTTP 429)
  int max_step_tokens = 256;  // token budget of one step (decodes plus prefill chunks)
  int block_size = 16;        // token rows per KV block
  int num_blocks = 1024;      // KV blocks in the pool
};

enum class SubmitStatus { kOk, kQueueFull, kShuttingDown };

struct Submission {
  SubmitStatus status = SubmitStatus::kOk;
  std::vector<std::shared_ptr<RequestStream>> streams;  // one per request, in order, when kOk
};

class ServingEngine {
 public:
  // eos_id ends a sequence when stop_at_eos. The tokenizer turns tokens into text (stop strings); it must be
  // safe for concurrent const use. model, tokenizer and metrics must outlive the engine.
  ServingEngine(StepModel& model, const Tokenizer& tokenizer, int eos_id, const EngineConfig& config,
                ServingMetrics& metrics);
  ~ServingEngine();
  ServingEngine(const ServingEngine&) = delete;
  ServingEngine& operator=(const ServingEngine&) = delete;

  // Throws tessera::Error when the request can never run (empty or too long prompt, more rows than the context
  // or the KV pool holds, bad sampling values).
  void validate(const ServingRequest& request) const;
  // Validates all, then enqueues all or none (n > 1 completions and prompt lists are several requests).
  // Thread-safe.
  Submission submit(std::vector<ServingRequest> requests);
  // Wakes the engine so it sees cancelled streams now rather than after the current step. Thread-safe.
  void notify_cancel();
  // Stops accepting, finishes everything accepted, joins the engine thread. Idempotent.
  void shutdown();

  const EngineConfig& config() const { return config_; }
  int context_length() const { return model_.context_length(); }

 private:
  struct Sequence;
  using Clock = std::chrono::steady_clock;

  void run();
  void step();
  void finish(Sequence& seq, FinishKind kind, std::string error = {});
  void sample(Sequence& seq, float* logits);
  // Scores the prompt tokens whose preceding row is in chunk c (logits: its n_tokens rows); pushes them all to the
  // stream once every prompt token is scored.
  void score_prompt(Sequence& seq, const ScheduledChunk& c, const float* logits);
  // out.logprob of out.token and the k most likely tokens under raw logits (log softmax, as vLLM reports).
  void logprobs_of(const float* raw, int k, TokenOutput& out);
  void publish_gauges();

  StepModel& model_;
  const Tokenizer& tokenizer_;
  const int eos_id_;
  const EngineConfig config_;
  ServingMetrics& metrics_;

  // Shared with HTTP threads, under mu_.
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Sequence>> incoming_;
  int queued_ = 0;  // accepted and not yet admitted (incoming plus the scheduler's waiting queue)
  bool stopping_ = false;
  bool wake_ = false;
  int next_id_ = 0;

  // Engine thread only.
  BlockManager blocks_;
  Scheduler scheduler_;
  std::unordered_map<int, std::unique_ptr<Sequence>> seqs_;
  std::vector<int> step_tokens_;
  std::vector<float> step_logits_;
  std::vector<float> raw_logits_;
  std::vector<int> top_ids_;

  std::thread thread_;  // last: starts after everything above is built
};

}  // namespace tessera::serving
