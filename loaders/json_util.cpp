#include "loaders/json_util.h"

#include <unordered_set>
#include <vector>

#include "engine/core/check.h"
#include "engine/core/mapped_file.h"

namespace tessera {

nlohmann::json parse_json_strict(std::string_view text, const std::string& source) {
  // One key set per open object; a key seen twice in the same object is a duplicate.
  std::vector<std::unordered_set<std::string>> open_objects;
  std::string duplicate;
  auto on_event = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start) {
      open_objects.emplace_back();
    } else if (event == E::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == E::key && !open_objects.empty() && duplicate.empty()) {
      if (!open_objects.back().insert(parsed.get<std::string>()).second) duplicate = parsed.get<std::string>();
    }
    return true;
  };
  nlohmann::json result;
  try {
    result = nlohmann::json::parse(text.begin(), text.end(), on_event);
  } catch (const nlohmann::json::exception& e) {
    throw Error(source + ": unreadable JSON: " + e.what());
  }
  if (!duplicate.empty()) throw Error(source + ": duplicate key \"" + duplicate + "\" in JSON");
  return result;
}

nlohmann::json read_json_object_file(const std::string& path) {
  const MappedFile file(path);
  const std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
  nlohmann::json j = parse_json_strict(text, path);
  if (!j.is_object()) throw Error(path + ": unreadable JSON: expected an object at the top level");
  return j;
}

}  // namespace tessera
