#include "cli/bench_parallel.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <span>
#include <vector>

#include "cli/machine_probe.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "engine/model/llama_model.h"
#include "engine/runtime/model_runner.h"
#include "parallel/consistency.h"
#include "quant/quant_spec.h"

namespace tessera::cli {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int argmax(const float* x, int n) {
  return static_cast<int>(std::max_element(x, x + n) - x);
}

size_t sz(int v) {
  return static_cast<size_t>(v);
}

// Nearest-rank percentile of unsorted samples (p in (0, 100]).
double percentile(std::vector<double> samples, double p) {
  if (samples.empty()) return 0.0;
  std::sort(samples.begin(), samples.end());
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(samples.size())));
  return samples[std::clamp<size_t>(rank, 1, samples.size()) - 1];
}

struct Combination {
  int batch = 1, micro_batches = 1, prompt_len = 1, gen_len = 1;
};

struct Measurement {
  double prefill_s = 0, prefill_comm = 0, decode_s = 0, decode_comm = 0;
  std::vector<double> token_latency_s;  // per micro-batch and round: time since that micro-batch's last token
};

// The leader's part of one combination: prefill every prompt, then decode gen_len tokens of every sequence.
Measurement lead(ParallelJob& job, ModelRunner& runner, const Combination& k) {
  const ModelConfig& c = runner.config();
  const int B = k.batch, M = k.micro_batches, L = k.prompt_len, G = k.gen_len;
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int> dist(3, c.vocab_size - 1);
  std::vector<std::vector<int>> prompts(sz(B));
  for (auto& p : prompts) {
    p.resize(sz(L));
    for (int& t : p) t = dist(rng);
  }
  // Micro-batch g holds sequences [first[g], first[g + 1]): contiguous, sizes differing by at most one.
  std::vector<int> first(sz(M) + 1);
  for (int g = 0; g <= M; ++g) first[sz(g)] = g * B / M;
  const int largest = (B + M - 1) / M;
  std::vector<float> logits(sz(largest) * sz(c.vocab_size));
  for (int s = 0; s < B; ++s) runner.open_slot(s, L + G + 1);
  std::vector<int> token(sz(B)), pos(sz(B), L);
  Measurement m;

  // Prefill: one prompt per step; with a pipeline the stages work on different prompts at once. Communication
  // time is read as differences: the caller's reset covers the whole combination.
  double comm0 = job.comm_seconds();
  auto t0 = Clock::now();
  int finished = 0;
  for (int s = 0; s < B; ++s) {
    if (runner.in_flight() == runner.max_in_flight()) {
      runner.finish_step(logits.data());
      token[sz(finished++)] = argmax(logits.data(), c.vocab_size);
    }
    const StepChunk chunk{s, 0, L, 1};
    runner.begin_step({&chunk, 1}, prompts[sz(s)]);
  }
  while (finished < B) {
    runner.finish_step(logits.data());
    token[sz(finished++)] = argmax(logits.data(), c.vocab_size);
  }
  m.prefill_s = since(t0);
  m.prefill_comm = job.comm_seconds() - comm0;

  // Decode: each micro-batch's next step starts as soon as its previous tokens are known, round-robin, so with a
  // pipeline the stages work on different micro-batches at the same time.
  std::vector<StepChunk> chunks;
  std::vector<int> step_tokens;
  auto begin = [&](int g) {
    chunks.clear();
    step_tokens.clear();
    for (int s = first[sz(g)]; s < first[sz(g) + 1]; ++s) {
      chunks.push_back(StepChunk{s, pos[sz(s)], 1, 1});
      step_tokens.push_back(token[sz(s)]);
    }
    runner.begin_step(chunks, step_tokens);
  };
  comm0 = job.comm_seconds();
  t0 = Clock::now();
  std::vector<Clock::time_point> last(sz(M), t0);
  m.token_latency_s.reserve(sz(M) * sz(G));
  const int total = M * G;
  int next = 0, started = 0, done = 0;
  std::vector<int> order;  // the micro-batch of each step in flight, oldest first
  while (done < total) {
    while (started < total && runner.in_flight() < runner.max_in_flight() && static_cast<int>(order.size()) < M) {
      begin(next);
      order.push_back(next);
      next = (next + 1) % M;
      ++started;
    }
    runner.finish_step(logits.data());
    const int g = order.front();
    order.erase(order.begin());
    const auto now = Clock::now();
    m.token_latency_s.push_back(std::chrono::duration<double>(now - last[sz(g)]).count());
    last[sz(g)] = now;
    for (int s = first[sz(g)]; s < first[sz(g) + 1]; ++s) {
      token[sz(s)] = argmax(logits.data() + sz(s - first[sz(g)]) * sz(c.vocab_size), c.vocab_size);
      ++pos[sz(s)];
    }
    ++done;
  }
  m.decode_s = since(t0);
  m.decode_comm = job.comm_seconds() - comm0;
  for (int s = 0; s < B; ++s) runner.close_slot(s);
  return m;
}

