// Tensor x pipeline parallel execution against one process: every rank runs this binary under mpiexec; each test
// is run for every (tp, pp) layout with tp x pp = the number of ranks. Rank 0 builds the whole model itself as
// the reference; all ranks load their shard, rank 0 drives it through ModelRunner and compares logits (1e-4) and
// greedy tokens (identical). Quantized cases quantize each shard at load, as the CLI does. The device cases run the
// shards on DeviceLikeBackend (tests/model/device_like_backend.h): once with the MPI communicators, which must
// only ever see host memory (activations staged through it), and once with the model's tensor-parallel group
// posing as a device communicator (NCCL's place), which must only see backend memory with no op in flight.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "engine/model/llama_model.h"
#include "engine/runtime/generator.h"
#include "engine/runtime/model_runner.h"
#include "loaders/model_loader.h"
#include "loaders/shard_weights.h"
#include "parallel/mpi_communicator.h"
#include "quant/compress.h"
#include "tests/loaders/test_util.h"
#include "tests/model/device_like_backend.h"
#include "tests/model/tiny_model.h"

namespace tessera {
namespace {

MpiRuntime* g_runtime = nullptr;
constexpr double kTimeout = 60.0;

// This rank's groups for one layout (world rank = stage * tp + tp_rank), as the CLI builds them.
struct Layout {
  int tp, pp;
  MpiCommunicator world{*g_runtime, kTimeout, "world"};
  MpiCommunicator control{*g_runtime, kTimeout, "control"};
  std::unique_ptr<MpiCommunicator> tp_data, tp_control, pp_data, pp_control;
  ParallelGroups groups;

  Layout(int tp_, int pp_) : tp(tp_), pp(pp_) {
    const int r = world.rank(), stage = r / tp, tp_rank = r % tp;
    tp_data = world.split(stage, tp_rank, "tp");
    tp_control = control.split(stage, tp_rank, "tp");
    pp_data = world.split(tp_rank, stage, "pp");
    pp_control = control.split(tp_rank, stage, "pp");
    groups = {&world, tp_data.get(), tp_control.get(), pp_data.get(), pp_control.get()};
  }
  ShardRequest request(int column_align) const {
    ShardRequest q;
    q.tp_size = tp;
    q.pp_size = pp;
    q.tp_rank = world.rank() % tp;
    q.pp_stage = world.rank() / tp;
    q.column_align = column_align;
    return q;
  }
};

// Where a case's shards compute and how their activations travel.
enum class Transport {
  kCpu,           // CpuBackend, MPI: what the CLI runs on the CPU
  kDeviceStaged,  // a device backend with MPI: activations copied through host memory
  kDeviceDirect,  // a device backend whose model talks to a device communicator (as with NCCL)
};

const char* transport_name(Transport t) {
  return t == Transport::kCpu ? "cpu" : t == Transport::kDeviceStaged ? "device, staged" : "device, direct";
}

// Forwards to an MPI communicator and checks the memory of every data-plane pointer: host memory for a host
// communicator; for a device one, backend memory with the backend's queue drained (the reduction runs elsewhere).
class CheckedCommunicator final : public Communicator {
 public:
  CheckedCommunicator(Communicator& inner, const testing::DeviceLikeBackend& dev, bool device)
      : inner_(inner), dev_(dev), device_(device) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string name() const override { return inner_.name() + (device_ ? " (as device)" : " (host checked)"); }
  bool device_memory() const override { return device_; }
  void all_reduce_sum(float* data, size_t count) override {
    check(data, "all_reduce_sum");
    inner_.all_reduce_sum(data, count);
  }
  void all_gather_bytes(const void* in, size_t bytes_per_rank, void* out) override {
    check(in, "all_gather in");
    check(out, "all_gather out");
    inner_.all_gather_bytes(in, bytes_per_rank, out);
  }
  void send(const void* data, size_t bytes, int dst, int tag) override {
    check(data, "send");
    inner_.send(data, bytes, dst, tag);
  }
  void recv(void* data, size_t bytes, int src, int tag) override {
    check(data, "recv");
    inner_.recv(data, bytes, src, tag);
  }
  uint64_t start_send(const void* data, size_t bytes, int dst, int tag) override {
    check(data, "start_send");
    return inner_.start_send(data, bytes, dst, tag);
  }
  void wait_send(uint64_t id) override { inner_.wait_send(id); }
  void broadcast(void* data, size_t bytes, int root) override { inner_.broadcast(data, bytes, root); }
  void barrier() override { inner_.barrier(); }
  ArgmaxCandidate argmax_all(ArgmaxCandidate local) override { return inner_.argmax_all(local); }

