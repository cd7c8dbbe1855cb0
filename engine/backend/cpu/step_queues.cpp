#include "engine/backend/cpu/step_queues.h"

#include <algorithm>

#include "engine/core/check.h"

namespace tessera::cpu {

namespace {

constexpr uint64_t pack(uint64_t front, uint64_t back) {
  return back << 32 | front;
}
constexpr int64_t front_of(uint64_t v) {
  return static_cast<int64_t>(v & 0xffffffffu);
}
constexpr int64_t back_of(uint64_t v) {
  return static_cast<int64_t>(v >> 32);
}

}  // namespace

StepQueues::StepQueues(int slots) : slots_(slots), runs_(std::make_unique<Run[]>(static_cast<size_t>(slots))) {
  TESSERA_CHECK(slots >= 1);
}

void StepQueues::reset(int slot, int64_t steps) {
  TESSERA_CHECK(slot >= 0 && slot < slots_ && steps >= 0 && steps <= 0xffffffffLL);
  runs_[static_cast<size_t>(slot)].front_back.store(pack(0, static_cast<uint64_t>(steps)), std::memory_order_relaxed);
}

StepQueues::Taken StepQueues::take(int slot, int64_t most, bool from_back) {
  std::atomic<uint64_t>& fb = runs_[static_cast<size_t>(slot)].front_back;
  uint64_t v = fb.load(std::memory_order_relaxed);
  for (;;) {
    const int64_t front = front_of(v), back = back_of(v);
    const int64_t count = std::min(most, back - front);
    if (count <= 0) return {from_back ? back : front, 0};
    const uint64_t rest = from_back ? pack(static_cast<uint64_t>(front), static_cast<uint64_t>(back - count))
                                    : pack(static_cast<uint64_t>(front + count), static_cast<uint64_t>(back));
    if (fb.compare_exchange_weak(v, rest, std::memory_order_relaxed)) return {from_back ? back - count : front, count};
  }
}

}  // namespace tessera::cpu
