// Weights of a Llama-family model as views into storage owned by WeightStore, plus the owning ModelData.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "engine/core/mapped_file.h"
#include "engine/core/tensor.h"
#include "engine/model/model_config.h"
#include "engine/model/shard.h"

namespace tessera {

// A layer's seven projections in canonical order; a weight's canonical name is "layers.<L>.<slot>".
inline constexpr const char* kLayerSlotNames[7] = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"};

struct LayerWeights {
  std::vector<float> attn_norm;   // [dim]
  Matrix wq;                      // [n_heads*head_dim][dim]
  Matrix wk;                      // [n_kv_heads*head_dim][dim]
  Matrix wv;                      // [n_kv_heads*head_dim][dim]
  std::vector<float> bq, bk, bv;  // [q_dim], [kv_dim], [kv_dim]; empty unless config.qkv_bias
  Matrix wo;                      // [dim][n_heads*head_dim]
  std::vector<float> ffn_norm;    // [dim]
  Matrix w_gate;                  // [hidden_dim][dim]   (llama2.c w1, HF gate_proj)
  Matrix w_up;                    // [hidden_dim][dim]   (llama2.c w3, HF up_proj)
  Matrix w_down;                  // [dim][hidden_dim]   (llama2.c w2, HF down_proj)
};

struct ModelWeights {
  Matrix tok_embeddings;  // [vocab][dim]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [dim]
  Matrix lm_head;                 // [vocab][dim]; same view as tok_embeddings when tied

  // Every weight matrix view: tok_embeddings, lm_head, then each layer's seven projections.
  std::vector<const Matrix*> matrices() const;
  std::vector<Matrix*> matrices();
};

// A weight matrix with its canonical name, as rules, reports and PendingWeights name it.
struct NamedWeight {
  std::string name;  // "tok_embeddings", "layers.<L>.<slot>" (whole-model layer number L), "lm_head"
  int layer = -1;    // index into ModelWeights::layers; -1 for tok_embeddings and lm_head
  int slot = -1;     // index into kLayerSlotNames; -1 for tok_embeddings and lm_head
  Matrix* matrix = nullptr;
};

// Weights made when first needed instead of at load. Random presets are generated this way when load-time
// compression follows, so the compressor holds one uncompressed tensor at a time rather than the whole
// uncompressed model (a 70B preset in bf16 is 140 GB; its int4 form a quarter of that). A pending matrix has its
// dtype and shape, and data == nullptr until make() fills it.
class PendingWeights {
 public:
  // Writes the named matrix's data (storage from the model's WeightStore).
  using Fill = std::function<void(const std::string& name, Matrix& m)>;
  PendingWeights() = default;
  PendingWeights(Fill fill, std::vector<std::string> names);

  bool empty() const { return names_.empty(); }
  bool contains(const std::string& name) const { return names_.count(name) != 0; }
  // Fills `m` when `name` is pending and forgets the name; otherwise does nothing. The fill function (and what it
  // holds, e.g. threads) goes when the last name is made.
  void make(const std::string& name, Matrix& m);
  double seconds() const { return seconds_; }  // spent in make() so far

 private:
  Fill fill_;
  std::unordered_set<std::string> names_;
  double seconds_ = 0.0;
};

// Owns the bytes that Matrix views point into: memory-mapped files and heap buffers (converted or generated
// weights). Buffers never move once added, so views stay valid for the store's lifetime.
class WeightStore {
 public:
  const MappedFile& add_file(MappedFile file);
  // Returns a zero-initialised, 64-byte aligned buffer that lives as long as the store.
  uint8_t* allocate(size_t bytes);
  size_t mapped_bytes() const;
  // Bytes of the buffers allocated and not released.
  size_t allocated_bytes() const { return allocated_bytes_; }

  // Load-time compression replaces weights by new ones; this gives back the memory behind the replaced view `old`
  // once no view of `live` points into it any more: its heap buffer is freed, or its pages of a mapped file are
  // dropped from memory (the file stays mapped). Without it a compressed model would keep its original weights
  // resident too. Returns the bytes given back (0 when something still uses them or they were given back).
  size_t release_if_unused(const Matrix& old, const ModelWeights& live);

 private:
  // Large buffers come from anonymous mmap: zero pages are supplied lazily, so the threads that fill a buffer
  // are the ones that touch it first (no single-threaded memset over gigabytes).
  struct Buffer {
    uint8_t* data = nullptr;
    size_t bytes = 0;
    bool mapped = false;
    Buffer() = default;
    Buffer(uint8_t* d, size_t b, bool m) : data(d), bytes(b), mapped(m) {}
    Buffer(Buffer&& o) noexcept;
    Buffer& operator=(Buffer&&) = delete;
    ~Buffer();
    void free();
  };
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::vector<Buffer> buffers_;
  size_t allocated_bytes_ = 0;
};

// A loaded model: configuration, weight views and the storage behind them. Move-only.
struct ModelData {
  ModelConfig config;
  ModelWeights weights;
  std::unique_ptr<WeightStore> store = std::make_unique<WeightStore>();
  std::string source;  // path or preset name, for messages
  // The part of the model these weights are (loaders/shard_weights.h); layer_end == 0 means the whole model.
  // weights.layers holds the shard's layers only, config keeps the whole model's numbers.
  ModelShard shard;
  // Bytes of checkpoint weights this rank's shard was built from (0 when not sharded): what it read.
  size_t shard_bytes_read = 0;
  PendingWeights pending;  // weights not made yet (see PendingWeights); empty once the model is ready to run

  // The shard, or the whole model when the weights were not sharded.
  ModelShard layout() const { return shard.layer_end > 0 ? shard : whole_model_shard(config); }

  // Bytes of the linear-layer and embedding weights as stored (what decode reads per token, lm_head included).
  size_t weight_bytes() const;

  // Every weight matrix this model holds or has pending, by canonical name: tok_embeddings, each layer's seven
  // projections, lm_head (a pipeline stage lists only its own).
  std::vector<NamedWeight> named_weights();
  // Makes every pending weight (nothing when none is pending).
  void make_pending_weights();
};

}  // namespace tessera
