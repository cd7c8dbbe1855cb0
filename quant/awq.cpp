#include "quant/awq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <random>
#include <string>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "quant/awq_dots.h"
#include "quant/quant_traits.h"
#include "quant/shard_calibration.h"

namespace tessera::quant {
namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

// Accumulates sums and a reservoir sample of the rows of every projection input of a shard's layers. Each input has
// its own random stream, seeded from its whole-model layer index, so a pipeline stage samples what one process
// samples. Inputs a tensor-parallel rank holds only some columns of are gathered whole first.
class StatsObserver final : public ActivationObserver {
 public:
  StatsObserver(const ModelData& model, int max_samples, uint64_t seed, Communicator* tp)
      : layer_begin_(model.layout().layer_begin),
        max_samples_(max_samples),
        tp_(tp),
        stats_(model.weights.layers.size()),
        sums_(stats_.size() * kNumLinearInputs) {
    for (size_t i = 0; i < sums_.size(); ++i)
      sums_[i].rng.seed(seed ^ (0x9E3779B97F4A7C15ull * (sz(layer_begin_) * kNumLinearInputs + i + 1)));
    if (tp_ != nullptr) {
      const ModelShard shard = model.layout();
      column_split_[static_cast<size_t>(LinearInput::kAttnOut)] = split_of(shard, model.config, ShardedWeight::kWo);
      column_split_[static_cast<size_t>(LinearInput::kFfnMid)] = split_of(shard, model.config, ShardedWeight::kWDown);
    }
  }

  void observe(int layer, LinearInput which, const float* x, int n, int cols) override {
    const size_t l = sz(layer - layer_begin_);  // observers see whole-model layer indices
    TESSERA_CHECK(l < stats_.size());
    detail::WholeMatrix whole;
    if (const auto& split = column_split_[static_cast<size_t>(which)]) {
      whole = detail::gather_split(*tp_, x, n, cols, *split);
      x = whole.data.data();
      cols = static_cast<int>(whole.cols);
    }
    InputStats& s = stats_[l].inputs[static_cast<size_t>(which)];
    Sums& acc = sums_[l * kNumLinearInputs + static_cast<size_t>(which)];
    if (s.cols == 0) {
      s.cols = cols;
      acc.abs.assign(sz(cols), 0.0);
      acc.sq.assign(sz(cols), 0.0);
      s.samples.assign(sz(max_samples_) * sz(cols), 0.0f);
    }
    TESSERA_CHECK(s.cols == cols);
    for (int i = 0; i < n; ++i) {
      const float* row = x + sz(i) * sz(cols);
      for (int c = 0; c < cols; ++c) {
        acc.abs[sz(c)] += std::fabs(row[c]);
        acc.sq[sz(c)] += static_cast<double>(row[c]) * row[c];
      }
      int64_t slot = -1;
      if (s.rows_seen < max_samples_) {
        slot = s.rows_seen;
        ++s.n_samples;
      } else {
        const uint64_t j = acc.rng() % static_cast<uint64_t>(s.rows_seen + 1);
        if (j < static_cast<uint64_t>(max_samples_)) slot = static_cast<int64_t>(j);
      }
      if (slot >= 0) std::memcpy(s.samples.data() + sz(slot) * sz(cols), row, sz(cols) * sizeof(float));
      ++s.rows_seen;
    }
  }

  std::vector<LayerStats> finish() {
    for (size_t l = 0; l < stats_.size(); ++l) {
      for (size_t w = 0; w < kNumLinearInputs; ++w) {
        InputStats& s = stats_[l].inputs[w];
        const Sums& acc = sums_[l * kNumLinearInputs + w];
        s.mean_abs.resize(sz(s.cols));
        s.mean_sq.resize(sz(s.cols));
        const double rows = static_cast<double>(std::max<int64_t>(1, s.rows_seen));
        for (size_t c = 0; c < sz(s.cols); ++c) {
          s.mean_abs[c] = static_cast<float>(acc.abs[c] / rows);
          s.mean_sq[c] = static_cast<float>(acc.sq[c] / rows);
        }
        s.samples.resize(sz(s.n_samples) * sz(s.cols));
      }
    }
    return std::move(stats_);
  }

