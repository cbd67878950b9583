// CPU eigensolvers: LAPACK dsyevd (values only) and the shared randomized algorithm over BLAS.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <thread>

#include "cpu/blas.hpp"
#include "cpu/amx_exact.hpp"
#include "cpu/amx_gram.hpp"
#include "cpu/convert.hpp"
#include "cpu/eig_two_stage.hpp"
#include "cpu/parallel.hpp"
#include "cpu/row_kernels.hpp"
#include "cpu/symmetric.hpp"
#include "geomfast/backend.hpp"
#include "geomfast/eig.hpp"
#include "geomfast/errors.hpp"

namespace geomfast {
namespace {

// Copies a square view (any dtype/strides) to a float64 buffer in ROW-major order (a plain
// memcpy for C-contiguous float64). Read as column-major, the buffer holds Aᵀ, so LAPACK's
// lower triangle ('L') is the row-major upper triangle of A — the triangle we document.
std::vector<double> to_f64_rowmajor(const MatrixView& a) {
  const int64_t n = a.rows;
  std::vector<double> out(static_cast<size_t>(n * n));
  if (a.dtype == DType::kFloat64 && a.col_stride == 1 && a.row_stride == n) {
    std::memcpy(out.data(), a.data, sizeof(double) * out.size());
    return out;
  }
  auto copy = [&](auto loader_tag) {
    using L = decltype(loader_tag);
    const auto* base = static_cast<const typename L::raw*>(a.data);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) out[i * n + j] = L::get(base + i * a.row_stride + j * a.col_stride);
  };
  switch (a.dtype) {
    case DType::kFloat64: copy(cpu::Loader<DType::kFloat64>{}); break;
    case DType::kFloat32: copy(cpu::Loader<DType::kFloat32>{}); break;
    case DType::kFloat16: copy(cpu::Loader<DType::kFloat16>{}); break;
    case DType::kBFloat16: copy(cpu::Loader<DType::kBFloat16>{}); break;
  }
  return out;
}


// Eigenvalues (descending) of the symmetric n × n column-major matrix `a`, destroyed.
std::vector<double> syevd_values(double* a, int n, char uplo = 'U') {
  std::vector<double> w(n);
  if (n == 0) return w;
  int info = 0, lwork = -1, liwork = -1, iwork_q = 0;
  double work_q = 0;
  const char jobz = 'N';
  GF_BLAS(dsyevd_)(&jobz, &uplo, &n, a, &n, w.data(), &work_q, &lwork, &iwork_q, &liwork, &info, 1, 1);
  lwork = std::max(1, static_cast<int>(work_q));
  liwork = std::max(1, iwork_q);
  std::vector<double> work(lwork);
  std::vector<int> iwork(liwork);
  GF_BLAS(dsyevd_)(&jobz, &uplo, &n, a, &n, w.data(), work.data(), &lwork, iwork.data(), &liwork, &info, 1, 1);
  if (info != 0) GF_THROW(RuntimeError, "[eigvalsh] LAPACK dsyevd failed to converge (info=", info, ")");
  std::reverse(w.begin(), w.end());
  return w;
}

// Eigenvalues (descending) of the column-major lower triangle of the n × n matrix `a`, destroyed.
// The two-stage solver (cpu/eig_two_stage.cpp) from n = 3072, or from n = 1536 when the BLAS runs
// on one thread (as in eigvalsh_cpu_many). Measured on the 2-core Xeon
// (benchmarks/bench_eig_ab.py, interleaved), two-stage against dsyevd: with 2 BLAS threads 0.95×
// at n = 2048, 1.24× at 3072, 1.25× at 4096, 1.31× at 6144; with 1 thread 0.90× at 1024, 1.32× at
// 1536, 1.37× at 2048. GEOMFAST_CPU_EIG_FULL=dsyevd|two_stage forces one (A/B timing).
std::vector<double> full_values(double* a, int n) {
  int threads = 2;
#ifdef GF_BLAS_OPENBLAS
  threads = GF_BLAS(openblas_get_num_threads)();
#endif
  bool two_stage = n >= (threads == 1 ? 1536 : 3072);
  if (const char* v = std::getenv("GEOMFAST_CPU_EIG_FULL"); v && *v) {
    const std::string forced(v);
    if (forced == "dsyevd") two_stage = false;
    else if (forced == "two_stage") two_stage = true;
    else if (forced != "auto")
      GF_THROW(ValueError, "[eigvalsh] GEOMFAST_CPU_EIG_FULL must be 'auto', 'dsyevd' or 'two_stage', got '", forced,
               "'");
  }
  return two_stage ? cpu::two_stage_values(a, n) : syevd_values(a, n, 'L');
}

class CpuDenseOps final : public DenseOps {
 public:
  // a: the n × n operator, column-major, of which only the `uplo` triangle is read, unless
  // `full` says both triangles hold it (exactly symmetric): then products run as dgemm, which on
  // a thin block is about twice as fast as dsymm (measured here: 4096 × 4096 × 32 in 20 ms vs
  // 45 ms; dsymm spends most of its time expanding the triangle while packing).
  CpuDenseOps(const double* a, int64_t n, int uplo, bool full) : a_(a), n_(n), uplo_(uplo), full_(full) {}
  ~CpuDenseOps() override = default;
  Mat alloc(int64_t rows, int64_t cols) override {
    // Not zero-filled: the solver writes every part it reads, and its basis is sized for the
    // deepest Krylov space it may need (~77 MB at n = 4096, k = 256), of which a converged run
    // touches a fraction; zero-filling it cost page faults over all of it on every call.
    store_.emplace_back(new double[static_cast<size_t>(rows * cols)]);
    return Mat{store_.back().get(), rows, cols};
  }
  void release(Mat& m) override {
    for (auto& p : store_)
      if (p.get() == m.data) p.reset();
    m.data = nullptr;
  }
  void upload(const double* host, Mat& dst) override {
    std::memcpy(dst.data, host, sizeof(double) * static_cast<size_t>(dst.rows * dst.cols));
  }
  void apply(const Mat& x, Mat& y) override {
    if (full_) {
      GF_BLAS(cblas_dgemm)(blas::kColMajor, blas::kNoTrans, blas::kNoTrans, (int)n_, (int)x.cols, (int)n_, scale, a_,
                           (int)n_, x.data, (int)x.rows, 0.0, y.data, (int)y.rows);
      return;
    }
    // symm reads one triangle, so the caller's matrix is used as it is (no symmetrized copy).
    GF_BLAS(cblas_dsymm)(blas::kColMajor, blas::kLeft, uplo_, (int)n_, (int)x.cols, scale, a_, (int)n_, x.data,
                         (int)x.rows, 0.0, y.data, (int)y.rows);
  }
  void gemm_tn(const Mat& x, const Mat& y, Mat& b) override {
    GF_BLAS(cblas_dgemm)(blas::kColMajor, blas::kTrans, blas::kNoTrans, (int)x.cols, (int)y.cols, (int)x.rows, 1.0,
                         x.data, (int)x.rows, y.data, (int)y.rows, 0.0, b.data, (int)b.rows);
  }
  void gemm_nn(const Mat& x, const Mat& y, Mat& z, double alpha, double beta) override {
    GF_BLAS(cblas_dgemm)(blas::kColMajor, blas::kNoTrans, blas::kNoTrans, (int)x.rows, (int)y.cols, (int)x.cols, alpha,
                         x.data, (int)x.rows, y.data, (int)y.rows, beta, z.data, (int)z.rows);
  }
  void download(const Mat& src, double* host) override {
    std::memcpy(host, src.data, sizeof(double) * static_cast<size_t>(src.rows * src.cols));
  }
  bool orthonormalize(Mat& x) override {
    // CholeskyQR2: two rounds of R = chol(xᵀx), x = x R⁻¹. Householder QR when Cholesky breaks
    // down (x numerically rank-deficient).
    const int m = (int)x.rows, k = (int)x.cols;
    std::vector<double> r(static_cast<size_t>(k) * k);
    for (int round = 0; round < 2; ++round) {
      GF_BLAS(cblas_dsyrk)(blas::kColMajor, blas::kUpper, blas::kTrans, k, m, 1.0, x.data, m, 0.0, r.data(), k);
      int info = 0;
      const char up = 'U';
      GF_BLAS(dpotrf_)(&up, &k, r.data(), &k, &info, 1);
      if (info != 0) {
        householder(x);
        return true;
      }
      GF_BLAS(cblas_dtrsm)(blas::kColMajor, blas::kRight, blas::kUpper, blas::kNoTrans, blas::kNonUnit, m, k, 1.0,
                           r.data(), k, x.data, m);
    }
    return false;
  }
  std::vector<double> small_eigvalsh(const Mat& b) override {
    std::vector<double> c(b.data, b.data + b.rows * b.cols);
    // Symmetrize: b = qᵀAq is symmetric up to rounding.
    const int64_t k = b.rows;
    for (int64_t j = 0; j < k; ++j)
      for (int64_t i = 0; i < j; ++i) c[i + j * k] = 0.5 * (c[i + j * k] + c[j + i * k]);
    return syevd_values(c.data(), (int)k);
  }

