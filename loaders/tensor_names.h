// The one table of model slots and what each checkpoint format calls them. Loaders go through it so that
// messages name tensors the same way everywhere and a new format (GGUF) only adds a column.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace tessera {

// Every weight a Llama-family model has. Per-layer slots carry a layer index next to them.
enum class Slot {
  kTokEmbeddings,
  kAttnNorm,
  kWq,
  kWk,
  kWv,
  kBq,
  kBk,
  kBv,
  kWo,
  kFfnNorm,
  kWGate,
  kWUp,
  kWDown,
  kFinalNorm,
  kLmHead,
};
inline constexpr int kNumSlots = static_cast<int>(Slot::kLmHead) + 1;

enum class TensorFormat {
  kHuggingFace,  // "model.layers.3.self_attn.q_proj.weight"
  kLlama2c,      // llama2.c's array names, "wq[3]"
  kGguf,         // "blk.3.attn_q.weight"
};

struct SlotRef {
  Slot slot;
  int layer = -1;  // -1 for the non-layer slots
  bool operator==(const SlotRef&) const = default;
};

// Our own short name of a slot ("wq", "attn_norm"), used in messages.
std::string_view slot_name(Slot slot);
bool slot_is_per_layer(Slot slot);
// Norms and biases are small vectors (kept as fp32); everything else is a matrix.
bool slot_is_vector(Slot slot);

// The format's name for a slot. `layer` is ignored for non-layer slots.
std::string tensor_name(TensorFormat format, Slot slot, int layer = -1);
// The slot a format's tensor name refers to; nullopt for names outside the table (ignored by loaders).
std::optional<SlotRef> parse_tensor_name(TensorFormat format, std::string_view name);

}  // namespace tessera
