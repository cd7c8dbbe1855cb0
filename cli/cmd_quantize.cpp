// tessera quantize: load a model, compress its weights (--quant, --quant-rule, --calib, ...) and write the result
// as a directory that --model loads directly, without quantizing again.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "cli/options.h"
#include "engine/core/check.h"
#include "loaders/quantized_checkpoint.h"

namespace tessera::cli {

namespace {

namespace fs = std::filesystem;

struct QuantizeOptions {
  ModelOptions model;
  std::string out;
  bool force = false;
};

int run_quantize(const QuantizeOptions& o) {
  o.model.validate();
  std::error_code ec;
  const fs::path out(o.out);
  if (fs::exists(out, ec) && !fs::is_directory(out, ec)) throw Error(o.out + ": exists and is not a directory");
  // Writing over the directory being read would replace files that are mapped.
  if (!o.model.model.empty() && fs::exists(out, ec) && fs::equivalent(out, o.model.model, ec))
    throw Error("--out " + o.out + " is where the model is read from: write the quantized model elsewhere");
  if (!o.force && (fs::exists(out / "model.safetensors", ec) || fs::exists(out / "config.json", ec)))
    throw Error(o.out + " already holds a model: pass --force to replace it");

  ModelOptions model = o.model;
  model.cpu_layout = false;  // saved as canonical rows
  const LoadedModel loaded = load(model, /*need_tokenizer=*/false);
  const auto t0 = std::chrono::steady_clock::now();
  save_quantized_checkpoint(loaded.data, o.out, loaded.tokenizer_path);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto bytes = fs::file_size(out / "model.safetensors", ec);
  std::fprintf(stderr, "[tessera] wrote %s: model.safetensors %.1f MB%s in %.2f s (load %.2f s)\n", o.out.c_str(),
               ec ? 0.0 : static_cast<double>(bytes) / 1e6,
               loaded.tokenizer_path.empty() ? ", no tokenizer" : ", tokenizer.model", secs, loaded.load_seconds);
  return 0;
}

}  // namespace

Command add_quantize_command(CLI::App& app) {
  auto o = std::make_shared<QuantizeOptions>();
  CLI::App* sub = app.add_subcommand(
      "quantize",
      "Compress a model's weights (--quant, --quant-rule, --calib, ...) and save them as a directory that "
      "--model loads without quantizing again");
  o->model.add_to(*sub);
  sub->add_option("-o,--out", o->out,
                  "Output directory (created if missing): config.json, model.safetensors and the tokenizer")
      ->required()
      ->option_text("DIR");
  sub->add_flag("--force", o->force, "Replace a model already in the output directory");
  return [o] { return run_quantize(*o); };
}

}  // namespace tessera::cli