 private:
  void householder(Mat& x) {
    const int m = (int)x.rows, k = (int)x.cols;
    std::vector<double> tau(k);
    int info = 0, lwork = -1;
    double wq = 0;
    GF_BLAS(dgeqrf_)(&m, &k, x.data, &m, tau.data(), &wq, &lwork, &info);
    lwork = std::max(1, (int)wq);
    std::vector<double> work(lwork);
    GF_BLAS(dgeqrf_)(&m, &k, x.data, &m, tau.data(), work.data(), &lwork, &info);
    GF_ASSERT(info == 0, "dgeqrf info=", info);
    lwork = -1;
    GF_BLAS(dorgqr_)(&m, &k, &k, x.data, &m, tau.data(), &wq, &lwork, &info);
    lwork = std::max(1, (int)wq);
    work.resize(lwork);
    GF_BLAS(dorgqr_)(&m, &k, &k, x.data, &m, tau.data(), work.data(), &lwork, &info);
    GF_ASSERT(info == 0, "dorgqr info=", info);
  }
  const double* a_;
  int64_t n_;
  int uplo_;
  bool full_;
  std::vector<std::unique_ptr<double[]>> store_;
};

}  // namespace

namespace {
bool randomized_pays(const EigOptions& opt, int64_t n) {
  // A Krylov space as wide as the matrix gains nothing over the dense solver.
  return opt.method == EigMethod::kRandomized && opt.k + std::max<int64_t>(opt.oversample, 0) < n;
}
// max |m_ij - m_ji| / max |m_ij| of the n × n matrix m (0: exactly symmetric).
double relative_asymmetry(const double* m, int64_t n) {
  double diff = 0.0, mag = 0.0;
  for (int64_t i = 0; i < n; ++i) mag = std::max(mag, std::abs(m[i * n + i]));
  cpu::for_upper_pairs(n, [&](int64_t i, int64_t j) {
    const double u = m[i * n + j], l = m[j * n + i];
    diff = std::max(diff, std::abs(u - l));
    mag = std::max(mag, std::max(std::abs(u), std::abs(l)));
    return true;
  });
  return mag > 0.0 ? diff / mag : 0.0;
}
void check_finite(const double* m, size_t count) {
  int64_t bad = 0;
  constexpr size_t kRun = size_t{1} << 20;  // RowScan counts in 32 bits
  for (size_t i = 0; i < count; i += kRun)
    bad += cpu::scan_row_f64(m + i, static_cast<int64_t>(std::min(kRun, count - i))).nonfinite;
  if (bad) GF_THROW(ValueError, "[eigvalsh] the matrix holds ", bad, " non-finite value(s) (NaN or Inf)");
}
}  // namespace

