// Test-only tool: runs the engine on a token sequence and writes the logits of every position, so that
// scripts (tests/integration) can compare them with the NumPy reference and across execution modes.
//
//   tessera_dump_logits --model PATH --tokens 1,5,9 --out FILE [--mode prefill|decode|chunked|generate]
//                       [--chunk N] [--split K] [--threads N] [--backend cpu|reference]
//                       [--kernels auto|portable|avx2] [--max-batch N] [--cache-capacity N]
//
// Modes (n = number of tokens; the output is always float32 [n][vocab], little-endian):
//   prefill   one forward() over all tokens with LogitsMode::kAll
//   decode    one forward() per token at pos0 = i with LogitsMode::kLast
//   chunked   forward() over chunks of --chunk tokens (default 3) at increasing pos0, LogitsMode::kAll
//   generate  what a generator does: prefill the first --split tokens (default n/2, at least 1) with
//             LogitsMode::kLast, then decode the rest one at a time; rows before split-1 are NaN
// FILE ending in ".npy" gets a NumPy header; anything else is raw float32. A one-line summary of the loaded
// config goes to stderr.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/cpu/reference_backend.h"
#include "engine/core/check.h"
#include "engine/model/kv_cache.h"
#include "engine/model/llama_model.h"
#include "loaders/model_loader.h"

namespace {

using tessera::Error;

struct Args {
  std::string model;
  std::vector<int> tokens;
  std::string out;
  std::string mode = "prefill";
  int chunk = 3;
  int split = -1;
  int threads = 1;
  std::string backend = "cpu";
  std::string kernels = "auto";
  int max_batch = 256;
  int cache_capacity = -1;
};

[[noreturn]] void usage(const std::string& msg) {
  std::fprintf(stderr,
               "error: %s\n"
               "usage: tessera_dump_logits --model PATH --tokens 1,5,9 --out FILE\n"
               "         [--mode prefill|decode|chunked|generate] [--chunk N] [--split K] [--threads N]\n"
               "         [--backend cpu|reference] [--kernels auto|portable|avx2] [--max-batch N]\n"
               "         [--cache-capacity N]\n",
               msg.c_str());
  std::exit(2);
}

int parse_int(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0 || v < std::numeric_limits<int>::min() ||
      v > std::numeric_limits<int>::max())
    usage(flag + ": not an integer: '" + s + "'");
  return static_cast<int>(v);
}

std::vector<int> parse_tokens(const std::string& s) {
  std::vector<int> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t comma = s.find(',', start);
    if (comma == std::string::npos) comma = s.size();
    out.push_back(parse_int("--tokens", s.substr(start, comma - start)));
    start = comma + 1;
  }
  return out;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage(flag + " needs a value");
    const std::string v = argv[++i];
    if (flag == "--model") {
      a.model = v;
    } else if (flag == "--tokens") {
      a.tokens = parse_tokens(v);
    } else if (flag == "--out") {
      a.out = v;
    } else if (flag == "--mode") {
      a.mode = v;
    } else if (flag == "--chunk") {
      a.chunk = parse_int(flag, v);
    } else if (flag == "--split") {
      a.split = parse_int(flag, v);
    } else if (flag == "--threads") {
      a.threads = parse_int(flag, v);
    } else if (flag == "--backend") {
      a.backend = v;
    } else if (flag == "--kernels") {
      a.kernels = v;
    } else if (flag == "--max-batch") {
      a.max_batch = parse_int(flag, v);
    } else if (flag == "--cache-capacity") {
      a.cache_capacity = parse_int(flag, v);
    } else {
      usage("unknown option " + flag);
    }
  }
  if (a.model.empty() || a.out.empty() || a.tokens.empty()) usage("--model, --tokens and --out are required");
  if (a.mode != "prefill" && a.mode != "decode" && a.mode != "chunked" && a.mode != "generate")
    usage("unknown --mode " + a.mode);
  if (a.backend != "cpu" && a.backend != "reference") usage("unknown --backend " + a.backend);
  if (a.kernels != "auto" && a.kernels != "portable" && a.kernels != "avx2") usage("unknown --kernels " + a.kernels);
  if (a.chunk < 1) usage("--chunk must be at least 1");
  if (a.max_batch < 1) usage("--max-batch must be at least 1");
  return a;
}

