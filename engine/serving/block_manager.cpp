#include "engine/serving/block_manager.h"

#include "engine/core/check.h"

namespace tessera::serving {

BlockManager::BlockManager(int num_blocks, int block_size) : num_blocks_(num_blocks), block_size_(block_size) {
  TESSERA_CHECK(num_blocks > 0 && block_size > 0);
  free_.reserve(static_cast<size_t>(num_blocks));
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);  // block 0 is handed out first
}

int BlockManager::blocks_of(int seq_id) const {
  const auto it = tables_.find(seq_id);
  return it == tables_.end() ? 0 : static_cast<int>(it->second.size());
}

int BlockManager::missing_blocks(int seq_id, int n_tokens) const {
  TESSERA_CHECK(n_tokens >= 0);
  const int need = blocks_for(n_tokens) - blocks_of(seq_id);
  return need > 0 ? need : 0;
}

bool BlockManager::reserve(int seq_id, int n_tokens) {
  const int need = missing_blocks(seq_id, n_tokens);
  if (need == 0) return true;
  if (need > num_free()) return false;
  std::vector<int>& table = tables_[seq_id];
  for (int i = 0; i < need; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void BlockManager::release(int seq_id) {
  const auto it = tables_.find(seq_id);
  if (it == tables_.end()) return;
  for (auto b = it->second.rbegin(); b != it->second.rend(); ++b) free_.push_back(*b);
  tables_.erase(it);
  TESSERA_CHECK(num_free() <= num_blocks_);
}

std::span<const int> BlockManager::block_table(int seq_id) const {
  const auto it = tables_.find(seq_id);
  if (it == tables_.end()) return {};
  return it->second;
}

}  // namespace tessera::serving
