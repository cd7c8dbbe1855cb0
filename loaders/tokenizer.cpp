#include "loaders/tokenizer.h"

#include <filesystem>
#include <vector>

#include "engine/core/check.h"
#include "engine/core/mapped_file.h"
#include "loaders/llama2c_tokenizer.h"
#include "loaders/sentencepiece_tokenizer.h"

namespace tessera {

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  const MappedFile file(path);
  const std::string_view bytes(reinterpret_cast<const char*>(file.data()), file.size());
  // Decided by content, not by name. The tokenizer.bin check is strict (the entries must fill the file exactly),
  // so a SentencePiece protobuf cannot pass for one; the library then judges the protobuf itself.
  std::string bin_problem, sp_problem;
  if (auto t = make_llama2c_tokenizer(bytes, path, &bin_problem)) return t;
  if (auto t = make_sentencepiece_tokenizer(bytes, path, &sp_problem)) return t;
  throw Error(path + ": not a tokenizer: as a SentencePiece model: " + sp_problem +
              "; as a llama2.c tokenizer.bin: " + bin_problem);
}

std::string find_tokenizer_for(const std::string& model_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(model_path);
  const bool is_dir = fs::is_directory(p, ec);
  const fs::path dir = is_dir ? p : p.parent_path();
  // A Hugging Face directory has tokenizer.model; a llama2.c checkpoint may sit beside either kind.
  std::vector<std::string> names = {"tokenizer.model"};
  if (!is_dir) names.push_back("tokenizer.bin");
  for (const std::string& name : names) {
    const fs::path candidate = dir / name;
    if (fs::is_regular_file(candidate, ec)) return candidate.string();
  }
  return "";
}

}  // namespace tessera
