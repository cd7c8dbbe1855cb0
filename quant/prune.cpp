// Load-time pruning: spec and rule parsing, resolution per weight and block, mask methods (magnitude, Wanda, N:M)
// and the order of work (structured first, then layer by layer with calibration where a method needs it).
#include "quant/prune.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>
#include <sstream>

#include "engine/core/check.h"
#include "engine/model/shard.h"
#include "parallel/communicator.h"
#include "quant/awq.h"
#include "quant/prune_internal.h"
#include "quant/quant_traits.h"
#include "quant/rule_text.h"

namespace tessera::quant {
namespace {

using Clock = std::chrono::steady_clock;

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

constexpr const char* kForms =
    "accepted forms: none | METHOD:SPARSITY with METHOD magnitude, magnitude-global, wanda, sparsegpt, structured, "
    "structured-ffn or structured-attn and SPARSITY a fraction (0.5) or percentage (50%) | METHOD:N:M with METHOD "
    "magnitude, wanda or sparsegpt (e.g. wanda:2:4, sparsegpt:4:8)";

[[noreturn]] void bad_spec(const std::string& text, const std::string& why) {
  throw Error("bad pruning spec '" + text + "': " + why + "; " + kForms);
}

const std::map<std::string, PruneMethod>& method_names() {
  static const std::map<std::string, PruneMethod> names = {{"magnitude", PruneMethod::kMagnitude},
                                                           {"magnitude-global", PruneMethod::kMagnitudeGlobal},
                                                           {"wanda", PruneMethod::kWanda},
                                                           {"sparsegpt", PruneMethod::kSparseGpt},
                                                           {"structured", PruneMethod::kStructured},
                                                           {"structured-ffn", PruneMethod::kStructuredFfn},
                                                           {"structured-attn", PruneMethod::kStructuredAttn}};
  return names;
}

bool parse_int(const std::string& s, int* out) {
  if (s.empty() || s.size() > 3 || !std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
    return false;
  *out = std::stoi(s);
  return true;
}

constexpr int kNumProj = 7;  // in kLayerSlotNames' order
// The LinearInput that feeds each projection.
constexpr int kProjInput[kNumProj] = {0, 0, 0, 1, 2, 2, 3};

Matrix* proj(LayerWeights& l, int p) {
  Matrix* all[kNumProj] = {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down};
  return all[p];
}

struct Target {
  std::string name;
  int layer = -1;  // -1: lm_head
  int proj = -1;
  PruneSpec spec;
};

struct Block {
  int layer = 0;
  bool ffn = true;
  PruneSpec spec;
};

bool applies_to_block(const PruneSpec& s, bool ffn) {
  if (s.none()) return true;
  if (s.method == PruneMethod::kStructured) return true;
  return s.method == (ffn ? PruneMethod::kStructuredFfn : PruneMethod::kStructuredAttn);
}

// Rows of m as f32 (all of them), split over the pool.
std::vector<float> expand_matrix(const Matrix& m, ThreadPool& pool) {
  std::vector<float> w(sz(m.rows) * sz(m.cols));
  pool.parallel_for(m.rows, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) dequantize_matrix_row(m, r, w.data() + sz(r) * sz(m.cols));
  });
  return w;
}

// w written back as a new matrix: the original dtype when plain, f32 otherwise.
Matrix store_matrix(WeightStore& store, const Matrix& like, const std::vector<float>& w, ThreadPool& pool) {
  Matrix out;
  out.dtype = like.dtype == DType::F16 || like.dtype == DType::BF16 ? like.dtype : DType::F32;
  out.rows = like.rows;
  out.cols = like.cols;
  uint8_t* buf = store.allocate(std::max<size_t>(out.bytes(), 1));
  out.data = buf;
  pool.parallel_for(out.rows, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      encode_row(w.data() + sz(r) * sz(out.cols), out.cols, out.dtype, 0, nullptr, buf + sz(r) * out.row_bytes());
  });
  return out;
}

