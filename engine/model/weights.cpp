#include "engine/model/weights.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace tessera {

const MappedFile& WeightStore::add_file(MappedFile file) {
  files_.push_back(std::make_unique<MappedFile>(std::move(file)));
  return *files_.back();
}

WeightStore::Buffer::Buffer(Buffer&& o) noexcept
    : data(std::exchange(o.data, nullptr)), bytes(std::exchange(o.bytes, 0)), mapped(o.mapped) {}

WeightStore::Buffer::~Buffer() {
  if (data == nullptr) return;
  if (mapped) {
    ::munmap(data, bytes);
  } else {
    std::free(data);
  }
}

uint8_t* WeightStore::allocate(size_t bytes) {
  constexpr size_t kMapThreshold = size_t{1} << 20;
  const size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
  if (rounded >= kMapThreshold) {
    void* p = ::mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    buffers_.emplace_back(static_cast<uint8_t*>(p), rounded, true);
  } else {
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) throw std::bad_alloc();
    std::memset(p, 0, rounded);
    buffers_.emplace_back(static_cast<uint8_t*>(p), rounded, false);
  }
  allocated_bytes_ += rounded;
  return buffers_.back().data;
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
