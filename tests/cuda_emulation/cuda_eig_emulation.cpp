// The CUDA backend's eigensolvers (csrc/cuda/eig_cuda.cu) and spectra (spectrum(), the batched
// spectra_cuda) run on the CPU, cuSOLVER answered by LAPACK (fake_cuda_solver.cpp): the full solve
// reading only the upper triangle of any layout, float32 input and solves, the retry chain when
// cuSOLVER fails (float32 -> float64 -> CPU, each with its warning), a non-finite matrix, the
// randomized solver over CudaDenseOps, and spectra of several accumulators at once.
// Prints a line per case; exits 1 on any failure. Built and run by tests/test_cuda_emulation.py.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "geomfast/backend.hpp"
#include "geomfast/eig.hpp"
#include "geomfast/errors.hpp"
#include "geomfast/gram.hpp"

using namespace geomfast;

namespace {

int failures = 0;

void report(const std::string& what, double err, double bar, bool extra_ok = true, const std::string& note = "") {
  const bool ok = std::isfinite(err) && err <= bar && extra_ok;
  failures += !ok;
  std::printf("%-58s max rel err %.2e (bar %.0e)%s -> %s\n", what.c_str(), err, bar, note.c_str(), ok ? "ok" : "WRONG");
}

// A symmetric matrix with eigenvalues lam (descending) in random coordinates, row-major.
std::vector<double> with_spectrum(const std::vector<double>& lam, std::mt19937_64& rng) {
  const int64_t n = static_cast<int64_t>(lam.size());
  std::normal_distribution<double> nd;
  std::vector<double> q(n * n);
  for (auto& v : q) v = nd(rng);
  for (int64_t j = 0; j < n; ++j) {  // Gram-Schmidt on the columns, twice
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t p = 0; p < j; ++p) {
        double dot = 0;
        for (int64_t i = 0; i < n; ++i) dot += q[i * n + j] * q[i * n + p];
        for (int64_t i = 0; i < n; ++i) q[i * n + j] -= dot * q[i * n + p];
      }
    double nr = 0;
    for (int64_t i = 0; i < n; ++i) nr += q[i * n + j] * q[i * n + j];
    for (int64_t i = 0; i < n; ++i) q[i * n + j] /= std::sqrt(nr);
  }
  std::vector<double> a(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < n; ++p) s += q[i * n + p] * lam[p] * q[j * n + p];
      a[i * n + j] = s;
    }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) a[i * n + j] = a[j * n + i];
  return a;
}

MatrixView cuda_view(const void* p, DType t, int64_t n, int64_t rs, int64_t cs) {
  MatrixView v;
  v.data = p;
  v.dtype = t;
  v.rows = v.cols = n;
  v.row_stride = rs;
  v.col_stride = cs;
  v.device = Device{DeviceType::kCUDA, 0};
  return v;
}

double max_rel(const std::vector<double>& got, const std::vector<double>& want, size_t k) {
  if (got.size() < k || want.size() < k) return INFINITY;
  double e = 0;
  for (size_t i = 0; i < k; ++i) e = std::max(e, std::fabs(got[i] - want[i]) / std::fabs(want[0]));
  return e;
}

// (i + 1)^-alpha for i < n: a descending, covariance-like spectrum.
std::vector<double> power_law(int64_t n, double alpha) {
  std::vector<double> lam(n);
  for (int64_t i = 0; i < n; ++i) lam[i] = std::pow(static_cast<double>(i + 1), -alpha);
  return lam;
}

bool has_warning(const EigResult& r, const char* text) {
  for (const auto& w : r.warnings)
    if (w.find(text) != std::string::npos) return true;
  return false;
}

}  // namespace

