// The load-time compression pipeline: resolve a scheme per weight, optionally search activation-aware scales,
// then re-encode every weight multithreaded into new storage and report what it cost.
#include "quant/compress.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string_view>
#include <unordered_set>

#include "engine/core/check.h"
#include "engine/core/thread_pool.h"
#include "parallel/communicator.h"
#include "quant/awq.h"
#include "quant/quant_traits.h"
#include "quant/rule_text.h"
#include "quant/sparse_formats.h"

namespace tessera::quant {
namespace {

using Clock = std::chrono::steady_clock;

// The seven projections of a layer, in canonical order (kLayerSlotNames).
constexpr int kNumProj = 7;
enum Proj { kWq, kWk, kWv, kWo, kWGate, kWUp, kWDown };

// Which LinearInput feeds a projection.
LinearInput input_of(int p) {
  switch (p) {
    case kWq:
    case kWk:
    case kWv:
      return LinearInput::kAttnIn;
    case kWo:
      return LinearInput::kAttnOut;
    case kWGate:
    case kWUp:
      return LinearInput::kFfnIn;
    default:
      return LinearInput::kFfnMid;
  }
}

size_t idx(LinearInput which) {
  return static_cast<size_t>(which);
}

bool is_four_bit(const QuantSpec& s) {
  return s.dtype && is_grouped(*s.dtype);
}

std::string scheme_of(DType dtype, int group) {
  QuantSpec s;
  s.dtype = dtype;
  s.group = is_grouped(dtype) ? group : 0;
  return s.to_string();
}

struct Target {
  std::string name;
  int layer = -1;  // -1: tok_embeddings / lm_head
  int proj = -1;   // Proj for layer weights
  Matrix* matrix = nullptr;
  QuantSpec spec;
};

// Everything one matrix is re-encoded with: stored = diag(1/row_div) * W * diag(col_scale).
struct Encoding {
  DType dtype = DType::F32;
  int group = 0;
  std::span<const float> col_scale;   // empty = ones
  std::span<const float> row_div;     // empty = ones
  std::span<const float> importance;  // empty = none
  std::span<const float> row_amax;    // Q8/S24Q8: each row's max |w| over the whole (sharded) row; empty = own
};

struct Encoded {
  Matrix matrix;
  double relative_error = 0.0;
};

// Reports progress in one unit across phases; calls the user callback on the calling thread only.
class Progress {
 public:
  Progress(const std::function<void(size_t, size_t)>& fn, size_t total) : fn_(fn), total_(total) {}
  void set(size_t done) {
    done_ = std::min(done, total_);
    if (fn_) fn_(done_, total_);
  }
  void add(size_t n) { set(done_ + n); }
  void finish() { set(total_); }
  size_t done() const { return done_; }

