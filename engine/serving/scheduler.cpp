#include "engine/serving/scheduler.h"

#include <algorithm>

#include "engine/core/check.h"

namespace tessera::serving {

Scheduler::Scheduler(const SchedulerConfig& config, BlockManager& blocks) : config_(config), blocks_(blocks) {
  TESSERA_CHECK(config.max_num_seqs > 0 && config.max_step_tokens > 0 && config.watermark_blocks >= 0);
}

void Scheduler::add(SeqSchedState* seq) {
  TESSERA_CHECK(seq != nullptr && seq->n_tokens > 0);
  waiting_.push_back(seq);
}

void Scheduler::remove(int seq_id) {
  auto match = [seq_id](const SeqSchedState* s) { return s->id == seq_id; };
  std::erase_if(running_, match);
  std::erase_if(waiting_, match);
  blocks_.release(seq_id);
}

void Scheduler::preempt_newest(StepPlan& plan) {
  SeqSchedState* victim = running_.back();
  running_.pop_back();
  blocks_.release(victim->id);
  victim->n_computed = 0;  // recompute: prompt and generated tokens are prefilled again on readmission
  waiting_.push_front(victim);
  plan.preempted.push_back(victim->id);
}

StepPlan Scheduler::schedule() {
  StepPlan plan;
  int budget = config_.max_step_tokens;
  auto take = [&](SeqSchedState* s, int n) {
    plan.chunks.push_back({s->id, s->n_computed, n, s->n_computed + n == s->n_tokens});
    plan.n_tokens += n;
    budget -= n;
  };

  // 1. Decodes. Victims come from the back, which this loop has not reached yet, or is the current sequence.
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    SeqSchedState* s = running_[i];
    if (s->n_tokens - s->n_computed != 1) continue;
    bool self_preempted = false;
    while (!blocks_.reserve(s->id, s->n_tokens)) {
      self_preempted = running_.back() == s;
      preempt_newest(plan);
      if (self_preempted) break;
    }
    if (self_preempted) break;
    take(s, 1);
  }

  // 2. Prefill chunks of admitted sequences (their prompt blocks were reserved at admission).
  for (SeqSchedState* s : running_) {
    if (budget == 0) break;
    const int need = s->n_tokens - s->n_computed;
    if (need <= 1) continue;
    TESSERA_CHECK(blocks_.missing_blocks(s->id, s->n_tokens) == 0);
    take(s, std::min(need, budget));
  }

  // 3. Admission, first come first served: a sequence that does not fit blocks everyone behind it (no starvation).
  while (plan.preempted.empty() && !waiting_.empty() && budget > 0 &&
         static_cast<int>(running_.size()) < config_.max_num_seqs) {
    SeqSchedState* s = waiting_.front();
    const int need_blocks = blocks_.missing_blocks(s->id, s->n_tokens);
    const int watermark = running_.empty() ? 0 : config_.watermark_blocks;
    if (need_blocks + watermark > blocks_.num_free()) break;
    TESSERA_CHECK(blocks_.reserve(s->id, s->n_tokens));
    waiting_.pop_front();
    running_.push_back(s);
    plan.admitted.push_back(s->id);
    take(s, std::min(s->n_tokens - s->n_computed, budget));
  }
  return plan;
}

}  // namespace tessera::serving
