// Symmetric eigenvalue solvers: full (LAPACK / cuSOLVER, values only) and randomized top-k
// (subspace iteration + Rayleigh–Ritz), the latter written once over DenseOps so that the CPU
// build tests the same algorithm the GPU runs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "geomfast/tensor.hpp"

namespace geomfast {

enum class EigMethod : int { kFull = 0, kRandomized = 1 };

struct EigOptions {
  EigMethod method = EigMethod::kFull;
  int64_t k = 0;             // randomized: how many leading eigenvalues
  int64_t oversample = 16;   // randomized: extra columns in the block
  int64_t n_iter = -1;       // randomized: fixed number of power iterations; -1 = until tol
  double tol = 1e-5;         // randomized: stop when the top-k Ritz values change less (relative)
  int64_t max_iter = 40;     // randomized: cap when iterating to tol
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
  virtual void apply(const Mat& x, Mat& y) = 0;           // y = A x, A the bound n × n operator
  virtual void gemm_tn(const Mat& x, const Mat& y, Mat& b) = 0;  // b = xᵀ y
  virtual void orthonormalize(Mat& x) = 0;  // in place: orthonormal columns spanning x
  virtual std::vector<double> small_eigvalsh(const Mat& b) = 0;  // host, descending
};

// Top-k eigenvalues of the symmetric operator behind `ops` (size n × n).
EigResult randomized_eigvalsh(DenseOps& ops, int64_t n, const EigOptions& opt);

// a: square symmetric [n, n] on any device; float64 or float32. Descending values.
EigResult eigvalsh(const MatrixView& a, const EigOptions& opt);
EigResult eigvalsh_cpu(const MatrixView& a, const EigOptions& opt);

}  // namespace geomfast
