#include "server/prometheus.h"

#include <cstdio>

namespace tessera::server {

namespace {

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void histogram(std::string& out, const char* name, const char* help, const serving::Histogram& h) {
  header(out, name, "histogram", help);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cumulative += h.counts[i];
    out += std::string(name) + "_bucket{le=\"" + num(h.bounds[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  out += std::string(name) + "_bucket{le=\"+Inf\"} " + std::to_string(h.count) + "\n";
  out += std::string(name) + "_sum " + num(h.sum) + "\n";
  out += std::string(name) + "_count " + std::to_string(h.count) + "\n";
}

void gauge(std::string& out, const char* name, const char* help, double v, const char* type = "gauge") {
  header(out, name, type, help);
  out += std::string(name) + " " + num(v) + "\n";
}

}  // namespace

std::string render_prometheus(const serving::MetricsSnapshot& m) {
  std::string out;
  header(out, "tessera_requests_total", "counter", "HTTP requests answered, by status code.");
  for (const auto& [status, count] : m.requests_by_status)
    out += "tessera_requests_total{status=\"" + std::to_string(status) + "\"} " + std::to_string(count) + "\n";
  gauge(out, "tessera_prompt_tokens_total", "Prompt tokens admitted.", static_cast<double>(m.prompt_tokens), "counter");
  gauge(out, "tessera_generation_tokens_total", "Tokens generated.", static_cast<double>(m.generation_tokens),
        "counter");
  gauge(out, "tessera_preemptions_total", "Sequences preempted (recomputed later) for lack of KV blocks.",
        static_cast<double>(m.preemptions), "counter");
  gauge(out, "tessera_requests_cancelled_total", "Requests cancelled because the client went away.",
        static_cast<double>(m.cancelled), "counter");
  gauge(out, "tessera_num_requests_running", "Sequences in the running batch.", m.running);
  gauge(out, "tessera_num_requests_waiting", "Sequences waiting for admission.", m.waiting);
  gauge(out, "tessera_kv_blocks_used", "KV-cache blocks held by sequences.", m.kv_blocks_used);
  gauge(out, "tessera_kv_blocks_free", "KV-cache blocks free.", m.kv_blocks_free);
  gauge(out, "tessera_kv_block_size_tokens", "Token rows per KV-cache block.", m.kv_block_size);
  histogram(out, "tessera_time_to_first_token_seconds", "Arrival to first generated token.", m.ttft);
  histogram(out, "tessera_time_per_output_token_seconds", "Mean time per output token after the first, per request.",
            m.tpot);
  histogram(out, "tessera_e2e_request_latency_seconds", "Arrival to last token.", m.e2e);
  histogram(out, "tessera_request_queue_time_seconds", "Arrival to first scheduled step.", m.queue_time);
  return out;
}

}  // namespace tessera::server
