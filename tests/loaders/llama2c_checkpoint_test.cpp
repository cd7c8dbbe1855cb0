// llama2.c checkpoints: the real stories260K file checked against bytes read independently, synthetic legacy and
// version 1 files (tied and untied) written here, and one test per class of malformed header.
#include <gtest/gtest.h>

#include <climits>
#include <cstring>
#include <map>

#include "loaders/model_loader.h"
#include "tests/loaders/test_util.h"

namespace tessera {
namespace {

using test::append_pod;
using test::expect_error;
using test::read_pod;
using test::TempDir;
using test::write_file;

struct Shape {
  int32_t dim, hidden, layers, heads, kv_heads, vocab, seq;
  int64_t kv_dim() const { return static_cast<int64_t>(kv_heads) * (dim / heads); }
  int64_t head_size() const { return dim / heads; }
};

// The arrays of a llama2.c model by llama2.c's own names, each with its per-layer element count and whether it
// repeats per layer. Written independently of the loader's tables.
struct Array {
  std::string name;
  int64_t count;
  bool per_layer;
};

std::vector<Array> legacy_arrays(const Shape& s, bool tied) {
  const int64_t d = s.dim, h = s.hidden, kv = s.kv_dim(), v = s.vocab;
  std::vector<Array> a = {{"tok", v * d, false},
                          {"rms_att", d, true},
                          {"wq", d * d, true},
                          {"wk", kv * d, true},
                          {"wv", kv * d, true},
                          {"wo", d * d, true},
                          {"rms_ffn", d, true},
                          {"w1", h * d, true},
                          {"w2", d * h, true},
                          {"w3", h * d, true},
                          {"rms_final", d, false},
                          {"freq_real", s.seq * s.head_size() / 2, false},
                          {"freq_imag", s.seq * s.head_size() / 2, false}};
  if (!tied) a.push_back({"wcls", v * d, false});
  return a;
}

std::vector<std::string> v1_order(bool tied) {
  std::vector<std::string> o = {"rms_att", "rms_ffn", "rms_final", "tok", "wq", "wk", "wv", "wo", "w1", "w2", "w3"};
  if (!tied) o.push_back("wcls");
  return o;
}

// Float arrays by name: all layers of a per-layer array concatenated.
using Arrays = std::map<std::string, std::vector<float>>;

Arrays synthetic_arrays(const Shape& s, bool tied) {
  Arrays arrays;
  uint32_t k = 1;
  for (const Array& a : legacy_arrays(s, tied)) {
    std::vector<float>& v = arrays[a.name];
    v.resize(static_cast<size_t>(a.count * (a.per_layer ? s.layers : 1)));
    for (float& x : v) x = static_cast<float>((k++ * 2654435761u) % 20011u) / 10000.0f - 1.0f;
  }
  return arrays;
}

std::string header7(const Shape& s, int32_t vocab_field) {
  std::string out;
  for (int32_t x : {s.dim, s.hidden, s.layers, s.heads, s.kv_heads, vocab_field, s.seq}) append_pod(out, x);
  return out;
}

std::string legacy_bytes(const Shape& s, bool tied, const Arrays& arrays) {
  std::string out = header7(s, tied ? s.vocab : -s.vocab);
  for (const Array& a : legacy_arrays(s, tied)) {
    const auto& v = arrays.at(a.name);
    out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  }
  return out;
}

std::string v1_bytes(const Shape& s, bool tied, const Arrays& arrays, int32_t version = 1, uint8_t flag = 255) {
  std::string out;
  append_pod(out, uint32_t{0x616b3432});
  append_pod(out, version);
  out += header7(s, s.vocab);
  append_pod(out, static_cast<uint8_t>(flag == 255 ? (tied ? 1 : 0) : flag));
  out.resize(256, '\0');
  for (const std::string& name : v1_order(tied)) {
    const auto& v = arrays.at(name);
    out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  }
  return out;
}

// Splits a legacy file's bytes into its arrays (the inverse of legacy_bytes), to re-export real checkpoints.
Arrays split_legacy(const std::string& bytes, const Shape& s, bool tied) {
  Arrays arrays;
  size_t off = 28;
  for (const Array& a : legacy_arrays(s, tied)) {
    std::vector<float>& v = arrays[a.name];
    v.resize(static_cast<size_t>(a.count * (a.per_layer ? s.layers : 1)));
    std::memcpy(v.data(), bytes.data() + off, v.size() * sizeof(float));
    off += v.size() * sizeof(float);
  }
  EXPECT_EQ(off, bytes.size());
  return arrays;
}

float mat_at(const Matrix& m, int64_t r, int64_t c) {
  EXPECT_EQ(m.dtype, DType::F32);
  return static_cast<const float*>(m.row(r))[c];
}

// Every weight of `model` equals the synthetic arrays (layer l of a per-layer array at offset l * count).
void expect_matches_arrays(const ModelData& model, const Shape& s, bool tied, const Arrays& arrays) {
  const auto& w = model.weights;
  auto check_matrix = [&](const Matrix& m, const std::string& name, int layer, int64_t rows, int64_t cols) {
    ASSERT_EQ(m.rows, rows) << name;
    ASSERT_EQ(m.cols, cols) << name;
    const float* expect = arrays.at(name).data() + (layer < 0 ? 0 : layer) * rows * cols;
    EXPECT_EQ(std::memcmp(m.data, expect, static_cast<size_t>(rows * cols) * sizeof(float)), 0) << name << " " << layer;
  };
  auto check_vector = [&](const std::vector<float>& v, const std::string& name, int layer) {
    const float* expect = arrays.at(name).data() + (layer < 0 ? 0 : layer) * s.dim;
    ASSERT_EQ(v.size(), static_cast<size_t>(s.dim)) << name;
    EXPECT_EQ(std::memcmp(v.data(), expect, v.size() * sizeof(float)), 0) << name << " " << layer;
  };
  check_matrix(w.tok_embeddings, "tok", -1, s.vocab, s.dim);
  ASSERT_EQ(w.layers.size(), static_cast<size_t>(s.layers));
  for (int l = 0; l < s.layers; ++l) {
    const LayerWeights& L = w.layers[static_cast<size_t>(l)];
    check_vector(L.attn_norm, "rms_att", l);
    check_matrix(L.wq, "wq", l, s.dim, s.dim);
    check_matrix(L.wk, "wk", l, s.kv_dim(), s.dim);
    check_matrix(L.wv, "wv", l, s.kv_dim(), s.dim);
    check_matrix(L.wo, "wo", l, s.dim, s.dim);
    check_vector(L.ffn_norm, "rms_ffn", l);
    check_matrix(L.w_gate, "w1", l, s.hidden, s.dim);
    check_matrix(L.w_down, "w2", l, s.dim, s.hidden);
    check_matrix(L.w_up, "w3", l, s.hidden, s.dim);
    EXPECT_TRUE(L.bq.empty() && L.bk.empty() && L.bv.empty());
  }
  check_vector(w.final_norm, "rms_final", -1);
  if (tied) {
    EXPECT_EQ(w.lm_head.data, w.tok_embeddings.data);
  } else {
    check_matrix(w.lm_head, "wcls", -1, s.vocab, s.dim);
  }
}

void expect_same_weights(const ModelData& a, const ModelData& b) {
  auto same = [](const Matrix& x, const Matrix& y) {
    return x.dtype == y.dtype && x.rows == y.rows && x.cols == y.cols && std::memcmp(x.data, y.data, x.bytes()) == 0;
  };
  EXPECT_TRUE(same(a.weights.tok_embeddings, b.weights.tok_embeddings));
  EXPECT_TRUE(same(a.weights.lm_head, b.weights.lm_head));
  EXPECT_EQ(a.weights.final_norm, b.weights.final_norm);
  ASSERT_EQ(a.weights.layers.size(), b.weights.layers.size());
  for (size_t l = 0; l < a.weights.layers.size(); ++l) {
    const auto &x = a.weights.layers[l], &y = b.weights.layers[l];
    EXPECT_EQ(x.attn_norm, y.attn_norm);
    EXPECT_EQ(x.ffn_norm, y.ffn_norm);
    for (auto m : {&LayerWeights::wq, &LayerWeights::wk, &LayerWeights::wv, &LayerWeights::wo, &LayerWeights::w_gate,
                   &LayerWeights::w_up, &LayerWeights::w_down})
      EXPECT_TRUE(same(x.*m, y.*m)) << "layer " << l;
  }
}

constexpr Shape kStories260K{64, 172, 5, 8, 4, 512, 512};
constexpr Shape kTiny{8, 24, 2, 2, 1, 11, 6};

TEST(LoaderLlama2c, Stories260KConfigAndWeightsFromFileBytes) {
  TESSERA_REQUIRE_MODEL(path, "stories260K/stories260K.bin");
  const ModelData m = load_model(path);
  const ModelConfig& c = m.config;
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_EQ(c.rope_style, RopeStyle::kInterleaved);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-5f);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_id, 2);
  EXPECT_EQ(m.source, path);

