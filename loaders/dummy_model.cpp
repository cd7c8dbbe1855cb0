#include "loaders/dummy_model.h"

#include <cmath>
#include <memory>
#include <optional>
#include <unordered_map>

#include "engine/core/check.h"
#include "engine/core/thread_pool.h"

namespace tessera {
namespace {

struct Preset {
  const char* name;
  int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len;
  float rope_theta;
  int bos_id, eos_id;
};

constexpr Preset kPresets[] = {
    {"llama-110m", 768, 2048, 12, 12, 12, 32000, 1024, 10000.0f, 1, 2},  // llama2.c stories110M shape
    {"tinyllama-1.1b", 2048, 5632, 22, 32, 4, 32000, 2048, 10000.0f, 1, 2},
    {"llama2-7b", 4096, 11008, 32, 32, 32, 32000, 4096, 10000.0f, 1, 2},
    {"llama3-8b", 4096, 14336, 32, 32, 8, 128256, 8192, 500000.0f, 128000, 128001},
    {"llama2-70b", 8192, 28672, 80, 64, 8, 32000, 4096, 10000.0f, 1, 2},
};

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Counter-based: element i of a tensor depends only on (seed, tensor id, i), so any thread split gives the same
// weights and no generator state is shared between threads.
class DummyFiller {
 public:
  // The store outlives the filler: both belong to one ModelData (the store behind a unique_ptr, so it never moves).
  DummyFiller(WeightStore& store, DType dtype, uint64_t seed)
      : store_(store), dtype_(dtype), seed_(seed), pool_(ThreadPool::default_threads()) {}

  // The [rows][cols] tensor, or only the part `split` keeps of it (same values as cutting the whole one).
  Matrix matrix(uint64_t tensor_id, int64_t rows, int64_t cols, std::optional<WeightSplit> split = std::nullopt) {
    IndexRange r{0, rows}, c{0, cols};
    if (split) (split->by_rows ? r : c) = split->range;
    Matrix m;
    m.dtype = dtype_;
    m.rows = r.size();
    m.cols = c.size();
    uint8_t* buf = store_.allocate(m.bytes());
    m.data = buf;
    const uint64_t key = splitmix64(seed_ ^ splitmix64(tensor_id));
    // Uniform in +-1/sqrt(fan_in): keeps each projection's output variance near its input's.
    const float scale = 1.0f / std::sqrt(static_cast<float>(cols));
    const uint64_t pairs_per_row = static_cast<uint64_t>((cols + 1) / 2);
    pool_.parallel_for(m.rows, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        uint8_t* row = buf + static_cast<size_t>(i) * m.row_bytes();
        const uint64_t first = static_cast<uint64_t>(r.begin + i) * pairs_per_row;
        switch (dtype_) {
          case DType::F32:
            fill_row(reinterpret_cast<float*>(row), c, key, first, scale, [](float v) { return v; });
            break;
          case DType::F16:
            fill_row(reinterpret_cast<uint16_t*>(row), c, key, first, scale, [](float v) { return f32_to_f16(v); });
            break;
          case DType::BF16:
            fill_row(reinterpret_cast<uint16_t*>(row), c, key, first, scale, [](float v) { return f32_to_bf16(v); });
            break;
          default:
            TESSERA_CHECK_MSG(false, "plain weight dtype expected");
        }
      }
    });
    return m;
  }

 private:
  // Elements 2j and 2j+1 of a row come from the two 32-bit halves of hash(key, first_pair + j); 24 bits of each
  // half map to [-1, 1). Writes the row's columns cols.begin..cols.end-1 (any start, even or odd).
  template <typename T, typename Convert>
  static void fill_row(T* out, IndexRange cols, uint64_t key, uint64_t first_pair, float scale, Convert convert) {
    const float unit = 2.0f / 16777216.0f;
    // Through int32 (the values are below 2^24, exact either way): x86-64 has no unsigned 64-bit conversion.
    auto value = [&](uint64_t bits24) {
      return convert((static_cast<float>(static_cast<int32_t>(bits24)) * unit - 1.0f) * scale);
    };
    auto hash = [&](uint64_t pair) { return splitmix64(key + pair * 0x9e3779b97f4a7c15ull); };
    // An odd first column, whole pairs (one hash each, no per-column branch), an even last column.
    int64_t col = cols.begin;
    uint64_t pair = first_pair + static_cast<uint64_t>(col / 2);
    T* o = out;
    if (col % 2 != 0 && col < cols.end) {
      *o++ = value(hash(pair++) >> 40);
      ++col;
    }
    for (; col + 1 < cols.end; col += 2, o += 2) {
      const uint64_t h = hash(pair++);
      o[0] = value((h >> 8) & 0xffffff);
      o[1] = value(h >> 40);
    }
    if (col < cols.end) *o = value((hash(pair) >> 8) & 0xffffff);
  }

