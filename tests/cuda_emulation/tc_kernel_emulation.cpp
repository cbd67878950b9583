// Runs csrc/cuda/gram_tc.cu's kernel source on the CPU (wmma_emulation.hpp) against a float64
// reference, on and off its 128-column tiles, with row counts that end mid-slab and mid-chain,
// for both operand types and for the upper-triangle and full cases. Prints one line per case;
// exits 1 if any case is wrong. Built and run by tests/test_cuda_emulation.py.
#define GEOMFAST_CUDA_EMULATE 1
#include "../../csrc/cuda/gram_tc.cu"
#include "gram_case.hpp"

#include <cmath>
#include <cstdio>

using namespace geomfast::cuda;

template <typename T>
bool run_case(const char* name, int64_t m, int64_t n, int64_t rows, int chain_rows, bool upper, bool same,
              unsigned seed) {
  GramCase<T> g(m, n, rows, (m + kTcTile - 1) / kTcTile * kTcTile, (n + kTcTile - 1) / kTcTile * kTcTile, upper,
                same, seed);
  const unsigned gx = static_cast<unsigned>((m + kTcTile - 1) / kTcTile), gy = static_cast<unsigned>((n + kTcTile - 1) / kTcTile);
  gf_emu::launch(gx, gy, 256, [&] {
    tc_gram_kernel<T>(g.a.data(), g.lda, m, g.bp(), g.ldb, n, rows, chain_rows / 32, upper, g.c.data(), g.ldc);
  });
  double worst;
  int64_t wrong_nan;
  g.check(worst, wrong_nan);
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