// Every rank's peak RSS and share of the combination's wall time inside communication, gathered on every rank.
struct RankFigures {
  double peak_rss_bytes = 0;
  double comm_share = 0;
};

std::vector<RankFigures> gather(const ParallelJob& job, const RankFigures& mine) {
  std::vector<RankFigures> all(sz(job.world_size()));
  if (job.groups() == nullptr) {
    all[0] = mine;
  } else {
    job.groups()->world->all_gather_bytes(&mine, sizeof(RankFigures), all.data());
  }
  return all;
}

// Every rank must run the same combinations in the same order, or the workers' loops fall out of step.
uint64_t sweep_fingerprint(const ParallelBenchOptions& o, const ParallelOptions& p) {
  Fingerprint f;
  f.add(options_fingerprint(o.model, p)).add(static_cast<uint64_t>(o.micro_batches));
  for (const std::vector<int>* list : {&o.threads, &o.batches, &o.prompt_lens, &o.gen_lens}) {
    f.add(static_cast<uint64_t>(list->size()));
    for (int v : *list) f.add(static_cast<uint64_t>(v));
  }
  return f.value();
}

void require_positive(const std::vector<int>& values, const char* option) {
  if (values.empty()) throw Error(std::string(option) + " needs at least one value");
  for (int v : values)
    if (v < 1) throw Error(std::string(option) + " values must be >= 1, got " + std::to_string(v));
}

json make_row(const ParallelJob& job, const LoadedModel& loaded, const ParallelBenchOptions& o, const Backend& backend,
              int threads, const Combination& k, const Measurement& m, const std::vector<RankFigures>& ranks) {
  const int B = k.batch, L = k.prompt_len, G = k.gen_len;
  const double decode_steps = static_cast<double>(k.micro_batches) * G;
  json rss = json::array(), comm = json::array();
  int64_t rss_max = 0;
  for (const RankFigures& r : ranks) {
    rss.push_back(static_cast<int64_t>(r.peak_rss_bytes));
    comm.push_back(r.comm_share);
    rss_max = std::max(rss_max, static_cast<int64_t>(r.peak_rss_bytes));
  }
  const double comm_prefill = m.prefill_comm / m.prefill_s, comm_decode = m.decode_comm / m.decode_s;
  return json{{"model", loaded.data.source},
              {"weights", stored_weight_format(loaded, o.model)},
              {"quant", o.model.quant.empty() ? "none" : o.model.quant},
              {"act_quant", o.model.act_quant},
              {"act_dtype", o.model.act_dtype},
              {"tp", job.options().tp},
              {"pp", job.options().pp},
              {"ranks", job.world_size()},
              {"backend", backend.name()},
              {"threads_per_rank", threads},
              {"batch", B},
              {"micro_batches", k.micro_batches},
              {"prompt_len", L},
              {"gen_len", G},
              {"prefill_tokens", B * L},
              {"prefill_seconds", m.prefill_s},
              {"prefill_tokens_per_s", B * L / m.prefill_s},
              {"decode_tokens", B * G},
              {"decode_seconds", m.decode_s},
              {"decode_tokens_per_s", B * G / m.decode_s},
              {"decode_ms_per_step", 1e3 * m.decode_s / decode_steps},
              {"latency_ms_p50", 1e3 * percentile(m.token_latency_s, 50)},
              {"latency_ms_p90", 1e3 * percentile(m.token_latency_s, 90)},
              {"latency_ms_p99", 1e3 * percentile(m.token_latency_s, 99)},
              {"comm_share_prefill", comm_prefill},
              {"comm_share_decode", comm_decode},
              {"comm_share_per_rank", comm},
              {"peak_rss_bytes_max", rss_max},
              {"peak_rss_bytes_per_rank", rss},
              {"load_seconds", loaded.load_seconds},
              // The names of the single-configuration report before sweeps existed.
              {"sequences", B},
              {"gen_tokens", G},
              {"leader_comm_ms_per_decode_step", 1e3 * m.decode_comm / decode_steps},
              {"leader_comm_share_decode", comm_decode},
              {"leader_comm_share_prefill", comm_prefill}};
}

}  // namespace

std::string stored_weight_format(const LoadedModel& loaded, const ModelOptions& options) {
  if (options.dummy_weights && !loaded.compression) return options.dtype;
  const Matrix& wq = loaded.data.weights.layers.at(0).wq;
  quant::QuantSpec stored;  // what the first projection is stored as, after any load-time compression
  stored.dtype = wq.dtype;
  stored.group = wq.group;
  return stored.to_string();
}

