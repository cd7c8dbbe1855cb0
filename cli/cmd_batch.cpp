// tessera batch: offline generation over a JSONL file of requests, in one process or as data-parallel replicas
// (each tensor x pipeline parallel) under mpirun. Rank 0 reads the input, hands requests to the replicas as
// they ask for them and writes each result as it comes; a re-run with the same output skips what is written.
//
//   mpirun -np 4 tessera batch --dp 2 --tp 2 -m MODEL --input prompts.jsonl --output results.jsonl
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>

#include "cli/batch_files.h"
#include "cli/batch_work.h"
#include "cli/byte_size.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "cli/parallel_job.h"
#include "cli/serving_stack.h"
#include "engine/core/check.h"
#include "engine/serving/metrics.h"
#include "server/chat_template.h"

namespace tessera::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct BatchOptions {
  ModelOptions model;
  ParallelOptions parallel;
  EngineOptions engine;
  std::string input;
  std::string output;
  bool sorted = false;
  std::string chat_template;
  int window = 0;  // requests in one replica's engine at once (0: max-num-seqs and a quarter more)
  double log_interval = 10.0;
};

std::string duration_text(double s) {
  char buf[32];
  if (s < 60) {
    std::snprintf(buf, sizeof(buf), "%.0fs", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof(buf), "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%dh%02dm", static_cast<int>(s) / 3600, static_cast<int>(s) % 3600 / 60);
  }
  return buf;
}

// Done/total, generated tokens per second and the time left: a redrawn line on a terminal, a log line every
// `interval` seconds otherwise.
class BatchProgress {
 public:
  // errors: bad input lines already reported this run.
  BatchProgress(size_t total, size_t done, size_t errors, double interval)
      : total_(total),
        done_(done),
        start_done_(done),
        errors_(errors),
        interval_(interval),
        tty_(::isatty(STDERR_FILENO) == 1) {}

  void add(const BatchResult& r) {
    ++done_;
    tokens_ += r.completion_tokens;
    if (r.error) ++errors_;
  }
  void tick(bool force = false) {
    const auto now = Clock::now();
    const double since = std::chrono::duration<double>(now - last_).count();
    if (!force && since < (tty_ ? 0.2 : interval_)) return;
    last_ = now;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const size_t run = done_ - start_done_;
    const double rate = elapsed > 0 ? static_cast<double>(run) / elapsed : 0.0;
    const std::string eta =
        rate > 0 && done_ < total_ ? duration_text(static_cast<double>(total_ - done_) / rate) : "-";
    const double frac = total_ ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
    std::string bar;
    if (tty_) {
      constexpr int kWidth = 24;
      const int filled = static_cast<int>(frac * kWidth);
      bar = "[" + std::string(static_cast<size_t>(filled), '#') +
            std::string(static_cast<size_t>(kWidth - filled), '.') + "] ";
    }
    std::fprintf(stderr, "%s[batch] %s%zu/%zu done (%.1f%%), %zu errors, %.1f tok/s, elapsed %s, ETA %s%s",
                 tty_ ? "\r\033[K" : "", bar.c_str(), done_, total_, 100.0 * frac, errors_,
                 elapsed > 0 ? static_cast<double>(tokens_) / elapsed : 0.0, duration_text(elapsed).c_str(),
                 eta.c_str(), tty_ ? "" : "\n");
    std::fflush(stderr);
  }
  void finish() {
    tick(/*force=*/true);
    if (tty_) std::fprintf(stderr, "\n");
  }
  size_t errors() const { return errors_; }

 private:
  size_t total_, done_, start_done_;
  size_t errors_;
  int64_t tokens_ = 0;
  double interval_;
  bool tty_;
  Clock::time_point start_ = Clock::now(), last_ = Clock::now();
};