 private:
  const std::function<void(size_t, size_t)>& fn_;
  size_t total_;
  size_t done_ = 0;
};

// Row r as fp32: bf16 (the usual load-time source) inline, everything else through the traits table.
void expand_row(const Matrix& m, int64_t r, float* out) {
  if (m.dtype != DType::BF16) {
    dequantize_matrix_row(m, r, out);
    return;
  }
  // Restrict-qualified and with the length in a local, so the loop vectorizes (through a char pointer the store to
  // out could alias the source and m.cols).
  const uint8_t* __restrict in = static_cast<const uint8_t*>(m.row(r));
  float* __restrict o = out;
  const int64_t cols = m.cols;
  for (int64_t c = 0; c < cols; ++c) {
    uint16_t h;
    std::memcpy(&h, in + 2 * c, 2);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    std::memcpy(o + c, &bits, 4);
  }
}

// sum (a - b)^2 and sum b^2 of one row, in eight float lanes (vectorizes) finished in double.
void square_sums(const float* a, const float* b, size_t n, double* e2, double* n2) {
  float de[8] = {}, dn[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (size_t k = 0; k < 8; ++k) {
      const float d = a[i + k] - b[i + k];
      de[k] += d * d;
      dn[k] += b[i + k] * b[i + k];
    }
  }
  double se = 0.0, sn = 0.0;
  for (size_t k = 0; k < 8; ++k) {
    se += de[k];
    sn += dn[k];
  }
  for (; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    se += d * d;
    sn += static_cast<double>(b[i]) * b[i];
  }
  *e2 = se;
  *n2 = sn;
}

// Max |w| of every row (any dtype).
std::vector<float> row_absmax(const Matrix& src, ThreadPool& pool) {
  std::vector<float> amax(static_cast<size_t>(src.rows));
  pool.parallel_for(src.rows, 1, [&](int64_t b, int64_t e) {
    std::vector<float> w(static_cast<size_t>(src.cols));
    for (int64_t r = b; r < e; ++r) {
      expand_row(src, r, w.data());
      float m = 0.0f;
      for (float v : w) m = std::max(m, std::fabs(v));
      amax[static_cast<size_t>(r)] = m;
    }
  });
  return amax;
}

// Re-encodes `src` (any dtype) into new storage. Rows are processed in slabs so progress can be reported between
// them; per-row error terms are summed in row order so the result does not depend on the thread count.
Encoded encode_matrix(const Matrix& src, const Encoding& enc, WeightStore& store, ThreadPool& pool,
                      Progress& progress) {
  Encoded out;
  Matrix& dst = out.matrix;
  dst.dtype = enc.dtype;
  dst.rows = src.rows;
  dst.cols = src.cols;
  dst.group = is_grouped(enc.dtype) ? enc.group : 0;
  uint8_t* buf = store.allocate(std::max<size_t>(dst.bytes(), 1));
  dst.data = buf;
  const size_t cols = static_cast<size_t>(src.cols);
  const size_t row_bytes = dst.row_bytes();
  const bool transform = !enc.col_scale.empty() || !enc.row_div.empty();
  const float* importance = enc.importance.empty() ? nullptr : enc.importance.data();
  std::vector<double> err(static_cast<size_t>(src.rows)), norm(static_cast<size_t>(src.rows));
  const int64_t slab = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, src.cols));
  for (int64_t r0 = 0; r0 < src.rows; r0 += slab) {
    const int64_t n = std::min(slab, src.rows - r0);
    pool.parallel_for(n, 1, [&](int64_t b, int64_t e) {
      std::vector<float> w(cols), ws(transform ? cols : 0), dq(cols);
      for (int64_t i = b; i < e; ++i) {
        const int64_t r = r0 + i;
        expand_row(src, r, w.data());
        const float* x = w.data();
        const float rd = enc.row_div.empty() ? 1.0f : enc.row_div[static_cast<size_t>(r)];
        if (transform) {
          for (size_t c = 0; c < cols; ++c) ws[c] = (enc.col_scale.empty() ? w[c] : w[c] * enc.col_scale[c]) / rd;
          x = ws.data();
        }
        uint8_t* row = buf + static_cast<size_t>(r) * row_bytes;
        if (!enc.row_amax.empty() && importance == nullptr) {
          const float amax = enc.row_amax[static_cast<size_t>(r)];
          if (enc.dtype == DType::S24Q8) {
            s24q8_quantize_row_with_amax(x, src.cols, amax, row);
          } else {
            quantize_q8_row_with_amax(x, src.cols, amax, row);
          }
        } else {
          encode_row(x, src.cols, enc.dtype, dst.group, importance, row);
        }
        decode_row(row, src.cols, enc.dtype, dst.group, dq.data());
        // The error is measured on the effective weights in the original basis, so it is comparable between
        // plain and activation-aware quantization.
        if (transform)
          for (size_t c = 0; c < cols; ++c) dq[c] = dq[c] * rd / (enc.col_scale.empty() ? 1.0f : enc.col_scale[c]);
        double e2 = 0.0, n2 = 0.0;
        square_sums(dq.data(), w.data(), cols, &e2, &n2);
        err[static_cast<size_t>(r)] = e2;
        norm[static_cast<size_t>(r)] = n2;
      }
    });
    progress.add(static_cast<size_t>(n) * cols);
  }
  double e2 = 0.0, n2 = 0.0;
  for (size_t r = 0; r < err.size(); ++r) {
    e2 += err[r];
    n2 += norm[r];
  }
  out.relative_error = n2 > 0.0 ? std::sqrt(e2 / n2) : (e2 > 0.0 ? 1.0 : 0.0);
  return out;
}