EigResult eigvalsh_cpu(const MatrixView& a, const EigOptions& opt) {
  if (a.device.type != DeviceType::kCPU)
    GF_THROW(ValueError, "[eigvalsh] expected a cpu matrix, got one on ", a.device.str());
  if (a.rows != a.cols)
    GF_THROW(ValueError, "[eigvalsh] expected a square matrix, got shape (", a.rows, ", ", a.cols, ")");
  if (a.rows > 46340) GF_THROW(ValueError, "[eigvalsh] n must be <= 46340 (32-bit LAPACK), got ", a.rows);
  const int64_t n = a.rows;
  if (opt.method == EigMethod::kRandomized && (opt.k < 1 || opt.k > n))
    GF_THROW(ValueError, "[eigvalsh] k must be in [1, ", n, "], got ", opt.k);
  // The Krylov solver only multiplies by A: contiguous float64 input is used in place, reading
  // its row-major upper triangle (column-major 'L' for C order, 'U' for Fortran order).
  const bool c_order = a.col_stride == 1 && a.row_stride == n, f_order = a.row_stride == 1 && a.col_stride == n;
  if (randomized_pays(opt, n) && a.dtype == DType::kFloat64 && (c_order || f_order)) {
    const double* m = static_cast<const double*>(a.data);
    check_finite(m, static_cast<size_t>(n * n));
    // The documented triangle is what counts; products use both only when they agree exactly.
    // (Transposition leaves the asymmetry measure unchanged, so either order is read as is.)
    const double asym = relative_asymmetry(m, n);
    CpuDenseOps ops(m, n, c_order ? blas::kLower : blas::kUpper, asym == 0.0);
    EigResult res = randomized_eigvalsh(ops, n, opt);
    warn_if_asymmetric(asym, res);
    return res;
  }
  std::vector<double> m = to_f64_rowmajor(a);
  check_finite(m.data(), m.size());
  const double asym = relative_asymmetry(m.data(), n);
  EigResult res = eigvalsh_cpu_owned(std::move(m), n, opt);
  warn_if_asymmetric(asym, res);
  return res;
}

