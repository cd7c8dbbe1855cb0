#include "engine/serving/engine.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <unordered_map>

#include "engine/core/check.h"
#include "engine/runtime/text_stream.h"

namespace tessera::serving {

namespace {

// Sets the text in context of out.token and of its alternatives: what each adds after the text so far.
void name_tokens(const TextStream& text, TokenOutput& out) {
  std::vector<int> candidates{out.token};
  for (const TopLogprob& t : out.top) candidates.push_back(t.token);
  std::vector<std::string> pieces = text.peek(candidates);
  out.piece = std::move(pieces[0]);
  for (size_t i = 0; i < out.top.size(); ++i) out.top[i].piece = std::move(pieces[i + 1]);
}

}  // namespace

struct ServingEngine::Sequence {
  Sequence(int id, ServingRequest r, int vocab, const Tokenizer& tokenizer)
      : request(std::move(r)), sampler(request.sampling, vocab), tokens(request.prompt) {
    sched.id = id;
    sched.n_tokens = static_cast<int>(tokens.size());
    n_prompt = sched.n_tokens;
    std::vector<int> visible(request.prompt);
    if (!visible.empty() && visible.front() == tokenizer.bos_id()) visible.erase(visible.begin());
    text.emplace(tokenizer, visible, request.stop, /*echo=*/false);
    stream = std::make_shared<RequestStream>(n_prompt);
    if (request.prompt_logprobs) {
      // The first prompt token has nothing before it: no logprob, only its text.
      prompt_text.emplace(tokenizer, std::vector<int>{}, std::vector<std::string>{}, /*echo=*/false);
      TokenOutput first;
      first.token = tokens[0];
      first.has_logprob = false;
      name_tokens(*prompt_text, first);
      prompt_text->push(first.token);
      prompt_out.push_back(std::move(first));
      if (n_prompt == 1) finish_prompt();
    }
  }

  // The step row whose logits score the next unscored prompt token, or -1 when none is wanted.
  int prompt_row() const {
    return request.prompt_logprobs && !prompt_done ? static_cast<int>(prompt_out.size()) - 1 : -1;
  }
  // max_new_tokens 0 (echo with max_tokens 0): the prompt is only scored; nothing is sampled.
  bool scoring_only() const { return request.max_new_tokens == 0; }
  void finish_prompt() {
    stream->push_prompt(std::move(prompt_out));
    prompt_out = {};
    prompt_text.reset();
    prompt_done = true;
  }