std::string describe_parallel_row(const json& r) {
  char line[768];
  const int micro = r["micro_batches"];
  std::snprintf(line, sizeof line,
                "%s | tp %d x pp %d, %d thread(s) per rank, batch %d in %d micro-batch%s | prefill %d: %.1f tokens/s "
                "| decode %d: %.2f tokens/s (%.1f ms per step; per-token latency p50/p90/p99 %.1f/%.1f/%.1f ms) | "
                "leader in communication: %.1f%% of decode, %.1f%% of prefill | peak RSS (largest rank) %.2f GB",
                r["model"].get<std::string>().c_str(), r["tp"].get<int>(), r["pp"].get<int>(),
                r["threads_per_rank"].get<int>(), r["batch"].get<int>(), micro, micro == 1 ? "" : "es",
                r["prompt_len"].get<int>(), r["prefill_tokens_per_s"].get<double>(), r["gen_len"].get<int>(),
                r["decode_tokens_per_s"].get<double>(), r["decode_ms_per_step"].get<double>(),
                r["latency_ms_p50"].get<double>(), r["latency_ms_p90"].get<double>(), r["latency_ms_p99"].get<double>(),
                100.0 * r["comm_share_decode"].get<double>(), 100.0 * r["comm_share_prefill"].get<double>(),
                r["peak_rss_bytes_max"].get<double>() / 1e9);
  return line;
}

ParallelBenchResult run_parallel_bench(const ParallelBenchOptions& o, const std::function<void(const json&)>& on_row) {
  require_positive(o.threads, "--threads");
  require_positive(o.batches, "--batch");
  require_positive(o.prompt_lens, "--prompt-len");
  require_positive(o.gen_lens, "--gen-len");
  if (o.micro_batches < 0) throw Error("--micro-batches must be >= 1 (or 0 for min(pp, batch))");
  const int longest = *std::max_element(o.prompt_lens.begin(), o.prompt_lens.end()) +
                      *std::max_element(o.gen_lens.begin(), o.gen_lens.end()) + 1;
  // A step holds a whole prompt, or one token of every sequence of a micro-batch.
  const int max_rows = std::max(*std::max_element(o.prompt_lens.begin(), o.prompt_lens.end()),
                                *std::max_element(o.batches.begin(), o.batches.end()));

  ParallelJob job(o.parallel);
  ParallelBenchResult result;
  result.leader = job.leader();
  job.run([&] {
    job.check_consistent("the options", sweep_fingerprint(o, job.options()));
    const ShardRequest shard = job.shard_request();
    ModelOptions model_options = o.model;
    model_options.cpu_layout = !o.device.cuda();
    const LoadedModel loaded = load(model_options, /*need_tokenizer=*/false, &shard, job.groups());
    job.check_consistent("the model " + loaded.data.source, config_fingerprint(loaded.data.config));
    if (longest > loaded.data.config.max_seq_len)
      throw Error("the longest --prompt-len + --gen-len (" + std::to_string(longest - 1) +
                  ") exceeds the model's context of " + std::to_string(loaded.data.config.max_seq_len));
    job.use_model_tp(make_model_tp(o.device, job));
    for (int threads : o.threads) {
      const std::unique_ptr<Backend> backend = make_backend(o.device, threads, loaded);
      LlamaModel model(loaded.data, *backend, max_rows, job.model_tp());
      for (int batch : o.batches) {
        for (int prompt_len : o.prompt_lens) {
          for (int gen_len : o.gen_lens) {
            const int wanted = o.micro_batches > 0 ? o.micro_batches : job.options().pp;
            const Combination k{batch, std::min(wanted, batch), prompt_len, gen_len};
            // A fresh runner per combination: workers leave serve() when the leader stops them, so every rank
            // can then report its figures in one collective.
            ModelRunner runner(model, job.groups(), k.micro_batches);
            job.reset_comm_seconds();
            const auto t0 = Clock::now();
            Measurement m;
            if (job.leader()) {
              m = lead(job, runner, k);
              runner.stop_workers();
            } else {
              runner.serve();
            }
            const RankFigures mine{static_cast<double>(peak_rss_bytes()), job.comm_seconds() / since(t0)};
            const std::vector<RankFigures> ranks = gather(job, mine);
            if (!job.leader()) continue;
            json row = make_row(job, loaded, o, *backend, threads, k, m, ranks);
            if (on_row) on_row(row);
            result.rows.push_back(std::move(row));
          }
        }
      }
    }
    return 0;
  });
  return result;
}

}  // namespace tessera::cli
