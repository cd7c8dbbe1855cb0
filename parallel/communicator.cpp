#include "parallel/communicator.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/core/check.h"

namespace tessera {

void all_reduce_max(Communicator& comm, float* data, size_t count) {
  const size_t ranks = static_cast<size_t>(comm.size());
  std::vector<float> all(count * ranks);
  comm.all_gather(data, count, all.data());
  for (size_t r = 0; r < ranks; ++r)
    for (size_t i = 0; i < count; ++i) data[i] = std::max(data[i], all[r * count + i]);
}

ArgmaxCandidate better_candidate(const ArgmaxCandidate& a, const ArgmaxCandidate& b) {
  if (a.index < 0) return b.index < 0 ? ArgmaxCandidate{} : b;
  if (b.index < 0) return a;
  const bool a_nan = std::isnan(a.value);
  const bool b_nan = std::isnan(b.value);
  if (a_nan != b_nan) return a_nan ? b : a;
  if (!a_nan && a.value != b.value) return a.value > b.value ? a : b;
  return a.index <= b.index ? a : b;
}

ArgmaxCandidate reduce_argmax(const ArgmaxCandidate* candidates, size_t count) {
  ArgmaxCandidate best;
  for (size_t i = 0; i < count; ++i) best = better_candidate(best, candidates[i]);
  return best;
}

// Generic implementation over all_gather_bytes: size() tiny records, reduced identically on every rank. The
// record is packed by hand (value at 0, index at 8) so no padding byte goes on the wire.
ArgmaxCandidate Communicator::argmax_all(ArgmaxCandidate local) {
  constexpr size_t kRecord = 16;
  unsigned char mine[kRecord] = {};
  std::memcpy(mine, &local.value, sizeof(float));
  std::memcpy(mine + 8, &local.index, sizeof(int64_t));
  const int n = size();
  std::vector<unsigned char> all(kRecord * static_cast<size_t>(n));
  all_gather_bytes(mine, kRecord, all.data());
  std::vector<ArgmaxCandidate> candidates(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    std::memcpy(&candidates[r].value, all.data() + kRecord * r, sizeof(float));
    std::memcpy(&candidates[r].index, all.data() + kRecord * r + 8, sizeof(int64_t));
  }
  return reduce_argmax(candidates.data(), candidates.size());
}

void Communicator::send_message(const std::string&, int, int) {
  TESSERA_CHECK_MSG(false, name() + " does not carry messages (send_message)");
}

bool Communicator::try_recv_message(int, int*, std::string*) {
  TESSERA_CHECK_MSG(false, name() + " does not carry messages (try_recv_message)");
  return false;
}

std::string Communicator::recv_message(int, int) {
  TESSERA_CHECK_MSG(false, name() + " does not carry messages (recv_message)");
  return {};
}

}  // namespace tessera
