// CUDA kernel measurements (not a test; prints a table, exit 77 without a GPU):
//   1. device-to-device copy bandwidth (bytes read + written), the ceiling for memory-bound kernels;
//   2. weight-only GEMV at Llama-2-7B shapes per format, achieved GB/s and % of (1); weights rotate through
//      copies larger than L2 so every call streams from device memory;
//   3. a Llama-2-7B decode step's linear layers (32 layers: q, k, v, o, gate/up fused, down), int4 g128 through
//      CudaBackend vs fp16 weights through cuBLAS (fp16 activations), at batch 1 and 16;
//   4. prefill GEMM throughput of the tensor-core path (int4 g128, 512 rows).
// Usage: cuda_kernel_bench [--iters N] [--skip-step] [--rpw LIST] [--q4-path LIST]
//        --rpw: quantized-GEMV (Q8/NF4) rows per warp to compare, e.g. 0,1,2,4; 0 is the backend's own choice
//        --q4-path: paths of the int4 tensor-core kernel to compare (set_mma_q4_path), e.g. 0,1,2; 0 the default
//        --no-overlap: launch the int4 kernel without programmatic dependent launch (set_mma_q4_overlap)
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cuda/cuda_backend.h"
#include "engine/backend/cuda/cuda_check.h"
#include "engine/backend/cuda/kernels.h"
#include "engine/backend/cuda/weight_upload.h"
#include "quant/blocks.h"

namespace tessera {
namespace {

struct EventTimer {
  cudaEvent_t a{}, b{};
  EventTimer() {
    TESSERA_CUDA_CHECK(cudaEventCreate(&a));
    TESSERA_CUDA_CHECK(cudaEventCreate(&b));
  }
  ~EventTimer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  template <typename Fn>
  double ms(cudaStream_t s, int iters, Fn&& fn) {
    fn();  // warm-up
    TESSERA_CUDA_CHECK(cudaStreamSynchronize(s));
    TESSERA_CUDA_CHECK(cudaEventRecord(a, s));
    for (int i = 0; i < iters; ++i) fn();
    TESSERA_CUDA_CHECK(cudaEventRecord(b, s));
    TESSERA_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    TESSERA_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    return static_cast<double>(t) / iters;
  }
};

// Host weights of a random but valid encoding (random codes, scales around 0.01): quantizing billions of values
// with the reference quantizer would take minutes and timing does not depend on how the codes were chosen.
std::vector<uint8_t> random_host_matrix(std::mt19937& rng, DType t, int64_t rows, int64_t cols, int group) {
  std::vector<uint8_t> bytes(dtype_row_bytes(t, cols, group) * static_cast<size_t>(rows));
  for (size_t i = 0; i + 4 <= bytes.size(); i += 4) {
    const uint32_t r = rng();
    std::memcpy(&bytes[i], &r, 4);
  }
  std::uniform_real_distribution<float> scale(0.005f, 0.02f);
  const size_t row_bytes = dtype_row_bytes(t, cols, group);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = bytes.data() + static_cast<size_t>(r) * row_bytes;
    if (t == DType::F16) {
      for (int64_t c = 0; c < cols; ++c) {
        const uint16_t h = f32_to_f16(scale(rng) * (rng() % 2 ? 1.0f : -1.0f));
        std::memcpy(row + 2 * c, &h, 2);
      }
    } else if (t == DType::Q8) {
      const float s = scale(rng);
      std::memcpy(row, &s, 4);
    } else {  // Q4 / Q4A / NF4 blocks: fix the fp16 scale (and min) of each block
      const size_t head = t == DType::Q4A ? 4 : 2, block = head + static_cast<size_t>(group) / 2;
      for (size_t b = 0; b < row_bytes; b += block) {
        const uint16_t d = f32_to_f16(scale(rng)), m = f32_to_f16(-8.0f * scale(rng));
        std::memcpy(row + b, &d, 2);
        if (head == 4) std::memcpy(row + b + 2, &m, 2);
      }
    }
  }
  return bytes;
}

struct Args {
  int iters = 50;
  bool skip_step = false;
  std::vector<int> rows_per_warp = {0};
  std::vector<int> q4_paths = {0};
  bool overlap = true;
};

double copy_bandwidth(CudaBackend& be, EventTimer& timer, size_t bytes) {
  cuda::DeviceBuffer src(bytes), dst(bytes);
  TESSERA_CUDA_CHECK(cudaMemsetAsync(src.data(), 1, bytes, be.stream()));
  const double ms = timer.ms(be.stream(), 20, [&] {
    TESSERA_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, be.stream()));
  });
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
}

