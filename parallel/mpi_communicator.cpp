#include "parallel/mpi_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "engine/core/check.h"

namespace tessera {
namespace {

// Elements per MPI call: MPI counts are ints, so larger buffers go as several requests in flight at once.
constexpr size_t kChunk = size_t{1} << 30;
// Timeouts above this are treated as "no deadline" (and do not overflow the clock).
constexpr double kUnbounded = 1e9;

int world_rank_for_messages() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  int rank = -1;
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

[[noreturn]] void abort_job(int status) {
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, status);
  std::_Exit(status);  // MPI_Abort does not return; if it ever did, still end this rank
}

// Prints the one-line diagnosis and ends the whole job with status 3.
[[noreturn]] void die(const std::string& op, const std::string& what) {
  std::fprintf(stderr, "tessera: rank %d: %s %s (a peer rank may have died)\n", world_rank_for_messages(), op.c_str(),
               what.c_str());
  abort_job(3);
}

std::string mpi_error_text(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error code " + std::to_string(code);
  return std::string(buf, static_cast<size_t>(len));
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", s);
  return buf;
}

void validate_timeout(double timeout_s, const char* what) {
  if (!(timeout_s > 0)) {
    throw Error(std::string(what) + " must be a positive number of seconds, got " + seconds_text(timeout_s));
  }
}

// Polls `n` requests to completion against a deadline of `timeout_s` seconds from now. Progress in MPI happens
// inside MPI calls, so the loop keeps calling MPI_Testall: busy for the first 200 us (a decode-step all-reduce
// finishes well within that), then yielding, then in 100 us sleeps so that waiting ranks leave the cores to the
// ranks that still compute (oversubscribed hosts, pipeline bubbles).
// Failures name the operation as "<what> on mpi:<comm_name>" (built only then: the wait itself allocates nothing).
void wait_requests(MPI_Request* requests, int n, MPI_Status* statuses, double timeout_s, const char* what,
                   const std::string& comm_name) {
  auto op = [&] { return std::string(what) + " on mpi:" + comm_name; };
  if (n == 0) return;
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const bool bounded = timeout_s < kUnbounded;
  const auto deadline =
      bounded ? start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s))
              : Clock::time_point::max();
  for (;;) {
    int done = 0;
    const int rc = MPI_Testall(n, requests, &done, statuses);
    if (rc != MPI_SUCCESS) {
      int code = rc;
      if (rc == MPI_ERR_IN_STATUS) {
        for (int i = 0; i < n; ++i) {
          if (statuses[i].MPI_ERROR != MPI_SUCCESS && statuses[i].MPI_ERROR != MPI_ERR_PENDING) {
            code = statuses[i].MPI_ERROR;
            break;
          }
        }
      }
      die(op(), "failed: " + mpi_error_text(code));
    }
    if (done) return;
    const auto now = Clock::now();
    if (now >= deadline) die(op(), "timed out after " + seconds_text(timeout_s) + " s");
    const auto waited = now - start;
    if (waited < std::chrono::microseconds(200)) continue;
    if (waited < std::chrono::milliseconds(5)) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// MpiRuntime

MpiRuntime::MpiRuntime(int* argc, char*** argv, double shutdown_timeout_seconds, bool concurrent_threads)
    : shutdown_timeout_s_(shutdown_timeout_seconds) {
  validate_timeout(shutdown_timeout_seconds, "the MPI shutdown timeout");
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) throw Error("MPI was already finalised in this process and cannot be started again");
  if (initialized) throw Error("MPI is already initialised in this process (create one MpiRuntime per process)");
  const int wanted = concurrent_threads ? MPI_THREAD_MULTIPLE : MPI_THREAD_SERIALIZED;
  const char* wanted_name = concurrent_threads ? "MPI_THREAD_MULTIPLE" : "MPI_THREAD_SERIALIZED";
  int provided = MPI_THREAD_SINGLE;
  const int rc = MPI_Init_thread(argc, argv, wanted, &provided);
  if (rc != MPI_SUCCESS) throw Error("MPI_Init_thread failed: " + mpi_error_text(rc));
  if (provided < wanted) {
    MPI_Finalize();
    throw Error(std::string("this MPI library does not provide ") + wanted_name + " (got level " +
                std::to_string(provided) + ")");
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size_);
}