 private:
  struct Sums {
    std::vector<double> abs, sq;
    std::mt19937_64 rng;
  };
  int layer_begin_;
  int max_samples_;
  Communicator* tp_;
  std::array<std::optional<WeightSplit>, kNumLinearInputs> column_split_;
  std::vector<LayerStats> stats_;
  std::vector<Sums> sums_;
};

// The f32 rows of w at evenly spaced indices (all rows when there are at most `max_rows`).
std::vector<int64_t> sample_rows(int64_t rows, int max_rows) {
  const int64_t count = std::min<int64_t>(rows, std::max(1, max_rows));
  std::vector<int64_t> idx(sz(count));
  for (int64_t i = 0; i < count; ++i) idx[sz(i)] = i * rows / count;
  return idx;
}

// The row's quantization error in the input space it is measured in: d = decode(encode(w * s)) / s - w.
void quantization_delta(const float* w, int64_t cols, const QuantSpec& spec, const float* s, const float* importance,
                        std::vector<float>& ws, std::vector<uint8_t>& enc, float* d) {
  const DType dt = *spec.dtype;
  const int group = is_grouped(dt) ? spec.group : 0;
  for (int64_t c = 0; c < cols; ++c) ws[sz(c)] = s ? w[c] * s[c] : w[c];
  encode_row(ws.data(), cols, dt, group, importance, enc.data());
  decode_row(enc.data(), cols, dt, group, d);
  for (int64_t c = 0; c < cols; ++c) d[c] = (s ? d[c] / s[c] : d[c]) - w[c];
}

// Rows whose output errors are measured together: up to kRowsPerPass deltas against each activation row.
constexpr int kRowsPerPass = kMaxDotRows;

struct RowBatch {
  explicit RowBatch(int64_t cols) : cols(cols), ws(sz(cols)), deltas(sz(kRowsPerPass) * sz(cols)) {}
  float* delta(int r) { return deltas.data() + sz(r) * sz(cols); }
  int64_t cols;
  std::vector<float> ws;
  std::vector<uint8_t> enc;
  std::vector<float> deltas;
  std::vector<float> weight_row;  // a caller's scratch for the row it measures
};

// errs[r] = sum_i (x_i . d_r)^2 over the n rows of x, for each of `rows` rows whose delta d_r
// fill(r, batch, slot) writes into batch.delta(slot). The rows are split over the pool in passes of kRowsPerPass.
template <typename Fill>
void output_errors(ThreadPool& pool, int64_t rows, int64_t cols, const float* x, int n, double* errs,
                   const Fill& fill) {
  const int64_t passes = (rows + kRowsPerPass - 1) / kRowsPerPass;
  pool.parallel_for(passes, 1, [&](int64_t b, int64_t e) {
    RowBatch batch(cols);
    for (int64_t p = b; p < e; ++p) {
      const int64_t first = p * kRowsPerPass;
      const int count = static_cast<int>(std::min<int64_t>(kRowsPerPass, rows - first));
      const float* d[kRowsPerPass];
      for (int r = 0; r < count; ++r) {
        fill(first + r, batch, r);
        d[r] = batch.delta(r);
      }
      double err[kRowsPerPass] = {};
      float y[kRowsPerPass];
      for (int i = 0; i < n; ++i) {
        lane8_dots(x + sz(i) * sz(cols), d, count, cols, y);
        for (int r = 0; r < count; ++r) err[r] += static_cast<double>(y[r]) * y[r];
      }
      for (int r = 0; r < count; ++r) errs[first + r] = err[r];
    }
  });
}

}  // namespace

void encode_row(const float* x, int64_t cols, DType dtype, int group, const float* importance, void* row) {
  switch (dtype) {
    case DType::F32:
      std::memcpy(row, x, sz(cols) * sizeof(float));
      return;
    case DType::F16:
    case DType::BF16: {
      auto* out = static_cast<uint8_t*>(row);
      for (int64_t i = 0; i < cols; ++i) {
        const uint16_t h = dtype == DType::F16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
        std::memcpy(out + 2 * sz(i), &h, 2);
      }
      return;
    }
    default:
      quant_traits(dtype).quantize_row(x, cols, group, importance, row);
  }
}

