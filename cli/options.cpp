#include "cli/options.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <numeric>
#include <optional>
#include <sstream>

#include "cli/memory_fit.h"
#include "cli/progress.h"
#include "engine/backend/cpu/panel8.h"
#include "engine/core/check.h"
#include "engine/core/thread_pool.h"
#include "engine/runtime/model_runner.h"
#include "loaders/dummy_model.h"
#include "loaders/model_loader.h"
#include "loaders/shard_weights.h"
#include "loaders/tokenizer.h"
#include "quant/blocks.h"

namespace tessera::cli {

namespace {

std::string human_bytes(size_t b) {
  char buf[32];
  if (b >= 1000000000) {
    std::snprintf(buf, sizeof buf, "%.2f GB", static_cast<double>(b) / 1e9);
  } else if (b >= 1000000) {
    std::snprintf(buf, sizeof buf, "%.1f MB", static_cast<double>(b) / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f kB", static_cast<double>(b) / 1e3);
  }
  return buf;
}

// "int4:g32 x155, int8 x1" in order of first appearance.
std::string scheme_summary(const quant::CompressReport& report) {
  std::vector<std::pair<std::string, int>> counts;
  for (const auto& t : report.tensors) {
    auto it = std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return c.first == t.scheme; });
    if (it == counts.end()) {
      counts.emplace_back(t.scheme, 1);
    } else {
      ++it->second;
    }
  }
  std::string s;
  for (const auto& [scheme, n] : counts) s += (s.empty() ? "" : ", ") + scheme + " x" + std::to_string(n);
  return s;
}

std::string read_text_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot read the " + what);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

void ModelOptions::add_to(CLI::App& app, bool with_tokenizer) {
  app.add_option("-m,--model", model,
                 "Model: a llama2.c .bin checkpoint, a Hugging Face directory, or a directory written by "
                 "`tessera quantize`");
  if (with_tokenizer)
    app.add_option("--tokenizer", tokenizer,
                   "Tokenizer: SentencePiece .model or llama2.c tokenizer.bin (default: found beside the model)");
  app.add_flag("--dummy-weights", dummy_weights, "Use random weights of a standard shape (see --preset)");
  app.add_option("--preset", preset, "Shape for --dummy-weights")->check(CLI::IsMember(dummy_preset_names()));
  app.add_option("--dtype", dtype, "Weight type for --dummy-weights")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  app.add_option("-t,--threads", threads, "Worker threads (default: all cores)")->check(CLI::NonNegativeNumber);
  add_quant_options(app);
}

void ModelOptions::add_quant_options(CLI::App& app) {
  app.add_option("--quant", quant,
                 "Quantize the weights at load to SCHEME: int8 (per row) | int4[:g32|:g64|:g128][:sym|:asym] | "
                 "nf4[:g32|:g64|:g128] | bf16 | f16 | f32 | keep (groups default to g128; default: keep, the "
                 "weights stay as loaded)")
      ->option_text("SCHEME");
  app.add_option("--quant-rule", quant_rules,
                 "Scheme for the weights whose name matches a glob (* and ?), as 'PATTERN=SCHEME', e.g. "
                 "'lm_head=int8' or 'layers.0.*=bf16'. Repeatable; the last matching rule wins over earlier ones and "
                 "over --quant. Names: tok_embeddings, lm_head, layers.<L>.<wq|wk|wv|wo|w_gate|w_up|w_down>")
      ->option_text("PATTERN=SCHEME");
  app.add_option("--quant-rules", quant_rules_file,
                 "JSON rules file: {\"default\": \"int4:g128\", \"rules\": [{\"pattern\": \"lm_head\", \"scheme\": "
                 "\"int8\"}, ...]}. --quant replaces its default; --quant-rule rules apply after its rules")
      ->option_text("FILE");
  app.add_option("--calib", calib,
                 "Calibration text file: activation-aware int4/nf4 quantization (AWQ-style per-channel scales "
                 "searched on the activations of this text; needs a tokenizer and int4/nf4 weights)")
      ->option_text("FILE");
  app.add_option("--calib-tokens", calib_tokens, "Use at most this many tokens of the calibration text")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  app.add_option("--quant-report", quant_report,
                 "Write a JSON report of the load-time compression: per weight the scheme, bytes before/after, "
                 "relative error ||W - Q(W)|| / ||W|| and the chosen AWQ alpha (under --tp/--pp each rank writes its "
                 "shard's, FILE with .tpR-ppS before the extension)")
      ->option_text("FILE");
  app.add_option("--act-quant", act_quant,
                 "Activation quantization for int8 weights: none, or int8 (activations quantized per row at run "
                 "time so the dot products run in int8; needs int8 weights)")
      ->check(CLI::IsMember({"none", "int8"}))
      ->capture_default_str();
  app.add_option("--act-dtype", act_dtype,
                 "Activations read by bf16-weight matmuls on the CPU: bf16 (rounded once per matmul, as llama.cpp "
                 "and cuBLAS compute bf16 models; on CPUs with AVX512_BF16 the dot products then run as bf16 pairs, "
                 "about 1.5x the batched decode and prefill throughput) or fp32 (exact activations). Other weight "
                 "types always read fp32 (or --act-quant int8) activations")
      ->check(CLI::IsMember({"bf16", "fp32"}))
      ->capture_default_str();
  app.add_option("--prune", prune,
                 "Prune the weights at load, before quantizing them: METHOD:SPARSITY with METHOD magnitude | "
                 "magnitude-global | wanda | sparsegpt (wanda and sparsegpt need --calib) | structured | "
                 "structured-ffn | structured-attn and SPARSITY a fraction or percentage (0.5, 50%), or METHOD:N:M "
                 "(e.g. wanda:2:4; 2:4 with int8/int4 is stored compressed). See docs/pruning.md")
      ->option_text("METHOD:SPARSITY");
  app.add_option("--prune-rule", prune_rules,
                 "Pruning spec for the weights whose name matches a glob, as 'PATTERN=SPEC' (e.g. 'layers.0.*=none', "
                 "'*.w_down=wanda:0.3', 'layers.*.ffn=structured:0.3'). Repeatable; the last matching rule wins. "
                 "Structured specs apply to layers.<L>.ffn and layers.<L>.attn")
      ->option_text("PATTERN=SPEC");
  app.add_option("--prune-multiple", prune_multiple,
                 "Structured pruning keeps FFN channels and KV groups in multiples of this (tensor parallelism)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
}

void ModelOptions::validate() const {
  if (dummy_weights) {
    if (preset.empty()) throw Error("--dummy-weights needs --preset (one of: llama-110m, tinyllama-1.1b, ...)");
    if (!model.empty()) throw Error("give either --model or --dummy-weights, not both");
  } else {
    if (model.empty()) throw Error("no model: pass --model PATH, or --dummy-weights --preset NAME");
    if (!preset.empty()) throw Error("--preset only applies with --dummy-weights");
  }
  // Bad schemes and rules fail before a large model is loaded.
  if (!quant.empty()) {
    try {
      quant::QuantSpec::parse(quant);
    } catch (const Error& e) {
      throw Error(std::string("--quant: ") + e.what());
    }
  }
  for (const std::string& r : quant_rules) quant::QuantRule::parse(r);
  if (!prune.empty()) {
    try {
      quant::PruneSpec::parse(prune);
    } catch (const Error& e) {
      throw Error(std::string("--prune: ") + e.what());
    }
  }
  for (const std::string& r : prune_rules) quant::PruneRule::parse(r);
  if (act_quant != "none" && act_quant != "int8")
    throw Error("--act-quant must be none or int8, got '" + act_quant + "'");
}

bool ModelOptions::wants_compression() const {
  return (!quant.empty() && quant != "keep") || !quant_rules.empty() || !quant_rules_file.empty() || !calib.empty() ||
         !quant_report.empty() || !prune.empty() || !prune_rules.empty();
}

quant::CompressOptions ModelOptions::compress_options() const {
  quant::CompressOptions o;
  if (!quant_rules_file.empty()) o = quant::load_rules_file(quant_rules_file);
  if (!quant.empty()) o.default_spec = quant::QuantSpec::parse(quant);
  for (const std::string& r : quant_rules) o.rules.push_back(quant::QuantRule::parse(r));
  if (!prune.empty()) o.prune.default_spec = quant::PruneSpec::parse(prune);
  for (const std::string& r : prune_rules) o.prune.rules.push_back(quant::PruneRule::parse(r));
  o.prune.multiple = prune_multiple;
  o.threads = threads;
  return o;
}

DType parse_dtype(const std::string& name) {
  if (name == "f32") return DType::F32;
  if (name == "f16") return DType::F16;
  if (name == "bf16") return DType::BF16;
  throw Error("unknown dtype '" + name + "' (use f32, f16 or bf16)");
}

namespace {

// Pruning a shard gives what one process gives except for choices made across tensors or across a tensor's
// channels (quant/prune.h): refused here, before anything is loaded, with the same words on every rank. Returns
// the column multiple a split must keep so N:M groups stay whole: M (1 without N:M pruning).
int shard_prune_group(const quant::CompressOptions& compress) {
  const quant::PruneOptions& prune = compress.prune;
  // 2:4-pruned int4 is stored with one scale per 64 columns (quant::kSparse24Block), which a split must not cut;
  // every 2:4 decode kernel quantizes its activations in blocks of 32 inputs, which a split must not cut either.
  bool int4 = compress.default_spec.dtype == DType::Q4;
  for (const quant::QuantRule& r : compress.rules) int4 = int4 || r.spec.dtype == DType::Q4;
  int m = 1;
  const auto check = [&](const quant::PruneSpec& spec, const std::string& where) {
    if (spec.none()) return;
    const std::string what = "pruning " + where + " '" + spec.to_string() + "' ";
    if (spec.method == quant::PruneMethod::kMagnitudeGlobal)
      throw Error(what +
                  "is not supported with --tp/--pp (one threshold across tensors held by different ranks); use "
                  "magnitude (one threshold per tensor) or run on one rank");
    if (spec.structured())
      throw Error(what +
                  "is not supported with --tp/--pp (it chooses whole channels and heads across each tensor); prune "
                  "once on one rank with `tessera quantize --prune ... --out DIR` and load DIR with --tp/--pp (the "
                  "kept counts stay divisible by 2), or use an unstructured or N:M method");
    if (!spec.nm()) return;
    // 2:4 decode kernels quantize the activations in blocks of 32 inputs (int4: 2:4 blocks of 64 with a scale).
    const int split = spec.two_of_four() ? (int4 ? quant::kSparse24Block : 32) : spec.m;
    m = std::lcm(m, split);
  };
  check(prune.default_spec, "(--prune)");
  for (const quant::PruneRule& rule : prune.rules) check(rule.spec, "rule '" + rule.pattern + "'");
  return m;
}

// Replaces every int4 matrix view by its panel-layout copy (one matrix at a time) and gives the rows' memory back, so
// the CPU backend's upload uses the panels in place instead of copying them next to the rows. A tied lm_head is the
// embedding table's view and moves with it.
void use_cpu_panel_layout(ModelData& m, int threads) {
  ThreadPool pool(threads > 0 ? threads : ThreadPool::default_threads());
  const std::vector<Matrix*> views = m.weights.matrices();
  for (Matrix* v : views) {
    if (!cpu::panel8_applies(*v)) continue;  // also skips the second view of a tied table, already converted
    const Matrix old = *v;
    const Matrix panels = cpu::repack_panel8(old, m.store->allocate(cpu::panel8_bytes(old)), pool);
    for (Matrix* u : views) {
      if (u->data == old.data && u->dtype == old.dtype && u->rows == old.rows && u->layout == old.layout) *u = panels;
    }
    m.store->release_if_unused(old, m.weights);
  }
}

// Ranks of this job on this machine (Open MPI tells each process), which share its memory.
int ranks_on_this_machine() {
  const char* n = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const int ranks = n != nullptr ? std::atoi(n) : 1;
  return ranks > 0 ? ranks : 1;
}

// A random preset is anonymous memory the kernel cannot page out to a file: refuse one that cannot fit before
// generating it, rather than be killed by the OOM killer minutes later.
void refuse_preset_that_cannot_fit(const ModelOptions& options, const quant::CompressOptions& compress,
                                   const ModelShard& shard) {
  size_t available = 0;
  try {
    available = mem_available();
  } catch (const Error&) {
    return;  // no /proc/meminfo: nothing to check against
  }
  // As compress_model decides: pruning and calibration (--calib) make the whole model before compressing any of it.
  const bool one_at_a_time = options.wants_compression() && !compress.prune.active() && options.calib.empty();
  const PresetLoadMemory need =
      preset_load_memory(describe_preset(options.preset, parse_dtype(options.dtype)), compress, one_at_a_time, shard);
  const int ranks = ranks_on_this_machine();
  const std::string what = "the " + options.preset + " preset (" + options.dtype +
                           (options.quant.empty() ? "" : ", quantized to " + options.quant) + ")";
  refuse_if_over(what, need, available / static_cast<size_t>(ranks), ranks, options.wants_compression());
}

}  // namespace

LoadedModel load(const ModelOptions& options, bool need_tokenizer, const ShardRequest* shard,
                 const ParallelGroups* groups) {
  options.validate();
  // Rules files are read before the model too: a typo should not cost a long load.
  quant::CompressOptions compress;
  if (options.wants_compression()) compress = options.compress_options();
  LoadedModel out;
  const auto t0 = std::chrono::steady_clock::now();
  const bool sharded = shard != nullptr && (shard->tp_size > 1 || shard->pp_size > 1);
  // Column splits fall on multiples of every quantization group and every N:M group, so each rank's groups are
  // the groups one process would use.
  const int column_align = sharded ? std::lcm(quant::largest_group(compress), shard_prune_group(compress)) : 1;
  std::optional<ModelShard> plan;
  if (options.dummy_weights) {
    if (sharded) {
      ShardRequest request = *shard;
      request.column_align = column_align;
      plan = plan_shard(dummy_preset_config(options.preset), request);  // refuse a bad split before generating
    }
    refuse_preset_that_cannot_fit(options, compress,
                                  plan ? *plan : whole_model_shard(dummy_preset_config(options.preset)));
    // Compression makes the random tensors one at a time, so the uncompressed preset never exists whole.
    out.data = make_dummy_model(options.preset, parse_dtype(options.dtype), options.dummy_seed, plan ? &*plan : nullptr,
                                options.wants_compression() ? DummyFill::kOnDemand : DummyFill::kAtLoad);
  } else {
    out.data = load_model(options.model);  // maps the files; no weight byte is read yet
  }
  if (sharded) {
    ShardRequest request = *shard;
    request.column_align = column_align;
    if (!plan) {
      plan = plan_shard(out.data.config, request);
      shard_weights(out.data, *plan);  // dummy weights were generated as the shard already
    }
    TESSERA_CHECK(groups != nullptr);
    if (plan->pp_size > 1) {
      TESSERA_CHECK(groups->pp_control != nullptr && groups->pp_control->size() == plan->pp_size);
      compress.pp = groups->pp_control;
    }
    if (plan->tp_size > 1) {
      Communicator* tp_group = groups->tp;
      TESSERA_CHECK(tp_group != nullptr && tp_group->size() == plan->tp_size);
      compress.share_row_absmax = [tp_group](std::vector<float>& amax) {
        all_reduce_max(*tp_group, amax.data(), amax.size());
      };
      compress.tp = tp_group;
    }
  }
  std::string tok_path = options.tokenizer;
  if (tok_path.empty() && !options.dummy_weights) tok_path = find_tokenizer_for(options.model);
  if (!tok_path.empty()) {
    out.tokenizer = load_tokenizer(tok_path);
    out.tokenizer_path = tok_path;
    if (out.tokenizer->vocab_size() != out.data.config.vocab_size)
      throw Error("tokenizer " + tok_path + " has " + std::to_string(out.tokenizer->vocab_size()) +
                  " tokens but the model has " + std::to_string(out.data.config.vocab_size));
  } else if (!options.calib.empty()) {
    throw Error("--calib needs a tokenizer to read the calibration text: pass --tokenizer PATH");
  } else if (need_tokenizer) {
    throw Error("no tokenizer found for " + out.data.source + ": pass --tokenizer PATH");
  }

  if (options.wants_compression()) {
    if (!options.calib.empty()) {
      const std::string text = read_text_file(options.calib, "calibration text");
      std::vector<int> tokens = out.tokenizer->encode(text, /*add_bos=*/true);
      if (tokens.size() > static_cast<size_t>(options.calib_tokens))
        tokens.resize(static_cast<size_t>(options.calib_tokens));
      if (tokens.size() < 2) throw Error(options.calib + ": the calibration text is empty");
      compress.activation_aware = true;
      compress.calibration_tokens = std::move(tokens);
    }
    const auto matrices = out.data.weights.matrices();
    if (std::any_of(matrices.begin(), matrices.end(), [](const Matrix* m) { return is_quantized(m->dtype); }))
      std::fprintf(stderr,
                   "[tessera] note: %s is already quantized; weights given another scheme are re-quantized from "
                   "their dequantized values\n",
                   out.data.source.c_str());
    ProgressBar bar(compress.activation_aware ? "calibrate + quantize" : "quantize");
    compress.progress = bar.callback();
    quant::CompressReport report = quant::compress_model(out.data, compress);
    bar.finish();
    out.quantize_seconds = report.seconds - report.make_seconds;
    char made[64] = "";
    if (report.make_seconds > 0.0)
      std::snprintf(made, sizeof made, " (and %.2f s generating them)", report.make_seconds);
    std::fprintf(
        stderr, "[tessera] weights of %s: %s -> %s (%s)%s in %.2f s%s\n", out.data.source.c_str(),
        human_bytes(report.bytes_before).c_str(), human_bytes(report.bytes_after).c_str(),
        scheme_summary(report).c_str(),
        std::any_of(report.tensors.begin(), report.tensors.end(), [](const auto& t) { return t.awq_alpha >= 0.0; })
            ? (", activation-aware on " + std::to_string(compress.calibration_tokens.size()) + " tokens").c_str()
            : "",
        out.quantize_seconds, made);
    if (report.prune_seconds > 0.0) {
      size_t pruned = 0;
      for (const auto& t : report.tensors) pruned += t.pruning ? 1 : 0;
      const std::string calib = report.prune_calibration_passes > 0
                                    ? ", " + std::to_string(report.prune_calibration_passes) +
                                          " calibration passes over " +
                                          std::to_string(compress.calibration_tokens.size()) + " tokens"
                                    : "";
      std::fprintf(stderr, "[tessera] pruned %zu weights (%s) in %.2f s%s\n", pruned,
                   options.prune.empty() ? "rules" : options.prune.c_str(), report.prune_seconds, calib.c_str());
    }
    if (!options.quant_report.empty()) {
      std::string path = options.quant_report;
      if (sharded) {  // one file per rank: they would overwrite one another
        const std::string tag = ".tp" + std::to_string(shard->tp_rank) + "-pp" + std::to_string(shard->pp_stage);
        const size_t dot = path.find_last_of('.'), slash = path.find_last_of('/');
        const bool ext = dot != std::string::npos && (slash == std::string::npos || dot > slash);
        path = ext ? path.substr(0, dot) + tag + path.substr(dot) : path + tag;
      }
      quant::write_report_json(report, path);
    }
    out.compression = std::move(report);
  }
  TESSERA_CHECK_MSG(out.data.pending.empty(), "load-time compression left weights unmade");

  if (options.act_quant == "int8") {
    const auto matrices = out.data.weights.matrices();
    if (std::none_of(matrices.begin(), matrices.end(), [](const Matrix* m) { return m->dtype == DType::Q8; }))
      throw Error(
          "--act-quant int8 needs int8 weights: add --quant int8 (or a rule such as --quant-rule 'layers.*=int8')");
    out.act_quant = ActQuant::kInt8;
  }
  out.bf16_activations = options.act_dtype == "bf16";
  if (options.cpu_layout) use_cpu_panel_layout(out.data, options.threads);
  out.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

void configure_activations(CpuBackend& backend, const LoadedModel& loaded) {
  backend.set_activation_quant(loaded.act_quant);
  backend.set_bf16_activations(loaded.bf16_activations);
}

}  // namespace tessera::cli
