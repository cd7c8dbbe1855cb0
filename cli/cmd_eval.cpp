// tessera eval: teacher-forced quality of a model on a text file: sliding-window perplexity, and with a reference
// model (typically the same checkpoint loaded without compression) the KL divergence and top-1 agreement of the
// next-token distributions. The table goes to stdout (or one JSON object with --json); progress to stderr.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/options.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "engine/model/llama_model.h"
#include "engine/runtime/evaluator.h"
#include "quant/quant_spec.h"

namespace tessera::cli {

namespace {

using json = nlohmann::json;

struct EvalCliOptions {
  ModelOptions model;
  std::string text;
  int ctx = 256;
  int stride = 0;
  int64_t max_tokens = 0;
  std::string reference;
  std::string reference_tokenizer;
  bool json_output = false;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open text file " + path);
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) throw Error("cannot read text file " + path);
  return s.str();
}

// What the weights are stored as, e.g. "int4:g128 x35, int8 x1" (linear layers and lm_head; the embedding table
// counts too unless it is the tied lm_head).
std::string describe_weights(const ModelData& m) {
  std::map<std::string, int> counts;
  auto add = [&](const Matrix& w) {
    quant::QuantSpec stored;
    stored.dtype = w.dtype;
    stored.group = w.group;
    ++counts[stored.to_string()];
  };
  if (!m.config.tied_embeddings) add(m.weights.tok_embeddings);
  add(m.weights.lm_head);
  for (const auto& l : m.weights.layers)
    for (const Matrix* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) add(*w);
  std::vector<std::pair<int, std::string>> order;
  for (const auto& [name, n] : counts) order.emplace_back(-n, name);
  std::sort(order.begin(), order.end());
  std::string out;
  for (const auto& [n, name] : order) out += (out.empty() ? "" : ", ") + name + " x" + std::to_string(-n);
  return out;
}

void print_table(const json& r) {
  const bool ref = r.contains("kl_divergence");
  std::printf("model        %s  [%s, %.3f MB of weights]\n", r["model"].get<std::string>().c_str(),
              r["weights"].get<std::string>().c_str(), r["weight_bytes"].get<double>() / 1e6);
  std::string quant = r["scheme"].get<std::string>();
  if (r.contains("quant_rules"))
    for (const auto& rule : r["quant_rules"]) quant += ", rule " + rule.get<std::string>();
  if (r.contains("quant_rules_file")) quant += ", rules from " + r["quant_rules_file"].get<std::string>();
  if (r.contains("calib")) quant += ", activation-aware on " + r["calib"].get<std::string>();
  if (r["act_quant"] != "none") quant += ", activations " + r["act_quant"].get<std::string>();
  std::printf("quantization %s\n", quant == "keep" ? "none (weights as loaded)" : quant.c_str());
  if (ref)
    std::printf("reference    %s  [%s, %.3f MB of weights]\n", r["reference"].get<std::string>().c_str(),
                r["reference_weights"].get<std::string>().c_str(), r["reference_weight_bytes"].get<double>() / 1e6);
  const int64_t used = r["text_tokens"].get<int64_t>(), total = r["text_tokens_total"].get<int64_t>();
  const std::string count =
      used == total ? std::to_string(used) : "the first " + std::to_string(used) + " of " + std::to_string(total);
  std::printf("text         %s: %s tokens (BOS first), windows of %d advanced by %d (%lld windows)\n\n",
              r["text"].get<std::string>().c_str(), count.c_str(), r["ctx"].get<int>(), r["stride"].get<int>(),
              static_cast<long long>(r["windows"].get<int64_t>()));
  std::printf("  %-28s %14s%s\n", "", "model", ref ? "      reference" : "");
  std::printf("  %-28s %14lld\n", "tokens scored", static_cast<long long>(r["tokens"].get<int64_t>()));
  if (ref) {
    std::printf("  %-28s %14.6f %14.6f\n", "mean NLL (nats/token)", r["nll"].get<double>(),
                r["reference_nll"].get<double>());
    std::printf("  %-28s %14.5f %14.5f\n", "perplexity", r["perplexity"].get<double>(),
                r["reference_perplexity"].get<double>());
    std::printf("  %-28s %14.3e\n", "KL(reference || model)", r["kl_divergence"].get<double>());
    std::printf("  %-28s %14.3e\n", "max KL at one position", r["max_kl"].get<double>());
    std::printf("  %-28s %13.3f%%\n", "top-1 agreement", 100.0 * r["top1_agreement"].get<double>());
  } else {
    std::printf("  %-28s %14.6f\n", "mean NLL (nats/token)", r["nll"].get<double>());
    std::printf("  %-28s %14.5f\n", "perplexity", r["perplexity"].get<double>());
  }
  std::printf("  %-28s %14.2f\n", "seconds", r["seconds"].get<double>());
}

int run_eval(const EvalCliOptions& o) {
  if (o.text.empty()) throw Error("no text: pass --text FILE");
  const std::string text = read_text(o.text);
  LoadedModel loaded = load(o.model, /*need_tokenizer=*/true);
  CpuBackend backend(o.model.threads);
  configure_activations(backend, loaded);
  LlamaModel model(loaded.data, backend, std::min(o.ctx, 256));

  std::vector<int> tokens = loaded.tokenizer->encode(text, /*add_bos=*/true);
  const int64_t text_tokens = static_cast<int64_t>(tokens.size());
  if (o.max_tokens > 0 && text_tokens > o.max_tokens) tokens.resize(static_cast<size_t>(o.max_tokens));
  if (tokens.size() < 2)
    throw Error("text " + o.text + " gives " + std::to_string(tokens.size()) +
                " token(s) with BOS: at least one prediction is needed");

  LoadedModel ref_loaded;
  std::unique_ptr<CpuBackend> ref_backend;
  std::unique_ptr<LlamaModel> ref_model;
  if (!o.reference.empty()) {
    // The reference is loaded as stored: a fresh ModelOptions carries no compression settings.
    ModelOptions ref_options;
    ref_options.model = o.reference;
    ref_options.tokenizer = o.reference_tokenizer;
    ref_options.threads = o.model.threads;
    ref_loaded = load(ref_options, /*need_tokenizer=*/false);
    if (ref_loaded.data.config.vocab_size != loaded.data.config.vocab_size)
      throw Error("reference " + o.reference + " has a vocabulary of " +
                  std::to_string(ref_loaded.data.config.vocab_size) + " tokens but " + loaded.data.source + " has " +
                  std::to_string(loaded.data.config.vocab_size) +
                  ": KL divergence and top-1 agreement need the same vocabulary");
    if (ref_loaded.tokenizer) {
      std::vector<int> ref_tokens = ref_loaded.tokenizer->encode(text, /*add_bos=*/true);
      if (o.max_tokens > 0 && static_cast<int64_t>(ref_tokens.size()) > o.max_tokens)
        ref_tokens.resize(static_cast<size_t>(o.max_tokens));
      if (ref_tokens != tokens)
        std::fprintf(stderr,
                     "[eval] warning: the reference's tokenizer splits the text differently; the model's "
                     "tokenization is used for both\n");
    }
    ref_backend = std::make_unique<CpuBackend>(o.model.threads);
    ref_model = std::make_unique<LlamaModel>(ref_loaded.data, *ref_backend, std::min(o.ctx, 256));
  }

  EvalOptions eo;
  eo.ctx = o.ctx;
  eo.stride = o.stride;
  const bool show_progress = !o.json_output && isatty(STDERR_FILENO);
  if (show_progress)
    eo.progress = [](int64_t done, int64_t total) {
      std::fprintf(stderr, "\r[eval] %lld / %lld tokens", static_cast<long long>(done), static_cast<long long>(total));
      if (done == total) std::fprintf(stderr, "\n");
      std::fflush(stderr);
    };
  Evaluator evaluator(model, ref_model.get(), eo);
  const EvalResult r = evaluator.run(tokens);

  json out;
  out["model"] = loaded.data.source;
  out["scheme"] = o.model.quant.empty() ? "keep" : o.model.quant;
  if (!o.model.quant_rules.empty()) out["quant_rules"] = o.model.quant_rules;
  if (!o.model.quant_rules_file.empty()) out["quant_rules_file"] = o.model.quant_rules_file;
  if (!o.model.calib.empty()) out["calib"] = o.model.calib;
  out["act_quant"] = o.model.act_quant;
  out["act_dtype"] = o.model.act_dtype;
  out["weights"] = describe_weights(loaded.data);
  out["weight_bytes"] = static_cast<double>(loaded.data.weight_bytes());
  if (loaded.compression) {
    out["weight_bytes_before_quant"] = static_cast<double>(loaded.compression->bytes_before);
    out["quantize_seconds"] = loaded.quantize_seconds;
  }
  out["text"] = o.text;
  out["text_tokens"] = static_cast<int64_t>(tokens.size());
  out["text_tokens_total"] = text_tokens;
  out["ctx"] = evaluator.options().ctx;
  out["stride"] = evaluator.options().stride;
  out["windows"] = r.windows;
  out["tokens"] = r.tokens;
  out["nll"] = r.mean_nll;
  out["nll_sum"] = r.nll_sum;
  out["perplexity"] = r.perplexity;
  if (r.has_reference) {
    out["reference"] = ref_loaded.data.source;
    out["reference_weights"] = describe_weights(ref_loaded.data);
    out["reference_weight_bytes"] = static_cast<double>(ref_loaded.data.weight_bytes());
    out["reference_nll"] = r.reference_mean_nll;
    out["reference_perplexity"] = r.reference_perplexity;
    out["kl_divergence"] = r.mean_kl;
    out["max_kl"] = r.max_kl;
    out["top1_agreement"] = r.top1_agreement;
  }
  out["seconds"] = r.seconds;
  out["load_seconds"] = loaded.load_seconds;
  out["backend"] = backend.name();
  if (o.json_output) {
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    print_table(out);
  }
  return 0;
}

}  // namespace