int main() {
  std::mt19937_64 rng(7);
  const int64_t n = 60;
  const std::vector<double> lam = power_law(n, 1.0);
  const std::vector<double> a = with_spectrum(lam, rng);
  EigOptions full;
  full.method = EigMethod::kFull;
  try {
    // only the upper triangle is read: the lower one is NaN
    std::vector<double> up = a;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < i; ++j) up[i * n + j] = NAN;
    EigResult r = eigvalsh_cuda(cuda_view(up.data(), DType::kFloat64, n, n, 1), full);
    report("full, row-major, lower triangle NaN", max_rel(r.values, lam, n), 1e-13, r.warnings.empty());
    // column-major layout: the logical upper triangle is the stored lower one
    std::vector<double> cm(n * n);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) cm[i + j * n] = i <= j ? a[i * n + j] : NAN;
    r = eigvalsh_cuda(cuda_view(cm.data(), DType::kFloat64, n, 1, n), full);
    report("full, column-major view, other triangle NaN", max_rel(r.values, lam, n), 1e-13);
    // finite garbage in the other triangle: still only the upper one read, and warned about
    // (numpy and torch read the lower one by default)
    std::vector<double> junk = a;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < i; ++j) junk[i * n + j] += 0.5;
    r = eigvalsh_cuda(cuda_view(junk.data(), DType::kFloat64, n, n, 1), full);
    report("full, other triangle differs: upper read, warned", max_rel(r.values, lam, n), 1e-13,
           r.warnings.size() == 1 && has_warning(r, "not symmetric"));
    std::vector<float> af(a.begin(), a.end());
    r = eigvalsh_cuda(cuda_view(af.data(), DType::kFloat32, n, n, 1), full);
    report("full, float32 matrix", max_rel(r.values, lam, n), 1e-6);
    EigOptions single = full;
    single.single_precision = true;
    r = eigvalsh_cuda(cuda_view(a.data(), DType::kFloat64, n, n, 1), single);
    report("full, single_precision solve", max_rel(r.values, lam, n), 1e-5, r.warnings.empty());
    // the retry chain
    setenv("GF_FAKE_SYEVD_FAIL", "f32", 1);
    r = eigvalsh_cuda(cuda_view(a.data(), DType::kFloat64, n, n, 1), single);
    report("cuSOLVER float32 failure -> float64, warned", max_rel(r.values, lam, n), 1e-13,
           r.warnings.size() == 1 && has_warning(r, "retried in float64"));
    setenv("GF_FAKE_SYEVD_FAIL", "all", 1);
    r = eigvalsh_cuda(cuda_view(a.data(), DType::kFloat64, n, n, 1), single);
    report("cuSOLVER failures -> CPU, warned twice", max_rel(r.values, lam, n), 1e-13,
           r.warnings.size() == 2 && has_warning(r, "solved on the CPU"));
    std::vector<double> bad = a;
    bad[3 * n + 5] = NAN;
    bool raised = false;
    try {
      eigvalsh_cuda(cuda_view(bad.data(), DType::kFloat64, n, n, 1), full);
    } catch (const ValueError&) {
      raised = true;
    }
    report("non-finite matrix: a ValueError before any solver, not NaN", 0.0, 1.0, raised);
    {
      // a view at a storage offset with a padded row stride (a[1:, 1:]-like: any offset, any
      // stride), float32; and data misaligned for its type (a cupy array made at memptr + 1 / + 2):
      // a ValueError before any kernel reads it (each load would fault on a GPU)
      const int64_t ld = n + 3;
      std::vector<float> padded(static_cast<size_t>((n + 1) * ld + 8), NAN);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) padded[1 + i * ld + j] = static_cast<float>(a[i * n + j]);
      r = eigvalsh_cuda(cuda_view(padded.data() + 1, DType::kFloat32, n, ld, 1), full);
      const bool strided_ok = max_rel(r.values, lam, n) <= 1e-6;
      std::vector<unsigned char> raw(n * n * sizeof(double) + 16);
      bool refused = true;
      for (DType t : {DType::kFloat64, DType::kFloat32}) {
        const size_t shift = t == DType::kFloat64 ? 4 : 2;
        const auto at = reinterpret_cast<std::uintptr_t>(raw.data());
        unsigned char* p = raw.data() + (16 - at % 16) % 16 + shift;
        for (int64_t i = 0; i < n * n; ++i) {
          if (t == DType::kFloat64) std::memcpy(p + i * 8, &a[i], 8);
          const float f = static_cast<float>(a[i]);
          if (t == DType::kFloat32) std::memcpy(p + i * 4, &f, 4);
        }
        bool this_one = false;
        try {
          eigvalsh_cuda(cuda_view(p, t, n, n, 1), full);
        } catch (const ValueError& e) {
          this_one = std::string(e.what()).find("aligned") != std::string::npos;
        }
        try {
          eigvalsh_many({cuda_view(a.data(), DType::kFloat64, n, n, 1), cuda_view(p, t, n, n, 1)}, full);
          this_one = false;
        } catch (const ValueError& e) {
          this_one = this_one && std::string(e.what()).find("aligned") != std::string::npos;
        }
        refused = refused && this_one;
      }
      report("offset + padded float32 view solved; misaligned data refused", max_rel(r.values, lam, n), 1e-6,
             strided_ok && refused, refused ? "" : " (misaligned data taken)");
    }
    unsetenv("GF_FAKE_SYEVD_FAIL");

    // randomized top-k over CudaDenseOps (cuBLAS products, CholeskyQR2, small syevd)
    const int64_t m = 400;
    const std::vector<double> lam2 = power_law(m, 2.0);
    const std::vector<double> b = with_spectrum(lam2, rng);
    EigOptions rnd;
    rnd.method = EigMethod::kRandomized;
    rnd.k = 20;
    r = eigvalsh_cuda(cuda_view(b.data(), DType::kFloat64, m, m, 1), rnd);
    report("randomized top-20 of 400 (alpha = 2)", max_rel(r.values, lam2, 20), 1e-6, r.values.size() == 20 && r.converged);
    rnd.k = m - 4;  // k + oversample >= n: the dense solver
    r = eigvalsh_cuda(cuda_view(b.data(), DType::kFloat64, m, m, 1), rnd);
    report("randomized with k + oversample >= n: dense", max_rel(r.values, lam2, m - 4), 1e-12, r.values.size() == size_t(m - 4));
    {
      // n not a multiple of the 32-column block: the last block is narrower and the space
      // reaches all n columns (exact values); and a matrix of 1e200 (xᵀx would overflow)
      const int64_t m3 = 50;
      const std::vector<double> lam3 = power_law(m3, 1.0);
      const std::vector<double> b3 = with_spectrum(lam3, rng);
      rnd.k = 8;
      r = eigvalsh_cuda(cuda_view(b3.data(), DType::kFloat64, m3, m3, 1), rnd);
      report("randomized top-8 of 50: a narrower last block, exact", max_rel(r.values, lam3, 8), 1e-10,
             r.converged && r.warnings.empty());
      std::vector<double> big(b.size()), lam_big(lam2.size());
      for (size_t i = 0; i < b.size(); ++i) big[i] = b[i] * 1e200;
      for (size_t i = 0; i < lam2.size(); ++i) lam_big[i] = lam2[i] * 1e200;
      rnd.k = 20;
      r = eigvalsh_cuda(cuda_view(big.data(), DType::kFloat64, m, m, 1), rnd);
      report("randomized top-20 of 400 times 1e200 (operator scaled)", max_rel(r.values, lam_big, 20), 1e-6,
             r.values.size() == 20 && r.converged);
    }

    // accumulators: spectrum() and the batched spectra
    std::vector<std::unique_ptr<GramBackend>> accs;
    std::vector<std::vector<double>> data;  // each accumulator's rows, kept alive
    std::normal_distribution<double> nd;
    for (int64_t d : {17, 40, 23}) {
      data.emplace_back(700 * d);
      for (auto& v : data.back()) v = 5.0 + nd(rng);
      accs.push_back(make_cuda_gram(d, 0, Precision::kHighest));
      MatrixView v = cuda_view(data.back().data(), DType::kFloat64, d, d, 1);
      v.rows = 700;
      accs.back()->update(v);
    }
    // the reference: the host solver on the accumulator's covariance
    auto reference = [&](const GramBackend& g) {
      std::vector<double> cov(g.dim() * g.dim());
      g.covariance(1, cov.data());
      return eigvalsh_cpu(cuda_view(cov.data(), DType::kFloat64, g.dim(), g.dim(), 1), full).values;
    };
    std::vector<const GramBackend*> ptrs;
    for (auto& g : accs) ptrs.push_back(g.get());
    std::vector<EigResult> batch = spectra(ptrs, 1, full);
    double worst = 0;
    bool same = batch.size() == accs.size();
    for (size_t i = 0; i < accs.size() && same; ++i) {
      const EigResult one = accs[i]->spectrum(1, full);
      worst = std::max(worst, max_rel(batch[i].values, reference(*accs[i]), accs[i]->dim()));
      same = same && batch[i].values == one.values && batch[i].warnings.empty();
    }
    report("spectra of 3 accumulators = spectrum() of each", worst, 1e-13, same);
    setenv("GF_FAKE_SYEVD_FAIL", "all", 1);
    batch = spectra(ptrs, 1, full);
    bool warned = batch.size() == 3;
    double worst2 = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      warned = warned && has_warning(batch[i], "batched cuSOLVER syevd failed") && has_warning(batch[i], "solved on the CPU");
      worst2 = std::max(worst2, max_rel(batch[i].values, reference(*accs[i]), accs[i]->dim()));
    }
    report("batched syevd failing: each redone alone, warned", worst2, 1e-13, warned);
    unsetenv("GF_FAKE_SYEVD_FAIL");

    // eigvalsh of a batch of matrices (eigvalsh_cuda_batch): row-major, column-major (other triangle
    // NaN), float32 and one whose other triangle differs; each = eigvalsh_cuda of it alone
    {
      std::vector<MatrixView> views = {cuda_view(a.data(), DType::kFloat64, n, n, 1),
                                       cuda_view(cm.data(), DType::kFloat64, n, 1, n),
                                       cuda_view(af.data(), DType::kFloat32, n, n, 1),
                                       cuda_view(junk.data(), DType::kFloat64, n, n, 1)};
      std::vector<EigResult> rs = eigvalsh_many(views, full);
      bool same = rs.size() == views.size();
      double err = 0;
      for (size_t i = 0; i < views.size() && same; ++i) {
        const EigResult one = eigvalsh_cuda(views[i], full);
        same = same && rs[i].values == one.values && rs[i].warnings == one.warnings;
        err = std::max(err, max_rel(rs[i].values, lam, n) * (views[i].dtype == DType::kFloat32 ? 1e-7 : 1.0));
      }
      report("eigvalsh of a batch of 4 views = eigvalsh of each (warnings too)", err, 1e-13,
             same && rs[3].warnings.size() == 1 && has_warning(rs[3], "not symmetric"));
      std::vector<MatrixView> with_bad = views;
      with_bad[1] = cuda_view(bad.data(), DType::kFloat64, n, n, 1);
      std::string said;
      try {
        eigvalsh_many(with_bad, full);
      } catch (const ValueError& e) {
        said = e.what();
      }
      report("batch with a non-finite matrix: a ValueError naming it", 0.0, 1.0,
             said.find("[eigvalsh] matrix 1 of the batch: the matrix holds 1 non-finite") == 0);  // as the CPU says
      setenv("GF_FAKE_SYEVD_FAIL", "all", 1);
      rs = eigvalsh_many(views, full);
      bool alone = rs.size() == views.size();
      double err2 = 0;
      for (size_t i = 0; i < rs.size(); ++i) {
        alone = alone && has_warning(rs[i], ("batched cuSOLVER syevd failed for matrix " + std::to_string(i)).c_str()) &&
                has_warning(rs[i], "solved on the CPU");
        err2 = std::max(err2, max_rel(rs[i].values, lam, n) * (views[i].dtype == DType::kFloat32 ? 1e-7 : 1.0));
      }
      report("batch whose syevd fails: each redone alone, warned", err2, 1e-13, alone);
      unsetenv("GF_FAKE_SYEVD_FAIL");
      EigOptions top = full;
      top.method = EigMethod::kRandomized;
      top.k = 20;
      const std::vector<MatrixView> two = {cuda_view(b.data(), DType::kFloat64, m, m, 1),
                                           cuda_view(b.data(), DType::kFloat64, m, 1, m)};
      rs = eigvalsh_many(two, top);
      report("randomized batch: top-20 of each", std::max(max_rel(rs[0].values, lam2, 20), max_rel(rs[1].values, lam2, 20)),
             1e-6, rs.size() == 2 && rs[0].values.size() == 20 && rs[1].values.size() == 20);
    }
  } catch (const std::exception& e) {
    std::printf("EXCEPTION: %s\n", e.what());
    return 1;
  }
  std::printf(failures == 0 ? "ALL OK\n" : "FAILURES\n");
  return failures == 0 ? 0 : 1;
}
