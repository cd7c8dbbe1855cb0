// Text helpers shared by the quantization and pruning rule parsers: scheme strings are split on ':' and rule
// patterns are globs over canonical weight names ("layers.3.w_down", "lm_head").
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tessera::quant {

// The parts of `s` between `sep`s, empty parts kept ("a::b" -> "a", "", "b").
std::vector<std::string> split(const std::string& s, char sep);

// Glob over the whole name: '*' any run (also empty), '?' one character.
bool glob_match(std::string_view pattern, std::string_view name);

}  // namespace tessera::quant