  int calls = 0;  // data-plane calls seen

 private:
  void check(const void* p, const char* what) {
    ++calls;
    if (device_) {
      EXPECT_TRUE(dev_.owns(p)) << what << " on a device communicator got host memory";
      EXPECT_EQ(dev_.ops_since_sync, 0) << what << " on a device communicator while backend ops were in flight";
    } else {
      EXPECT_FALSE(dev_.owns(p)) << what << " on a host communicator got backend memory";
    }
  }
  Communicator& inner_;
  const testing::DeviceLikeBackend& dev_;
  bool device_;
};

std::vector<std::pair<int, int>> layouts() {
  const int n = g_runtime->world_size();
  std::vector<std::pair<int, int>> out;
  for (int tp = 1; tp <= n; ++tp)
    if (n % tp == 0) out.emplace_back(tp, n / tp);
  return out;
}

using MakeModel = std::function<ModelData()>;

struct Case {
  MakeModel make;
  std::string quant;  // "" = as loaded
  std::vector<int> prompt;
  int new_tokens = 24;
  std::string prune = {};  // "" = none; calibrated methods calibrate on calibration_tokens()
  // SparseGPT's reconstruction amplifies the last-bit differences of the sharded calibration forward (a weight at a
  // near-tie goes on one side and stays on the other, and later layers calibrate on that). For it (> 0), the
  // logits must stay within this share of the distance pruning moved them from the dense model's, instead of
  // 1e-4, and the greedy tokens are not compared.
  double share_of_pruning = 0.0;
  bool activation_aware = false;  // int4/nf4 with AWQ-style scales searched on calibration_tokens()
};

// Calibration text for Wanda and SparseGPT: token ids below every test model's vocabulary, enough of them (several
// times the widest layer input, 256) that SparseGPT's Hessians are well conditioned; with fewer rows than inputs
// its reconstruction amplifies the last-bit differences of a sharded forward pass.
std::vector<int> calibration_tokens() {
  std::vector<int> t{1};
  for (int i = 0; i < 1023; ++i) t.push_back(2 + (i * 37 + i / 7 + 11) % 57);
  return t;
}

// As the CLI does: int8 scales of split rows agreed over the tensor-parallel group, pruning gathering over it and
// passing calibration activations from stage to stage over the pipeline group.
void compress(ModelData& m, const Case& c, Communicator* tp = nullptr, Communicator* pp = nullptr) {
  if (c.quant.empty() && c.prune.empty()) return;
  quant::CompressOptions o;
  if (!c.quant.empty()) o.default_spec = quant::QuantSpec::parse(c.quant);
  if (!c.prune.empty()) o.prune.default_spec = quant::PruneSpec::parse(c.prune);
  if (!c.prune.empty() || c.activation_aware) o.calibration_tokens = calibration_tokens();
  o.activation_aware = c.activation_aware;
  o.threads = 1;
  if (tp != nullptr && tp->size() > 1) {
    o.share_row_absmax = [tp](std::vector<float>& amax) { all_reduce_max(*tp, amax.data(), amax.size()); };
    o.tp = tp;
  }
  if (pp != nullptr && pp->size() > 1) o.pp = pp;
  quant::compress_model(m, o);
}

int group_of(const std::string& scheme) {
  return scheme.empty() ? 1 : std::max(1, quant::QuantSpec::parse(scheme).group);
}

std::vector<int> greedy(ModelRunner& runner, const Case& c) {
  Generator gen(runner, nullptr);
  GenerationRequest req;
  req.prompt = c.prompt;
  req.max_new_tokens = c.new_tokens;
  req.stop_at_eos = false;
  req.sampling.temperature = 0.0f;
  return gen.generate(req).tokens;
}

// Runs the case on one layout: rank 0 compares, the other ranks serve its steps.
void run_case(const Case& c, int tp, int pp, Transport transport = Transport::kCpu) {
  SCOPED_TRACE("tp " + std::to_string(tp) + " x pp " + std::to_string(pp) + " " + c.quant + " " + c.prune +
               (c.activation_aware ? " activation-aware" : "") + " on " + transport_name(transport));
  Layout layout(tp, pp);
  const bool leader = layout.world.rank() == 0;
  CpuBackend backend(1);

  // Reference: the whole model in this process (rank 0 only).
  std::vector<float> want_logits;
  std::vector<int> want_tokens;
  double tolerance = 1e-4;
  if (leader) {
    const auto logits_of = [&](const ModelData& m) {
      LlamaModel model(m, backend, 64);
      KvCache cache(m.config, 64);
      std::vector<float> out(c.prompt.size() * static_cast<size_t>(m.config.vocab_size));
      model.forward(c.prompt, 0, cache, LogitsMode::kAll, out.data());
      return out;
    };
    ModelData full = c.make();
    compress(full, c);
    want_logits = logits_of(full);
    LlamaModel model(full, backend, 64);
    ModelRunner runner(model);
    want_tokens = greedy(runner, c);
    if (c.share_of_pruning > 0) {
      const std::vector<float> dense = logits_of(c.make());
      double moved = 0;
      for (size_t i = 0; i < dense.size(); ++i)
        moved = std::max(moved, static_cast<double>(std::fabs(dense[i] - want_logits[i])));
      tolerance = c.share_of_pruning * moved;
    }
  }

  ModelData shard = c.make();
  shard_weights(shard, plan_shard(shard.config, layout.request(group_of(c.quant))));
  compress(shard, c, layout.tp_data.get(), layout.pp_control.get());
  testing::DeviceLikeBackend device;
  Backend& shard_backend = transport == Transport::kCpu ? static_cast<Backend&>(backend) : device;
  // The device cases check every data-plane pointer: the model's tp group (as a device communicator in the
  // direct case), and the runner's groups, which carry host memory in every case.
  CheckedCommunicator model_tp(*layout.tp_data, device, transport == Transport::kDeviceDirect);
  CheckedCommunicator world(layout.world, device, false), tp_data(*layout.tp_data, device, false),
      pp_data(*layout.pp_data, device, false);
  ParallelGroups groups = layout.groups;
  Communicator* tp_comm = layout.tp_data.get();
  if (transport != Transport::kCpu) {
    groups.world = &world;
    groups.tp = &tp_data;
    groups.pp = &pp_data;
    tp_comm = &model_tp;
  }
  LlamaModel model(shard, shard_backend, 64, tp_comm);
  ModelRunner runner(model, &groups, 2);
  const auto finish = [&] {
    if (transport == Transport::kCpu) return;
    if (tp > 1) {
      EXPECT_GT(model_tp.calls, 0) << "the model's collectives went elsewhere";
    }
    if (pp > 1) {
      EXPECT_GT(pp_data.calls, 0) << "the hidden state went elsewhere";
    }
  };
  if (!leader) {
    runner.serve();
    finish();
    return;
  }
  const int vocab = shard.config.vocab_size;
  runner.open_slot(3, 64);
  const StepChunk chunk{3, 0, static_cast<int>(c.prompt.size()), 1};
  std::vector<float> got(want_logits.size());
  runner.step({&chunk, 1}, c.prompt, got.data(), /*all_rows=*/true);
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, static_cast<double>(std::fabs(got[i] - want_logits[i])));
  EXPECT_LT(worst, tolerance) << "largest logit difference over " << c.prompt.size() << " positions x " << vocab;
  runner.close_slot(3);