std::vector<Target> list_targets(ModelData& model) {
  std::vector<Target> t;
  for (NamedWeight& w : model.named_weights()) t.push_back({std::move(w.name), w.layer, w.slot, w.matrix, {}});
  return t;
}

// check_unused: a rule that matches nothing is a typo, unless this is one pipeline stage of a larger model.
void resolve_specs(std::vector<Target>& targets, const CompressOptions& options, bool check_unused) {
  std::vector<std::string> names;
  for (const Target& t : targets) names.push_back(t.name);
  const std::vector<QuantSpec> specs = resolve_quant_specs(options, names, check_unused);
  for (size_t i = 0; i < targets.size(); ++i) targets[i].spec = specs[i];
}

// The kv_dim version of a q_dim kAttnOut scale (equal within each GQA group): the row scale folded into wv. The
// layer's own head counts (structured pruning may have left layers with different counts).
std::vector<float> kv_scale_of(const std::vector<float>& q_scale, const ModelConfig& c, const LayerWeights& lw) {
  const int g = c.n_heads / c.n_kv_heads;  // the GQA group size: the same in every layer
  const int n_kv_heads = static_cast<int>(lw.wk.rows / c.head_dim);
  std::vector<float> kv(static_cast<size_t>(lw.wk.rows));
  for (int kvh = 0; kvh < n_kv_heads; ++kvh)
    for (int d = 0; d < c.head_dim; ++d)
      kv[static_cast<size_t>(kvh * c.head_dim + d)] = q_scale[static_cast<size_t>(kvh * g * c.head_dim + d)];
  return kv;
}

void validate_plan(const ModelData& model, const std::vector<AwqLayerPlan>& plan) {
  const ModelConfig& c = model.config;
  TESSERA_CHECK_MSG(plan.size() == model.weights.layers.size(), "AWQ plan has the wrong number of layers");
  const int g = c.n_heads / c.n_kv_heads;
  for (size_t l = 0; l < plan.size(); ++l) {
    const AwqLayerPlan& p = plan[l];
    const LayerWeights& lw = model.weights.layers[l];
    const int q_dim = static_cast<int>(lw.wq.rows), n_heads = q_dim / c.head_dim;
    const int widths[kNumLinearInputs] = {c.dim, q_dim, c.dim, static_cast<int>(lw.w_gate.rows)};
    for (int i = 0; i < kNumLinearInputs; ++i) {
      const auto& s = p.scale[static_cast<size_t>(i)];
      if (s.empty()) continue;
      TESSERA_CHECK_MSG(s.size() == static_cast<size_t>(widths[i]), "AWQ scale of the wrong width");
      for (float v : s) TESSERA_CHECK_MSG(std::isfinite(v) && v > 0.0f, "AWQ scales must be positive");
    }
    const auto& so = p.scale[idx(LinearInput::kAttnOut)];
    if (!so.empty())
      for (int h = 0; h < n_heads; ++h)
        for (int d = 0; d < c.head_dim; ++d)
          TESSERA_CHECK_MSG(
              so[static_cast<size_t>(h * c.head_dim + d)] == so[static_cast<size_t>((h / g) * g * c.head_dim + d)],
              "kAttnOut scales must be equal within a GQA group");
  }
}

// How a shard holds a projection (ShardedWeight's order differs from Proj's).
WeightSplit split_of_proj(const ModelShard& shard, const ModelConfig& c, int p) {
  constexpr ShardedWeight kSharded[kNumProj] = {ShardedWeight::kWq,   ShardedWeight::kWk,    ShardedWeight::kWv,
                                                ShardedWeight::kWo,   ShardedWeight::kWGate, ShardedWeight::kWUp,
                                                ShardedWeight::kWDown};
  return split_of(shard, c, kSharded[p]);
}

// A projection's row count in the whole model (the config keeps the whole model's numbers on a shard).
int64_t whole_rows_of(const ModelConfig& c, int p) {
  switch (p) {
    case kWq:
      return static_cast<int64_t>(c.n_heads) * c.head_dim;
    case kWk:
    case kWv:
      return static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
    case kWo:
    case kWDown:
      return c.dim;
    default:
      return c.hidden_dim;
  }
}

