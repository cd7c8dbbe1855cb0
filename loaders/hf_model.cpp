#include "loaders/hf_model.h"

#include <algorithm>
#include <filesystem>
#include <unordered_map>
#include <vector>

#include "engine/core/check.h"
#include "engine/core/mapped_file.h"
#include "loaders/hf_config.h"
#include "loaders/json_util.h"
#include "loaders/safetensors_file.h"
#include "loaders/tensor_names.h"
#include "loaders/weight_assembly.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

constexpr const char* kIndexName = "model.safetensors.index.json";

struct Located {
  const SafetensorsTensor* tensor;
  const std::string* file;
};

// weight_map of the index: tensor name -> shard file name.
std::vector<std::pair<std::string, std::string>> read_index(const std::string& index_path) {
  const nlohmann::json index = read_json_object_file(index_path);
  const auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) throw Error(index_path + ": no \"weight_map\" object");
  std::vector<std::pair<std::string, std::string>> entries;
  for (const auto& [name, file] : wm->items()) {
    if (!file.is_string()) throw Error(index_path + ": weight_map entry '" + name + "' is not a file name");
    const std::string f = file.get<std::string>();
    // Shards live beside the index: a path would let the index reach anywhere on disk.
    if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos)
      throw Error(index_path + ": weight_map entry '" + name + "' names '" + f + "', not a file in the directory");
    entries.emplace_back(name, f);
  }
  if (entries.empty()) throw Error(index_path + ": weight_map is empty");
  return entries;
}

std::vector<std::string> list_safetensors(const fs::path& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".safetensors" && e.is_regular_file()) files.push_back(e.path().filename().string());
  if (ec) throw Error(dir.string() + ": cannot list the directory: " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

ModelData load_hf_model(const std::string& dir_str) {
  const fs::path dir(dir_str);
  ModelData model;
  model.source = dir_str;
  model.config = read_hf_config((dir / "config.json").string());
  const ModelConfig& c = model.config;

  // Which files hold the weights.
  const std::string index_path = (dir / kIndexName).string();
  std::vector<std::pair<std::string, std::string>> index;
  std::vector<std::string> files;
  if (fs::exists(dir / kIndexName)) {
    index = read_index(index_path);
    for (const auto& [name, file] : index)
      if (std::find(files.begin(), files.end(), file) == files.end()) files.push_back(file);
  } else {
    files = list_safetensors(dir);
    if (files.empty()) throw Error(dir_str + ": no *.safetensors files (and no " + kIndexName + ")");
  }

  // Map and parse every shard; a name in two shards is ambiguous.
  std::vector<std::string> paths;
  std::vector<std::vector<SafetensorsTensor>> headers;
  paths.reserve(files.size());
  headers.reserve(files.size());  // Located points into these: no reallocation
  std::unordered_map<std::string, Located> by_name;
  for (const std::string& f : files) {
    paths.push_back((dir / f).string());
    const MappedFile& mapped = model.store->add_file(MappedFile(paths.back()));
    headers.push_back(read_safetensors_header(mapped));
    for (const SafetensorsTensor& t : headers.back()) {
      const auto [it, inserted] = by_name.emplace(t.name, Located{&t, &paths.back()});
      if (!inserted) throw Error(paths.back() + ": duplicate tensor '" + t.name + "', also in " + *it->second.file);
    }
  }
  for (const auto& [name, file] : index) {
    const auto it = by_name.find(name);
    const std::string shard = (dir / file).string();
    if (it == by_name.end() || *it->second.file != shard)
      throw Error(index_path + ": maps tensor '" + name + "' to " + file + ", which does not contain it");
  }

  // Sort the named tensors into slots; names outside the table (rotary_emb.inv_freq, ...) are ignored.
  const size_t per_slot = static_cast<size_t>(c.n_layers) + 1;  // index 0: the non-layer tensor
  std::vector<FoundTensor> found(static_cast<size_t>(kNumSlots) * per_slot);
  std::vector<bool> present(found.size(), false);
  for (const auto& [name, loc] : by_name) {
    const auto ref = parse_tensor_name(TensorFormat::kHuggingFace, name);
    if (!ref) continue;
    const std::string& file = *loc.file;
    if (ref->layer >= c.n_layers)
      throw Error(file + ": tensor '" + name + "' is for layer " + std::to_string(ref->layer) +
                  " but config.json has " + std::to_string(c.n_layers) + " layers");
    const bool is_bias = ref->slot == Slot::kBq || ref->slot == Slot::kBk || ref->slot == Slot::kBv;
    if (is_bias && !c.qkv_bias)
      throw Error(file + ": unexpected tensor '" + name + "': architecture " + c.arch + " has no q/k/v biases");
    const SafetensorsTensor& t = *loc.tensor;
    if (!t.dtype)
      throw Error(file + ": tensor '" + name + "' has dtype " + t.dtype_name + ", not supported (F32, F16, BF16)");
    const size_t idx = static_cast<size_t>(ref->slot) * per_slot + static_cast<size_t>(ref->layer + 1);
    found[idx] = FoundTensor{file, name, *t.dtype, t.shape, t.data};
    present[idx] = true;
  }

  assemble_weights(model, TensorFormat::kHuggingFace, [&](Slot slot, int layer) -> const FoundTensor* {
    const size_t idx = static_cast<size_t>(slot) * per_slot + static_cast<size_t>(layer + 1);
    return present[idx] ? &found[idx] : nullptr;
  });
  return model;
}

}  // namespace tessera
