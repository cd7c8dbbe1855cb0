#include "engine/runtime/model_runner.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "engine/core/check.h"

namespace tessera {

namespace {

enum Op : int32_t { kStep = 1, kOpen = 2, kClose = 3, kStop = 4, kGrow = 5 };
// Point-to-point tags. Plans go over the control groups, the rest over the data groups.
constexpr int kPlanTag = 1, kChunksTag = 2, kHiddenTag = 3, kLogitsTag = 4;
constexpr int kMaxSlots = 1 << 20;

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

Error pool_exhausted(int capacity, int need, int free) {
  return Error("the KV pool has " + std::to_string(free) + " free blocks; a sequence of " + std::to_string(capacity) +
               " positions needs " + std::to_string(need) + " (raise --kv-memory)");
}

}  // namespace

ModelRunner::ModelRunner(LlamaModel& model, const ParallelGroups* groups, int max_in_flight,
                         std::optional<PagedKvOptions> paged)
    : model_(model), shard_(model.shard()) {
  TESSERA_CHECK(max_in_flight >= 1);
  if (paged) pool_ = model_.make_kv_pool(paged->num_blocks, paged->block_size);
  if (groups != nullptr) {
    groups_ = *groups;
    TESSERA_CHECK(groups_->world != nullptr);
    leader_ = groups_->world->rank() == 0;
    TESSERA_CHECK_MSG(groups_->world->size() == shard_.tp_size * shard_.pp_size &&
                          groups_->world->rank() == shard_.pp_stage * shard_.tp_size + shard_.tp_rank,
                      "world ranks must be laid out stage-major (rank = pp_stage * tp + tp_rank)");
    if (shard_.tp_size > 1)
      TESSERA_CHECK(groups_->tp && groups_->tp_control && groups_->tp->size() == shard_.tp_size &&
                    groups_->tp_control->size() == shard_.tp_size);
    if (shard_.pp_size > 1) {
      TESSERA_CHECK(groups_->pp && groups_->pp_control && groups_->pp->size() == shard_.pp_size &&
                    groups_->pp->rank() == shard_.pp_stage && groups_->pp_control->rank() == shard_.pp_stage);
      pp_exchange_ = std::make_unique<ActivationExchange>(model_.backend(), *groups_->pp,
                                                          sz(model_.max_batch_tokens()) * sz(model_.config().dim));
    }
    for (Communicator* host : {groups_->world, groups_->tp, groups_->pp})
      TESSERA_CHECK_MSG(host == nullptr || !host->device_memory(), "the runner's groups carry host memory");
  } else {
    TESSERA_CHECK_MSG(shard_.whole(), "a sharded model needs its parallel groups");
  }
  max_in_flight_ = shard_.pp_size > 1 ? max_in_flight : 1;
  // The last stage keeps one logits buffer per step that may be in flight: the leader has received the logits
  // of step j - max_in_flight before it starts step j, so reusing that buffer never waits on the leader.
  if (shard_.last_stage()) {
    logits_ring_.resize(sz(max_in_flight_));
    ring_send_.assign(sz(max_in_flight_), 0);
  }
}

ModelRunner::~ModelRunner() {
  if (!leader_ || stopped_ || !groups_) return;
  try {
    stop_workers();
  } catch (...) {
    // A failure here ends the job through the communicator; nothing else can be done in a destructor.
  }
}

int ModelRunner::slot_capacity(int slot) const {
  if (slot < 0 || sz(slot) >= slots_.size() || !slots_[sz(slot)]) return 0;
  return slots_[sz(slot)]->capacity();
}

void ModelRunner::open_slot(int slot, int capacity) {
  TESSERA_CHECK(leader_ && !stopped_);
  if (slot < 0 || slot >= kMaxSlots) throw Error("sequence slot " + std::to_string(slot) + " is out of range");
  if (capacity < 1 || capacity > config().max_seq_len)
    throw Error("a sequence of " + std::to_string(capacity) + " positions does not fit the model's context of " +
                std::to_string(config().max_seq_len));
  if (pool_) {
    // Opening replaces the slot's cache: its blocks come back first.
    const int held = slot_capacity(slot) / pool_->block_size();
    const int need = pool_->blocks_for(capacity);
    if (need > pool_->num_free() + held) throw pool_exhausted(capacity, need, pool_->num_free() + held);
  }
  const Plan plan{kOpen, 0, 0, 0, slot, capacity};
  send_plan(plan);
  apply_slot_op(plan);
  forward_plan(plan);
}

void ModelRunner::close_slot(int slot) {
  TESSERA_CHECK(leader_ && !stopped_);
  if (slot_capacity(slot) == 0) return;
  const Plan plan{kClose, 0, 0, 0, slot, 0};
  send_plan(plan);
  apply_slot_op(plan);
  forward_plan(plan);
}

void ModelRunner::grow_slot(int slot, int capacity, int keep) {
  TESSERA_CHECK(leader_ && !stopped_);
  const int old_capacity = slot_capacity(slot);
  TESSERA_CHECK_MSG(old_capacity > 0, "grow_slot: slot " + std::to_string(slot) + " is not open");
  TESSERA_CHECK(keep >= 0 && keep <= old_capacity && keep <= capacity);
  if (capacity > config().max_seq_len)
    throw Error("a sequence of " + std::to_string(capacity) + " positions does not fit the model's context of " +
                std::to_string(config().max_seq_len));
  if (pool_) {
    const int need = slots_[sz(slot)]->blocks_missing(capacity);
    if (need > pool_->num_free()) throw pool_exhausted(capacity, need, pool_->num_free());
  }
  const Plan plan{kGrow, 0, keep, 0, slot, capacity};  // n_rows carries `keep`
  send_plan(plan);
  apply_slot_op(plan);
  forward_plan(plan);
}

void ModelRunner::validate(std::span<const StepChunk> chunks, std::span<const int> tokens) const {
  const ModelConfig& c = config();
  if (chunks.empty()) throw Error("a step needs at least one sequence");
  int64_t rows = 0;
  for (const StepChunk& ch : chunks) {
    const int capacity = slot_capacity(ch.slot);
    if (capacity == 0) throw Error("sequence slot " + std::to_string(ch.slot) + " is not open");
    if (ch.n_tokens < 1) throw Error("a sequence in a step has no tokens");
    if (ch.logits < StepChunk::kNoRows || ch.logits > StepChunk::kAllRows)
      throw Error("a sequence in a step asks for logits mode " + std::to_string(ch.logits));
    const int64_t end = static_cast<int64_t>(ch.pos0) + ch.n_tokens;
    if (ch.pos0 < 0 || end > capacity || end > c.max_seq_len)
      throw Error("sequence of " + std::to_string(end) + " tokens exceeds the context (" +
                  std::to_string(std::min(capacity, c.max_seq_len)) + " tokens)");
    rows += ch.n_tokens;
  }
  if (rows != static_cast<int64_t>(tokens.size())) throw Error("a step's token count does not match its sequences");
  if (rows > max_batch_tokens())
    throw Error("a batch of " + std::to_string(rows) + " tokens exceeds the model's batch limit of " +
                std::to_string(max_batch_tokens()) + " tokens");
  for (int t : tokens)
    if (t < 0 || t >= c.vocab_size)
      throw Error("token id " + std::to_string(t) + " is outside the vocabulary (" + std::to_string(c.vocab_size) +
                  ")");
}

void ModelRunner::begin_step(std::span<const StepChunk> chunks, std::span<const int> tokens, bool all_rows) {
  TESSERA_CHECK(leader_ && !stopped_);
  validate(chunks, tokens);
  TESSERA_CHECK_MSG(in_flight() < max_in_flight_, "too many steps in flight; finish one first");
  chunks_.assign(chunks.begin(), chunks.end());
  tokens_.assign(tokens.begin(), tokens.end());
  const Plan plan{kStep, static_cast<int32_t>(chunks.size()), static_cast<int32_t>(tokens.size()), all_rows ? 1 : 0, 0,
                  0};
  send_plan(plan);
  execute_step(plan);
  pending_.push_back(logit_rows(plan));
}

void ModelRunner::finish_step(float* logits) {
  TESSERA_CHECK(leader_ && !pending_.empty());
  const int rows = pending_.front();
  pending_.pop_front();
  const size_t floats = sz(rows) * sz(config().vocab_size);
  if (floats == 0) return;
  if (shard_.pp_size == 1) {
    std::memcpy(logits, logits_ring_[0].data(), floats * sizeof(float));
  } else {
    const int last = (shard_.pp_size - 1) * shard_.tp_size;  // the last stage's first tensor-parallel rank
    groups_->world->recv(logits, floats * sizeof(float), last, kLogitsTag);
  }
}

void ModelRunner::stop_workers() {
  if (!leader_ || stopped_) return;
  if (groups_) {
    std::vector<float> drain;
    while (!pending_.empty()) {
      drain.resize(sz(std::max(1, pending_.front())) * sz(config().vocab_size));
      finish_step(drain.data());
    }
    const Plan plan{kStop, 0, 0, 0, 0, 0};
    send_plan(plan);
    forward_plan(plan);
  }
  stopped_ = true;
}

void ModelRunner::serve() {
  TESSERA_CHECK_MSG(!leader_ && groups_, "serve() is for the worker ranks of a parallel job");
  for (;;) {
    const Plan plan = receive_plan();
    switch (plan.op) {
      case kStep:
        execute_step(plan);
        break;
      case kOpen:
      case kClose:
      case kGrow:
        apply_slot_op(plan);
        forward_plan(plan);
        break;
      case kStop:
        forward_plan(plan);
        for (uint64_t& id : ring_send_)
          if (id != 0) groups_->world->wait_send(std::exchange(id, 0));
        return;
      default:
        TESSERA_CHECK_MSG(false, "unknown plan operation " + std::to_string(plan.op));
    }
  }
}

int ModelRunner::logit_rows(const Plan& plan) const {
  if (plan.all_rows) return plan.n_rows;
  int rows = 0;
  for (const StepChunk& c : chunks_) rows += c.logits == StepChunk::kAllRows ? c.n_tokens : c.logits != 0 ? 1 : 0;
  return rows;
}

void ModelRunner::send_plan(const Plan& plan) {
  if (!groups_ || shard_.tp_size == 1) return;
  Plan copy = plan;
  groups_->tp_control->broadcast(&copy, sizeof(copy), 0);
  if (plan.op != kStep) return;
  groups_->tp->broadcast(chunks_.data(), sz(plan.n_chunks) * sizeof(StepChunk), 0);
  groups_->tp->broadcast(tokens_.data(), sz(plan.n_rows) * sizeof(int), 0);
}

ModelRunner::Plan ModelRunner::receive_plan() {
  Plan plan;
  if (shard_.first_stage()) {
    groups_->tp_control->broadcast(&plan, sizeof(plan), 0);
  } else {
    groups_->pp_control->recv(&plan, sizeof(plan), shard_.pp_stage - 1, kPlanTag);
  }
  if (plan.op != kStep) return plan;
  TESSERA_CHECK(plan.n_chunks > 0 && plan.n_rows > 0 && plan.n_rows <= max_batch_tokens());
  chunks_.resize(sz(plan.n_chunks));
  if (shard_.first_stage()) {
    tokens_.resize(sz(plan.n_rows));
    groups_->tp->broadcast(chunks_.data(), sz(plan.n_chunks) * sizeof(StepChunk), 0);
    groups_->tp->broadcast(tokens_.data(), sz(plan.n_rows) * sizeof(int), 0);
  } else {
    groups_->pp->recv(chunks_.data(), sz(plan.n_chunks) * sizeof(StepChunk), shard_.pp_stage - 1, kChunksTag);
  }
  return plan;
}

void ModelRunner::forward_plan(const Plan& plan) {
  if (!groups_ || shard_.last_stage()) return;
  groups_->pp_control->send(&plan, sizeof(plan), shard_.pp_stage + 1, kPlanTag);
}

void ModelRunner::apply_slot_op(const Plan& plan) {
  TESSERA_CHECK(plan.slot >= 0 && plan.slot < kMaxSlots);
  if (plan.op == kOpen) {
    if (sz(plan.slot) >= slots_.size()) slots_.resize(sz(plan.slot) + 1);
    std::optional<KvCache>& slot = slots_[sz(plan.slot)];
    slot.reset();  // free the old cache (or its blocks) before making the new one
    if (pool_) {
      slot.emplace(*pool_);
      slot->reserve(plan.capacity);  // the leader checked the pool; every rank's pool is in the same state
    } else {
      slot.emplace(model_.make_cache(plan.capacity));
    }
  } else if (plan.op == kGrow && pool_) {
    std::optional<KvCache>& slot = slots_.at(sz(plan.slot));
    TESSERA_CHECK(slot.has_value());
    slot->reserve(plan.capacity);  // new blocks only: the rows already written stay where they are
  } else if (plan.op == kGrow) {
    std::optional<KvCache>& slot = slots_.at(sz(plan.slot));
    TESSERA_CHECK(slot.has_value());
    KvCache grown = model_.make_cache(plan.capacity);
    const int keep = plan.n_rows;
    for (int l = 0; l < grown.n_layers(); ++l) {
      const KvLayer from = slot->layer(l), to = grown.layer(l);
      TESSERA_CHECK(from.stride == to.stride && keep <= from.capacity && keep <= to.capacity);
      // Rows 0..keep-1 are consecutive in both caches; the copy stays in the backend's memory.
      const size_t bytes = sz(keep) * sz(from.stride) * sizeof(float);
      model_.backend().copy(to.k_row(0), from.k_row(0), bytes);
      model_.backend().copy(to.v_row(0), from.v_row(0), bytes);
    }
    slot.reset();
    slot.emplace(std::move(grown));
  } else if (sz(plan.slot) < slots_.size()) {
    slots_[sz(plan.slot)].reset();
  }
}

void ModelRunner::execute_step(const Plan& plan) {
  const ModelConfig& c = config();
  seq_chunks_.clear();
  for (const StepChunk& ch : chunks_) {
    TESSERA_CHECK_MSG(slot_capacity(ch.slot) > 0, "plan names a closed slot " + std::to_string(ch.slot));
    seq_chunks_.push_back(
        {&*slots_[sz(ch.slot)], ch.pos0, ch.n_tokens, ch.logits != 0, ch.logits == StepChunk::kAllRows});
  }
  const size_t hidden_floats = sz(plan.n_rows) * sz(c.dim);
  if (shard_.first_stage()) {
    model_.embed({tokens_.data(), sz(plan.n_rows)});
  } else {
    pp_exchange_->recv(model_.hidden(), hidden_floats, shard_.pp_stage - 1, kHiddenTag);
  }
  model_.run_layers(seq_chunks_);
  if (!shard_.last_stage()) {
    const int next = shard_.pp_stage + 1;
    groups_->pp_control->send(&plan, sizeof(plan), next, kPlanTag);
    groups_->pp->send(chunks_.data(), chunks_.size() * sizeof(StepChunk), next, kChunksTag);
    pp_exchange_->send(model_.hidden(), hidden_floats, next, kHiddenTag);
    return;
  }
  const int rows = logit_rows(plan);
  if (rows == 0) return;
  const size_t k = ring_next_;
  ring_next_ = (ring_next_ + 1) % logits_ring_.size();
  if (ring_send_[k] != 0) groups_->world->wait_send(std::exchange(ring_send_[k], 0));
  std::vector<float>& out = logits_ring_[k];
  const size_t floats = sz(rows) * sz(c.vocab_size);
  if (out.size() < floats) out.resize(floats);
  model_.head(seq_chunks_, plan.all_rows != 0, out.data());
  if (!leader_ && shard_.tp_rank == 0)
    ring_send_[k] = groups_->world->start_send(out.data(), floats * sizeof(float), 0, kLogitsTag);
}

}  // namespace tessera
