// tessera generate: stream a completion of a prompt to stdout; timings go to stderr.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/device.h"
#include "cli/options.h"
#include "cli/parallel_job.h"
#include "engine/core/check.h"
#include "engine/model/llama_model.h"
#include "engine/runtime/generator.h"

namespace tessera::cli {

namespace {

struct GenerateOptions {
  ModelOptions model;
  ParallelOptions parallel;
  DeviceOptions device;
  std::string prompt;
  std::vector<int> prompt_ids;
  int n_tokens = 256;
  SamplingParams sampling;
  int64_t seed = -1;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  bool no_echo = false;
};

int generate_on_this_rank(const GenerateOptions& o, ParallelJob& job);

int run_generate(const GenerateOptions& o) {
  if (!o.prompt.empty() && !o.prompt_ids.empty()) throw Error("give either --prompt or --prompt-ids, not both");
  o.device.check(o.model.act_quant);
  ParallelJob job(o.parallel);
  return job.run([&] { return generate_on_this_rank(o, job); });
}

int generate_on_this_rank(const GenerateOptions& o, ParallelJob& job) {
  job.check_consistent("the options", options_fingerprint(o.model, job.options()));
  const ShardRequest shard = job.shard_request();
  const bool leader = job.leader();
  ModelOptions model_options = o.model;
  model_options.cpu_layout = !o.device.cuda();
  LoadedModel loaded =
      load(model_options, /*need_tokenizer=*/leader && (!o.prompt.empty() || !o.stop.empty()), &shard, job.groups());
  job.check_consistent("the model " + loaded.data.source, config_fingerprint(loaded.data.config));
  const ModelConfig& config = loaded.data.config;
  const std::unique_ptr<Backend> backend = make_backend(o.device, o.model.threads, loaded);
  job.use_model_tp(make_model_tp(o.device, job));
  LlamaModel model(loaded.data, *backend, 256, job.model_tp());
  ModelRunner runner(model, job.groups());
  if (!leader) {
    runner.serve();
    return 0;
  }

  GenerationRequest request;
  if (!o.prompt_ids.empty()) {
    request.prompt = o.prompt_ids;
  } else if (loaded.tokenizer) {
    request.prompt = loaded.tokenizer->encode(o.prompt, /*add_bos=*/true);
  } else {
    request.prompt = {config.bos_id};  // an empty prompt starts from BOS alone
  }
  request.max_new_tokens = o.n_tokens;
  request.sampling = o.sampling;
  if (o.seed >= 0) request.sampling.seed = static_cast<uint64_t>(o.seed);
  request.stop = o.stop;
  request.stop_at_eos = !o.ignore_eos;
  request.echo = !o.no_echo;

  Generator generator(runner, loaded.tokenizer.get());
  std::function<void(std::string_view)> on_text = [](std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  };
  const GenerationResult r = generator.generate(request, on_text);
  runner.stop_workers();
  if (!loaded.tokenizer) {
    // Without a tokenizer (random weights) the ids are the output.
    for (size_t i = 0; i < r.tokens.size(); ++i) std::printf("%s%d", i ? " " : "", r.tokens[i]);
    std::fflush(stdout);
  }
  const int n = static_cast<int>(r.tokens.size());
  std::fprintf(stderr,
               "\n[tessera] %s on %s%s | load %.2f s | prompt %d tokens, %.1f tokens/s | generated %d tokens, "
               "%.1f tokens/s | finish: %s\n",
               loaded.data.source.c_str(), backend->name().c_str(),
               job.parallel()
                   ? (" | " + std::to_string(job.world_size()) + " ranks (tp " + std::to_string(job.options().tp) +
                      " x pp " + std::to_string(job.options().pp) + ")" +
                      (job.model_tp() != job.tp_data() ? " | tp over " + job.model_tp()->name() : std::string()))
                         .c_str()
                   : "",
               loaded.load_seconds, r.prompt_tokens, r.prefill_seconds > 0 ? r.prompt_tokens / r.prefill_seconds : 0.0,
               n, n > 1 && r.decode_seconds > 0 ? (n - 1) / r.decode_seconds : 0.0,
               std::string(finish_reason_name(r.finish)).c_str());
  return 0;
}

}  // namespace

Command add_generate_command(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* sub = app.add_subcommand("generate", "Generate text from a prompt, streamed to stdout");
  o->model.add_to(*sub);
  o->parallel.add_to(*sub);
  o->device.add_to(*sub);
  sub->add_option("-p,--prompt", o->prompt, "Prompt text (empty: start from BOS alone)");
  sub->add_option("--prompt-ids", o->prompt_ids, "Prompt as token ids (BOS included), e.g. for --dummy-weights")
      ->delimiter(',');
  sub->add_option("-n,--n-tokens", o->n_tokens, "Maximum number of tokens to generate")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  sub->add_option("--temperature", o->sampling.temperature, "Sampling temperature; 0 = greedy")
      ->check(CLI::Range(0.0f, 100.0f))
      ->capture_default_str();
  sub->add_option("--top-k", o->sampling.top_k, "Keep the K most likely tokens (0 = off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  sub->add_option("--top-p", o->sampling.top_p, "Nucleus sampling: smallest set with this much probability (1 = off)")
      ->check(CLI::Range(0.0f, 1.0f))
      ->capture_default_str();
  sub->add_option("--min-p", o->sampling.min_p, "Drop tokens below min-p times the top probability (0 = off)")
      ->check(CLI::Range(0.0f, 1.0f))
      ->capture_default_str();
  sub->add_option("--repetition-penalty", o->sampling.repetition_penalty,
                  "Penalty for tokens already in the context (1 = off)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("-s,--seed", o->seed, "Random seed for reproducible sampling (default: random)");
  sub->add_option("--stop", o->stop, "Stop when this string is generated (repeatable); it is not printed");
  sub->add_flag("--ignore-eos", o->ignore_eos, "Keep generating after the end-of-sequence token");
  sub->add_flag("--no-echo", o->no_echo, "Print only the generated text, not the prompt");
  return [o] { return run_generate(*o); };
}

}  // namespace tessera::cli
