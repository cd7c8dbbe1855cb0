#include "parallel/consistency.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <vector>

#include "engine/core/check.h"

namespace tessera {

Fingerprint& Fingerprint::add_bytes(const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    hash_ ^= p[i];
    hash_ *= 1099511628211ull;
  }
  return *this;
}

Fingerprint& Fingerprint::add(std::string_view text) {
  add(static_cast<uint64_t>(text.size()));
  return add_bytes(text.data(), text.size());
}

Fingerprint& Fingerprint::add(uint64_t value) {
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(value >> (8 * i));
  return add_bytes(bytes, sizeof(bytes));
}

namespace {

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%016" PRIx64, v);
  return buf;
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s;
}

}  // namespace

void check_consistent(Communicator& comm, const std::string& what, uint64_t fingerprint) {
  const int n = comm.size();
  std::vector<uint64_t> all(static_cast<size_t>(n));
  comm.all_gather_bytes(&fingerprint, sizeof(uint64_t), all.data());
  if (std::all_of(all.begin(), all.end(), [&](uint64_t v) { return v == all[0]; })) return;

  // Group ranks by value, in order of first appearance; the reference group is the largest (first on ties, which
  // holds rank 0).
  struct Group {
    uint64_t value;
    std::vector<int> ranks;
  };
  std::vector<Group> groups;
  for (int r = 0; r < n; ++r) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const Group& g) { return g.value == all[r]; });
    if (it == groups.end()) {
      groups.push_back({all[r], {r}});
    } else {
      it->ranks.push_back(r);
    }
  }
  size_t ref = 0;
  for (size_t g = 1; g < groups.size(); ++g) {
    if (groups[g].ranks.size() > groups[ref].ranks.size()) ref = g;
  }
  std::vector<int> odd;
  for (size_t g = 0; g < groups.size(); ++g) {
    if (g != ref) odd.insert(odd.end(), groups[g].ranks.begin(), groups[g].ranks.end());
  }
  std::sort(odd.begin(), odd.end());
  std::string msg = "start-up check failed: " + what + " differs between ranks: " + rank_list(odd) +
                    (odd.size() == 1 ? " disagrees" : " disagree") + " with rank " +
                    std::to_string(groups[ref].ranks[0]) + " (";
  for (size_t g = 0; g < groups.size(); ++g) {
    msg += (g ? "; " : "") + rank_list(groups[g].ranks) + ": " + hex(groups[g].value);
  }
  msg += ")";
  throw Error(msg);
}

}  // namespace tessera
