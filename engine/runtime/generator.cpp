#include "engine/runtime/generator.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>

#include "engine/core/check.h"
#include "engine/runtime/text_stream.h"

namespace tessera {

std::string_view finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kContext:
      return "context";
  }
  return "?";
}

Generator::Generator(ModelRunner& runner, const Tokenizer* tokenizer)
    : runner_(runner), tokenizer_(tokenizer), logits_(static_cast<size_t>(runner.config().vocab_size)) {}

GenerationResult Generator::generate(const GenerationRequest& request,
                                     const std::function<void(std::string_view)>& on_text) {
  using Clock = std::chrono::steady_clock;
  const ModelConfig& config = runner_.config();
  if (request.prompt.empty()) throw Error("the prompt has no tokens (start from BOS for an empty prompt)");
  if (request.max_new_tokens < 0) throw Error("max_new_tokens must be >= 0");
  if (!request.stop.empty() && tokenizer_ == nullptr) throw Error("stop strings need a tokenizer");
  const int context = config.max_seq_len;
  const int prompt_len = static_cast<int>(request.prompt.size());
  if (prompt_len > context)
    throw Error("prompt of " + std::to_string(prompt_len) + " tokens exceeds the model's context of " +
                std::to_string(context) + " tokens");

  Sampler sampler(request.sampling, config.vocab_size);
  const int capacity = std::min(context, prompt_len + request.max_new_tokens);
  constexpr int kSlot = 0;
  runner_.open_slot(kSlot, std::max(1, capacity));

  std::optional<TextStream> stream;
  if (tokenizer_ != nullptr) {
    std::vector<int> visible(request.prompt);
    if (!visible.empty() && visible.front() == tokenizer_->bos_id()) visible.erase(visible.begin());
    stream.emplace(*tokenizer_, visible, request.stop, request.echo);
    if (request.echo && on_text && !stream->text().empty()) on_text(stream->text());
  }

  GenerationResult result;
  result.prompt_tokens = prompt_len;
  std::vector<int> history(request.prompt);
  auto emit = [&](const std::string& s) {
    if (!s.empty() && on_text) on_text(s);
  };

  const auto t0 = Clock::now();
  auto t_first = t0;
  int pos = 0;
  int last_token = 0;
  std::span<const int> input(request.prompt);
  result.finish = FinishReason::kLength;
  for (int step = 0; step < request.max_new_tokens; ++step) {
    if (pos + static_cast<int>(input.size()) > capacity) {
      result.finish = FinishReason::kContext;
      break;
    }
    // The prompt goes in passes of at most max_batch_tokens; only the last one's logits are needed.
    const int batch = runner_.max_batch_tokens();
    for (size_t done = 0; done < input.size(); done += static_cast<size_t>(batch)) {
      const int n = static_cast<int>(std::min(input.size() - done, static_cast<size_t>(batch)));
      const bool last = done + static_cast<size_t>(n) == input.size();
      const StepChunk chunk{kSlot, pos, n, last ? 1 : 0};
      runner_.step({&chunk, 1}, input.subspan(done, static_cast<size_t>(n)), logits_.data());
      pos += n;
    }
    const int token = sampler.sample(logits_.data(), history);
    if (step == 0) t_first = Clock::now();
    result.tokens.push_back(token);
    history.push_back(token);
    if (request.stop_at_eos && token == config.eos_id) {
      result.finish = FinishReason::kEos;
      break;
    }
    if (stream) {
      emit(stream->push(token));
      if (stream->stopped()) {
        result.finish = FinishReason::kStop;
        break;
      }
    }
    last_token = token;
    input = std::span<const int>(&last_token, 1);
  }
  if (stream) {
    emit(stream->finish());
    result.text = stream->text();
  }
  const auto t_end = Clock::now();
  result.prefill_seconds = std::chrono::duration<double>(t_first - t0).count();
  result.decode_seconds = std::chrono::duration<double>(t_end - t_first).count();
  runner_.close_slot(kSlot);
  return result;
}

}  // namespace tessera
