#include "cli/batch_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <unordered_map>

#include "engine/core/check.h"

namespace tessera::cli {

namespace {

using nlohmann::json;

std::string errno_text() {
  return std::strerror(errno);
}

// Output lines of requests without a usable id (malformed line, missing or duplicate id) are matched by line.
bool keyed_by_line(const json& out) {
  if (!out.contains("id") || out["id"].is_null()) return true;
  const json* error = out.contains("error") ? &out["error"] : nullptr;
  return error != nullptr && error->is_object() && error->value("type", "") == "duplicate_id";
}

std::string key_of_line(int64_t line) {
  return "#line:" + std::to_string(line);
}

// The key an output line is sorted and resumed by.
std::string output_key(const json& out) {
  if (keyed_by_line(out)) return key_of_line(out.value("line", int64_t{0}));
  return out["id"].dump();
}

bool usable_id(const json& id) {
  return id.is_string() || id.is_number_integer();
}

void write_all(int fd, const std::string& data, const std::string& path) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error("cannot write " + path + ": " + errno_text());
    }
    off += static_cast<size_t>(n);
  }
}

}  // namespace

std::string batch_error_line(const json& id, int64_t line, const std::string& message, const std::string& type) {
  return json{{"id", id}, {"line", line}, {"error", {{"message", message}, {"type", type}}}}.dump(
      -1, ' ', false, json::error_handler_t::replace);
}

BatchInput read_batch_input(const std::string& path, const BatchDone& done) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read the batch input " + path + ": " + errno_text());
  BatchInput out;
  std::unordered_map<std::string, int64_t> first_line;  // id -> the line that owns it
  std::string text;
  int64_t line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    ++out.total;
    const std::string line_key = key_of_line(line);
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    std::string problem;
    json id;
    if (j.is_discarded()) {
      problem = "the line is not valid JSON";
    } else if (!j.is_object()) {
      problem = "the line must be a JSON object";
    } else {
      id = j.contains("id") ? j["id"] : j.contains("custom_id") ? j["custom_id"] : json();
      if (!usable_id(id)) {
        problem = id.is_null() ? "the line has no \"id\" (or \"custom_id\")" : "\"id\" must be a string or an integer";
        id = nullptr;
      }
    }
    if (!problem.empty()) {
      out.order.push_back(line_key);
      if (!done.lines.count(line))
        out.new_errors.push_back(batch_error_line(id, line, problem, "invalid_request_error"));
      continue;
    }
    const std::string key = id.dump();
    if (auto [it, fresh] = first_line.emplace(key, line); !fresh) {
      out.order.push_back(line_key);
      if (!done.lines.count(line))
        out.new_errors.push_back(batch_error_line(
            id, line, "duplicate id " + key + " (first on line " + std::to_string(it->second) + ")", "duplicate_id"));
      continue;
    }
    out.order.push_back(key);
    if (!done.ids.count(key)) out.todo.push_back(BatchItem{line, std::move(id), std::move(text)});
  }
  if (in.bad()) throw Error("error reading the batch input " + path + ": " + errno_text());
  return out;
}

BatchOutput::BatchOutput(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error("cannot open the batch output " + path + ": " + errno_text());
  std::string data;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd_, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error("cannot read the batch output " + path + ": " + errno_text());
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  // A line is done only when it ends with its newline; anything after the last one was cut short.
  const size_t complete = data.rfind('\n') == std::string::npos ? 0 : data.rfind('\n') + 1;
  if (complete < data.size()) {
    std::fprintf(stderr, "[tessera] %s: dropping a cut-short last line (%zu bytes) left by an interrupted run\n",
                 path.c_str(), data.size() - complete);
    if (::ftruncate(fd_, static_cast<off_t>(complete)) != 0)
      throw Error("cannot repair the batch output " + path + ": " + errno_text());
  }
  size_t begin = 0;
  int64_t number = 0;
  while (begin < complete) {
    const size_t end = data.find('\n', begin);
    ++number;
    const json out = json::parse(data.begin() + static_cast<std::ptrdiff_t>(begin),
                                 data.begin() + static_cast<std::ptrdiff_t>(end), nullptr, false);
    begin = end + 1;
    if (out.is_discarded() || !out.is_object())
      throw Error("the batch output " + path + " has a line that is not a JSON object (line " + std::to_string(number) +
                  "); is it the output of another program?");
    ++done_.count;
    if (keyed_by_line(out)) {
      done_.lines.insert(out.value("line", int64_t{0}));
    } else {
      done_.ids.insert(out["id"].dump());
    }
  }
  if (::lseek(fd_, 0, SEEK_END) < 0) throw Error("cannot seek in " + path + ": " + errno_text());
}

BatchOutput::~BatchOutput() {
  if (fd_ >= 0) ::close(fd_);
}

void BatchOutput::write(const std::string& json_line) {
  TESSERA_CHECK(json_line.find('\n') == std::string::npos);
  write_all(fd_, json_line + "\n", path_);
  ++done_.count;
}

void BatchOutput::sort(const std::vector<std::string>& order) {
  std::ifstream in(path_, std::ios::binary);
  if (!in) throw Error("cannot read " + path_ + " to sort it: " + errno_text());
  std::unordered_map<std::string, std::string> by_key;
  std::vector<std::string> unknown;  // lines of ids no longer in the input: kept, after the others
  std::string text;
  while (std::getline(in, text)) {
    const json out = json::parse(text, nullptr, false);
    if (out.is_discarded() || !out.is_object()) continue;
    const std::string key = output_key(out);
    if (!by_key.emplace(key, text).second) unknown.push_back(std::move(text));
  }
  std::string sorted;
  for (const std::string& key : order) {
    auto it = by_key.find(key);
    if (it == by_key.end()) continue;
    sorted += it->second;
    sorted += '\n';
    by_key.erase(it);
  }
  for (auto& [key, line] : by_key) unknown.push_back(std::move(line));
  for (const std::string& line : unknown) sorted += line + "\n";

  const std::string tmp = path_ + ".sorting";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error("cannot write " + tmp + ": " + errno_text());
  try {
    write_all(fd, sorted, tmp);
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) throw Error("cannot write " + tmp + ": " + errno_text());
  if (::rename(tmp.c_str(), path_.c_str()) != 0) throw Error("cannot replace " + path_ + ": " + errno_text());
  ::close(fd_);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd_ < 0) throw Error("cannot reopen " + path_ + ": " + errno_text());
}

}  // namespace tessera::cli
