#include "engine/model/llama_model.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "engine/core/check.h"

namespace tessera {

namespace {
size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

struct LayerDims {
  int heads, kv_heads, hidden;
};

// A layer's sizes from its weights (LayerWeights or BackendLayerWeights: uploads keep the shapes).
template <typename Layer>
LayerDims dims_of(const Layer& lw, const ModelConfig& c) {
  return {static_cast<int>(lw.wq.rows / c.head_dim), static_cast<int>(lw.wk.rows / c.head_dim),
          static_cast<int>(lw.w_gate.rows)};
}

ModelShard shard_for(const ModelData& model) {
  TESSERA_CHECK_MSG(model.pending.empty(), "the model still has pending weights: make_pending_weights() first");
  return model.layout();
}
}  // namespace

LlamaModel::LlamaModel(const ModelData& model, Backend& backend, int max_batch_tokens, Communicator* tp)
    : model_(model),
      shard_(shard_for(model)),
      backend_(backend),
      tp_(tp),
      max_batch_tokens_(std::max(1, max_batch_tokens)),
      rope_(model.config, model.config.max_seq_len),
      weights_(model.weights, rope_.table(), backend) {
  const ModelConfig& c = model.config;
  TESSERA_CHECK_MSG(static_cast<int>(model.weights.layers.size()) == shard_.n_layers(),
                    "the weights hold a different number of layers than their shard");
  if (shard_.tp_size > 1)
    TESSERA_CHECK_MSG(tp_ != nullptr && tp_->size() == shard_.tp_size && tp_->rank() == shard_.tp_rank,
                      "a tensor-parallel shard needs its tensor-parallel communicator");
  int q_dim = 0, kv_dim = 0, hidden = 0;
  for (const LayerWeights& lw : model.weights.layers) {
    const LayerDims d = dims_of(lw, c);
    TESSERA_CHECK(d.heads > 0 && d.kv_heads > 0 && d.heads % d.kv_heads == 0 && d.hidden > 0);
    q_dim = std::max(q_dim, d.heads * c.head_dim);
    kv_dim = std::max(kv_dim, d.kv_heads * c.head_dim);
    hidden = std::max(hidden, d.hidden);
  }
  const size_t rows = sz(max_batch_tokens_);
  const auto floats = [&](size_t count) { return backend.allocate(count * sizeof(float)); };
  x_ = floats(rows * sz(c.dim));
  xb_ = floats(rows * sz(c.dim));
  q_ = floats(rows * sz(q_dim));
  k_ = floats(rows * sz(kv_dim));
  v_ = floats(rows * sz(kv_dim));
  att_ = floats(rows * sz(q_dim));
  proj_ = floats(rows * sz(c.dim));
  hidden_ = floats(rows * sz(hidden));
  const bool vocab_split = shard_.vocab.size() != c.vocab_size;
  if (shard_.tp_size > 1) {
    // The largest exchange: a batch's residual rows (all-reduce) or its rows of this shard's logits (all-gather).
    const size_t most = rows * std::max(sz(c.dim), sz(shard_.vocab_padded));
    tp_exchange_ = std::make_unique<ActivationExchange>(backend, *tp_, most);
  }
  if (vocab_split) {
    zero_row_ = floats(sz(c.dim));
  } else if (!backend.host_memory()) {
    // A host backend writes logits straight into the caller's buffer; a device one needs them in its memory first.
    logits_ = floats(rows * sz(c.vocab_size));
  }
  positions_.resize(rows);
  row_runs_.reserve(rows);
  attention_calls_.reserve(rows);
}

std::vector<int> LlamaModel::layer_kv_dims() const {
  std::vector<int> dims;
  for (const LayerWeights& lw : model_.weights.layers) dims.push_back(static_cast<int>(lw.wk.rows));
  return dims;
}

KvCache LlamaModel::make_cache(int capacity) const {
  return KvCache(backend_, layer_kv_dims(), capacity);
}

std::unique_ptr<KvPool> LlamaModel::make_kv_pool(int num_blocks, int block_size) const {
  return std::make_unique<KvPool>(backend_, layer_kv_dims(), num_blocks, block_size);
}

void LlamaModel::set_observer(ActivationObserver* observer) {
  if (observer != nullptr && !backend_.host_memory())
    throw Error("activation observers (calibration with --calib, pruning) need the CPU backend; " + backend_.name() +
                " computes in device memory");
  observer_ = observer;
}

int LlamaModel::batch_rows(std::span<const SequenceChunk> chunks) const {
  int64_t rows = 0;
  for (const SequenceChunk& ch : chunks) {
    TESSERA_CHECK(ch.n_tokens > 0 && ch.cache != nullptr);
    rows += ch.n_tokens;
  }
  if (rows > max_batch_tokens_)
    throw Error("a batch of " + std::to_string(rows) + " tokens exceeds the model's batch limit of " +
                std::to_string(max_batch_tokens_) + " tokens");
  return static_cast<int>(rows);
}

void LlamaModel::check_positions(std::span<const SequenceChunk> chunks) const {
  const ModelConfig& c = model_.config;
  for (const SequenceChunk& ch : chunks) {
    TESSERA_CHECK_MSG(ch.cache->n_layers() == shard_.n_layers(), "KV cache made for another shard");
    const int end = ch.pos0 + ch.n_tokens;
    if (ch.pos0 < 0 || end > ch.cache->capacity() || end > c.max_seq_len)
      throw Error("sequence of " + std::to_string(end) + " tokens exceeds the context (" +
                  std::to_string(std::min(ch.cache->capacity(), c.max_seq_len)) + " tokens)");
  }
}

void LlamaModel::forward(std::span<const int> tokens, int pos0, KvCache& cache, LogitsMode mode, float* logits) {
  TESSERA_CHECK_MSG(shard_.pp_size == 1, "forward() needs every layer; pipeline stages use embed/run_layers/head");
  const ModelConfig& c = model_.config;
  const int n = static_cast<int>(tokens.size());
  if (n == 0) throw Error("forward: no tokens");
  if (pos0 < 0 || pos0 + n > cache.capacity() || pos0 + n > c.max_seq_len)
    throw Error("sequence of " + std::to_string(pos0 + n) + " tokens exceeds the context (" +
                std::to_string(std::min(cache.capacity(), c.max_seq_len)) + " tokens)");
  for (int done = 0; done < n; done += max_batch_tokens_) {
    const int chunk = std::min(max_batch_tokens_, n - done);
    const SequenceChunk ch{&cache, pos0 + done, chunk, true};
    embed(tokens.subspan(sz(done), sz(chunk)));
    run_layers({&ch, 1});
    if (mode == LogitsMode::kAll) {
      head({&ch, 1}, /*all_rows=*/true, logits + sz(done) * sz(c.vocab_size));
    } else if (done + chunk == n) {
      head({&ch, 1}, /*all_rows=*/false, logits);
    }
  }
}

void LlamaModel::forward_batch(std::span<const int> tokens, std::span<const SequenceChunk> chunks, float* logits) {
  TESSERA_CHECK_MSG(shard_.pp_size == 1, "forward_batch() needs every layer");
  TESSERA_CHECK(static_cast<int64_t>(tokens.size()) == batch_rows(chunks));
  embed(tokens);
  run_layers(chunks);
  head(chunks, /*all_rows=*/false, logits);
}

void LlamaModel::embed(std::span<const int> tokens) {
  TESSERA_CHECK(shard_.first_stage());
  const ModelConfig& c = model_.config;
  const int n = static_cast<int>(tokens.size());
  if (n > max_batch_tokens_)
    throw Error("a batch of " + std::to_string(n) + " tokens exceeds the model's batch limit of " +
                std::to_string(max_batch_tokens_) + " tokens");
  for (int t : tokens)
    if (t < 0 || t >= c.vocab_size)
      throw Error("token id " + std::to_string(t) + " is outside the vocabulary (" + std::to_string(c.vocab_size) +
                  ")");
  const Matrix& table = weights_.tok_embeddings;
  float* x = x_.as<float>();
  if (shard_.vocab.size() == c.vocab_size) {
    backend_.embedding(table, tokens.data(), n, x);
    return;
  }
  // Vocab-parallel: each rank fills the rows of the tokens it holds, zeros elsewhere, and the sum has them all.
  for (int i = 0; i < n; ++i) {
    float* row = x + sz(i) * sz(c.dim);
    const int t = tokens[sz(i)];
    if (t >= shard_.vocab.begin && t < shard_.vocab.end) {
      const int local = t - static_cast<int>(shard_.vocab.begin);
      backend_.embedding(table, &local, 1, row);
    } else {
      backend_.copy(row, zero_row_.data(), sz(c.dim) * sizeof(float));
    }
  }
  tp_exchange_->all_reduce_sum(x, sz(n) * sz(c.dim));
}

void LlamaModel::run_layers(std::span<const SequenceChunk> chunks) {
  const ModelConfig& c = model_.config;
  Backend& be = backend_;
  const int n = batch_rows(chunks);
  check_positions(chunks);
  const size_t dim = sz(c.dim);
  {
    int row = 0;
    for (const SequenceChunk& ch : chunks)
      for (int i = 0; i < ch.n_tokens; ++i) positions_[sz(row++)] = ch.pos0 + i;
  }
  plan_row_runs(chunks);
  const bool split = shard_.tp_size > 1;
  float* x = x_.as<float>();
  float* xb = xb_.as<float>();
  float *q = q_.as<float>(), *k = k_.as<float>(), *v = v_.as<float>(), *att = att_.as<float>();
  float *proj = proj_.as<float>(), *hidden = hidden_.as<float>();
  for (int li = 0; li < shard_.n_layers(); ++li) {
    const int l = shard_.layer_begin + li;  // index in the whole model, for observers
    const BackendLayerWeights& lw = weights_.layers[sz(li)];
    const LayerDims d = dims_of(lw, c);
    const int q_dim = d.heads * c.head_dim, kv_dim = d.kv_heads * c.head_dim;
    const AttentionShape shape{d.heads, d.kv_heads, c.head_dim};

    be.rmsnorm(x, lw.attn_norm, n, c.dim, c.rms_eps, xb);
    if (observer_) observer_->observe(l, LinearInput::kAttnIn, xb, n, c.dim);
    linear(xb, lw.wq, lw.bq, q);
    linear(xb, lw.wk, lw.bk, k);
    linear(xb, lw.wv, lw.bv, v);
    be.rope(q, n, d.heads, positions_.data(), weights_.rope);
    be.rope(k, n, d.kv_heads, positions_.data(), weights_.rope);
    int row = 0;
    attention_calls_.clear();
    for (const SequenceChunk& ch : chunks) {
      const KvLayer kv = ch.cache->layer(li);
      // Caches made for this shard (make_cache, make_kv_pool) hold rows of exactly kv_dim floats: a chunk's rows
      // are consecutive there (within each block of a paged cache), one copy each for keys and values per run.
      TESSERA_CHECK_MSG(kv.stride == kv_dim, "KV cache made for another shard");
      for (int i = 0; i < ch.n_tokens;) {
        const int rows = kv.contiguous_rows(ch.pos0 + i, ch.n_tokens - i);
        const size_t src = sz(row + i) * sz(kv_dim), bytes = sz(rows) * sz(kv_dim) * sizeof(float);
        be.copy(kv.k_row(ch.pos0 + i), k + src, bytes);
        be.copy(kv.v_row(ch.pos0 + i), v + src, bytes);
        i += rows;
      }
      const size_t off = sz(row) * sz(q_dim);
      attention_calls_.push_back({q + off, att + off, ch.n_tokens, ch.pos0, kv});
      row += ch.n_tokens;
    }
    be.attention_batch(attention_calls_, shape);
    if (observer_) observer_->observe(l, LinearInput::kAttnOut, att, n, q_dim);
    linear(att, lw.wo, nullptr, proj);
    if (split) tp_exchange_->all_reduce_sum(proj, sz(n) * dim);
    be.add(x, proj, sz(n) * dim);

    be.rmsnorm(x, lw.ffn_norm, n, c.dim, c.rms_eps, xb);
    if (observer_) observer_->observe(l, LinearInput::kFfnIn, xb, n, c.dim);
    linear_silu_mul(xb, lw.w_gate, lw.w_up, hidden);
    if (observer_) observer_->observe(l, LinearInput::kFfnMid, hidden, n, d.hidden);
    linear(hidden, lw.w_down, nullptr, proj);
    if (split) tp_exchange_->all_reduce_sum(proj, sz(n) * dim);
    be.add(x, proj, sz(n) * dim);
  }
}

void LlamaModel::plan_row_runs(std::span<const SequenceChunk> chunks) {
  row_runs_.clear();
  int row = 0;
  for (const SequenceChunk& ch : chunks) {
    const bool single = ch.n_tokens == 1;
    if (!row_runs_.empty() && row_runs_.back().single == single) {
      row_runs_.back().rows += ch.n_tokens;
    } else {
      row_runs_.push_back({row, ch.n_tokens, single});
    }
    row += ch.n_tokens;
  }
}

template <typename PerRow, typename Blocked>
void LlamaModel::for_each_run(const float* x, int64_t in_cols, float* y, int64_t out_cols, const PerRow& per_row,
                              const Blocked& blocked) const {
  for (const RowRun& r : row_runs_) {
    const float* in = x + sz(r.row0) * sz(in_cols);
    float* out = y + sz(r.row0) * sz(out_cols);
    if (r.single) {
      per_row(in, r.rows, out);
    } else {
      blocked(in, r.rows, out);
    }
  }
}

void LlamaModel::linear(const float* x, const Matrix& w, const float* bias, float* y) {
  for_each_run(
      x, w.cols, y, w.rows, [&](const float* in, int n, float* out) { backend_.matmul_rows(in, n, w, bias, out); },
      [&](const float* in, int n, float* out) { backend_.matmul(in, n, w, bias, out); });
}

void LlamaModel::linear_silu_mul(const float* x, const Matrix& gate, const Matrix& up, float* out) {
  for_each_run(
      x, gate.cols, out, gate.rows,
      [&](const float* in, int n, float* o) { backend_.matmul_silu_mul_rows(in, n, gate, up, o); },
      [&](const float* in, int n, float* o) { backend_.matmul_silu_mul(in, n, gate, up, o); });
}

void LlamaModel::head(std::span<const SequenceChunk> chunks, bool all_rows, float* logits) {
  TESSERA_CHECK(shard_.last_stage());
  const ModelConfig& c = model_.config;
  const int n = batch_rows(chunks);
  const size_t dim = sz(c.dim);
  const float* x = x_.as<float>();
  float* xb = xb_.as<float>();
  int rows = 0;
  if (all_rows) {
    backend_.rmsnorm(x, weights_.final_norm, n, c.dim, c.rms_eps, xb);
    rows = n;
  } else {
    int row = 0;
    for (const SequenceChunk& ch : chunks) {
      row += ch.n_tokens;
      const int take = ch.all_logits ? ch.n_tokens : ch.logits ? 1 : 0;
      if (take == 0) continue;
      backend_.rmsnorm(x + sz(row - take) * dim, weights_.final_norm, take, c.dim, c.rms_eps, xb + sz(rows) * dim);
      rows += take;
    }
  }
  if (rows == 0) return;
  // Each row stands alone (as a chunk's last token) unless all rows were asked for.
  const bool per_row = !all_rows;
  if (shard_.vocab.size() != c.vocab_size) {
    gather_logits(xb, rows, per_row, logits);
  } else if (backend_.host_memory()) {
    lm_head(xb, rows, per_row, logits);
  } else {
    // A device backend computes into its scratch; the copy back also waits for the step.
    lm_head(xb, rows, per_row, logits_.as<float>());
    backend_.copy_to_host(logits, logits_.data(), sz(rows) * sz(c.vocab_size) * sizeof(float));
  }
}

void LlamaModel::lm_head(const float* xb, int rows, bool per_row, float* out) {
  if (per_row) {
    backend_.matmul_rows(xb, rows, weights_.lm_head, nullptr, out);
  } else {
    backend_.matmul(xb, rows, weights_.lm_head, nullptr, out);
  }
}

void LlamaModel::gather_logits(const float* xb, int rows, bool per_row, float* host_logits) {
  // Every rank computes [rows][its shard] into a buffer of rows x vocab_padded floats and the all-gather sends the
  // whole buffer, the same count from every rank; rank r's rows are then read at its own width.
  const size_t padded = sz(shard_.vocab_padded), tp = sz(shard_.tp_size), vocab = sz(model_.config.vocab_size);
  const size_t need = sz(rows) * padded;
  // Grown on first use: most steps want a few rows of logits, and a forward of all rows many.
  if (shard_logits_.bytes() < need * sizeof(float)) shard_logits_ = backend_.allocate(need * sizeof(float));
  if (gathered_logits_.size() < need * tp) gathered_logits_.resize(need * tp);
  lm_head(xb, rows, per_row, shard_logits_.as<float>());
  tp_exchange_->all_gather_to_host(shard_logits_.as<float>(), need, gathered_logits_.data());
  for (size_t r = 0; r < tp; ++r) {
    const size_t begin = std::min(vocab, r * padded), width = std::min(vocab, begin + padded) - begin;
    const float* from = gathered_logits_.data() + r * need;
    for (size_t i = 0; i < sz(rows); ++i)
      std::memcpy(host_logits + i * vocab + begin, from + i * width, width * sizeof(float));
  }
}

}  // namespace tessera
