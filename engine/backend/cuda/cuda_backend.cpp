#include "engine/backend/cuda/cuda_backend.h"

#include <cublas_v2.h>

#include <cstring>
#include <string>
#include <vector>

#include "engine/backend/cuda/cuda_check.h"
#include "engine/backend/cuda/kernels.h"
#include "engine/backend/cuda/weight_upload.h"

namespace tessera {

using cuda::DeviceLayout;
using cuda::layout_of;
using cuda::PoolBlock;

int cuda_device_count(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (why != nullptr)
      *why = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
    cudaGetLastError();  // reset the runtime's last-error state so later checks do not report this one
    return 0;
  }
  if (count == 0 && why != nullptr) *why = "cudaGetDeviceCount found no CUDA device";
  return count;
}

struct CudaBackend::Impl {
  int device = 0;
  cudaDeviceProp props{};
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  std::unique_ptr<cuda::DevicePool> pool;
  PoolBlock cublas_workspace;
  PoolBlock argmax_result;          // one device int
  int* host_result = nullptr;       // pinned, so the copy back is a real async copy before the sync
  cuda::DeviceWeightStore weights;  // upload()ed matrices; freed after the stream has drained (~Impl)
  // The positions of the last rope call: the model rotates q and k of every layer at the same positions, so one
  // upload per step instead of two per layer (each a pageable copy that stalls the host).
  PoolBlock positions;
  std::vector<int> positions_host;

  ~Impl() {
    // Let queued work finish, release pool blocks before the pool, and never throw from here.
    if (stream != nullptr) cudaStreamSynchronize(stream);
    cublas_workspace = PoolBlock();
    argmax_result = PoolBlock();
    positions = PoolBlock();
    if (cublas != nullptr) cublasDestroy(cublas);
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (host_result != nullptr) cudaFreeHost(host_result);
  }

  // Host indices (tokens / positions) copied to pool memory on the stream. cudaMemcpyAsync from pageable host
  // memory returns once the source has been staged, so the caller may reuse its array at once.
  PoolBlock upload_ints(const int* host, int n) {
    PoolBlock b = pool->allocate(static_cast<size_t>(n) * sizeof(int));
    TESSERA_CUDA_CHECK(
        cudaMemcpyAsync(b.data(), host, static_cast<size_t>(n) * sizeof(int), cudaMemcpyHostToDevice, stream));
    return b;
  }

  // Device copy of the host positions, uploaded only when they differ from the last call's. Rewriting the block
  // is ordered on the stream after the kernels that read the previous positions.
  const int* device_positions(const int* host, int n) {
    const size_t bytes = static_cast<size_t>(n) * sizeof(int);
    if (positions_host.size() == static_cast<size_t>(n) && std::memcmp(positions_host.data(), host, bytes) == 0)
      return positions.as<int>();
    if (positions.bytes() < bytes) {
      positions = PoolBlock();
      positions = pool->allocate(bytes);
    }
    positions_host.assign(host, host + n);
    TESSERA_CUDA_CHECK(cudaMemcpyAsync(positions.data(), host, bytes, cudaMemcpyHostToDevice, stream));
    return positions.as<int>();
  }