// The columns `range` of whole-input statistics: what a tensor-parallel rank's slice of wo / w_down reads.
void keep_columns(InputStats& st, const IndexRange& range) {
  const auto cut = [&](std::vector<float>& v, size_t rows) {
    std::vector<float> out(rows * static_cast<size_t>(range.size()));
    for (size_t r = 0; r < rows; ++r)
      std::copy_n(v.begin() + static_cast<std::ptrdiff_t>(r * static_cast<size_t>(st.cols) + range.begin), range.size(),
                  out.begin() + static_cast<std::ptrdiff_t>(r * static_cast<size_t>(range.size())));
    v = std::move(out);
  };
  cut(st.mean_abs, 1);
  cut(st.mean_sq, 1);
  cut(st.samples, static_cast<size_t>(st.n_samples));
  st.cols = static_cast<int>(range.size());
}

// Searches the plan: calibration forward, then per layer and per input group a grid search of alpha. On a
// tensor-parallel shard every rank searches on the whole inputs and the whole weights' sampled rows (gathered over
// tp), as one process does, and keeps its own columns of the wo / w_down input scales and statistics.
std::vector<AwqLayerPlan> search_plan(const ModelData& model, const std::vector<Target>& targets,
                                      const CompressOptions& options, ThreadPool& pool, Progress& progress,
                                      size_t phase_units, std::vector<LayerStats>* stats_out) {
  const ModelConfig& c = model.config;
  const ModelShard shard = model.layout();
  Communicator* tp = shard.tp_size > 1 ? options.tp : nullptr;
  const size_t base = progress.done();
  CalibrationOptions calibration;
  calibration.tp = options.tp;
  calibration.pp = options.pp;
  std::vector<LayerStats> stats = collect_activation_stats(
      model, options.calibration_tokens, pool, calibration,
      [&](size_t done, size_t total) { progress.set(base + (total ? phase_units * done / total : phase_units)); });
  const size_t n_layers = model.weights.layers.size();
  const AwqSearchOptions search;
  std::vector<AwqLayerPlan> plan(n_layers);
  for (size_t l = 0; l < n_layers; ++l) {
    for (int i = 0; i < kNumLinearInputs; ++i) {
      const auto which = static_cast<LinearInput>(i);
      std::vector<AwqMember> members;
      std::vector<detail::WholeMatrix> gathered;
      std::vector<Matrix> views;
      gathered.reserve(3);  // views point into it
      views.reserve(3);
      for (const Target& t : targets) {
        if (t.layer != static_cast<int>(l) || input_of(t.proj) != which || t.spec.keep()) continue;
        if (tp != nullptr) {
          gathered.push_back(gather_sampled_rows(*tp, *t.matrix, split_of_proj(shard, c, t.proj),
                                                 whole_rows_of(c, t.proj), search.max_weight_rows));
          const detail::WholeMatrix& w = gathered.back();
          views.push_back(Matrix{DType::F32, w.rows, w.cols, w.data.data()});
          members.push_back({&views.back(), t.spec});
        } else {
          members.push_back({t.matrix, t.spec});
        }
      }
      if (std::none_of(members.begin(), members.end(), [](const AwqMember& m) { return is_four_bit(m.spec); }))
        continue;
      const InputStats& st = stats[l].at(which);
      const std::vector<float> mag = which == LinearInput::kAttnOut
                                         ? channel_magnitudes(st, c.n_heads / c.n_kv_heads, c.head_dim)
                                         : channel_magnitudes(st);
      AwqSearchResult r = search_scales(members, st, mag, pool, search);
      plan[l].alpha[static_cast<size_t>(i)] = r.alpha;
      if (r.alpha > 0.0f) plan[l].scale[static_cast<size_t>(i)] = std::move(r.scale);
    }
    if (tp != nullptr) {
      // Row-parallel wo and w_down read this rank's columns of their inputs.
      for (const auto& [which, p] : {std::pair{LinearInput::kAttnOut, kWo}, std::pair{LinearInput::kFfnMid, kWDown}}) {
        const IndexRange cols = split_of_proj(shard, c, p).range;
        keep_columns(stats[l].inputs[idx(which)], cols);
        std::vector<float>& s = plan[l].scale[idx(which)];
        if (!s.empty()) s = std::vector<float>(s.begin() + cols.begin, s.begin() + cols.end);
      }
    }
    progress.set(base + phase_units + phase_units * (l + 1) / n_layers);
  }
  *stats_out = std::move(stats);
  return plan;
}

