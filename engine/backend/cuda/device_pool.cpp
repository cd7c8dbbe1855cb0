#include "engine/backend/cuda/device_pool.h"

#include <algorithm>
#include <string>
#include <utility>

#include "engine/backend/cuda/cuda_check.h"

namespace tessera::cuda {

// ---- ArenaAllocator ----

ArenaAllocator::ArenaAllocator(size_t capacity, size_t align) : capacity_(capacity / align * align), align_(align) {
  TESSERA_CHECK(align > 0);
  if (capacity_ > 0) free_[0] = capacity_;
}

std::optional<size_t> ArenaAllocator::allocate(size_t bytes) {
  const size_t need = std::max<size_t>(align_, (bytes + align_ - 1) / align_ * align_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    const size_t off = it->first, size = it->second;
    free_.erase(it);
    if (size > need) free_[off + need] = size - need;
    live_[off] = need;
    used_ += need;
    return off;
  }
  return std::nullopt;
}

void ArenaAllocator::free(size_t offset) {
  const auto live = live_.find(offset);
  TESSERA_CHECK_MSG(live != live_.end(), "freeing an offset the arena did not hand out");
  size_t off = offset, size = live->second;
  live_.erase(live);
  used_ -= size;
  // Merge with the following and the preceding free range so fragments do not accumulate.
  auto next = free_.lower_bound(off);
  if (next != free_.end() && next->first == off + size) {
    size += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == off) {
      off = prev->first;
      size += prev->second;
      free_.erase(prev);
    }
  }
  free_[off] = size;
}

size_t ArenaAllocator::largest_free() const {
  size_t best = 0;
  for (const auto& [off, size] : free_) best = std::max(best, size);
  return best;
}

// ---- DeviceBuffer ----

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) TESSERA_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);  // no throw from a destructor; a failure here leaves nothing to undo
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

// ---- PoolBlock / DevicePool ----

PoolBlock::~PoolBlock() {
  release();
}

PoolBlock::PoolBlock(PoolBlock&& o) noexcept
    : pool_(std::exchange(o.pool_, nullptr)),
      ptr_(std::exchange(o.ptr_, nullptr)),
      offset_(o.offset_),
      bytes_(std::exchange(o.bytes_, 0)) {}

PoolBlock& PoolBlock::operator=(PoolBlock&& o) noexcept {
  if (this != &o) {
    release();
    pool_ = std::exchange(o.pool_, nullptr);
    ptr_ = std::exchange(o.ptr_, nullptr);
    offset_ = o.offset_;
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void PoolBlock::release() {
  if (pool_ != nullptr) pool_->free(offset_);
  pool_ = nullptr;
  ptr_ = nullptr;
  bytes_ = 0;
}

DevicePool::DevicePool(size_t capacity) : memory_(capacity), arena_(capacity) {}

PoolBlock DevicePool::allocate(size_t bytes) {
  std::lock_guard lock(mu_);
  const auto off = arena_.allocate(bytes);
  if (!off) {
    throw Error("CUDA device pool exhausted: " + std::to_string(bytes) + " bytes asked, " +
                std::to_string(arena_.largest_free()) + " largest free of " + std::to_string(arena_.capacity()) +
                " (raise CudaBackendOptions::pool_bytes)");
  }
  return PoolBlock(this, static_cast<uint8_t*>(memory_.data()) + *off, *off, bytes);
}

size_t DevicePool::used() const {
  std::lock_guard lock(mu_);
  return arena_.used();
}

void DevicePool::free(size_t offset) {
  std::lock_guard lock(mu_);
  arena_.free(offset);
}

}  // namespace tessera::cuda