  SeqSchedState sched;
  ServingRequest request;
  Sampler sampler;
  std::vector<int> tokens;  // prompt, then generated
  int n_prompt = 0;
  std::optional<TextStream> text;
  std::unordered_map<int, int> generated_counts;  // for presence/frequency penalties
  std::shared_ptr<RequestStream> stream;
  // prompt_logprobs: the prompt tokens scored so far and their text, until all are scored and pushed.
  std::optional<TextStream> prompt_text;
  std::vector<TokenOutput> prompt_out;
  bool prompt_done = false;
  Clock::time_point arrival = Clock::now();
  Clock::time_point first_token;
  bool admitted_once = false;
  int n_generated = 0;
};

ServingEngine::ServingEngine(StepModel& model, const Tokenizer& tokenizer, int eos_id, const EngineConfig& config,
                             ServingMetrics& metrics)
    : model_(model),
      tokenizer_(tokenizer),
      eos_id_(eos_id),
      config_(config),
      metrics_(metrics),
      blocks_(config.num_blocks, config.block_size),
      scheduler_(SchedulerConfig{config.max_num_seqs, config.max_step_tokens, config.num_blocks / 100}, blocks_),
      raw_logits_(static_cast<size_t>(model.vocab_size())) {
  TESSERA_CHECK(config.max_queue >= 0);
  publish_gauges();
  thread_ = std::thread([this] { run(); });
}

ServingEngine::~ServingEngine() {
  shutdown();
}

void ServingEngine::validate(const ServingRequest& r) const {
  const int n = static_cast<int>(r.prompt.size());
  if (n == 0) throw Error("the prompt is empty");
  const int context = model_.context_length();
  if (n >= context)
    throw Error("the prompt has " + std::to_string(n) + " tokens; the model's context is " + std::to_string(context) +
                " tokens");
  for (int t : r.prompt)
    if (t < 0 || t >= model_.vocab_size())
      throw Error("token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                  std::to_string(model_.vocab_size() - 1) + ")");
  if (r.max_new_tokens < 0) throw Error("max_tokens must not be negative");
  if (n + r.max_new_tokens > context)
    throw Error("the prompt (" + std::to_string(n) + " tokens) plus max_tokens (" + std::to_string(r.max_new_tokens) +
                ") exceeds the model's context of " + std::to_string(context) + " tokens");
  const int rows = n + r.max_new_tokens;
  if (blocks_.blocks_for(rows) > blocks_.num_blocks())
    throw Error("the request needs " + std::to_string(rows) + " KV rows but the server's KV pool holds " +
                std::to_string(blocks_.num_blocks() * blocks_.block_size()) + " (raise --kv-memory)");
  r.sampling.validate();
  if (!std::isfinite(r.presence_penalty) || std::fabs(r.presence_penalty) > 2.0f)
    throw Error("presence_penalty must be in [-2, 2]");
  if (!std::isfinite(r.frequency_penalty) || std::fabs(r.frequency_penalty) > 2.0f)
    throw Error("frequency_penalty must be in [-2, 2]");
  if (r.top_logprobs > 20) throw Error("top_logprobs must be at most 20");
  if (r.prompt_logprobs && r.top_logprobs < 0) throw Error("prompt logprobs need logprobs");
}

Submission ServingEngine::submit(std::vector<ServingRequest> requests) {
  for (const ServingRequest& r : requests) validate(r);
  Submission out;
  std::vector<std::unique_ptr<Sequence>> seqs;
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      out.status = SubmitStatus::kShuttingDown;
      return out;
    }
    if (queued_ + static_cast<int>(requests.size()) > config_.max_queue) {
      out.status = SubmitStatus::kQueueFull;
      return out;
    }
    for (ServingRequest& r : requests) {
      auto seq = std::make_unique<Sequence>(next_id_++, std::move(r), model_.vocab_size(), tokenizer_);
      out.streams.push_back(seq->stream);
      incoming_.push_back(std::move(seq));
    }
    queued_ += static_cast<int>(requests.size());
  }
  cv_.notify_all();
  return out;
}

void ServingEngine::notify_cancel() {
  {
    std::lock_guard lock(mu_);
    wake_ = true;
  }
  cv_.notify_all();
}

void ServingEngine::shutdown() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ServingEngine::run() {
  for (;;) {
    std::vector<std::unique_ptr<Sequence>> arrived;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || wake_ || !incoming_.empty() || !scheduler_.idle(); });
      wake_ = false;
      arrived.swap(incoming_);
      if (stopping_ && arrived.empty() && scheduler_.idle()) break;
    }
    for (auto& seq : arrived) {
      scheduler_.add(&seq->sched);
      const int id = seq->sched.id;
      Sequence& s = *seqs_.emplace(id, std::move(seq)).first->second;
      // max_new_tokens 0 with nothing to score (no prompt logprobs, or a one-token prompt): done without a step.
      if (s.scoring_only() && (!s.request.prompt_logprobs || s.prompt_done)) finish(s, FinishKind::kLength);
    }
    try {
      step();
    } catch (const std::exception& e) {
      // Only bookkeeping failures (e.g. bad_alloc) land here; model errors are handled inside step().
      std::vector<int> ids;
      for (const auto& [id, seq] : seqs_) ids.push_back(id);
      for (int id : ids) finish(*seqs_.at(id), FinishKind::kError, e.what());
    }
    publish_gauges();
  }
  publish_gauges();
}

