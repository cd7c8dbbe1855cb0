#include "engine/model/model_config.h"

#include "engine/core/check.h"

namespace tessera {

void ModelConfig::validate(const std::string& source) const {
  auto fail = [&](const std::string& what) { throw Error(source + ": " + what); };
  // Generous upper bounds: well above any released Llama-family model, low enough to reject garbage headers.
  auto in_range = [&](const char* name, long long v, long long hi) {
    if (v <= 0 || v > hi)
      fail(std::string(name) + " = " + std::to_string(v) + " is out of range (1.." + std::to_string(hi) + ")");
  };
  in_range("dim", dim, 1 << 16);
  in_range("hidden_dim", hidden_dim, 1 << 18);
  in_range("n_layers", n_layers, 1024);
  in_range("n_heads", n_heads, 1024);
  in_range("n_kv_heads", n_kv_heads, 1024);
  in_range("head_dim", head_dim, 1024);
  in_range("vocab_size", vocab_size, 1 << 22);
  in_range("max_seq_len", max_seq_len, 1 << 24);
  if (n_heads % n_kv_heads != 0)
    fail("n_heads (" + std::to_string(n_heads) + ") is not a multiple of n_kv_heads (" + std::to_string(n_kv_heads) +
         ")");
  if (head_dim % 2 != 0) fail("head_dim (" + std::to_string(head_dim) + ") must be even for RoPE");
  if (!(rms_eps > 0.0f) || rms_eps > 1.0f) fail("rms_norm_eps " + std::to_string(rms_eps) + " is out of range");
  if (!(rope_theta > 0.0f)) fail("rope_theta must be positive");
  if (bos_id >= vocab_size || eos_id >= vocab_size) fail("bos/eos id outside the vocabulary");
}

}  // namespace tessera
