// Upload of model weights into device memory. upload_matrix repacks a host Matrix (any dtype, canonical layout)
// into the device layout (device_layout.h) and returns a Matrix view of the device copy; the copies live as long
// as the DeviceWeightStore. The host formats are unchanged.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/backend/cuda/device_layout.h"
#include "engine/backend/cuda/device_pool.h"
#include "engine/core/tensor.h"

namespace tessera::cuda {

// The device-layout bytes of a host matrix (host memory; what upload_matrix copies). Exposed for tests. The
// returned layout's dtype/group may differ from the host's for 2:4 sparse types (see device_layout.h).
struct RepackedMatrix {
  DeviceLayout layout;
  std::vector<uint8_t> bytes;
};
RepackedMatrix repack_for_device(const Matrix& host);

// Element (r, c) of a matrix in device layout, read from host memory (tests; the kernels have their own).
float device_layout_element(const DeviceLayout& layout, const uint8_t* bytes, int64_t r, int64_t c);

// Owns device copies of weights.
class DeviceWeightStore {
 public:
  // Device view of `host` (repacked; dtype/group as in device_layout.h).
  Matrix upload_matrix(const Matrix& host);
  // Device copy of `count` floats (norm weights, biases, RoPE tables).
  const float* upload_floats(const float* host, size_t count);
  size_t bytes() const { return bytes_; }

 private:
  std::vector<DeviceBuffer> buffers_;
  size_t bytes_ = 0;
};

// The layout of a device Matrix view (as returned by upload_matrix).
inline DeviceLayout layout_of(const Matrix& m) {
  return DeviceLayout{m.dtype, m.rows, m.cols, is_grouped(m.dtype) ? m.group : 0};
}

}  // namespace tessera::cuda
