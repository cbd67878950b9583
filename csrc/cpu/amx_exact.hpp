// Exact float64 Gram accumulation on the AMX-INT8 tile unit (Ozaki-style fixed-point slices).
//
// For a block of rows, every column i gets a power-of-two scale 2^E_i with |y_ti| < 2^E_i; a value
// whose scaled form U = y * 2^(55 - E_i) is an integer is split into the bytes of U,
//   y = sum_{k=1..s} d_k 2^(E_i + 1 - 8k),  d_1 in [-128, 127] (signed), d_2.. in [0, 255],
// so y_ti y_tj = sum_{k,l} d_k d_l 2^(E_i + E_j + 2 - 8(k + l)). The tile unit sums the 8-bit
// products exactly in int32; the digit-pair sums are combined in float64 by exact power-of-two
// scaling, so the only rounding is in a handful of float64 additions per block (the tile part of
// the result is far more accurate than dsyrk's own summation).
// Values that need more slices than the block uses (e.g. a tiny value next to large ones in its
// column) are split off: y = h + l with h on the slice grid and l the exact remainder; the few
// l y^T + h l^T terms are summed in float64 (per block, then added, like dsyrk's own two-level
// sums). Rows with many such values (float32/float64-like data), and whole blocks where that is
// cheaper, go through dsyrk in float64. Either way the result is float64 quality or better.
//
// Everything x86-specific lives in amx_exact.cpp behind function target attributes.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "cpu/aligned_buffer.hpp"

namespace geomfast::cpu::amx {

// "" when ExactSyrk can run (amx::unavailable_reason() is "" and the CPU has AMX-INT8 and
// AVX512-VBMI), else why not. Computed once, thread-safe.
const std::string& exact_unavailable_reason();
inline bool exact_available() { return exact_unavailable_reason().empty(); }

// One thread at a time per instance (not thread-safe); distinct instances may run concurrently on
// distinct threads. The tile configuration is loaded and released inside update().
// Memory: 2 * slices * 2048 * dim bytes of digit tiles (grown on demand: 12 MiB at dim 1024 with 3
// slices), a float64 copy of up to 512 fallback rows (4 MiB at dim 1024) and 2 x min(dim, 256)
// float64 rows for the split corrections (4 MiB at dim 1024).
// The slice count of a block is guessed from the previous block of the same instance, so an
// instance is best kept for one data stream (a mismatch costs speed, never accuracy).
class ExactSyrk {
 public:
  // Rows per internal block (the unit over which column scales, slice count and int32 tile sums
  // are formed). Calls with more rows are processed block by block; fewer rows form one block.
  static constexpr int64_t kMaxBlockRows = 2048;
  // Rows per update() call that amortise the per-block costs well (the caller's block_rows).
  static constexpr int64_t kPreferredRows = 2048;

  // dim >= 1 else std::invalid_argument; unavailable (or, with emulate, no emulation): runtime_error.
  // emulate: the tile instructions run on the software model (amx_emulation.hpp; tests).
  explicit ExactSyrk(int64_t dim, bool emulate = false);
  ~ExactSyrk();
  ExactSyrk(ExactSyrk&&) noexcept;
  ExactSyrk& operator=(ExactSyrk&&) noexcept;
  ExactSyrk(const ExactSyrk&) = delete;
  ExactSyrk& operator=(const ExactSyrk&) = delete;

  int64_t dim() const { return dim_; }

  // g[i + j*ldg] += sum_t y[t*ld + i] * y[t*ld + j] for 0 <= i <= j < dim; nothing else in g is
  // read or written. y: rows x dim row-major float64, row stride ld >= dim, finite (not checked).
  // ldg >= dim. rows == 0 is a no-op. Returns the number of rows that went through the float64
  // (dsyrk) fallback. BLAS is called from this thread as is (the caller sets its threading).
  int64_t update(const double* y, int64_t rows, int64_t ld, double* g, int64_t ldg);

  // Diagnostics, cumulative since construction.
  int64_t rows_exact() const { return rows_exact_; }        // through the tile unit
  int64_t rows_fallback() const { return rows_fallback_; }  // through dsyrk
  int64_t rows_zero() const { return rows_zero_; }          // all-zero rows (nothing to add)
  int64_t rows_split() const { return rows_split_; }        // of rows_exact: split, y = h + l
  // blocks_by_slices()[s] = blocks done with s slices (1..7); [0] = blocks done wholly by dsyrk.
  const std::array<int64_t, 9>& blocks_by_slices() const { return blocks_by_slices_; }

 private:
  using Buf = AlignedBuf;
  void ensure_pack(size_t bytes);
  void ensure_fallback(size_t bytes);
  int64_t block(const double* y, int64_t n, int64_t ld, double* g, int64_t ldg);
  int choose_slices(const int8_t* cls, const uint16_t* nb, int64_t n, int klo, int khi) const;

  int64_t dim_ = 0;
  bool emulate_ = false;
  int64_t nblk_ = 0;  // 32-feature blocks (dim padded to a multiple of 32)
  Buf colmax_;        // double[dimp]: per-column max |y| of the block
  Buf scale_;         // double[dimp]: 2^(55 - E_i), 0 for an all-zero column
  Buf expo_;          // int64[dimp]: E_i (0 for an all-zero column)
  Buf rowcls_;        // int8[kMaxBlockRows]: slices a row needs (0 = zero row, 8 = none suffices)
  Buf rownb_;         // uint16[kMaxBlockRows][8]: per row, values needing more than k slices
  Buf ubuf_;          // int64[4][dimp]: U of the rows being packed
  Buf invscale_;      // double[dimp]: 2^(E_i - 55)
  Buf hrow_, lrow_;   // double[dimp]: a split row's h and l
  Buf colslot_;       // int32[2][dimp]: column -> rbuf row (-1: none), then rbuf row -> column
  Buf rbuf_;          // double[split_cols_][2][dimp]: split rows' corrections (row a, column a)
  int64_t split_cols_ = 0;
  Buf apack_, bpack_; // int8 digit tiles (A: feature-major, B: VNNI)
  size_t pack_bytes_ = 0;
  Buf fb_;            // float64 gathered fallback rows
  size_t fb_bytes_ = 0;
  int64_t rows_exact_ = 0, rows_fallback_ = 0, rows_zero_ = 0, rows_split_ = 0;
  std::array<int64_t, 9> blocks_by_slices_{};
  int next_slices_ = 0;  // slice count the last block's rows favoured (0: scan the next block)
};

}  // namespace geomfast::cpu::amx