  const std::vector<int> tokens = greedy(runner, c);
  if (c.share_of_pruning == 0) {
    EXPECT_EQ(tokens, want_tokens);
  }
  runner.stop_workers();
  finish();
}

// Runs the case on every layout that fits the world size.
void run_everywhere(const Case& c) {
  for (auto [tp, pp] : layouts()) run_case(c, tp, pp);
}

ModelConfig config(int dim, int heads, int kv_heads, int head_dim, int hidden, int layers, bool bias, bool tied) {
  ModelConfig c = testing::tiny_config(heads, kv_heads, bias, tied);
  c.dim = dim;
  c.head_dim = head_dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.vocab_size = 61;  // odd: the last vocab shard is shorter than the others
  c.max_seq_len = 64;
  return c;
}

const std::vector<int> kPrompt{1, 17, 5, 42, 9, 33, 8, 27, 50, 12, 3, 60};

TEST(ShardedModel, GqaWithFewerKvHeadsThanRanks) {
  // One kv head: every tensor-parallel rank keeps a replica of it.
  run_everywhere(
      {[] { return testing::tiny_model(config(32, 4, 1, 8, 72, 4, false, false), DType::F32, 11); }, "", kPrompt});
}

TEST(ShardedModel, QkvBiasAndTiedEmbeddings) {
  run_everywhere(
      {[] { return testing::tiny_model(config(32, 4, 2, 8, 72, 4, true, true), DType::F32, 12); }, "", kPrompt});
}

TEST(ShardedModel, Bf16Weights) {
  run_everywhere(
      {[] { return testing::tiny_model(config(32, 4, 4, 8, 72, 4, false, false), DType::BF16, 13); }, "", kPrompt});
}

// The shards on a device backend: with MPI (activations staged through host memory) and with a device
// communicator for the model's collectives (NCCL's place: backend memory, after the backend's queue is drained).
TEST(ShardedModel, DeviceBackendStagedOrDirect) {
  const MakeModel gqa = [] { return testing::tiny_model(config(32, 4, 1, 8, 72, 4, true, false), DType::F32, 18); };
  const MakeModel tied = [] { return testing::tiny_model(config(32, 4, 2, 8, 72, 4, false, true), DType::BF16, 19); };
  for (Transport t : {Transport::kDeviceStaged, Transport::kDeviceDirect}) {
    for (auto [tp, pp] : layouts()) {
      run_case({gqa, "", kPrompt}, tp, pp, t);
      run_case({tied, "", kPrompt}, tp, pp, t);
    }
  }
}

// Splits fall on multiples of 32, so every shard quantizes the same groups as one process.
TEST(ShardedModel, Int8AndInt4QuantizedPerShard) {
  for (const char* scheme : {"int8", "int4:g32", "int4:g32:asym", "nf4:g32"}) {
    for (auto [tp, pp] : layouts()) {
      run_case({[] { return testing::tiny_model(config(128, 4, 2, 32, 256, 4, false, false), DType::F32, 14); }, scheme,
                kPrompt},
               tp, pp);
    }
  }
}

// Pruning per shard: per-tensor thresholds, Wanda's rows and SparseGPT's reconstruction over split tensors are
// computed on the whole tensor gathered over the tensor-parallel group, the calibration pass runs the sharded
// model, and pipeline stages calibrate in turn on the previous stage's pruned outputs, so every rank keeps what
// one process keeps.
TEST(ShardedModel, PrunedPerShard) {
  const MakeModel make = [] {
    return testing::tiny_model(config(128, 4, 2, 32, 256, 4, false, false), DType::F32, 16);
  };
  const std::pair<const char*, const char*> cases[] = {
      {"magnitude:0.5", ""}, {"magnitude:0.3", "int8"}, {"wanda:0.5", ""},        {"wanda:2:4", "int8"},
      {"sparsegpt:0.5", ""}, {"sparsegpt:2:4", ""},     {"sparsegpt:0.3", "int8"}};
  for (const auto& [prune, scheme] : cases) {
    const quant::PruneSpec spec = quant::PruneSpec::parse(prune);
    for (auto [tp, pp] : layouts()) {
      run_case({make, scheme, kPrompt, 24, prune, spec.method == quant::PruneMethod::kSparseGpt ? 0.1 : 0.0}, tp, pp);
    }
  }
}

// Activation-aware int4 per shard: pipeline stages calibrate on the previous stage's outputs, tensor-parallel ranks
// record the whole wo / w_down inputs and search on the whole weights' sampled rows, so every rank chooses the
// scales one process chooses and keeps its own columns of them (with one kv head, the replicas' shared scales).
TEST(ShardedModel, ActivationAwareInt4PerShard) {
  const std::pair<int, const char*> cases[] = {{2, "int4:g32"}, {1, "int4:g32"}, {2, "nf4:g32"}};
  for (const auto& [kv_heads, scheme] : cases) {
    const int kv = kv_heads;
    for (auto [tp, pp] : layouts()) {
      Case c{[kv] { return testing::tiny_model(config(128, 4, kv, 32, 256, 4, false, false), DType::F32, 17); }, scheme,
             kPrompt};
      c.activation_aware = true;
      run_case(c, tp, pp);
    }
  }
}

TEST(ShardedModel, Stories260K) {
  const std::string path = test::model_file("stories260K/stories260K.bin");
  if (path.empty()) GTEST_SKIP() << "stories260K not found under " << test::models_dir();
  const std::vector<int> prompt{1, 403, 407, 261, 378, 284, 263, 1233 % 512};
  for (const char* scheme : {"", "int8", "int4:g32"}) {
    for (auto [tp, pp] : layouts()) {
      // stories260K has 8 heads of 8 dims: with 4 ranks wo splits at column 16, finer than a group of 32.
      if (std::string(scheme) == "int4:g32" && tp > 2) continue;
      run_case({[&] { return load_model(path); }, scheme, prompt, 40}, tp, pp);
    }
  }
}

// Refused splits: every rank gets the same error before any weight is touched.
TEST(ShardPlan, RefusesSplitsThatDoNotFit) {
  const ModelConfig c = config(32, 4, 2, 8, 72, 4, false, false);
  ShardRequest q;
  q.tp_size = 3;
  EXPECT_THROW(plan_shard(c, q), Error);  // 4 heads
  q.tp_size = 2;
  q.column_align = 32;
  EXPECT_THROW(plan_shard(c, q), Error);  // wo split at 16
  q = ShardRequest{};
  q.pp_size = 5;
  EXPECT_THROW(plan_shard(c, q), Error);  // 4 layers
  q.pp_size = 2;
  q.pp_layers = {3, 2};
  EXPECT_THROW(plan_shard(c, q), Error);  // 5 != 4
}

// What a shard cannot decide alone is refused before any weight changes, with an error naming the method.
TEST(ShardPrune, RefusesChoicesAcrossRanks) {
  const ModelConfig c = config(32, 4, 2, 8, 72, 4, false, false);
  const auto refused = [&](int tp, int pp, const char* spec) {
    ModelData m = testing::tiny_model(c, DType::F32, 17);
    ShardRequest q;
    q.tp_size = tp;
    q.pp_size = pp;
    shard_weights(m, plan_shard(c, q));
    quant::CompressOptions o;
    o.prune.default_spec = quant::PruneSpec::parse(spec);
    o.calibration_tokens = calibration_tokens();
    o.threads = 1;
    try {
      quant::compress_model(m, o);
    } catch (const Error& e) {
      return std::string(e.what()).find(spec) != std::string::npos;
    }
    return false;
  };
  EXPECT_TRUE(refused(2, 1, "magnitude-global:0.5"));  // one threshold across ranks
  EXPECT_TRUE(refused(1, 2, "magnitude-global:0.5"));
  EXPECT_TRUE(refused(2, 1, "structured-ffn:0.25"));  // channels chosen across the tensor
}

// A TP=2 rank reads about half of the weight bytes (norms are replicated).
TEST(ShardPlan, TensorParallelRankReadsHalfTheWeights) {
  const ModelConfig c = config(128, 4, 2, 32, 256, 4, false, false);
  ModelData whole = testing::tiny_model(c, DType::F32, 15);
  size_t total = whole.weights.tok_embeddings.bytes() + whole.weights.lm_head.bytes();
  for (const LayerWeights& l : whole.weights.layers)
    for (const Matrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) total += m->bytes();
  for (int r = 0; r < 2; ++r) {
    ModelData m = testing::tiny_model(c, DType::F32, 15);
    ShardRequest q;
    q.tp_size = 2;
    q.tp_rank = r;
    shard_weights(m, plan_shard(c, q));
    const double share = static_cast<double>(m.shard_bytes_read) / static_cast<double>(total);
    EXPECT_GT(share, 0.49);
    EXPECT_LT(share, 0.52);
  }
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  tessera::MpiRuntime runtime(&argc, &argv, 60.0);
  tessera::g_runtime = &runtime;
  ::testing::InitGoogleTest(&argc, argv);
  if (runtime.world_rank() != 0) {
    // Only rank 0 prints the report; other ranks print failures only.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = 0;
  try {
    rc = RUN_ALL_TESTS();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", runtime.world_rank(), e.what());
    runtime.abort(1);
  }
  return rc;
}
