#include "engine/backend/backend_buffer.h"

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

}  // namespace

BackendBuffer allocate_host_buffer(size_t bytes) {
  constexpr size_t kAlign = 64;  // a cache line: the SIMD kernels' rows never straddle one at the start
  if (bytes == 0) return BackendBuffer();
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;  // aligned_alloc wants a multiple
  auto block = std::make_unique<HostBlock>();
  block->memory.reset(std::aligned_alloc(kAlign, rounded));
  if (!block->memory) throw std::bad_alloc();
  void* data = block->memory.get();
  std::memset(data, 0, rounded);
  return BackendBuffer(data, bytes, std::move(block));
}

}  // namespace tessera
