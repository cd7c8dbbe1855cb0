// Start-up consistency across ranks: every rank must load the same model file, with the same configuration and
// the same engine build, before any tensor moves. Each rank condenses what it is about to use into a 64-bit
// fingerprint; `check_consistent` compares them and refuses to start on a mismatch, naming the odd ranks,
// instead of letting mismatched ranks exchange garbage (or hang) later.
//
//   Fingerprint fp;
//   fp.add(file_size).add(mtime_ns).add(config_json);
//   check_consistent(comm, "model file " + path, fp.value());   // throws tessera::Error on every rank
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "parallel/communicator.h"

namespace tessera {

// FNV-1a (64-bit) over the bytes added so far; the same on every machine of a job (little-endian x86-64/arm64).
// For detecting accidents, not adversaries.
class Fingerprint {
 public:
  Fingerprint& add_bytes(const void* data, size_t bytes);
  Fingerprint& add(std::string_view text);  // length-prefixed, so add("ab").add("c") != add("a").add("bc")
  Fingerprint& add(uint64_t value);
  uint64_t value() const { return hash_; }

 private:
  uint64_t hash_ = 14695981039346656037ull;
};

// Collective: all-gathers `fingerprint` over `comm` and, when the ranks disagree, throws tessera::Error on every
// rank with the same message, which names `what` and the ranks that differ from the majority (ties: from rank
// 0's value), e.g. "start-up check failed: model file m.gguf differs between ranks: rank 2 disagrees with rank
// 0 (ranks 0, 1, 3: 0x...; rank 2: 0x...)".
void check_consistent(Communicator& comm, const std::string& what, uint64_t fingerprint);

}  // namespace tessera
