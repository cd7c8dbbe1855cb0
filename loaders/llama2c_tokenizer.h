// llama2.c tokenizer.bin: uint32 max_token_length, then per id float32 score, int32 length, bytes
// ("▁" stored as a space; id 1 is "\n<s>\n", id 2 "\n</s>\n"). The vocabulary size is whatever fills the file.
// Encoding is SentencePiece BPE (dummy-prefix space, UTF-8 characters, best-scoring adjacent merge first, byte
// fallback), so ids match the SentencePiece library for the same vocabulary.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "loaders/tokenizer.h"

namespace tessera {

// Returns nullptr and sets *why when `bytes` is not a well-formed tokenizer.bin (every length is checked against
// max_token_length and the end of the data, which must be reached exactly).
std::unique_ptr<Tokenizer> make_llama2c_tokenizer(std::string_view bytes, const std::string& path, std::string* why);

}  // namespace tessera
