// Test helper: a SentencePiece-like tokenizer over a fixed piece table ("▁" = space, "<0xNN>" = raw byte),
// small enough to reason about in tests.
#pragma once

#include <string>
#include <vector>

#include "engine/runtime/tokenizer.h"

namespace tessera::testing {

class FakeTokenizer : public Tokenizer {
 public:
  explicit FakeTokenizer(std::vector<std::string> pieces) : pieces_(std::move(pieces)) {}

  std::vector<int> encode(std::string_view, bool add_bos) const override {
    return add_bos ? std::vector<int>{1} : std::vector<int>{};
  }
  std::string decode(const std::vector<int>& ids) const override {
    std::string bytes;
    for (int id : ids) {
      if (id == 1 || id == 2) continue;
      const std::string& p = pieces_.at(static_cast<size_t>(id));
      if (p.size() == 6 && p.rfind("<0x", 0) == 0) {
        bytes += static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16));
      } else {
        for (size_t i = 0; i < p.size(); ++i) {
          if (p.compare(i, 3, "\xE2\x96\x81") == 0) {
            bytes += ' ';
            i += 2;
          } else {
            bytes += p[i];
          }
        }
      }
    }
    if (!bytes.empty() && bytes[0] == ' ') bytes.erase(0, 1);
    return fix_utf8(bytes);
  }
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int bos_id() const override { return 1; }
  int eos_id() const override { return 2; }

 private:
  // Incomplete trailing UTF-8 sequence -> U+FFFD, as SentencePiece does for lone byte pieces.
  static std::string fix_utf8(std::string s) {
    size_t i = s.size();
    int back = 0;
    while (i > 0 && back < 3 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i, ++back;
    if (i == 0) return s;
    const unsigned char lead = static_cast<unsigned char>(s[i - 1]);
    const int need = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : 0;
    if (need > back) s.replace(i - 1, std::string::npos, "\xEF\xBF\xBD");
    return s;
  }
  std::vector<std::string> pieces_;
};

}  // namespace tessera::testing