  // Offsets computed by hand from the documented layout (PROVENANCE.md), read with plain file I/O.
  const std::string bytes = test::read_file(path);
  ASSERT_EQ(bytes.size(), 1056540u);
  auto at = [&](int64_t float_index) { return read_pod<float>(bytes, 28 + 4 * static_cast<size_t>(float_index)); };
  const int64_t tok = 0, rms_att = tok + 512 * 64, wq = rms_att + 5 * 64, wk = wq + 5 * 64 * 64, wv = wk + 5 * 32 * 64,
                wo = wv + 5 * 32 * 64, rms_ffn = wo + 5 * 64 * 64, w1 = rms_ffn + 5 * 64, w2 = w1 + 5 * 172 * 64,
                w3 = w2 + 5 * 64 * 172, rms_final = w3 + 5 * 172 * 64;
  const auto& w = m.weights;
  EXPECT_EQ(mat_at(w.tok_embeddings, 7, 3), at(tok + 7 * 64 + 3));
  EXPECT_EQ(mat_at(w.tok_embeddings, 511, 63), at(tok + 511 * 64 + 63));
  EXPECT_EQ(w.layers[4].attn_norm[10], at(rms_att + 4 * 64 + 10));
  EXPECT_EQ(mat_at(w.layers[2].wq, 5, 6), at(wq + 2 * 64 * 64 + 5 * 64 + 6));
  EXPECT_EQ(mat_at(w.layers[3].wk, 31, 63), at(wk + 3 * 32 * 64 + 31 * 64 + 63));
  EXPECT_EQ(mat_at(w.layers[0].wv, 0, 0), at(wv));
  EXPECT_EQ(mat_at(w.layers[4].wo, 63, 1), at(wo + 4 * 64 * 64 + 63 * 64 + 1));
  EXPECT_EQ(w.layers[1].ffn_norm[0], at(rms_ffn + 64));
  EXPECT_EQ(mat_at(w.layers[2].w_gate, 171, 5), at(w1 + 2 * 172 * 64 + 171 * 64 + 5));
  EXPECT_EQ(mat_at(w.layers[3].w_down, 10, 171), at(w2 + 3 * 64 * 172 + 10 * 172 + 171));
  EXPECT_EQ(mat_at(w.layers[4].w_up, 100, 50), at(w3 + 4 * 172 * 64 + 100 * 64 + 50));
  EXPECT_EQ(w.final_norm[63], at(rms_final + 63));
  EXPECT_NE(at(rms_final + 63), 0.0f);
  // Tied classifier, zero-copy views into the mapping.
  EXPECT_EQ(w.lm_head.data, w.tok_embeddings.data);
  EXPECT_EQ(m.store->allocated_bytes(), 0u);
  EXPECT_EQ(m.store->mapped_bytes(), bytes.size());
}

