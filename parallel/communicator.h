// The communicator interface for tensor and pipeline parallelism.
//
// One abstract `Communicator` covers a group of `size()` ranks, each running the same program; every rank owns
// one object per group it belongs to (the whole job, its tensor-parallel group, its pipeline group). Objects are
// RAII and non-copyable: they own the underlying handle (an MPI or NCCL communicator) and free it when destroyed.
// Implementations:
//   SingleProcessCommunicator  size 1, no transport; what every caller uses when parallelism is off.
//   MpiCommunicator            Open MPI, host memory, built with TESSERA_ENABLE_MPI (parallel/mpi_communicator.h).
//   NcclCommunicator           NCCL, device memory, built with CUDA and MPI (parallel/nccl_communicator.h).
//
// Control plane vs data plane. Two kinds of traffic go through this interface:
//   - control plane: small host-side messages that keep the ranks in lockstep: the step plan rank 0 broadcasts
//     before every step (which sequences, how many tokens), the sampled token ids, start-up fingerprints
//     (`check_consistent`, parallel/consistency.h), shutdown. Latency-bound, tiny, always host memory. Use
//     `broadcast`, `all_gather_bytes`, `argmax_all`, `barrier`.
//   - data plane: activations: the all-reduce after a row-parallel matmul, the all-gather of vocab-parallel
//     logits, the activations one pipeline stage sends to the next. Bandwidth-bound. Use `all_reduce_sum`,
//     `all_gather`, `send`/`recv`.
// For the CPU both planes are the same MPI communicator. Between GPUs the model's tensor-parallel data plane is an
// NCCL communicator over device pointers, while MPI stays the control plane (and the runner's groups) and
// bootstraps NCCL. Never put a control message into a data-plane buffer or the other way round.
//
// Contract for every implementation:
//   - Collectives (`all_reduce_sum`, `all_gather*`, `broadcast`, `argmax_all`, `barrier`) must be called by every
//     rank of the group, in the same order, with the same sizes (and the same root). Point-to-point `send`/`recv`
//     pair up by (peer, tag); messages between the same pair with the same tag arrive in order.
//   - Calls block until this rank's part is done: after `send` returns the buffer may be reused (it may wait for
//     the matching `recv`, so two ranks must not both `send` large messages to each other first).
//   - One thread at a time uses a communicator (the engine thread); the thread pool never calls it.
//   - Results of `all_reduce_sum` are bitwise identical on every rank (the ranks must sample the same token).
//   - Failures are never silent hangs: a transport error or an operation that exceeds the communicator's timeout
//     prints "tessera: rank R: <operation> ..." to stderr and ends the whole job with a non-zero status (see
//     MpiCommunicator). Misuse (bad root, bad peer, bad tag) is a programmer error: TESSERA_CHECK.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace tessera {

// A candidate for a distributed argmax over vocabulary shards: the largest logit of this rank's shard and its
// index in the whole vocabulary. `index < 0` means "no candidate" (an empty shard).
struct ArgmaxCandidate {
  float value = 0.0f;
  int64_t index = -1;
};

// The winner of two candidates: a real candidate beats none; a number beats NaN; the larger value wins; equal
// values (and two NaNs) go to the lower index. This matches the single-rank greedy argmax (first maximum, NaN
// skipped), so greedy sampling does not depend on how the vocabulary is split.
ArgmaxCandidate better_candidate(const ArgmaxCandidate& a, const ArgmaxCandidate& b);

// Folds `count` candidates with better_candidate; {0, -1} when count is 0 or none is real.
ArgmaxCandidate reduce_argmax(const ArgmaxCandidate* candidates, size_t count);

class Communicator;
// data[i] <- the maximum of data[i] over all ranks, through all_gather (rare, small: e.g. quantization scales).
void all_reduce_max(Communicator& comm, float* data, size_t count);

// Tags for send/recv: 0..kMaxTag (the smallest upper bound MPI guarantees).
inline constexpr int kMaxTag = 32767;

class Communicator {
 public:
  Communicator() = default;
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  // This rank's index in the group, 0..size()-1, and the group's size.
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Implementation and group, for messages: "single", "mpi:world", "mpi:world/tp0".
  virtual std::string name() const = 0;

  // --- data plane -------------------------------------------------------------------------------------------
  // Where data-plane pointers live: false (host memory) for MPI and the single process, true (device memory of
  // this rank's GPU) for NCCL. Control-plane calls always take host memory.
  virtual bool device_memory() const { return false; }
  // data[0..count) <- the element-wise sum over all ranks, in place; identical on every rank.
  virtual void all_reduce_sum(float* data, size_t count) = 0;
  // out[r * count_per_rank + i] <- rank r's in[i]; out has size() * count_per_rank floats and must not overlap in.
  void all_gather(const float* in, size_t count_per_rank, float* out) {
    all_gather_bytes(in, count_per_rank * sizeof(float), out);
  }
  // Point to point with another rank of the group (peer != rank()); tag in 0..kMaxTag. `recv` expects exactly
  // `bytes` bytes.
  virtual void send(const void* data, size_t bytes, int dst, int tag) = 0;
  virtual void recv(void* data, size_t bytes, int src, int tag) = 0;
  // A send that returns at once, for a receiver that may itself be blocked sending to this rank (the last
  // pipeline stage returning logits to rank 0 while rank 0 feeds the next step in). The buffer must stay
  // untouched until wait_send(id) returns; every started send must be waited for. Ids are never reused.
  virtual uint64_t start_send(const void* data, size_t bytes, int dst, int tag) = 0;
  virtual void wait_send(uint64_t id) = 0;

  // --- control plane ----------------------------------------------------------------------------------------
  // data[0..bytes) on every rank <- root's.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  // The byte form of all_gather: out[r * bytes_per_rank ...] <- rank r's in.
  virtual void all_gather_bytes(const void* in, size_t bytes_per_rank, void* out) = 0;
  // Distributed argmax for vocab-parallel greedy sampling: every rank passes its shard's best (value, global
  // index); every rank gets the global winner (ties: lowest index; see better_candidate).
  virtual ArgmaxCandidate argmax_all(ArgmaxCandidate local);
  // Returns once every rank has entered it.
  virtual void barrier() = 0;

  // Messages of any length, for loosely coupled ranks that do not run in lockstep (data-parallel replicas
  // asking a coordinator for work). Not every communicator carries them: the default implementations are a
  // programmer error (TESSERA_CHECK); MpiCommunicator implements them.
  virtual void send_message(const std::string& message, int dst, int tag);
  // A message with `tag` from any rank, if one has arrived (never waits): true and *src, *message set.
  virtual bool try_recv_message(int tag, int* src, std::string* message);
  // Waits (within the communicator's timeout) for the next message with `tag` from `src`.
  virtual std::string recv_message(int src, int tag);
};

}  // namespace tessera
