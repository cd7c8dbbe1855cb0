// Options shared by the subcommands (which model, which tokenizer, how many threads, how to compress the weights
// at load) and the code that turns them into a loaded model.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/model/shard.h"
#include "engine/model/weights.h"
#include "engine/runtime/tokenizer.h"
#include "parallel/communicator.h"
#include "quant/compress.h"

namespace tessera {
struct ParallelGroups;  // engine/runtime/model_runner.h
}

namespace tessera::cli {

struct ModelOptions {
  std::string model;      // checkpoint file or HF directory
  std::string tokenizer;  // optional; found beside the model when empty
  bool dummy_weights = false;
  std::string preset;          // with dummy_weights
  std::string dtype = "bf16";  // dummy weight dtype
  uint64_t dummy_seed = 0;
  int threads = 0;  // 0 = all cores

  // Load-time compression (applied by load()).
  std::string quant;                     // default scheme of every weight; empty = not given (keep)
  std::vector<std::string> quant_rules;  // "PATTERN=SCHEME", later ones win
  std::string quant_rules_file;          // JSON rules file
  std::string calib;                     // calibration text file: activation-aware int4/nf4
  int calib_tokens = 1024;               // calibration tokens used at most
  std::string quant_report;              // JSON report path
  std::string act_quant = "none";        // none | int8
  std::string act_dtype = "bf16";        // bf16 | fp32: the activations bf16-weight matmuls read (CPU)
  std::string prune;                     // default pruning spec (quant/prune.h); empty = none
  std::vector<std::string> prune_rules;  // "PATTERN=SPEC", later ones win
  int prune_multiple = 2;                // kept FFN channels / KV groups divisible by this
  // After compression, load() stores int4 (Q4/Q4A) matrices in the CPU backend's panel layout in place of their
  // rows (engine/backend/cpu/panel8.h), so the backend reads them without a copy. Off for what needs the canonical
  // rows: `tessera quantize` (it saves them) and runs on another device.
  bool cpu_layout = true;

  // Registers --model/--tokenizer/--dummy-weights/--preset/--dtype/--threads and the compression options.
  void add_to(CLI::App& app, bool with_tokenizer = true);
  // Registers only --quant/--quant-rule/--quant-rules/--calib/--calib-tokens/--quant-report/--act-quant and
  // --prune/--prune-rule/--prune-multiple.
  void add_quant_options(CLI::App& app);
  // Throws tessera::Error when the combination makes no sense (no model and no preset, both, a bad scheme, ...).
  void validate() const;
  // True when any compression option was given (load() then runs the compression pipeline).
  bool wants_compression() const;
  // The compression options without calibration tokens (rules file, then --quant, then --quant-rule).
  quant::CompressOptions compress_options() const;
};

struct LoadedModel {
  ModelData data;
  std::unique_ptr<Tokenizer> tokenizer;              // null for dummy weights without --tokenizer
  std::string tokenizer_path;                        // the file it was loaded from ("" when none)
  double load_seconds = 0.0;                         // everything, quantization included
  double quantize_seconds = 0.0;                     // the compression pipeline alone (0 when it did not run)
  std::optional<quant::CompressReport> compression;  // set when the compression pipeline ran
  // --act-quant and --act-dtype: subcommands pass them on with configure_activations.
  ActQuant act_quant = ActQuant::kNone;
  bool bf16_activations = false;
};

// Applies the loaded model's activation options (--act-quant, --act-dtype) to a CPU backend.
void configure_activations(CpuBackend& backend, const LoadedModel& loaded);

// Loads the model and tokenizer, then compresses the weights as the options ask (progress bar on stderr when it
// is a terminal, one summary line on stderr). need_tokenizer: fail when no tokenizer is found (--calib needs one
// too).
// shard: this rank's part of a tensor/pipeline-parallel job (null or 1 x 1: the whole model). The split is
// planned from the config before any weight is read and checked against the compression's group sizes; only
// the shard's slices are then read and compressed.
// groups: the job's communicators (needed when the shard is not the whole model): over `tp` the ranks agree on
// each split int8 row's scale and gather what pruning decides on whole tensors; over `pp_control` (no deadline:
// earlier stages may prune for minutes) pipeline stages pass calibration activations on.
LoadedModel load(const ModelOptions& options, bool need_tokenizer, const ShardRequest* shard = nullptr,
                 const ParallelGroups* groups = nullptr);

// Parses "f32" | "f16" | "bf16".
DType parse_dtype(const std::string& name);

}  // namespace tessera::cli
