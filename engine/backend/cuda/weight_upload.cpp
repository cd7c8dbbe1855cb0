#include "engine/backend/cuda/weight_upload.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "engine/backend/cuda/cuda_check.h"
#include "quant/blocks.h"
#include "quant/sparse_formats.h"

namespace tessera::cuda {

namespace {

uint16_t read_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
float read_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

// Puts every row's code words in the lane-interleaved order (device_layout.h); repacking writes logical order.
void interleave_code_rows(const DeviceLayout& l, uint8_t* out) {
  const int64_t row_bytes = l.code_row_bytes(), words = row_bytes / 4;
  if (words < kTileWords) return;
  std::vector<uint32_t> logical(static_cast<size_t>(words));
  for (int64_t r = 0; r < l.rows; ++r) {
    uint8_t* row = out + r * row_bytes;
    std::memcpy(logical.data(), row, static_cast<size_t>(row_bytes));
    for (int64_t w = 0; w < words; ++w)
      std::memcpy(row + 4 * code_word_position(words, w), &logical[static_cast<size_t>(w)], 4);
  }
}

void repack_q8(const Matrix& h, const DeviceLayout& l, uint8_t* out) {
  auto* scales = reinterpret_cast<float*>(out + l.scales_offset());
  for (int64_t r = 0; r < h.rows; ++r) {
    const auto* src = static_cast<const uint8_t*>(h.row(r));
    scales[r] = read_f32(src);
    std::memcpy(out + r * l.code_row_bytes(), src + 4, static_cast<size_t>(h.cols));
  }
}

// Writes the tiled layout (Q4/Q4A, device_layout.h) one row tile at a time: codes_of(r, q) writes row r's 4-bit
// codes into q[0, kpad), one per byte, over a preset of code 8 (Q4's zero), which padding rows and columns keep.
template <class CodesOf>
void pack_tiled(const DeviceLayout& l, uint8_t* out, CodesOf codes_of) {
  const int64_t kb = l.kblocks(), width = kb * 64;
  std::vector<uint8_t> q(static_cast<size_t>(16 * width));
  auto* words = reinterpret_cast<uint32_t*>(out);
  for (int64_t rt = 0; rt < l.row_tiles(); ++rt) {
    std::fill(q.begin(), q.end(), uint8_t{8});
    for (int64_t rr = 0; rr < 16 && rt * 16 + rr < l.rows; ++rr) codes_of(rt * 16 + rr, q.data() + rr * width);
    for (int64_t b = 0; b < kb; ++b) {
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        for (int j = 0; j < 4; ++j) {
          uint32_t word = 0;
          for (int i = 0; i < 8; ++i) {
            const int64_t row = g + 8 * (i & 1), col = 64 * b + 16 * t + 4 * j + (i >> 2) + 2 * ((i >> 1) & 1);
            word |= static_cast<uint32_t>(q[static_cast<size_t>(row * width + col)]) << (4 * i);
          }
          words[((rt * kb + b) * 32 + lane) * 4 + j] = word;
        }
      }
    }
  }
}

void repack_grouped(const Matrix& h, const DeviceLayout& l, uint8_t* out) {
  const int G = h.group;
  const size_t head = h.dtype == DType::Q4A ? 4 : 2, block = head + static_cast<size_t>(G) / 2;
  for (int64_t r = 0; r < h.rows; ++r) {
    const auto* src = static_cast<const uint8_t*>(h.row(r));
    for (int64_t g = 0; g < l.groups(); ++g) {
      const uint8_t* b = src + static_cast<size_t>(g) * block;
      std::memcpy(out + l.scale_offset(r, g), b, 2);
      if (h.dtype == DType::Q4A) std::memcpy(out + l.min_offset(r, g), b + 2, 2);
      if (!l.tiled()) std::memcpy(out + r * l.code_row_bytes() + g * (G / 2), b + head, static_cast<size_t>(G) / 2);
    }
  }
  if (!l.tiled()) return;
  pack_tiled(l, out, [&](int64_t r, uint8_t* q) {
    const auto* src = static_cast<const uint8_t*>(h.row(r));
    for (int64_t g = 0; g < l.groups(); ++g) {
      const uint8_t* codes = src + static_cast<size_t>(g) * block + head;
      for (int j = 0; j < G / 2; ++j) {
        q[g * G + j] = codes[j] & 0x0f;
        q[g * G + j + G / 2] = codes[j] >> 4;
      }
    }
  });
}

// S24Q8 -> Q8: the same scale, kept values at their positions, zeros elsewhere.
void expand_s24q8(const Matrix& h, const DeviceLayout& l, uint8_t* out) {
  auto* scales = reinterpret_cast<float*>(out + l.scales_offset());
  uint8_t pos[quant::kSparse24Kept];
  for (int64_t r = 0; r < h.rows; ++r) {
    const auto* src = static_cast<const uint8_t*>(h.row(r));
    scales[r] = read_f32(src);
    auto* q = reinterpret_cast<int8_t*>(out + r * l.code_row_bytes());
    for (int64_t b0 = 0; b0 < h.cols; b0 += quant::kSparse24Block) {
      quant::BlockS24Q8 blk;
      std::memcpy(&blk, src + 4 + (b0 / quant::kSparse24Block) * sizeof blk, sizeof blk);
      quant::sparse24_positions(blk.idx, pos);
      for (int s = 0; s < quant::kSparse24Kept; ++s) {
        if (b0 + pos[s] < h.cols) q[b0 + pos[s]] = blk.q[s];
      }
    }
  }
}

// S24Q4 -> Q4 in groups of 64: each block's scale, kept codes at their positions, code 8 (zero) elsewhere.
void expand_s24q4(const Matrix& h, const DeviceLayout& l, uint8_t* out) {
  pack_tiled(l, out, [&](int64_t r, uint8_t* codes) {
    const auto* src = static_cast<const uint8_t*>(h.row(r));
    uint8_t pos[quant::kSparse24Kept];
    for (int64_t g = 0; g < l.groups(); ++g) {
      quant::BlockS24Q4 blk;
      std::memcpy(&blk, src + g * sizeof blk, sizeof blk);
      std::memcpy(out + l.scale_offset(r, g), &blk.d, 2);
      quant::sparse24_positions(blk.idx, pos);
      for (int s = 0; s < quant::kSparse24Kept; ++s) {
        const int64_t c = g * quant::kSparse24Block + pos[s];
        if (c < h.cols) codes[c] = s < 16 ? blk.qs[s] & 0x0f : blk.qs[s - 16] >> 4;
      }
    }
  });
}

// cudaMemcpy from pageable memory may return before the DMA has landed, and it runs on the legacy default
// stream, which the backend's non-blocking stream does not wait for: wait here so every later kernel sees it.
void wait_for_copy() {
  TESSERA_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace

RepackedMatrix repack_for_device(const Matrix& h) {
  RepackedMatrix out;
  DeviceLayout& l = out.layout;
  l.rows = h.rows;
  l.cols = h.cols;
  switch (h.dtype) {
    case DType::S24Q8:
      l.dtype = DType::Q8;
      break;
    case DType::S24Q4:
      l.dtype = DType::Q4;
      l.group = quant::kSparse24Block;
      break;
    default:
      l.dtype = h.dtype;
      l.group = is_grouped(h.dtype) ? h.group : 0;
  }
  if (is_grouped(l.dtype) && l.group != 32 && l.group != 64 && l.group != 128) {
    throw Error("cannot upload a " + std::string(dtype_name(h.dtype)) + " matrix with group " +
                std::to_string(l.group) + " (32, 64 or 128)");
  }
  out.bytes.assign(static_cast<size_t>(l.total_bytes()), 0);
  if (h.rows == 0 || h.cols == 0) return out;
  switch (h.dtype) {
    case DType::F32:
    case DType::F16:
    case DType::BF16:
      std::memcpy(out.bytes.data(), h.data, out.bytes.size());
      break;
    case DType::Q8:
      repack_q8(h, l, out.bytes.data());
      break;
    case DType::Q4:
    case DType::Q4A:
    case DType::NF4:
      repack_grouped(h, l, out.bytes.data());
      break;
    case DType::S24Q8:
      expand_s24q8(h, l, out.bytes.data());
      break;
    case DType::S24Q4:
      expand_s24q4(h, l, out.bytes.data());
      break;
  }
  if (is_quantized(l.dtype) && !l.tiled()) interleave_code_rows(l, out.bytes.data());
  return out;
}

float device_layout_element(const DeviceLayout& l, const uint8_t* bytes, int64_t r, int64_t c) {
  const uint8_t* row = bytes + r * l.code_row_bytes();
  switch (l.dtype) {
    case DType::F32:
      return read_f32(row + 4 * c);
    case DType::F16:
      return f16_to_f32(read_u16(row + 2 * c));
    case DType::BF16:
      return bf16_to_f32(read_u16(row + 2 * c));
    case DType::Q8:
      return read_f32(bytes + l.scales_offset() + 4 * r) *
             static_cast<float>(static_cast<int8_t>(row[code_byte_position(l.code_row_bytes(), c)]));
    default: {
      const int q = code4_at(l, bytes, r, c);
      const int64_t gi = c / l.group;
      const float d = f16_to_f32(read_u16(bytes + l.scale_offset(r, gi)));
      if (l.dtype == DType::Q4) return d * static_cast<float>(q - 8);
      if (l.dtype == DType::NF4) return d * quant::kNf4Levels[q];
      return d * static_cast<float>(q) + f16_to_f32(read_u16(bytes + l.min_offset(r, gi)));
    }
  }
}

Matrix DeviceWeightStore::upload_matrix(const Matrix& host) {
  RepackedMatrix rp = repack_for_device(host);
  DeviceBuffer buf(rp.bytes.size());
  if (!rp.bytes.empty()) {
    TESSERA_CUDA_CHECK(cudaMemcpy(buf.data(), rp.bytes.data(), rp.bytes.size(), cudaMemcpyHostToDevice));
    wait_for_copy();
  }
  Matrix m{rp.layout.dtype, rp.layout.rows, rp.layout.cols, buf.data(), rp.layout.group};
  bytes_ += rp.bytes.size();
  buffers_.push_back(std::move(buf));
  return m;
}

const float* DeviceWeightStore::upload_floats(const float* host, size_t count) {
  DeviceBuffer buf(count * sizeof(float));
  if (count > 0) {
    TESSERA_CUDA_CHECK(cudaMemcpy(buf.data(), host, count * sizeof(float), cudaMemcpyHostToDevice));
    wait_for_copy();
  }
  const auto* p = buf.as<const float>();
  bytes_ += count * sizeof(float);
  buffers_.push_back(std::move(buf));
  return p;
}

}  // namespace tessera::cuda
