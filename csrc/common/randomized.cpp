// Randomized top-k symmetric eigenvalues by subspace iteration with Rayleigh–Ritz at every step.
// Written once over DenseOps: the CPU backend (BLAS/LAPACK) and the CUDA backend (cuBLAS/cuSOLVER)
// run exactly this code.
#include <algorithm>
#include <cmath>
#include <random>

#include "geomfast/eig.hpp"
#include "geomfast/errors.hpp"

namespace geomfast {

EigResult randomized_eigvalsh(DenseOps& ops, int64_t n, const EigOptions& opt) {
  GF_ASSERT(opt.k >= 1 && opt.k <= n, "k=", opt.k, " n=", n);
  const int64_t l = std::min<int64_t>(n, opt.k + std::max<int64_t>(opt.oversample, 0));
  EigResult res;

  // Gaussian start block generated on the host, so every backend sees the same numbers.
  std::vector<double> omega(static_cast<size_t>(n * l));
  std::mt19937_64 gen(opt.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (auto& v : omega) v = normal(gen);

  DenseOps::Mat q = ops.alloc(n, l), z = ops.alloc(n, l), b = ops.alloc(l, l);
  ops.upload(omega.data(), q);
  ops.orthonormalize(q);

  const bool fixed = opt.n_iter >= 0;
  const int64_t max_iter = fixed ? opt.n_iter : std::max<int64_t>(opt.max_iter, 1);
  std::vector<double> prev;
  double change = 0.0;
  bool converged = false;
  int64_t it = 0;
  for (;; ++it) {
    ops.apply(q, z);        // z = A q
    ops.gemm_tn(q, z, b);   // b = qᵀ A q: Rayleigh–Ritz in the current subspace
    std::vector<double> vals = ops.small_eigvalsh(b);
    for (double v : vals)
      if (!std::isfinite(v)) {
        ops.release(q), ops.release(z), ops.release(b);
        GF_THROW(RuntimeError, "[eigvalsh] randomized solver produced non-finite Ritz values at iteration ", it);
      }
    if (!prev.empty()) {
      // Largest relative change over the top k; values below 1e-13·λ1 are noise and ignored.
      const double floor = 1e-13 * std::max(std::abs(vals[0]), 1e-300);
      change = 0.0;
      for (int64_t i = 0; i < opt.k; ++i) {
        const double den = std::max(std::abs(vals[i]), floor);
        change = std::max(change, std::abs(vals[i] - prev[i]) / den);
      }
    }
    const bool last = fixed ? (it >= max_iter) : (!prev.empty() && change <= opt.tol) || it >= max_iter;
    if (!fixed && !prev.empty() && change <= opt.tol) converged = true;
    if (last) {
      prev = std::move(vals);
      break;
    }
    prev = std::move(vals);
    std::swap(q, z);        // power step: the next subspace is orth(A q)
    ops.orthonormalize(q);
  }
  ops.release(q), ops.release(z), ops.release(b);

  res.values.assign(prev.begin(), prev.begin() + opt.k);
  res.iterations = it;
  res.last_change = change;
  res.converged = fixed ? true : converged;
  if (!fixed && !converged)
    res.warnings.push_back("randomized eigvalsh did not reach tol=" + std::to_string(opt.tol) + " in " +
                           std::to_string(max_iter) + " iterations (last relative change " +
                           std::to_string(change) + "); increase max_iter or oversample");
  return res;
}

}  // namespace geomfast
