// Host stand-ins for the cuSOLVER and cuBLAS (level 3) calls of csrc/cuda/eig_cuda.cu, on LAPACK and
// CBLAS from the scipy-openblas32 wheel, with cuSOLVER's documented semantics: column-major
// operands; syevd returns ascending eigenvalues of the `uplo` triangle and destroys A (here: A is
// filled with NaN, so code that reused it would show); potrf/geqrf/orgqr report through *info.
// Also the CPU solver the CUDA one falls back on (eigvalsh_cpu: LAPACK dsyevd on the upper
// triangle, descending), standing in for csrc/cpu/eig_cpu.cpp, which is tested on its own.
//
// GF_FAKE_SYEVD_FAIL=f32 makes every float32 syevd report failure (info = 1), =all every syevd:
// the fallbacks of eigvalsh_cuda can then be exercised.
#include <cublas_v2.h>
#include <cusolverDn.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "geomfast/eig.hpp"
#include "geomfast/errors.hpp"
#include "geomfast/gram.hpp"

extern "C" {
int scipy_LAPACKE_dsyevd(int layout, char jobz, char uplo, int n, double* a, int lda, double* w);
int scipy_LAPACKE_ssyevd(int layout, char jobz, char uplo, int n, float* a, int lda, float* w);
int scipy_LAPACKE_dpotrf(int layout, char uplo, int n, double* a, int lda);
int scipy_LAPACKE_dgeqrf(int layout, int m, int n, double* a, int lda, double* tau);
int scipy_LAPACKE_dorgqr(int layout, int m, int n, int k, double* a, int lda, const double* tau);
void scipy_cblas_dgemm(int layout, int ta, int tb, int m, int n, int k, double alpha, const double* a, int lda,
                       const double* b, int ldb, double beta, double* c, int ldc);
void scipy_cblas_dtrsm(int layout, int side, int uplo, int ta, int diag, int m, int n, double alpha, const double* a,
                       int lda, double* b, int ldb);
}

namespace {
constexpr int kColMajor = 102;  // LAPACK_COL_MAJOR / CblasColMajor
int cblas_op(cublasOperation_t t) { return t == CUBLAS_OP_N ? 111 : 112; }
char uplo_char(cublasFillMode_t u) { return u == CUBLAS_FILL_MODE_UPPER ? 'U' : 'L'; }
bool forced_failure(bool single) {
  const char* v = std::getenv("GF_FAKE_SYEVD_FAIL");
  if (!v) return false;
  return std::strcmp(v, "all") == 0 || (single && std::strcmp(v, "f32") == 0);
}
}  // namespace

