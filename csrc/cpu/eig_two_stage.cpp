// All eigenvalues of a dense symmetric matrix in two stages: our blocked reduction to a band
// (every flop in level-3 BLAS), LAPACK's bulge chasing from the band to a tridiagonal matrix
// (dsytrd_sb2st), and the tridiagonal eigenvalues (dsterf).
//
// Why not dsyevd: its one-stage reduction (dsytrd) does half of its flops in dsymv, which streams
// the trailing matrix from memory once per column; at n = 4096 dsytrd is ~90 % of dsyevd's time
// (3.2 of 3.5 s on the 2-core Xeon of benchmarks/RESULTS.md). LAPACK's own dense-to-band step
// (dsytrd_sy2sb) was no faster there (2.3–2.6 s). Ours keeps both triangles, so that its two
// products per panel are plain dgemm (OpenBLAS's dsymm ran at half of dgemm's speed on these thin
// shapes, and a tiled dsymm of our own over dgemm calls no faster): it does 2n³ flops instead of
// the minimal 4n³/3, at ~90 GFLOP/s, in ~1.6 s at n = 4096; then sb2st ~0.6 s, dsterf ~0.25 s.
// Tried and not kept: our own bulge chaser with sweeps pipelined over threads (each sweep's task
// k waiting for the previous sweep's task k + 2): correct, same speed as sb2st on one thread,
// and no faster on two (0.09–0.12 s vs 0.10–0.14 s at n = 2048), slower while OpenBLAS's
// threads still spin after the band step — every task reads what the other core just wrote.
// Since 2026-12-04 the reduction works on the lower triangle alone by default: W = A22 V by dsymm
// and the trailing update by dsyr2k, 4n³/3 flops instead of 2n³, the update delayed over blocks of
// 4 panels (reduce_to_band_lower). On the 2-core Zen 4 (OpenBLAS 0.3.31) dsymm runs as fast as
// dgemm on these shapes, and dsyr2k of rank 2b = 64 does the update in half the dgemm's time:
// 3.09 s against 3.76 s at n = 4096 (median of 4 interleaved rounds; torch / MKL 3.29 s), 1.46
// against 1.63 s at 3072; delaying the update to one dsyr2k of rank 256 per 4 panels then gave
// 2.71 s against 3.16 s (interleaved with torch, 3 rounds once the VM was quiet: 4 panels 2.79 s,
// 1 panel 3.03 s, the dgemm reduction 3.65 s, torch / MKL 2.77 s). Where dsymm runs at half dgemm's speed (the 2-core Xeon above) the gain
// in the update pays for the loss in W. GEOMFAST_CPU_BAND=gemm forces the two-triangle dgemm
// reduction (A/B timing). A variant with W from two dtrmm (A22 = L + Lᵀ − D) was measured
// alongside: 3.19 s, no better than dsymm.
// Also tried and not kept (2026-12-03): a lookahead reduction whose trailing update runs over the
// lower 256² tiles only, fused with the next panel's A22·V while each tile is in cache (our
// threads, single-threaded BLAS per tile; 2/3 of the flops): the band step took the same time as
// the full-matrix dgemm (2.64 vs 2.84 s at n = 4096, 0.63 vs 0.60 s at 2048 on one thread; noise
// ±10 %) — the per-tile dgemm calls of depth 32–64 run slower than one large call.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/blas.hpp"
#include "cpu/eig_two_stage.hpp"
#include "cpu/symmetric.hpp"
#include "geomfast/errors.hpp"

extern "C" {
void GF_BLAS(cblas_dtrmm)(int order, int side, int uplo, int trans, int diag, int m, int n, double alpha,
                          const double* a, int lda, double* b, int ldb);
void GF_BLAS(dlarft_)(const char* direct, const char* storev, const int* n, const int* k, const double* v,
                      const int* ldv, const double* tau, double* t, const int* ldt, std::size_t, std::size_t);
void GF_BLAS(dsytrd_sb2st_)(const char* stage1, const char* vect, const char* uplo, const int* n, const int* kd,
                            double* ab, const int* ldab, double* d, double* e, double* hous, const int* lhous,
                            double* work, const int* lwork, int* info, std::size_t, std::size_t, std::size_t);
void GF_BLAS(dsterf_)(const int* n, double* d, double* e, int* info);
void GF_BLAS(cblas_dsyr2k)(int order, int uplo, int trans, int n, int k, double alpha, const double* a, int lda,
                           const double* b, int ldb, double beta, double* c, int ldc);
}

