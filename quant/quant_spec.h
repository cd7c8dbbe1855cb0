// A user-facing description of how to store one weight: "int8", "int4:g128", "int4:g32:asym", "nf4:g64",
// "bf16", "f16", "f32", or "keep" (leave as loaded).
#pragma once

#include <optional>
#include <string>

#include "engine/core/dtype.h"

namespace tessera::quant {

struct QuantSpec {
  std::optional<DType> dtype;  // empty = keep as loaded
  int group = 0;               // for Q4/Q4A/NF4

  // Parses the forms above; throws tessera::Error with the accepted forms for anything else. Default group 128.
  static QuantSpec parse(const std::string& text);
  std::string to_string() const;
  bool keep() const { return !dtype.has_value(); }
};

}  // namespace tessera::quant