  WeightStore& store_;
  DType dtype_;
  uint64_t seed_;
  ThreadPool pool_;
};

}  // namespace

std::vector<std::string> dummy_preset_names() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.emplace_back(p.name);
  return names;
}

ModelConfig dummy_preset_config(const std::string& preset) {
  for (const Preset& p : kPresets) {
    if (preset != p.name) continue;
    ModelConfig c;
    c.arch = "llama";
    c.dim = p.dim;
    c.hidden_dim = p.hidden_dim;
    c.n_layers = p.n_layers;
    c.n_heads = p.n_heads;
    c.n_kv_heads = p.n_kv_heads;
    c.head_dim = p.dim / p.n_heads;
    c.vocab_size = p.vocab_size;
    c.max_seq_len = p.max_seq_len;
    c.rms_eps = 1e-5f;
    c.rope_theta = p.rope_theta;
    c.rope_style = RopeStyle::kHalfSplit;
    c.tied_embeddings = false;
    c.bos_id = p.bos_id;
    c.eos_id = p.eos_id;
    c.validate("dummy preset " + preset);
    return c;
  }
  std::string names;
  for (const Preset& p : kPresets) names += std::string(names.empty() ? "" : ", ") + p.name;
  throw Error("unknown dummy model preset '" + preset + "' (available: " + names + ")");
}

ModelData make_dummy_model(const std::string& preset, DType dtype, uint64_t seed, const ModelShard* shard,
                           DummyFill when) {
  if (is_quantized(dtype))
    throw Error("dummy weights are generated as f32, f16 or bf16; quantize them at load with --quant");
  ModelData model;
  model.config = dummy_preset_config(preset);
  model.source = "dummy:" + preset;
  const ModelConfig& c = model.config;
  const ModelShard s = shard != nullptr ? *shard : whole_model_shard(c);
  if (shard != nullptr) model.shard = *shard;

  // What each tensor is; its values are made by DummyFiller when the tensor is made (at once or on demand).
  struct Tensor {
    uint64_t id;  // stable (not creation order), so a tensor's values never depend on the others
    int64_t rows, cols;
    ShardedWeight kind;
  };
  std::unordered_map<std::string, Tensor> tensors;
  std::vector<std::string> names;
  auto declare = [&](Matrix& m, const std::string& name, const Tensor& t) {
    const WeightSplit split = split_of(s, c, t.kind);
    m.dtype = dtype;
    m.rows = split.by_rows ? split.range.size() : t.rows;
    m.cols = split.by_rows ? t.cols : split.range.size();
    tensors.emplace(name, t);
    names.push_back(name);
  };
  auto id = [](int layer, int slot) { return 16u + static_cast<uint64_t>(layer) * 16u + static_cast<uint64_t>(slot); };

  ModelWeights& w = model.weights;
  if (s.first_stage())
    declare(w.tok_embeddings, "tok_embeddings", {0, c.vocab_size, c.dim, ShardedWeight::kEmbeddings});
  const ShardedWeight kinds[7] = {ShardedWeight::kWq,    ShardedWeight::kWk,  ShardedWeight::kWv,   ShardedWeight::kWo,
                                  ShardedWeight::kWGate, ShardedWeight::kWUp, ShardedWeight::kWDown};
  for (int i = s.layer_begin; i < s.layer_end; ++i) {
    LayerWeights& l = w.layers.emplace_back();
    l.attn_norm.assign(static_cast<size_t>(c.dim), 1.0f);
    l.ffn_norm.assign(static_cast<size_t>(c.dim), 1.0f);
    Matrix* slots[7] = {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down};
    const int64_t rows[7] = {c.q_dim(), c.kv_dim(), c.kv_dim(), c.dim, c.hidden_dim, c.hidden_dim, c.dim};
    const int64_t cols[7] = {c.dim, c.dim, c.dim, c.q_dim(), c.dim, c.dim, c.hidden_dim};
    for (int p = 0; p < 7; ++p)
      declare(*slots[p], "layers." + std::to_string(i) + "." + kLayerSlotNames[p],
              {id(i, p), rows[p], cols[p], kinds[p]});
  }
  if (s.last_stage()) {
    w.final_norm.assign(static_cast<size_t>(c.dim), 1.0f);
    declare(w.lm_head, "lm_head", {1, c.vocab_size, c.dim, ShardedWeight::kLmHead});
  }

  auto filler = std::make_shared<DummyFiller>(*model.store, dtype, seed);
  model.pending = PendingWeights(
      [filler, tensors = std::move(tensors), s, c](const std::string& name, Matrix& m) {
        const Tensor& t = tensors.at(name);
        m = filler->matrix(t.id, t.rows, t.cols, split_of(s, c, t.kind));
      },
      std::move(names));
  if (when == DummyFill::kAtLoad) model.make_pending_weights();
  return model;
}

}  // namespace tessera