MpiRuntime::~MpiRuntime() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  // MPI_Finalize waits for every rank; pass a timed barrier first so a rank that never arrives cannot hang us.
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_Status status;
  const char* what = "shutdown barrier (before MPI_Finalize)";
  const int rc = MPI_Ibarrier(MPI_COMM_WORLD, &request);
  if (rc != MPI_SUCCESS) die(std::string(what) + " on mpi:world", "failed: " + mpi_error_text(rc));
  wait_requests(&request, 1, &status, shutdown_timeout_s_, what, "world");
  MPI_Finalize();
}

void MpiRuntime::abort(int status) const {
  abort_job(status);
}

// ---------------------------------------------------------------------------------------------------------------
// MpiCommunicator

struct MpiCommunicator::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0;
  int size = 1;
  double timeout_s = 0;
  std::string name;                      // without the "mpi:" prefix
  const char* gather_op = "all_gather";  // how messages name all_gather_bytes (argmax_all is built on it)
  // Reused across calls so the data plane allocates nothing after warm-up.
  std::vector<MPI_Request> requests;
  std::vector<MPI_Status> statuses;
  // start_send's requests by id, until wait_send.
  std::map<uint64_t, std::vector<MPI_Request>> started;
  uint64_t next_send_id = 1;

  ~Impl() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (comm != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm);
  }

  std::string op(const char* what) const { return std::string(what) + " on mpi:" + name; }

  void check(int rc, const char* what) const {
    if (rc != MPI_SUCCESS) die(op(what), "failed: " + mpi_error_text(rc));
  }

  void adopt(MPI_Comm c) {
    comm = c;
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
  }

  // Issues one request per chunk of `count` elements (offsets in elements) and waits for all of them.
  template <typename Issue>
  void chunked(size_t count, const char* what, Issue&& issue) {
    requests.clear();
    size_t offset = 0;
    do {
      const size_t n = std::min(kChunk, count - offset);
      requests.push_back(MPI_REQUEST_NULL);
      check(issue(offset, static_cast<int>(n), &requests.back()), what);
      offset += n;
    } while (offset < count);
    wait(what);
  }

  void wait(const char* what) {
    statuses.resize(requests.size());
    wait_requests(requests.data(), static_cast<int>(requests.size()), statuses.data(), timeout_s, what, name);
  }

  // A timed barrier; `what` names the operation it is part of.
  void fence(const char* what) {
    requests.assign(1, MPI_REQUEST_NULL);
    check(MPI_Ibarrier(comm, requests.data()), what);
    wait(what);
  }

  void check_peer(int peer, int tag, const char* what) const {
    TESSERA_CHECK_MSG(peer >= 0 && peer < size && peer != rank,
                      op(what) + ": peer " + std::to_string(peer) + " is not another rank of " + std::to_string(size));
    TESSERA_CHECK_MSG(tag >= 0 && tag <= kMaxTag, op(what) + ": tag " + std::to_string(tag) + " out of range");
  }
};

MpiCommunicator::MpiCommunicator(const MpiRuntime& runtime, double timeout_seconds, std::string name)
    : impl_(std::make_unique<Impl>()) {
  validate_timeout(timeout_seconds, "the communicator timeout");
  impl_->timeout_s = timeout_seconds;
  impl_->name = std::move(name);
  MPI_Comm comm = MPI_COMM_NULL;
  impl_->requests.assign(1, MPI_REQUEST_NULL);
  impl_->check(MPI_Comm_idup(MPI_COMM_WORLD, &comm, impl_->requests.data()), "communicator set-up (MPI_Comm_idup)");
  impl_->wait("communicator set-up (MPI_Comm_idup)");
  impl_->adopt(comm);
}

MpiCommunicator::MpiCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MpiCommunicator::~MpiCommunicator() = default;

