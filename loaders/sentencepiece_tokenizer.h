// Tokenizer over a SentencePiece ModelProto, through the SentencePiece library itself.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "loaders/tokenizer.h"

namespace tessera {

// Returns nullptr and sets *why when `bytes` is not a loadable SentencePiece model.
std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(std::string_view bytes, const std::string& path,
                                                        std::string* why);

}  // namespace tessera