// Removes exactly `count` entries of smallest score among [0, n) (ties: lower index first).
void remove_smallest(float* w, const float* score, int64_t n, int64_t count) {
  if (count <= 0) return;
  if (count >= n) {
    std::fill(w, w + n, 0.0f);
    return;
  }
  const auto less = [&](int64_t a, int64_t b) { return score[a] < score[b] || (score[a] == score[b] && a < b); };
  if (n <= 64) {  // N:M groups: no allocation per group
    int64_t idx[64];
    std::iota(idx, idx + n, 0);
    std::nth_element(idx, idx + count, idx + n, less);
    for (int64_t i = 0; i < count; ++i) w[idx[i]] = 0.0f;
    return;
  }
  std::vector<int64_t> idx(sz(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::nth_element(idx.begin(), idx.begin() + count, idx.end(), less);
  for (int64_t i = 0; i < count; ++i) w[idx[sz(i)]] = 0.0f;
}

// Global magnitude: the k-th smallest |w| over several matrices, exactly, by a two-level radix select over the
// bit patterns of |w| (monotone for non-negative floats), so no copy of all weights is needed.
struct GlobalCut {
  float threshold = 0.0f;  // every |w| < threshold goes, and `ties` of the |w| == threshold (in tensor order)
  int64_t ties = 0;
};

GlobalCut global_cut(const std::vector<const Matrix*>& ms, int64_t k, ThreadPool& pool) {
  GlobalCut cut;
  if (k <= 0) {
    cut.threshold = 0.0f;
    return cut;
  }
  auto histogram = [&](auto bin_of) {
    std::vector<int64_t> hist(65536, 0);
    std::mutex mu;
    for (const Matrix* m : ms) {
      pool.parallel_for(m->rows, 16, [&](int64_t b, int64_t e) {
        std::vector<int64_t> local(65536, 0);
        std::vector<float> row(sz(m->cols));
        for (int64_t r = b; r < e; ++r) {
          dequantize_matrix_row(*m, r, row.data());
          for (float v : row) {
            uint32_t bits;
            const float a = std::fabs(v);
            std::memcpy(&bits, &a, 4);
            const int bin = bin_of(bits);
            if (bin >= 0) ++local[sz(bin)];
          }
        }
        std::lock_guard<std::mutex> lock(mu);
        for (size_t i = 0; i < hist.size(); ++i) hist[i] += local[i];
      });
    }
    return hist;
  };
  int64_t rank = k;  // 1-based rank of the last weight removed
  const auto hi = histogram([](uint32_t bits) { return static_cast<int>(bits >> 16); });
  uint32_t top = 0;
  for (; top < 65536; ++top) {
    if (rank <= hi[top]) break;
    rank -= hi[top];
  }
  if (top == 65536) {  // k >= total: remove everything
    cut.threshold = INFINITY;
    return cut;
  }
  const auto lo =
      histogram([top](uint32_t bits) { return (bits >> 16) == top ? static_cast<int>(bits & 0xffff) : -1; });
  uint32_t low = 0;
  for (; low < 65536; ++low) {
    if (rank <= lo[low]) break;
    rank -= lo[low];
  }
  const uint32_t bits = top << 16 | low;
  std::memcpy(&cut.threshold, &bits, 4);
  cut.ties = rank;  // how many of the values equal to the threshold go
  return cut;
}

constexpr ShardedWeight kProjWeights[kNumProj] = {ShardedWeight::kWq,   ShardedWeight::kWk,    ShardedWeight::kWv,
                                                  ShardedWeight::kWo,   ShardedWeight::kWGate, ShardedWeight::kWUp,
                                                  ShardedWeight::kWDown};

// Whether a tensor-parallel rank must see the whole tensor to decide for its part: a per-tensor threshold
// (magnitude; unstructured SparseGPT's mask per block of columns spans all rows), or a per-row choice (Wanda) or
// row-wide reconstruction (SparseGPT) over rows split across ranks. N:M groups never cross a split (splits are
// aligned to M).
bool needs_whole_tensor(const PruneSpec& s, const WeightSplit& split) {
  if (s.method == PruneMethod::kMagnitude) return !s.nm();
  if (s.method == PruneMethod::kWanda) return !s.nm() && !split.by_rows;
  if (s.method == PruneMethod::kSparseGpt) return !s.nm() || !split.by_rows;
  return false;
}

// Prunes w [rows][cols] (f32) to `s`. inputs / input: the calibration statistics of the projection's input
// (input -1: none, lm_head); col0: the first of the recorded input columns w's columns are. global_count: for
// magnitude-global, the exact number of weights this tensor loses.
void prune_one(float* w, int64_t rows, int64_t cols, const PruneSpec& s, const detail::LayerInputs& inputs, int input,
               int64_t col0, int64_t global_count, ThreadPool& pool) {
  if (s.method == PruneMethod::kSparseGpt) {
    const auto& h = inputs.hessian[sz(input)];
    TESSERA_CHECK(col0 == 0 && h.size() == sz(cols) * sz(cols));
    sparsegpt_prune(w, rows, cols, h.data(), s, pool);
    return;
  }
  std::vector<float> score(sz(rows) * sz(cols));
  std::vector<float> norm;
  if (s.method == PruneMethod::kWanda) {
    const auto& sq = inputs.sum_sq[sz(input)];
    TESSERA_CHECK(sq.size() >= sz(col0 + cols));
    norm.resize(sz(cols));
    for (int64_t j = 0; j < cols; ++j) norm[sz(j)] = static_cast<float>(std::sqrt(sq[sz(col0 + j)]));
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const float a = std::fabs(w[sz(r * cols + j)]);
      score[sz(r * cols + j)] = norm.empty() ? a : a * norm[sz(j)];
    }
  if (s.method == PruneMethod::kMagnitudeGlobal) {
    prune_by_score(w, rows, cols, score.data(), static_cast<double>(global_count) / static_cast<double>(rows * cols),
                   false, 0, 0);
  } else if (s.nm() || s.method == PruneMethod::kWanda) {  // row by row: split the rows over the pool
    pool.parallel_for(rows, 16, [&](int64_t b, int64_t e) {
      prune_by_score(w + sz(b * cols), e - b, cols, score.data() + sz(b * cols), s.sparsity, true, s.n, s.m);
    });
  } else {
    prune_by_score(w, rows, cols, score.data(), s.sparsity, false, 0, 0);
  }
}

}  // namespace

PruneSpec PruneSpec::parse(const std::string& text) {
  PruneSpec s;
  if (text == "none") return s;
  const std::vector<std::string> parts = split(text, ':');
  const auto it = method_names().find(parts[0]);
  if (it == method_names().end()) bad_spec(text, "unknown method '" + parts[0] + "'");
  s.method = it->second;
  if (parts.size() == 3) {
    if (s.method != PruneMethod::kMagnitude && s.method != PruneMethod::kWanda && s.method != PruneMethod::kSparseGpt)
      bad_spec(text, "N:M applies to magnitude, wanda and sparsegpt");
    if (!parse_int(parts[1], &s.n) || !parse_int(parts[2], &s.m) || s.n <= 0 || s.n >= s.m || s.m > 64)
      bad_spec(text, "N:M needs 0 < N < M <= 64");
    s.sparsity = 1.0 - static_cast<double>(s.n) / s.m;
    return s;
  }
  if (parts.size() != 2 || parts[1].empty()) bad_spec(text, "expected METHOD:SPARSITY or METHOD:N:M");
  std::string v = parts[1];
  const bool percent = v.back() == '%';
  if (percent) v.pop_back();
  double x = 0.0;
  size_t used = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != v.size() || !std::isfinite(x))
    bad_spec(text, "the sparsity '" + parts[1] + "' is not a number");
  if (percent) x /= 100.0;
  if (x < 0.0 || x >= 1.0) bad_spec(text, "the sparsity must be in [0, 1) (or [0%, 100%))");
  s.sparsity = x;
  return s;
}