std::unique_ptr<tessera::Backend> make_backend(const Args& a) {
  if (a.backend == "reference") return std::make_unique<tessera::ReferenceBackend>();
  tessera::CpuKernels k = tessera::CpuKernels::kAuto;
  if (a.kernels == "portable") k = tessera::CpuKernels::kPortable;
  if (a.kernels == "avx2") k = tessera::CpuKernels::kAvx2;
  return std::make_unique<tessera::CpuBackend>(a.threads, k);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void write_output(const std::string& path, const std::vector<float>& data, int rows, int cols) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) throw Error(path + ": cannot open for writing: " + std::strerror(errno));
  bool ok = true;
  if (ends_with(path, ".npy")) {
    // NPY format 1.0: magic, version, uint16 header length, Python-literal header padded so data is 64-aligned.
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                         std::to_string(cols) + "), }";
    const size_t prefix = 10;
    header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
    header.push_back('\n');
    const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    const uint16_t len = static_cast<uint16_t>(header.size());
    const unsigned char len_le[2] = {static_cast<unsigned char>(len & 0xff), static_cast<unsigned char>(len >> 8)};
    ok = ok && std::fwrite(magic, 1, sizeof magic, f) == sizeof magic;
    ok = ok && std::fwrite(len_le, 1, 2, f) == 2;
    ok = ok && std::fwrite(header.data(), 1, header.size(), f) == header.size();
  }
  // Little-endian host assumed (x86-64 / aarch64), as everywhere in Tessera.
  ok = ok && std::fwrite(data.data(), sizeof(float), data.size(), f) == data.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) throw Error(path + ": write failed");
}

int run(const Args& a) {
  tessera::ModelData data = tessera::load_model(a.model);
  const tessera::ModelConfig& c = data.config;
  std::fprintf(stderr,
               "config: arch=%s dim=%d hidden=%d layers=%d heads=%d kv_heads=%d head_dim=%d vocab=%d max_seq=%d "
               "eps=%g theta=%g rope=%s scaling=%s(%g,%g,%g,%d) tied=%d qkv_bias=%d\n",
               c.arch.c_str(), c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size,
               c.max_seq_len, c.rms_eps, c.rope_theta,
               c.rope_style == tessera::RopeStyle::kInterleaved ? "interleaved" : "half-split",
               c.rope_scaling.enabled ? "llama3" : "none", c.rope_scaling.factor, c.rope_scaling.low_freq_factor,
               c.rope_scaling.high_freq_factor, c.rope_scaling.original_max_position, c.tied_embeddings ? 1 : 0,
               c.qkv_bias ? 1 : 0);

  std::unique_ptr<tessera::Backend> backend = make_backend(a);
  tessera::LlamaModel model(data, *backend, a.max_batch);
  const int n = static_cast<int>(a.tokens.size());
  const int vocab = c.vocab_size;
  tessera::KvCache cache(c, a.cache_capacity > 0 ? a.cache_capacity : n);
  std::vector<float> logits(static_cast<size_t>(n) * vocab, std::numeric_limits<float>::quiet_NaN());
  auto row = [&](int i) { return logits.data() + static_cast<size_t>(i) * vocab; };
  const std::span<const int> toks(a.tokens);

  if (a.mode == "prefill") {
    model.forward(toks, 0, cache, tessera::LogitsMode::kAll, row(0));
  } else if (a.mode == "decode") {
    for (int i = 0; i < n; ++i) model.forward(toks.subspan(i, 1), i, cache, tessera::LogitsMode::kLast, row(i));
  } else if (a.mode == "chunked") {
    for (int p = 0; p < n; p += a.chunk) {
      const int len = std::min(a.chunk, n - p);
      model.forward(toks.subspan(p, len), p, cache, tessera::LogitsMode::kAll, row(p));
    }
  } else {  // generate
    const int split = std::min(n, std::max(1, a.split > 0 ? a.split : n / 2));
    model.forward(toks.subspan(0, split), 0, cache, tessera::LogitsMode::kLast, row(split - 1));
    for (int i = split; i < n; ++i) model.forward(toks.subspan(i, 1), i, cache, tessera::LogitsMode::kLast, row(i));
  }
  write_output(a.out, logits, n, vocab);
  std::fprintf(stderr, "wrote %s: %d x %d logits (%s, backend %s, max_batch %d)\n", a.out.c_str(), n, vocab,
               a.mode.c_str(), backend->name().c_str(), a.max_batch);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  try {
    return run(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