TEST(LoaderLlama2c, Llama2xsConfig) {
  TESSERA_REQUIRE_MODEL(path, "llama2xs-279K/model.bin");
  const ModelData m = load_model(path);
  EXPECT_EQ(m.config.dim, 64);
  EXPECT_EQ(m.config.hidden_dim, 192);
  EXPECT_EQ(m.config.n_kv_heads, 4);
  EXPECT_EQ(m.config.max_seq_len, 256);
  EXPECT_TRUE(m.config.tied_embeddings);
}

TEST(LoaderLlama2c, Stories260KAsVersion1LoadsIdenticalWeights) {
  TESSERA_REQUIRE_MODEL(path, "stories260K/stories260K.bin");
  TempDir dir;
  const Arrays arrays = split_legacy(test::read_file(path), kStories260K, true);
  const std::string v1 = dir.file("stories260K-v1.bin");
  write_file(v1, v1_bytes(kStories260K, true, arrays));
  const ModelData legacy = load_model(path);
  const ModelData versioned = load_model(v1);
  EXPECT_EQ(versioned.config.dim, 64);
  EXPECT_EQ(versioned.config.max_seq_len, 512);
  EXPECT_TRUE(versioned.config.tied_embeddings);
  expect_same_weights(legacy, versioned);
  expect_matches_arrays(versioned, kStories260K, true, arrays);
}

