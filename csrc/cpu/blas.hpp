// The few BLAS/LAPACK entry points the CPU backend calls, declared here so that any BLAS works:
// scipy-openblas32 prefixes every symbol with `scipy_` (GF_BLAS_PREFIX), a system BLAS does not.
// Column-major throughout (CBLAS order 102); 32-bit integers (LP64).
#pragma once
#include <cstddef>
#include <mutex>

#ifndef GF_BLAS_PREFIX
#define GF_BLAS_PREFIX
#endif
#define GF_CAT2(a, b) a##b
#define GF_CAT(a, b) GF_CAT2(a, b)
#define GF_BLAS(name) GF_CAT(GF_BLAS_PREFIX, name)

namespace geomfast::blas {
enum : int { kColMajor = 102, kNoTrans = 111, kTrans = 112, kUpper = 121, kLower = 122, kLeft = 141, kRight = 142, kNonUnit = 131 };
}

extern "C" {
void GF_BLAS(cblas_dsyrk)(int order, int uplo, int trans, int n, int k, double alpha, const double* a, int lda,
                          double beta, double* c, int ldc);
void GF_BLAS(cblas_ssyrk)(int order, int uplo, int trans, int n, int k, float alpha, const float* a, int lda,
                          float beta, float* c, int ldc);
void GF_BLAS(cblas_dgemm)(int order, int ta, int tb, int m, int n, int k, double alpha, const double* a, int lda,
                          const double* b, int ldb, double beta, double* c, int ldc);
void GF_BLAS(cblas_sgemm)(int order, int ta, int tb, int m, int n, int k, float alpha, const float* a, int lda,
                          const float* b, int ldb, float beta, float* c, int ldc);
void GF_BLAS(cblas_dsymm)(int order, int side, int uplo, int m, int n, double alpha, const double* a, int lda,
                          const double* b, int ldb, double beta, double* c, int ldc);
void GF_BLAS(cblas_dtrsm)(int order, int side, int uplo, int trans, int diag, int m, int n, double alpha,
                          const double* a, int lda, double* b, int ldb);
#ifdef GF_BLAS_OPENBLAS
void GF_BLAS(openblas_set_num_threads)(int n);
int GF_BLAS(openblas_get_num_threads)(void);
#endif
// Fortran LAPACK, with the hidden character-length arguments of the gfortran ABI.
void GF_BLAS(dsyevd_)(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
                      double* work, const int* lwork, int* iwork, const int* liwork, int* info, std::size_t,
                      std::size_t);
void GF_BLAS(dpotrf_)(const char* uplo, const int* n, double* a, const int* lda, int* info, std::size_t);
void GF_BLAS(dgeqrf_)(const int* m, const int* n, double* a, const int* lda, double* tau, double* work,
                      const int* lwork, int* info);
void GF_BLAS(dorgqr_)(const int* m, const int* n, const int* k, double* a, const int* lda, const double* tau,
                      double* work, const int* lwork, int* info);
}

namespace geomfast::blas {
// While alive, this library's BLAS runs single-threaded (our own threads run one BLAS call
// each). OpenBLAS's thread count is global, so every caller that depends on it holds mode_mutex().
std::mutex& mode_mutex();
class SingleThreadedScope {
 public:
  SingleThreadedScope();
  ~SingleThreadedScope();
 private:
  int previous_ = 0;
};
}  // namespace geomfast::blas