void gemv_table(CudaBackend& be, EventTimer& timer, const Args& args, double copy_gbs, size_t l2_bytes) {
  struct Shape {
    const char* name;
    int rows, cols;
  };
  const Shape shapes[] = {{"q/k/v/o 4096x4096", 4096, 4096},
                          {"gate/up 11008x4096", 11008, 4096},
                          {"down 4096x11008", 4096, 11008},
                          {"lm_head 32000x4096", 32000, 4096}};
  struct Fmt {
    DType t;
    int group;
  };
  const Fmt fmts[] = {{DType::Q4, 128}, {DType::Q4, 32}, {DType::Q4A, 128},
                      {DType::NF4, 64}, {DType::Q8, 0},  {DType::F16, 0}};
  std::mt19937 rng(1);
  // Each setting of one knob, the other at its default: rows per warp of the Q8/NF4 GEMV, then the Q4 paths.
  std::vector<std::pair<int, int>> settings;
  for (const int rpw : args.rows_per_warp) settings.emplace_back(rpw, 0);
  for (const int path : args.q4_paths) {
    if (path != 0) settings.emplace_back(0, path);
  }
  for (const auto& [rpw, path] : settings) {
    cuda::set_gemv_quant_rows_per_warp(rpw);
    cuda::set_mma_q4_path(path);
    std::printf("\n%-20s %-10s %10s %10s %8s   (quantized rows per warp: %s, int4 path %d)\n", "GEMV (batch 1)",
                "format", "us/call", "GB/s", "% copy", rpw == 0 ? "auto" : std::to_string(rpw).c_str(), path);
    for (const Shape& s : shapes) {
      for (const Fmt& f : fmts) {
        // Rows per warp is a knob of the Q8/NF4 GEMV only (Q4/Q4A take the tensor-core kernel), the path one of
        // the tensor-core kernel only.
        const bool tiled = f.t == DType::Q4 || f.t == DType::Q4A;
        if (rpw != 0 && (!is_quantized(f.t) || tiled)) continue;
        if (path != 0 && !tiled) continue;
        const auto host = random_host_matrix(rng, f.t, s.rows, s.cols, f.group);
        const Matrix hm{f.t, s.rows, s.cols, host.data(), f.group};
        cuda::DeviceWeightStore store;
        std::vector<Matrix> copies;
        // Enough copies that the set is 4x the L2 cache: each call reads its weights from device memory.
        const size_t one = cuda::repack_for_device(hm).bytes.size();
        const size_t n_copies = std::max<size_t>(2, 4 * l2_bytes / one + 1);
        for (size_t i = 0; i < n_copies; ++i) copies.push_back(store.upload_matrix(hm));
        cuda::DeviceBuffer x(static_cast<size_t>(s.cols) * 4), y(static_cast<size_t>(s.rows) * 4);
        TESSERA_CUDA_CHECK(cudaMemset(x.data(), 0x3c, x.bytes()));  // ~0.01 as float, not zeros
        size_t next = 0;
        const double ms = timer.ms(be.stream(), args.iters, [&] {
          be.matmul(x.as<float>(), 1, copies[next++ % copies.size()], nullptr, y.as<float>());
        });
        const double bytes = static_cast<double>(one) + x.bytes() + y.bytes();
        const double gbs = bytes / (ms * 1e-3) / 1e9;
        char fmt_name[32];
        std::snprintf(fmt_name, sizeof fmt_name, "%s%s%s", std::string(dtype_name(f.t)).c_str(), f.group ? " g" : "",
                      f.group ? std::to_string(f.group).c_str() : "");
        std::printf("%-20s %-10s %10.2f %10.1f %7.1f%%\n", s.name, fmt_name, ms * 1e3, gbs, 100.0 * gbs / copy_gbs);
      }
    }
  }
  cuda::set_gemv_quant_rows_per_warp(0);
  cuda::set_mma_q4_path(0);
}

