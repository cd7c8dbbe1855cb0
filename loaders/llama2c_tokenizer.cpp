#include "loaders/llama2c_tokenizer.h"

#include <array>
#include <cstring>
#include <queue>
#include <unordered_map>
#include <vector>

#include "engine/core/check.h"

namespace tessera {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";   // U+FFFD
constexpr std::string_view kUnknownSurface = " \xE2\x81\x87 ";  // " ⁇ ", SentencePiece's rendering of <unk>
constexpr size_t kMaxVocab = size_t{1} << 22;

// One UTF-8 character at the start of s, validated the way SentencePiece does (no overlongs, no surrogates,
// nothing above U+10FFFF). Returns its length, or 0 when the first byte does not start a valid character.
size_t utf8_char_len(std::string_view s) {
  const auto b = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const auto trail = [&](size_t i) { return (b(i) & 0xC0) == 0x80; };
  const auto valid = [](uint32_t cp) { return cp < 0xD800 || (cp >= 0xE000 && cp <= 0x10FFFF); };
  if (b(0) < 0x80) return 1;
  if (s.size() >= 2 && (b(0) & 0xE0) == 0xC0 && trail(1)) {
    const uint32_t cp = ((b(0) & 0x1Fu) << 6) | (b(1) & 0x3Fu);
    return cp >= 0x80 ? 2 : 0;
  }
  if (s.size() >= 3 && (b(0) & 0xF0) == 0xE0 && trail(1) && trail(2)) {
    const uint32_t cp = ((b(0) & 0x0Fu) << 12) | ((b(1) & 0x3Fu) << 6) | (b(2) & 0x3Fu);
    return cp >= 0x800 && valid(cp) ? 3 : 0;
  }
  if (s.size() >= 4 && (b(0) & 0xF8) == 0xF0 && trail(1) && trail(2) && trail(3)) {
    const uint32_t cp = ((b(0) & 0x07u) << 18) | ((b(1) & 0x3Fu) << 12) | ((b(2) & 0x3Fu) << 6) | (b(3) & 0x3Fu);
    return cp >= 0x10000 && valid(cp) ? 4 : 0;
  }
  return 0;
}

// "<0x41>" -> 0x41; -1 for anything else.
int byte_piece_value(std::string_view p) {
  if (p.size() != 6 || !p.starts_with("<0x") || p[5] != '>') return -1;
  int v = 0;
  for (char ch : p.substr(3, 2)) {
    const int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

class Llama2cTokenizer : public Tokenizer {
 public:
  Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores, std::string path)
      : pieces_(std::move(pieces)), scores_(std::move(scores)), path_(std::move(path)) {
    byte_ids_.fill(-1);
    is_byte_.assign(pieces_.size(), false);
    for (size_t id = 0; id < pieces_.size(); ++id) {
      const std::string& p = pieces_[id];
      const int i = static_cast<int>(id);
      if (p == "<unk>") unk_ = i;
      if (p == "\n<s>\n") bos_ = i;
      if (p == "\n</s>\n") eos_ = i;
      if (const int b = byte_piece_value(p); b >= 0 && byte_ids_[static_cast<size_t>(b)] < 0) {
        byte_ids_[static_cast<size_t>(b)] = i;
        is_byte_[id] = true;
      }
    }
    // Control, unknown and byte pieces are never produced by merging (SentencePiece keeps them out of its piece
    // table too); the first of two equal pieces wins.
    for (size_t id = 0; id < pieces_.size(); ++id) {
      const int i = static_cast<int>(id);
      if (i == unk_ || i == bos_ || i == eos_ || is_byte_[id]) continue;
      lookup_.emplace(std::string_view(pieces_[id]), i);
    }
  }

  // lookup_ holds views into pieces_: no copies.
  Llama2cTokenizer(const Llama2cTokenizer&) = delete;
  Llama2cTokenizer& operator=(const Llama2cTokenizer&) = delete;

  std::vector<int> encode(std::string_view text, bool add_bos) const override {
    std::vector<int> ids;
    if (add_bos) ids.push_back(bos_);
    if (text.empty()) return ids;

    // Normalise like SentencePiece with add_dummy_prefix and the identity rule: a leading space, and every
    // invalid UTF-8 byte replaced by U+FFFD. Spaces stay spaces (the .bin stores "▁" as " ").
    std::string norm = " ";
    std::vector<Symbol> syms;
    syms.push_back({0, 1, -1, 1});
    for (size_t i = 0; i < text.size();) {
      const size_t len = utf8_char_len(text.substr(i));
      const int idx = static_cast<int>(syms.size());
      if (len == 0) {
        syms.push_back({norm.size(), kReplacementChar.size(), idx - 1, idx + 1});
        norm += kReplacementChar;
        i += 1;
      } else {
        syms.push_back({norm.size(), len, idx - 1, idx + 1});
        norm.append(text.substr(i, len));
        i += len;
      }
    }
    syms.back().next = -1;

    // BPE: repeatedly merge the adjacent pair whose concatenation is the best-scoring piece (leftmost on ties).
    // Queue entries go stale when a side changes; they are recognised by the combined length.
    std::priority_queue<Candidate, std::vector<Candidate>, CandidateOrder> queue;
    const std::string_view view(norm);
    auto try_pair = [&](int l, int r) {
      if (l < 0 || r < 0) return;
      const size_t len = syms[static_cast<size_t>(l)].len + syms[static_cast<size_t>(r)].len;
      const auto it = lookup_.find(view.substr(syms[static_cast<size_t>(l)].start, len));
      if (it != lookup_.end()) queue.push({scores_[static_cast<size_t>(it->second)], l, r, len});
    };
    for (size_t i = 0; i + 1 < syms.size(); ++i) try_pair(static_cast<int>(i), static_cast<int>(i + 1));
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = syms[static_cast<size_t>(top.left)];
      Symbol& right = syms[static_cast<size_t>(top.right)];
      if (left.len == 0 || right.len == 0 || left.next != top.right || left.len + right.len != top.len) continue;
      left.len += right.len;
      right.len = 0;
      left.next = right.next;
      if (right.next >= 0) syms[static_cast<size_t>(right.next)].prev = top.left;
      try_pair(left.prev, top.left);
      try_pair(top.left, left.next);
    }

    for (int i = 0; i >= 0; i = syms[static_cast<size_t>(i)].next) {
      const Symbol& s = syms[static_cast<size_t>(i)];
      const std::string_view piece = view.substr(s.start, s.len);
      if (const auto it = lookup_.find(piece); it != lookup_.end()) {
        ids.push_back(it->second);
        continue;
      }
      for (char ch : piece) {  // byte fallback
        const int b = byte_ids_[static_cast<uint8_t>(ch)];
        ids.push_back(b >= 0 ? b : unk_);
      }
    }
    return ids;
  }

  std::string decode(const std::vector<int>& ids) const override {
    std::string out;
    std::string bytes;  // a run of byte pieces, turned into text together
    bool at_start = true;
    auto flush_bytes = [&] {
      for (size_t i = 0; i < bytes.size();) {
        const size_t len = utf8_char_len(std::string_view(bytes).substr(i));
        if (len == 0) {
          out += kReplacementChar;
          i += 1;
        } else {
          out.append(bytes, i, len);
          i += len;
        }
      }
      if (!bytes.empty()) at_start = false;
      bytes.clear();
    };
    for (int id : ids) {
      if (id < 0 || id >= vocab_size())
        throw Error(path_ + ": token id " + std::to_string(id) + " is outside the vocabulary (size " +
                    std::to_string(vocab_size()) + ")");
      const size_t u = static_cast<size_t>(id);
      if (is_byte_[u]) {
        bytes.push_back(static_cast<char>(byte_piece_value(pieces_[u])));
        continue;
      }
      flush_bytes();
      if (id == bos_ || id == eos_) continue;  // control pieces are invisible
      std::string_view piece = id == unk_ ? kUnknownSurface : std::string_view(pieces_[u]);
      // The first piece after the start (control pieces aside) loses the dummy-prefix space.
      if (at_start && id != unk_ && piece.starts_with(' ')) piece.remove_prefix(1);
      at_start = false;
      out.append(piece);
    }
    flush_bytes();
    return out;
  }

  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int bos_id() const override { return bos_; }
  int eos_id() const override { return eos_; }

 private:
  struct Symbol {
    size_t start;
    size_t len;  // 0 once merged into its left neighbour
    int prev;
    int next;
  };
  struct Candidate {
    float score;
    int left;
    int right;
    size_t len;
  };
  struct CandidateOrder {  // priority_queue pops the "largest": best score, then leftmost
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.score != b.score ? a.score < b.score : a.left > b.left;
    }
  };

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::string path_;
  std::vector<bool> is_byte_;
  std::unordered_map<std::string_view, int> lookup_;  // views into pieces_, which never changes
  std::array<int, 256> byte_ids_{};
  int unk_ = 0;
  int bos_ = 1;
  int eos_ = 2;
};

}  // namespace

