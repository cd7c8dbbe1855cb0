#include "cli/bench_sweep.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli/child_process.h"
#include "engine/core/check.h"
#include "engine/core/cpu_features.h"

namespace tessera::cli {

namespace {

using json = nlohmann::json;

std::string first_value(const std::string& file, const std::string& key) {
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const size_t start = line.find_first_not_of(" \t", colon + 1);
    return start == std::string::npos ? "" : line.substr(start);
  }
  return "";
}

std::string machine_description() {
  std::string cpu = first_value("/proc/cpuinfo", "model name");
  if (cpu.empty()) cpu = "unknown CPU";
  std::ostringstream s;
  s << cpu << ", " << std::thread::hardware_concurrency() << " cores";
  const std::string mem = first_value("/proc/meminfo", "MemTotal");  // "24563332 kB"
  if (!mem.empty()) s << ", " << static_cast<int>(std::stod(mem) / (1024.0 * 1024.0) + 0.5) << " GiB RAM";
  s << ", " << cpu_features().describe();
  return s.str();
}

std::string host_name() {
  char name[256] = {};
  return gethostname(name, sizeof name - 1) == 0 ? std::string(name) : std::string();
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

// The source tree's revision at run time ("-dirty" when tracked files differ); "" outside a git checkout.
std::string git_revision() {
  const std::string dir = TESSERA_SOURCE_DIR;
  const auto rev = capture_output({"git", "-C", dir, "rev-parse", "--short=12", "HEAD"});
  if (!rev || trim(*rev).empty()) return "";
  const auto status = capture_output({"git", "-C", dir, "status", "--porcelain", "--untracked-files=no"});
  return trim(*rev) + (status && !trim(*status).empty() ? "-dirty" : "");
}

std::vector<std::string> split_words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// A temporary file for a child job's report, removed when this goes out of scope.
class TempFile {
 public:
  TempFile() {
    const char* dir = std::getenv("TMPDIR");
    std::string pattern = std::string(dir != nullptr && *dir != '\0' ? dir : "/tmp") + "/tessera-bench-XXXXXX.json";
    const int fd = mkstemps(pattern.data(), 5);
    if (fd < 0) throw Error("cannot create a temporary file " + pattern + " for a benchmark job's results");
    ::close(fd);
    path_ = pattern;
  }
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string join(const std::vector<std::string>& words) {
  std::string s;
  for (const std::string& w : words) s += (s.empty() ? "" : " ") + w;
  return s;
}

// The mpiexec flags Open MPI needs to start `ranks` processes here: more ranks than cores, and as root. Other
// MPI implementations lack (and refuse) these flags; --mpi-args takes over the slot policy (e.g. a hostfile).
std::vector<std::string> launcher_flags(const SweepOptions& o, int ranks) {
  const auto version = capture_output({o.mpiexec, "--version"});
  if (!version)
    throw Error("cannot run '" + o.mpiexec + " --version': the sweep starts an MPI job for each layout of more " +
                "than one rank; install Open MPI (scripts/install-deps.sh) or give --mpiexec PATH");
  std::vector<std::string> flags;
  if (version->find("Open MPI") == std::string::npos && version->find("OpenRTE") == std::string::npos) return flags;
  if (o.mpi_args.empty() && ranks > static_cast<int>(std::thread::hardware_concurrency()))
    flags.push_back("--oversubscribe");
  if (geteuid() == 0) flags.push_back("--allow-run-as-root");
  return flags;
}

std::vector<json> read_rows(const std::string& path) {
  std::ifstream in(path);
  json doc;
  try {
    in >> doc;
  } catch (const json::exception& e) {
    throw Error("the benchmark job's report " + path + " is not valid JSON: " + e.what());
  }
  if (!doc.contains("results") || !doc["results"].is_array())
    throw Error("the benchmark job's report " + path + " has no \"results\" array");
  return doc["results"].get<std::vector<json>>();
}

// One layout as an MPI job of this executable; returns the rows its leader measured.
std::vector<json> run_layout_job(const SweepOptions& o, int tp, int pp) {
  const int ranks = tp * pp;
  TempFile report;
  std::vector<std::string> argv{o.mpiexec, "-n", std::to_string(ranks)};
  for (const std::string& f : launcher_flags(o, ranks)) argv.push_back(f);
  for (const std::string& a : split_words(o.mpi_args)) argv.push_back(a);
  argv.push_back(own_executable());
  argv.push_back("bench");
  argv.insert(argv.end(), o.forwarded_args.begin(), o.forwarded_args.end());
  for (const std::string& a : {std::string("--tp"), std::to_string(tp), std::string("--pp"), std::to_string(pp),
                               std::string("--json"), report.path()})
    argv.push_back(a);
  std::fprintf(stderr, "[bench] tp %d x pp %d: %s\n", tp, pp, join(argv).c_str());
  const ChildExit exit = run_child(argv, /*stdout_to_stderr=*/o.json_stdout);
  if (!exit.ok())
    throw Error("the tp " + std::to_string(tp) + " x pp " + std::to_string(pp) + " job failed (" + exit.describe() +
                "; its messages are above). Command: " + join(argv));
  return read_rows(report.path());
}

void emit(const SweepOptions& o, const json& metadata, const std::vector<json>& rows) {
  if (!o.csv_path.empty()) write_bench_csv(o.csv_path, metadata, rows);
  if (!o.json_path.empty()) write_bench_json(o.json_path, metadata, rows);
  if (o.json_stdout) {
    for (json row : rows) {
      row.update(metadata);
      std::printf("%s\n", row.dump().c_str());
    }
  }
}

std::string csv_field(const json& v) {
  std::string s;
  if (v.is_string()) {
    s = v.get<std::string>();
  } else if (v.is_array()) {
    for (const json& x : v) s += (s.empty() ? "" : ";") + x.dump();
  } else if (!v.is_null()) {
    s = v.dump();
  }
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string quoted = "\"";
  for (char c : s) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

}  // namespace

bool under_launcher() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"})
    if (std::getenv(var) != nullptr) return true;
  return false;
}

json sweep_metadata() {
  return json{{"machine", machine_description()},
              {"host", host_name()},
              {"date", utc_now()},
              {"command", own_command_line()},
              {"git_revision", git_revision()}};
}

void write_bench_csv(const std::string& path, const json& metadata, const std::vector<json>& rows) {
  static const char* const columns[] = {"date",
                                        "machine",
                                        "host",
                                        "git_revision",
                                        "model",
                                        "weights",
                                        "quant",
                                        "act_quant",
                                        "act_dtype",
                                        "tp",
                                        "pp",
                                        "ranks",
                                        "threads_per_rank",
                                        "batch",
                                        "micro_batches",
                                        "prompt_len",
                                        "gen_len",
                                        "prefill_tokens",
                                        "prefill_seconds",
                                        "prefill_tokens_per_s",
                                        "decode_tokens",
                                        "decode_seconds",
                                        "decode_tokens_per_s",
                                        "decode_ms_per_step",
                                        "latency_ms_p50",
                                        "latency_ms_p90",
                                        "latency_ms_p99",
                                        "comm_share_prefill",
                                        "comm_share_decode",
                                        "comm_share_per_rank",
                                        "peak_rss_bytes_max",
                                        "peak_rss_bytes_per_rank",
                                        "load_seconds",
                                        "command"};
  std::ofstream out(path);
  if (!out) throw Error("cannot write the CSV report " + path);
  for (const char* c : columns) out << (c == columns[0] ? "" : ",") << c;
  out << '\n';
  for (json row : rows) {
    row.update(metadata);
    for (const char* c : columns) out << (c == columns[0] ? "" : ",") << csv_field(row.value(c, json()));
    out << '\n';
  }
  if (!out.flush()) throw Error("cannot write the CSV report " + path);
}

void write_bench_json(const std::string& path, const json& metadata, const std::vector<json>& rows) {
  json doc = metadata;
  doc["results"] = json::array();
  for (json row : rows) {
    row.update(metadata);
    doc["results"].push_back(std::move(row));
  }
  std::ofstream out(path);
  if (!out || !(out << doc.dump(2) << '\n') || !out.flush()) throw Error("cannot write the JSON report " + path);
}

int run_bench_sweep(const SweepOptions& o) {
  if (o.tps.empty() || o.pps.empty()) throw Error("--tp and --pp need at least one value");
  auto print_row = [&](const json& row) {
    std::fprintf(o.json_stdout ? stderr : stdout, "%s\n", describe_parallel_row(row).c_str());
    std::fflush(o.json_stdout ? stderr : stdout);
  };

  if (under_launcher()) {
    if (o.tps.size() != 1 || o.pps.size() != 1)
      throw Error(
          "under mpirun give one --tp and one --pp value (the job's layout); run a sweep over several "
          "layouts without mpirun: it starts one MPI job per layout");
    ParallelBenchOptions b = o.bench;
    b.parallel.tp = o.tps.front();
    b.parallel.pp = o.pps.front();
    const ParallelBenchResult result = run_parallel_bench(b, print_row);
    if (result.leader) emit(o, sweep_metadata(), result.rows);
    return 0;
  }

  bool needs_mpi = false;
  for (int tp : o.tps)
    for (int pp : o.pps) needs_mpi = needs_mpi || tp * pp > 1;
#ifndef TESSERA_HAVE_MPI
  if (needs_mpi)
    throw Error("--tp/--pp above 1 need the MPI build of tessera (configure with -DTESSERA_ENABLE_MPI=ON)");
#endif
  if (needs_mpi) launcher_flags(o, 1);  // a missing mpiexec fails now, not after the first layouts ran

  const json metadata = sweep_metadata();
  std::vector<json> rows;
  for (int tp : o.tps) {
    for (int pp : o.pps) {
      std::vector<json> measured;
      try {
        if (tp * pp == 1) {
          ParallelBenchOptions b = o.bench;
          b.parallel.tp = b.parallel.pp = 1;
          measured = run_parallel_bench(b, print_row).rows;
        } else {
          measured = run_layout_job(o, tp, pp);
        }
      } catch (const Error&) {
        if (!rows.empty()) {
          emit(o, metadata, rows);
          std::fprintf(stderr, "[bench] wrote the %zu rows measured before the failure\n", rows.size());
        }
        throw;
      }
      rows.insert(rows.end(), measured.begin(), measured.end());
    }
  }
  emit(o, metadata, rows);
  for (const std::string& path : {o.csv_path, o.json_path})
    if (!path.empty()) std::fprintf(stderr, "[bench] wrote %zu rows to %s\n", rows.size(), path.c_str());
  return 0;
}

}  // namespace tessera::cli
