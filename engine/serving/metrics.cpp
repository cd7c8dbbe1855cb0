#include "engine/serving/metrics.h"

#include <algorithm>

namespace tessera::serving {

namespace {
// Latency buckets from 1 ms to 2 min: covers a decode step of a tiny model up to a long queue wait.
std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0};
}
}  // namespace

Histogram::Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}

void Histogram::observe(double v) {
  const size_t i = static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
  ++counts[i];
  sum += v;
  ++count;
}

ServingMetrics::ServingMetrics() {
  m_.ttft = Histogram(latency_buckets());
  m_.tpot = Histogram(latency_buckets());
  m_.e2e = Histogram(latency_buckets());
  m_.queue_time = Histogram(latency_buckets());
}

void ServingMetrics::count_request(int http_status) {
  std::lock_guard lock(mu_);
  ++m_.requests_by_status[http_status];
}

void ServingMetrics::add_prompt_tokens(int n) {
  std::lock_guard lock(mu_);
  m_.prompt_tokens += static_cast<uint64_t>(n);
}

void ServingMetrics::add_generation_tokens(int n) {
  std::lock_guard lock(mu_);
  m_.generation_tokens += static_cast<uint64_t>(n);
}

void ServingMetrics::count_preemption() {
  std::lock_guard lock(mu_);
  ++m_.preemptions;
}

void ServingMetrics::count_cancelled() {
  std::lock_guard lock(mu_);
  ++m_.cancelled;
}

void ServingMetrics::set_gauges(int running, int waiting, int kv_used, int kv_free, int block_size) {
  std::lock_guard lock(mu_);
  m_.running = running;
  m_.waiting = waiting;
  m_.kv_blocks_used = kv_used;
  m_.kv_blocks_free = kv_free;
  m_.kv_block_size = block_size;
}

void ServingMetrics::observe_ttft(double s) {
  std::lock_guard lock(mu_);
  m_.ttft.observe(s);
}

void ServingMetrics::observe_tpot(double s) {
  std::lock_guard lock(mu_);
  m_.tpot.observe(s);
}

void ServingMetrics::observe_e2e(double s) {
  std::lock_guard lock(mu_);
  m_.e2e.observe(s);
}

void ServingMetrics::observe_queue_time(double s) {
  std::lock_guard lock(mu_);
  m_.queue_time.observe(s);
}

MetricsSnapshot ServingMetrics::snapshot() const {
  std::lock_guard lock(mu_);
  return m_;
}

}  // namespace tessera::serving
