#include "cli/options.h"

#include <chrono>

#include "engine/core/check.h"
#include "loaders/dummy_model.h"
#include "loaders/model_loader.h"
#include "loaders/tokenizer.h"

namespace tessera::cli {

void ModelOptions::add_to(CLI::App& app, bool with_tokenizer) {
  app.add_option("-m,--model", model, "Model: a llama2.c .bin checkpoint or a Hugging Face directory");
  if (with_tokenizer)
    app.add_option("--tokenizer", tokenizer,
                   "Tokenizer: SentencePiece .model or llama2.c tokenizer.bin (default: found beside the model)");
  app.add_flag("--dummy-weights", dummy_weights, "Use random weights of a standard shape (see --preset)");
  app.add_option("--preset", preset, "Shape for --dummy-weights")->check(CLI::IsMember(dummy_preset_names()));
  app.add_option("--dtype", dtype, "Weight type for --dummy-weights")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  app.add_option("-t,--threads", threads, "Worker threads (default: all cores)")->check(CLI::NonNegativeNumber);
}

void ModelOptions::validate() const {
  if (dummy_weights) {
    if (preset.empty()) throw Error("--dummy-weights needs --preset (one of: llama-110m, tinyllama-1.1b, ...)");
    if (!model.empty()) throw Error("give either --model or --dummy-weights, not both");
  } else {
    if (model.empty()) throw Error("no model: pass --model PATH, or --dummy-weights --preset NAME");
    if (!preset.empty()) throw Error("--preset only applies with --dummy-weights");
  }
}

DType parse_dtype(const std::string& name) {
  if (name == "f32") return DType::F32;
  if (name == "f16") return DType::F16;
  if (name == "bf16") return DType::BF16;
  throw Error("unknown dtype '" + name + "' (use f32, f16 or bf16)");
}

LoadedModel load(const ModelOptions& options, bool need_tokenizer) {
  options.validate();
  LoadedModel out;
  const auto t0 = std::chrono::steady_clock::now();
  if (options.dummy_weights) {
    out.data = make_dummy_model(options.preset, parse_dtype(options.dtype), options.dummy_seed);
  } else {
    out.data = load_model(options.model);
  }
  std::string tok_path = options.tokenizer;
  if (tok_path.empty() && !options.dummy_weights) tok_path = find_tokenizer_for(options.model);
  if (!tok_path.empty()) {
    out.tokenizer = load_tokenizer(tok_path);
    if (out.tokenizer->vocab_size() != out.data.config.vocab_size)
      throw Error("tokenizer " + tok_path + " has " + std::to_string(out.tokenizer->vocab_size()) +
                  " tokens but the model has " + std::to_string(out.data.config.vocab_size));
  } else if (need_tokenizer) {
    throw Error("no tokenizer found for " + options.model + ": pass --tokenizer PATH");
  }
  out.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace tessera::cli
