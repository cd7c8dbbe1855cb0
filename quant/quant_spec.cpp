#include "quant/quant_spec.h"

#include <string>
#include <vector>

#include "engine/core/check.h"
#include "quant/rule_text.h"

namespace tessera::quant {
namespace {

constexpr const char* kAcceptedForms =
    "accepted forms: int8 | int4[:g32|:g64|:g128][:sym|:asym] | nf4[:g32|:g64|:g128] | bf16 | f16 | f32 | keep | "
    "int8-2:4 | int4-2:4 (2:4 sparse storage) (groups default to g128, int4 to sym)";

[[noreturn]] void bad_spec(const std::string& text, const std::string& why) {
  throw Error("bad quantization scheme '" + text + "': " + why + "; " + kAcceptedForms);
}

}  // namespace

QuantSpec QuantSpec::parse(const std::string& text) {
  if (text == "int8-2:4" || text == "int4-2:4") {  // 2:4 sparse storage (see quant/sparse_formats.h)
    QuantSpec spec;
    spec.dtype = text == "int8-2:4" ? DType::S24Q8 : DType::S24Q4;
    return spec;
  }
  const std::vector<std::string> parts = split(text, ':');
  const std::string& base = parts[0];
  QuantSpec spec;
  if (base == "keep" || base == "f32" || base == "f16" || base == "bf16" || base == "int8") {
    if (parts.size() > 1) bad_spec(text, "'" + base + "' takes no options");
    if (base == "f32") spec.dtype = DType::F32;
    if (base == "f16") spec.dtype = DType::F16;
    if (base == "bf16") spec.dtype = DType::BF16;
    if (base == "int8") spec.dtype = DType::Q8;
    return spec;
  }
  if (base != "int4" && base != "nf4") bad_spec(text, "unknown type '" + base + "'");
  bool have_group = false, have_sym = false, asym = false;
  spec.group = 128;
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    if (p == "g32" || p == "g64" || p == "g128") {
      if (have_group) bad_spec(text, "group given twice");
      have_group = true;
      spec.group = std::stoi(p.substr(1));
    } else if (p == "sym" || p == "asym") {
      if (base == "nf4") bad_spec(text, "nf4 has no sym/asym option");
      if (have_sym) bad_spec(text, "sym/asym given twice");
      have_sym = true;
      asym = p == "asym";
    } else if (!p.empty() && p[0] == 'g') {
      bad_spec(text, "group must be g32, g64 or g128");
    } else {
      bad_spec(text, "unknown option '" + p + "'");
    }
  }
  spec.dtype = base == "nf4" ? DType::NF4 : (asym ? DType::Q4A : DType::Q4);
  return spec;
}

std::string QuantSpec::to_string() const {
  if (!dtype) return "keep";
  const std::string g = ":g" + std::to_string(group);
  switch (*dtype) {
    case DType::F32:
      return "f32";
    case DType::F16:
      return "f16";
    case DType::BF16:
      return "bf16";
    case DType::Q8:
      return "int8";
    case DType::Q4:
      return "int4" + g;
    case DType::Q4A:
      return "int4" + g + ":asym";
    case DType::NF4:
      return "nf4" + g;
    case DType::S24Q8:
      return "int8-2:4";
    case DType::S24Q4:
      return "int4-2:4";
  }
  return "?";
}

}  // namespace tessera::quant
