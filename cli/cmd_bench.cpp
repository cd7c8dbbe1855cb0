// tessera bench: load time, prefill and decode throughput, peak RSS, and efficiency against the machine's
// measured memory bandwidth (decode) and FMA peak (prefill). Benchmarks live here, never in timed unit tests.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "cli/bench_parallel.h"
#include "cli/commands.h"
#include "cli/machine_probe.h"
#include "cli/options.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "engine/core/cpu_features.h"
#include "engine/model/llama_model.h"
#include "loaders/dummy_model.h"
#include "quant/quant_spec.h"

namespace tessera::cli {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct BenchOptions {
  ModelOptions model;
  std::vector<std::string> presets;
  std::vector<int> threads{1, 2};
  std::vector<int> prompt_lens{128, 512};
  int gen_tokens = 32;
  int repeats = 1;
  bool json_output = false;
  bool skip_probe = false;
  ParallelOptions parallel;
  int sequences = 0;  // > 0, --tp/--pp or mpirun: the leader/worker runtime benchmark (bench_parallel.h)
};

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Multiply-adds per token in the linear layers and the lm_head: 2 flops each.
double linear_flops_per_token(const ModelData& m) {
  double macs = static_cast<double>(m.weights.lm_head.rows) * m.weights.lm_head.cols;
  for (const auto& l : m.weights.layers)
    for (const Matrix* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
      macs += static_cast<double>(w->rows) * w->cols;
  return 2.0 * macs;
}

// Attention flops for a causal prompt of L tokens: QK^T and PV, each L^2/2 * q_dim MACs per layer.
double attention_flops(const ModelConfig& c, int L) {
  return 2.0 * 2.0 * 0.5 * L * L * c.q_dim() * c.n_layers;
}

std::vector<int> random_tokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> dist(3, vocab - 1);
  std::vector<int> t(static_cast<size_t>(n));
  for (int& x : t) x = dist(rng);
  return t;
}

json bench_one(const LoadedModel& loaded, int threads, const BenchOptions& o, double bandwidth_gbs, double fma_gflops) {
  const ModelData& m = loaded.data;
  const ModelConfig& c = m.config;
  CpuBackend backend(threads);
  backend.set_activation_quant(loaded.act_quant);
  const int max_prompt = *std::max_element(o.prompt_lens.begin(), o.prompt_lens.end());
  LlamaModel model(m, backend, std::min(max_prompt, 512));
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  json r;
  r["threads"] = threads;
  r["backend"] = backend.name();

  json prefill = json::array();
  for (int L : o.prompt_lens) {
    if (L > c.max_seq_len) continue;
    const std::vector<int> prompt = random_tokens(L, c.vocab_size, 42);
    KvCache cache(c, L);
    double best = 1e30;
    for (int rep = 0; rep < o.repeats; ++rep) {
      const auto t0 = Clock::now();
      model.forward(prompt, 0, cache, LogitsMode::kLast, logits.data());
      best = std::min(best, seconds_since(t0));
    }
    const double flops = linear_flops_per_token(m) * L + attention_flops(c, L);
    json p{{"prompt_tokens", L}, {"seconds", best}, {"tokens_per_s", L / best}, {"gflops", flops / best / 1e9}};
    if (fma_gflops > 0) p["fraction_of_fma_peak_per_thread"] = flops / best / 1e9 / (fma_gflops * threads);
    prefill.push_back(p);
  }
  r["prefill"] = prefill;

  // Decode at batch 1 after a short prompt: every step reads all weights once.
  const int warm = 16;
  KvCache cache(c, warm + o.gen_tokens + 1);
  const std::vector<int> prompt = random_tokens(warm, c.vocab_size, 7);
  model.forward(prompt, 0, cache, LogitsMode::kLast, logits.data());
  int token = backend.argmax(logits.data(), c.vocab_size);
  const auto t0 = Clock::now();
  for (int i = 0; i < o.gen_tokens; ++i) {
    model.forward(std::span<const int>(&token, 1), warm + i, cache, LogitsMode::kLast, logits.data());
    token = backend.argmax(logits.data(), c.vocab_size);
  }
  const double s = seconds_since(t0);
  const double tps = o.gen_tokens / s;
  const double bytes_per_token = static_cast<double>(m.weight_bytes());
  json d{{"tokens", o.gen_tokens},
         {"tokens_per_s", tps},
         {"ms_per_token", 1e3 / tps},
         {"weight_bytes_per_token", bytes_per_token},
         {"effective_gbs", tps * bytes_per_token / 1e9}};
  if (bandwidth_gbs > 0) d["fraction_of_bandwidth_limit"] = tps * bytes_per_token / 1e9 / bandwidth_gbs;
  r["decode"] = d;
  r["peak_rss_bytes"] = peak_rss_bytes();
  return r;
}

void print_human(const json& report) {
  std::printf("machine: %s | bandwidth (GB/s) by threads: %s | FMA peak per core: %.1f GFLOP/s\n",
              report["cpu_features"].get<std::string>().c_str(), report["read_bandwidth_gbs"].dump().c_str(),
              report["fma_peak_gflops_per_core"].get<double>());
  for (const auto& model : report["models"]) {
    std::printf("\n%s  (%s weights, %.2f GB per decoded token, load %.2f s)\n",
                model["model"].get<std::string>().c_str(), model["dtype"].get<std::string>().c_str(),
                model["weight_bytes"].get<double>() / 1e9, model["load_seconds"].get<double>());
    std::printf("  %-7s %-14s %14s %12s %12s %12s %10s\n", "threads", "test", "tokens/s", "ms/token", "GFLOP/s",
                "efficiency", "peak RSS");
    for (const auto& run : model["runs"]) {
      const int t = run["threads"];
      const double rss_gb = run["peak_rss_bytes"].get<double>() / 1e9;
      for (const auto& p : run["prefill"]) {
        const std::string name = "prefill " + std::to_string(p["prompt_tokens"].get<int>());
        const double eff = p.value("fraction_of_fma_peak_per_thread", 0.0);
        std::printf("  %-7d %-14s %14.1f %12.2f %12.1f %11.0f%% %8.2f GB\n", t, name.c_str(),
                    p["tokens_per_s"].get<double>(), 1e3 / p["tokens_per_s"].get<double>(), p["gflops"].get<double>(),
                    eff * 100, rss_gb);
      }
      const auto& d = run["decode"];
      std::printf("  %-7d %-14s %14.2f %12.1f %12s %11.0f%% %8.2f GB\n", t, "decode", d["tokens_per_s"].get<double>(),
                  d["ms_per_token"].get<double>(), "-", d.value("fraction_of_bandwidth_limit", 0.0) * 100, rss_gb);
    }
  }
  std::printf(
      "\nefficiency: prefill = achieved GFLOP/s / (FMA peak per core x threads); decode = tokens/s x weight "
      "bytes per token / read bandwidth at the same thread count\n");
}

int run_bench(BenchOptions o) {
  if (o.sequences > 0 || o.parallel.tp * o.parallel.pp > 1 || std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr) {
    if (o.presets.size() + (o.model.model.empty() ? 0 : 1) > 1)
      throw Error("the parallel benchmark (--tp/--pp/--sequences) measures one model: give one --preset or --model");
    ParallelBenchOptions p;
    p.model = o.model;
    if (!o.presets.empty()) {
      p.model.dummy_weights = true;
      p.model.preset = o.presets.front();
    } else if (o.model.model.empty()) {
      p.model.dummy_weights = true;
      p.model.preset = "llama-110m";
    }
    p.parallel = o.parallel;
    p.threads = o.threads.front();
    p.prompt_len = o.prompt_lens.front();
    p.gen_tokens = o.gen_tokens;
    p.sequences = std::max(1, o.sequences);
    p.json_output = o.json_output;
    return run_parallel_bench(p);
  }
  if (o.presets.empty() && o.model.model.empty()) o.presets = {"llama-110m"};
  if (o.repeats < 1 || o.gen_tokens < 1) throw Error("--repeats and --gen must be >= 1");
  std::sort(o.threads.begin(), o.threads.end());
  json report;
  report["cpu_features"] = cpu_features().describe();
  json bw = json::object();
  double fma = 0.0;
  if (!o.skip_probe) {
    const MachineFigures figures = probe_machine(o.threads);
    for (size_t i = 0; i < o.threads.size(); ++i) bw[std::to_string(o.threads[i])] = figures.read_bandwidth_gbs[i];
    fma = figures.fma_peak_gflops_per_core;
  }
  report["read_bandwidth_gbs"] = bw;
  report["fma_peak_gflops_per_core"] = fma;

  std::vector<ModelOptions> targets;
  for (const auto& p : o.presets) {
    ModelOptions m = o.model;
    m.model.clear();
    m.dummy_weights = true;
    m.preset = p;
    targets.push_back(m);
  }
  if (!o.model.model.empty()) {
    ModelOptions m = o.model;
    m.dummy_weights = false;
    m.preset.clear();
    targets.push_back(m);
  }
  report["models"] = json::array();
  for (const auto& target : targets) {
    const LoadedModel loaded = load(target, /*need_tokenizer=*/false);
    const Matrix& wq = loaded.data.weights.layers.at(0).wq;
    quant::QuantSpec stored;  // what the first projection is stored as, after any load-time compression
    stored.dtype = wq.dtype;
    stored.group = wq.group;
    json entry{{"model", loaded.data.source},
               {"dtype", target.dummy_weights && !loaded.compression ? target.dtype : stored.to_string()},
               {"weight_bytes", static_cast<double>(loaded.data.weight_bytes())},
               {"load_seconds", loaded.load_seconds}};
    if (loaded.compression) {
      entry["quant"] = target.quant.empty() ? "keep" : target.quant;
      entry["quantize_seconds"] = loaded.quantize_seconds;
      entry["weight_bytes_before_quant"] = static_cast<double>(loaded.compression->bytes_before);
    }
    entry["act_quant"] = target.act_quant;
    entry["runs"] = json::array();
    for (int t : o.threads) {
      const double b = bw.contains(std::to_string(t)) ? bw[std::to_string(t)].get<double>() : 0.0;
      entry["runs"].push_back(bench_one(loaded, t, o, b, fma));
      if (!o.json_output) std::fprintf(stderr, "[bench] %s, %d threads done\n", loaded.data.source.c_str(), t);
    }
    report["models"].push_back(entry);
  }
  if (o.json_output) {
    std::printf("%s\n", report.dump(2).c_str());
  } else {
    print_human(report);
  }
  return 0;
}

}  // namespace

