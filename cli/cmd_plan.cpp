// tessera plan: per-rank memory of a model under a compression scheme and a tp x pp layout, computed from the
// model's headers before any weight is loaded, and a refusal, with the numbers, when it will not fit.
//
//   tessera plan --preset llama2-7b --quant int4:g128 --tp 2 --memory 8GiB
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli/byte_size.h"
#include "cli/commands.h"
#include "cli/memory_fit.h"
#include "cli/options.h"
#include "engine/core/check.h"
#include "engine/model/memory_plan.h"
#include "loaders/dummy_model.h"
#include "loaders/model_inspect.h"
#include "quant/compress.h"

namespace tessera::cli {

namespace {

using json = nlohmann::json;

struct PlanOptions {
  ModelOptions model;  // --model or --preset/--dtype, and the --quant options
  int tp = 1;
  int pp = 1;
  std::vector<int> pp_layers;
  std::string memory;   // empty: this machine's MemAvailable
  int max_seq_len = 0;  // 0: the model's context
  std::optional<int> max_num_seqs;
  int max_step_tokens = 256;
  bool json_output = false;
};

// The schemes of the comparison table: one per row of bytes a user would choose between.
constexpr const char* kCompareSchemes[] = {"bf16", "int8", "int4:g128", "int4:g32", "nf4:g128"};

// Everything computed for one run, shared by the text and JSON outputs.
struct Plan {
  ModelDescription model;
  std::vector<RankMemory> ranks;
  size_t memory = 0;
  std::string memory_source;
  int max_seq_len = 0;
  WorkspaceOptions workspace;
  // Per comparison scheme: weight bytes per rank, or the reason the layout cannot hold it.
  struct Alternative {
    std::string scheme;
    std::vector<size_t> weight_bytes;
    std::string error;
  };
  std::vector<Alternative> alternatives;
};

std::string scheme_name(DType dtype, int group) {
  quant::QuantSpec spec;
  spec.dtype = dtype;
  spec.group = group;
  return spec.to_string();
}

std::vector<RankMemory> plan_for(const ModelDescription& model, const quant::CompressOptions& compress,
                                 const PlanOptions& o, const WorkspaceOptions& workspace) {
  const std::vector<StoredWeight> weights = stored_weights(model, compress);
  ShardRequest request;
  request.tp_size = o.tp;
  request.pp_size = o.pp;
  request.pp_layers = o.pp_layers;
  request.column_align = quant::largest_group(compress);  // as load() asks plan_shard
  return plan_memory(model.config, weights, request, workspace);
}

Plan make_plan(const PlanOptions& o) {
  if (o.model.model.empty() == o.model.preset.empty())
    throw Error("give the model to plan for: --model PATH, or --preset NAME (one of: " + [] {
      std::string s;
      for (const std::string& n : dummy_preset_names()) s += (s.empty() ? "" : ", ") + n;
      return s;
    }() + ")");
  const quant::CompressOptions compress = o.model.compress_options();  // bad schemes fail before the model is read
  Plan p;
  p.model = o.model.model.empty() ? describe_preset(o.model.preset, parse_dtype(o.model.dtype))
                                  : describe_model(o.model.model);
  const ModelConfig& c = p.model.config;
  p.max_seq_len = o.max_seq_len > 0 ? o.max_seq_len : c.max_seq_len;
  if (p.max_seq_len > c.max_seq_len)
    throw Error("--max-seq-len " + std::to_string(p.max_seq_len) + " is longer than the model's context of " +
                std::to_string(c.max_seq_len) + " tokens");
  p.workspace.max_step_tokens = o.max_step_tokens;
  p.workspace.max_num_seqs = o.max_num_seqs.value_or(WorkspaceOptions{}.max_num_seqs);
  p.memory_source = !o.memory.empty()  ? "--memory"
                    : o.tp * o.pp == 1 ? "this machine's MemAvailable"
                                       : "this machine's MemAvailable; ranks on one machine share it";
  p.memory = o.memory.empty() ? mem_available() : parse_byte_size(o.memory, "--memory");
  p.ranks = plan_for(p.model, compress, o, p.workspace);
  for (const char* scheme : kCompareSchemes) {
    Plan::Alternative alt{scheme, {}, {}};
    quant::CompressOptions one;
    one.default_spec = quant::QuantSpec::parse(scheme);
    try {
      for (const RankMemory& r : plan_for(p.model, one, o, p.workspace)) alt.weight_bytes.push_back(r.weight_bytes());
    } catch (const Error& e) {
      alt.error = e.what();  // e.g. a group that does not divide this tp split
    }
    p.alternatives.push_back(std::move(alt));
  }
  return p;
}

int64_t sequences(const RankMemory& r, const Plan& p) {
  return r.kv_tokens(p.memory) / p.max_seq_len;
}

// Ranks whose numbers are all equal are printed once.
bool same_numbers(const RankMemory& a, const RankMemory& b) {
  if (a.vector_bytes != b.vector_bytes || a.kv_per_token != b.kv_per_token ||
      a.workspace.total() != b.workspace.total() || a.matrices.size() != b.matrices.size() ||
      a.shard.n_layers() != b.shard.n_layers())
    return false;
  for (size_t i = 0; i < a.matrices.size(); ++i)
    if (a.matrices[i].dtype != b.matrices[i].dtype || a.matrices[i].group != b.matrices[i].group ||
        a.matrices[i].bytes != b.matrices[i].bytes)
      return false;
  return true;
}

std::string rank_list(const std::vector<int>& ranks) {
  const bool contiguous = ranks.back() - ranks.front() + 1 == static_cast<int>(ranks.size());
  if (ranks.size() == 1) return "rank " + std::to_string(ranks[0]);
  if (contiguous) return "ranks " + std::to_string(ranks.front()) + "-" + std::to_string(ranks.back());
  std::string s = "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? "," : "") + std::to_string(ranks[i]);
  return s;
}

std::vector<std::vector<int>> rank_groups(const std::vector<RankMemory>& ranks) {
  std::vector<std::vector<int>> groups;
  for (size_t i = 0; i < ranks.size(); ++i) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const std::vector<int>& g) {
      return same_numbers(ranks[static_cast<size_t>(g[0])], ranks[i]);
    });
    if (it == groups.end()) {
      groups.push_back({static_cast<int>(i)});
    } else {
      it->push_back(static_cast<int>(i));
    }
  }
  return groups;
}