  // y = x W^T for plain W through cuBLAS (column-major view: y^T[rows x n] = W[rows x K] x^T[K x n]).
  void cublas_matmul(const float* x, int n, const Matrix& w, float beta, float* y) {
    const float alpha = 1.0f;
    const int rows = static_cast<int>(w.rows), K = static_cast<int>(w.cols);
    if (w.dtype == DType::F32) {
      TESSERA_CUBLAS_CHECK(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, K, &alpha, w.data, CUDA_R_32F, K, x,
                                        CUDA_R_32F, K, &beta, y, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT));
      return;
    }
    // Half weights: round the activations to the weights' type (cuBLAS wants both operands in one type) and
    // accumulate in fp32.
    const bool bf16 = w.dtype == DType::BF16;
    const size_t count = static_cast<size_t>(n) * static_cast<size_t>(K);
    PoolBlock xh = pool->allocate(count * 2);
    cuda::launch_to_half(x, count, bf16, xh.data(), stream);
    const cudaDataType_t t = bf16 ? CUDA_R_16BF : CUDA_R_16F;
    TESSERA_CUBLAS_CHECK(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, K, &alpha, w.data, t, K, xh.data(), t,
                                      K, &beta, y, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
};

CudaBackend::CudaBackend(const CudaBackendOptions& options) : impl_(std::make_unique<Impl>()) {
  std::string why;
  const int count = cuda_device_count(&why);
  if (count == 0) throw Error("CUDA backend: no usable GPU (" + why + ")");
  if (options.device < 0 || options.device >= count) {
    throw Error("CUDA backend: device " + std::to_string(options.device) + " asked, " + std::to_string(count) +
                " present");
  }
  Impl& m = *impl_;
  m.device = options.device;
  TESSERA_CUDA_CHECK(cudaSetDevice(m.device));
  TESSERA_CUDA_CHECK(cudaGetDeviceProperties(&m.props, m.device));
  TESSERA_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  TESSERA_CUDA_CHECK(cudaMallocHost(&m.host_result, sizeof(int)));
  m.pool = std::make_unique<cuda::DevicePool>(options.pool_bytes);
  TESSERA_CUBLAS_CHECK(cublasCreate(&m.cublas));
  TESSERA_CUBLAS_CHECK(cublasSetStream(m.cublas, m.stream));
  // Plain fp32 arithmetic for F32 weights (no TF32), so cuBLAS results match the CPU engine's.
  TESSERA_CUBLAS_CHECK(cublasSetMathMode(m.cublas, CUBLAS_DEFAULT_MATH));
  // cuBLAS's workspace from the pool, so its calls never allocate (and can later be captured in a graph).
  constexpr size_t kWorkspace = size_t{32} << 20;
  m.cublas_workspace = m.pool->allocate(kWorkspace);
  TESSERA_CUBLAS_CHECK(cublasSetWorkspace(m.cublas, m.cublas_workspace.data(), kWorkspace));
  m.argmax_result = m.pool->allocate(sizeof(int));
  cuda::configure_attention_kernel();
}

CudaBackend::~CudaBackend() = default;

std::string CudaBackend::name() const {
  return std::string("cuda(") + impl_->props.name + ", sm_" + std::to_string(impl_->props.major) +
         std::to_string(impl_->props.minor) + ")";
}

cudaStream_t CudaBackend::stream() const {
  return impl_->stream;
}

void CudaBackend::synchronize() {
  TESSERA_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}

cuda::DevicePool& CudaBackend::pool() {
  return *impl_->pool;
}

int CudaBackend::sm_count() const {
  return impl_->props.multiProcessorCount;
}

namespace {
struct DeviceBlock final : BackendBuffer::Owner {
  cuda::DeviceBuffer memory;
  explicit DeviceBlock(size_t bytes) : memory(bytes) {}
};
}  // namespace

BackendBuffer CudaBackend::allocate(size_t bytes) {
  if (bytes == 0) return BackendBuffer();
  TESSERA_CUDA_CHECK(cudaSetDevice(impl_->device));
  auto block = std::make_unique<DeviceBlock>(bytes);
  void* data = block->memory.data();
  // Zeroed like host buffers; on the stream, so it is ordered before every op that uses the memory.
  TESSERA_CUDA_CHECK(cudaMemsetAsync(data, 0, bytes, impl_->stream));
  return BackendBuffer(data, bytes, std::move(block));
}

void CudaBackend::copy_to_backend(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  TESSERA_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, impl_->stream));
  // The caller may free or reuse host_src on return, also when it is pinned (then the copy is truly async).
  synchronize();
}

void CudaBackend::copy_to_host(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  TESSERA_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, impl_->stream));
  synchronize();
}

void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  TESSERA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, impl_->stream));
}

Matrix CudaBackend::upload(const Matrix& host) {
  TESSERA_CHECK_MSG(host.layout == MatrixLayout::kRows, "the CUDA backend uploads canonical rows only");
  TESSERA_CUDA_CHECK(cudaSetDevice(impl_->device));
  return impl_->weights.upload_matrix(host);
}

size_t CudaBackend::uploaded_bytes() const {
  return impl_->weights.bytes();
}

void CudaBackend::matmul(const float* x, int n, const Matrix& w, const float* bias, float* y) {
  TESSERA_CHECK(n >= 0 && w.rows >= 0 && w.cols >= 0);
  if (n == 0 || w.rows == 0) return;
  const DeviceLayout l = layout_of(w);
  TESSERA_CHECK_MSG(!is_sparse24(w.dtype), "CUDA matmul: upload 2:4 weights with DeviceWeightStore first");
  if (l.tiled()) {
    cuda::launch_mma_q4(x, n, l, w.data, nullptr, bias, y, impl_->stream);
  } else if (n <= cuda::gemv_max_rows(w.dtype)) {
    cuda::launch_gemv(x, n, l, w.data, nullptr, bias, y, impl_->stream);
  } else if (is_quantized(w.dtype)) {
    cuda::launch_gemm_quant(x, n, l, w.data, nullptr, bias, y, impl_->stream);
  } else {
    if (bias != nullptr) cuda::launch_broadcast_rows(bias, n, w.rows, y, impl_->stream);
    if (w.cols == 0 && bias == nullptr) {
      TESSERA_CUDA_CHECK(cudaMemsetAsync(y, 0, static_cast<size_t>(n) * w.rows * sizeof(float), impl_->stream));
      return;
    }
    if (w.cols > 0) impl_->cublas_matmul(x, n, w, bias != nullptr ? 1.0f : 0.0f, y);
  }
}

