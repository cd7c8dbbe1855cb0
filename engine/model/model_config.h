// Hyper-parameters of a Llama-family decoder, filled by a loader or a dummy preset.
#pragma once

#include <string>

namespace tessera {

// How RoPE pairs dimensions inside a head.
enum class RopeStyle {
  kInterleaved,  // pairs (x[2i], x[2i+1]): Meta's original layout, llama2.c checkpoints, GGUF
  kHalfSplit,    // pairs (x[i], x[i + d/2]): Hugging Face (rotate_half) layout
};

// Llama-3.1 style frequency scaling ("rope_scaling": {"rope_type": "llama3", ...}).
struct RopeScaling {
  bool enabled = false;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position = 8192;
};

struct ModelConfig {
  std::string arch = "llama";  // llama | mistral | qwen2
  int dim = 0;                 // hidden size
  int hidden_dim = 0;          // FFN intermediate size
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;  // usually dim / n_heads
  int vocab_size = 0;
  int max_seq_len = 0;
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeStyle rope_style = RopeStyle::kInterleaved;
  RopeScaling rope_scaling;
  bool tied_embeddings = false;  // lm_head shares the token embedding
  bool qkv_bias = false;         // Qwen2
  int bos_id = 1;
  int eos_id = 2;

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  // Throws tessera::Error when the numbers cannot describe a model (zero, negative, indivisible).
  void validate(const std::string& source) const;
};

}  // namespace tessera