std::string describe_shard(const ModelConfig& c, const std::vector<RankMemory>& ranks, const std::vector<int>& group) {
  const ModelShard& s = ranks[static_cast<size_t>(group[0])].shard;
  std::ostringstream out;
  bool one_range = true;
  for (int r : group) one_range = one_range && ranks[static_cast<size_t>(r)].shard.layer_begin == s.layer_begin;
  if (one_range) {
    out << "layers " << s.layer_begin << "-" << s.layer_end - 1;
  } else {
    out << s.n_layers() << " layers each";
  }
  out << ", " << s.heads.size() << "/" << c.n_heads << " heads, " << s.kv_heads.size() << "/" << c.n_kv_heads
      << " kv heads, " << s.hidden.size() << "/" << c.hidden_dim << " FFN channels";
  if (s.first_stage() || s.last_stage())
    out << ", " << s.vocab.size() << "/" << c.vocab_size << " vocab rows"
        << (s.first_stage() && s.last_stage() ? "" : (s.first_stage() ? " (embeddings)" : " (lm_head)"));
  return out.str();
}

std::string weights_breakdown(const RankMemory& r) {
  std::string s;
  for (const SchemeBytes& m : r.matrices)
    s += (s.empty() ? "" : ", ") + scheme_name(m.dtype, m.group) + " " + format_bytes(m.bytes) + " (" +
         std::to_string(m.tensors) + (m.tensors == 1 ? " matrix)" : " matrices)");
  return s + (s.empty() ? "" : ", ") + "norms/biases f32 " + format_bytes(r.vector_bytes);
}