CompressReport run_pipeline(ModelData& model, const CompressOptions& options, const std::vector<AwqLayerPlan>* given) {
  const auto t0 = Clock::now();
  const ModelConfig& c = model.config;
  std::vector<Target> targets = list_targets(model);
  resolve_specs(targets, options, /*check_unused=*/model.layout().pp_size == 1);
  const int threads = options.threads > 0 ? options.threads : ThreadPool::default_threads();
  ThreadPool pool(threads);

  // Pruning comes first: the quantizer (and the activation-aware search) sees the survivors.
  PruneReport pruned;
  const bool prune = given == nullptr && options.prune.active();
  // Weights made on demand are made here, one by one as each is encoded below, unless something first reads the
  // whole model (pruning, the calibration forward, a given plan's check).
  const double pending_seconds_before = model.pending.seconds();
  if (prune || given != nullptr || options.activation_aware) model.make_pending_weights();
  if (prune) {
    PruneOptions prune_options = options.prune;
    if (prune_options.tp == nullptr) prune_options.tp = options.tp;
    if (prune_options.pp == nullptr) prune_options.pp = options.pp;
    pruned = prune_model(model, prune_options, options.calibration_tokens, pool, options.progress);
  }
  std::map<std::string, const PruneTensorReport*> pruned_by_name;
  for (const PruneTensorReport& p : pruned.tensors) pruned_by_name[p.name] = &p;

  // Whether any weight is int4/nf4. A pipeline stage decides from the options alone, so that every stage agrees: a
  // stage that holds none still calibrates, since later stages start from its outputs.
  const bool four_bit =
      model.layout().pp_size > 1
          ? is_four_bit(options.default_spec) || std::any_of(options.rules.begin(), options.rules.end(),
                                                             [](const QuantRule& r) { return is_four_bit(r.spec); })
          : std::any_of(targets.begin(), targets.end(), [](const Target& t) { return is_four_bit(t.spec); });
  bool search = given == nullptr && options.activation_aware;
  // A calibration text given for pruning alone does not ask for activation-aware quantization.
  if (search && prune && !four_bit) search = false;
  if (search) {
    if (!four_bit)
      throw Error(
          "activation-aware quantization (--calib) applies to int4/nf4 weights, but no weight is int4 or nf4: add "
          "--quant int4:g128 (or a rule selecting int4/nf4)");
    if (options.calibration_tokens.size() < 2)
      throw Error("activation-aware quantization needs a calibration text of at least 2 tokens");
  }

  // Tied embeddings: lm_head is the same storage as tok_embeddings.
  const Matrix original_embeddings = model.weights.tok_embeddings;
  const bool tied = model.weights.lm_head.data != nullptr && model.weights.lm_head.data == original_embeddings.data;

  size_t quant_units = 0;
  for (const Target& t : targets) quant_units += static_cast<size_t>(t.matrix->rows * t.matrix->cols);
  const size_t phase = quant_units;  // calibration and search each count as much as quantization
  Progress progress(options.progress, quant_units + (search ? 2 * phase : 0));
  progress.set(0);

  std::vector<AwqLayerPlan> searched;
  std::vector<LayerStats> stats;
  if (search) searched = search_plan(model, targets, options, pool, progress, phase, &stats);
  const std::vector<AwqLayerPlan>* plan = given ? given : (search ? &searched : nullptr);
  if (plan) validate_plan(model, *plan);

  // Fold 1/s into the ops that produce the scaled inputs. Row divisors of wv and w_up, and importance per input.
  std::vector<std::vector<float>> wv_rows(plan ? plan->size() : 0);
  std::vector<std::array<std::vector<float>, kNumLinearInputs>> importance(stats.size());
  if (plan) {
    for (size_t l = 0; l < plan->size(); ++l) {
      LayerWeights& lw = model.weights.layers[l];
      const AwqLayerPlan& p = (*plan)[l];
      if (const auto& s = p.scale[idx(LinearInput::kAttnIn)]; !s.empty())
        for (size_t i = 0; i < s.size(); ++i) lw.attn_norm[i] /= s[i];
      if (const auto& s = p.scale[idx(LinearInput::kFfnIn)]; !s.empty())
        for (size_t i = 0; i < s.size(); ++i) lw.ffn_norm[i] /= s[i];
      if (const auto& s = p.scale[idx(LinearInput::kAttnOut)]; !s.empty()) {
        wv_rows[l] = kv_scale_of(s, c, lw);
        if (!lw.bv.empty())
          for (size_t i = 0; i < wv_rows[l].size(); ++i) lw.bv[i] /= wv_rows[l][i];
      }
    }
    for (size_t l = 0; l < stats.size(); ++l) {
      for (int i = 0; i < kNumLinearInputs; ++i) {
        const InputStats& st = stats[l].inputs[static_cast<size_t>(i)];
        const auto& s = (*plan)[l].scale[static_cast<size_t>(i)];
        if ((*plan)[l].alpha[static_cast<size_t>(i)] < 0.0f) continue;  // not searched: plain RTN
        auto& imp = importance[l][static_cast<size_t>(i)];
        imp = st.mean_sq;
        if (!s.empty())
          for (size_t k = 0; k < imp.size(); ++k) imp[k] /= s[k] * s[k];
      }
    }
  }

  // 2:4-pruned tensors with an int8 / symmetric int4 scheme are stored compressed (kept values + 2-bit positions).
  for (Target& t : targets) {
    const auto it = pruned_by_name.find(t.name);
    if (it == pruned_by_name.end() || !it->second->two_of_four || !t.spec.dtype) continue;
    if (*t.spec.dtype == DType::Q8 || *t.spec.dtype == DType::Q4) {
      t.spec.dtype = *t.spec.dtype == DType::Q8 ? DType::S24Q8 : DType::S24Q4;
      t.spec.group = 0;
    }
  }

  CompressReport report;
  report.prune_seconds = pruned.seconds;
  report.prune_calibration_passes = pruned.calibration_passes;
  Matrix new_embeddings = original_embeddings;
  std::string embeddings_scheme;
  double embeddings_error = 0.0;
  for (Target& t : targets) {
    const bool is_lm_head = t.name == "lm_head";
    Matrix& m = *t.matrix;
    model.pending.make(t.name, m);
    const Matrix replaced = m;
    TensorReport tr;
    tr.name = t.name;
    const Matrix src = is_lm_head && tied ? original_embeddings : m;
    tr.bytes_before = is_lm_head && tied ? 0 : src.bytes();
    if (const auto it = pruned_by_name.find(t.name); it != pruned_by_name.end()) {
      tr.pruning = *it->second;
      tr.bytes_before = it->second->bytes_before;
    }

    Encoding enc;
    if (t.layer >= 0 && plan) {
      const AwqLayerPlan& p = (*plan)[static_cast<size_t>(t.layer)];
      const LinearInput which = input_of(t.proj);
      enc.col_scale = p.scale[idx(which)];
      if (t.proj == kWv) enc.row_div = wv_rows[static_cast<size_t>(t.layer)];
      if (t.proj == kWUp) enc.row_div = p.scale[idx(LinearInput::kFfnMid)];
      if (!importance.empty()) enc.importance = importance[static_cast<size_t>(t.layer)][idx(which)];
      tr.awq_alpha = p.alpha[idx(which)];
    }
    const bool transform = !enc.col_scale.empty() || !enc.row_div.empty();
    if (t.spec.keep()) {
      enc.dtype = transform ? DType::F32 : src.dtype;
      enc.group = transform ? 0 : src.group;
    } else {
      enc.dtype = *t.spec.dtype;
      enc.group = is_grouped(enc.dtype) ? t.spec.group : 0;
    }
    const bool unchanged = !transform && enc.dtype == src.dtype && (!is_grouped(enc.dtype) || enc.group == src.group);
    tr.scheme = scheme_of(enc.dtype, enc.group);

    if (is_lm_head && tied && tr.scheme == embeddings_scheme) {
      // Same scheme as the embedding table: keep sharing its (possibly new) storage.
      m = new_embeddings;
      tr.bytes_after = 0;
      tr.relative_error = embeddings_error;
    } else if (unchanged) {
      m = src;
      // A tied lm_head that keeps the original table while tok_embeddings moved on now owns that storage.
      tr.bytes_after = is_lm_head && m.data == new_embeddings.data ? 0 : src.bytes();
      progress.add(static_cast<size_t>(src.rows * src.cols));
    } else {
      std::vector<float> row_amax;
      const bool column_slice = (t.proj == kWo || t.proj == kWDown) && model.layout().tp_size > 1;
      // Int8 row scales of a row split across ranks come from the whole row (a 2:4-pruned row keeps its largest
      // values, so its absmax is the kept values' one too).
      const bool row_scaled = enc.dtype == DType::Q8 || enc.dtype == DType::S24Q8;
      if (options.share_row_absmax && column_slice && row_scaled && !transform) {
        row_amax = row_absmax(src, pool);
        options.share_row_absmax(row_amax);
        enc.row_amax = row_amax;
      }
      Encoded e = encode_matrix(src, enc, *model.store, pool, progress);
      m = e.matrix;
      tr.bytes_after = m.bytes();
      tr.relative_error = e.relative_error;
    }
    if (t.name == "tok_embeddings") {
      new_embeddings = m;
      embeddings_scheme = tr.scheme;
      embeddings_error = tr.relative_error;
    }
    report.bytes_before += tr.bytes_before;
    report.bytes_after += tr.bytes_after;
    report.tensors.push_back(std::move(tr));
    // The original goes as soon as nothing uses it (a tied lm_head may still): peak memory stays near the larger of
    // the two models instead of their sum.
    model.store->release_if_unused(replaced, model.weights);
  }
  progress.finish();
  report.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  report.make_seconds = model.pending.seconds() - pending_seconds_before;
  return report;
}

