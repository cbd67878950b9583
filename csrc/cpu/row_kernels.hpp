// The O(n·d) passes of the CPU Gram path over contiguous runs of one row, compiled for several
// x86-64 levels and picked at load time (target_clones), so a portable build still runs them
// with AVX2 / AVX-512 where the CPU has them. Before these, the validation pass alone cost about
// a quarter of the float32 syrk time (measured with perf, n = 200,000, d = 1024).
#pragma once
#include <cstdint>

namespace geomfast::cpu {

// Non-finite values and the largest finite magnitude of n contiguous values; for float32 /
// float64, whether every value has at most 11 significant bits (the low 13 / 42 mantissa bits
// zero: float16 or bfloat16 values held in a wider type). 16-bit types report it always.
// The mantissa bits that are zero in such values (the strided scan in gram_cpu.cpp tests them too).
constexpr uint32_t kShortLowBitsF32 = 0x1fffu;                 // low 13 of 23
constexpr uint64_t kShortLowBitsF64 = (uint64_t(1) << 42) - 1;  // low 42 of 52
struct RowScan {
  uint32_t nonfinite = 0;
  double max_abs = 0.0;
  bool short_values = true;
};
RowScan scan_row_f64(const double* x, int64_t n);
RowScan scan_row_f32(const float* x, int64_t n);
RowScan scan_row_bf16(const uint16_t* x, int64_t n);
RowScan scan_row_f16(const uint16_t* x, int64_t n);

// y[c] = x[c] − shift[c] in float64 (x exactly up-cast); colsum[c] += y[c]; out[c] = Out(y[c]).
void center_row_f64(const double* x, int64_t n, const double* shift, double* colsum, double* out);
void center_row_f64(const double* x, int64_t n, const double* shift, double* colsum, float* out);
void center_row_f32(const float* x, int64_t n, const double* shift, double* colsum, double* out);
void center_row_f32(const float* x, int64_t n, const double* shift, double* colsum, float* out);
void center_row_bf16(const uint16_t* x, int64_t n, const double* shift, double* colsum, double* out);
void center_row_bf16(const uint16_t* x, int64_t n, const double* shift, double* colsum, float* out);
void center_row_f16(const uint16_t* x, int64_t n, const double* shift, double* colsum, double* out);
void center_row_f16(const uint16_t* x, int64_t n, const double* shift, double* colsum, float* out);

// g[i] += double(acc[i]) for i in [0, n)  (the float32 → float64 flush of a column's upper part).
void add_f32_into_f64(const float* acc, int64_t n, double* g);
// sq[i] += Σ_r double(y[r, i])² over rows r of y [rows, n] row-major (fast's float64 diagonal).
void add_squares_f32(const float* y, int64_t rows, int64_t n, double* sq);
// g[i] += p[i] for i in [0, n)
void add_f64_into_f64(const double* p, int64_t n, double* g);

}  // namespace geomfast::cpu
