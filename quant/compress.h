// Load-time compression of a loaded model: choose a storage scheme per weight (a default plus name rules),
// optionally calibrate on a text (activation-aware int4), quantize multithreaded, and report what it cost.
//
// Weight names in rules and reports are canonical: "tok_embeddings", "lm_head", "layers.<L>.<slot>" with slot one
// of wq, wk, wv, wo, w_gate, w_up, w_down. Rules are glob patterns (* and ?) matched against the whole name;
// the last matching rule wins; unmatched weights get the default.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "engine/model/weights.h"
#include "quant/prune.h"
#include "quant/quant_spec.h"

namespace tessera::quant {

struct QuantRule {
  std::string pattern;
  QuantSpec spec;
  // Parses "PATTERN=SPEC" (e.g. "layers.0.*=bf16"); throws tessera::Error naming the bad rule.
  static QuantRule parse(const std::string& text);
};

struct CompressOptions {
  QuantSpec default_spec;               // keep() = leave weights as loaded unless a rule says otherwise
  std::vector<QuantRule> rules;         // from --quant-rule, in order
  bool activation_aware = false;        // AWQ-style scale search for int4/NF4 weights; needs calibration_tokens
  std::vector<int> calibration_tokens;  // tokenized calibration text (BOS first)
  PruneOptions prune;                   // load-time pruning, run first (quant/prune.h); uses calibration_tokens
  int threads = 0;                      // 0 = all cores
  // A shard's groups (not owned; every rank of them runs compress_model with the same options, in step): the
  // tensor-parallel group when the model has tp_size > 1, the pipeline group (rank = stage) when pp_size > 1.
  // Pruning (when prune.tp / prune.pp are unset) and the activation-aware search use them to calibrate and choose
  // as one process does: stages calibrate in turn on the previous stage's outputs, and tensor-parallel ranks search
  // on the whole tensors and inputs gathered over their group.
  Communicator* tp = nullptr;
  Communicator* pp = nullptr;
  // Tensor parallelism: for an int8 matrix that is a column slice of the whole (wo, w_down of a shard with
  // tp > 1), called on the calling thread, in the same order on every rank, with the slice's max |w| per row;
  // it must replace each value by the maximum over the tensor-parallel ranks (an all-gather), so every row's
  // scale is the one a single process would choose. Null: scales from the slice alone.
  std::function<void(std::vector<float>& row_absmax)> share_row_absmax;
  std::function<void(size_t done, size_t total)> progress;  // called from the calling thread; may be null
};

struct TensorReport {
  std::string name;
  std::string scheme;  // "int4:g128", "bf16", ...
  size_t bytes_before = 0;
  size_t bytes_after = 0;
  double relative_error = 0.0;               // ||W - dequant(Q(W))||_F / ||W||_F (0 for kept tensors)
  double awq_alpha = -1.0;                   // chosen activation-aware exponent (-1 = not activation-aware)
  std::optional<PruneTensorReport> pruning;  // what pruning removed (bytes_before is then the unpruned size)
};

struct CompressReport {
  std::vector<TensorReport> tensors;
  double seconds = 0.0;
  double prune_seconds = 0.0;  // part of seconds
  double make_seconds = 0.0;   // part of seconds: making weights that were pending (ModelData::pending)
  int prune_calibration_passes = 0;
  size_t bytes_before = 0;
  size_t bytes_after = 0;
};

// The scheme of each named weight (canonical names, in the pipeline's order: tok_embeddings, layers.<L>.<slot>...,
// lm_head): the default, replaced by the last rule whose glob matches. check_unused: a rule that matches no name is
// a typo and throws tessera::Error. compress_model resolves its weights with this; `tessera plan` does too.
std::vector<QuantSpec> resolve_quant_specs(const CompressOptions& options, const std::vector<std::string>& names,
                                           bool check_unused);

// The largest quantization group of the default and the rules (1 when none is grouped): tensor-parallel column
// splits must fall on its multiples (ShardRequest::column_align).
int largest_group(const CompressOptions& options);

// Reads rules from a JSON file: {"default": "int4:g128", "rules": [{"pattern": "lm_head", "scheme": "int8"}, ...]}.
CompressOptions load_rules_file(const std::string& path);

// Prunes (options.prune) and quantizes `model` in place (new storage goes into model.store). Pending weights are
// made as they are reached and their uncompressed storage given back once encoded; none is pending afterwards. A tensor
// pruned to 2:4 whose scheme is int8 or symmetric int4 is stored in the compressed 2:4 type (int8-2:4, int4-2:4).
// Throws tessera::Error for impossible requests (e.g. activation-aware without calibration tokens).
CompressReport compress_model(ModelData& model, const CompressOptions& options);

// Writes the report as JSON (per tensor: name, scheme, bytes, relative_error).
void write_report_json(const CompressReport& report, const std::string& path);

}  // namespace tessera::quant