int batch_on_this_rank(const BatchOptions& o, ParallelJob& job) {
  job.check_consistent("the options", options_fingerprint(o.model, job.options()));
  if (!job.replica_leader()) {
    run_replica_worker(o.model, o.engine, job);
    return 0;
  }

  // Rank 0 reads the files before loading, so a bad path fails fast.
  std::optional<BatchOutput> output;
  BatchInput input;
  if (job.leader()) {
    output.emplace(o.output);
    input = read_batch_input(o.input, output->done());
    for (const std::string& line : input.new_errors) output->write(line);
    std::fprintf(stderr, "[tessera] batch: %zu requests in %s, %zu already in %s, %zu to run, %zu bad lines\n",
                 input.total, o.input.c_str(), output->done().count - input.new_errors.size(), o.output.c_str(),
                 input.todo.size(), input.new_errors.size());
  }

  serving::ServingMetrics metrics;
  ServingStack stack(o.model, o.engine, job, metrics);
  const server::ChatTemplate chat_template = server::ChatTemplate::resolve(o.chat_template, o.model.model);
  // Enough waiting requests to refill the running set between two rounds, few enough to end evenly.
  const int window = o.window > 0 ? o.window : o.engine.max_num_seqs + std::max(1, o.engine.max_num_seqs / 4);
  BatchReplica replica(stack.engine(), stack.tokenizer(), chat_template, window);
  if (job.replica() == 0)
    std::fprintf(stderr, "[tessera] replica 0 of %d: %s\n", job.replicas(), stack.describe().c_str());

  if (!job.leader()) {
    RemoteWorkSource source(*job.coordination(), 0);
    replica.run(source);
    stack.shutdown();
    return 0;
  }

  const size_t total = input.total;
  BatchProgress progress(total, output->done().count, input.new_errors.size(), o.log_interval);
  BatchCoordinator coordinator(std::move(input.todo), *output, job.replicas(), job.options().model_ranks(),
                               [&](const BatchResult& r) { progress.add(r); });
  Communicator* coordination = job.coordination();
  LocalWorkSource local(coordinator);
  replica.run(local, [&] {
    if (coordination) coordinator.serve_remote(*coordination);
    progress.tick();
  });
  while (coordinator.remote_active() > 0) {  // replica 0 is done; the others finish what they hold
    coordinator.serve_remote(*coordination);
    progress.tick();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  progress.finish();
  stack.shutdown();
  if (o.sorted) output->sort(input.order);
  std::string shares;
  for (size_t r = 0; r < coordinator.results_per_replica().size(); ++r)
    shares += (r ? ", " : "") + std::to_string(coordinator.results_per_replica()[r]);
  std::fprintf(stderr, "[tessera] batch: %zu lines in %s; this run: %zu errors, results per replica: %s\n",
               output->done().count, o.output.c_str(), progress.errors(), shares.c_str());
  return 0;
}

int run_batch(BatchOptions o) {
  o.model.validate();
  if (o.input.empty() || o.output.empty()) throw Error("--input and --output are required");
  if (o.input == o.output) throw Error("--output must not be the --input file");
  parse_byte_size(o.engine.kv_memory, "--kv-memory");
  o.engine.max_queue = 1 << 20;  // the window bounds what is queued
  ParallelJob job(o.parallel);
  return job.run([&] { return batch_on_this_rank(o, job); });
}

}  // namespace

Command add_batch_command(CLI::App& app) {
  auto o = std::make_shared<BatchOptions>();
  o->parallel.dp = 0;
  CLI::App* sub = app.add_subcommand(
      "batch", "Generate for every request of a JSONL file (resumable; data-parallel replicas under mpirun)");
  o->model.add_to(*sub);
  o->parallel.add_to(*sub);
  o->parallel.add_dp_to(*sub);
  o->engine.add_to(*sub, /*with_queue=*/false);
  sub->add_option("-i,--input", o->input,
                  "JSONL requests: {\"id\", \"prompt\" | \"messages\", sampling...} or OpenAI batch lines")
      ->required();
  sub->add_option("-o,--output", o->output, "JSONL results, appended; ids already there are skipped (re-run to resume)")
      ->required();
  sub->add_flag("--sorted", o->sorted, "At the end, rewrite the output in input order");
  sub->add_option("--chat-template", o->chat_template,
                  "Chat template for \"messages\": llama2 | llama3 | chatml | mistral | raw | a .jinja file | a "
                  "tokenizer_config.json (default: the model's, else raw)");
  sub->add_option("--window", o->window,
                  "Requests each replica keeps in its engine (default: --max-num-seqs and a quarter more)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--log-interval", o->log_interval, "Seconds between progress lines when stderr is not a terminal")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  return [o] { return run_batch(*o); };
}

}  // namespace tessera::cli