void print_text(const Plan& p, const PlanOptions& o) {
  const ModelConfig& c = p.model.config;
  std::printf("model: %s (%s): dim %d, %d layers, %d heads, %d kv heads, FFN %d, vocab %d, context %d%s\n",
              p.model.source.c_str(), p.model.format.c_str(), c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.hidden_dim,
              c.vocab_size, c.max_seq_len, c.tied_embeddings ? ", tied embeddings" : "");
  std::string compression = o.model.quant.empty() ? "keep (as loaded)" : o.model.quant;
  if (!o.model.quant_rules_file.empty()) compression += ", rules from " + o.model.quant_rules_file;
  for (const std::string& r : o.model.quant_rules) compression += ", " + r;
  std::printf("compression: %s\n", compression.c_str());
  std::printf("layout: tp %d x pp %d = %d rank%s; memory %s per rank (%s)\n", o.tp, o.pp, o.tp * o.pp,
              o.tp * o.pp == 1 ? "" : "s", format_bytes(p.memory).c_str(), p.memory_source.c_str());
  std::printf("sequences of %d tokens; workspace sized for %d tokens per step, %d sequences per step\n\n",
              p.max_seq_len, p.workspace.max_step_tokens, p.workspace.max_num_seqs);

  for (const std::vector<int>& g : rank_groups(p.ranks)) {
    const RankMemory& r = p.ranks[static_cast<size_t>(g[0])];
    const ModelShard& s = r.shard;
    std::printf("%s: %s\n", rank_list(g).c_str(), describe_shard(c, p.ranks, g).c_str());
    std::printf("  weights     %11s  %s\n", format_bytes(r.weight_bytes()).c_str(), weights_breakdown(r).c_str());
    std::printf("  workspace   %11s  activations %s, RoPE tables %s, logits %s (estimate, see below)\n",
                format_bytes(r.workspace.total()).c_str(), format_bytes(r.workspace.activations).c_str(),
                format_bytes(r.workspace.rope).c_str(), format_bytes(r.workspace.logits).c_str());
    std::printf("  KV cache    %11s  per token (fp32 keys + values: %d layers x %lld kv heads x %d)\n",
                format_bytes(r.kv_per_token).c_str(), s.n_layers(), static_cast<long long>(s.kv_heads.size()),
                c.head_dim);
    const size_t left = p.memory > r.fixed_bytes() ? p.memory - r.fixed_bytes() : 0;
    std::printf("  KV capacity %11s  left -> %lld tokens -> %lld sequence%s of %d tokens at once\n",
                format_bytes(left).c_str(), static_cast<long long>(r.kv_tokens(p.memory)),
                static_cast<long long>(sequences(r, p)), sequences(r, p) == 1 ? "" : "s", p.max_seq_len);
    if (o.max_num_seqs) {
      const size_t need = r.kv_per_token * static_cast<size_t>(p.max_seq_len) * static_cast<size_t>(*o.max_num_seqs);
      std::printf("  --max-num-seqs %d at full length needs %s of KV cache: %s\n", *o.max_num_seqs,
                  format_bytes(need).c_str(), need <= left ? "fits" : "longer sequences will wait for room");
    }
  }

  std::printf(
      "\nworkspace estimate: the model's activation buffers, %d step tokens x (3 x dim + 2 x q + 2 x kv + FFN "
      "channels of the rank) fp32; RoPE cos/sin tables for the %d-token context; logits buffers of %d rows x %d fp32 "
      "per step in flight (ranks of the last stage, and rank 0). Per-thread kernel scratch is not "
      "counted.\n",
      p.workspace.max_step_tokens, c.max_seq_len, std::min(p.workspace.max_num_seqs, p.workspace.max_step_tokens),
      c.vocab_size);
  std::printf("\nweights per rank if every matrix used one scheme (norms stay f32):\n  %-12s", "");
  for (const Plan::Alternative& a : p.alternatives)
    std::printf("%12s", a.scheme == "bf16" ? "bf16/f16" : a.scheme.c_str());
  std::printf("\n");
  for (const std::vector<int>& g : rank_groups(p.ranks)) {
    std::printf("  %-12s", rank_list(g).c_str());
    for (const Plan::Alternative& a : p.alternatives)
      std::printf("%12s", a.error.empty() ? format_bytes(a.weight_bytes[static_cast<size_t>(g[0])]).c_str() : "n/a");
    std::printf("\n");
  }
  for (const Plan::Alternative& a : p.alternatives)
    if (!a.error.empty()) std::printf("  %s n/a: %s\n", a.scheme.c_str(), a.error.c_str());
}

