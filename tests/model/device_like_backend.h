// A backend for testing the model's device path on the CPU: it computes with CpuBackend but says its memory is not
// host memory, so the model uploads its weights and keeps scratch, KV caches, norms, biases and the RoPE table in
// backend memory and copies logits back. Every op checks that each pointer it gets lies in memory this backend
// allocated or uploaded, so a host pointer slipping through (a loaded weight, a norm, the caller's logits) fails the
// test, in CI, without a GPU. It also counts the ops queued since the last synchronization, as a GPU stream would
// hold them, so tests can check that a device communicator only ever sees finished work.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"

namespace tessera::testing {

class DeviceLikeBackend final : public Backend {
 public:
  std::string name() const override { return "device-like(cpu)"; }
  bool host_memory() const override { return false; }

  // Freed buffers stop counting as backend memory: the host heap may hand their addresses out again (to a later
  // model's host vectors, say). The backend outlives every buffer it allocates in these tests.
  BackendBuffer allocate(size_t bytes) override {
    struct Tracked final : BackendBuffer::Owner {
      BackendBuffer host;
      DeviceLikeBackend* backend = nullptr;
      ~Tracked() override { backend->disown(host.data()); }
    };
    auto owner = std::make_unique<Tracked>();
    owner->host = allocate_host_buffer(bytes);
    owner->backend = this;
    void* data = owner->host.data();
    own(data, bytes);
    return BackendBuffer(data, bytes, std::move(owner));
  }
  void copy_to_backend(void* dst, const void* host_src, size_t bytes) override {
    expect_owned(dst, "copy_to_backend destination");
    std::memcpy(dst, host_src, bytes);
  }
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override {
    ops_since_sync = 0;
    expect_owned(src, "copy_to_host source");
    EXPECT_FALSE(owns(host_dst)) << "copy_to_host into backend memory";
    std::memcpy(host_dst, src, bytes);
    ++copies_to_host;
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    ++ops_since_sync;
    expect_owned(dst, "copy destination");
    expect_owned(src, "copy source");
    std::memcpy(dst, src, bytes);
  }
  Matrix upload(const Matrix& host) override {
    BackendBuffer& b = uploads_.emplace_back(allocate(host.bytes()));
    if (host.bytes() > 0) std::memcpy(b.data(), host.data, host.bytes());
    Matrix m = host;
    m.data = b.data();
    ++uploaded;
    return m;
  }

  void matmul(const float* x, int n, const Matrix& w, const float* bias, float* y) override {
    expect_owned(x, y, w, bias);
    ++ops_since_sync;
    cpu_.matmul(x, n, w, bias, y);
  }
  void matmul_rows(const float* x, int n, const Matrix& w, const float* bias, float* y) override {
    expect_owned(x, y, w, bias);
    ++ops_since_sync;
    cpu_.matmul_rows(x, n, w, bias, y);
  }
  void matmul_silu_mul(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) override {
    expect_owned(x, out, gate, nullptr);
    expect_owned(up.data, "up weight");
    ++ops_since_sync;
    cpu_.matmul_silu_mul(x, n, gate, up, out);
  }
  void matmul_silu_mul_rows(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) override {
    expect_owned(x, out, gate, nullptr);
    expect_owned(up.data, "up weight");
    ++ops_since_sync;
    cpu_.matmul_silu_mul_rows(x, n, gate, up, out);
  }
  void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) override {
    expect_owned(x, "rmsnorm x");
    expect_owned(w, "rmsnorm weight");
    expect_owned(y, "rmsnorm y");
    ++ops_since_sync;
    cpu_.rmsnorm(x, w, n, dim, eps, y);
  }
  void rope(float* x, int n, int n_heads, const int* positions, const RopeTable& table) override {
    expect_owned(x, "rope x");
    expect_owned(table.cos, "rope cos");
    expect_owned(table.sin, "rope sin");
    EXPECT_FALSE(owns(positions)) << "positions are a host array";
    ++ops_since_sync;
    cpu_.rope(x, n, n_heads, positions, table);
  }
  void attention(const float* q, int n, int pos0, const KvLayer& kv, const AttentionShape& shape, float* out) override {
    expect_owned(q, "attention q");
    expect_owned(kv.k, "KV cache keys");
    expect_owned(kv.v, "KV cache values");
    expect_owned(out, "attention out");
    ++ops_since_sync;
    cpu_.attention(q, n, pos0, kv, shape, out);
  }
  void add(float* y, const float* x, size_t count) override {
    expect_owned(y, "add y");
    expect_owned(x, "add x");
    ++ops_since_sync;
    cpu_.add(y, x, count);
  }
  void embedding(const Matrix& table, const int* tokens, int n, float* out) override {
    expect_owned(table.data, "embedding table");
    expect_owned(out, "embedding out");
    EXPECT_FALSE(owns(tokens)) << "tokens are a host array";
    ++ops_since_sync;
    cpu_.embedding(table, tokens, n, out);
  }
  int argmax(const float* x, int n) override {
    expect_owned(x, "argmax x");
    ++ops_since_sync;
    return cpu_.argmax(x, n);
  }

  void synchronize() override { ops_since_sync = 0; }

  // True when p lies in memory this backend allocated (or uploaded into).
  bool owns(const void* p) const {
    const auto a = reinterpret_cast<uintptr_t>(p);
    for (const Range& r : ranges_)
      if (a >= r.begin && a < r.end) return true;
    return false;
  }

  int copies_to_host = 0;
  int uploaded = 0;
  // Ops (and copies within backend memory) queued since the last synchronize() or copy_to_host, which waits: a
  // device communicator must find it 0, as an NCCL stream would otherwise race the backend's stream.
  int ops_since_sync = 0;

 private:
  struct Range {
    uintptr_t begin, end;
  };
  void own(const void* p, size_t bytes) {
    if (p != nullptr) ranges_.push_back({reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(p) + bytes});
  }
  void disown(const void* p) {
    std::erase_if(ranges_, [a = reinterpret_cast<uintptr_t>(p)](const Range& r) { return r.begin == a; });
  }
  void expect_owned(const void* p, const char* what) const {
    EXPECT_TRUE(p != nullptr && owns(p)) << what << " is not backend memory";
  }
  void expect_owned(const float* x, const float* y, const Matrix& w, const float* bias) const {
    expect_owned(x, "matmul x");
    expect_owned(y, "matmul y");
    expect_owned(w.data, "weight");
    if (bias != nullptr) expect_owned(bias, "bias");
  }

  CpuBackend cpu_{1};
  std::vector<Range> ranges_;  // live allocations; declared before uploads_, which give theirs back first
  std::vector<BackendBuffer> uploads_;
};

}  // namespace tessera::testing
