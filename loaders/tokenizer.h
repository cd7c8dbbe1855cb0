// Tokenizer implementations: SentencePiece .model files (through the SentencePiece library) and llama2.c
// tokenizer.bin. The abstract interface lives in the engine (engine/runtime/tokenizer.h).
#pragma once

#include <memory>
#include <string>

#include "engine/runtime/tokenizer.h"

namespace tessera {

// Loads by file type: a SentencePiece ModelProto (.model) or a llama2.c tokenizer.bin. Throws tessera::Error.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// The tokenizer that belongs with a model path: tokenizer.model in a HF directory, or tokenizer.model /
// tokenizer.bin beside a llama2.c checkpoint. Returns "" when none is found.
std::string find_tokenizer_for(const std::string& model_path);

}  // namespace tessera