void decode_row(const void* row, int64_t cols, DType dtype, int group, float* out) {
  switch (dtype) {
    case DType::F32:
      std::memcpy(out, row, sz(cols) * sizeof(float));
      return;
    case DType::F16:
    case DType::BF16: {
      const auto* in = static_cast<const uint8_t*>(row);
      for (int64_t i = 0; i < cols; ++i) {
        uint16_t h;
        std::memcpy(&h, in + 2 * sz(i), 2);
        out[i] = dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      return;
    }
    default:
      quant_traits(dtype).dequantize_row(row, cols, group, out);
  }
}

std::vector<std::vector<int>> calibration_chunks(std::span<const int> tokens, int chunk_len, int bos_id) {
  TESSERA_CHECK(chunk_len >= 2);
  std::vector<std::vector<int>> chunks;
  for (size_t pos = 0; pos < tokens.size();) {
    std::vector<int> chunk;
    if (pos > 0) chunk.push_back(bos_id);
    const size_t take = std::min(tokens.size() - pos, sz(chunk_len) - chunk.size());
    chunk.insert(chunk.end(), tokens.begin() + static_cast<std::ptrdiff_t>(pos),
                 tokens.begin() + static_cast<std::ptrdiff_t>(pos + take));
    pos += take;
    chunks.push_back(std::move(chunk));
  }
  return chunks;
}

std::unique_ptr<Backend> make_calibration_backend(ThreadPool& pool) {
  return std::make_unique<CpuBackend>(pool.size());
}

std::vector<LayerStats> collect_activation_stats(const ModelData& model, std::span<const int> tokens, ThreadPool& pool,
                                                 const CalibrationOptions& options,
                                                 const std::function<void(size_t, size_t)>& progress) {
  const ModelConfig& c = model.config;
  const ModelShard shard = model.layout();
  if (tokens.size() < 2) throw Error("calibration needs at least 2 tokens, got " + std::to_string(tokens.size()));
  const std::span<const int> used = tokens.first(std::min(tokens.size(), sz(std::max(2, options.max_total_tokens))));
  const int chunk_len = detail::calibration_chunk_len(c, options.max_chunk_tokens);
  Communicator* tp = shard.tp_size > 1 ? options.tp : nullptr;
  Communicator* pp = shard.pp_size > 1 ? options.pp : nullptr;
  TESSERA_CHECK_MSG(shard.tp_size == 1 || (tp != nullptr && tp->size() == shard.tp_size),
                    "calibrating a tensor-parallel shard needs its group");
  TESSERA_CHECK_MSG(shard.pp_size == 1 || (pp != nullptr && pp->size() == shard.pp_size),
                    "calibrating a pipeline stage needs the pipeline group");
  detail::StageInputs stage_in, stage_out;
  if (!shard.first_stage()) stage_in = detail::receive_stage_inputs(*pp, model, used, chunk_len);
  const size_t n_chunks = calibration_chunks(used, chunk_len, c.bos_id).size();
  StatsObserver observer(model, std::max(1, options.max_samples), options.seed, tp);
  size_t done = 0;
  if (progress) progress(0, n_chunks);
  detail::run_calibration_chunks(model, used, chunk_len, stage_in, pool, tp, &observer,
                                 [&](const float* hidden, int n) {
                                   if (!shard.last_stage()) stage_out.emplace_back(hidden, hidden + sz(n) * sz(c.dim));
                                   if (progress) progress(++done, n_chunks);
                                 });
  if (!shard.last_stage()) detail::send_stage_outputs(*pp, model, stage_out);
  return observer.finish();
}

std::vector<float> channel_magnitudes(const InputStats& stats, int tie_groups, int block) {
  std::vector<float> m = stats.mean_abs;
  if (tie_groups > 1) {
    const size_t super = sz(tie_groups) * sz(block);
    TESSERA_CHECK(block > 0 && m.size() % super == 0);
    for (size_t b = 0; b < m.size(); b += super) {
      for (size_t d = 0; d < sz(block); ++d) {
        double sum = 0.0;
        for (size_t j = 0; j < sz(tie_groups); ++j) sum += m[b + j * sz(block) + d];
        for (size_t j = 0; j < sz(tie_groups); ++j) m[b + j * sz(block) + d] = static_cast<float>(sum / tie_groups);
      }
    }
  }
  float mx = 0.0f;
  for (float v : m) mx = std::max(mx, v);
  if (!(mx > 0.0f) || !std::isfinite(mx)) return std::vector<float>(m.size(), 1.0f);
  for (float& v : m) v = std::max(v, 1e-4f * mx);
  return m;
}

std::vector<float> scales_for_alpha(std::span<const float> magnitudes, float alpha) {
  std::vector<float> s(magnitudes.size(), 1.0f);
  if (alpha == 0.0f || s.empty()) return s;
  float lo = INFINITY, hi = 0.0f;
  for (size_t i = 0; i < s.size(); ++i) {
    s[i] = std::pow(magnitudes[i], alpha);
    lo = std::min(lo, s[i]);
    hi = std::max(hi, s[i]);
  }
  const float norm = std::sqrt(lo * hi);
  for (float& v : s) v /= norm;
  return s;
}

AwqSearchResult search_scales(std::span<const AwqMember> members, const InputStats& stats,
                              std::span<const float> magnitudes, ThreadPool& pool, const AwqSearchOptions& options) {
  const int64_t cols = stats.cols;
  AwqSearchResult result;
  result.scale.assign(sz(cols), 1.0f);
  const int n = std::min(options.max_rows, stats.n_samples);
  if (n <= 0 || cols == 0) return result;
  TESSERA_CHECK(magnitudes.size() == sz(cols));
  const float* x = stats.samples.data();

  // The weight rows the error is measured on, expanded to f32 once.
  struct Row {
    size_t member;
    std::vector<float> w;
  };
  std::vector<Row> rows;
  for (size_t m = 0; m < members.size(); ++m) {
    const AwqMember& mem = members[m];
    TESSERA_CHECK(mem.weight->cols == cols);
    if (mem.spec.keep()) continue;  // stays exact: no error whatever the scale
    for (int64_t r : sample_rows(mem.weight->rows, options.max_weight_rows)) {
      Row row{m, std::vector<float>(sz(cols))};
      dequantize_matrix_row(*mem.weight, r, row.w.data());
      rows.push_back(std::move(row));
    }
  }
  if (rows.empty()) return result;

  std::vector<float> alphas = options.alphas;
  if (std::find(alphas.begin(), alphas.end(), 0.0f) == alphas.end()) alphas.insert(alphas.begin(), 0.0f);
  std::sort(alphas.begin(), alphas.end());
  std::vector<double> errs(rows.size());
  std::vector<float> importance(sz(cols));
  bool first = true;
  for (float alpha : alphas) {
    std::vector<float> s = scales_for_alpha(magnitudes, alpha);
    for (int64_t c = 0; c < cols; ++c) importance[sz(c)] = stats.mean_sq[sz(c)] / (s[sz(c)] * s[sz(c)]);
    output_errors(pool, static_cast<int64_t>(rows.size()), cols, x, n, errs.data(),
                  [&](int64_t i, RowBatch& batch, int slot) {
                    const Row& row = rows[sz(i)];
                    const QuantSpec& spec = members[row.member].spec;
                    batch.enc.resize(dtype_row_bytes(*spec.dtype, cols, spec.group));
                    quantization_delta(row.w.data(), cols, spec, s.data(), importance.data(), batch.ws, batch.enc,
                                       batch.delta(slot));
                  });
    double total = 0.0;
    for (double v : errs) total += v;
    if (alpha == 0.0f) result.rtn_error = total;
    if (first || total < result.error) {
      result.alpha = alpha;
      result.error = total;
      result.scale = std::move(s);
    }
    first = false;
  }
  return result;
}

detail::WholeMatrix gather_sampled_rows(Communicator& tp, const Matrix& local, const WeightSplit& split,
                                        int64_t whole_rows, int max_rows) {
  const std::vector<int64_t> idx = sample_rows(whole_rows, max_rows);
  const int64_t cols = local.cols;
  if (!split.by_rows) {
    // Every rank holds every row, and some of its columns.
    std::vector<float> mine(idx.size() * sz(cols));
    for (size_t i = 0; i < idx.size(); ++i) dequantize_matrix_row(local, idx[i], mine.data() + i * sz(cols));
    return detail::gather_split(tp, mine.data(), static_cast<int64_t>(idx.size()), cols, split);
  }
  // The sampled indices this rank holds are a run [first, last) of them: gathered as a split of the sample.
  const auto first = std::lower_bound(idx.begin(), idx.end(), split.range.begin);
  const auto last = std::lower_bound(idx.begin(), idx.end(), split.range.end);
  std::vector<float> mine(sz(last - first) * sz(cols));
  for (auto it = first; it != last; ++it)
    dequantize_matrix_row(local, *it - split.range.begin, mine.data() + sz(it - first) * sz(cols));
  const WeightSplit run{true, {first - idx.begin(), last - idx.begin()}};
  return detail::gather_split(tp, mine.data(), last - first, cols, run);
}

double output_error(const Matrix& w, const QuantSpec& spec, std::span<const float> scale, const float* x, int n,
                    ThreadPool& pool, std::span<const float> importance) {
  if (spec.keep()) return 0.0;
  const int64_t cols = w.cols;
  TESSERA_CHECK(scale.empty() || scale.size() == sz(cols));
  TESSERA_CHECK(importance.empty() || importance.size() == sz(cols));
  std::vector<double> errs(sz(w.rows));
  output_errors(pool, w.rows, cols, x, n, errs.data(), [&](int64_t r, RowBatch& batch, int slot) {
    batch.enc.resize(dtype_row_bytes(*spec.dtype, cols, spec.group));
    batch.weight_row.resize(sz(cols));
    dequantize_matrix_row(w, r, batch.weight_row.data());
    quantization_delta(batch.weight_row.data(), cols, spec, scale.empty() ? nullptr : scale.data(),
                       importance.empty() ? nullptr : importance.data(), batch.ws, batch.enc, batch.delta(slot));
  });
  double total = 0.0;
  for (double v : errs) total += v;
  return total;
}

}  // namespace tessera::quant
