#include "engine/backend/cpu/panel8.h"

#include <algorithm>
#include <cstring>

#include "engine/core/check.h"
#include "engine/core/thread_pool.h"

namespace tessera::cpu {

namespace {

// Canonical block geometry (quant/blocks.h): header bytes (d, and m for Q4A) then G/2 nibble bytes.
int64_t row_header_bytes(DType dt) {
  return dt == DType::Q4A ? 4 : 2;
}

// The 32 codes of canonical block columns 32t..32t+31 (value j < G/2 is the low nibble of qs[j], j + G/2 the high).
void block_codes(const uint8_t* qs, int group, int t, uint8_t* codes) {
  const int half = group / 2;
  // Codes below `low` are low nibbles, the rest high ones: two branch-free loops instead of a test per code.
  const int low = std::clamp(half - 32 * t, 0, 32);
  for (int i = 0; i < low; ++i) codes[i] = qs[32 * t + i] & 0x0f;
  for (int i = low; i < 32; ++i) codes[i] = qs[32 * t + i - half] >> 4;
}

void repack_panels(const Matrix& m, int64_t p_begin, int64_t p_end, uint8_t* out) {
  const size_t row_bytes = m.row_bytes();
  const int64_t groups = static_cast<int64_t>(row_bytes) / (row_header_bytes(m.dtype) + m.group / 2);
  const int64_t gbytes = panel_group_bytes(m.dtype, m.group), hdr = panel_header_bytes(m.dtype);
  const int64_t block_bytes = row_header_bytes(m.dtype) + m.group / 2;
  uint8_t codes[kPanelRows][32];
  for (int64_t p = p_begin; p < p_end; ++p) {
    uint8_t* panel = out + static_cast<size_t>(p) * kPanelRows * row_bytes;
    const int live = static_cast<int>(std::min<int64_t>(kPanelRows, m.rows - p * kPanelRows));
    std::memset(panel, 0, kPanelRows * row_bytes);
    for (int64_t g = 0; g < groups; ++g) {
      uint8_t* pg = panel + g * gbytes;
      for (int r = 0; r < live; ++r) {
        const uint8_t* block = static_cast<const uint8_t*>(m.row(p * kPanelRows + r)) + g * block_bytes;
        std::memcpy(pg + 2 * r, block, 2);                                      // d
        if (m.dtype == DType::Q4A) std::memcpy(pg + 16 + 2 * r, block + 2, 2);  // m
      }
      for (int t = 0; t < m.group / 32; ++t) {
        for (int r = 0; r < kPanelRows; ++r) {
          if (r < live) {
            const uint8_t* block = static_cast<const uint8_t*>(m.row(p * kPanelRows + r)) + g * block_bytes;
            block_codes(block + row_header_bytes(m.dtype), m.group, t, codes[r]);
          } else {
            std::memset(codes[r], 0, 32);
          }
        }
        uint8_t* sub = pg + hdr + t * kPanelSubBlockBytes;
        for (int c = 0; c < 4; ++c)
          for (int r = 0; r < kPanelRows; ++r)
            for (int i = 0; i < 4; ++i)
              sub[32 * c + 4 * r + i] = static_cast<uint8_t>(codes[r][8 * c + i] | codes[r][8 * c + 4 + i] << 4);
      }
    }
  }
}

}  // namespace

bool panel8_applies(const Matrix& m) {
  return (m.dtype == DType::Q4 || m.dtype == DType::Q4A) && m.layout == MatrixLayout::kRows &&
         (m.group == 32 || m.group == 64 || m.group == 128) && m.rows > 0 && m.cols > 0;
}

size_t panel8_bytes(const Matrix& m) {
  const auto panels = static_cast<size_t>((m.rows + kPanelRows - 1) / kPanelRows);
  return panels * kPanelRows * m.row_bytes();
}

Matrix repack_panel8(const Matrix& m, uint8_t* out, ThreadPool& pool) {
  TESSERA_CHECK(panel8_applies(m));
  const int64_t panels = (m.rows + kPanelRows - 1) / kPanelRows;
  pool.parallel_for(panels, 16, [&](int64_t begin, int64_t end) { repack_panels(m, begin, end, out); });
  Matrix v = m;
  v.data = out;
  v.layout = MatrixLayout::kPanels8;
  return v;
}

void panel8_dequant_row(const Matrix& m, int64_t r, float* out) {
  TESSERA_CHECK(m.layout == MatrixLayout::kPanels8 && r >= 0 && r < m.rows);
  const auto* panel = static_cast<const uint8_t*>(m.row(r / kPanelRows * kPanelRows));
  const int j = static_cast<int>(r % kPanelRows);
  const auto half = [&](int64_t pos) {
    uint16_t h;
    std::memcpy(&h, panel + pos, 2);
    return f16_to_f32(h);
  };
  for (int64_t k = 0; k < m.cols; ++k) {
    const int64_t g = k / m.group;
    const PanelCodePos pos = panel_code_pos(m.dtype, m.group, j, k);
    const int q = pos.high ? panel[pos.byte] >> 4 : panel[pos.byte] & 0x0f;
    const float d = half(panel_scale_pos(m.dtype, m.group, j, g));
    // As the canonical dequantization (kernels_quant_portable.cpp): one rounding each.
    out[k] = m.dtype == DType::Q4A ? d * static_cast<float>(q) + half(panel_min_pos(m.group, j, g))
                                   : d * static_cast<float>(q - 8);
  }
}

}  // namespace tessera::cpu