TEST(LoaderLlama2c, SyntheticTiedAndUntiedBothFormats) {
  TempDir dir;
  for (bool tied : {true, false}) {
    const Arrays arrays = synthetic_arrays(kTiny, tied);
    const std::string legacy = dir.file(tied ? "tied.bin" : "untied.bin");
    const std::string v1 = dir.file(tied ? "tied-v1.bin" : "untied-v1.bin");
    write_file(legacy, legacy_bytes(kTiny, tied, arrays));
    write_file(v1, v1_bytes(kTiny, tied, arrays));
    for (const std::string& p : {legacy, v1}) {
      SCOPED_TRACE(p);
      const ModelData m = load_model(p);
      EXPECT_EQ(m.config.tied_embeddings, tied);
      EXPECT_EQ(m.config.vocab_size, kTiny.vocab);
      EXPECT_EQ(m.config.head_dim, 4);
      EXPECT_EQ(m.config.kv_dim(), 4);
      expect_matches_arrays(m, kTiny, tied, arrays);
    }
  }
}

// --- malformed input: one test per class ---

TEST(LoaderLlama2c, RejectsTruncatedFile) {
  TempDir dir;
  const std::string tiny = dir.file("short.bin");
  write_file(tiny, std::string(10, '\1'));
  expect_error([&] { load_model(tiny); }, {tiny, "truncated", "28-byte"});
  const std::string empty = dir.file("empty.bin");
  write_file(empty, "");
  expect_error([&] { load_model(empty); }, {empty, "truncated"});

  std::string full = legacy_bytes(kTiny, false, synthetic_arrays(kTiny, false));
  const std::string cut = dir.file("cut.bin");
  write_file(cut, full.substr(0, full.size() - 5));
  expect_error([&] { load_model(cut); }, {cut, "implies " + std::to_string(full.size()) + " bytes", "truncated"});

  std::string v1 = v1_bytes(kTiny, true, synthetic_arrays(kTiny, true));
  const std::string v1_cut = dir.file("v1-cut.bin");
  write_file(v1_cut, v1.substr(0, 100));
  expect_error([&] { load_model(v1_cut); }, {v1_cut, "truncated", "256-byte"});
  write_file(v1_cut, v1.substr(0, v1.size() - 4));
  expect_error([&] { load_model(v1_cut); }, {v1_cut, "version 1", "truncated"});
}