std::vector<EigResult> eigvalsh_cpu_batch(const std::vector<MatrixView>& as, const EigOptions& opt) {
  if (as.empty()) return {};
  const int64_t n = as[0].rows;
  for (const MatrixView& a : as)
    if (a.device.type != DeviceType::kCPU || a.rows != n || a.cols != n)
      GF_THROW(ValueError, "[eigvalsh] expected a batch of cpu matrices of shape (", n, ", ", n, "), got one of (",
               a.rows, ", ", a.cols, ") on ", a.device.str());
  if (n > 46340) GF_THROW(ValueError, "[eigvalsh] n must be <= 46340 (32-bit LAPACK), got ", n);
  if (opt.method == EigMethod::kRandomized && (opt.k < 1 || opt.k > n))
    GF_THROW(ValueError, "[eigvalsh] k must be in [1, ", n, "], got ", opt.k);
  std::vector<double> asym(as.size(), 0.0);
  std::vector<EigResult> out = eigvalsh_cpu_many(
      as.size(),
      [&](size_t i) {
        HostProblem p;
        p.n = n;
        p.matrix = to_f64_rowmajor(as[i]);
        try {
          check_finite(p.matrix.data(), p.matrix.size());
        } catch (const ValueError& e) {
          throw in_batch(i, e);
        }
        asym[i] = relative_asymmetry(p.matrix.data(), n);
        return p;
      },
      n, opt);
  for (size_t i = 0; i < out.size(); ++i) warn_if_asymmetric(asym[i], out[i]);
  return out;
}

