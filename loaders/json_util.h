// Strict JSON reading for the loaders: nlohmann/json with duplicate-key detection (nlohmann alone silently keeps
// the last of two equal keys, which would hide a duplicated tensor in a safetensors header) and errors that name
// the file.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace tessera {

// Throws tessera::Error "<source>: unreadable JSON: ..." or "<source>: duplicate key ..." on bad input.
nlohmann::json parse_json_strict(std::string_view text, const std::string& source);

// Reads and parses a whole JSON file (through MappedFile); the file must contain a JSON object.
nlohmann::json read_json_object_file(const std::string& path);

}  // namespace tessera