Command add_eval_command(CLI::App& app) {
  auto o = std::make_shared<EvalCliOptions>();
  CLI::App* sub = app.add_subcommand(
      "eval",
      "Measure a model's quality on a text: sliding-window perplexity, and against --reference the KL divergence "
      "and top-1 agreement of the next-token distributions");
  sub->footer(
      "The text is tokenized with BOS first and cut into windows of --ctx tokens advanced by --stride; each window "
      "runs from position 0 with an empty cache (only the first starts with BOS). The first window scores all its "
      "predictions, later ones only the tokens not scored before, so every token after BOS is scored once.\n"
      "The reference is loaded as stored, without compression; it must have the same vocabulary. KL is "
      "KL(P_reference || P_model) in nats per token, averaged over the scored positions.\n"
      "Example: tessera eval --model stories260K.bin --quant int4:g128 --text eval.txt --reference stories260K.bin");
  o->model.add_to(*sub);
  sub->add_option("--text", o->text, "Text file to evaluate on (UTF-8)")->required();
  sub->add_option("--ctx", o->ctx, "Window length in tokens (at most the model's context length)")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  sub->add_option("--stride", o->stride, "Window advance in tokens, 1..ctx-1 (default: ctx/2)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--max-tokens", o->max_tokens, "Use only the first N tokens of the text, BOS included (0 = all)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--reference", o->reference,
                  "Reference (teacher) model for KL divergence and top-1 agreement, loaded without compression: "
                  "the same checkpoint, or another model with the same vocabulary");
  sub->add_option("--reference-tokenizer", o->reference_tokenizer,
                  "Tokenizer of the reference model (default: found beside it); only used to warn when it splits "
                  "the text differently");
  sub->add_flag("--json", o->json_output,
                "Print one JSON object (perplexity, tokens, nll, kl_divergence, top1_agreement, ...) instead of a "
                "table");
  return [o] { return run_eval(*o); };
}

}  // namespace tessera::cli
