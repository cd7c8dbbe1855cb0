// LlamaModel's device path on the CPU: a backend that computes with CpuBackend but says its memory is not host
// memory makes the model upload its weights, keep scratch, KV caches, norms, biases and the RoPE table in
// backend memory and copy logits back. Every op checks that each pointer it gets lies in memory this backend
// allocated or uploaded, so a host pointer slipping through (a loaded weight, a norm, the caller's logits) fails
// here, in CI, without a GPU. The logits must equal the CPU backend's bit for bit (the same kernels on the same
// numbers). Also: the host backends' memory interface, and what a device backend refuses.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "engine/model/llama_model.h"
#include "engine/runtime/generator.h"
#include "engine/runtime/model_runner.h"
#include "loaders/shard_weights.h"
#include "tests/model/tiny_model.h"

namespace tessera {
namespace {

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
    expect_owned(src, "copy_to_host source");
    EXPECT_FALSE(owns(host_dst)) << "copy_to_host into backend memory";
    std::memcpy(host_dst, src, bytes);
    ++copies_to_host;
  }
  void copy(void* dst, const void* src, size_t bytes) override {
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
    cpu_.matmul(x, n, w, bias, y);
  }
  void matmul_rows(const float* x, int n, const Matrix& w, const float* bias, float* y) override {
    expect_owned(x, y, w, bias);
    cpu_.matmul_rows(x, n, w, bias, y);
  }
  void matmul_silu_mul(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) override {
    expect_owned(x, out, gate, nullptr);
    expect_owned(up.data, "up weight");
    cpu_.matmul_silu_mul(x, n, gate, up, out);
  }
  void matmul_silu_mul_rows(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) override {
    expect_owned(x, out, gate, nullptr);
    expect_owned(up.data, "up weight");
    cpu_.matmul_silu_mul_rows(x, n, gate, up, out);
  }
  void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) override {
    expect_owned(x, "rmsnorm x");
    expect_owned(w, "rmsnorm weight");
    expect_owned(y, "rmsnorm y");
    cpu_.rmsnorm(x, w, n, dim, eps, y);
  }
  void rope(float* x, int n, int n_heads, const int* positions, const RopeTable& table) override {
    expect_owned(x, "rope x");
    expect_owned(table.cos, "rope cos");
    expect_owned(table.sin, "rope sin");
    EXPECT_FALSE(owns(positions)) << "positions are a host array";
    cpu_.rope(x, n, n_heads, positions, table);
  }
  void attention(const float* q, int n, int pos0, const KvLayer& kv, const AttentionShape& shape, float* out) override {
    expect_owned(q, "attention q");
    expect_owned(kv.k, "KV cache keys");
    expect_owned(kv.v, "KV cache values");
    expect_owned(out, "attention out");
    cpu_.attention(q, n, pos0, kv, shape, out);
  }
  void add(float* y, const float* x, size_t count) override {
    expect_owned(y, "add y");
    expect_owned(x, "add x");
    cpu_.add(y, x, count);
  }
  void embedding(const Matrix& table, const int* tokens, int n, float* out) override {
    expect_owned(table.data, "embedding table");
    expect_owned(out, "embedding out");
    EXPECT_FALSE(owns(tokens)) << "tokens are a host array";
    cpu_.embedding(table, tokens, n, out);
  }
  int argmax(const float* x, int n) override {
    expect_owned(x, "argmax x");
    return cpu_.argmax(x, n);
  }

  int copies_to_host = 0;
  int uploaded = 0;

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
  bool owns(const void* p) const {
    const auto a = reinterpret_cast<uintptr_t>(p);
    for (const Range& r : ranges_)
      if (a >= r.begin && a < r.end) return true;
    return false;
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

// Logits of every position: `prefill` tokens in one forward (in chunks of max_batch rows), then one decode step
// for each further token. [tokens][vocab].
std::vector<float> prefill_decode_logits(const ModelData& m, Backend& be, const std::vector<int>& tokens,
                                         size_t prefill, int max_batch) {
  LlamaModel model(m, be, max_batch);
  KvCache cache = model.make_cache(static_cast<int>(tokens.size()));
  const size_t V = static_cast<size_t>(m.config.vocab_size);
  std::vector<float> logits(tokens.size() * V, -1.0f);
  model.forward({tokens.data(), prefill}, 0, cache, LogitsMode::kAll, logits.data());
  for (size_t i = prefill; i < tokens.size(); ++i)
    model.forward({&tokens[i], 1}, static_cast<int>(i), cache, LogitsMode::kLast, logits.data() + i * V);
  return logits;
}

ModelConfig gqa_config() {
  ModelConfig c = testing::tiny_config(8, 2, /*qkv_bias=*/true);
  c.dim = 64;
  c.vocab_size = 67;
  return c;
}

TEST(DeviceMemory, LogitsEqualTheCpuBackendAndNoHostPointerReachesAnOp) {
  for (bool tied : {false, true}) {
    ModelConfig c = gqa_config();
    c.tied_embeddings = tied;
    const ModelData m = testing::tiny_model(c, DType::F32, 11);
    const std::vector<int> tokens{1, 5, 9, 22, 40, 3, 3, 17, 60, 2, 33, 12};
    CpuBackend cpu(1);
    DeviceLikeBackend dev;
    const std::vector<float> want = prefill_decode_logits(m, cpu, tokens, 7, 4);
    const std::vector<float> got = prefill_decode_logits(m, dev, tokens, 7, 4);
    EXPECT_EQ(got, want) << (tied ? "tied" : "untied");
    EXPECT_GT(dev.copies_to_host, 0);
    // 7 matrices per layer, the embeddings, and the lm_head unless it is the same view.
    EXPECT_EQ(dev.uploaded, 7 * c.n_layers + (tied ? 1 : 2));
  }
}

TEST(DeviceMemory, BatchAndRunnerOnADeviceBackendMatchTheCpuBackend) {
  const ModelData m = testing::tiny_model(gqa_config(), DType::BF16, 12);
  const size_t V = static_cast<size_t>(m.config.vocab_size);
  const std::vector<int> tokens{1, 4, 8, 15, 1, 9, 30, 2, 7};  // a 4-token prefill, a 5-token prefill
  const auto batch = [&](Backend& be) {
    LlamaModel model(m, be, 16);
    KvCache a = model.make_cache(8), b = model.make_cache(8);
    const SequenceChunk chunks[] = {{&a, 0, 4, true}, {&b, 0, 5, true}};
    std::vector<float> logits(2 * V);
    model.forward_batch(tokens, chunks, logits.data());
    // Then one decode each, as one batch of two single-token chunks.
    const int next[] = {3, 5};
    const SequenceChunk decodes[] = {{&a, 4, 1, true}, {&b, 5, 1, true}};
    logits.resize(4 * V);
    model.forward_batch(next, decodes, logits.data() + 2 * V);
    return logits;
  };
  CpuBackend cpu(1);
  DeviceLikeBackend dev;
  EXPECT_EQ(batch(dev), batch(cpu));

  const auto greedy = [&](Backend& be) {
    LlamaModel model(m, be, 8);
    ModelRunner runner(model);
    Generator gen(runner, nullptr);
    GenerationRequest req;
    req.prompt = {1, 6, 7};
    req.max_new_tokens = 20;
    req.sampling.temperature = 0.0f;
    req.stop_at_eos = false;
    return gen.generate(req).tokens;
  };
  EXPECT_EQ(greedy(dev), greedy(cpu));
}

TEST(DeviceMemory, ADeviceBackendRefusesPipelineShardsAndObservers) {
  const ModelConfig c = gqa_config();
  ModelData m = testing::tiny_model(c, DType::F32, 13);
  DeviceLikeBackend dev;
  {
    LlamaModel whole(m, dev, 4);
    struct Nothing final : ActivationObserver {
      void observe(int, LinearInput, const float*, int, int) override {}
    } observer;
    try {
      whole.set_observer(&observer);
      ADD_FAILURE() << "an observer on a device backend was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("CPU backend"), std::string::npos) << e.what();
    }
    whole.set_observer(nullptr);  // turning it off is fine
  }

  ShardRequest request;
  request.pp_size = 2;
  request.pp_stage = 1;
  shard_weights(m, plan_shard(c, request));
  const int uploads_before = dev.uploaded;
  try {
    LlamaModel stage(m, dev, 4);
    ADD_FAILURE() << "a pipeline stage on a device backend was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor/pipeline parallelism on the CUDA backend is not wired yet"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(dev.uploaded, uploads_before) << "refused before uploading anything";
}

TEST(DeviceMemory, HostBackendsUseTheLoadedWeightsAndZeroedAlignedBuffers) {
  const ModelData m = testing::tiny_model(gqa_config(), DType::F32, 14);
  CpuBackend cpu(1);
  const Matrix& w = m.weights.layers[0].wq;
  const Matrix up = cpu.upload(w);
  EXPECT_EQ(up.data, w.data);  // no copy on the CPU
  EXPECT_EQ(up.dtype, w.dtype);
  EXPECT_TRUE(cpu.host_memory());
  for (size_t bytes : {size_t{1}, size_t{100}, size_t{4096}, size_t{1} << 20}) {
    const BackendBuffer b = cpu.allocate(bytes);
    EXPECT_EQ(b.bytes(), bytes);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
    const auto* p = b.as<const uint8_t>();
    EXPECT_EQ(std::count(p, p + bytes, 0), static_cast<std::ptrdiff_t>(bytes));
  }
  EXPECT_EQ(cpu.allocate(0).data(), nullptr);
  LlamaModel model(m, cpu, 4);
  KvCache cache = model.make_cache(5);
  EXPECT_EQ(cache.bytes(), 2u * 5u * static_cast<size_t>(m.config.kv_dim() * m.config.n_layers) * sizeof(float));
  const KvCache host(m.config, 5);
  EXPECT_EQ(host.bytes(), cache.bytes());
}

}  // namespace
}  // namespace tessera
