#include "engine/runtime/text_stream.h"

#include <algorithm>

namespace tessera {

namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD: an unfinished byte sequence so far

std::vector<int> slice(const std::vector<int>& v, size_t begin, size_t end) {
  return std::vector<int>(v.begin() + static_cast<long>(begin), v.begin() + static_cast<long>(end));
}

}  // namespace

TextStream::TextStream(const Tokenizer& tokenizer, const std::vector<int>& context, std::vector<std::string> stop,
                       bool echo)
    : tokenizer_(tokenizer), stop_(std::move(stop)), tokens_(context) {
  std::erase_if(stop_, [](const std::string& s) { return s.empty(); });
  for (const auto& s : stop_) max_stop_len_ = std::max(max_stop_len_, s.size());
  if (echo) text_ = tokenizer_.decode(tokens_);
  // Same window rule as vLLM's incremental detokenizer: decode from a few tokens back, so the first new piece
  // is not treated as the start of the text (which would drop its leading space).
  prefix_offset_ = tokens_.size() > 5 ? tokens_.size() - 5 : 0;
  read_offset_ = tokens_.size();
}

std::string TextStream::push(int token) {
  if (stopped_) return {};
  tokens_.push_back(token);
  const std::string prefix_text = tokenizer_.decode(slice(tokens_, prefix_offset_, read_offset_));
  const std::string new_text = tokenizer_.decode(slice(tokens_, prefix_offset_, tokens_.size()));
  if (new_text.size() <= prefix_text.size() || new_text.ends_with(kReplacementChar)) return {};
  std::string delta = new_text.substr(prefix_text.size());
  prefix_offset_ = read_offset_;
  read_offset_ = tokens_.size();
  return release(held_ + delta, false);
}

std::vector<std::string> TextStream::peek(const std::vector<int>& candidates) const {
  // The same decode windows as push().
  const std::string prefix_text = tokenizer_.decode(slice(tokens_, prefix_offset_, read_offset_));
  std::vector<int> window = slice(tokens_, prefix_offset_, tokens_.size());
  window.push_back(0);
  std::vector<std::string> out;
  out.reserve(candidates.size());
  for (int token : candidates) {
    window.back() = token;
    const std::string new_text = tokenizer_.decode(window);
    const bool ready = new_text.size() > prefix_text.size() && !new_text.ends_with(kReplacementChar);
    out.push_back(ready ? new_text.substr(prefix_text.size()) : std::string());
  }
  return out;
}

std::string TextStream::finish() {
  if (stopped_) return {};
  return release(held_, true);
}

std::string TextStream::release(std::string pending, bool final) {
  held_.clear();
  size_t cut = std::string::npos;
  for (const auto& s : stop_) {
    // A stop string may straddle what was already emitted and `pending` only if it was held back, so searching
    // `pending` (which starts with the held-back text) is enough.
    const size_t at = pending.find(s);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    stopped_ = true;
    pending.resize(cut);
    text_ += pending;
    return pending;
  }
  if (!final && max_stop_len_ > 1) {
    // Keep back the longest tail that is a prefix of some stop string.
    size_t keep = 0;
    for (const auto& s : stop_)
      for (size_t len = std::min(s.size() - 1, pending.size()); len > keep; --len)
        if (pending.compare(pending.size() - len, len, s, 0, len) == 0) {
          keep = len;
          break;
        }
    held_ = pending.substr(pending.size() - keep);
    pending.resize(pending.size() - keep);
  }
  text_ += pending;
  return pending;
}

}  // namespace tessera