json to_json(const Plan& p, const PlanOptions& o) {
  const ModelConfig& c = p.model.config;
  json j;
  j["model"] = {{"source", p.model.source},
                {"format", p.model.format},
                {"dim", c.dim},
                {"hidden_dim", c.hidden_dim},
                {"n_layers", c.n_layers},
                {"n_heads", c.n_heads},
                {"n_kv_heads", c.n_kv_heads},
                {"head_dim", c.head_dim},
                {"vocab_size", c.vocab_size},
                {"context", c.max_seq_len},
                {"tied_embeddings", c.tied_embeddings}};
  j["compression"] = {{"quant", o.model.quant.empty() ? "keep" : o.model.quant},
                      {"quant_rules", o.model.quant_rules},
                      {"quant_rules_file", o.model.quant_rules_file}};
  j["layout"] = {{"tp", o.tp}, {"pp", o.pp}, {"pp_layers", o.pp_layers}};
  j["memory_bytes"] = p.memory;
  j["memory_source"] = p.memory_source;
  j["max_seq_len"] = p.max_seq_len;
  j["max_step_tokens"] = p.workspace.max_step_tokens;
  j["max_num_seqs"] = p.workspace.max_num_seqs;
  j["ranks"] = json::array();
  for (const RankMemory& r : p.ranks) {
    json schemes = json::array();
    for (const SchemeBytes& m : r.matrices)
      schemes.push_back({{"scheme", scheme_name(m.dtype, m.group)}, {"bytes", m.bytes}, {"matrices", m.tensors}});
    const ModelShard& s = r.shard;
    j["ranks"].push_back({{"rank", r.world_rank},
                          {"tp_rank", s.tp_rank},
                          {"pp_stage", s.pp_stage},
                          {"layers", {s.layer_begin, s.layer_end}},
                          {"heads", {s.heads.begin, s.heads.end}},
                          {"kv_heads", {s.kv_heads.begin, s.kv_heads.end}},
                          {"ffn_channels", {s.hidden.begin, s.hidden.end}},
                          {"vocab_rows", {s.vocab.begin, s.vocab.end}},
                          {"weight_bytes", r.weight_bytes()},
                          {"weights_by_scheme", schemes},
                          {"norm_bias_bytes", r.vector_bytes},
                          {"workspace_bytes",
                           {{"activations", r.workspace.activations},
                            {"rope", r.workspace.rope},
                            {"logits", r.workspace.logits},
                            {"total", r.workspace.total()}}},
                          {"kv_bytes_per_token", r.kv_per_token},
                          {"kv_tokens", r.kv_tokens(p.memory)},
                          {"max_sequences", sequences(r, p)}});
  }
  j["weight_bytes_by_scheme"] = json::array();
  for (const Plan::Alternative& a : p.alternatives) {
    json alt = {{"scheme", a.scheme}};
    if (a.error.empty()) {
      alt["rank_weight_bytes"] = a.weight_bytes;
    } else {
      alt["error"] = a.error;
    }
    j["weight_bytes_by_scheme"].push_back(alt);
  }
  return j;
}

// The reason the plan does not fit (empty when it fits): the rank that misses by most, with the numbers.
std::string refusal(const Plan& p) {
  const RankMemory* worst = nullptr;
  int failing = 0;
  size_t worst_need = 0;
  for (const RankMemory& r : p.ranks) {
    const size_t need = r.fixed_bytes() + r.kv_per_token * static_cast<size_t>(p.max_seq_len);
    if (need <= p.memory) continue;
    ++failing;
    if (worst == nullptr || need > worst_need) {
      worst = &r;
      worst_need = need;
    }
  }
  if (worst == nullptr) return "";
  std::string who = "rank " + std::to_string(worst->world_rank) + " (" + worst->shard.describe() + ")";
  if (failing > 1) who += " and " + std::to_string(failing - 1) + " other rank" + (failing > 2 ? "s" : "");
  const size_t one_seq = worst->kv_per_token * static_cast<size_t>(p.max_seq_len);
  std::string msg = "does not fit: " + who + (failing > 1 ? " need up to " : " needs ") + format_bytes(worst_need) +
                    (failing > 1 ? " (rank " + std::to_string(worst->world_rank) + ": weights " : " (weights ") +
                    format_bytes(worst->weight_bytes()) + " + workspace " + format_bytes(worst->workspace.total()) +
                    " + KV cache for one sequence of " + std::to_string(p.max_seq_len) + " tokens " +
                    format_bytes(one_seq) + (failing > 1 ? "), each has " : "), has ") + format_bytes(p.memory) + " (" +
                    p.memory_source + ")";
  // Schemes whose weights would leave room on every rank (workspace and KV do not depend on the scheme).
  std::string fitting;
  for (const Plan::Alternative& a : p.alternatives) {
    if (!a.error.empty()) continue;
    bool fits = true;
    for (size_t i = 0; i < p.ranks.size(); ++i)
      fits = fits && a.weight_bytes[i] + p.ranks[i].workspace.total() +
                             p.ranks[i].kv_per_token * static_cast<size_t>(p.max_seq_len) <=
                         p.memory;
    if (fits) fitting += (fitting.empty() ? "" : ", ") + a.scheme;
  }
  msg += "; use more ranks (--tp/--pp), a smaller scheme";
  msg += fitting.empty() ? "" : " (" + fitting + " would fit)";
  msg += ", a shorter --max-seq-len or more --memory";
  return msg;
}

