// The tokenizer of a model that has none (random-weight presets): text is token ids. encode("1 450 4996") gives
// {1, 450, 4996}; any other text becomes one id per UTF-8 byte (3 + byte, the SentencePiece byte-fallback
// layout), so chat templates still run. decode writes ids separated by spaces.
#pragma once

#include "engine/runtime/tokenizer.h"

namespace tessera::serving {

class IdTokenizer final : public Tokenizer {
 public:
  IdTokenizer(int vocab_size, int bos_id, int eos_id) : vocab_size_(vocab_size), bos_id_(bos_id), eos_id_(eos_id) {}

  std::vector<int> encode(std::string_view text, bool add_bos) const override;
  std::string decode(const std::vector<int>& ids) const override;
  int vocab_size() const override { return vocab_size_; }
  int bos_id() const override { return bos_id_; }
  int eos_id() const override { return eos_id_; }

 private:
  int vocab_size_, bos_id_, eos_id_;
};

}  // namespace tessera::serving