std::string PruneSpec::to_string() const {
  if (none()) return "none";
  std::string name;
  for (const auto& [k, v] : method_names())
    if (v == method) name = k;
  if (nm()) return name + ":" + std::to_string(n) + ":" + std::to_string(m);
  std::ostringstream ss;
  ss << name << ":" << sparsity;
  return ss.str();
}

PruneRule PruneRule::parse(const std::string& text) {
  const size_t eq = text.rfind('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size())
    throw Error("bad pruning rule '" + text +
                "': expected PATTERN=SPEC, e.g. 'layers.0.*=none' or '*.w_down=wanda:0.3'");
  PruneRule r;
  r.pattern = text.substr(0, eq);
  try {
    r.spec = PruneSpec::parse(text.substr(eq + 1));
  } catch (const Error& e) {
    throw Error("bad pruning rule '" + text + "': " + e.what());
  }
  return r;
}

bool PruneOptions::active() const {
  return !default_spec.none() ||
         std::any_of(rules.begin(), rules.end(), [](const PruneRule& r) { return !r.spec.none(); });
}

void prune_by_score(float* w, int64_t rows, int64_t cols, const float* score, double sparsity, bool per_row, int n,
                    int m) {
  if (n > 0) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c0 = 0; c0 < cols; c0 += m) {
        const int64_t g = std::min<int64_t>(m, cols - c0);
        remove_smallest(w + r * cols + c0, score + r * cols + c0, g, g - std::min<int64_t>(g, n));
      }
    }
    return;
  }
  if (per_row) {
    const int64_t k = std::llround(sparsity * static_cast<double>(cols));
    for (int64_t r = 0; r < rows; ++r) remove_smallest(w + r * cols, score + r * cols, cols, k);
    return;
  }
  remove_smallest(w, score, rows * cols, std::llround(sparsity * static_cast<double>(rows * cols)));
}