Command add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* sub = app.add_subcommand("bench", "Measure load time, prefill and decode speed, and memory");
  sub->add_option("-m,--model", o->model.model, "Model to benchmark (a checkpoint file or HF directory)");
  sub->add_option("--preset", o->presets, "Dummy-weight presets to benchmark (default: llama-110m)")
      ->delimiter(',')
      ->check(CLI::IsMember(dummy_preset_names()));
  sub->add_option("--dtype", o->model.dtype, "Weight type of the dummy presets")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  sub->add_option("-t,--threads", o->threads, "Thread counts to measure, e.g. 1,2")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  sub->add_option("--prompt-lens", o->prompt_lens, "Prompt lengths for prefill, e.g. 128,512")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  sub->add_option("--gen", o->gen_tokens, "Decode steps to time")->capture_default_str();
  sub->add_option("--repeats", o->repeats, "Prefill repetitions (best is kept)")->capture_default_str();
  o->model.add_quant_options(*sub);
  sub->add_flag("--json", o->json_output, "Print one JSON object instead of a table");
  o->parallel.add_to(*sub);
  sub->add_option("--sequences", o->sequences,
                  "Benchmark the leader/worker runtime (also under mpirun) with this many sequences in flight; "
                  "uses the first --threads and --prompt-lens values")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--skip-probe", o->skip_probe, "Do not measure bandwidth and FMA peak (faster; no efficiencies)");
  return [o] { return run_bench(*o); };
}

}  // namespace tessera::cli