// JSON with duplicate keys rejected (nlohmann alone keeps the last one silently).
nlohmann::json parse_rules_json(const std::string& text, const std::string& path) {
  std::vector<std::unordered_set<std::string>> open;
  std::string duplicate;
  auto cb = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (ev == E::object_start) {
      open.emplace_back();
    } else if (ev == E::object_end) {
      if (!open.empty()) open.pop_back();
    } else if (ev == E::key && !open.empty() && duplicate.empty()) {
      if (!open.back().insert(parsed.get<std::string>()).second) duplicate = parsed.get<std::string>();
    }
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text, cb);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": unreadable JSON: " + e.what());
  }
  if (!duplicate.empty()) throw Error(path + ": duplicate key \"" + duplicate + "\"");
  return j;
}

}  // namespace

std::vector<QuantSpec> resolve_quant_specs(const CompressOptions& options, const std::vector<std::string>& names,
                                           bool check_unused) {
  std::vector<QuantSpec> specs(names.size(), options.default_spec);
  std::vector<bool> used(options.rules.size(), false);
  for (size_t n = 0; n < names.size(); ++n) {
    for (size_t i = 0; i < options.rules.size(); ++i) {
      if (glob_match(options.rules[i].pattern, names[n])) {
        specs[n] = options.rules[i].spec;
        used[i] = true;
      }
    }
  }
  for (size_t i = 0; i < options.rules.size() && check_unused; ++i) {
    if (used[i]) continue;
    const int layers = (static_cast<int>(names.size()) - 2) / kNumProj;
    throw Error("quantization rule '" + options.rules[i].pattern + "=" + options.rules[i].spec.to_string() +
                "' matches no weight (names are tok_embeddings, lm_head and layers.<0.." + std::to_string(layers - 1) +
                ">.<wq|wk|wv|wo|w_gate|w_up|w_down>)");
  }
  return specs;
}

