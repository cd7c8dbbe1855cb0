// Work distribution of `tessera batch`: rank 0 coordinates, every replica pulls.
//
// Each replica leader keeps up to `window` requests in its serving engine (continuous batching inside the
// replica) and, whenever it has results to hand back or room for more, exchanges them with the coordinator for
// new requests. Faster replicas come back sooner and so take more of the work. Replica 0 lives on rank 0 and
// calls the coordinator directly; other replicas send messages over the job's coordination communicator.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cli/batch_files.h"
#include "engine/runtime/tokenizer.h"
#include "engine/serving/engine.h"
#include "parallel/communicator.h"
#include "server/chat_template.h"

namespace tessera::cli {

// One finished request: its output line and, for progress, the tokens it generated and whether it failed.
struct BatchResult {
  std::string line;
  int64_t completion_tokens = 0;
  bool error = false;
};

// Rank 0: hands out requests in input order and writes results as they come.
class BatchCoordinator {
 public:
  // `replicas` replicas of `ranks_per_replica` ranks each (replica r leads from rank r * ranks_per_replica of
  // the coordination communicator). on_result runs after each result is written (progress display).
  BatchCoordinator(std::vector<BatchItem> todo, BatchOutput& output, int replicas, int ranks_per_replica,
                   std::function<void(const BatchResult&)> on_result);

  // Requests not yet handed out: at most `want`, and at most an equal share of what is left, so that near the
  // end no replica sits on a pile of work while another is idle.
  std::vector<BatchItem> take(int want);
  void put(const BatchResult& result, int replica);
  bool exhausted() const { return next_ >= todo_.size(); }

  // Answers the remote replicas' messages that have arrived (never waits). `comm` is the coordination
  // communicator.
  void serve_remote(Communicator& comm);
  // Remote replicas that have not yet said they are done.
  int remote_active() const { return remote_active_; }
  // Results written per replica.
  const std::vector<size_t>& results_per_replica() const { return per_replica_; }

 private:
  std::vector<BatchItem> todo_;
  size_t next_ = 0;
  BatchOutput& output_;
  int replicas_;
  int ranks_per_replica_;
  std::function<void(const BatchResult&)> on_result_;
  int remote_active_;
  std::vector<size_t> per_replica_;
};

// Where a replica gets requests and leaves results.
class WorkSource {
 public:
  struct Reply {
    std::vector<BatchItem> items;
    bool more = true;  // false: nothing left to hand out
  };
  virtual ~WorkSource() = default;
  // Hands over `results` (emptied) and asks for up to `want` requests.
  virtual Reply exchange(std::vector<BatchResult>& results, int want) = 0;
  // The replica has nothing left in flight and will not ask again.
  virtual void finished() {}
};

// Replica 0, on the coordinator's own rank.
class LocalWorkSource final : public WorkSource {
 public:
  explicit LocalWorkSource(BatchCoordinator& coordinator) : coordinator_(coordinator) {}
  Reply exchange(std::vector<BatchResult>& results, int want) override;

 private:
  BatchCoordinator& coordinator_;
};

// Other replicas: messages to the coordinator (rank `coordinator` of `comm`).
class RemoteWorkSource final : public WorkSource {
 public:
  RemoteWorkSource(Communicator& comm, int coordinator) : comm_(comm), coordinator_(coordinator) {}
  Reply exchange(std::vector<BatchResult>& results, int want) override;
  void finished() override;

 private:
  Communicator& comm_;
  int coordinator_;
};

// A replica leader's loop: turns requests into engine submissions and finished streams into output lines.
class BatchReplica {
 public:
  // window bounds the requests in the engine at once.
  BatchReplica(serving::ServingEngine& engine, const Tokenizer& tokenizer, const server::ChatTemplate& chat_template,
               int window);
  ~BatchReplica();

  // Runs until the source has nothing more and every request has finished; between rounds calls each_round
  // (the coordinator's rank serves remote replicas there).
  void run(WorkSource& source, const std::function<void()>& each_round = {});

  struct Running;  // a request in the engine and what its choices produced so far

 private:
  // Parses and submits a request; a bad one goes straight to the outbox as an error line (never throws).
  void start(BatchItem item, std::vector<BatchResult>& outbox);

  serving::ServingEngine& engine_;
  const Tokenizer& tokenizer_;
  const server::ChatTemplate& chat_template_;
  int window_;
  std::vector<std::unique_ptr<Running>> running_;
};

}  // namespace tessera::cli