std::unique_ptr<Tokenizer> make_llama2c_tokenizer(std::string_view bytes, const std::string& path, std::string* why) {
  const auto reject = [&](std::string what) -> std::unique_ptr<Tokenizer> {
    *why = std::move(what);
    return nullptr;
  };
  if (bytes.size() < 4) return reject("shorter than the 4-byte max_token_length");
  uint32_t max_len = 0;
  std::memcpy(&max_len, bytes.data(), 4);
  if (max_len == 0 || max_len > 4096) return reject("max_token_length " + std::to_string(max_len) + " is implausible");

  std::vector<std::string> pieces;
  std::vector<float> scores;
  size_t off = 4;
  while (off < bytes.size()) {
    const std::string entry = "entry " + std::to_string(pieces.size()) + " at offset " + std::to_string(off);
    if (pieces.size() >= kMaxVocab) return reject("more than " + std::to_string(kMaxVocab) + " entries");
    if (bytes.size() - off < 8) return reject(entry + " is truncated");
    float score;
    int32_t len;
    std::memcpy(&score, bytes.data() + off, 4);
    std::memcpy(&len, bytes.data() + off + 4, 4);
    off += 8;
    if (len < 0 || static_cast<uint32_t>(len) > max_len)
      return reject(entry + " has length " + std::to_string(len) + " (max_token_length " + std::to_string(max_len) +
                    ")");
    if (bytes.size() - off < static_cast<size_t>(len)) return reject(entry + " runs past the end of the file");
    pieces.emplace_back(bytes.substr(off, static_cast<size_t>(len)));
    scores.push_back(score);
    off += static_cast<size_t>(len);
  }
  if (pieces.size() < 3) return reject("only " + std::to_string(pieces.size()) + " entries");
  return std::make_unique<Llama2cTokenizer>(std::move(pieces), std::move(scores), path);
}

}  // namespace tessera
