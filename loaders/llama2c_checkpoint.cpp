#include "loaders/llama2c_checkpoint.h"

#include <array>
#include <climits>
#include <cstring>
#include <vector>

#include "engine/core/check.h"
#include "engine/core/mapped_file.h"
#include "loaders/tensor_names.h"
#include "loaders/weight_assembly.h"

namespace tessera {
namespace {

constexpr size_t kLegacyHeaderBytes = 7 * sizeof(int32_t);
constexpr size_t kV1HeaderBytes = 256;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error(path + ": " + what);
}

int32_t read_i32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);  // files are little-endian, as is every supported host
  return v;
}

struct Header {
  bool versioned = false;
  std::array<int32_t, 7> raw{};  // dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
  bool shared_classifier = true;
};

std::string describe(const Header& h) {
  static const char* const kNames[] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                                       "n_kv_heads", "vocab_size", "seq_len"};
  std::string s;
  for (size_t i = 0; i < h.raw.size(); ++i)
    s += (i ? ", " : "") + std::string(kNames[i]) + "=" + std::to_string(h.raw[i]);
  return s + (h.shared_classifier ? ", shared classifier" : ", separate classifier");
}

Header read_header(const MappedFile& file) {
  const std::string& path = file.path();
  Header h;
  uint32_t magic = 0;
  if (file.size() >= 4) std::memcpy(&magic, file.data(), 4);
  h.versioned = magic == kLlama2cMagic;
  if (!h.versioned) {
    if (file.size() < kLegacyHeaderBytes)
      fail(path, "truncated: " + std::to_string(file.size()) + " bytes, shorter than the 28-byte llama2.c header");
    for (size_t i = 0; i < 7; ++i) h.raw[i] = read_i32(file.data() + 4 * i);
    h.shared_classifier = h.raw[5] > 0;  // the legacy format's only flag: a negative vocab_size means untied
    return h;
  }
  if (file.size() < kV1HeaderBytes)
    fail(path, "truncated: " + std::to_string(file.size()) + " bytes, shorter than the 256-byte llama2.c header");
  const int32_t version = read_i32(file.data() + 4);
  if (version == 2) fail(path, "unsupported llama2.c checkpoint version 2 (int8); re-export as version 1");
  if (version != 1) fail(path, "unsupported llama2.c checkpoint version " + std::to_string(version));
  for (size_t i = 0; i < 7; ++i) h.raw[i] = read_i32(file.data() + 8 + 4 * i);
  const uint8_t shared = file.data()[8 + 7 * 4];
  if (shared > 1) fail(path, "shared_classifier flag is " + std::to_string(shared) + ", expected 0 or 1");
  h.shared_classifier = shared == 1;
  if (h.raw[5] < 0) fail(path, "vocab_size " + std::to_string(h.raw[5]) + " is negative in a version 1 header");
  return h;
}

ModelConfig config_from(const Header& h, const std::string& path) {
  ModelConfig c;
  c.arch = "llama";
  const int64_t vocab = h.raw[5] < 0 ? -static_cast<int64_t>(h.raw[5]) : h.raw[5];
  if (vocab > INT_MAX) fail(path, "vocab_size " + std::to_string(h.raw[5]) + " is out of range");
  c.dim = h.raw[0];
  c.hidden_dim = h.raw[1];
  c.n_layers = h.raw[2];
  c.n_heads = h.raw[3];
  c.n_kv_heads = h.raw[4];
  c.vocab_size = static_cast<int>(vocab);
  c.max_seq_len = h.raw[6];
  if (c.n_heads > 0 && c.dim > 0 && c.dim % c.n_heads != 0)
    fail(path, "dim (" + std::to_string(c.dim) + ") is not a multiple of n_heads (" + std::to_string(c.n_heads) + ")");
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  c.rms_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.rope_style = RopeStyle::kInterleaved;
  c.tied_embeddings = h.shared_classifier;
  c.bos_id = 1;
  c.eos_id = 2;
  c.validate(path);
  return c;
}

// One entry of a layout: a slot (all layers in turn when per-layer) or a run of floats to skip (RoPE tables).
struct Step {
  bool is_slot;
  Slot slot;
  uint64_t skip_floats;
};

