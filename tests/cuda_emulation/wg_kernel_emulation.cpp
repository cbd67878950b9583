// Runs csrc/cuda/gram_wgmma.cu's kernel source (128 x 128 and 128 x 192 tiles) on the CPU (wmma_emulation.hpp + wgmma_emulation.hpp:
// copies and products completed only at the waits that retire them) against a float64 reference,
// on and off its 128-column tiles, with row counts that end mid-slab and mid-chain, enough slabs to
// wrap the 5-stage ring several times, chains of 1-4 slabs (the two warpgroups' chains staggered),
// both operand types, the upper-triangle and full cases, and NaN where nothing may be written.
// Every case runs under each of wgmma_emulation.hpp's three completion schedules (late; early
// copies; early products), which expose read-after-write and write-after-read hazards of the
// pipeline. Prints one line per case and schedule; exits 1 if any is wrong. Built and run by tests/test_cuda_emulation.py.
#define GEOMFAST_CUDA_EMULATE 1
#include "../../csrc/cuda/gram_wgmma.cu"
#include "gram_case.hpp"

#include <cmath>
#include <cstdio>

using namespace geomfast::cuda;

template <typename T, int BN = 128>
bool run_case(const char* name, int64_t m, int64_t n, int64_t rows, int chain_rows, bool upper, bool same,
              unsigned seed, double bar_override = 0.0) {
  // wg_padded: what CudaGram pads to (each operand may be A or B)
  GramCase<T> g(m, n, rows, wg_padded(m, BN), wg_padded(n, BN), upper, same, seed);
  const unsigned gx = static_cast<unsigned>((m + kWgBM - 1) / kWgBM), gy = static_cast<unsigned>((n + BN - 1) / BN);
  gf_emu::set_dynamic_smem(WgTile<BN>::kSmemBytes);
  gf_emu::g_async_leftover = 0;
  gf_emu::g_max_chain_steps = 0;
  gf_emu::launch(gx, gy, kWgThreads, [&] {
    wg_gram_kernel<T, BN>(g.a.data(), g.lda, m, g.bp(), g.ldb, n, rows, chain_rows / kWgBK, upper, g.c.data(), g.ldc);
  });
  double worst;
  int64_t wrong_nan;
  g.check(worst, wrong_nan);
  // float32 sums of at most chain_rows / 16 tensor-core steps per chain, then of the chains.
  const double bar = bar_override > 0 ? bar_override
                                      : 4.0 * (chain_rows / 16.0 + static_cast<double>(rows) / chain_rows + 2) * 6e-8;
  const long left = gf_emu::g_async_leftover.load();
  const long steps = gf_emu::g_max_chain_steps.load();  // the longest chain, in 16-row steps
  const bool ok = worst <= bar && wrong_nan == 0 && left == 0 && steps <= chain_rows / 16;
  std::printf("%-14s %-5s 128x%-3d %-34s m=%-4lld n=%-4lld rows=%-5lld chain=%-3d upper=%d: max rel err %.2e (bar %.1e), "
              "writes outside %lld, unretired async ops %ld, longest chain %ld rows -> %s\n",
              gf_emu::schedule_name(gf_emu::g_schedule), std::is_same_v<T, __half> ? "f16" : "bf16", BN, name,
              (long long)m, (long long)n, (long long)rows, chain_rows, upper, worst, bar, (long long)wrong_nan, left,
              16 * steps, ok ? "ok" : "WRONG");
  return ok;
}

int main() {
  bool ok = true;
  for (auto sched : {gf_emu::Schedule::kLate, gf_emu::Schedule::kEarlyCopy, gf_emu::Schedule::kEarlyMma}) {
    gf_emu::g_schedule = sched;
    unsigned seed = 1;
    for (int64_t d : {31, 128, 129, 200}) {
      ok &= run_case<__nv_bfloat16>("HH upper (A = B)", d, d, 257, 128, true, true, seed++);
      ok &= run_case<__half>("HH upper (A = B)", d, d, 96, 64, true, true, seed++);
    }
    ok &= run_case<__nv_bfloat16>("HL full (A != B, n < m)", 200, 37, 130, 64, false, false, seed++);
    ok &= run_case<__half>("HL full (A != B, n > m)", 40, 150, 33, 256, false, false, seed++);
    ok &= run_case<__nv_bfloat16>("LL upper, one row", 45, 45, 1, 64, true, true, seed++);
    ok &= run_case<__nv_bfloat16>("ring wrapped 3x, chains of 3 slabs", 130, 130, 1000, 192, true, true, seed++);
    ok &= run_case<__half>("ring wrapped, rows a multiple of 64", 64, 64, 704, 128, true, true, seed++);
    ok &= run_case<__nv_bfloat16>("ring wrapped, one chain per update", 100, 140, 640, 640, false, false, seed++);
    // 128 x 192 tiles: two column tiles at d = 200, tiles partly and wholly below the diagonal at 400
    for (int64_t d : {31, 200, 400})
      ok &= run_case<__nv_bfloat16, 192>("HH upper (A = B)", d, d, 257, 128, true, true, seed++);
    ok &= run_case<__half, 192>("HH upper, ring wrapped, chains of 3", 193, 193, 900, 192, true, true, seed++);
    ok &= run_case<__nv_bfloat16, 192>("HL full (A != B, n < m)", 300, 37, 130, 64, false, false, seed++);
    ok &= run_case<__half, 192>("HL full (A != B, n > m)", 40, 390, 70, 128, false, false, seed++);
  }
  // Under the modelled H100 accumulation (25-bit window, truncation: error ~3e-8 per tensor-core
  // step, relative to the running sum), 128-row chains of 8 steps plus 32 round-to-nearest adds
  // stay near 1e-6 at 4096 rows, while one chain of all 256 steps would reach ~8e-6: the bar of
  // 3e-6 checks that the chains really end every 128 rows.
  gf_emu::g_schedule = gf_emu::Schedule::kLate;
  nvcuda::wmma::g_mma_window = 25;
  ok &= run_case<__nv_bfloat16>("H100 model: chains end on time", 64, 64, 4096, 128, true, true, 99, 3e-6);
  nvcuda::wmma::g_mma_window = 0;
  std::printf(ok ? "ALL OK\n" : "FAILURES\n");
  return ok ? 0 : 1;
}
