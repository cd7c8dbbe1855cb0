// Tessera's own checkpoint directory, written by `tessera quantize --out DIR` and loaded by --model DIR:
//   config.json        the ModelConfig with "tessera_format": 1 (what tells this format from a Hugging Face one)
//   model.safetensors  every weight under its canonical name ("tok_embeddings", "layers.<L>.wq",
//   "layers.<L>.attn_norm",
//                      "final_norm", "lm_head", ...): quantized matrices as one U8 tensor [rows][row_bytes] holding the
//                      canonical block rows (quant/blocks.h), plain matrices as F32/F16/BF16 [rows][cols], norms and
//                      biases as F32 [n]. "__metadata__" maps each matrix name to a JSON string
//                      {"dtype": "int4", "group": 32, "rows": R, "cols": C}. Every tensor starts 64-byte aligned
//                      (the gaps are U8 tensors named "__padding.<k>", so the file stays valid safetensors).
//   tokenizer.model    a copy of the tokenizer, when one was given
// lm_head is absent when it shares the embedding table (config "tied_embeddings": true). Loading maps the file and
// uses the weights in place: the model is bit-identical to the one that was saved, and nothing is re-quantized.
#pragma once

#include <string>

#include "engine/model/weights.h"

namespace tessera {

inline constexpr int kTesseraFormatVersion = 1;

// True when `dir` is a directory whose config.json carries "tessera_format". Never throws.
bool is_quantized_checkpoint(const std::string& dir);

// Loads a directory written by save_quantized_checkpoint. Throws tessera::Error naming the file and the problem
// (missing or unexpected tensors, unknown dtype, sizes that do not match the dtype, group and config, ...).
ModelData load_quantized_checkpoint(const std::string& dir);

// Writes `model` into `dir` (created when missing; existing files of the format are replaced) and copies
// `tokenizer_path` to dir/tokenizer.model when it is not empty. Files are written under temporary names and
// renamed, config.json last. Throws tessera::Error on I/O failures.
void save_quantized_checkpoint(const ModelData& model, const std::string& dir, const std::string& tokenizer_path = "");

}  // namespace tessera
