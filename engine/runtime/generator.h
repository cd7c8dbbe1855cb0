// Single-sequence generation loop: prefill the prompt in batched passes, then decode token by token,
// sampling, streaming text and stopping on EOS, a stop string or the token limit.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/runtime/model_runner.h"
#include "engine/runtime/tokenizer.h"
#include "engine/sampling/sampler.h"

namespace tessera {

struct GenerationRequest {
  std::vector<int> prompt;  // token ids, BOS included when wanted; must not be empty
  int max_new_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings (need a tokenizer)
  bool stop_at_eos = true;
  bool echo = false;  // stream the prompt's text first
};

enum class FinishReason { kLength, kStop, kEos, kContext };
std::string_view finish_reason_name(FinishReason r);

struct GenerationResult {
  std::vector<int> tokens;  // generated ids (EOS included if it ended generation)
  std::string text;         // streamed text (empty without a tokenizer)
  FinishReason finish = FinishReason::kLength;
  int prompt_tokens = 0;
  double prefill_seconds = 0.0;  // time to first token (prompt pass + first sample)
  double decode_seconds = 0.0;   // the remaining tokens
};

class Generator {
 public:
  // tokenizer may be null (dummy weights): then no text is produced and stop strings are refused.
  // Uses the runner's sequence slot 0 (leader side of a parallel job, or a single process).
  Generator(ModelRunner& runner, const Tokenizer* tokenizer);

  // on_text receives text as it becomes final. Throws tessera::Error for invalid requests.
  GenerationResult generate(const GenerationRequest& request,
                            const std::function<void(std::string_view)>& on_text = nullptr);

 private:
  ModelRunner& runner_;
  const Tokenizer* tokenizer_;
  std::vector<float> logits_;
};

}  // namespace tessera