// One Llama-2-7B decode step's linear layers: per layer q, k, v, o (4096x4096), gate and up (11008x4096, fused),
// down (4096x11008).
void decode_step(CudaBackend& be, EventTimer& timer, const Args& args) {
  constexpr int kLayers = 32, kDim = 4096, kHidden = 11008;
  size_t free_b = 0, total_b = 0;
  TESSERA_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const double fp16_bytes = 2.0 * kLayers * (4.0 * kDim * kDim + 3.0 * kDim * kHidden);
  if (free_b < fp16_bytes * 1.35) {
    std::printf("\ndecode step: skipped (needs %.1f GB free for fp16 + int4 weights, %.1f GB free)\n",
                fp16_bytes * 1.35 / 1e9, free_b / 1e9);
    return;
  }
  std::mt19937 rng(2);
  // int4 g128 through the backend.
  cuda::DeviceWeightStore store;
  struct Layer {
    Matrix q, k, v, o, gate, up, down;
  };
  std::vector<Layer> q4(kLayers);
  {
    const auto sq = random_host_matrix(rng, DType::Q4, kDim, kDim, 128);
    const auto gu = random_host_matrix(rng, DType::Q4, kHidden, kDim, 128);
    const auto dn = random_host_matrix(rng, DType::Q4, kDim, kHidden, 128);
    const Matrix msq{DType::Q4, kDim, kDim, sq.data(), 128}, mgu{DType::Q4, kHidden, kDim, gu.data(), 128},
        mdn{DType::Q4, kDim, kHidden, dn.data(), 128};
    for (Layer& l : q4) {
      l = {store.upload_matrix(msq), store.upload_matrix(msq), store.upload_matrix(msq), store.upload_matrix(msq),
           store.upload_matrix(mgu), store.upload_matrix(mgu), store.upload_matrix(mdn)};
    }
  }
  // fp16 through cuBLAS: one buffer per layer per matrix.
  const auto h_sq = random_host_matrix(rng, DType::F16, kDim, kDim, 0);
  const auto h_gu = random_host_matrix(rng, DType::F16, kHidden, kDim, 0);
  std::vector<cuda::DeviceBuffer> f16;
  auto up16 = [&](const std::vector<uint8_t>& h) {
    f16.emplace_back(h.size());
    TESSERA_CUDA_CHECK(cudaMemcpy(f16.back().data(), h.data(), h.size(), cudaMemcpyHostToDevice));
    return f16.back().data();
  };
  struct Layer16 {
    void *q, *k, *v, *o, *gate, *up, *down;
  };
  std::vector<Layer16> l16(kLayers);
  for (Layer16& l : l16) {
    // down is [4096][11008]: the same bytes as gate's [11008][4096].
    l = {up16(h_sq), up16(h_sq), up16(h_sq), up16(h_sq), up16(h_gu), up16(h_gu), up16(h_gu)};
  }
  cublasHandle_t h = nullptr;
  TESSERA_CUBLAS_CHECK(cublasCreate(&h));
  TESSERA_CUBLAS_CHECK(cublasSetStream(h, be.stream()));

  for (const int path : args.q4_paths) {
    cuda::set_mma_q4_path(path);
    std::printf("\n%-34s %12s %12s %8s   (int4 path %d)\n", "decode step, 7B linear layers", "int4 ms", "fp16 ms",
                "speedup", path);
    for (const int batch : {1, 4, 8, 16}) {
      cuda::DeviceBuffer x(static_cast<size_t>(batch) * kHidden * 4), y(static_cast<size_t>(batch) * kHidden * 4),
          y2(static_cast<size_t>(batch) * kHidden * 4);
      cuda::DeviceBuffer xh(static_cast<size_t>(batch) * kHidden * 2), yh(static_cast<size_t>(batch) * kHidden * 2),
          yh2(static_cast<size_t>(batch) * kHidden * 2);
      TESSERA_CUDA_CHECK(cudaMemset(x.data(), 0x3c, x.bytes()));
      TESSERA_CUDA_CHECK(cudaMemset(xh.data(), 0x20, xh.bytes()));
      const int iters = std::max(3, args.iters / 10);
      const double t4 = timer.ms(be.stream(), iters, [&] {
        for (const Layer& l : q4) {
          for (const Matrix* m : {&l.q, &l.k, &l.v, &l.o}) be.matmul(x.as<float>(), batch, *m, nullptr, y.as<float>());
          be.matmul_silu_mul(x.as<float>(), batch, l.gate, l.up, y2.as<float>());
          be.matmul(y2.as<float>(), batch, l.down, nullptr, y.as<float>());
        }
      });
      const __half one = __float2half(1.0f), zero = __float2half(0.0f);
      auto gemm16 = [&](const void* w, int rows, int cols, const void* in, void* out) {
        TESSERA_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, rows, batch, cols, &one, w, CUDA_R_16F, cols, in,
                                          CUDA_R_16F, cols, &zero, out, CUDA_R_16F, rows, CUBLAS_COMPUTE_16F,
                                          CUBLAS_GEMM_DEFAULT));
      };
      const double t16 = timer.ms(be.stream(), iters, [&] {
        for (const Layer16& l : l16) {
          for (const void* m : {l.q, l.k, l.v, l.o}) gemm16(m, kDim, kDim, xh.data(), yh.data());
          gemm16(l.gate, kHidden, kDim, xh.data(), yh.data());
          gemm16(l.up, kHidden, kDim, xh.data(), yh2.data());
          gemm16(l.down, kDim, kHidden, yh2.data(), yh.data());
        }
      });
      char label[64];
      std::snprintf(label, sizeof label, "batch %d", batch);
      std::printf("%-34s %12.3f %12.3f %7.2fx\n", label, t4, t16, t16 / t4);
    }
  }
  cuda::set_mma_q4_path(0);
  cublasDestroy(h);
}

