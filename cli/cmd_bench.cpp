// tessera bench: load time, prefill and decode throughput, peak RSS, and efficiency against the machine's
// measured memory bandwidth (decode) and FMA peak (prefill). Benchmarks live here, never in timed unit tests.
// With --batch/--tp/--pp lists/--csv (or under mpirun) it measures the leader/worker runtime instead, as a sweep
// over parallel layouts and batch sizes (bench_sweep.h, bench_parallel.h).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cli/bench_parallel.h"
#include "cli/bench_sweep.h"
#include "cli/commands.h"
#include "cli/device.h"
#include "cli/machine_probe.h"
#include "cli/options.h"
#include "engine/core/check.h"
#include "engine/core/cpu_features.h"
#include "engine/model/llama_model.h"
#include "loaders/dummy_model.h"

namespace tessera::cli {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct BenchOptions {
  ModelOptions model;
  DeviceOptions device;
  std::vector<std::string> presets;
  std::vector<int> threads{1, 2};
  std::vector<int> prompt_lens{128, 512};
  std::vector<int> gen_lens{32};
  int repeats = 1;
  std::string json_path;  // with --json: "" (or "-") prints to stdout
  bool skip_probe = false;
  // The leader/worker runtime and sweeps (bench_parallel.h, bench_sweep.h).
  ParallelOptions parallel;  // --pp-layers, --comm-timeout; tp and pp come from the lists below
  std::vector<int> tps{1};
  std::vector<int> pps{1};
  std::vector<int> batches;
  int sequences = 0;  // the runtime with this many sequences, one per step (what --sequences meant before --batch)
  int micro_batches = 0;
  std::string csv_path;
  std::string mpiexec = "mpiexec";
  std::string mpi_args;
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

// Greedy pick from host logits (the first maximum, as Backend::argmax): works whatever memory the backend has.
int host_argmax(const std::vector<float>& logits) {
  return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
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
  const std::unique_ptr<Backend> backend_ptr = make_backend(o.device, threads, loaded);
  Backend& backend = *backend_ptr;
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
    KvCache cache = model.make_cache(L);
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

  // Decode at batch 1 after a short prompt: every step reads all weights once. The logits' copy to the host ends
  // each step, so a device backend has finished it when the clock is read. With --repeats the same tokens are
  // decoded again over the same cache positions and the fastest run is kept, as the read-bandwidth probe keeps its
  // fastest pass: on a shared machine both then describe it when the neighbours are quiet.
  const int warm = 16, gen_tokens = o.gen_lens.front();
  KvCache cache = model.make_cache(warm + gen_tokens + 1);
  const std::vector<int> prompt = random_tokens(warm, c.vocab_size, 7);
  model.forward(prompt, 0, cache, LogitsMode::kLast, logits.data());
  const int first_token = host_argmax(logits);
  double s = 1e30;
  for (int rep = 0; rep < o.repeats; ++rep) {
    int token = first_token;
    const auto t0 = Clock::now();
    for (int i = 0; i < gen_tokens; ++i) {
      model.forward(std::span<const int>(&token, 1), warm + i, cache, LogitsMode::kLast, logits.data());
      token = host_argmax(logits);
    }
    s = std::min(s, seconds_since(t0));
  }
  const double tps = gen_tokens / s;
  const double bytes_per_token = static_cast<double>(m.weight_bytes());
  json d{{"tokens", gen_tokens},
         {"repeats", o.repeats},
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
  // The efficiencies compare with this machine's CPU: they mean nothing for a GPU run, which shows instead the
  // weight bytes decode reads per second.
  const bool cpu = report.value("device", "cpu") == "cpu";
  if (cpu)
    std::printf("machine: %s | bandwidth (GB/s) by threads: %s | FMA peak per core: %.1f GFLOP/s\n",
                report["cpu_features"].get<std::string>().c_str(), report["read_bandwidth_gbs"].dump().c_str(),
                report["fma_peak_gflops_per_core"].get<double>());
  for (const auto& model : report["models"]) {
    std::printf("\n%s  (%s weights, %.2f GB per decoded token, load %.2f s)\n",
                model["model"].get<std::string>().c_str(), model["dtype"].get<std::string>().c_str(),
                model["weight_bytes"].get<double>() / 1e9, model["load_seconds"].get<double>());
    std::printf("  %-7s %-14s %14s %12s %12s %12s %10s\n", "threads", "test", "tokens/s", "ms/token", "GFLOP/s",
                cpu ? "efficiency" : "weights GB/s", "peak RSS");
    for (const auto& run : model["runs"]) {
      if (!cpu) std::printf("  on %s\n", run["backend"].get<std::string>().c_str());
      const int t = run["threads"];
      const double rss_gb = run["peak_rss_bytes"].get<double>() / 1e9;
      for (const auto& p : run["prefill"]) {
        const std::string name = "prefill " + std::to_string(p["prompt_tokens"].get<int>());
        const double eff = p.value("fraction_of_fma_peak_per_thread", 0.0);
        const std::string eff_text = cpu ? std::to_string(static_cast<int>(std::lround(eff * 100))) + "%" : "-";
        std::printf("  %-7d %-14s %14.1f %12.2f %12.1f %12s %8.2f GB\n", t, name.c_str(),
                    p["tokens_per_s"].get<double>(), 1e3 / p["tokens_per_s"].get<double>(), p["gflops"].get<double>(),
                    eff_text.c_str(), rss_gb);
      }
      const auto& d = run["decode"];
      const double tps = d["tokens_per_s"].get<double>();
      const std::string eff =
          cpu ? std::to_string(static_cast<int>(std::lround(d.value("fraction_of_bandwidth_limit", 0.0) * 100))) + "%"
              : std::to_string(static_cast<int>(std::lround(tps * model["weight_bytes"].get<double>() / 1e9)));
      std::printf("  %-7d %-14s %14.2f %12.1f %12s %12s %8.2f GB\n", t, "decode", tps, d["ms_per_token"].get<double>(),
                  "-", eff.c_str(), rss_gb);
    }
  }
  if (cpu)
    std::printf(
        "\nefficiency: prefill = achieved GFLOP/s / (FMA peak per core x threads); decode = tokens/s x weight "
        "bytes per token / read bandwidth at the same thread count\n");
}

bool given(const CLI::App& app, const char* name) {
  return app.get_option(name)->count() > 0;
}

// The options a sweep repeats in each layout's MPI job: everything given except the layout and the outputs.
std::vector<std::string> forwarded_args(const CLI::App& app) {
  static const std::set<std::string> skip{"--tp", "--pp", "--csv", "--json", "--mpiexec", "--mpi-args", "--help"};
  std::vector<std::string> args;
  for (const CLI::Option* opt : app.get_options()) {
    const std::string name = opt->get_name();
    if (opt->count() == 0 || skip.count(name) != 0) continue;
    if (opt->get_type_size() == 0) {  // a flag
      if (opt->as<bool>()) args.push_back(name);
      continue;
    }
    for (const std::string& value : opt->results())
      args.push_back(name + "=" + value);  // "=": values may start with '-'
  }
  return args;
}

// The leader/worker runtime: --batch/--sequences/--csv, several or parallel layouts, or under mpirun.
bool wants_runtime(const BenchOptions& o, const CLI::App& app) {
  if (o.sequences > 0 || !o.batches.empty() || !o.csv_path.empty() || o.tps.size() > 1 || o.pps.size() > 1) return true;
  return o.tps.front() * o.pps.front() > 1 || under_launcher() || given(app, "--micro-batches");
}

int run_runtime_bench(const BenchOptions& o, const CLI::App& app) {
  if (o.presets.size() + (o.model.model.empty() ? 0 : 1) > 1)
    throw Error(
        "the runtime benchmark (--tp/--pp/--batch/--sequences) measures one model: give one --preset or --model");
  if (o.sequences > 0 && !o.batches.empty()) throw Error("give --batch or --sequences, not both");
  SweepOptions s;
  ParallelBenchOptions& p = s.bench;
  p.model = o.model;
  if (!o.presets.empty()) {
    p.model.dummy_weights = true;
    p.model.preset = o.presets.front();
  } else if (o.model.model.empty()) {
    p.model.dummy_weights = true;
    p.model.preset = "llama-110m";
  }
  p.parallel = o.parallel;
  p.device = o.device;
  // Defaults of the runtime: one thread per rank (ranks are the parallelism), one 128-token prompt.
  p.threads = given(app, "--threads") ? o.threads : std::vector<int>{1};
  p.prompt_lens = given(app, "--prompt-lens") ? o.prompt_lens : std::vector<int>{128};
  p.gen_lens = o.gen_lens;
  if (o.sequences > 0) {  // S sequences, one per step: several steps in flight through a pipeline
    p.batches = {o.sequences};
    p.micro_batches = o.sequences;
  } else {
    p.batches = o.batches.empty() ? std::vector<int>{1} : o.batches;
    p.micro_batches = o.micro_batches;
  }
  s.tps = o.tps;
  s.pps = o.pps;
  s.csv_path = o.csv_path;
  s.json_stdout = given(app, "--json") && (o.json_path.empty() || o.json_path == "-");
  if (!s.json_stdout) s.json_path = o.json_path;
  s.mpiexec = o.mpiexec;
  s.mpi_args = o.mpi_args;
  s.forwarded_args = forwarded_args(app);
  return run_bench_sweep(s);
}

int run_bench(BenchOptions o, const CLI::App& app) {
  o.device.check(o.model.act_quant);
  if (o.device.cuda()) {
    // One run: --threads and the CPU bandwidth/FMA probe describe the CPU, not the GPU.
    o.threads = {1};
    o.skip_probe = true;
  }
  if (wants_runtime(o, app)) return run_runtime_bench(o, app);
  if (o.gen_lens.size() != 1)
    throw Error("several --gen-len values need the runtime benchmark: add --batch (e.g. --batch 1)");
  const bool json_stdout = given(app, "--json") && (o.json_path.empty() || o.json_path == "-");
  if (o.presets.empty() && o.model.model.empty()) o.presets = {"llama-110m"};
  if (o.repeats < 1 || o.gen_lens.front() < 1) throw Error("--repeats and --gen must be >= 1");
  std::sort(o.threads.begin(), o.threads.end());
  json report;
  report["device"] = o.device.device;
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
    m.cpu_layout = !o.device.cuda();
    targets.push_back(m);
  }
  if (!o.model.model.empty()) {
    ModelOptions m = o.model;
    m.dummy_weights = false;
    m.preset.clear();
    m.cpu_layout = !o.device.cuda();
    targets.push_back(m);
  }
  report["models"] = json::array();
  for (const auto& target : targets) {
    const LoadedModel loaded = load(target, /*need_tokenizer=*/false);
    json entry{{"model", loaded.data.source},
               {"dtype", stored_weight_format(loaded, target)},
               {"weight_bytes", static_cast<double>(loaded.data.weight_bytes())},
               {"load_seconds", loaded.load_seconds}};
    if (loaded.compression) {
      entry["quant"] = target.quant.empty() ? "keep" : target.quant;
      entry["quantize_seconds"] = loaded.quantize_seconds;
      entry["weight_bytes_before_quant"] = static_cast<double>(loaded.compression->bytes_before);
    }
    entry["act_quant"] = target.act_quant;
    entry["act_dtype"] = target.act_dtype;
    entry["runs"] = json::array();
    for (int t : o.threads) {
      const double b = bw.contains(std::to_string(t)) ? bw[std::to_string(t)].get<double>() : 0.0;
      entry["runs"].push_back(bench_one(loaded, t, o, b, fma));
      if (!json_stdout) std::fprintf(stderr, "[bench] %s, %d threads done\n", loaded.data.source.c_str(), t);
    }
    report["models"].push_back(entry);
  }
  if (given(app, "--json") && !json_stdout) {
    std::ofstream out(o.json_path);
    if (!out || !(out << report.dump(2) << '\n') || !out.flush()) throw Error("cannot write " + o.json_path);
  } else if (json_stdout) {
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
  sub->add_option("-t,--threads", o->threads,
                  "Thread counts to measure, e.g. 1,2 (per rank with the runtime benchmark, default 1 there)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  sub->add_option("--prompt-lens,--prompt-len", o->prompt_lens,
                  "Prompt lengths for prefill, e.g. 128,512 (default 128 with the runtime benchmark)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  sub->add_option("--gen,--gen-len", o->gen_lens, "Decode steps to time per sequence (a list with --batch)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--repeats", o->repeats,
                  "Repetitions of each prefill and of the decode run (the fastest of each is kept)")
      ->capture_default_str();
  o->model.add_quant_options(*sub);
  o->device.add_to(*sub);
  sub->add_option("--json", o->json_path,
                  "Report as JSON: to FILE, or to stdout without one (the runtime benchmark: one object per "
                  "combination)")
      ->type_name("[FILE]")
      ->expected(0, 1);
  // --tp and --pp are lists here (a sweep over layouts); ParallelOptions registers them as single numbers.
  o->parallel.add_to(*sub);
  sub->remove_option(sub->get_option("--tp"));
  sub->remove_option(sub->get_option("--pp"));
  sub->add_option("--tp", o->tps,
                  "Tensor-parallel ranks per stage; a list sweeps layouts, e.g. 1,2 (each layout of several ranks "
                  "runs as its own mpiexec job; under mpirun: the job's layout)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  sub->add_option("--pp", o->pps, "Pipeline stages; a list sweeps layouts, e.g. 1,2")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  sub->add_option("--batch", o->batches,
                  "Sequences decoded together in one step, e.g. 1,2,4,8: measures the leader/worker runtime for "
                  "every tp x pp x batch x prompt length x generation length")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  sub->add_option("--micro-batches", o->micro_batches,
                  "Decode steps in flight through a pipeline, each with part of the batch (default: min(pp, batch))")
      ->check(CLI::PositiveNumber);
  sub->add_option("--sequences", o->sequences,
                  "Benchmark the leader/worker runtime with this many sequences in flight, one per step (with a "
                  "pipeline, on different stages at once)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--csv", o->csv_path, "Write the runtime benchmark's results as CSV, one row per combination")
      ->type_name("FILE");
  sub->add_option("--mpiexec", o->mpiexec, "MPI launcher for the sweep's parallel layouts")
      ->type_name("PATH")
      ->capture_default_str();
  sub->add_option("--mpi-args", o->mpi_args,
                  "Extra launcher arguments for the sweep's jobs, split at spaces, e.g. \"--hostfile hosts\" (then "
                  "no --oversubscribe is added)")
      ->type_name("ARGS");
  sub->add_flag("--skip-probe", o->skip_probe, "Do not measure bandwidth and FMA peak (faster; no efficiencies)");
  return [o, sub] { return run_bench(*o, *sub); };
}

}  // namespace tessera::cli
