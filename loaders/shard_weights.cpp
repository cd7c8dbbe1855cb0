#include "loaders/shard_weights.h"

#include <cstring>
#include <string>

#include "engine/core/check.h"

namespace tessera {
namespace {

class Slicer {
 public:
  explicit Slicer(ModelData& model) : model_(model) {}

  Matrix rows(const Matrix& m, IndexRange r) {
    TESSERA_CHECK(r.begin >= 0 && r.end <= m.rows && r.size() > 0);
    Matrix out = m;
    out.rows = r.size();
    out.data = m.row(r.begin);
    bytes_ += out.bytes();
    return out;
  }

  Matrix cols(const Matrix& m, IndexRange c, const char* what) {
    TESSERA_CHECK(c.begin >= 0 && c.end <= m.cols && c.size() > 0);
    if (c.size() == m.cols) {
      bytes_ += m.bytes();
      return m;
    }
    Matrix out = m;
    out.cols = c.size();
    const size_t out_row = out.row_bytes();
    size_t offset = 0;
    if (is_quantized(m.dtype)) {
      // Whole blocks only: the slice's rows are then a byte range of each full row.
      const int64_t block = m.group > 0 ? m.group : m.cols;
      if (c.begin % block != 0 || (c.end % block != 0 && c.end != m.cols) || m.dtype == DType::Q8)
        throw Error(std::string(what) + ": cannot split an already-quantized " + std::string(dtype_name(m.dtype)) +
                    " matrix between ranks at column " + std::to_string(c.begin) +
                    "; load the original weights and quantize them at load instead");
      offset = dtype_row_bytes(m.dtype, c.begin, m.group);
    } else {
      offset = static_cast<size_t>(c.begin) * dtype_size(m.dtype);
    }
    uint8_t* buf = model_.store->allocate(out.bytes());
    for (int64_t r = 0; r < m.rows; ++r)
      std::memcpy(buf + static_cast<size_t>(r) * out_row, static_cast<const uint8_t*>(m.row(r)) + offset, out_row);
    out.data = buf;
    bytes_ += out.bytes();
    return out;
  }

  Matrix apply(const Matrix& m, WeightSplit split, const std::string& what) {
    return split.by_rows ? rows(m, split.range) : cols(m, split.range, what.c_str());
  }

  std::vector<float> part(const std::vector<float>& v, IndexRange r) {
    if (v.empty()) return v;
    TESSERA_CHECK(r.begin >= 0 && static_cast<size_t>(r.end) <= v.size());
    bytes_ += static_cast<size_t>(r.size()) * sizeof(float);
    return {v.begin() + r.begin, v.begin() + r.end};
  }

  const std::vector<float>& whole(const std::vector<float>& v) {
    bytes_ += v.size() * sizeof(float);
    return v;
  }

  size_t bytes() const { return bytes_; }

 private:
  ModelData& model_;
  size_t bytes_ = 0;
};

}  // namespace

void shard_weights(ModelData& model, const ModelShard& s) {
  const ModelConfig& c = model.config;
  TESSERA_CHECK_MSG(model.shard.layer_end == 0, "weights are already sharded");
  TESSERA_CHECK(static_cast<int>(model.weights.layers.size()) == c.n_layers);
  TESSERA_CHECK(s.layer_begin >= 0 && s.layer_end <= c.n_layers && s.layer_begin < s.layer_end);
  Slicer slice(model);
  const ModelWeights& in = model.weights;
  ModelWeights out;
  auto split = [&](ShardedWeight w) { return split_of(s, c, w); };
  if (s.first_stage()) out.tok_embeddings = slice.apply(in.tok_embeddings, split(ShardedWeight::kEmbeddings), "");
  if (s.last_stage()) {
    out.final_norm = slice.whole(in.final_norm);
    const bool tied = in.lm_head.data == in.tok_embeddings.data;
    out.lm_head = tied && s.first_stage() ? out.tok_embeddings
                                          : slice.apply(in.lm_head, split(ShardedWeight::kLmHead), "lm_head");
  }
  for (int l = s.layer_begin; l < s.layer_end; ++l) {
    const LayerWeights& a = in.layers[static_cast<size_t>(l)];
    const std::string name = "layer " + std::to_string(l);
    LayerWeights b;
    b.attn_norm = slice.whole(a.attn_norm);
    b.wq = slice.apply(a.wq, split(ShardedWeight::kWq), name + " wq");
    b.wk = slice.apply(a.wk, split(ShardedWeight::kWk), name + " wk");
    b.wv = slice.apply(a.wv, split(ShardedWeight::kWv), name + " wv");
    b.bq = slice.part(a.bq, split(ShardedWeight::kWq).range);
    b.bk = slice.part(a.bk, split(ShardedWeight::kWk).range);
    b.bv = slice.part(a.bv, split(ShardedWeight::kWv).range);
    b.wo = slice.apply(a.wo, split(ShardedWeight::kWo), name + " wo");
    b.ffn_norm = slice.whole(a.ffn_norm);
    b.w_gate = slice.apply(a.w_gate, split(ShardedWeight::kWGate), name + " w_gate");
    b.w_up = slice.apply(a.w_up, split(ShardedWeight::kWUp), name + " w_up");
    b.w_down = slice.apply(a.w_down, split(ShardedWeight::kWDown), name + " w_down");
    out.layers.push_back(std::move(b));
  }
  model.weights = std::move(out);
  model.shard = s;
  model.shard_bytes_read = slice.bytes();
}

}  // namespace tessera