std::unique_ptr<MpiCommunicator> MpiCommunicator::split(int color, int key, const std::string& name) {
  TESSERA_CHECK_MSG(color >= 0, impl_->op("split") + ": color " + std::to_string(color) + " is negative");
  impl_->fence("split");  // timed: everyone has arrived, so the blocking MPI_Comm_split below completes
  MPI_Comm comm = MPI_COMM_NULL;
  impl_->check(MPI_Comm_split(impl_->comm, color, key, &comm), "split");
  auto impl = std::make_unique<Impl>();
  impl->timeout_s = impl_->timeout_s;
  impl->name = impl_->name;
  impl->name += '/';
  if (name.empty()) impl->name += 'c';  // (appending in steps dodges a GCC 12 -Wrestrict false positive)
  impl->name += name.empty() ? std::to_string(color) : name;
  impl->adopt(comm);
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(std::move(impl)));
}

int MpiCommunicator::rank() const {
  return impl_->rank;
}
int MpiCommunicator::size() const {
  return impl_->size;
}
std::string MpiCommunicator::name() const {
  return "mpi:" + impl_->name;
}
double MpiCommunicator::timeout_seconds() const {
  return impl_->timeout_s;
}

void MpiCommunicator::all_reduce_sum(float* data, size_t count) {
  MPI_Comm comm = impl_->comm;
  impl_->chunked(count, "all_reduce_sum", [&](size_t off, int n, MPI_Request* r) {
    return MPI_Iallreduce(MPI_IN_PLACE, data + off, n, MPI_FLOAT, MPI_SUM, comm, r);
  });
}

void MpiCommunicator::all_gather_bytes(const void* in, size_t bytes_per_rank, void* out) {
  const char* what = impl_->gather_op;
  TESSERA_CHECK_MSG(bytes_per_rank <= static_cast<size_t>(INT_MAX),
                    impl_->op(what) + ": more than 2 GiB per rank in one call");
  const int n = static_cast<int>(bytes_per_rank);
  impl_->requests.assign(1, MPI_REQUEST_NULL);
  impl_->check(MPI_Iallgather(in, n, MPI_BYTE, out, n, MPI_BYTE, impl_->comm, impl_->requests.data()), what);
  impl_->wait(what);
}

ArgmaxCandidate MpiCommunicator::argmax_all(ArgmaxCandidate local) {
  impl_->gather_op = "argmax_all";  // failures end the job, so nothing can skip the reset below
  const ArgmaxCandidate best = Communicator::argmax_all(local);
  impl_->gather_op = "all_gather";
  return best;
}

void MpiCommunicator::send(const void* data, size_t bytes, int dst, int tag) {
  impl_->check_peer(dst, tag, "send");
  MPI_Comm comm = impl_->comm;
  const auto* p = static_cast<const unsigned char*>(data);
  impl_->chunked(bytes, "send",
                 [&](size_t off, int n, MPI_Request* r) { return MPI_Isend(p + off, n, MPI_BYTE, dst, tag, comm, r); });
}

uint64_t MpiCommunicator::start_send(const void* data, size_t bytes, int dst, int tag) {
  impl_->check_peer(dst, tag, "start_send");
  const auto* p = static_cast<const unsigned char*>(data);
  std::vector<MPI_Request> requests;
  size_t offset = 0;
  do {
    const size_t n = std::min(kChunk, bytes - offset);
    requests.push_back(MPI_REQUEST_NULL);
    impl_->check(MPI_Isend(p + offset, static_cast<int>(n), MPI_BYTE, dst, tag, impl_->comm, &requests.back()),
                 "start_send");
    offset += n;
  } while (offset < bytes);
  const uint64_t id = impl_->next_send_id++;
  impl_->started.emplace(id, std::move(requests));
  return id;
}

void MpiCommunicator::wait_send(uint64_t id) {
  auto it = impl_->started.find(id);
  TESSERA_CHECK_MSG(it != impl_->started.end(), impl_->op("wait_send") + ": unknown send id " + std::to_string(id));
  std::vector<MPI_Status> statuses(it->second.size());
  wait_requests(it->second.data(), static_cast<int>(it->second.size()), statuses.data(), impl_->timeout_s,
                "send (started earlier)", impl_->name);
  impl_->started.erase(it);
}

