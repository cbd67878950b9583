// Randomized top-k symmetric eigenvalues by randomized block Krylov iteration with Rayleigh–Ritz
// (Musco & Musco 2015): the Krylov space [Ω, AΩ, A²Ω, …] converges far faster per product with
// A than subspace (power) iteration, which matters for slowly decaying spectra (α ≈ 0.5–1).
//
// Written once over DenseOps: the CPU backend (BLAS/LAPACK) and the CUDA backend
// (cuBLAS/cuSOLVER) run exactly this code. Per Krylov step j (block width b):
//   W = A Q_j                       one product with A (the only O(n²) work)
//   C = V_{0..j}ᵀ W                 block column j of T = Vᵀ A V (V orthonormal)
//   Ritz values = eig(T_{0..j})     small, (j+1)b wide; stop when the leading ones settle
//   Q_{j+1} = orth(W − V C)         block Gram–Schmidt twice (the first pass reuses C); when W
//                                   was rank-deficient (Krylov space exhausted) the fresh
//                                   directions QR fills in are projected out and orthonormalized
//                                   once more.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>

#include "geomfast/eig.hpp"
#include "geomfast/errors.hpp"

namespace geomfast {
namespace {

using Mat = DenseOps::Mat;

// Rounding of a float64 Ritz value, in units of eps·|λ1| (see the convergence test).
constexpr double kNoiseUlps = 64.0;
// A Krylov block column left with less than this fraction of its norm outside the space is
// rounding noise (a breakdown; see the loop).
const double kBreakdown = std::sqrt(std::numeric_limits<double>::epsilon());
// Repeated eigenvalues (see the restarts): consecutive values within `repeat_rel` of each other
// (a tenth of tol, within [1e-9, 1e-5]: copies of one value deep in the top k settle only to about
// tol — 1.5e-8 apart at tol = 1e-6 — while distinct values of a real spectrum lie ~1/k apart
// relatively), above kZeroRel·|λ1|.
constexpr double kRepeatRelMin = 1e-9, kRepeatRelMax = 1e-5;
// Krylov steps from a restart's fresh block before the values may settle again (fewer where the
// first settling took fewer). Outside the space, the missing copies are the leading directions,
// so they surface within a few steps: with 2 steps every copy was found (40 copies of 2.0, 0.01,
// 0.0052 and 64 of 0.0055 among k^-1 at n = 2048, k = 256); waiting as long as the first settling
// (~20 steps) found the same copies at 4–6× the cost, as the Ritz problem grows with the space.
constexpr int64_t kRestartSteps = 4;
constexpr double kZeroRel = 1e-10;

Mat cols_of(const Mat& m, int64_t c0, int64_t c1) { return Mat{m.data + c0 * m.rows, m.rows, c1 - c0}; }

// x ← x − V (Vᵀ x), `passes` times; scratch c has at least V.cols rows and x.cols columns.
void project_out(DenseOps& ops, const Mat& v, Mat& x, Mat& c_scratch, int passes) {
  if (v.cols == 0) return;
  Mat c{c_scratch.data, v.cols, x.cols};
  for (int pass = 0; pass < passes; ++pass) {
    ops.gemm_tn(v, x, c);
    ops.gemm_nn(v, c, x, -1.0, 1.0);
  }
}

// The longest run of one repeated eigenvalue among the leading k of `vals` (descending): its
// length, its value and the index where it ends. Exact zeros (a null space) are not runs: they
// are found as zeros however many copies are missing.
struct Repeat {
  int64_t length = 1, end = 0;
  double value = 0.0;
};
Repeat longest_repeat(const std::vector<double>& vals, int64_t k, double repeat_rel) {
  Repeat best;
  best.value = vals[0];
  const double top = std::abs(vals[0]);
  int64_t run = 1;
  for (int64_t i = 1; i < k; ++i) {
    const double x = vals[i], y = vals[i - 1];
    run = std::abs(x - y) <= repeat_rel * std::abs(y) && std::abs(y) > kZeroRel * top ? run + 1 : 1;
    if (run > best.length) best.length = run, best.value = x, best.end = i;
  }
  return best;
}

}  // namespace

EigResult randomized_eigvalsh(DenseOps& ops, int64_t n, const EigOptions& opt) {
  GF_ASSERT(opt.k >= 1 && opt.k <= n, "k=", opt.k, " n=", n);
  const int64_t k = opt.k;
  // Narrow blocks need fewer products with A for the same accuracy (measured at d = 2048–4096,
  // k = 256: 32 columns beat 64 and 128 on the CPU); wide ones use the hardware better.
  const int64_t b = std::min<int64_t>(n, opt.block > 0 ? opt.block : std::clamp<int64_t>(k / 8, 32, 256));
  const int64_t min_cols = std::min<int64_t>(n, k + std::max<int64_t>(opt.oversample, 0));
  const bool fixed = opt.n_iter >= 0;
  // Depth: fixed, or grow until the Ritz values settle (cap: max_iter, and the space ≤ n).
  const int64_t depth_cap = fixed ? std::max<int64_t>(opt.n_iter + 1, (min_cols + b - 1) / b)
                                  : std::max<int64_t>(opt.max_iter, 1) + (min_cols + b - 1) / b;
  const int64_t max_cols = std::min<int64_t>(n, depth_cap * b);
  const int64_t check_k = std::min<int64_t>(k, opt.tol_k > 0 ? opt.tol_k : k);
  const double repeat_rel = std::clamp(0.1 * opt.tol, kRepeatRelMin, kRepeatRelMax);
  EigResult res;

  // Gaussian start block generated on the host, so every backend sees the same numbers.
  std::vector<double> omega(static_cast<size_t>(n * b));
  std::mt19937_64 gen(opt.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (auto& v : omega) v = normal(gen);

  Mat v = ops.alloc(n, max_cols + b);  // the basis, plus room for the next block
  Mat c = ops.alloc(max_cols + b, b);  // scratch for block projections / T's columns
  Mat t_dev = ops.alloc(max_cols, max_cols);
  struct Cleanup {
    DenseOps& ops;
    Mat &a, &b, &c;
    ~Cleanup() { ops.release(a), ops.release(b), ops.release(c); }
  } cleanup{ops, v, c, t_dev};

  {
    Mat q0 = cols_of(v, 0, b);
    ops.upload(omega.data(), q0);
    ops.orthonormalize(q0);
  }
  // Host T, column-major with leading dimension max_cols; only its leading cols × cols block is
  // ever written or read, so it is not zero-filled (43 MB of page faults at max_cols = 2336).
  std::unique_ptr<double[]> t_store(new double[static_cast<size_t>(max_cols * max_cols)]);
  double* const t = t_store.get();
  std::vector<double> col(static_cast<size_t>((max_cols + b) * b));
  std::vector<double> prev, vals, gram;
  double change = 0.0;
  bool converged = false;
  int64_t cols = b, depth = 0, bj = b;  // bj: the width of the newest block (the last may be narrower)
  int64_t estimates = 0;
  // Restarts for repeated eigenvalues. Block Krylov from b random vectors holds at most b
  // directions of one eigenspace (its blocks all project onto the span of Ω's projection there),
  // plus what a breakdown's fresh directions bring: an eigenvalue found b or more times may have
  // more copies, pushed out of the top k by smaller values (multiplicity 40, block 8: 32 copies,
  // the rest wrong). So when the values have settled with a value found at least `random_cols`
  // times (the start block and every restart block), the space is extended from a fresh Gaussian
  // block, projected out of it: its Krylov steps find up to b more copies, and the values must
  // settle again, no sooner than kRestartSteps steps after it. It ends when a restart finds fewer
  // copies than random directions went in (none missing), or warns when the space is full.
  int64_t random_cols = b, restarts = 0, settle_depth = 0, first_settled = -1;
  for (;; ++depth) {
    const int64_t j0 = cols - bj;
    Mat qj = cols_of(v, j0, cols);
    Mat w = cols_of(v, cols, cols + bj);  // next slot (room for b columns)
    ops.apply(qj, w);  // W = A Q_j
    Mat vcur = cols_of(v, 0, cols);
    Mat cc{c.data, cols, bj};
    ops.gemm_tn(vcur, w, cc);  // T[0:cols, j0:cols]
    ops.download(cc, col.data());
    if (depth == 0 && ops.scale == 1.0) {
      // A's scale from Q₀ᵀAQ₀: beyond 2^±400 (~1e±120) the Gram products of the orthonormalization
      // (xᵀx, of A's scale squared) would overflow or underflow float64 (Ritz values 30 % off at
      // 1e160). Start again with A times a power of two (exact); the values are scaled back below.
      double amax = 0.0;
      for (int64_t i = 0; i < cols * bj; ++i) amax = std::max(amax, std::abs(col[i]));
      if (std::isfinite(amax) && amax > 0 && (amax > 0x1p400 || amax < 0x1p-400)) {
        ops.scale = std::ldexp(1.0, -std::ilogb(amax));
        depth = -1;
        continue;
      }
    }
    for (int64_t jj = 0; jj < bj; ++jj)
      for (int64_t i = 0; i < cols; ++i) {
        const double val = col[i + jj * cols];
        const int64_t r = i, cidx = j0 + jj;
        if (r <= cidx) {  // keep the upper triangle; mirror it
          t[r + cidx * max_cols] = val;
          t[cidx + r * max_cols] = val;
        }
      }
    if (cols >= min_cols || cols >= n) {
      std::vector<double> lead(static_cast<size_t>(cols * cols));
      for (int64_t jj = 0; jj < cols; ++jj)
        std::copy(t + jj * max_cols, t + jj * max_cols + cols, lead.begin() + jj * cols);
      Mat td{t_dev.data, cols, cols};
      ops.upload(lead.data(), td);
      vals = ops.small_eigvalsh(td);
      ++estimates;
      for (double x : vals)
        if (!std::isfinite(x))
          GF_THROW(RuntimeError, "[eigvalsh] randomized solver produced non-finite Ritz values at depth ", depth);
      if (!prev.empty()) {
        // Largest relative change over the leading check_k. A value is settled when it moved by
        // less than tol relatively, or by less than the rounding of float64 Ritz values at A's scale
        // (kNoiseUlps·eps·|λ1|: what the full solver's values carry too). Without the second rule
        // the values of a null space (k beyond A's rank: exact zeros, computed as rounding noise
        // that moves at every step) never settled, and the Krylov space grew to all n columns
        // (54 s instead of 0.07 s at n = 2048, rank 60, k = 100).
        const double noise = kNoiseUlps * std::numeric_limits<double>::epsilon() * std::abs(vals[0]);
        const double floor = std::max(noise / std::max(opt.tol, 1e-300), 1e-300);
        change = 0.0;
        for (int64_t i = 0; i < check_k; ++i) {
          const double den = std::max(std::abs(vals[i]), floor);
          change = std::max(change, std::abs(vals[i] - prev[i]) / den);
        }
        if (!fixed && change <= opt.tol && depth >= settle_depth) converged = true;
      }
      prev = vals;
    }
    // The next block is b wide, or what is left of the space (a last, narrower block: the space
    // then reaches all n columns when max_cols = n, where the Ritz values are exact).
    const int64_t next = std::min(b, max_cols - cols);
    const bool space_full = next <= 0 || cols >= n;
    bool done = fixed ? (depth >= opt.n_iter && cols >= min_cols) : converged;
    if (done && !fixed && !space_full) {
      const Repeat rep = longest_repeat(vals, k, repeat_rel);
      // copies may be missing: restart (not for a run to the end of the top k: no smaller value
      // took a missing copy's place there)
      if (rep.length >= random_cols && rep.end < k - 1) {
        if (first_settled < 0) first_settled = depth;
        settle_depth = depth + 1 + std::clamp<int64_t>(first_settled, 1, kRestartSteps);
        converged = done = false;
        ++restarts;
        random_cols += next;  // (the last block may be narrower: what is left of the space)
        w.cols = next;
        for (int64_t i = 0; i < n * next; ++i) omega[i] = normal(gen);
        ops.upload(omega.data(), w);
        project_out(ops, vcur, w, c, 2);
        if (ops.orthonormalize(w)) {
          project_out(ops, vcur, w, c, 2);
          ops.orthonormalize(w);
        }
        cols += next;
        bj = next;
        continue;
      }
    }
    if (done || space_full) {
      if (space_full && cols >= n) converged = true;  // the whole space: Ritz values are exact
      break;
    }
    // Next block: W ← orth(W − V C) with the C already computed, then a second Gram–Schmidt pass
    // (of W's first `next` columns when the space has less room left than a block).
    ops.gemm_nn(vcur, cc, w, -1.0, 1.0);
    w.cols = next;
    project_out(ops, vcur, w, c, 1);
    // Breakdown: a column of W almost entirely inside the space (‖x‖ ≤ √eps·‖W‖: the space holds
    // an invariant subspace, as for a multiple of the identity, or k beyond A's rank) is rounding
    // noise, whose share inside the space two passes cannot remove; normalised, it repeated
    // earlier directions, the basis lost orthogonality by ~δ²/eps per step and the Ritz values
    // came out wrong (eigvalsh(np.eye(300), 'randomized', k=64) gave 7). Such a column is
    // replaced by a fresh Gaussian one (from the start block's generator), projected out twice.
    {
      Mat g{c.data, next, next};
      ops.gemm_tn(w, w, g);
      gram.resize(static_cast<size_t>(next * next));
      ops.download(g, gram.data());
      bool fresh = false;
      for (int64_t jj = 0; jj < next; ++jj) {
        double in_space = 0.0;  // ‖C_j‖² = ‖V Vᵀ W_j‖²
        for (int64_t i = 0; i < cols; ++i) in_space += col[i + jj * cols] * col[i + jj * cols];
        const double out = gram[jj + jj * next];  // ‖x_j‖²
        if (out <= kBreakdown * kBreakdown * (in_space + out)) {
          for (int64_t i = 0; i < n; ++i) omega[i] = normal(gen);
          Mat wj = cols_of(w, jj, jj + 1);
          ops.upload(omega.data(), wj);
          fresh = true;
        }
      }
      if (fresh) project_out(ops, vcur, w, c, 2);
    }
    if (ops.orthonormalize(w)) {
      project_out(ops, vcur, w, c, 2);
      ops.orthonormalize(w);
    }
    cols += next;
    bj = next;
  }

  if (static_cast<int64_t>(vals.size()) < k)
    GF_THROW(RuntimeError, "[eigvalsh] randomized solver ended with ", vals.size(), " Ritz values, fewer than k=", k);
  res.values.assign(vals.begin(), vals.begin() + k);
  for (double& x : res.values) x /= ops.scale;  // a power of two: exact
  // Copies of a repeated value may still be missing where the space had no room for a restart,
  // or at a fixed depth (n_iter), which does not restart: say so. (A space of all n columns holds
  // every copy: its Ritz values are A's eigenvalues.)
  {
    const Repeat rep = longest_repeat(res.values, k, repeat_rel);
    if (rep.length >= random_cols && cols < n && rep.end < k - 1)
      res.warnings.push_back("randomized eigvalsh found the eigenvalue " + std::to_string(rep.value) + " " +
                             std::to_string(rep.length) + " times, at least the " + std::to_string(random_cols) +
                             " random directions its Krylov space started from (block " + std::to_string(b) +
                             (restarts > 0 ? ", " + std::to_string(restarts) + " restarts" : std::string()) +
                             "): block Krylov finds about that many copies of an eigenvalue, so more may be "
                             "missing from the top " + std::to_string(k) + "; pass block > " +
                             std::to_string(rep.length) + (fixed ? ", drop n_iter" : ", raise max_iter") +
                             " or use method='full'");
  }
  res.iterations = depth;
  res.last_change = change;
  // (Values that met tol while a restart's depth was still short are settled all the same; the
  // warning above says what the restart could not finish.)
  if (!fixed && !converged && restarts > 0 && estimates > 1 && change <= opt.tol) converged = true;
  res.converged = fixed ? true : converged;
  if (!res.converged)
    res.warnings.push_back("randomized eigvalsh did not reach tol=" + std::to_string(opt.tol) + " for the top " +
                           std::to_string(check_k) + " values within a Krylov space of " + std::to_string(cols) +
                           " columns (" +
                           (estimates > 1 ? "last relative change " + std::to_string(change)
                                          : std::string("one Ritz estimate only: nothing to compare")) +
                           "); raise max_iter or use method='full'");
  return res;
}

}  // namespace geomfast
