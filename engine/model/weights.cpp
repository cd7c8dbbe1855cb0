#include "engine/model/weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "engine/core/check.h"

namespace tessera {

const MappedFile& WeightStore::add_file(MappedFile file) {
  files_.push_back(std::make_unique<MappedFile>(std::move(file)));
  return *files_.back();
}

WeightStore::Buffer::Buffer(Buffer&& o) noexcept
    : data(std::exchange(o.data, nullptr)), bytes(std::exchange(o.bytes, 0)), mapped(o.mapped) {}

WeightStore::Buffer::~Buffer() {
  free();
}

void WeightStore::Buffer::free() {
  if (data == nullptr) return;
  if (mapped) {
    ::munmap(data, bytes);
  } else {
    std::free(data);
  }
  data = nullptr;
  bytes = 0;
}

uint8_t* WeightStore::allocate(size_t bytes) {
  constexpr size_t kMapThreshold = size_t{1} << 20;
  const size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
  if (rounded >= kMapThreshold) {
    void* p = ::mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    buffers_.emplace_back(static_cast<uint8_t*>(p), rounded, true);
  } else {
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) throw std::bad_alloc();
    std::memset(p, 0, rounded);
    buffers_.emplace_back(static_cast<uint8_t*>(p), rounded, false);
  }
  allocated_bytes_ += rounded;
  return buffers_.back().data;
}

namespace {

// Does any view of `live` point into [lo, hi)?
bool used_by(const ModelWeights& live, const uint8_t* lo, const uint8_t* hi) {
  for (const Matrix* m : live.matrices()) {
    const auto* d = static_cast<const uint8_t*>(m->data);
    if (d != nullptr && d < hi && d + m->bytes() > lo) return true;
  }
  return false;
}

}  // namespace

size_t WeightStore::release_if_unused(const Matrix& old, const ModelWeights& live) {
  const auto* p = static_cast<const uint8_t*>(old.data);
  if (p == nullptr) return 0;
  for (Buffer& b : buffers_) {
    if (b.data == nullptr || p < b.data || p >= b.data + b.bytes) continue;
    if (used_by(live, b.data, b.data + b.bytes)) return 0;
    const size_t bytes = b.bytes;
    b.free();
    allocated_bytes_ -= bytes;
    return bytes;
  }
  for (const auto& f : files_) {
    if (p < f->data() || p >= f->data() + f->size()) continue;
    // Only whole pages inside the view; ones it shares with a neighbour stay.
    const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
    const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + old.bytes()) / page * page;
    if (hi <= lo) return 0;
    const auto* lo_p = reinterpret_cast<const uint8_t*>(lo);
    const auto* hi_p = reinterpret_cast<const uint8_t*>(hi);
    if (used_by(live, lo_p, hi_p)) return 0;
    // A read-only mapping: dropped pages would be read from the file again if anything touched them.
    if (::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED) != 0) return 0;
    return hi - lo;
  }
  return 0;
}

size_t WeightStore::mapped_bytes() const {
  size_t total = 0;
  for (const auto& f : files_) total += f->size();
  return total;
}

std::vector<Matrix*> ModelWeights::matrices() {
  std::vector<Matrix*> out{&tok_embeddings, &lm_head};
  for (LayerWeights& l : layers)
    for (Matrix* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) out.push_back(w);
  return out;
}

std::vector<const Matrix*> ModelWeights::matrices() const {
  const std::vector<Matrix*> views = const_cast<ModelWeights*>(this)->matrices();  // only read through
  return {views.begin(), views.end()};
}

PendingWeights::PendingWeights(Fill fill, std::vector<std::string> names)
    : fill_(std::move(fill)), names_(names.begin(), names.end()) {
  if (names_.empty()) fill_ = nullptr;
}

void PendingWeights::make(const std::string& name, Matrix& m) {
  if (names_.erase(name) == 0) return;
  const auto t0 = std::chrono::steady_clock::now();
  fill_(name, m);
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (names_.empty()) fill_ = nullptr;
}

std::vector<NamedWeight> ModelData::named_weights() {
  std::vector<NamedWeight> out;
  auto present = [&](const Matrix& m, const std::string& name) { return !m.empty() || pending.contains(name); };
  if (present(weights.tok_embeddings, "tok_embeddings"))
    out.push_back({"tok_embeddings", -1, -1, &weights.tok_embeddings});
  const int first_layer = layout().layer_begin;
  for (size_t l = 0; l < weights.layers.size(); ++l) {
    LayerWeights& lw = weights.layers[l];
    Matrix* slots[7] = {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.w_gate, &lw.w_up, &lw.w_down};
    for (int s = 0; s < 7; ++s)
      out.push_back({"layers." + std::to_string(first_layer + static_cast<int>(l)) + "." + kLayerSlotNames[s],
                     static_cast<int>(l), s, slots[s]});
  }
  if (present(weights.lm_head, "lm_head")) out.push_back({"lm_head", -1, -1, &weights.lm_head});
  return out;
}

void ModelData::make_pending_weights() {
  if (pending.empty()) return;
  for (const NamedWeight& w : named_weights()) pending.make(w.name, *w.matrix);
  TESSERA_CHECK_MSG(pending.empty(), "a pending weight has no matrix in the model");
}

size_t ModelData::weight_bytes() const {
  // The embedding table is gathered one row per token, so only lm_head (tied or not) counts as read per token.
  size_t total = weights.lm_head.bytes();
  for (const auto& l : weights.layers)
    total += l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() + l.w_gate.bytes() + l.w_up.bytes() +
             l.w_down.bytes();
  return total;
}

}  // namespace tessera
