// Serving metrics shared by the engine thread (latencies, tokens, queue and KV gauges) and the HTTP threads
// (requests by status). Every method is thread-safe; /metrics renders a snapshot (server/prometheus.*).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace tessera::serving {

// Cumulative-bucket histogram in seconds, Prometheus style (le = upper bound, +Inf implied).
struct Histogram {
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);

  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // per bucket (not cumulative); counts[bounds.size()] is +Inf
  double sum = 0.0;
  uint64_t count = 0;
};

struct MetricsSnapshot {
  std::map<int, uint64_t> requests_by_status;  // HTTP status -> count
  uint64_t prompt_tokens = 0;
  uint64_t generation_tokens = 0;
  uint64_t preemptions = 0;
  uint64_t cancelled = 0;  // requests cancelled by a client disconnect
  int running = 0;
  int waiting = 0;
  int kv_blocks_used = 0;
  int kv_blocks_free = 0;
  int kv_block_size = 0;
  Histogram ttft{{}};        // arrival -> first token
  Histogram tpot{{}};        // mean time per output token after the first, per request
  Histogram e2e{{}};         // arrival -> finish
  Histogram queue_time{{}};  // arrival -> first scheduled
};

class ServingMetrics {
 public:
  ServingMetrics();

  void count_request(int http_status);
  void add_prompt_tokens(int n);
  void add_generation_tokens(int n);
  void count_preemption();
  void count_cancelled();
  void set_gauges(int running, int waiting, int kv_used, int kv_free, int block_size);
  void observe_ttft(double s);
  void observe_tpot(double s);
  void observe_e2e(double s);
  void observe_queue_time(double s);

  MetricsSnapshot snapshot() const;

 private:
  mutable std::mutex mu_;
  MetricsSnapshot m_;
};

}  // namespace tessera::serving
