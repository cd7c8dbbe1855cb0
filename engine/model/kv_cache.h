// KV caches: for every layer of a shard, the keys and values of each position as fp32 rows of that layer's kv_dim.
//
// Two layouts behind one class, both seen by the model and the attention ops only through KvLayer:
// - contiguous: one sequence's own buffer of `capacity` rows (generate, eval, bench);
// - paged: blocks of a KvPool shared by many sequences (the serving engine). A paged cache holds a block table and
//   grows a block at a time without copying; its blocks go back to the pool when it is destroyed.
// The storage lives in a backend's memory space (LlamaModel::make_cache / make_kv_pool); the constructors without
// a backend make host memory, which the CPU backends use.
#pragma once

#include <vector>

#include "engine/backend/backend.h"
#include "engine/model/model_config.h"

namespace tessera {

// Blocks of KV rows for many sequences: for every layer, keys and values of num_blocks blocks of block_size rows,
// allocated once (zeroed) in backend memory, and a free list. Not thread-safe: one engine thread (or one worker
// rank's step loop) uses it.
class KvPool {
 public:
  // block_size: rows per block, a power of two.
  KvPool(Backend& backend, const std::vector<int>& layer_kv_dims, int num_blocks, int block_size);
  KvPool(const std::vector<int>& layer_kv_dims, int num_blocks, int block_size);  // host memory
  KvPool(const KvPool&) = delete;
  KvPool& operator=(const KvPool&) = delete;

  int block_size() const { return 1 << block_shift_; }
  int block_shift() const { return block_shift_; }
  int num_blocks() const { return num_blocks_; }
  int num_free() const { return static_cast<int>(free_.size()); }
  // Blocks that hold `rows` rows.
  int blocks_for(int rows) const { return (rows + block_size() - 1) >> block_shift_; }
  int n_layers() const { return static_cast<int>(layers_.size()); }
  size_t bytes() const { return storage_.bytes(); }
  // Layer l's whole pool as a contiguous KvLayer of num_blocks * block_size rows.
  const KvLayer& layer(int l) const { return layers_[static_cast<size_t>(l)]; }

  // A free block; the caller must have checked num_free() > 0.
  int take();
  void give_back(int block);

 private:
  KvPool(const std::vector<int>& layer_kv_dims, int num_blocks, int block_size, Backend* backend);

  int num_blocks_;
  int block_shift_;
  BackendBuffer storage_;
  std::vector<KvLayer> layers_;
  std::vector<int> free_;  // a stack: the block freed last is reused first (warm in cache)
};

class KvCache {
 public:
  // Contiguous, every layer of the whole model, in host memory.
  KvCache(const ModelConfig& config, int capacity);
  // Contiguous, one layer per entry of layer_kv_dims, each with rows of that many floats (a shard: its layers, its
  // kv heads; see LlamaModel::make_cache), in host memory.
  KvCache(const std::vector<int>& layer_kv_dims, int capacity);
  // The same in `backend`'s memory (zeroed; the backend must outlive the cache's use).
  KvCache(Backend& backend, const std::vector<int>& layer_kv_dims, int capacity);
  // Paged in `pool` (not owned; it must outlive the cache), with no rows until reserve().
  explicit KvCache(KvPool& pool);
  ~KvCache();
  KvCache(KvCache&& other) noexcept;
  KvCache& operator=(KvCache&& other) noexcept;
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  bool paged() const { return pool_ != nullptr; }
  // Rows the cache holds now (paged: its blocks times the block size).
  int capacity() const;
  int n_layers() const;
  KvLayer layer(int l) const;
  // Contiguous: bytes of its own storage. Paged: bytes of the blocks it holds.
  size_t bytes() const;

  // Paged: blocks needed so that capacity() >= rows (0 if it already is).
  int blocks_missing(int rows) const;
  // Paged: grows to at least `rows` rows by taking blocks from the pool, keeping every row it holds. Throws
  // tessera::Error and changes nothing when the pool has too few free blocks.
  void reserve(int rows);

 private:
  KvCache(const std::vector<int>& layer_kv_dims, int capacity, Backend* backend);
  void release_blocks();

  int capacity_ = 0;  // contiguous
  BackendBuffer storage_;
  std::vector<KvLayer> layers_;
  KvPool* pool_ = nullptr;  // paged
  std::vector<int> blocks_;
};

}  // namespace tessera
