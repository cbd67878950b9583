// CPU eigensolvers: LAPACK dsyevd (values only) and the shared randomized algorithm over BLAS.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "cpu/blas.hpp"
#include "cpu/convert.hpp"
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

// Mirrors the row-major upper triangle into the lower one, in cache-sized tiles.
void symmetrize_from_upper(double* m, int64_t n) {
  constexpr int64_t T = 64;
  for (int64_t ib = 0; ib < n; ib += T)
    for (int64_t jb = ib; jb < n; jb += T)
      for (int64_t i = ib; i < std::min(ib + T, n); ++i)
        for (int64_t j = std::max(jb, i + 1); j < std::min(jb + T, n); ++j) m[j * n + i] = m[i * n + j];
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

class CpuDenseOps final : public DenseOps {
 public:
  CpuDenseOps(const double* a, int64_t n) : a_(a), n_(n) {}
  ~CpuDenseOps() override = default;
  Mat alloc(int64_t rows, int64_t cols) override {
    store_.emplace_back(new double[static_cast<size_t>(rows * cols)]());
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
    // The operator is symmetric and stored in full, so a plain gemm (faster than symm in OpenBLAS).
    GF_BLAS(cblas_dgemm)(blas::kColMajor, blas::kNoTrans, blas::kNoTrans, (int)n_, (int)x.cols, (int)n_, 1.0, a_,
                         (int)n_, x.data, (int)x.rows, 0.0, y.data, (int)y.rows);
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
  void orthonormalize(Mat& x) override {
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
        return;
      }
      GF_BLAS(cblas_dtrsm)(blas::kColMajor, blas::kRight, blas::kUpper, blas::kNoTrans, blas::kNonUnit, m, k, 1.0,
                           r.data(), k, x.data, m);
    }
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
  std::vector<std::unique_ptr<double[]>> store_;
};

}  // namespace

EigResult eigvalsh_cpu(const MatrixView& a, const EigOptions& opt) {
  if (a.device.type != DeviceType::kCPU)
    GF_THROW(ValueError, "[eigvalsh] expected a cpu matrix, got one on ", a.device.str());
  if (a.rows != a.cols)
    GF_THROW(ValueError, "[eigvalsh] expected a square matrix, got shape (", a.rows, ", ", a.cols, ")");
  if (a.rows > 46340) GF_THROW(ValueError, "[eigvalsh] n must be <= 46340 (32-bit LAPACK), got ", a.rows);
  const int64_t n = a.rows;
  std::vector<double> m = to_f64_rowmajor(a);
  int64_t bad = 0;
  for (double v : m) bad += !std::isfinite(v);
  if (bad) GF_THROW(ValueError, "[eigvalsh] the matrix holds ", bad, " non-finite value(s) (NaN or Inf)");

  EigResult res;
  const bool randomized = opt.method == EigMethod::kRandomized;
  if (randomized) {
    if (opt.k < 1 || opt.k > n) GF_THROW(ValueError, "[eigvalsh] k must be in [1, ", n, "], got ", opt.k);
    // A block as wide as the matrix gains nothing over the dense solver.
    if (opt.k + std::max<int64_t>(opt.oversample, 0) < n) {
      // The full symmetric matrix, from the documented (row-major upper) triangle.
      symmetrize_from_upper(m.data(), n);
      CpuDenseOps ops(m.data(), n);
      return randomized_eigvalsh(ops, n, opt);
    }
  }
  res.values = syevd_values(m.data(), (int)n, 'L');
  if (randomized) res.values.resize(opt.k);
  return res;
}

BackendInfo cpu_backend_info() {
  BackendInfo info;
  info.built = info.usable = true;
  info.device_count = 1;
#ifdef GF_BLAS_NAME
  info.details = std::string("BLAS/LAPACK: ") + GF_BLAS_NAME;
#endif
  return info;
}

}  // namespace geomfast
