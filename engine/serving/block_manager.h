// Paged KV-cache accounting for the scheduler: a pool of fixed-size blocks (block_size token rows each), a free list
// and one block table per sequence. It owns block *lifetime* decisions only; the rows themselves live in every
// rank's KvPool (engine/model/kv_cache.h), which RunnerStepModel keeps block for block in step with this count.
// Engine thread only: not thread-safe.
#pragma once

#include <span>
#include <unordered_map>
#include <vector>

namespace tessera::serving {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size);

  int block_size() const { return block_size_; }
  int num_blocks() const { return num_blocks_; }
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_used() const { return num_blocks_ - num_free(); }

  // Blocks needed to hold n_tokens rows.
  int blocks_for(int n_tokens) const { return (n_tokens + block_size_ - 1) / block_size_; }
  // Blocks a sequence holds now (0 when it has none).
  int blocks_of(int seq_id) const;
  // Extra blocks seq_id needs so that it can hold n_tokens rows.
  int missing_blocks(int seq_id, int n_tokens) const;

  // Grows seq_id's block table to hold n_tokens rows. Returns false and changes nothing when the pool has too
  // few free blocks.
  bool reserve(int seq_id, int n_tokens);
  // Returns every block of seq_id to the free list (no-op when it holds none).
  void release(int seq_id);

  // Physical block ids, in logical order; empty when the sequence holds none. Valid until the next call.
  std::span<const int> block_table(int seq_id) const;

 private:
  int num_blocks_;
  int block_size_;
  std::vector<int> free_;  // a stack: the most recently freed block is reused first (warm in cache)
  std::unordered_map<int, std::vector<int>> tables_;
};

}  // namespace tessera::serving
