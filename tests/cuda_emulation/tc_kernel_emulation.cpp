// Runs csrc/cuda/gram_tc.cu's kernel source on the CPU (wmma_emulation.hpp) against a float64
// reference, on and off its 128-column tiles, with row counts that end mid-slab and mid-chain,
// for both operand types and for the upper-triangle and full cases. Prints one line per case;
// exits 1 if any case is wrong. Built and run by tests/test_cuda_emulation.py.
#define GEOMFAST_CUDA_EMULATE 1
#include "../../csrc/cuda/gram_tc.cu"

#include <cmath>
#include <cstdio>
#include <random>

using namespace geomfast::cuda;

template <typename T>
T to16(float v);
template <>
__nv_bfloat16 to16<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__half to16<__half>(float v) { return __float2half_rn(v); }

template <typename T>
bool run_case(const char* name, int64_t m, int64_t n, int64_t rows, int chain_rows, bool upper, bool same,
              unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t lda = (m + kTcTile - 1) / kTcTile * kTcTile, ldb = (n + kTcTile - 1) / kTcTile * kTcTile;
  std::vector<T> a(static_cast<size_t>(rows * lda), to16<T>(0.0f)), b(static_cast<size_t>(rows * ldb), to16<T>(0.0f));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < m; ++j) a[r * lda + j] = to16<T>(nd(rng));
    for (int64_t j = 0; j < n; ++j) b[r * ldb + j] = to16<T>(nd(rng) + 3.0f);
  }
  const T* bp = same ? a.data() : b.data();
  const int64_t ldbp = same ? lda : ldb;
  // c starts at a known value (the kernel adds into it); NaN where it must not write.
  const int64_t ldc = m + 3;
  std::vector<double> c(static_cast<size_t>(ldc * n));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < ldc; ++i)
      c[i + j * ldc] = (i < m && (!upper || i <= j)) ? 0.25 * static_cast<double>(i - j) : NAN;
  const std::vector<double> c0 = c;
  const unsigned gx = static_cast<unsigned>((m + kTcTile - 1) / kTcTile), gy = static_cast<unsigned>((n + kTcTile - 1) / kTcTile);
  gf_emu::launch(gx, gy, 256, [&] {
    tc_gram_kernel<T>(a.data(), lda, m, bp, ldbp, n, rows, chain_rows / 32, upper, c.data(), ldc);
  });
  double worst = 0.0;
  int64_t wrong_nan = 0;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < ldc; ++i) {
      const double got = c[i + j * ldc];
      const bool written = i < m && (!upper || i <= j);
      if (!written) {
        wrong_nan += !std::isnan(got);
        continue;
      }
      double ref = c0[i + j * ldc], mag = 0.0;
      for (int64_t r = 0; r < rows; ++r) {
        const double p = static_cast<double>(nvcuda::wmma::to_f(a[r * lda + i])) * nvcuda::wmma::to_f(bp[r * ldbp + j]);
        ref += p;
        mag += std::fabs(p);
      }
      if (!std::isfinite(got)) {
        worst = INFINITY;
        continue;
      }
      worst = std::max(worst, std::fabs(got - ref) / (mag + 1e-30));
    }
  // float32 sums of at most chain_rows products per chain, then of rows/chain_rows chains.
  const double bar = 4.0 * (chain_rows + static_cast<double>(rows) / chain_rows + 2) * 6e-8;
  const bool ok = worst <= bar && wrong_nan == 0;
  std::printf("%-5s %-28s m=%-4lld n=%-4lld rows=%-4lld chain=%-3d upper=%d: max rel err %.2e (bar %.1e), "
              "writes outside %lld -> %s\n",
              std::is_same_v<T, __half> ? "f16" : "bf16", name, (long long)m, (long long)n, (long long)rows, chain_rows,
              upper, worst, bar, (long long)wrong_nan, ok ? "ok" : "WRONG");
  return ok;
}

int main() {
  bool ok = true;
  unsigned seed = 1;
  for (int64_t d : {31, 128, 129, 200}) {
    ok &= run_case<__nv_bfloat16>("HH upper (A = B)", d, d, 257, 64, true, true, seed++);
    ok &= run_case<__half>("HH upper (A = B)", d, d, 96, 32, true, true, seed++);
  }
  ok &= run_case<__nv_bfloat16>("HL full (A != B, n < m)", 200, 37, 130, 32, false, false, seed++);
  ok &= run_case<__half>("HL full (A != B, n > m)", 40, 150, 33, 128, false, false, seed++);
  ok &= run_case<__nv_bfloat16>("LL upper, one row", 45, 45, 1, 32, true, true, seed++);
  ok &= run_case<__nv_bfloat16>("rows a multiple of the chain", 64, 64, 256, 128, true, true, seed++);
  std::printf(ok ? "ALL OK\n" : "FAILURES\n");
  return ok ? 0 : 1;
}