namespace geomfast::cpu {
namespace {

using namespace blas;

// dgeqrf's workspace for the largest panel, (n − b) × b.
std::vector<double> panel_qr_workspace(double* a, int n, int b) {
  double q = 0;
  const int m = std::max(1, n - b), query = -1;
  int info = 0;
  std::vector<double> tau(b);
  GF_BLAS(dgeqrf_)(&m, &b, a, &n, tau.data(), &q, &query, &info);
  return std::vector<double>(static_cast<size_t>(std::max(1, static_cast<int>(q))));
}

// V of a panel factored by dgeqrf (its kb reflectors under the band, ld n): column c gets
// `above` + c zeros, the unit diagonal, then the reflector's tail, in v (ld ldv).
void copy_reflectors(const double* panel, int n, int m, int kb, int above, double* v, int ldv) {
  for (int c = 0; c < kb; ++c) {
    double* vc = v + static_cast<size_t>(c) * ldv;
    std::fill(vc, vc + above + c, 0.0);
    vc[above + c] = 1.0;
    std::memcpy(vc + above + c + 1, panel + static_cast<size_t>(c) * n + c + 1, sizeof(double) * (m - c - 1));
  }
}

// W (m × kb, ld ldw) = A22 V on entry, Z = W T − ½ V (Tᵀ Vᵀ W T) on return: the trailing update is
// then A22 − V Zᵀ − Z Vᵀ. T (ld b) is the reflectors' triangular factor, s a kb × kb scratch (ld b).
void w_to_z(int m, int kb, const double* v, int ldv, double* w, int ldw, const double* t, int b, double* s) {
  GF_BLAS(cblas_dtrmm)(kColMajor, kRight, kUpper, kNoTrans, kNonUnit, m, kb, 1.0, t, b, w, ldw);
  GF_BLAS(cblas_dgemm)(kColMajor, kTrans, kNoTrans, kb, kb, m, 1.0, v, ldv, w, ldw, 0.0, s, b);
  GF_BLAS(cblas_dtrmm)(kColMajor, kLeft, kUpper, kTrans, kNonUnit, kb, kb, 1.0, t, b, s, b);
  GF_BLAS(cblas_dgemm)(kColMajor, kNoTrans, kNoTrans, m, kb, kb, -0.5, v, ldv, s, b, 1.0, w, ldw);
}

// Reduces the symmetric n × n column-major matrix `a` (lower triangle read and overwritten) to a
// band of half-width b by orthogonal similarity, panel by panel: the QR factorisation of the
// m × b block under the band gives Q = I − V T Vᵀ, and the trailing block is replaced by
// Qᵀ A22 Q = A22 − (V Zᵀ + Z Vᵀ), with W = A22 V T and Z = W − ½ V (Tᵀ Vᵀ W).
// Both triangles are kept (the caller mirrors the lower one first), so both products are dgemm.
// On return the band (a[i + j n] for 0 ≤ i − j ≤ b) holds the reduced matrix; below it, the
// reflectors. (GEOMFAST_CPU_BAND=gemm; the default is reduce_to_band_lower.)
void reduce_to_band(double* a, int n, int b) {
  std::vector<double> tau(b), t(static_cast<size_t>(b) * b), s(static_cast<size_t>(b) * b);
  std::vector<double> v;
  std::vector<double> work = panel_qr_workspace(a, n, b);
  int lwork = static_cast<int>(work.size()), info = 0;
  const size_t panel_elems = static_cast<size_t>(std::max(0, n - b)) * b;
  v.resize(2 * panel_elems);
  std::vector<double> zv(2 * panel_elems);
  for (int j = 0; j + b < n - 1; j += b) {
    int m = n - j - b;  // rows under the band in this panel (>= 2)
    double* panel = a + (j + b) + static_cast<size_t>(j) * n;
    GF_BLAS(dgeqrf_)(&m, &b, panel, &n, tau.data(), work.data(), &lwork, &info);
    GF_ASSERT(info == 0, "dgeqrf info=", info);
    int kb = std::min(b, m);  // reflectors
    // V: the reflectors with their unit diagonal, zeros above it (R stays in the band).
    copy_reflectors(panel, n, m, kb, 0, v.data(), m);
    const char fwd = 'F', col = 'C';
    GF_BLAS(dlarft_)(&fwd, &col, &m, &kb, v.data(), &m, tau.data(), t.data(), &b, 1, 1);
    double* z = v.data() + static_cast<size_t>(m) * kb;  // W, then Z, right after V: [V Z]
    double* a22 = a + (j + b) + static_cast<size_t>(j + b) * n;
    // W = A22 V, then Z
    GF_BLAS(cblas_dgemm)(kColMajor, kNoTrans, kNoTrans, m, kb, m, 1.0, a22, n, v.data(), m, 0.0, z, m);
    w_to_z(m, kb, v.data(), m, z, m, t.data(), b, s.data());
    // A22 −= V Zᵀ + Z Vᵀ = [V Z] [Z V]ᵀ, both triangles, in one product of depth 2 kb
    std::memcpy(zv.data(), z, sizeof(double) * m * kb);
    std::memcpy(zv.data() + static_cast<size_t>(m) * kb, v.data(), sizeof(double) * m * kb);
    GF_BLAS(cblas_dgemm)(kColMajor, kNoTrans, kTrans, m, m, 2 * kb, -1.0, v.data(), m, zv.data(), m, 1.0, a22, n);
  }
}

// The same reduction on the lower triangle alone (the default): W = A22 V by dsymm and the
// trailing update by dsyr2k (4n³/3 flops instead of 2n³), the update delayed over blocks of p
// panels (the blocking of LAPACK's dlatrd, one level up): panel k's W comes from the matrix as it
// was at the start of its block, corrected by the reflectors accumulated since, [VA ZA] (global
// rows, zero above each panel); each panel's own columns are brought up to date just before its
// QR; the matrix beyond the block is updated once per block by one dsyr2k of rank 2pb instead of p
// of rank 2b (thin products run far from the BLAS's peak).
void reduce_to_band_lower(double* a, int n, int b, int p) {
  std::vector<double> tau(b), t(static_cast<size_t>(b) * b), s(static_cast<size_t>(b) * b);
  std::vector<double> work = panel_qr_workspace(a, n, b);
  int lwork = static_cast<int>(work.size()), info = 0;
  const size_t nn = static_cast<size_t>(n);
  const int kmax = p * b;
  std::vector<double> va(nn * kmax), za(nn * kmax), tmp(static_cast<size_t>(kmax) * b);
  auto at = [n](double* base, int row, int col) { return base + row + static_cast<size_t>(col) * n; };
  for (int j0 = 0; j0 + b < n - 1; j0 += kmax) {
    int kacc = 0;  // reflectors accumulated in this block
    int next = j0;  // first column the block's panels have not reduced
    for (int k = 0; k < p; ++k) {
      const int j = j0 + k * b;
      if (j + b >= n - 1) break;
      const int m = n - j - b;
      if (kacc > 0) {  // panel columns j .. j+b, rows j .. n, brought up to date
        GF_BLAS(cblas_dgemm)(kColMajor, kNoTrans, kTrans, n - j, b, kacc, -1.0, at(va.data(), j, 0), n,
                             at(za.data(), j, 0), n, 1.0, at(a, j, j), n);
        GF_BLAS(cblas_dgemm)(kColMajor, kNoTrans, kTrans, n - j, b, kacc, -1.0, at(za.data(), j, 0), n,
                             at(va.data(), j, 0), n, 1.0, at(a, j, j), n);
      }
      double* panel = at(a, j + b, j);
      GF_BLAS(dgeqrf_)(&m, &b, panel, &n, tau.data(), work.data(), &lwork, &info);
      GF_ASSERT(info == 0, "dgeqrf info=", info);
      const int kb = std::min(b, m);
      copy_reflectors(panel, n, m, kb, j + b, at(va.data(), 0, kacc), n);  // global rows: zeros above
      for (int c = 0; c < kb; ++c)  // and Z's zeros above
        std::fill(at(za.data(), 0, kacc + c), at(za.data(), j + b, kacc + c), 0.0);
      double* vk = at(va.data(), j + b, kacc);
      double* wk = at(za.data(), j + b, kacc);
      const char fwd = 'F', col = 'C';
      GF_BLAS(dlarft_)(&fwd, &col, &m, &kb, vk, &n, tau.data(), t.data(), &b, 1, 1);
      // W = A22 V, A22 = (block-start A22) − VA ZAᵀ − ZA VAᵀ
      GF_BLAS(cblas_dsymm)(kColMajor, kLeft, kLower, m, kb, 1.0, at(a, j + b, j + b), n, vk, n, 0.0, wk, n);
      if (kacc > 0) {
        GF_BLAS(cblas_dgemm)(kColMajor, kTrans, kNoTrans, kacc, kb, m, 1.0, at(za.data(), j + b, 0), n, vk, n,
                             0.0, tmp.data(), kacc);
        GF_BLAS(cblas_dgemm)(kColMajor, kNoTrans, kNoTrans, m, kb, kacc, -1.0, at(va.data(), j + b, 0), n,
                             tmp.data(), kacc, 1.0, wk, n);
        GF_BLAS(cblas_dgemm)(kColMajor, kTrans, kNoTrans, kacc, kb, m, 1.0, at(va.data(), j + b, 0), n, vk, n,
                             0.0, tmp.data(), kacc);
        GF_BLAS(cblas_dgemm)(kColMajor, kNoTrans, kNoTrans, m, kb, kacc, -1.0, at(za.data(), j + b, 0), n,
                             tmp.data(), kacc, 1.0, wk, n);
      }
      w_to_z(m, kb, vk, n, wk, n, t.data(), b, s.data());
      kacc += kb;
      next = j + b;
    }
    if (kacc > 0 && next < n)  // the matrix beyond the block: A −= VA ZAᵀ + ZA VAᵀ, lower triangle
      GF_BLAS(cblas_dsyr2k)(kColMajor, kLower, kNoTrans, n - next, kacc, -1.0, at(va.data(), next, 0), n,
                            at(za.data(), next, 0), n, 1.0, at(a, next, next), n);
  }
}

}  // namespace

// Panels per delayed trailing update (a dsyr2k of rank 2 · 4 · 32 = 256). At n = 4096 on the
// 2-core Zen 4, median of 3 runs: 1 panel 3.16 s, 2 2.99 s, 4 2.71 s, 6 3.0 s, 8 2.87 s.
constexpr int kDelayedPanels = 4;

int two_stage_bandwidth(int n) {
  // Wider panels run the BLAS faster, but the bulge chasing costs ~n²·b on one core. Measured at
  // n = 4096 on 2 cores (whole solve): b = 16 3.8 s, 24 and 32 2.7–3.0 s, 48 3.2 s, 64 3.2 s.
  return std::min(32, std::max(1, n - 1));
}

std::vector<double> two_stage_values(double* a, int n) {
  std::vector<double> d(n), e(std::max(1, n - 1));
  if (n == 0) return d;
  const int b = two_stage_bandwidth(n);
  const char* band = std::getenv("GEOMFAST_CPU_BAND");
  const std::string how = band ? band : "";
  if (!how.empty() && how != "auto" && how != "symm" && how != "gemm")
    GF_THROW(ValueError, "[eigvalsh] GEOMFAST_CPU_BAND must be 'auto', 'symm' or 'gemm', got '", how, "'");
  if (how == "gemm") {
    mirror_upper(a, n);  // column-major lower onto upper: the products run as dgemm
    reduce_to_band(a, n, b);
  } else {
    reduce_to_band_lower(a, n, b, kDelayedPanels);
  }
  // Band storage for sb2st ('L'): ab[(i − j) + j (b + 1)] = a[i + j n], 0 ≤ i − j ≤ b.
  const int ldab = b + 1;
  std::vector<double> ab(static_cast<size_t>(ldab) * n, 0.0);
  for (int j = 0; j < n; ++j) {
    const int len = std::min(ldab, n - j);
    std::memcpy(ab.data() + static_cast<size_t>(j) * ldab, a + j + static_cast<size_t>(j) * n, sizeof(double) * len);
  }
  const char stage1 = 'N', vect = 'N', lo = 'L';
  int info = 0, lhous = -1, lwork = -1;
  double hq = 0, wq = 0;
  GF_BLAS(dsytrd_sb2st_)(&stage1, &vect, &lo, &n, &b, ab.data(), &ldab, d.data(), e.data(), &hq, &lhous, &wq, &lwork,
                         &info, 1, 1, 1);
  GF_ASSERT(info == 0, "dsytrd_sb2st workspace query info=", info);
  lhous = std::max(1, static_cast<int>(hq));
  lwork = std::max(1, static_cast<int>(wq));
  std::vector<double> hous(lhous), work(lwork);
  GF_BLAS(dsytrd_sb2st_)(&stage1, &vect, &lo, &n, &b, ab.data(), &ldab, d.data(), e.data(), hous.data(), &lhous,
                         work.data(), &lwork, &info, 1, 1, 1);
  GF_ASSERT(info == 0, "dsytrd_sb2st info=", info);
  GF_BLAS(dsterf_)(&n, d.data(), e.data(), &info);
  if (info != 0) GF_THROW(RuntimeError, "[eigvalsh] LAPACK dsterf failed to converge (info=", info, ")");
  std::reverse(d.begin(), d.end());  // descending
  return d;
}

}  // namespace geomfast::cpu
