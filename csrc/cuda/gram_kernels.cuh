// Launchers of the CUDA backend's own kernels (definitions in gram_kernels.cu). Matrices named
// "[r, c] col-major" are cuBLAS-style (element (i, j) at i + j*r); "[r, c] row-major" at i*c + j.
// The Gram state `gram` is [d, d] col-major with only the upper triangle (i <= j) kept up to date.
// Every launcher enqueues on `stream` and checks the launch (GF_CUDA_CHECK_LAUNCH).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "geomfast/tensor.hpp"

namespace geomfast::cuda {

// Flags written by column_stats: [0] non-finite values, [1] first row holding one (UINT64_MAX
// when none), [2] values whose 16-bit split would overflow (|x - c| > split_max).
constexpr int kNumFlags = 3;

// Rows of partial sums column_stats needs in `part` (each row holds 2*cols doubles).
int64_t column_stats_partials(int64_t rows);

// One pass over x: csum[j] = Σ_r (x[r, j] - c[j]) and csq[j] = Σ_r (x[r, j] - c[j])² in float64
// (c = nullptr means c = 0), non-finite values counted (and left out of the sums).
void column_stats(const MatrixView& x,            // [n, d] any strides, any dtype, on device
                  const double* c,                // [d] or nullptr
                  double split_max,               // 0: no overflow count
                  double* part,                   // [column_stats_partials(n), 2, d] scratch
                  double* csum,                   // [d] out
                  double* csq,                    // [d] out
                  unsigned long long* flags,      // [kNumFlags] out
                  cudaStream_t stream);

// out[j] = gram[j, j] (the state's diagonal before a fast chunk's float32 products).
void copy_diagonal(const double* gram,  // [d, d] col-major
                   int64_t d,
                   double* out,         // [d] out
                   cudaStream_t stream);

// gram[j, j] = base[j] + add[j]: the fast paths' diagonal from float64 sums of squares (their
// float32 products lose a column whose values are tiny beside the others').
void set_diagonal(double* gram,        // [d, d] col-major, diagonal written
                  int64_t d,
                  const double* base,  // [d]
                  const double* add,   // [d]
                  cudaStream_t stream);

// shift[j] = csum[j] / n.
void set_shift(const double* csum,  // [d]
               int64_t d, int64_t n,
               double* shift,       // [d] out
               cudaStream_t stream);

// The kernel shift c that the 16-bit split path centres by: c[j] = 0 where |shift[j]| <= tau *
// (column std), or where shift[j] does not fit the 16-bit type; otherwise shift[j] rounded to the
// 16-bit type (so x - c splits exactly into two 16-bit values). The column variance comes from
// y-sums over n rows of any base: var = ysq/n - (ysum/n)².
void choose_split_shift(const double* shift,  // [d]
                        const double* ysum,   // [d]
                        const double* ysq,    // [d] with stride ysq_stride (a Gram diagonal: d + 1)
                        int64_t ysq_stride, int64_t d, int64_t n, double tau, DType dtype16,
                        double* c,            // [d] out
                        cudaStream_t stream);

// y[r, j] = x[r0 + r, j] - c[j], rows r0 .. r0 + nb, in float64 or float32 (rounded once).
void center_rows_f64(const MatrixView& x, int64_t r0, int64_t nb,
                     const double* c,  // [d]
                     double* y,        // [nb, d] row-major out
                     cudaStream_t stream);
void center_rows_f32(const MatrixView& x, int64_t r0, int64_t nb,
                     const double* c,  // [d]
                     float* y,         // [nb, d] row-major out
                     cudaStream_t stream);

// Exact split of 16-bit input: x[r0 + r, j] - c[j] = hi[r, j] + lo[r, col2j[j]] with hi, lo in
// x's 16-bit type (c[j] must be representable in it; lo is stored only for columns with
// col2j[j] >= 0: the others have c[j] = 0, hence lo = 0). Padding columns (hi: [d, ldh), lo:
// [nj, ldl)) are written as zeros; ldh >= d, nj <= ldl <= ldh.
void split_rows_16(const MatrixView& x, int64_t r0, int64_t nb,
                   const double* c,   // [d], values in x's 16-bit type
                   const int* col2j,  // [d], -1 or index into lo's columns
                   int64_t nj,
                   void* hi, int64_t ldh,  // [nb, ldh] row-major out, x's dtype
                   void* lo, int64_t ldl,  // [nb, ldl] row-major out, x's dtype
                   cudaStream_t stream);

// gram[a, b] += acc[a, b] for a <= b (float32 block product flushed into float64).
void flush_upper(const float* acc,  // [d, d] col-major, upper triangle read
                 int64_t d,
                 double* gram,      // [d, d] col-major, upper updated
                 cudaStream_t stream);

// gram[a, b] += HH[a, b] + HL[a, j(b)] + HL[b, j(a)] + LL[j(a), j(b)] for a <= b, the terms with
// a column j(.) < 0 (not in J) being zero: Σ (h + l)(h + l)ᵀ from its four blocks.
void flush_upper_split(const float* hh,   // [d, d] col-major, upper read
                       const float* hl,   // [d, nj] col-major (HᵀL_J), or nullptr when nj = 0
                       const float* ll,   // [nj, nj] col-major (L_JᵀL_J), or nullptr
                       const int* col2j,  // [d]
                       int64_t d, int64_t nj,
                       double* gram,      // [d, d] col-major, upper updated
                       cudaStream_t stream);

// gram[a, b] += hl[a, j(b)] + hl[b, j(a)] + ll[j(a), j(b)] for a <= b (terms with a column j(.) < 0
// are zero): the cross terms of Σ (h + l)(h + l)ᵀ, accumulated in float64 by the tc kernel.
void add_cross_terms(const double* hl,   // [d, nj] col-major (HᵀL_J)
                     const double* ll,   // [nj, nj] col-major, upper (L_JᵀL_J)
                     const int* col2j,   // [d], increasing where >= 0
                     int64_t d, int64_t nj,
                     double* gram,       // [d, d] col-major, upper updated
                     cudaStream_t stream);

// The two-level tensor-core Gram product (gram_tc.cu):
//   c[a + b ldc] += Σ_{r < rows} A[r, a] B[r, b]   for a < m, b < n (and a <= b when `upper`),
// A [rows, lda] and B [rows, ldb] row-major in bfloat16 or float16, with lda >= round_up(m,
// kTcTile) and ldb >= round_up(n, kTcTile), the padding columns zero, both 16-byte aligned. Tensor-
// core chains of chain_rows rows (a multiple of 32) are added into a second float32 register
// accumulator; c (float64) is read and written once per call, so the float32 error is that of
// rows / chain_rows round-to-nearest additions: callers bound `rows` per call.
constexpr int64_t kTcTile = 128;
void tc_gram_update(const void* a, int64_t lda, int64_t m,
                    const void* b, int64_t ldb, int64_t n,
                    int64_t rows, int chain_rows, DType dtype, bool upper,
                    double* c, int64_t ldc,  // [*, *] col-major, ldc >= m
                    cudaStream_t stream);

// The same product on Hopper's warpgroup MMA (gram_wgmma.cu; compiled for sm_90a only): the same
// contract, except that chain_rows must be a multiple of 64 and the tiles are 128 x tile_n
// (tile_n = 128 or 192): A padded to whole 128-column tiles, B to whole tile_n-column tiles
// (wg_padded(cols, tile_n) covers both roles). wg_gram_unavailable(device) is empty where it can
// run, otherwise the reason (not a 9.0 device, or no sm_90a image in this build).
// probe_image = false checks the capability alone (no context is created: backends()' listing).
std::string wg_gram_unavailable(int device, bool probe_image = true);
inline int64_t wg_padded(int64_t cols, int tile_n) {
  const auto up = [](int64_t v, int64_t q) { return (v + q - 1) / q * q; };
  return std::max(up(cols, kTcTile), up(cols, tile_n));
}
void wg_gram_update(const void* a, int64_t lda, int64_t m,
                    const void* b, int64_t ldb, int64_t n,
                    int64_t rows, int chain_rows, int tile_n, DType dtype, bool upper,
                    double* c, int64_t ldc,  // [*, *] col-major, ldc >= m
                    cudaStream_t stream);

// Commits a chunk of n rows centred by c to a state centred by shift (delta = shift - c):
//   sum  += zsum - n delta
//   gram += n delta deltaᵀ - delta zsumᵀ - zsum deltaᵀ   (upper; skipped when with_gram is false)
void commit_chunk(const double* shift,  // [d]
                  const double* c,      // [d]
                  const double* zsum,   // [d] Σ (x - c) over the chunk
                  int64_t d, int64_t n, bool with_gram,
                  double* sum,          // [d] in/out
                  double* gram,         // [d, d] col-major, upper in/out
                  cudaStream_t stream);

// Re-expresses a state of n rows centred by shift around new_shift (exact algebra, on the device):
// with δ = shift - new_shift, gram += δ sumᵀ + sum δᵀ + n δδᵀ (upper), sum += n δ, shift = new_shift.
void reshift_upper(const double* new_shift,  // [d], not aliasing shift or sum
                   int64_t d, int64_t n,
                   double* shift,            // [d] in/out
                   double* sum,              // [d] in/out
                   double* gram,             // [d, d] col-major, upper in/out
                   cudaStream_t stream);

// full[a, b] = full[b, a] = (upper(gram)[min, max] - sum[a] sum[b] / n) * scale; with sum =
// nullptr, the symmetric Gram itself (scale applied). Symmetric, so row- and col-major agree.
void symmetric_from_upper(const double* gram,  // [d, d] col-major, upper read
                          const double* sum,   // [d] or nullptr
                          int64_t d, double n, double scale,
                          double* full,        // [d, d] out
                          cudaStream_t stream);

// w[i + j n] = a[min(i, j), max(i, j)]: the symmetric matrix defined by a's upper triangle
// (row <= col, what the CPU solver reads), float64 column-major.
void symmetrize_view(const MatrixView& a,  // [n, n] float32/float64, any strides
                          double* w,            // [n, n] col-major out
                          cudaStream_t stream);

void convert_f64_to_f32(const double* src,  // [n]
                        int64_t n,
                        float* dst,         // [n] out
                        cudaStream_t stream);

// Sets every element to NaN (tests/debugging of unwritten outputs).
void fill_nan(double* p, int64_t n, cudaStream_t stream);

// eigvalsh's checks of a square float32/float64 view (any strides), into out[3] zeroed by the
// caller: out[0] = NaN/Inf in the upper triangle (what is read), out[1], out[2] = the bits of
// max |a_ij - a_ji| and of max |a_ij| (finite values), as doubles. One pass.
void check_view(const MatrixView& a, unsigned long long* out, cudaStream_t stream);

}  // namespace geomfast::cuda
