#include "engine/serving/request.h"

namespace tessera::serving {

std::string_view finish_reason_name(FinishKind f) {
  switch (f) {
    case FinishKind::kLength:
    case FinishKind::kContext:
      return "length";
    case FinishKind::kStop:
    case FinishKind::kEos:
      return "stop";
    case FinishKind::kCancelled:
      return "abort";
    case FinishKind::kError:
      return "error";
  }
  return "error";
}

StreamChunk RequestStream::next(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout,
               [&] { return !pending_.tokens.empty() || !pending_.prompt.empty() || pending_.finished; });
  StreamChunk out = std::move(pending_);
  pending_ = StreamChunk{};
  if (finished_) {
    // Later reads keep reporting the end, with nothing new in them.
    pending_.finished = true;
    pending_.finish = out.finish;
    pending_.error = out.error;
  }
  out.prompt_tokens = pending_.prompt_tokens = prompt_tokens_;
  out.completion_tokens = pending_.completion_tokens = completion_tokens_;
  return out;
}

void RequestStream::push_prompt(std::vector<TokenOutput> prompt) {
  {
    std::lock_guard lock(mu_);
    pending_.prompt.insert(pending_.prompt.end(), std::make_move_iterator(prompt.begin()),
                           std::make_move_iterator(prompt.end()));
  }
  cv_.notify_all();
}

void RequestStream::push(TokenOutput token) {
  {
    std::lock_guard lock(mu_);
    pending_.tokens.push_back(std::move(token));
    ++completion_tokens_;
  }
  cv_.notify_all();
}

void RequestStream::finish(FinishKind kind, std::string tail, std::string error) {
  {
    std::lock_guard lock(mu_);
    pending_.tail += tail;
    pending_.finished = true;
    pending_.finish = kind;
    pending_.error = std::move(error);
    finished_ = true;
  }
  cv_.notify_all();
}

}  // namespace tessera::serving
