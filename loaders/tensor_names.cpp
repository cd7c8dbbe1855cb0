#include "loaders/tensor_names.h"

#include <array>
#include <charconv>

#include "engine/core/check.h"

namespace tessera {
namespace {

// "{}" stands for the layer index. An empty pattern means the format has no such tensor.
struct SlotNames {
  Slot slot;
  bool per_layer;
  bool vector;
  std::string_view short_name;
  std::string_view hf;
  std::string_view llama2c;  // names of llama2.c's run.c TransformerWeights fields
  std::string_view gguf;
};

constexpr std::array<SlotNames, kNumSlots> kTable = {{
    {Slot::kTokEmbeddings, false, false, "tok_embeddings", "model.embed_tokens.weight", "token_embedding_table",
     "token_embd.weight"},
    {Slot::kAttnNorm, true, true, "attn_norm", "model.layers.{}.input_layernorm.weight", "rms_att_weight[{}]",
     "blk.{}.attn_norm.weight"},
    {Slot::kWq, true, false, "wq", "model.layers.{}.self_attn.q_proj.weight", "wq[{}]", "blk.{}.attn_q.weight"},
    {Slot::kWk, true, false, "wk", "model.layers.{}.self_attn.k_proj.weight", "wk[{}]", "blk.{}.attn_k.weight"},
    {Slot::kWv, true, false, "wv", "model.layers.{}.self_attn.v_proj.weight", "wv[{}]", "blk.{}.attn_v.weight"},
    {Slot::kBq, true, true, "bq", "model.layers.{}.self_attn.q_proj.bias", "", "blk.{}.attn_q.bias"},
    {Slot::kBk, true, true, "bk", "model.layers.{}.self_attn.k_proj.bias", "", "blk.{}.attn_k.bias"},
    {Slot::kBv, true, true, "bv", "model.layers.{}.self_attn.v_proj.bias", "", "blk.{}.attn_v.bias"},
    {Slot::kWo, true, false, "wo", "model.layers.{}.self_attn.o_proj.weight", "wo[{}]", "blk.{}.attn_output.weight"},
    {Slot::kFfnNorm, true, true, "ffn_norm", "model.layers.{}.post_attention_layernorm.weight", "rms_ffn_weight[{}]",
     "blk.{}.ffn_norm.weight"},
    {Slot::kWGate, true, false, "w_gate", "model.layers.{}.mlp.gate_proj.weight", "w1[{}]", "blk.{}.ffn_gate.weight"},
    {Slot::kWUp, true, false, "w_up", "model.layers.{}.mlp.up_proj.weight", "w3[{}]", "blk.{}.ffn_up.weight"},
    {Slot::kWDown, true, false, "w_down", "model.layers.{}.mlp.down_proj.weight", "w2[{}]", "blk.{}.ffn_down.weight"},
    {Slot::kFinalNorm, false, true, "final_norm", "model.norm.weight", "rms_final_weight", "output_norm.weight"},
    {Slot::kLmHead, false, false, "lm_head", "lm_head.weight", "wcls", "output.weight"},
}};

const SlotNames& entry(Slot slot) {
  const auto& e = kTable[static_cast<size_t>(slot)];
  TESSERA_CHECK(e.slot == slot);  // the table is in enum order
  return e;
}

std::string_view pattern(const SlotNames& e, TensorFormat format) {
  switch (format) {
    case TensorFormat::kHuggingFace:
      return e.hf;
    case TensorFormat::kLlama2c:
      return e.llama2c;
    case TensorFormat::kGguf:
      return e.gguf;
  }
  return {};
}

// Matches `name` against a pattern with at most one "{}"; returns the layer (-1 without placeholder) or nullopt.
// Only canonical decimals match, so "layers.01" cannot alias "layers.1" and slip past duplicate detection.
std::optional<int> match(std::string_view pat, std::string_view name) {
  const size_t hole = pat.find("{}");
  if (hole == std::string_view::npos) return pat == name ? std::optional<int>(-1) : std::nullopt;
  const std::string_view prefix = pat.substr(0, hole), suffix = pat.substr(hole + 2);
  if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) || !name.ends_with(suffix))
    return std::nullopt;
  const std::string_view digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;
  int layer = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), layer);
  if (ec != std::errc() || end != digits.data() + digits.size() || layer < 0) return std::nullopt;
  return layer;
}

}  // namespace

std::string_view slot_name(Slot slot) {
  return entry(slot).short_name;
}
bool slot_is_per_layer(Slot slot) {
  return entry(slot).per_layer;
}
bool slot_is_vector(Slot slot) {
  return entry(slot).vector;
}

std::string tensor_name(TensorFormat format, Slot slot, int layer) {
  const std::string_view pat = pattern(entry(slot), format);
  const size_t hole = pat.find("{}");
  if (hole == std::string_view::npos) return std::string(pat);
  return std::string(pat.substr(0, hole)) + std::to_string(layer) + std::string(pat.substr(hole + 2));
}

std::optional<SlotRef> parse_tensor_name(TensorFormat format, std::string_view name) {
  for (const auto& e : kTable) {
    const std::string_view pat = pattern(e, format);
    if (pat.empty()) continue;
    if (auto layer = match(pat, name)) return SlotRef{e.slot, *layer};
  }
  return std::nullopt;
}

}  // namespace tessera
