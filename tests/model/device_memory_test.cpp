// LlamaModel's device path on the CPU, with DeviceLikeBackend (tests/model/device_like_backend.h): a backend that
// computes with CpuBackend but keeps everything in "backend memory" and checks every pointer its ops get. The
// logits must equal the CPU backend's bit for bit (the same kernels on the same numbers). Also: the host backends'
// memory interface, and what a device backend refuses. Sharded device runs: tests/parallel/sharded_model_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "engine/model/llama_model.h"
#include "engine/runtime/generator.h"
#include "engine/runtime/model_runner.h"
#include "loaders/shard_weights.h"
#include "tests/model/device_like_backend.h"
#include "tests/model/tiny_model.h"

namespace tessera {
namespace {

using testing::DeviceLikeBackend;

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

TEST(DeviceMemory, ADeviceBackendRefusesObservers) {
  const ModelData m = testing::tiny_model(gqa_config(), DType::F32, 13);
  DeviceLikeBackend dev;
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

// A pipeline stage on its own (no communicator needed for the last stage's head): the stage calls keep to backend
// memory, and the last stage's logits equal the CPU backend's.
TEST(DeviceMemory, APipelineStageRunsOnADeviceBackend) {
  const ModelConfig c = gqa_config();
  const std::vector<int> tokens{1, 5, 9, 22};
  const auto last_stage_logits = [&](Backend& be, const std::vector<float>& hidden_in) {
    ModelData m = testing::tiny_model(c, DType::F32, 13);
    ShardRequest request;
    request.pp_size = 2;
    request.pp_stage = 1;
    shard_weights(m, plan_shard(c, request));
    LlamaModel stage(m, be, 8);
    KvCache cache = stage.make_cache(8);
    const SequenceChunk chunk{&cache, 0, static_cast<int>(tokens.size()), true, true};
    be.copy_to_backend(stage.hidden(), hidden_in.data(), hidden_in.size() * sizeof(float));
    stage.run_layers({&chunk, 1});
    std::vector<float> logits(tokens.size() * static_cast<size_t>(c.vocab_size));
    stage.head({&chunk, 1}, /*all_rows=*/true, logits.data());
    return logits;
  };
  std::vector<float> hidden(tokens.size() * static_cast<size_t>(c.dim));
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = static_cast<float>((i * 37) % 19) / 9.0f - 1.0f;
  CpuBackend cpu(1);
  DeviceLikeBackend dev;
  EXPECT_EQ(last_stage_logits(dev, hidden), last_stage_logits(cpu, hidden));
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
