#include "engine/model/activation_exchange.h"

#include <string>

#include "engine/core/check.h"

namespace tessera {

ActivationExchange::ActivationExchange(Backend& backend, Communicator& comm, size_t max_floats)
    : backend_(backend), comm_(comm), max_floats_(max_floats) {
  if (backend.host_memory()) {
    TESSERA_CHECK_MSG(!comm.device_memory(),
                      comm.name() + " takes device memory but " + backend.name() + " computes in host memory");
    path_ = Path::kHost;
  } else if (comm.device_memory()) {
    path_ = Path::kDevice;
    gathered_ = backend.allocate(static_cast<size_t>(comm.size()) * max_floats * sizeof(float));
  } else {
    path_ = Path::kStaged;
    staging_.resize(max_floats);
  }
}

void ActivationExchange::check_fits(size_t count) const {
  TESSERA_CHECK_MSG(count <= max_floats_, "an exchange of " + std::to_string(count) + " floats is larger than the " +
                                              std::to_string(max_floats_) + " it was sized for");
}

float* ActivationExchange::staging(size_t count) {
  check_fits(count);
  return staging_.data();
}

void ActivationExchange::all_reduce_sum(float* data, size_t count) {
  switch (path_) {
    case Path::kHost:
      comm_.all_reduce_sum(data, count);
      return;
    case Path::kDevice:
      backend_.synchronize();
      comm_.all_reduce_sum(data, count);  // returns once complete, so the backend's next ops see the sum
      return;
    case Path::kStaged: {
      float* host = staging(count);
      backend_.copy_to_host(host, data, count * sizeof(float));
      comm_.all_reduce_sum(host, count);
      backend_.copy_to_backend(data, host, count * sizeof(float));
      return;
    }
  }
}

void ActivationExchange::all_gather_to_host(const float* in, size_t count, float* host_out) {
  switch (path_) {
    case Path::kHost:
      comm_.all_gather(in, count, host_out);
      return;
    case Path::kDevice: {
      check_fits(count);
      const size_t all = static_cast<size_t>(comm_.size()) * count;
      backend_.synchronize();
      comm_.all_gather(in, count, gathered_.as<float>());
      backend_.copy_to_host(host_out, gathered_.as<float>(), all * sizeof(float));
      return;
    }
    case Path::kStaged: {
      float* host = staging(count);
      backend_.copy_to_host(host, in, count * sizeof(float));
      comm_.all_gather(host, count, host_out);
      return;
    }
  }
}

void ActivationExchange::send(const float* data, size_t count, int dst, int tag) {
  if (path_ == Path::kStaged) {
    float* host = staging(count);
    backend_.copy_to_host(host, data, count * sizeof(float));
    comm_.send(host, count * sizeof(float), dst, tag);
    return;
  }
  if (path_ == Path::kDevice) backend_.synchronize();
  comm_.send(data, count * sizeof(float), dst, tag);
}

void ActivationExchange::recv(float* data, size_t count, int src, int tag) {
  if (path_ == Path::kStaged) {
    float* host = staging(count);
    comm_.recv(host, count * sizeof(float), src, tag);
    backend_.copy_to_backend(data, host, count * sizeof(float));
    return;
  }
  if (path_ == Path::kDevice) backend_.synchronize();  // the ops that still read the old contents come first
  comm_.recv(data, count * sizeof(float), src, tag);
}

}  // namespace tessera
