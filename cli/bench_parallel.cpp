#include "cli/bench_parallel.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "engine/model/llama_model.h"
#include "engine/runtime/model_runner.h"

namespace tessera::cli {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int argmax(const float* x, int n) {
  return static_cast<int>(std::max_element(x, x + n) - x);
}

int lead_bench(const ParallelBenchOptions& o, ParallelJob& job, ModelRunner& runner, const LoadedModel& loaded) {
  const ModelConfig& c = runner.config();
  const int S = o.sequences, L = o.prompt_len, G = o.gen_tokens;
  const size_t vocab = static_cast<size_t>(c.vocab_size);
  std::vector<float> logits(vocab);
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int> dist(3, c.vocab_size - 1);
  std::vector<std::vector<int>> prompts(static_cast<size_t>(S));
  for (auto& p : prompts) {
    p.resize(static_cast<size_t>(L));
    for (int& t : p) t = dist(rng);
  }
  for (int s = 0; s < S; ++s) runner.open_slot(s, L + G + 1);
  std::vector<int> token(static_cast<size_t>(S)), pos(static_cast<size_t>(S), L);

  // Prefill: every sequence's prompt in flight at once (one after the other without a pipeline).
  job.reset_comm_seconds();
  auto t0 = Clock::now();
  int finished = 0;
  for (int s = 0; s < S; ++s) {
    if (runner.in_flight() == runner.max_in_flight()) {
      runner.finish_step(logits.data());
      token[static_cast<size_t>(finished++)] = argmax(logits.data(), c.vocab_size);
    }
    const StepChunk chunk{s, 0, L, 1};
    runner.begin_step({&chunk, 1}, prompts[static_cast<size_t>(s)]);
  }
  while (finished < S) {
    runner.finish_step(logits.data());
    token[static_cast<size_t>(finished++)] = argmax(logits.data(), c.vocab_size);
  }
  const double prefill_s = since(t0), prefill_comm = job.comm_seconds();

  // Decode: each sequence's next step starts as soon as its previous token is known, so with a pipeline the
  // stages work on different sequences at the same time.
  job.reset_comm_seconds();
  t0 = Clock::now();
  auto begin = [&](int s) {
    const StepChunk chunk{s, pos[static_cast<size_t>(s)], 1, 1};
    runner.begin_step({&chunk, 1}, {&token[static_cast<size_t>(s)], 1});
  };
  int next = 0;  // sequences are started and finished round-robin
  int started = 0, done = 0;
  const int total = S * G;
  std::vector<int> order;  // which sequence each in-flight step belongs to, oldest first
  while (done < total) {
    while (started < total && runner.in_flight() < runner.max_in_flight() && static_cast<int>(order.size()) < S) {
      begin(next);
      order.push_back(next);
      next = (next + 1) % S;
      ++started;
    }
    runner.finish_step(logits.data());
    const int s = order.front();
    order.erase(order.begin());
    token[static_cast<size_t>(s)] = argmax(logits.data(), c.vocab_size);
    ++pos[static_cast<size_t>(s)];
    ++done;
  }
  const double decode_s = since(t0), decode_comm = job.comm_seconds();
  for (int s = 0; s < S; ++s) runner.close_slot(s);
  runner.stop_workers();

  nlohmann::json r{{"model", loaded.data.source},
                   {"ranks", job.world_size()},
                   {"tp", job.options().tp},
                   {"pp", job.options().pp},
                   {"threads_per_rank", o.threads},
                   {"sequences", S},
                   {"prompt_len", L},
                   {"gen_tokens", G},
                   {"prefill_tokens_per_s", S * L / prefill_s},
                   {"decode_tokens_per_s", total / decode_s},
                   {"decode_ms_per_step", 1e3 * decode_s / total},
                   {"leader_comm_ms_per_decode_step", 1e3 * decode_comm / total},
                   {"leader_comm_share_decode", decode_comm / decode_s},
                   {"leader_comm_share_prefill", prefill_comm / prefill_s},
                   {"load_seconds", loaded.load_seconds}};
  if (o.json_output) {
    std::printf("%s\n", r.dump().c_str());
  } else {
    std::printf(
        "%s | tp %d x pp %d, %d thread(s) per rank, %d sequence(s) in flight | prefill %d: %.1f tokens/s | decode: "
        "%.2f tokens/s (%.1f ms per token) | leader in communication: %.1f%% of decode, %.1f%% of prefill\n",
        loaded.data.source.c_str(), job.options().tp, job.options().pp, o.threads, S, L,
        r["prefill_tokens_per_s"].get<double>(), r["decode_tokens_per_s"].get<double>(),
        r["decode_ms_per_step"].get<double>(), 100.0 * decode_comm / decode_s, 100.0 * prefill_comm / prefill_s);
  }
  return 0;
}

}  // namespace

int run_parallel_bench(const ParallelBenchOptions& o) {
  if (o.sequences < 1 || o.prompt_len < 1 || o.gen_tokens < 1)
    throw Error("--sequences, --prompt-lens and --gen must be >= 1");
  ParallelJob job(o.parallel);
  return job.run([&] {
    job.check_consistent("the options", options_fingerprint(o.model, job.options()));
    const ShardRequest shard = job.shard_request();
    const LoadedModel loaded = load(o.model, /*need_tokenizer=*/false, &shard, job.tp_data());
    job.check_consistent("the model " + loaded.data.source, config_fingerprint(loaded.data.config));
    if (o.prompt_len + o.gen_tokens + 1 > loaded.data.config.max_seq_len)
      throw Error("--prompt-lens + --gen exceed the model's context of " +
                  std::to_string(loaded.data.config.max_seq_len));
    CpuBackend backend(o.threads);
    backend.set_activation_quant(loaded.act_quant);
    LlamaModel model(loaded.data, backend, o.prompt_len, job.tp_data());
    ModelRunner runner(model, job.groups(), o.sequences);
    if (!job.leader()) {
      runner.serve();
      return 0;
    }
    return lead_bench(o, job, runner, loaded);
  });
}

}  // namespace tessera::cli
