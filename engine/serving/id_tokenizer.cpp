#include "engine/serving/id_tokenizer.h"

#include <cctype>
#include <charconv>

namespace tessera::serving {

std::vector<int> IdTokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int> ids;
  if (add_bos) ids.push_back(bos_id_);
  std::vector<int> numbers;
  bool all_numbers = true;
  size_t i = 0;
  while (i < text.size() && all_numbers) {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i == text.size()) break;
    int v = 0;
    const auto [end, ec] = std::from_chars(text.data() + i, text.data() + text.size(), v);
    const size_t next = static_cast<size_t>(end - text.data());
    if (ec != std::errc() || v < 0 || v >= vocab_size_ ||
        (next < text.size() && !std::isspace(static_cast<unsigned char>(text[next])))) {
      all_numbers = false;
      break;
    }
    numbers.push_back(v);
    i = next;
  }
  if (all_numbers) {
    ids.insert(ids.end(), numbers.begin(), numbers.end());
  } else {
    for (unsigned char c : text) ids.push_back((3 + c) % vocab_size_);
  }
  return ids;
}

std::string IdTokenizer::decode(const std::vector<int>& ids) const {
  std::string s;
  for (int id : ids) {
    if (!s.empty()) s += ' ';
    s += std::to_string(id);
  }
  return s;
}

}  // namespace tessera::serving