std::vector<int> structured_keep(std::span<const float> score, double sparsity, int multiple) {
  const int count = static_cast<int>(score.size());
  const int mult = std::max(1, multiple);
  int keep = static_cast<int>(std::llround(count * (1.0 - sparsity) / mult)) * mult;
  keep = std::clamp(keep, std::min(count, mult), count);
  std::vector<int> idx(score.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return score[sz(a)] > score[sz(b)]; });
  idx.resize(sz(keep));
  std::sort(idx.begin(), idx.end());
  return idx;
}

PruneReport prune_model(ModelData& model, const PruneOptions& options, std::span<const int> calibration_tokens,
                        ThreadPool& pool, const std::function<void(size_t, size_t)>& progress) {
  const auto t0 = Clock::now();
  PruneReport report;
  ModelConfig& c = model.config;
  const int n_layers = static_cast<int>(model.weights.layers.size());
  const bool tied = model.weights.lm_head.data == model.weights.tok_embeddings.data;
  const ModelShard& shard = model.layout();

  // ---- resolve a spec per projection and per block ----
  std::vector<Target> targets;
  std::vector<Block> blocks;
  const PruneSpec& def = options.default_spec;
  // Names carry the layer's index in the whole model (a pipeline stage holds layers layer_begin...).
  const auto layer_name = [&](int l) { return "layers." + std::to_string(shard.layer_begin + l); };
  for (int l = 0; l < n_layers; ++l) {
    for (int p = 0; p < kNumProj; ++p)
      targets.push_back({layer_name(l) + "." + kLayerSlotNames[p], l, p, def.structured() ? PruneSpec{} : def});
    for (bool ffn : {true, false})
      blocks.push_back({l, ffn, def.structured() && applies_to_block(def, ffn) ? def : PruneSpec{}});
  }
  if (!tied && !model.weights.lm_head.empty()) targets.push_back({"lm_head", -1, -1, PruneSpec{}});
  for (const PruneRule& rule : options.rules) {
    bool used = false;
    if (!rule.spec.structured()) {
      for (Target& t : targets) {
        if (glob_match(rule.pattern, t.name)) {
          t.spec = rule.spec;
          used = true;
        }
      }
    }
    for (Block& b : blocks) {
      const std::string name = layer_name(b.layer) + (b.ffn ? ".ffn" : ".attn");
      if (applies_to_block(rule.spec, b.ffn) && glob_match(rule.pattern, name)) {
        b.spec = rule.spec;
        used = true;
      }
    }
    // A pipeline stage holds some layers only: a rule may be for another stage's (as in compress_model).
    if (!used && shard.pp_size == 1)
      throw Error("pruning rule '" + rule.pattern + "=" + rule.spec.to_string() +
                  "' matches nothing it applies to (unstructured and N:M specs apply to layers.<L>.<wq|wk|wv|wo|"
                  "w_gate|w_up|w_down> and an untied lm_head; structured ones to layers.<L>.ffn and layers.<L>.attn)");
  }
  // A shard (tensor/pipeline parallelism): per-tensor and calibrated choices are made on the whole tensor (see
  // prune_one); what cannot be is refused here, on every rank alike.
  if (!shard.whole()) {
    for (const Target& t : targets) {
      if (t.spec.method == PruneMethod::kMagnitudeGlobal)
        throw Error("pruning " + t.name + " with '" + t.spec.to_string() + "' on a shard (" + shard.describe() +
                    "): one threshold across tensors held by different ranks is not supported; use magnitude (one "
                    "threshold per tensor) or run on one rank");
      if (t.spec.calibrated() && shard.pp_size > 1 && options.pp == nullptr)
        throw Error("pruning " + t.name + " with '" + t.spec.to_string() + "' on a pipeline stage (" +
                    shard.describe() + ") needs the pipeline group to pass calibration activations between stages");
    }
    for (const Block& b : blocks)
      if (!b.spec.none())
        throw Error("structured pruning (" + b.spec.to_string() + ") is not supported on a shard (" + shard.describe() +
                    "): it chooses whole channels and heads across the tensor");
  }
  Communicator* tp = shard.tp_size > 1 ? options.tp : nullptr;
  TESSERA_CHECK(shard.tp_size == 1 || (tp != nullptr && tp->size() == shard.tp_size));
  const bool any_calibrated =
      std::any_of(targets.begin(), targets.end(), [](const Target& t) { return t.spec.calibrated(); });
  // Pipeline stages calibrate in turn, as one process goes layer after layer: each stage starts from the
  // previous stage's pruned outputs. Decided from the options alone, the same on every stage, since a stage may
  // hold no calibrated layer itself.
  const bool relay =
      shard.pp_size > 1 && options.pp != nullptr &&
      (options.default_spec.calibrated() ||
       std::any_of(options.rules.begin(), options.rules.end(), [](const PruneRule& r) { return r.spec.calibrated(); }));
  if ((any_calibrated || relay) && calibration_tokens.size() < 2)
    throw Error("wanda and sparsegpt pruning calibrate on a text: pass --calib FILE");
  detail::StageInputs stage_in;
  if (relay && !shard.first_stage())
    stage_in = detail::receive_stage_inputs(*options.pp, model, calibration_tokens,
                                            detail::calibration_chunk_len(model.config));

  size_t total = static_cast<size_t>(n_layers) + 1, done = 0;
  const auto tick = [&] {
    ++done;
    if (progress) progress(done, total);
  };
  if (progress) progress(0, total);

  // ---- structured: rank channels and KV groups, shrink the matrices ----
  const bool any_structured = std::any_of(blocks.begin(), blocks.end(), [](const Block& b) { return !b.spec.none(); });
  if (any_structured) {
    std::vector<LayerStats> stats;
    if (calibration_tokens.size() >= 2) {
      stats = collect_activation_stats(model, calibration_tokens, pool);
      ++report.calibration_passes;
    }
    std::vector<int> hidden(sz(n_layers), c.hidden_dim), kv(sz(n_layers), c.n_kv_heads);
    const ModelConfig before = c;
    for (const Block& b : blocks) {
      if (b.spec.none()) continue;
      LayerWeights& lw = model.weights.layers[sz(b.layer)];
      const std::string spec = b.spec.to_string();
      if (b.ffn) {
        const std::span<const float> mid =
            stats.empty() ? std::span<const float>() : stats[sz(b.layer)].at(LinearInput::kFfnMid).mean_sq;
        const std::vector<int> keep =
            structured_keep(detail::ffn_importance(lw, mid, pool), b.spec.sparsity, options.multiple);
        hidden[sz(b.layer)] = static_cast<int>(keep.size());
        if (static_cast<int>(keep.size()) < before.hidden_dim)
          detail::shrink_ffn(model, b.layer, keep, spec, pool, report.tensors);
      } else {
        if (before.n_kv_heads < options.multiple || before.n_kv_heads % std::max(1, options.multiple) != 0) continue;
        const std::span<const float> out =
            stats.empty() ? std::span<const float>() : stats[sz(b.layer)].at(LinearInput::kAttnOut).mean_sq;
        const std::vector<int> keep =
            structured_keep(detail::kv_group_importance(lw, before, out, pool), b.spec.sparsity, options.multiple);
        kv[sz(b.layer)] = static_cast<int>(keep.size());
        if (static_cast<int>(keep.size()) < before.n_kv_heads)
          detail::shrink_attention(model, b.layer, keep, spec, pool, report.tensors);
      }
    }
    // Layers may now differ (per-layer rules): LlamaModel, its KV caches and the calibration passes take every
    // layer's sizes from its weight shapes. The config keeps the widest layer's, which is what whole-model sizing
    // (scratch buffers, KV memory per token) needs as an upper bound; the GQA group size never changes.
    if (n_layers > 0) {
      c.hidden_dim = *std::max_element(hidden.begin(), hidden.end());
      const int widest_kv = *std::max_element(kv.begin(), kv.end());
      c.n_heads = before.n_heads / before.n_kv_heads * widest_kv;
      c.n_kv_heads = widest_kv;
    }
  }
  tick();

  // ---- magnitude-global: one threshold per sparsity value ----
  std::map<const Target*, int64_t> global_counts;  // exact number of weights each such tensor loses
  {
    std::map<double, std::vector<Target*>> groups;
    for (Target& t : targets)
      if (t.spec.method == PruneMethod::kMagnitudeGlobal) groups[t.spec.sparsity].push_back(&t);
    for (auto& [sparsity, members] : groups) {
      std::vector<const Matrix*> ms;
      int64_t numel = 0;
      for (Target* t : members) {
        const Matrix* m = t->layer < 0 ? &model.weights.lm_head : proj(model.weights.layers[sz(t->layer)], t->proj);
        ms.push_back(m);
        numel += m->rows * m->cols;
      }
      const GlobalCut cut = global_cut(ms, std::llround(sparsity * static_cast<double>(numel)), pool);
      int64_t ties = cut.ties;
      for (size_t i = 0; i < members.size(); ++i) {
        const std::vector<float> w = expand_matrix(*ms[i], pool);
        int64_t below = 0, equal = 0;
        for (float v : w) {
          const float a = std::fabs(v);
          below += a < cut.threshold;
          equal += a == cut.threshold;
        }
        const int64_t take = std::min(ties, equal);
        ties -= take;
        global_counts[members[i]] = below + take;
      }
    }
  }

  // ---- layer by layer (lm_head last): calibrate where needed, then prune each projection ----
  for (int step = 0; step <= n_layers; ++step) {
    const bool head = step == n_layers;
    std::vector<Target*> members;
    for (Target& t : targets)
      if (!t.spec.none() && (head ? t.layer < 0 : t.layer == step)) members.push_back(&t);
    if (members.empty()) {
      if (!head) tick();
      continue;
    }
    detail::LayerInputs inputs;
    std::array<bool, detail::kInputs> want_sq{}, want_h{};
    for (const Target* t : members) {
      if (t->layer < 0 && t->spec.calibrated())
        throw Error("wanda and sparsegpt do not apply to lm_head (its input is not recorded); use magnitude");
      if (t->spec.method == PruneMethod::kWanda) want_sq[sz(kProjInput[t->proj])] = true;
      if (t->spec.method == PruneMethod::kSparseGpt) want_h[sz(kProjInput[t->proj])] = true;
    }
    if (std::count(want_sq.begin(), want_sq.end(), true) + std::count(want_h.begin(), want_h.end(), true) > 0) {
      inputs = detail::calibrate_layer(model, step, calibration_tokens, want_sq, want_h, pool, tp, stage_in);
      ++report.calibration_passes;
    }
    for (Target* t : members) {
      Matrix& m = t->layer < 0 ? model.weights.lm_head : *proj(model.weights.layers[sz(t->layer)], t->proj);
      PruneTensorReport tr;
      tr.name = t->name;
      tr.spec = t->spec.to_string();
      tr.dtype_before = m.dtype;
      tr.rows_before = tr.rows_after = m.rows;
      tr.cols_before = tr.cols_after = m.cols;
      tr.bytes_before = m.bytes();
      tr.two_of_four = t->spec.two_of_four();
      std::vector<float> w = expand_matrix(m, pool);
      const std::vector<float> original = w;
      const int64_t global_count = t->spec.method == PruneMethod::kMagnitudeGlobal ? global_counts.at(t) : 0;
      const int input = t->layer < 0 ? -1 : kProjInput[t->proj];
      if (tp == nullptr) {
        prune_one(w.data(), m.rows, m.cols, t->spec, inputs, input, 0, global_count, pool);
      } else {
        const WeightSplit split = split_of(shard, c, t->layer < 0 ? ShardedWeight::kLmHead : kProjWeights[t->proj]);
        if (needs_whole_tensor(t->spec, split)) {
          detail::WholeMatrix whole = detail::gather_split(*tp, w.data(), m.rows, m.cols, split);
          prune_one(whole.data.data(), whole.rows, whole.cols, t->spec, inputs, input, 0, 0, pool);
          detail::take_split(whole, split, w.data());
        } else {
          // Rows decided alone (column-parallel) or N:M groups inside the slice: the recorded input statistics
          // are the whole input's, of which a row-parallel slice reads its own columns.
          prune_one(w.data(), m.rows, m.cols, t->spec, inputs, input, split.by_rows ? 0 : split.range.begin, 0, pool);
        }
      }
      double change = 0.0, norm2 = 0.0, z0 = 0.0, z1 = 0.0;
      for (size_t i = 0; i < w.size(); ++i) {
        const double d = static_cast<double>(w[i]) - original[i];
        change += d * d;
        norm2 += static_cast<double>(original[i]) * original[i];
        z0 += original[i] == 0.0f;
        z1 += w[i] == 0.0f;
      }
      const double numel = std::max<double>(1.0, static_cast<double>(w.size()));
      tr.zeros_before = z0 / numel;
      tr.zeros_after = z1 / numel;
      tr.relative_change = norm2 > 0.0 ? std::sqrt(change / norm2) : 0.0;
      const Matrix replaced = m;
      m = store_matrix(*model.store, m, w, pool);
      model.store->release_if_unused(replaced, model.weights);
      report.tensors.push_back(std::move(tr));
    }
    if (!head) tick();
  }
  if (relay && !shard.last_stage())
    detail::send_stage_outputs(*options.pp, model,
                               detail::stage_outputs(model, calibration_tokens, stage_in, pool, tp));
  if (progress) progress(total, total);
  report.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return report;
}

}  // namespace tessera::quant
