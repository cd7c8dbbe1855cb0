// Load balancing for the batch-1 decode drivers. Each slot of a parallel op owns a run of steps (one stream kernel
// call each); its thread takes them from the front in blocks and, once they are gone, takes the other slots' from
// the back. A thread that was descheduled or slowed (a shared VM steals a vCPU for milliseconds at a time) then no
// longer holds up the whole op: static halves left one thread of two waiting 19% of a slow 2-thread decode.
// Which thread computes a step never changes its result.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

namespace tessera::cpu {

class StepQueues {
 public:
  explicit StepQueues(int slots);
  StepQueues(const StepQueues&) = delete;
  StepQueues& operator=(const StepQueues&) = delete;

  // Gives slot its steps [0, steps), replacing what was left of the last op. Call for every slot of an op before any
  // thread takes from it.
  void reset(int slot, int64_t steps);

  // Up to `most` steps from the front (the owner) or the back (any other thread) of slot's remaining run:
  // [first, first + count), count 0 once the run is empty.
  struct Taken {
    int64_t first, count;
  };
  Taken take_front(int slot, int64_t most) { return take(slot, most, false); }
  Taken take_back(int slot, int64_t most) { return take(slot, most, true); }

 private:
  Taken take(int slot, int64_t most, bool from_back);

  // The remaining run [front, back) of one slot, both in one word so that owner and thieves agree with one CAS.
  struct alignas(64) Run {
    std::atomic<uint64_t> front_back{0};
  };
  int slots_;
  std::unique_ptr<Run[]> runs_;
};

// Runs visit(slot, k) for every step k of `slot`, then of the other slots of [0, n_slots) as long as any remain
// (their last steps first). Every step is visited exactly once across the threads running this for the op's slots.
// Steps are taken `block` at a time and visited in increasing order within a block.
template <typename Visit>
void run_steps(StepQueues& queues, int slot, int n_slots, int64_t block, const Visit& visit) {
  for (StepQueues::Taken t; (t = queues.take_front(slot, block)).count > 0;) {
    for (int64_t k = t.first; k < t.first + t.count; ++k) visit(slot, k);
  }
  for (int o = 1; o < n_slots; ++o) {
    const int victim = (slot + o) % n_slots;
    for (StepQueues::Taken t; (t = queues.take_back(victim, block)).count > 0;) {
      for (int64_t k = t.first; k < t.first + t.count; ++k) visit(victim, k);
    }
  }
}

}  // namespace tessera::cpu
