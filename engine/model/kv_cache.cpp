#include "engine/model/kv_cache.h"

#include <bit>
#include <string>
#include <utility>

#include "engine/core/check.h"

namespace tessera {

namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

// Carves keys then values of each layer out of one allocation: rows x dim floats each.
std::vector<KvLayer> carve_layers(float* base, const std::vector<int>& layer_kv_dims, int rows) {
  std::vector<KvLayer> layers;
  for (int d : layer_kv_dims) {
    const size_t per_layer = sz(rows) * sz(d);
    layers.push_back(KvLayer{base, base + per_layer, rows, d});
    base += 2 * per_layer;
  }
  return layers;
}

BackendBuffer allocate_rows(const std::vector<int>& layer_kv_dims, int rows, Backend* backend) {
  size_t total = 0;
  for (int d : layer_kv_dims) {
    TESSERA_CHECK(d > 0);
    total += 2 * sz(rows) * sz(d);
  }
  const size_t bytes = total * sizeof(float);
  return backend != nullptr ? backend->allocate(bytes) : allocate_host_buffer(bytes);
}

}  // namespace

// ---- KvPool ----

KvPool::KvPool(Backend& backend, const std::vector<int>& layer_kv_dims, int num_blocks, int block_size)
    : KvPool(layer_kv_dims, num_blocks, block_size, &backend) {}

KvPool::KvPool(const std::vector<int>& layer_kv_dims, int num_blocks, int block_size)
    : KvPool(layer_kv_dims, num_blocks, block_size, nullptr) {}

KvPool::KvPool(const std::vector<int>& layer_kv_dims, int num_blocks, int block_size, Backend* backend)
    : num_blocks_(num_blocks) {
  TESSERA_CHECK(num_blocks > 0);
  TESSERA_CHECK_MSG(block_size > 0 && std::has_single_bit(static_cast<unsigned>(block_size)),
                    "KV block size " + std::to_string(block_size) + " is not a power of two");
  block_shift_ = std::countr_zero(static_cast<unsigned>(block_size));
  TESSERA_CHECK_MSG(static_cast<int64_t>(num_blocks) * block_size <= (int64_t{1} << 30), "KV pool too large");
  const int rows = num_blocks * block_size;
  storage_ = allocate_rows(layer_kv_dims, rows, backend);
  layers_ = carve_layers(storage_.as<float>(), layer_kv_dims, rows);
  free_.reserve(sz(num_blocks));
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);  // block 0 is handed out first
}

int KvPool::take() {
  TESSERA_CHECK_MSG(!free_.empty(), "KV pool: no free block");
  const int b = free_.back();
  free_.pop_back();
  return b;
}

void KvPool::give_back(int block) {
  TESSERA_CHECK(block >= 0 && block < num_blocks_ && num_free() < num_blocks_);
  free_.push_back(block);
}

// ---- KvCache ----

KvCache::KvCache(const ModelConfig& config, int capacity)
    : KvCache(std::vector<int>(sz(config.n_layers), config.kv_dim()), capacity) {}

KvCache::KvCache(const std::vector<int>& layer_kv_dims, int capacity) : KvCache(layer_kv_dims, capacity, nullptr) {}

KvCache::KvCache(Backend& backend, const std::vector<int>& layer_kv_dims, int capacity)
    : KvCache(layer_kv_dims, capacity, &backend) {}

KvCache::KvCache(const std::vector<int>& layer_kv_dims, int capacity, Backend* backend) : capacity_(capacity) {
  TESSERA_CHECK(capacity > 0);
  storage_ = allocate_rows(layer_kv_dims, capacity, backend);
  layers_ = carve_layers(storage_.as<float>(), layer_kv_dims, capacity);
}

KvCache::KvCache(KvPool& pool) : pool_(&pool) {}

KvCache::~KvCache() {
  release_blocks();
}

KvCache::KvCache(KvCache&& other) noexcept
    : capacity_(other.capacity_),
      storage_(std::move(other.storage_)),
      layers_(std::move(other.layers_)),
      pool_(std::exchange(other.pool_, nullptr)),
      blocks_(std::move(other.blocks_)) {
  other.blocks_.clear();
}

KvCache& KvCache::operator=(KvCache&& other) noexcept {
  if (this != &other) {
    release_blocks();
    capacity_ = other.capacity_;
    storage_ = std::move(other.storage_);
    layers_ = std::move(other.layers_);
    pool_ = std::exchange(other.pool_, nullptr);
    blocks_ = std::move(other.blocks_);
    other.blocks_.clear();
  }
  return *this;
}

void KvCache::release_blocks() {
  if (pool_ == nullptr) return;
  for (auto b = blocks_.rbegin(); b != blocks_.rend(); ++b) pool_->give_back(*b);
  blocks_.clear();
}

int KvCache::capacity() const {
  return paged() ? static_cast<int>(blocks_.size()) << pool_->block_shift() : capacity_;
}

int KvCache::n_layers() const {
  return paged() ? pool_->n_layers() : static_cast<int>(layers_.size());
}

KvLayer KvCache::layer(int l) const {
  if (!paged()) return layers_[sz(l)];
  KvLayer kv = pool_->layer(l);
  kv.capacity = capacity();
  kv.blocks = blocks_.data();
  kv.block_shift = pool_->block_shift();
  return kv;
}

size_t KvCache::bytes() const {
  if (!paged()) return storage_.bytes();
  return pool_->num_blocks() == 0 ? 0 : pool_->bytes() / sz(pool_->num_blocks()) * blocks_.size();
}

int KvCache::blocks_missing(int rows) const {
  TESSERA_CHECK(paged() && rows >= 0);
  const int need = pool_->blocks_for(rows) - static_cast<int>(blocks_.size());
  return need > 0 ? need : 0;
}

void KvCache::reserve(int rows) {
  const int need = blocks_missing(rows);
  if (need > pool_->num_free())
    throw Error("the KV pool has " + std::to_string(pool_->num_free()) + " free blocks; " + std::to_string(rows) +
                " rows need " + std::to_string(need) + " more");
  for (int i = 0; i < need; ++i) blocks_.push_back(pool_->take());
}

}  // namespace tessera