void ServingEngine::step() {
  // Cancellations first, so their blocks are free for this step.
  std::vector<int> cancelled;
  for (const auto& [id, seq] : seqs_)
    if (seq->stream->cancel_requested()) cancelled.push_back(id);
  for (int id : cancelled) {
    metrics_.count_cancelled();
    finish(*seqs_.at(id), FinishKind::kCancelled);
  }

  StepPlan plan = scheduler_.schedule();
  for (int id : plan.preempted) {
    model_.release(id);
    metrics_.count_preemption();
  }
  const Clock::time_point now = Clock::now();
  for (int id : plan.admitted) {
    Sequence& seq = *seqs_.at(id);
    if (!seq.admitted_once) {
      seq.admitted_once = true;
      metrics_.observe_queue_time(std::chrono::duration<double>(now - seq.arrival).count());
      metrics_.add_prompt_tokens(seq.n_prompt);
    }
  }
  if (plan.empty()) {
    // Nothing fits yet (cannot happen for validated requests); do not spin.
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(1));
    return;
  }

  step_tokens_.clear();
  int n_logits = 0;
  for (ScheduledChunk& c : plan.chunks) {
    const Sequence& seq = *seqs_.at(c.seq_id);
    step_tokens_.insert(step_tokens_.end(), seq.tokens.begin() + c.pos0, seq.tokens.begin() + c.pos0 + c.n_tokens);
    // Only a chunk holding the row that scores the next prompt token pays for every row's logits.
    const int prompt_row = seq.prompt_row();
    c.all_logits = prompt_row >= c.pos0 && prompt_row < c.pos0 + c.n_tokens;
    n_logits += logit_rows(c);
  }
  const size_t vocab = static_cast<size_t>(model_.vocab_size());
  step_logits_.resize(static_cast<size_t>(n_logits) * vocab);
  try {
    model_.forward(step_tokens_, plan.chunks, step_logits_.data());
  } catch (const std::exception& e) {
    for (const ScheduledChunk& c : plan.chunks) finish(*seqs_.at(c.seq_id), FinishKind::kError, e.what());
    return;
  }

  size_t row = 0;
  for (const ScheduledChunk& c : plan.chunks) {
    Sequence& seq = *seqs_.at(c.seq_id);
    seq.sched.n_computed += c.n_tokens;
    const float* rows = step_logits_.data() + row * vocab;
    row += static_cast<size_t>(logit_rows(c));
    // The prompt's logprobs first: they reach the stream before the first generated token.
    if (c.all_logits) score_prompt(seq, c, rows);
    if (seq.scoring_only()) {
      // Ends as soon as its prompt is scored (its last prompt row, which only feeds the sampler, is not run).
      if (seq.prompt_done || c.logits) finish(seq, FinishKind::kLength);
    } else if (c.logits) {
      sample(seq, step_logits_.data() + (row - 1) * vocab);
    }
  }
}

void ServingEngine::score_prompt(Sequence& seq, const ScheduledChunk& c, const float* logits) {
  const size_t vocab = static_cast<size_t>(model_.vocab_size());
  // Row r holds the logits after token r: they score prompt token r + 1.
  for (int r = seq.prompt_row(); r >= c.pos0 && r < c.pos0 + c.n_tokens && r + 1 < seq.n_prompt; ++r) {
    TokenOutput out;
    out.token = seq.tokens[static_cast<size_t>(r + 1)];
    logprobs_of(logits + static_cast<size_t>(r - c.pos0) * vocab, seq.request.top_logprobs, out);
    name_tokens(*seq.prompt_text, out);
    seq.prompt_text->push(out.token);
    seq.prompt_out.push_back(std::move(out));
  }
  if (static_cast<int>(seq.prompt_out.size()) == seq.n_prompt) seq.finish_prompt();
}

