// The files of `tessera batch`: the JSONL input (one request per line) and the JSONL output, written so that a
// killed job loses only the requests in flight and a re-run with the same output finishes the rest.
//
// Input line: {"id": ID, "prompt": ... | "messages": [...], sampling parameters...}, or an OpenAI batch line
// {"custom_id": ID, "url": "/v1/chat/completions", "body": {...}}. IDs are strings or integers, unique per file.
// Output line: {"id", "line", "text", "finish_reason", "usage", ...} or {"id", "line", "error": {...}}.
//
// Resuming: an output line marks its request done: by id, or, for input lines that have no usable id (malformed
// or duplicate), by input line number. A last line without its newline (a write cut short by a kill) is dropped.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>
#include <vector>

namespace tessera::cli {

// One request to run: its input line number (1-based), id and the line's text.
struct BatchItem {
  int64_t line = 0;
  nlohmann::json id;
  std::string text;
};

// What an existing output file already holds.
struct BatchDone {
  std::unordered_set<std::string> ids;  // id.dump() of every line with an id (answered or failed)
  std::unordered_set<int64_t> lines;    // input lines answered by number (no usable id)
  size_t count = 0;                     // complete lines
};

struct BatchInput {
  std::vector<BatchItem> todo;          // requests not yet in the output, in input order
  std::vector<std::string> new_errors;  // output lines for bad input lines not yet in the output
  std::vector<std::string> order;       // every line's output key in input order (for --sorted)
  size_t total = 0;                     // non-blank input lines
};

// Output line for a request that could not run.
std::string batch_error_line(const nlohmann::json& id, int64_t line, const std::string& message,
                             const std::string& type);

// Reads the input; lines whose output exists (per `done`) are skipped. Throws tessera::Error when the file
// cannot be read; bad lines become error lines, never exceptions.
BatchInput read_batch_input(const std::string& path, const BatchDone& done);

// The output file, opened for appending. Each line goes out in one write(2) and is flushed to the kernel at
// once, so a killed process leaves whole lines (and at worst one cut-short last line, repaired on reopening).
class BatchOutput {
 public:
  // Creates the file or reopens it: reads what is done and cuts off a trailing partial line.
  explicit BatchOutput(const std::string& path);
  ~BatchOutput();
  BatchOutput(const BatchOutput&) = delete;
  BatchOutput& operator=(const BatchOutput&) = delete;

  const BatchDone& done() const { return done_; }
  // Appends one JSON line (without its newline).
  void write(const std::string& json_line);
  // Rewrites the file with its lines in input order (`order` from BatchInput), through a temporary file and a
  // rename so that a crash leaves either the old or the new file.
  void sort(const std::vector<std::string>& order);

 private:
  std::string path_;
  int fd_ = -1;
  BatchDone done_;
};

}  // namespace tessera::cli
