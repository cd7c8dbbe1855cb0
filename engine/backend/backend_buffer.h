// Memory owned in a backend's memory space (host memory for the CPU backends, device memory for CUDA), returned
// by Backend::allocate. Move-only; the memory is freed when the buffer is destroyed.
#pragma once

#include <cstddef>
#include <memory>

namespace tessera {

class BackendBuffer {
 public:
  // Whatever keeps the memory alive (an aligned host block, a DeviceBuffer); its destructor frees it.
  struct Owner {
    virtual ~Owner() = default;
  };

  BackendBuffer() = default;
  BackendBuffer(void* data, size_t bytes, std::unique_ptr<Owner> owner)
      : data_(data), bytes_(bytes), owner_(std::move(owner)) {}

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }  // as asked for (the block may be larger)
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  std::unique_ptr<Owner> owner_;
};

// `bytes` of zeroed host memory, 64-byte aligned (what the CPU backends allocate).
BackendBuffer allocate_host_buffer(size_t bytes);

}  // namespace tessera