std::vector<Step> layout(const ModelConfig& c, bool versioned) {
  auto s = [](Slot slot) { return Step{true, slot, 0}; };
  std::vector<Step> steps;
  if (!versioned) {
    steps = {
        s(Slot::kTokEmbeddings), s(Slot::kAttnNorm), s(Slot::kWq),    s(Slot::kWk),  s(Slot::kWv),       s(Slot::kWo),
        s(Slot::kFfnNorm),       s(Slot::kWGate),    s(Slot::kWDown), s(Slot::kWUp), s(Slot::kFinalNorm)};
    // freq_cis_real and freq_cis_imag, [seq_len][head_dim/2] each; we compute RoPE ourselves.
    steps.push_back(Step{false, Slot::kTokEmbeddings,
                         2ull * static_cast<uint64_t>(c.max_seq_len) * static_cast<uint64_t>(c.head_dim / 2)});
  } else {  // export.py version1_export order
    steps = {s(Slot::kAttnNorm), s(Slot::kFfnNorm), s(Slot::kFinalNorm), s(Slot::kTokEmbeddings),
             s(Slot::kWq),       s(Slot::kWk),      s(Slot::kWv),        s(Slot::kWo),
             s(Slot::kWGate),    s(Slot::kWDown),   s(Slot::kWUp)};
  }
  if (!c.tied_embeddings) steps.push_back(s(Slot::kLmHead));
  return steps;
}

// Overflow-checked arithmetic: validate() bounds the header numbers, but the size check must hold on its own.
uint64_t mul(uint64_t a, uint64_t b, const std::string& path) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) fail(path, "header sizes overflow");
  return r;
}
uint64_t add(uint64_t a, uint64_t b, const std::string& path) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) fail(path, "header sizes overflow");
  return r;
}

uint64_t floats_of(const ModelConfig& c, Slot slot, const std::string& path) {
  uint64_t n = 1;
  for (int64_t d : expected_shape(c, slot)) n = mul(n, static_cast<uint64_t>(d), path);
  return n;
}

}  // namespace

ModelData load_llama2c_checkpoint(const std::string& path) {
  ModelData model;
  model.source = path;
  const MappedFile& file = model.store->add_file(MappedFile(path));
  const Header header = read_header(file);
  model.config = config_from(header, path);
  const ModelConfig& c = model.config;

  // The file must be exactly header + arrays: anything else is truncation or a header that lies.
  const std::vector<Step> steps = layout(c, header.versioned);
  uint64_t total_floats = 0;
  for (const Step& st : steps) {
    const uint64_t per = st.is_slot ? floats_of(c, st.slot, path) : st.skip_floats;
    const bool per_layer = st.is_slot && slot_is_per_layer(st.slot);
    total_floats = add(total_floats, per_layer ? mul(per, static_cast<uint64_t>(c.n_layers), path) : per, path);
  }
  const uint64_t header_bytes = header.versioned ? kV1HeaderBytes : kLegacyHeaderBytes;
  const uint64_t expected = add(header_bytes, mul(total_floats, sizeof(float), path), path);
  if (file.size() != expected)
    fail(path, "file is " + std::to_string(file.size()) + " bytes but its llama2.c " +
                   (header.versioned ? "version 1 " : "") + "header (" + describe(header) + ") implies " +
                   std::to_string(expected) + " bytes" +
                   (file.size() < expected ? " (truncated file?)" : " (trailing data or wrong header?)"));

  // Walk the arrays; every slot/layer gets a FoundTensor pointing into the mapping.
  const size_t per_slot = static_cast<size_t>(c.n_layers) + 1;  // index 0: the non-layer tensor
  std::vector<FoundTensor> found(static_cast<size_t>(kNumSlots) * per_slot);
  std::vector<bool> present(found.size(), false);
  uint64_t offset = header_bytes;
  for (const Step& st : steps) {
    if (!st.is_slot) {
      offset += st.skip_floats * sizeof(float);
      continue;
    }
    const int n = slot_is_per_layer(st.slot) ? c.n_layers : 1;
    for (int i = 0; i < n; ++i) {
      const int layer = slot_is_per_layer(st.slot) ? i : -1;
      const size_t idx = static_cast<size_t>(st.slot) * per_slot + static_cast<size_t>(layer + 1);
      FoundTensor& t = found[idx];
      t.file = path;
      t.name = tensor_name(TensorFormat::kLlama2c, st.slot, layer);
      t.dtype = DType::F32;
      t.shape = expected_shape(c, st.slot);
      t.data = file.data() + offset;
      present[idx] = true;
      offset += floats_of(c, st.slot, path) * sizeof(float);
    }
  }
  TESSERA_CHECK(offset == expected);

  assemble_weights(model, TensorFormat::kLlama2c, [&](Slot slot, int layer) -> const FoundTensor* {
    const size_t idx = static_cast<size_t>(slot) * per_slot + static_cast<size_t>(layer + 1);
    return present[idx] ? &found[idx] : nullptr;
  });
  return model;
}

}  // namespace tessera
