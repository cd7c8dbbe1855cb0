// The CPU backend's layout for Q4/Q4A weights (MatrixLayout::kPanels8): rows interleaved eight at a time so the
// decode kernel streams one panel instead of eight rows, finds the eight rows' scales in one 16-byte load, and
// gets from each 32-byte load of codes four consecutive columns of all eight rows (one int32 activation broadcast
// per four columns, no cross-row folding). CpuBackend::upload makes it from the canonical rows (quant/blocks.h).
//
// Panel p holds rows 8p..8p+7 (rows past the matrix are zero: scales, minimums and codes) in 8 * row_bytes bytes,
// so it starts where canonical row 8p would. Per quantization group g (G columns), in order:
//   8 fp16 scales d (row 0..7), then for Q4A 8 fp16 minimums m, then G/32 sub-blocks of 128 code bytes.
// Sub-block t covers columns 32t..32t+31 of the group as four 32-byte chunks c: byte 4r + i of chunk c holds row r's
// code of column 8c + i in its low nibble and of column 8c + 4 + i in its high nibble (i < 4).
// A panel group is 8 * (canonical block bytes): 16 + 4G for Q4 (8 * (2 + G/2)), 32 + 4G for Q4A.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/core/dtype.h"
#include "engine/core/tensor.h"

namespace tessera {
class ThreadPool;
}

namespace tessera::cpu {

inline constexpr int kPanelRows = 8;
inline constexpr int64_t kPanelSubBlockBytes = 128;  // 8 rows x 32 codes

inline constexpr int64_t panel_header_bytes(DType dt) {
  return dt == DType::Q4A ? 32 : 16;
}
inline constexpr int64_t panel_group_bytes(DType dt, int group) {
  return panel_header_bytes(dt) + 4 * static_cast<int64_t>(group);
}

// Where row r's code of column k lies in a panel: the byte and which nibble.
struct PanelCodePos {
  int64_t byte;
  bool high;
};
inline constexpr PanelCodePos panel_code_pos(DType dt, int group, int r, int64_t k) {
  const int64_t g = k / group, in_group = k % group;
  const int64_t t = in_group / 32, w = in_group % 32;
  const int64_t c = w / 8, e = w % 8;
  return {g * panel_group_bytes(dt, group) + panel_header_bytes(dt) + t * kPanelSubBlockBytes + 32 * c + 4 * r + e % 4,
          e >= 4};
}
// Byte offsets of row r's fp16 scale (and Q4A minimum) of group g.
inline constexpr int64_t panel_scale_pos(DType dt, int group, int r, int64_t g) {
  return g * panel_group_bytes(dt, group) + 2 * r;
}
inline constexpr int64_t panel_min_pos(int group, int r, int64_t g) {
  return g * panel_group_bytes(DType::Q4A, group) + 16 + 2 * r;
}

// Whether CpuBackend stores this matrix as panels: Q4 or Q4A rows with a group the kernels take.
bool panel8_applies(const Matrix& rows);
// Bytes of the panel form of `rows` (its row count rounded up to a multiple of 8).
size_t panel8_bytes(const Matrix& rows);
// Writes the panel form of the canonical `rows` into out (panel8_bytes of zeroed or any memory), panels split over the
// pool. Returns the panel-layout view of out.
Matrix repack_panel8(const Matrix& rows, uint8_t* out, ThreadPool& pool);
// fp32 values of row r of a panel-layout matrix (cols of them): the canonical dequantization, bit for bit.
void panel8_dequant_row(const Matrix& panels, int64_t r, float* out);

}  // namespace tessera::cpu
