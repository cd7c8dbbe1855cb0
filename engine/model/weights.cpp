#include "engine/model/weights.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace tessera {

const MappedFile& WeightStore::add_file(MappedFile file) {
  files_.push_back(std::make_unique<MappedFile>(std::move(file)));
  return *files_.back();
}

void WeightStore::FreeDeleter::operator()(uint8_t* p) const { std::free(p); }

uint8_t* WeightStore::allocate(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, rounded == 0 ? 64 : rounded);
  buffers_.emplace_back(static_cast<uint8_t*>(p));
  allocated_bytes_ += rounded;
  return static_cast<uint8_t*>(p);
}

size_t WeightStore::mapped_bytes() const {
  size_t total = 0;
  for (const auto& f : files_) total += f->size();
  return total;
}

size_t ModelData::weight_bytes() const {
  // The embedding table is gathered one row per token, so only lm_head (tied or not) counts as read per token.
  size_t total = weights.lm_head.bytes();
  for (const auto& l : weights.layers)
    total += l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() + l.w_gate.bytes() + l.w_up.bytes() +
             l.w_down.bytes();
  return total;
}

}  // namespace tessera
