#include "loaders/tensor_names.h"

#include <gtest/gtest.h>

namespace tessera {
namespace {

TEST(LoaderTensorNames, RoundTripsEveryFormat) {
  for (TensorFormat f : {TensorFormat::kHuggingFace, TensorFormat::kLlama2c, TensorFormat::kGguf}) {
    for (int s = 0; s < kNumSlots; ++s) {
      const Slot slot = static_cast<Slot>(s);
      const int layer = slot_is_per_layer(slot) ? 17 : -1;
      const std::string name = tensor_name(f, slot, layer);
      if (name.empty()) continue;  // llama2.c has no biases
      const auto ref = parse_tensor_name(f, name);
      ASSERT_TRUE(ref.has_value()) << name;
      EXPECT_EQ(*ref, (SlotRef{slot, layer})) << name;
    }
  }
}

TEST(LoaderTensorNames, KnownNames) {
  EXPECT_EQ(tensor_name(TensorFormat::kHuggingFace, Slot::kWGate, 3), "model.layers.3.mlp.gate_proj.weight");
  EXPECT_EQ(tensor_name(TensorFormat::kGguf, Slot::kWq, 0), "blk.0.attn_q.weight");
  EXPECT_EQ(tensor_name(TensorFormat::kLlama2c, Slot::kWUp, 2), "w3[2]");
  EXPECT_EQ(tensor_name(TensorFormat::kHuggingFace, Slot::kLmHead), "lm_head.weight");
  EXPECT_EQ(slot_name(Slot::kWDown), "w_down");
  EXPECT_TRUE(slot_is_vector(Slot::kBq));
  EXPECT_FALSE(slot_is_vector(Slot::kWo));
}

TEST(LoaderTensorNames, IgnoresForeignAndNonCanonicalNames) {
  using F = TensorFormat;
  EXPECT_FALSE(parse_tensor_name(F::kHuggingFace, "model.layers.0.self_attn.rotary_emb.inv_freq"));
  EXPECT_FALSE(parse_tensor_name(F::kHuggingFace, "model.layers.01.mlp.up_proj.weight"));
  EXPECT_FALSE(parse_tensor_name(F::kHuggingFace, "model.layers.-1.mlp.up_proj.weight"));
  EXPECT_FALSE(parse_tensor_name(F::kHuggingFace, "model.layers..mlp.up_proj.weight"));
  EXPECT_FALSE(parse_tensor_name(F::kHuggingFace, "model.layers.99999999999.mlp.up_proj.weight"));
  EXPECT_FALSE(parse_tensor_name(F::kHuggingFace, "model.layers.1x.mlp.up_proj.weight"));
  EXPECT_FALSE(parse_tensor_name(F::kHuggingFace, "model.embed_tokens.weight.extra"));
}

}  // namespace
}  // namespace tessera