void CudaBackend::matmul_silu_mul(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) {
  TESSERA_CHECK(gate.rows == up.rows && gate.cols == up.cols && gate.dtype == up.dtype && gate.group == up.group);
  if (n == 0 || gate.rows == 0) return;
  const DeviceLayout l = layout_of(gate);
  if (l.tiled()) {
    cuda::launch_mma_q4(x, n, l, gate.data, up.data, nullptr, out, impl_->stream);
  } else if (n <= cuda::gemv_max_rows(gate.dtype)) {
    cuda::launch_gemv(x, n, l, gate.data, up.data, nullptr, out, impl_->stream);
  } else if (is_quantized(gate.dtype)) {
    cuda::launch_gemm_quant(x, n, l, gate.data, up.data, nullptr, out, impl_->stream);
  } else {
    // Plain weights: two cuBLAS products into scratch, then silu(g) * u.
    const size_t count = static_cast<size_t>(n) * static_cast<size_t>(gate.rows);
    PoolBlock g = impl_->pool->allocate(count * sizeof(float));
    PoolBlock u = impl_->pool->allocate(count * sizeof(float));
    if (gate.cols == 0) {
      TESSERA_CUDA_CHECK(cudaMemsetAsync(out, 0, count * sizeof(float), impl_->stream));
      return;
    }
    impl_->cublas_matmul(x, n, gate, 0.0f, g.as<float>());
    impl_->cublas_matmul(x, n, up, 0.0f, u.as<float>());
    cuda::launch_silu_mul(g.as<float>(), u.as<float>(), count, out, impl_->stream);
  }
}

void CudaBackend::rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) {
  cuda::launch_rmsnorm(x, w, n, dim, eps, y, impl_->stream);
}

void CudaBackend::add_rmsnorm(float* x, const float* delta, const float* w, int n, int dim, float eps, float* y) {
  cuda::launch_add_rmsnorm(x, delta, w, n, dim, eps, y, impl_->stream);
}

void CudaBackend::rope(float* x, int n, int n_heads, const int* positions, const RopeTable& table) {
  if (n <= 0) return;
  for (int i = 0; i < n; ++i) {
    TESSERA_CHECK_MSG(positions[i] >= 0 && positions[i] < table.max_pos,
                      "rope position " + std::to_string(positions[i]) + " out of table");
  }
  const int* pos = impl_->device_positions(positions, n);
  cuda::launch_rope(x, n, n_heads, pos, table.cos, table.sin, table.half_dim, table.style == RopeStyle::kInterleaved,
                    impl_->stream);
}

void CudaBackend::attention(const float* q, int n, int pos0, const KvLayer& kv, const AttentionShape& shape,
                            float* out) {
  TESSERA_CHECK(shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0 && shape.head_dim > 0);
  TESSERA_CHECK(pos0 >= 0 && pos0 + n <= kv.capacity);
  // The kernels address rows as pos * stride; a block table would have to live in device memory.
  TESSERA_CHECK_MSG(!kv.paged(), "the CUDA backend takes contiguous KV caches only (no paged pool yet)");
  if (n <= 0) return;
  const cuda::AttentionArgs a{q, n, pos0, kv.k, kv.v, kv.stride, shape.n_heads, shape.n_kv_heads, shape.head_dim, out};
  const int splits = cuda::attention_splits(a, sm_count());
  const size_t floats = cuda::attention_partials_floats(a, splits);
  PoolBlock partials;
  if (floats > 0) partials = impl_->pool->allocate(floats * sizeof(float));
  cuda::launch_attention(a, splits, partials.as<float>(), impl_->stream);
}

void CudaBackend::add(float* y, const float* x, size_t count) {
  cuda::launch_add(y, x, count, impl_->stream);
}

void CudaBackend::embedding(const Matrix& table, const int* tokens, int n, float* out) {
  if (n <= 0) return;
  for (int i = 0; i < n; ++i) {
    TESSERA_CHECK_MSG(tokens[i] >= 0 && tokens[i] < table.rows,
                      "token id " + std::to_string(tokens[i]) + " out of range");
  }
  PoolBlock ids = impl_->upload_ints(tokens, n);
  cuda::launch_embedding(layout_of(table), table.data, ids.as<int>(), n, out, impl_->stream);
}

int CudaBackend::argmax(const float* x, int n) {
  if (n <= 0) return 0;
  PoolBlock scratch = impl_->pool->allocate(cuda::argmax_scratch_bytes(n));
  cuda::launch_argmax(x, n, scratch.data(), impl_->argmax_result.as<int>(), impl_->stream);
  TESSERA_CUDA_CHECK(cudaMemcpyAsync(impl_->host_result, impl_->argmax_result.data(), sizeof(int),
                                     cudaMemcpyDeviceToHost, impl_->stream));
  synchronize();
  return *impl_->host_result;
}

}  // namespace tessera