void prefill_gemm(CudaBackend& be, EventTimer& timer, const Args& args) {
  std::mt19937 rng(3);
  const int rows = 11008, cols = 4096, n = 512;
  const auto host = random_host_matrix(rng, DType::Q4, rows, cols, 128);
  cuda::DeviceWeightStore store;
  const Matrix w = store.upload_matrix(Matrix{DType::Q4, rows, cols, host.data(), 128});
  cuda::DeviceBuffer x(static_cast<size_t>(n) * cols * 4), y(static_cast<size_t>(n) * rows * 4);
  TESSERA_CUDA_CHECK(cudaMemset(x.data(), 0x3c, x.bytes()));
  const double ms = timer.ms(be.stream(), std::max(3, args.iters / 5),
                             [&] { be.matmul(x.as<float>(), n, w, nullptr, y.as<float>()); });
  std::printf("\nprefill GEMM int4 g128 %dx%d, %d rows: %.3f ms, %.1f TFLOP/s (tensor-core mma_q4 path)\n", rows, cols,
              n, ms, 2.0 * rows * cols * n / (ms * 1e-3) / 1e12);
}

int run(const Args& args) {
  std::string why;
  if (cuda_device_count(&why) == 0) {
    std::printf("cuda_kernel_bench: no usable CUDA GPU (%s); nothing measured\n", why.c_str());
    return 77;
  }
  CudaBackend be;
  cudaDeviceProp p{};
  TESSERA_CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  std::printf("device: %s, %d SMs, L2 %.0f MB, %.1f GB\n", p.name, p.multiProcessorCount, p.l2CacheSize / 1e6,
              p.totalGlobalMem / 1e9);
  EventTimer timer;
  cuda::set_mma_q4_overlap(args.overlap);
  std::printf("int4 kernel launched with programmatic dependent launch: %s\n", args.overlap ? "yes" : "no");
  const double copy_gbs = copy_bandwidth(be, timer, size_t{1} << 30);
  std::printf("device-to-device copy: %.1f GB/s (read + write)\n", copy_gbs);
  gemv_table(be, timer, args, copy_gbs, static_cast<size_t>(p.l2CacheSize));
  prefill_gemm(be, timer, args);
  if (!args.skip_step) decode_step(be, timer, args);
  be.synchronize();
  return 0;
}

}  // namespace
}  // namespace tessera

// "0,1,2" -> {0, 1, 2}; stops at the first item that is not a number.
std::vector<int> parse_list(const char* p) {
  std::vector<int> out;
  while (*p != '\0') {
    char* end = nullptr;
    const long v = std::strtol(p, &end, 10);
    if (end == p) break;
    out.push_back(static_cast<int>(v));
    p = *end == ',' ? end + 1 : end;
  }
  return out;
}

int main(int argc, char** argv) {
  tessera::Args args;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
      args.iters = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--skip-step") == 0) {
      args.skip_step = true;
    } else if (std::strcmp(argv[i], "--rpw") == 0 && i + 1 < argc) {
      args.rows_per_warp = parse_list(argv[++i]);
    } else if (std::strcmp(argv[i], "--no-overlap") == 0) {
      args.overlap = false;
    } else if (std::strcmp(argv[i], "--q4-path") == 0 && i + 1 < argc) {
      args.q4_paths = parse_list(argv[++i]);
    } else {
      std::fprintf(
          stderr,
          "usage: cuda_kernel_bench [--iters N] [--skip-step] [--rpw 0,1,2,4] [--q4-path 0,1,2] [--no-overlap]\n");
      return 2;
    }
  }
  try {
    return tessera::run(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_kernel_bench: %s\n", e.what());
    return 1;
  }
}
