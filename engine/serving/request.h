// A generation request as the serving engine sees it, and the channel its results come back through.
// HTTP threads build ServingRequests and read RequestStreams; only the engine thread writes to a stream.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampling/sampler.h"

namespace tessera::serving {

struct ServingRequest {
  std::vector<int> prompt;  // token ids, BOS included when wanted; never empty
  int max_new_tokens = 16;  // 0: nothing is generated; the request ends once its prompt is scored (prompt_logprobs)
  SamplingParams sampling;
  float presence_penalty = 0.0f;   // OpenAI: subtracted once from the logit of every token generated so far
  float frequency_penalty = 0.0f;  // OpenAI: subtracted per occurrence among the generated tokens
  std::vector<std::string> stop;   // stop strings; the text is cut before them
  bool stop_at_eos = true;
  int top_logprobs = -1;  // -1: no logprobs; k >= 0: the chosen token's logprob and the k most likely
  // Also every prompt token's logprob and top_logprobs alternatives under the tokens before it (echo with
  // logprobs); needs top_logprobs >= 0. Only this request's prefill chunks compute logits for every row.
  bool prompt_logprobs = false;
};

enum class FinishKind {
  kLength,     // max_new_tokens reached (also 0 of 0: a prompt only scored)
  kContext,    // the model's context is full
  kStop,       // a stop string appeared
  kEos,        // end-of-sequence token
  kCancelled,  // the client went away
  kError,      // the step failed (message in StreamChunk::error)
};

// "length" / "stop" / "abort" / "error", as OpenAI and TGI clients expect.
std::string_view finish_reason_name(FinishKind f);

struct TopLogprob {
  int token = 0;
  float logprob = 0.0f;
  std::string piece;  // the text this token would have added in place of the chosen one (TextStream::peek)
};

struct TokenOutput {
  int token = 0;
  std::string text;  // text that became final with this token (may be empty: held back or an EOS); prompt: empty
  float logprob = 0.0f;
  std::vector<TopLogprob> top;  // most likely first; empty unless requested
  // With logprobs: the text this token adds in context, before stop strings (" upon" after "Once"; empty for a
  // byte piece that does not finish a character), so that the pieces of a sequence spell its text.
  std::string piece;
  bool has_logprob = true;  // false only for the first prompt token: nothing precedes it (no logprob, no top)
};

// Everything that arrived since the previous read.
struct StreamChunk {
  // prompt_logprobs: every prompt token (the first without a logprob), all at once, before any generated token.
  std::vector<TokenOutput> prompt;
  std::vector<TokenOutput> tokens;
  std::string tail;  // text released at the end (held back for a possible stop string), after the tokens
  bool finished = false;
  FinishKind finish = FinishKind::kLength;
  std::string error;
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

class RequestStream {
 public:
  explicit RequestStream(int prompt_tokens) : prompt_tokens_(prompt_tokens) {}

  // HTTP side: waits until output is pending or the timeout passes, then takes what is pending (possibly
  // nothing). After the chunk with finished == true, later calls return finished chunks with nothing in them.
  StreamChunk next(std::chrono::milliseconds timeout);
  // HTTP side: asks the engine to stop this request and free its cache (the engine wakes up for it).
  void cancel() { cancel_.store(true, std::memory_order_relaxed); }
  bool cancel_requested() const { return cancel_.load(std::memory_order_relaxed); }

  // Engine side.
  void push_prompt(std::vector<TokenOutput> prompt);
  void push(TokenOutput token);
  void finish(FinishKind kind, std::string tail, std::string error = {});

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  StreamChunk pending_;
  bool finished_ = false;
  int prompt_tokens_;
  int completion_tokens_ = 0;
  std::atomic<bool> cancel_{false};
};

}  // namespace tessera::serving