int largest_group(const CompressOptions& options) {
  int group = std::max(1, options.default_spec.group);
  for (const auto& rule : options.rules) group = std::max(group, rule.spec.group);
  return group;
}

QuantRule QuantRule::parse(const std::string& text) {
  const size_t eq = text.rfind('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size())
    throw Error("bad quantization rule '" + text +
                "': expected PATTERN=SCHEME, e.g. 'layers.0.*=bf16' or 'lm_head=int8'");
  QuantRule rule;
  rule.pattern = text.substr(0, eq);
  try {
    rule.spec = QuantSpec::parse(text.substr(eq + 1));
  } catch (const Error& e) {
    throw Error("bad quantization rule '" + text + "': " + e.what());
  }
  return rule;
}

CompressOptions load_rules_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot read the quantization rules file");
  std::ostringstream ss;
  ss << in.rdbuf();
  const nlohmann::json j = parse_rules_json(ss.str(), path);
  const std::string form =
      " (expected {\"default\": \"int4:g128\", \"rules\": [{\"pattern\": \"lm_head\", "
      "\"scheme\": \"int8\"}, ...]})";
  if (!j.is_object()) throw Error(path + ": the rules file must be a JSON object" + form);
  CompressOptions options;
  for (const auto& [key, value] : j.items()) {
    if (key == "default") {
      if (!value.is_string()) throw Error(path + ": \"default\" must be a scheme string" + form);
      try {
        options.default_spec = QuantSpec::parse(value.get<std::string>());
      } catch (const Error& e) {
        throw Error(path + ": \"default\": " + e.what());
      }
    } else if (key == "rules") {
      if (!value.is_array()) throw Error(path + ": \"rules\" must be an array" + form);
      for (size_t i = 0; i < value.size(); ++i) {
        const auto& r = value[i];
        const std::string where = path + ": rules[" + std::to_string(i) + "]";
        if (!r.is_object()) throw Error(where + " must be an object {\"pattern\": ..., \"scheme\": ...}");
        for (const auto& [k, v] : r.items())
          if (k != "pattern" && k != "scheme") throw Error(where + ": unknown key \"" + k + "\" (pattern, scheme)");
        const auto p = r.find("pattern"), s = r.find("scheme");
        if (p == r.end() || !p->is_string() || p->get<std::string>().empty())
          throw Error(where + ": \"pattern\" must be a non-empty string");
        if (s == r.end() || !s->is_string()) throw Error(where + ": \"scheme\" must be a string such as \"int8\"");
        QuantRule rule;
        rule.pattern = p->get<std::string>();
        try {
          rule.spec = QuantSpec::parse(s->get<std::string>());
        } catch (const Error& e) {
          throw Error(where + ": " + e.what());
        }
        options.rules.push_back(std::move(rule));
      }
    } else {
      throw Error(path + ": unknown key \"" + key + "\"" + form);
    }
  }
  return options;
}

