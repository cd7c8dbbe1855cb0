// The tokenizer interface the runtime needs (text <-> ids). Implementations live in loaders/.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tessera {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text to ids, SentencePiece semantics (dummy prefix, byte fallback); BOS prepended when add_bos.
  virtual std::vector<int> encode(std::string_view text, bool add_bos) const = 0;
  // Ids to text, SentencePiece semantics: control tokens (BOS/EOS) dropped, byte pieces turned into bytes,
  // the leading space of the first piece removed. Invalid UTF-8 from lone byte pieces becomes U+FFFD.
  virtual std::string decode(const std::vector<int>& ids) const = 0;

  virtual int vocab_size() const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
};

}  // namespace tessera