EigResult eigvalsh_cpu_owned(std::vector<double>&& m, int64_t n, const EigOptions& opt) {
  GF_ASSERT(static_cast<int64_t>(m.size()) == n * n, "size ", m.size(), " n ", n);
  check_finite(m.data(), m.size());
  if (randomized_pays(opt, n)) {
    cpu::mirror_upper(m.data(), n);  // our own copy: make both triangles the documented (upper) one
    CpuDenseOps ops(m.data(), n, blas::kLower, true);  // row-major upper = column-major lower
    return randomized_eigvalsh(ops, n, opt);
  }
  EigResult res;
  res.values = full_values(m.data(), (int)n);
  if (opt.method == EigMethod::kRandomized) res.values.resize(opt.k);
  return res;
}

std::vector<EigResult> eigvalsh_cpu_many(size_t count, const std::function<HostProblem(size_t)>& build,
                                         int64_t max_dim, const EigOptions& opt) {
  // One solve at a time leaves cores idle in its sequential parts (dsterf, the bulge chasing);
  // two at once on the 2-core Xeon did two d = 4096 solves in 4.0 s against 5.3 s one after the
  // other with 2 BLAS threads each.
  constexpr int64_t kMinDim = 512;
  constexpr double kWorkBytes = 4.0 * (1 << 30);
  const double per_solve = 16.0 * static_cast<double>(max_dim) * static_cast<double>(max_dim);  // ~2 d² doubles
  const int64_t by_memory = std::max<int64_t>(1, static_cast<int64_t>(kWorkBytes / std::max(per_solve, 1.0)));
  const int64_t workers = std::min<int64_t>(
      {static_cast<int64_t>(count), static_cast<int64_t>(cpu::ThreadPool::instance().size()), by_memory});
  std::vector<EigResult> out(count);
  if (workers < 2 || max_dim < kMinDim) {
    for (size_t i = 0; i < count; ++i) {
      HostProblem p = build(i);
      out[i] = eigvalsh_cpu_owned(std::move(p.matrix), p.n, opt);
    }
    return out;
  }
  std::vector<std::exception_ptr> errors(count);
  for (size_t w0 = 0; w0 < count; w0 += static_cast<size_t>(workers)) {
    const size_t w1 = std::min(count, w0 + static_cast<size_t>(workers));
    // The wave's matrices first, here, before the BLAS lock: building one may take its
    // accumulator's lock and run that accumulator's deferred products (which take the BLAS lock).
    std::vector<HostProblem> wave(w1 - w0);
    for (size_t i = w0; i < w1; ++i) {
      try {
        wave[i - w0] = build(i);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
    auto solve = [&](size_t i) {
      if (errors[i]) return;
      try {
        out[i] = eigvalsh_cpu_owned(std::move(wave[i - w0].matrix), wave[i - w0].n, opt);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    };
    // OpenBLAS's thread count is global: every solve of the wave runs single-threaded BLAS.
    std::lock_guard<std::mutex> blk(blas::mode_mutex());
    blas::SingleThreadedScope single;
    std::vector<std::thread> threads;
    for (size_t i = w0 + 1; i < w1; ++i) threads.emplace_back(solve, i);
    solve(w0);
    for (auto& t : threads) t.join();
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

BackendInfo cpu_backend_info() {
  BackendInfo info;
  info.built = info.usable = true;
  info.device_count = 1;
#ifdef GF_BLAS_NAME
  info.details = std::string("BLAS/LAPACK: ") + GF_BLAS_NAME + "; ";
#endif
  // Which product the 'fast' Gram runs here.
  info.details += cpu::amx::available() ? "fast Gram: AMX-BF16 three-way split products"
                                        : "fast Gram: float32 syrk (no AMX: " + cpu::amx::unavailable_reason() + ")";
  info.details += cpu::amx::exact_available()
                      ? "; highest Gram of bf16/f16: exact AMX-INT8 digit products"
                      : "; highest Gram: float64 syrk (no AMX-INT8: " + cpu::amx::exact_unavailable_reason() + ")";
  return info;
}

}  // namespace geomfast