CompressReport compress_model(ModelData& model, const CompressOptions& options) {
  return run_pipeline(model, options, nullptr);
}

CompressReport compress_model_with_plan(ModelData& model, const CompressOptions& options,
                                        const std::vector<AwqLayerPlan>& plan) {
  return run_pipeline(model, options, &plan);
}

void write_report_json(const CompressReport& report, const std::string& path) {
  nlohmann::ordered_json j;
  j["seconds"] = report.seconds;
  j["bytes_before"] = report.bytes_before;
  j["bytes_after"] = report.bytes_after;
  if (report.prune_seconds > 0.0) {
    j["prune_seconds"] = report.prune_seconds;
    j["prune_calibration_passes"] = report.prune_calibration_passes;
  }
  j["tensors"] = nlohmann::ordered_json::array();
  for (const TensorReport& t : report.tensors) {
    nlohmann::ordered_json e;
    e["name"] = t.name;
    e["scheme"] = t.scheme;
    e["bytes_before"] = t.bytes_before;
    e["bytes_after"] = t.bytes_after;
    e["relative_error"] = t.relative_error;
    if (t.awq_alpha >= 0.0) e["awq_alpha"] = t.awq_alpha;
    if (t.pruning) {
      const PruneTensorReport& p = *t.pruning;
      nlohmann::ordered_json pj;
      pj["spec"] = p.spec;
      pj["shape_before"] = {p.rows_before, p.cols_before};
      pj["shape_after"] = {p.rows_after, p.cols_after};
      pj["zeros_before"] = p.zeros_before;
      pj["zeros_after"] = p.zeros_after;
      pj["relative_change"] = p.relative_change;
      if (!p.removed_rows.empty()) pj["removed_rows"] = p.removed_rows;
      if (!p.removed_cols.empty()) pj["removed_cols"] = p.removed_cols;
      e["pruning"] = std::move(pj);
    }
    j["tensors"].push_back(std::move(e));
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path + ": cannot write the quantization report");
  out << j.dump(2) << "\n";
  out.close();
  if (!out) throw Error(path + ": error writing the quantization report");
}

}  // namespace tessera::quant