void ServingEngine::logprobs_of(const float* raw, int k, TokenOutput& out) {
  const int vocab = model_.vocab_size();
  const float max_logit = *std::max_element(raw, raw + vocab);
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(raw[i] - max_logit));
  const float log_z = max_logit + static_cast<float>(std::log(sum));
  out.logprob = raw[out.token] - log_z;
  out.top.clear();
  if (k <= 0) return;
  top_ids_.resize(static_cast<size_t>(vocab));
  for (int i = 0; i < vocab; ++i) top_ids_[static_cast<size_t>(i)] = i;
  const size_t n = std::min(static_cast<size_t>(k), top_ids_.size());
  std::partial_sort(top_ids_.begin(), top_ids_.begin() + static_cast<long>(n), top_ids_.end(),
                    [&](int a, int b) { return raw[a] > raw[b] || (raw[a] == raw[b] && a < b); });
  for (size_t i = 0; i < n; ++i) out.top.push_back({top_ids_[i], raw[top_ids_[i]] - log_z, {}});
}

void ServingEngine::sample(Sequence& seq, float* logits) {
  const ServingRequest& r = seq.request;
  const int vocab = model_.vocab_size();
  if (r.top_logprobs >= 0) std::copy(logits, logits + vocab, raw_logits_.begin());
  if (r.presence_penalty != 0.0f || r.frequency_penalty != 0.0f)
    for (const auto& [token, count] : seq.generated_counts)
      logits[token] -= r.presence_penalty + r.frequency_penalty * static_cast<float>(count);
  const int token = seq.sampler.sample(logits, seq.tokens);

  TokenOutput out;
  out.token = token;
  if (r.top_logprobs >= 0) {
    // Log-probabilities of the model's own distribution (before penalties and temperature), as vLLM reports.
    logprobs_of(raw_logits_.data(), r.top_logprobs, out);
    name_tokens(*seq.text, out);
  }

  const Clock::time_point now = Clock::now();
  if (seq.n_generated == 0) {
    seq.first_token = now;
    metrics_.observe_ttft(std::chrono::duration<double>(now - seq.arrival).count());
  }
  ++seq.n_generated;
  metrics_.add_generation_tokens(1);
  seq.tokens.push_back(token);
  ++seq.generated_counts[token];

  std::optional<FinishKind> done;
  if (r.stop_at_eos && token == eos_id_) {
    done = FinishKind::kEos;
  } else {
    out.text = seq.text->push(token);
    if (seq.text->stopped()) done = FinishKind::kStop;
  }
  seq.stream->push(std::move(out));
  if (!done && seq.n_generated >= r.max_new_tokens) done = FinishKind::kLength;
  if (!done && static_cast<int>(seq.tokens.size()) >= model_.context_length()) done = FinishKind::kContext;
  if (done) {
    finish(seq, *done);
  } else {
    seq.sched.n_tokens = static_cast<int>(seq.tokens.size());
  }
}

void ServingEngine::finish(Sequence& seq, FinishKind kind, std::string error) {
  const int id = seq.sched.id;
  std::string tail;
  if (kind != FinishKind::kStop && kind != FinishKind::kCancelled && kind != FinishKind::kError)
    tail = seq.text->finish();
  if (seq.n_generated > 0) {
    const double total = std::chrono::duration<double>(Clock::now() - seq.arrival).count();
    metrics_.observe_e2e(total);
    if (seq.n_generated > 1)
      metrics_.observe_tpot(std::chrono::duration<double>(Clock::now() - seq.first_token).count() /
                            (seq.n_generated - 1));
  }
  seq.stream->finish(kind, std::move(tail), std::move(error));
  scheduler_.remove(id);
  model_.release(id);
  seqs_.erase(id);  // `seq` dangles from here on
}

void ServingEngine::publish_gauges() {
  int waiting;
  {
    std::lock_guard lock(mu_);
    queued_ = static_cast<int>(incoming_.size()) + scheduler_.num_waiting();
    waiting = queued_;
  }
  metrics_.set_gauges(scheduler_.num_running(), waiting, blocks_.num_used(), blocks_.num_free(), blocks_.block_size());
}

}  // namespace tessera::serving