void MpiCommunicator::recv(void* data, size_t bytes, int src, int tag) {
  impl_->check_peer(src, tag, "recv");
  MPI_Comm comm = impl_->comm;
  auto* p = static_cast<unsigned char*>(data);
  impl_->chunked(bytes, "recv",
                 [&](size_t off, int n, MPI_Request* r) { return MPI_Irecv(p + off, n, MPI_BYTE, src, tag, comm, r); });
  // A shorter message than expected is a protocol mismatch between the ranks, as fatal as a truncated one.
  size_t got = 0;
  for (const MPI_Status& s : impl_->statuses) {
    int n = 0;
    MPI_Get_count(&s, MPI_BYTE, &n);
    got += static_cast<size_t>(n);
  }
  if (got != bytes) {
    die(impl_->op("recv"), "failed: expected " + std::to_string(bytes) + " bytes from rank " + std::to_string(src) +
                               " with tag " + std::to_string(tag) + ", got " + std::to_string(got));
  }
}

void MpiCommunicator::broadcast(void* data, size_t bytes, int root) {
  TESSERA_CHECK_MSG(root >= 0 && root < impl_->size,
                    impl_->op("broadcast") + ": root " + std::to_string(root) + " out of range");
  MPI_Comm comm = impl_->comm;
  auto* p = static_cast<unsigned char*>(data);
  impl_->chunked(bytes, "broadcast",
                 [&](size_t off, int n, MPI_Request* r) { return MPI_Ibcast(p + off, n, MPI_BYTE, root, comm, r); });
}

void MpiCommunicator::barrier() {
  impl_->fence("barrier");
}

void MpiCommunicator::send_message(const std::string& message, int dst, int tag) {
  TESSERA_CHECK_MSG(message.size() <= static_cast<size_t>(INT_MAX), impl_->op("send_message") + ": over 2 GiB");
  impl_->check_peer(dst, tag, "send_message");
  impl_->requests.assign(1, MPI_REQUEST_NULL);
  impl_->check(MPI_Isend(message.data(), static_cast<int>(message.size()), MPI_BYTE, dst, tag, impl_->comm,
                         impl_->requests.data()),
               "send_message");
  impl_->wait("send_message");
}

// Matched probes (MPI_Improbe + MPI_Imrecv) so that another thread's receive can never take the probed message.
bool MpiCommunicator::try_recv_message(int tag, int* src, std::string* message) {
  TESSERA_CHECK_MSG(tag >= 0 && tag <= kMaxTag, impl_->op("try_recv_message") + ": tag out of range");
  int flag = 0;
  MPI_Message handle = MPI_MESSAGE_NULL;
  MPI_Status status;
  impl_->check(MPI_Improbe(MPI_ANY_SOURCE, tag, impl_->comm, &flag, &handle, &status), "try_recv_message");
  if (!flag) return false;
  int bytes = 0;
  MPI_Get_count(&status, MPI_BYTE, &bytes);
  message->resize(static_cast<size_t>(bytes));
  impl_->requests.assign(1, MPI_REQUEST_NULL);
  impl_->check(MPI_Imrecv(message->data(), bytes, MPI_BYTE, &handle, impl_->requests.data()), "try_recv_message");
  impl_->wait("try_recv_message");
  *src = status.MPI_SOURCE;
  return true;
}

std::string MpiCommunicator::recv_message(int src, int tag) {
  impl_->check_peer(src, tag, "recv_message");
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const double timeout_s = impl_->timeout_s;
  for (;;) {
    int flag = 0;
    MPI_Message handle = MPI_MESSAGE_NULL;
    MPI_Status status;
    impl_->check(MPI_Improbe(src, tag, impl_->comm, &flag, &handle, &status), "recv_message");
    if (flag) {
      int bytes = 0;
      MPI_Get_count(&status, MPI_BYTE, &bytes);
      std::string message(static_cast<size_t>(bytes), '\0');
      impl_->requests.assign(1, MPI_REQUEST_NULL);
      impl_->check(MPI_Imrecv(message.data(), bytes, MPI_BYTE, &handle, impl_->requests.data()), "recv_message");
      impl_->wait("recv_message");
      return message;
    }
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (timeout_s < kUnbounded && waited > timeout_s)
      die(impl_->op("recv_message"), "timed out after " + seconds_text(timeout_s) + " s");
    std::this_thread::sleep_for(std::chrono::microseconds(waited < 0.005 ? 20 : 200));
  }
}

}  // namespace tessera
