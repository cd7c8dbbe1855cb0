// Device memory: DeviceBuffer (one cudaMalloc, RAII) and DevicePool, one arena per device reserved once, from
// which the backend takes every scratch buffer so the step loop never calls cudaMalloc. The offset bookkeeping
// (ArenaAllocator) is plain host code, tested without a GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>

namespace tessera::cuda {

// First-fit allocator of [0, capacity) in `align`-byte units with coalescing of freed neighbours.
class ArenaAllocator {
 public:
  explicit ArenaAllocator(size_t capacity, size_t align = 256);
  // Offset of a free range of at least `bytes` (rounded up to the alignment); nullopt when none is large enough.
  std::optional<size_t> allocate(size_t bytes);
  // Frees a range returned by allocate (the same offset; the size is remembered).
  void free(size_t offset);
  size_t capacity() const { return capacity_; }
  size_t used() const { return used_; }
  size_t largest_free() const;

 private:
  size_t capacity_;
  size_t align_;
  size_t used_ = 0;
  std::map<size_t, size_t> free_;  // offset -> size, disjoint and never adjacent
  std::map<size_t, size_t> live_;  // offset -> size
};

// One device allocation, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

class DevicePool;

// A range of a DevicePool, returned to it on destruction. Work queued on the pool's stream may still use the
// memory after the block is released: that is safe because every user of the pool queues on that one stream,
// so later work that reuses the range runs after it.
class PoolBlock {
 public:
  PoolBlock() = default;
  ~PoolBlock();
  PoolBlock(PoolBlock&& o) noexcept;
  PoolBlock& operator=(PoolBlock&& o) noexcept;
  PoolBlock(const PoolBlock&) = delete;
  PoolBlock& operator=(const PoolBlock&) = delete;

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  friend class DevicePool;
  PoolBlock(DevicePool* pool, void* ptr, size_t offset, size_t bytes)
      : pool_(pool), ptr_(ptr), offset_(offset), bytes_(bytes) {}
  void release();
  DevicePool* pool_ = nullptr;
  void* ptr_ = nullptr;
  size_t offset_ = 0;
  size_t bytes_ = 0;
};

// The arena of one device: one cudaMalloc of `capacity` bytes at construction.
class DevicePool {
 public:
  explicit DevicePool(size_t capacity);
  // Throws tessera::Error when no free range is large enough (the message says how large the pool is).
  PoolBlock allocate(size_t bytes);
  size_t capacity() const { return arena_.capacity(); }
  size_t used() const;

 private:
  friend class PoolBlock;
  void free(size_t offset);
  DeviceBuffer memory_;
  mutable std::mutex mu_;
  ArenaAllocator arena_;
};

}  // namespace tessera::cuda
