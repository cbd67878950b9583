// Symmetric eigenvalue solvers: full (LAPACK / cuSOLVER, values only) and randomized top-k
// (randomized block Krylov with Rayleigh–Ritz), the latter written once over DenseOps so that
// the CPU build tests the same algorithm the GPU runs.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "geomfast/errors.hpp"
#include "geomfast/tensor.hpp"

namespace geomfast {

enum class EigMethod : int { kFull = 0, kRandomized = 1 };

struct EigOptions {
  EigMethod method = EigMethod::kFull;
  int64_t k = 0;             // randomized: how many leading eigenvalues
  int64_t oversample = 16;   // randomized: Krylov space kept at least k + oversample wide
  int64_t block = 0;         // randomized: Krylov block width; 0 = clamp(k/8, 32, 256)
  int64_t n_iter = -1;       // randomized: fixed Krylov depth (products with A, minus 1); -1 = until tol
  double tol = 1e-6;         // randomized: stop when the leading Ritz values change less (relative)
  int64_t tol_k = 0;         // randomized: how many leading values must meet tol; 0 = all k
  int64_t max_iter = 64;     // randomized: cap on the Krylov depth when iterating to tol
  uint64_t seed = 0;
  bool single_precision = false;  // full on CUDA: solve in float32 (retries in float64 on failure)
};

// Result of a randomized solve: the values plus how it went (for diagnostics and benchmarks).
struct EigResult {
  std::vector<double> values;  // descending
  int64_t iterations = 0;
  double last_change = 0.0;    // relative change of the Ritz values at the last iteration
  bool converged = true;
  std::vector<std::string> warnings;
};

// A user's matrix clearly not symmetric (relative_asymmetry = max |a_ij - a_ji| / max |a_ij|
// beyond the rounding of a symmetric product): say which triangle was read, since numpy's and
// torch's eigvalsh read the other one by default. Both backends' eigvalsh call it.
inline void warn_if_asymmetric(double relative_asymmetry, EigResult& res) {
  if (relative_asymmetry > 1e-10)
    res.warnings.push_back(detail::concat(
        "the matrix is not symmetric (max |a - aᵀ| = ", relative_asymmetry, " of max |a|): only its upper "
        "triangle (row-major) was read; numpy.linalg.eigvalsh and torch.linalg.eigvalsh read the lower one "
        "by default"));
}

// eigvalsh's ValueError `e` about matrix i of a batch (eigvalsh_many): "[eigvalsh] matrix i of the
// batch: <e's message without its own [eigvalsh] prefix>" (the Python layer turns i into a[...]).
inline ValueError in_batch(size_t i, const ValueError& e) {
  const std::string what = e.what();
  return ValueError(detail::concat("[eigvalsh] matrix ", i, " of the batch: ",
                                   what.rfind("[eigvalsh] ", 0) == 0 ? what.substr(11) : what));
}

// Device-resident dense float64 matrices, column-major with leading dimension = rows.
class DenseOps {
 public:
  struct Mat {
    double* data = nullptr;
    int64_t rows = 0;
    int64_t cols = 0;
  };
  virtual ~DenseOps() = default;
  virtual Mat alloc(int64_t rows, int64_t cols) = 0;      // freed by release() or the destructor
  virtual void release(Mat& m) = 0;
  virtual void upload(const double* host, Mat& dst) = 0;  // host [rows*cols] column-major
  virtual void apply(const Mat& x, Mat& y) = 0;           // y = scale · A x, A the bound n × n operator
  virtual void gemm_tn(const Mat& x, const Mat& y, Mat& b) = 0;  // b = xᵀ y
  virtual void gemm_nn(const Mat& x, const Mat& y, Mat& z, double alpha, double beta) = 0;  // z = αxy + βz
  virtual void download(const Mat& src, double* host) = 0;       // host [rows*cols] column-major
  // In place: orthonormal columns spanning x. Returns true when x was numerically rank-deficient
  // (CholeskyQR failed and Householder QR filled in arbitrary directions).
  virtual bool orthonormalize(Mat& x) = 0;
  // Mat values may be views: column sub-blocks of an allocation (contiguous, ld = rows);
  // release() only the allocations themselves.
  virtual std::vector<double> small_eigvalsh(const Mat& b) = 0;  // host, descending
  // A power of two the operator is applied with (randomized_eigvalsh sets it, so that products
  // like xᵀx of A's scale neither overflow nor underflow float64).
  double scale = 1.0;
};

// Top-k eigenvalues of the symmetric operator behind `ops` (size n × n).
EigResult randomized_eigvalsh(DenseOps& ops, int64_t n, const EigOptions& opt);

// a: square symmetric [n, n] on any device; float64 or float32. Descending values.
EigResult eigvalsh(const MatrixView& a, const EigOptions& opt);
EigResult eigvalsh_cpu(const MatrixView& a, const EigOptions& opt);
// A batch of square matrices of one size, all on the CPU or all on one CUDA device (the slices of
// one [..., n, n] array): the values of eigvalsh() of each, in order. CPU: several solved at a time
// (eigvalsh_cpu_many). CUDA, full method: every check and solve queued on one stream, two host
// synchronisations in all (a failed solve is redone alone, warned). A non-finite matrix is a
// ValueError naming its index in the batch.
std::vector<EigResult> eigvalsh_many(const std::vector<MatrixView>& as, const EigOptions& opt);
std::vector<EigResult> eigvalsh_cpu_batch(const std::vector<MatrixView>& as, const EigOptions& opt);
// The same on a row-major float64 matrix the solver owns (and may overwrite): no copy.
EigResult eigvalsh_cpu_owned(std::vector<double>&& a, int64_t n, const EigOptions& opt);
// A symmetric problem for the host solver: the n × n row-major float64 matrix (upper triangle read).
struct HostProblem {
  std::vector<double> matrix;
  int64_t n = 0;
};
// The eigenvalues of `count` problems, in order. build(i) makes problem i on the calling thread.
// When it pays (max_dim >= 512, several cores) the solves run several at a time: in waves of up to
// GEOMFAST_NUM_THREADS (the cores) and as many as ~4 GiB of work matrices allow, each on its own
// thread with single-threaded BLAS; a wave's matrices are built before its solves start. The first
// exception (lowest i) is rethrown once every problem has ended.
std::vector<EigResult> eigvalsh_cpu_many(size_t count, const std::function<HostProblem(size_t)>& build,
                                         int64_t max_dim, const EigOptions& opt);

}  // namespace geomfast