extern "C" {

cublasStatus_t CUBLASWINAPI cublasDgemm_v2(cublasHandle_t, cublasOperation_t transa, cublasOperation_t transb, int m,
                                           int n, int k, const double* alpha, const double* A, int lda, const double* B,
                                           int ldb, const double* beta, double* C, int ldc) {
  if (ldc < std::max(1, m)) return CUBLAS_STATUS_INVALID_VALUE;
  scipy_cblas_dgemm(kColMajor, cblas_op(transa), cblas_op(transb), m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasDtrsm_v2(cublasHandle_t, cublasSideMode_t side, cublasFillMode_t uplo,
                                           cublasOperation_t trans, cublasDiagType_t diag, int m, int n,
                                           const double* alpha, const double* A, int lda, double* B, int ldb) {
  scipy_cblas_dtrsm(kColMajor, side == CUBLAS_SIDE_LEFT ? 141 : 142, uplo == CUBLAS_FILL_MODE_UPPER ? 121 : 122,
                    cblas_op(trans), diag == CUBLAS_DIAG_NON_UNIT ? 131 : 132, m, n, *alpha, A, lda, B, ldb);
  return CUBLAS_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnXsyevd_bufferSize(cusolverDnHandle_t, cusolverDnParams_t, cusolverEigMode_t,
                                                         cublasFillMode_t, int64_t, cudaDataType, const void*, int64_t,
                                                         cudaDataType, const void*, cudaDataType, size_t* dev,
                                                         size_t* host) {
  *dev = 64;
  *host = 0;
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnXsyevd(cusolverDnHandle_t, cusolverDnParams_t, cusolverEigMode_t jobz,
                                              cublasFillMode_t uplo, int64_t n, cudaDataType typeA, void* A,
                                              int64_t lda, cudaDataType typeW, void* W, cudaDataType compute,
                                              void* dev, size_t dev_bytes, void*, size_t, int* info) {
  if (jobz != CUSOLVER_EIG_MODE_NOVECTOR || typeA != typeW || typeA != compute || !dev || dev_bytes < 64 || lda < n)
    return CUSOLVER_STATUS_INVALID_VALUE;
  const bool single = typeA == CUDA_R_32F;
  int r = 0;
  if (single) {
    std::vector<float> a(static_cast<float*>(A), static_cast<float*>(A) + n * lda);
    r = scipy_LAPACKE_ssyevd(kColMajor, 'N', uplo_char(uplo), static_cast<int>(n), a.data(), static_cast<int>(lda),
                             static_cast<float*>(W));
    std::fill(static_cast<float*>(A), static_cast<float*>(A) + n * lda, NAN);
  } else {
    std::vector<double> a(static_cast<double*>(A), static_cast<double*>(A) + n * lda);
    r = scipy_LAPACKE_dsyevd(kColMajor, 'N', uplo_char(uplo), static_cast<int>(n), a.data(), static_cast<int>(lda),
                             static_cast<double*>(W));
    std::fill(static_cast<double*>(A), static_cast<double*>(A) + n * lda, NAN);
  }
  *info = forced_failure(single) ? 1 : r;
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t CUSOLVERAPI cusolverDnDpotrf_bufferSize(cusolverDnHandle_t, cublasFillMode_t, int, double*, int,
                                                         int* lwork) {
  *lwork = 1;
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t CUSOLVERAPI cusolverDnDpotrf(cusolverDnHandle_t, cublasFillMode_t uplo, int n, double* A, int lda,
                                              double* work, int lwork, int* info) {
  if (!work || lwork < 1) return CUSOLVER_STATUS_INVALID_VALUE;
  *info = scipy_LAPACKE_dpotrf(kColMajor, uplo_char(uplo), n, A, lda);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t CUSOLVERAPI cusolverDnDgeqrf_bufferSize(cusolverDnHandle_t, int, int, double*, int, int* lwork) {
  *lwork = 1;
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t CUSOLVERAPI cusolverDnDgeqrf(cusolverDnHandle_t, int m, int n, double* A, int lda, double* tau,
                                              double* work, int lwork, int* info) {
  if (!work || lwork < 1) return CUSOLVER_STATUS_INVALID_VALUE;
  *info = scipy_LAPACKE_dgeqrf(kColMajor, m, n, A, lda, tau);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t CUSOLVERAPI cusolverDnDorgqr_bufferSize(cusolverDnHandle_t, int, int, int, const double*, int,
                                                         const double*, int* lwork) {
  *lwork = 1;
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t CUSOLVERAPI cusolverDnDorgqr(cusolverDnHandle_t, int m, int n, int k, double* A, int lda,
                                              const double* tau, double* work, int lwork, int* info) {
  if (!work || lwork < 1) return CUSOLVER_STATUS_INVALID_VALUE;
  *info = scipy_LAPACKE_dorgqr(kColMajor, m, n, k, A, lda, tau);
  return CUSOLVER_STATUS_SUCCESS;
}

}  // extern "C"

namespace geomfast {

// Stand-in for the CPU backend's solver: descending eigenvalues of the upper triangle (row-major).
EigResult eigvalsh_cpu(const MatrixView& a, const EigOptions& opt) {
  const int64_t n = a.rows;
  std::vector<double> m(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const int64_t r = std::min(i, j), c = std::max(i, j);
      const double v = static_cast<const double*>(a.data)[r * a.row_stride + c * a.col_stride];
      if (!std::isfinite(v)) GF_THROW(ValueError, "[eigvalsh] expected a finite matrix");
      m[i + j * n] = v;
    }
  EigResult res;
  res.values.resize(static_cast<size_t>(n));
  if (scipy_LAPACKE_dsyevd(kColMajor, 'N', 'U', static_cast<int>(n), m.data(), static_cast<int>(n), res.values.data()) != 0)
    GF_THROW(RuntimeError, "[eigvalsh] LAPACK dsyevd failed");
  std::reverse(res.values.begin(), res.values.end());
  if (opt.method == EigMethod::kRandomized && opt.k > 0) res.values.resize(static_cast<size_t>(opt.k));
  return res;
}

}  // namespace geomfast

namespace geomfast {
// dispatch.cpp's CPU branch: not part of the emulated build (the CPU backend is tested directly).
std::unique_ptr<GramBackend> make_cpu_gram(int64_t, Precision) {
  GF_THROW(RuntimeError, "the CPU backend is not linked into the CUDA emulation");
}
std::vector<EigResult> eigvalsh_cpu_batch(const std::vector<MatrixView>&, const EigOptions&) {
  GF_THROW(RuntimeError, "the CPU backend is not linked into the CUDA emulation");
}
// The host branch of spectra(): one solve after another, on the stand-in solver above.
EigResult eigvalsh_cpu_owned(std::vector<double>&& m, int64_t n, const EigOptions& opt) {
  return eigvalsh_cpu(square_f64_view(m.data(), n), opt);
}
std::vector<EigResult> eigvalsh_cpu_many(size_t count, const std::function<HostProblem(size_t)>& build, int64_t,
                                         const EigOptions& opt) {
  std::vector<EigResult> out(count);
  for (size_t i = 0; i < count; ++i) {
    HostProblem p = build(i);
    out[i] = eigvalsh_cpu_owned(std::move(p.matrix), p.n, opt);
  }
  return out;
}
}  // namespace geomfast
