// A Communicator that forwards every call to another one and adds up the wall time spent inside them: how
// benchmarks report the communication share of a step without touching the model code.
#pragma once

#include <chrono>
#include <string>

#include "parallel/communicator.h"

namespace tessera {

class TimedCommunicator final : public Communicator {
 public:
  explicit TimedCommunicator(Communicator& inner) : inner_(inner) {}

  double seconds() const { return seconds_; }
  void reset() { seconds_ = 0.0; }

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string name() const override { return inner_.name(); }
  bool device_memory() const override { return inner_.device_memory(); }
  void all_reduce_sum(float* data, size_t count) override {
    timed([&] { inner_.all_reduce_sum(data, count); });
  }
  void send(const void* data, size_t bytes, int dst, int tag) override {
    timed([&] { inner_.send(data, bytes, dst, tag); });
  }
  void recv(void* data, size_t bytes, int src, int tag) override {
    timed([&] { inner_.recv(data, bytes, src, tag); });
  }
  uint64_t start_send(const void* data, size_t bytes, int dst, int tag) override {
    uint64_t id = 0;
    timed([&] { id = inner_.start_send(data, bytes, dst, tag); });
    return id;
  }
  void wait_send(uint64_t id) override {
    timed([&] { inner_.wait_send(id); });
  }
  void broadcast(void* data, size_t bytes, int root) override {
    timed([&] { inner_.broadcast(data, bytes, root); });
  }
  void all_gather_bytes(const void* in, size_t bytes_per_rank, void* out) override {
    timed([&] { inner_.all_gather_bytes(in, bytes_per_rank, out); });
  }
  ArgmaxCandidate argmax_all(ArgmaxCandidate local) override {
    ArgmaxCandidate best;
    timed([&] { best = inner_.argmax_all(local); });
    return best;
  }
  void barrier() override {
    timed([&] { inner_.barrier(); });
  }
  void send_message(const std::string& message, int dst, int tag) override {
    timed([&] { inner_.send_message(message, dst, tag); });
  }
  bool try_recv_message(int tag, int* src, std::string* message) override {
    bool got = false;
    timed([&] { got = inner_.try_recv_message(tag, src, message); });
    return got;
  }
  std::string recv_message(int src, int tag) override {
    std::string message;
    timed([&] { message = inner_.recv_message(src, tag); });
    return message;
  }

 private:
  template <typename F>
  void timed(F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  Communicator& inner_;
  double seconds_ = 0.0;
};

}  // namespace tessera
