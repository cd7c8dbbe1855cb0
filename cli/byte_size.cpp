#include "cli/byte_size.h"

#include <cmath>
#include <cstdio>
#include <string_view>
#include <utility>

#include "engine/core/check.h"

namespace tessera::cli {

size_t parse_byte_size(const std::string& text, const std::string& option) {
  static constexpr std::pair<std::string_view, double> kUnits[] = {
      {"", 1.0},   {"B", 1.0},    {"K", 0x1p10},   {"KiB", 0x1p10}, {"KB", 1e3},   {"M", 0x1p20},   {"MiB", 0x1p20},
      {"MB", 1e6}, {"G", 0x1p30}, {"GiB", 0x1p30}, {"GB", 1e9},     {"T", 0x1p40}, {"TiB", 0x1p40}, {"TB", 1e12}};
  const std::string form = " (e.g. 24GiB, 512MiB, 80GB or a number of bytes)";
  size_t pos = 0;
  double value = 0.0;
  try {
    value = std::stod(text, &pos);
  } catch (const std::exception&) {
    throw Error(option + ": '" + text + "' is not a size" + form);
  }
  std::string_view unit(text);
  unit.remove_prefix(pos);
  while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  for (const auto& [name, scale] : kUnits) {
    if (unit != name) continue;
    const double bytes = value * scale;
    if (!(bytes >= 1.0) || !std::isfinite(bytes) || bytes > 0x1p62)
      throw Error(option + ": '" + text + "' is not a positive size" + form);
    return static_cast<size_t>(bytes);
  }
  throw Error(option + ": unknown unit '" + std::string(unit) + "' in '" + text + "'" + form);
}

std::string format_bytes(size_t bytes) {
  static constexpr const char* kNames[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes);
  int unit = -1;
  while (v >= 1024.0 && unit < 3) {
    v /= 1024.0;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f %s", v, kNames[unit]);
  return buf;
}

}  // namespace tessera::cli
