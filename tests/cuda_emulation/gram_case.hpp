// One case of a two-level Gram kernel (gram_tc.cu, gram_wgmma.cu) for the emulation drivers
// tc_kernel_emulation.cpp and wg_kernel_emulation.cpp: random 16-bit operands (B offset by 3, so
// that products do not cancel), a float64 output that starts at known values inside what the
// kernel must write and NaN outside it, and the check of the result against a float64 reference.
// Include after the kernel's source (it needs the emulated 16-bit types and nvcuda::wmma::to_f).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

template <typename T>
T to16(float v);
template <>
inline __nv_bfloat16 to16<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
inline __half to16<__half>(float v) { return __float2half_rn(v); }

template <typename T>
struct GramCase {
  int64_t m, n, rows, lda, ldb, ldc;
  bool upper, same;  // same: B is A (the HᵀH and LᵀL products)
  std::vector<T> a, b;
  std::vector<double> c, c0;

  // lda, ldb: the padded leading dimensions the kernel's launcher requires.
  GramCase(int64_t m_, int64_t n_, int64_t rows_, int64_t lda_, int64_t ldb_, bool upper_, bool same_, unsigned seed)
      : m(m_), n(n_), rows(rows_), lda(lda_), ldb(same_ ? lda_ : ldb_), ldc(m_ + 3), upper(upper_), same(same_),
        a(static_cast<size_t>(rows_ * lda_), to16<T>(0.0f)), b(static_cast<size_t>(rows_ * ldb_), to16<T>(0.0f)),
        c(static_cast<size_t>((m_ + 3) * n_)) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < m; ++j) a[r * lda_ + j] = to16<T>(nd(rng));
      for (int64_t j = 0; j < n; ++j) b[r * ldb_ + j] = to16<T>(nd(rng) + 3.0f);
    }
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < ldc; ++i) c[i + j * ldc] = written(i, j) ? 0.25 * static_cast<double>(i - j) : NAN;
    c0 = c;
  }
  const T* bp() const { return same ? a.data() : b.data(); }
  bool written(int64_t i, int64_t j) const { return i < m && (!upper || i <= j); }

  // The largest error relative to Σ|products| over the elements the kernel must write, and the
  // number of elements outside them that are no longer NaN.
  void check(double& worst, int64_t& wrong_nan) const {
    worst = 0.0;
    wrong_nan = 0;
    const T* bb = bp();
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < ldc; ++i) {
        const double got = c[i + j * ldc];
        if (!written(i, j)) {
          wrong_nan += !std::isnan(got);
          continue;
        }
        double ref = c0[i + j * ldc], mag = 0.0;
        for (int64_t r = 0; r < rows; ++r) {
          const double p = static_cast<double>(nvcuda::wmma::to_f(a[r * lda + i])) * nvcuda::wmma::to_f(bb[r * ldb + j]);
          ref += p;
          mag += std::fabs(p);
        }
        worst = std::isfinite(got) ? std::max(worst, std::fabs(got - ref) / (mag + 1e-30)) : INFINITY;
      }
  }
};
