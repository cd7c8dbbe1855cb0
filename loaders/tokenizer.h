// Tokenizers: SentencePiece .model files (through the SentencePiece library) and llama2.c tokenizer.bin.
#pragma once

#include <memory>
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

// Loads by file type: a SentencePiece ModelProto (.model) or a llama2.c tokenizer.bin. Throws tessera::Error.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// The tokenizer that belongs with a model path: tokenizer.model in a HF directory, or tokenizer.model /
// tokenizer.bin beside a llama2.c checkpoint. Returns "" when none is found.
std::string find_tokenizer_for(const std::string& model_path);

}  // namespace tessera