TEST(LoaderLlama2c, RejectsHeaderThatDisagreesWithFileSize) {
  TempDir dir;
  const Arrays arrays = synthetic_arrays(kTiny, true);
  const std::string trailing = dir.file("trailing.bin");
  write_file(trailing, legacy_bytes(kTiny, true, arrays) + "xxxx");
  expect_error([&] { load_model(trailing); }, {trailing, "trailing data"});

  // A tied file whose header claims an untied classifier: the size no longer fits.
  std::string bytes = legacy_bytes(kTiny, true, arrays);
  const int32_t negative_vocab = -kTiny.vocab;
  std::memcpy(bytes.data() + 20, &negative_vocab, 4);
  const std::string lying = dir.file("lying.bin");
  write_file(lying, bytes);
  expect_error([&] { load_model(lying); }, {lying, "separate classifier", "implies"});

  // hidden_dim off by one.
  bytes = legacy_bytes(kTiny, true, arrays);
  const int32_t hidden = kTiny.hidden + 1;
  std::memcpy(bytes.data() + 4, &hidden, 4);
  write_file(lying, bytes);
  expect_error([&] { load_model(lying); }, {lying, "hidden_dim=25", "implies"});
}

TEST(LoaderLlama2c, RejectsAbsurdHeaderNumbers) {
  TempDir dir;
  const std::string path = dir.file("absurd.bin");
  auto with = [&](size_t field, int32_t value) {
    std::string bytes = legacy_bytes(kTiny, true, synthetic_arrays(kTiny, true));
    std::memcpy(bytes.data() + 4 * field, &value, 4);
    write_file(path, bytes);
  };
  with(0, 1 << 30);
  expect_error([&] { load_model(path); }, {path, "dim = 1073741824 is out of range"});
  with(2, -3);
  expect_error([&] { load_model(path); }, {path, "n_layers = -3 is out of range"});
  with(3, 0);
  expect_error([&] { load_model(path); }, {path, "n_heads = 0 is out of range"});
  with(3, 3);
  expect_error([&] { load_model(path); }, {path, "dim (8) is not a multiple of n_heads (3)"});
  with(4, 3);
  expect_error([&] { load_model(path); }, {path, "n_kv_heads"});
  with(5, INT_MIN);
  expect_error([&] { load_model(path); }, {path, "vocab_size"});
  with(6, INT_MAX);
  expect_error([&] { load_model(path); }, {path, "max_seq_len"});
  with(1, INT_MAX);
  expect_error([&] { load_model(path); }, {path, "hidden_dim"});
}

TEST(LoaderLlama2c, RejectsUnsupportedVersionsAndFlags) {
  TempDir dir;
  const Arrays arrays = synthetic_arrays(kTiny, true);
  const std::string path = dir.file("v.bin");
  write_file(path, v1_bytes(kTiny, true, arrays, 2));
  expect_error([&] { load_model(path); }, {path, "unsupported", "version 2 (int8); re-export as version 1"});
  write_file(path, v1_bytes(kTiny, true, arrays, 7));
  expect_error([&] { load_model(path); }, {path, "unsupported llama2.c checkpoint version 7"});
  write_file(path, v1_bytes(kTiny, true, arrays, 1, 5));
  expect_error([&] { load_model(path); }, {path, "shared_classifier flag is 5"});
}

TEST(LoaderDispatch, RejectsMissingPathsAndForeignFormats) {
  TempDir dir;
  const std::string missing = dir.file("nope.bin");
  expect_error([&] { load_model(missing); }, {missing, "no such file"});
  expect_error([&] { load_model(dir.str()); }, {dir.str(), "no config.json"});
  const std::string gguf = dir.file("model.gguf");
  write_file(gguf, std::string("GGUF") + std::string(100, '\0'));
  expect_error([&] { load_model(gguf); }, {gguf, "GGUF"});
  const std::string st = dir.file("model.safetensors");
  write_file(st, std::string(100, '\0'));
  expect_error([&] { load_model(st); }, {st, "directory"});
}

}  // namespace
}  // namespace tessera
