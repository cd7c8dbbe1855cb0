#include "engine/backend/backend_buffer.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>

namespace tessera {

namespace {

struct HostBlock final : BackendBuffer::Owner {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> memory;
};

// Large blocks come straight from the kernel: already zero, and pages are only committed when first written, so a
// KV pool sized for the worst case costs resident memory only for the rows sequences actually use.
struct MappedBlock final : BackendBuffer::Owner {
  void* memory = nullptr;
  size_t bytes = 0;
  ~MappedBlock() override {
    if (memory != nullptr) munmap(memory, bytes);
  }
};

constexpr size_t kMapThreshold = size_t{2} << 20;

}  // namespace

BackendBuffer allocate_host_buffer(size_t bytes) {
  constexpr size_t kAlign = 64;  // a cache line: the SIMD kernels' rows never straddle one at the start
  if (bytes == 0) return BackendBuffer();
  if (bytes >= kMapThreshold) {
    auto block = std::make_unique<MappedBlock>();
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    block->memory = p;
    block->bytes = bytes;
    return BackendBuffer(p, bytes, std::move(block));  // page aligned, zero
  }
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;  // aligned_alloc wants a multiple
  auto block = std::make_unique<HostBlock>();
  block->memory.reset(std::aligned_alloc(kAlign, rounded));
  if (!block->memory) throw std::bad_alloc();
  void* data = block->memory.get();
  std::memset(data, 0, rounded);
  return BackendBuffer(data, bytes, std::move(block));
}

}  // namespace tessera
