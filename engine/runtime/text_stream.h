// Incremental detokenization with stop strings: turns a growing list of token ids into text that is safe to
// show now. Holds back text that might still change (an unfinished UTF-8 sequence from byte-fallback pieces)
// or that might be the start of a stop string.
#pragma once

#include <string>
#include <vector>

#include "engine/runtime/tokenizer.h"

namespace tessera {

class TextStream {
 public:
  // `context` are the tokens before the first generated one (the prompt, BOS excluded is fine); they give the
  // first new piece its leading space right. With echo, the context's own text is emitted first.
  TextStream(const Tokenizer& tokenizer, const std::vector<int>& context, std::vector<std::string> stop, bool echo);

  // Adds one token; returns the text that became final (possibly empty). After a stop string is seen,
  // stopped() is true and further tokens produce no text.
  std::string push(int token);
  // Text still held back, released at the end of generation (without any stop string).
  std::string finish();
  // For each candidate, the text it adds to the decoded sequence if it comes next, in context (" upon" after
  // "Once", "Once" at the very start), before stop strings: what logprobs report as a token's string. Empty for a
  // piece that leaves an unfinished UTF-8 sequence (the piece that completes it carries the whole character), so
  // the strings of pushed tokens spell the text. Changes nothing; one decode of the context for all candidates.
  std::vector<std::string> peek(const std::vector<int>& candidates) const;

  bool stopped() const { return stopped_; }
  // Everything emitted so far.
  const std::string& text() const { return text_; }

 private:
  std::string release(std::string pending, bool final);

  const Tokenizer& tokenizer_;
  std::vector<std::string> stop_;
  size_t max_stop_len_ = 0;
  std::vector<int> tokens_;
  size_t prefix_offset_ = 0;  // decode window start (a few tokens back, so leading spaces come out right)
  size_t read_offset_ = 0;    // tokens up to here have been turned into text
  std::string held_;          // decoded but not yet emitted (possible stop-string prefix)
  std::string text_;
  bool stopped_ = false;
};

}  // namespace tessera