int run_plan(const PlanOptions& o) {
  const Plan p = make_plan(o);
  const std::string why = refusal(p);
  if (o.json_output) {
    json j = to_json(p, o);
    j["fits"] = why.empty();
    if (!why.empty()) j["refusal"] = why;
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    print_text(p, o);
  }
  std::fflush(stdout);  // the table before the error line on a terminal
  if (!why.empty()) throw Error(why);
  if (o.json_output) return 0;
  int64_t fewest = sequences(p.ranks.front(), p);
  for (const RankMemory& r : p.ranks) fewest = std::min(fewest, sequences(r, p));
  std::printf("\nfits: every rank holds its weights and workspace and KV cache for %lld sequence%s of %d tokens\n",
              static_cast<long long>(fewest), fewest == 1 ? "" : "s", p.max_seq_len);
  return 0;
}

}  // namespace

Command add_plan_command(CLI::App& app) {
  auto o = std::make_shared<PlanOptions>();
  CLI::App* sub = app.add_subcommand(
      "plan",
      "Per-rank memory of a model (weights per compression scheme, workspace, KV cache capacity) for a "
      "compression scheme and a tp x pp layout, from the model's headers before loading; exits 1 when it does not "
      "fit --memory");
  sub->add_option("-m,--model", o->model.model,
                  "Model: a llama2.c .bin checkpoint, a Hugging Face directory, or a directory written by "
                  "`tessera quantize` (only headers are read)");
  sub->add_option("--preset", o->model.preset, "Plan for a standard shape instead of a file (see --dtype)")
      ->option_text("NAME");
  sub->add_option("--dtype", o->model.dtype, "Weight type of --preset before compression")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  o->model.add_quant_options(*sub);
  // Calibration, reports, activations and pruning do not change what the plan counts (pruned byte counts are not
  // modelled): only --quant, --quant-rule and --quant-rules stay.
  for (const char* name :
       {"--calib", "--calib-tokens", "--quant-report", "--act-quant", "--prune", "--prune-rule", "--prune-multiple"})
    sub->remove_option(sub->get_option(name));
  sub->add_option("--tp", o->tp, "Tensor-parallel ranks per pipeline stage")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--pp", o->pp, "Pipeline stages")->check(CLI::PositiveNumber)->capture_default_str();
  sub->add_option("--pp-layers", o->pp_layers, "Layers per pipeline stage, e.g. 12,10 (default: even split)")
      ->delimiter(',');
  sub->add_option("--memory", o->memory, "Memory per rank, e.g. 24GiB or 80GB (default: this machine's MemAvailable)")
      ->option_text("SIZE");
  sub->add_option("--max-seq-len", o->max_seq_len, "Tokens per sequence (default: the model's context)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--max-num-seqs", o->max_num_seqs,
                  "Sequences per step, as tessera serve (sizes the logits buffers; default 64); also says whether "
                  "this many full-length sequences fit at once")
      ->check(CLI::PositiveNumber);
  sub->add_option("--max-step-tokens", o->max_step_tokens,
                  "Tokens per forward step, as tessera serve (sizes the activation buffers)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_flag("--json", o->json_output, "Print one JSON object instead of the table");
  return [o] { return run_plan(*o); };
}

}  // namespace tessera::cli
