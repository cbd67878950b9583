// Symmetric eigenvalues on a CUDA device: full (cuSOLVER syevd, values only) and randomized top-k
// (the shared randomized_eigvalsh over CudaDenseOps: cuBLAS products, CholeskyQR2 with a
// Householder fallback, a small syevd for Rayleigh–Ritz).
//
// Host synchronisations: full: one, to read the values and the solver's info. Randomized: the
// shared algorithm reads the Ritz values on the host every iteration (its convergence test), and
// each CholeskyQR pass reads potrf's info to know whether to fall back to Householder QR: about
// three small reads per iteration, inherent to the algorithm's interface.
#include <algorithm>
#include <cstring>
#include <cmath>
#include <set>
#include <vector>

#include "cuda/cuda_utils.hpp"
#include "cuda/eig_cuda.hpp"
#include "cuda/gram_kernels.cuh"
#include "geomfast/backend.hpp"
#include "geomfast/eig.hpp"

namespace geomfast {
namespace cuda {

void syevd_enqueue(HandleLease& lease, cudaDataType_t t, void* w, int64_t n, void* vals, int* info,
                   std::vector<char>& host_work, cudaStream_t st) {
  size_t dev_bytes = 0, host_bytes = 0;
  GF_CUSOLVER_CHECK(cusolverDnXsyevd_bufferSize(lease.h.solver, lease.h.params, CUSOLVER_EIG_MODE_NOVECTOR,
                                                CUBLAS_FILL_MODE_UPPER, n, t, w, n, t, vals, t, &dev_bytes,
                                                &host_bytes));
  AsyncBuffer work(dev_bytes, st);  // freed in stream order, after the solver has used it
  host_work.assign(std::max<size_t>(host_bytes, 1), 0);
  GF_CUSOLVER_CHECK(cusolverDnXsyevd(lease.h.solver, lease.h.params, CUSOLVER_EIG_MODE_NOVECTOR,
                                     CUBLAS_FILL_MODE_UPPER, n, t, w, n, t, vals, t, work.as<void>(), dev_bytes,
                                     host_work.data(), host_bytes, info));
}

namespace {

bool all_finite(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
}

}  // namespace

EigResult batched_result(const double* vals, int64_t n, int info, const char* func, const char* what, size_t i,
                         const std::function<EigResult()>& alone) {
  std::vector<double> v(vals, vals + n);
  if (info != 0 || !all_finite(v)) {
    EigResult r = alone();  // the retry chain, warned
    r.warnings.insert(r.warnings.begin(), detail::concat(func, ": batched cuSOLVER syevd failed for ", what, " ", i,
                                                         " (info=", info, ", or non-finite values); solved it alone"));
    return r;
  }
  std::reverse(v.begin(), v.end());  // syevd: ascending
  EigResult r;
  r.values = std::move(v);
  return r;
}

namespace {

// Ascending eigenvalues of the symmetric n x n matrix in `w` (float64 col-major; overwritten when
// solved in float64) with cusolverDnXsyevd, values only. Returns false when cuSOLVER reports a
// failure (info != 0) or a value is not finite. `hinfo`: one pinned int, reused across calls (a
// pinned allocation per call would cost a cudaFreeHost, a device-wide sync, per solver iteration).
bool syevd_values(HandleLease& lease, double* w, int64_t n, bool single, std::vector<double>& out,
                  int& info_out, int* hinfo, cudaStream_t st) {
  const cudaDataType_t t = single ? CUDA_R_32F : CUDA_R_64F;
  const size_t esize = single ? sizeof(float) : sizeof(double);
  AsyncBuffer a32(single ? static_cast<size_t>(n * n) * sizeof(float) : 0, st);
  void* a = w;
  if (single) {
    convert_f64_to_f32(w, n * n, a32.as<float>(), st);
    a = a32.as<void>();
  }
  AsyncBuffer vals(static_cast<size_t>(n) * esize, st);
  AsyncBuffer info(sizeof(int), st);
  std::vector<char> host_work;
  syevd_enqueue(lease, t, a, n, vals.as<void>(), info.as<int>(), host_work, st);
  out.assign(static_cast<size_t>(n), 0.0);
  if (single) {
    std::vector<float> v(static_cast<size_t>(n));
    GF_CUDA_CHECK(cudaMemcpyAsync(v.data(), vals.as<void>(), n * esize, cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaMemcpyAsync(hinfo, info.as<int>(), sizeof(int), cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaStreamSynchronize(st));
    std::copy(v.begin(), v.end(), out.begin());
  } else {
    GF_CUDA_CHECK(cudaMemcpyAsync(out.data(), vals.as<void>(), n * esize, cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaMemcpyAsync(hinfo, info.as<int>(), sizeof(int), cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaStreamSynchronize(st));
  }
  info_out = *hinfo;
  return *hinfo == 0 && all_finite(out);
}

// The CPU solver on a host copy of the symmetric matrix (the last resort of the full solver).
std::vector<double> eigvalsh_on_host(const MatrixView& a, int64_t n, cudaStream_t st) {
  AsyncBuffer w(static_cast<size_t>(n * n) * sizeof(double), st);
  symmetrize_view(a, w.as<double>(), st);
  std::vector<double> host(static_cast<size_t>(n * n));
  GF_CUDA_CHECK(cudaMemcpyAsync(host.data(), w.as<double>(), host.size() * sizeof(double),
                                cudaMemcpyDeviceToHost, st));
  GF_CUDA_CHECK(cudaStreamSynchronize(st));
  EigOptions full;
  full.method = EigMethod::kFull;
  return eigvalsh_cpu(square_f64_view(host.data(), n), full).values;  // descending
}

class CudaDenseOps final : public DenseOps {
 public:
  CudaDenseOps(HandleLease& lease, const double* a, int64_t n, cudaStream_t st)
      : lease_(lease), a_(a), n_(n), st_(st), info_(1) {}
  ~CudaDenseOps() override {
    for (double* p : live_) stream_free(p, st_, pooled_);
  }

  Mat alloc(int64_t rows, int64_t cols) override {
    Mat m;
    m.rows = rows;
    m.cols = cols;
    m.data = static_cast<double*>(
        stream_alloc(std::max<size_t>(static_cast<size_t>(rows * cols) * sizeof(double), 8), st_, pooled_));
    live_.insert(m.data);
    return m;
  }

  void release(Mat& m) override {
    if (m.data && live_.erase(m.data)) stream_free(m.data, st_, pooled_);
    m.data = nullptr;
  }

  void upload(const double* host, Mat& dst) override {
    // Pageable source: returns once the data are staged, so `host` may be freed right after.
    GF_CUDA_CHECK(cudaMemcpyAsync(dst.data, host, static_cast<size_t>(dst.rows * dst.cols) * sizeof(double),
                                  cudaMemcpyHostToDevice, st_));
  }

  void apply(const Mat& x, Mat& y) override {  // y = A x
    GF_ASSERT(x.rows == n_ && y.rows == n_ && y.cols == x.cols, "apply shapes");
    const double zero = 0.0;
    GF_CUBLAS_CHECK(cublasDgemm(blas(), CUBLAS_OP_N, CUBLAS_OP_N, i32(n_), i32(x.cols), i32(n_), &scale, a_,
                                i32(n_), x.data, i32(x.rows), &zero, y.data, i32(y.rows)));
  }

  void gemm_tn(const Mat& x, const Mat& y, Mat& b) override {  // b = xᵀ y
    GF_ASSERT(x.rows == y.rows && b.rows == x.cols && b.cols == y.cols, "gemm_tn shapes");
    const double one = 1.0, zero = 0.0;
    GF_CUBLAS_CHECK(cublasDgemm(blas(), CUBLAS_OP_T, CUBLAS_OP_N, i32(x.cols), i32(y.cols), i32(x.rows), &one,
                                x.data, i32(x.rows), y.data, i32(y.rows), &zero, b.data, i32(b.rows)));
  }

  void gemm_nn(const Mat& x, const Mat& y, Mat& z, double alpha, double beta) override {  // z = αxy + βz
    GF_ASSERT(x.rows == z.rows && x.cols == y.rows && y.cols == z.cols, "gemm_nn shapes");
    GF_CUBLAS_CHECK(cublasDgemm(blas(), CUBLAS_OP_N, CUBLAS_OP_N, i32(x.rows), i32(y.cols), i32(x.cols), &alpha,
                                x.data, i32(x.rows), y.data, i32(y.rows), &beta, z.data, i32(z.rows)));
  }

  void download(const Mat& src, double* host) override {
    GF_CUDA_CHECK(cudaMemcpyAsync(host, src.data, static_cast<size_t>(src.rows * src.cols) * sizeof(double),
                                  cudaMemcpyDeviceToHost, st_));
    GF_CUDA_CHECK(cudaStreamSynchronize(st_));
  }

  bool orthonormalize(Mat& x) override {
    // CholeskyQR2; when a Cholesky factorisation fails (x numerically rank-deficient), Householder.
    if (cholesky_qr(x) && cholesky_qr(x)) return false;
    householder_qr(x);
    return true;
  }

  std::vector<double> small_eigvalsh(const Mat& b) override {
    GF_ASSERT(b.rows == b.cols, "small_eigvalsh needs a square matrix");
    const int64_t k = b.rows;
    AsyncBuffer w(static_cast<size_t>(k * k) * sizeof(double), st_);
    // Symmetrised copy (syevd overwrites its input).
    MatrixView v;
    v.data = b.data;
    v.dtype = DType::kFloat64;
    v.rows = v.cols = k;
    v.row_stride = 1;  // col-major
    v.col_stride = k;
    v.device = Device{DeviceType::kCUDA, 0};
    symmetrize_view(v, w.as<double>(), st_);
    std::vector<double> vals;
    int info = 0;
    if (syevd_values(lease_, w.as<double>(), k, false, vals, info, info_.get(), st_)) {
      std::reverse(vals.begin(), vals.end());
      return vals;
    }
    return eigvalsh_on_host(v, k, st_);
  }

 private:
  static int i32(int64_t v) { return static_cast<int>(v); }
  cublasHandle_t blas() const { return lease_.h.blas; }

  bool cholesky_qr(Mat& x) {
    const int64_t m = x.rows, k = x.cols;
    AsyncBuffer r(static_cast<size_t>(k * k) * sizeof(double), st_);
    const double one = 1.0, zero = 0.0;
    GF_CUBLAS_CHECK(cublasDsyrk(blas(), CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_T, i32(k), i32(m), &one, x.data,
                                i32(m), &zero, r.as<double>(), i32(k)));
    int lwork = 0;
    GF_CUSOLVER_CHECK(cusolverDnDpotrf_bufferSize(lease_.h.solver, CUBLAS_FILL_MODE_UPPER, i32(k), r.as<double>(),
                                                  i32(k), &lwork));
    AsyncBuffer work(static_cast<size_t>(std::max(lwork, 1)) * sizeof(double), st_);
    AsyncBuffer dinfo(sizeof(int), st_);
    GF_CUSOLVER_CHECK(cusolverDnDpotrf(lease_.h.solver, CUBLAS_FILL_MODE_UPPER, i32(k), r.as<double>(), i32(k),
                                       work.as<double>(), lwork, dinfo.as<int>()));
    GF_CUDA_CHECK(cudaMemcpyAsync(info_.get(), dinfo.as<int>(), sizeof(int), cudaMemcpyDeviceToHost, st_));
    GF_CUDA_CHECK(cudaStreamSynchronize(st_));
    if (info_[0] != 0) return false;
    // x = x R⁻¹ (R upper, xᵀx = RᵀR).
    GF_CUBLAS_CHECK(cublasDtrsm(blas(), CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N,
                                CUBLAS_DIAG_NON_UNIT, i32(m), i32(k), &one, r.as<double>(), i32(k), x.data,
                                i32(m)));
    return true;
  }

  void householder_qr(Mat& x) {
    const int64_t m = x.rows, k = x.cols;
    AsyncBuffer tau(static_cast<size_t>(std::max<int64_t>(k, 1)) * sizeof(double), st_);
    int lw_qr = 0, lw_q = 0;
    GF_CUSOLVER_CHECK(cusolverDnDgeqrf_bufferSize(lease_.h.solver, i32(m), i32(k), x.data, i32(m), &lw_qr));
    GF_CUSOLVER_CHECK(cusolverDnDorgqr_bufferSize(lease_.h.solver, i32(m), i32(k), i32(k), x.data, i32(m),
                                                  tau.as<double>(), &lw_q));
    const int lwork = std::max({lw_qr, lw_q, 1});
    AsyncBuffer work(static_cast<size_t>(lwork) * sizeof(double), st_);
    AsyncBuffer dinfo(sizeof(int), st_);
    GF_CUSOLVER_CHECK(cusolverDnDgeqrf(lease_.h.solver, i32(m), i32(k), x.data, i32(m), tau.as<double>(),
                                       work.as<double>(), lwork, dinfo.as<int>()));
    GF_CUSOLVER_CHECK(cusolverDnDorgqr(lease_.h.solver, i32(m), i32(k), i32(k), x.data, i32(m),
                                       tau.as<double>(), work.as<double>(), lwork, dinfo.as<int>()));
    // info < 0 would only flag an illegal argument (a bug, caught by the status checks above).
  }

  HandleLease& lease_;
  const double* a_;  // [n, n] col-major, symmetric
  int64_t n_;
  cudaStream_t st_;
  PinnedBuffer<int> info_;  // potrf's and the small syevd's info, read on the host
  std::set<double*> live_;
  bool pooled_ = false;  // how live_ was allocated (one device: the same for all)
};

void check_matrix(const MatrixView& a) {
  if (a.device.type != DeviceType::kCUDA)
    GF_THROW(ValueError, "[eigvalsh] expected a CUDA array, got one on ", a.device.str());
  if (a.rows != a.cols)
    GF_THROW(ValueError, "[eigvalsh] expected a square matrix, got shape (", a.rows, ", ", a.cols, ")");
  if (a.dtype != DType::kFloat64 && a.dtype != DType::kFloat32)
    GF_THROW(TypeError, "[eigvalsh] expected float32 or float64, got ", dtype_name(a.dtype));
  if (!elements_aligned(a))  // before any kernel reads it (a fault would lose the context)
    GF_THROW(ValueError, "[eigvalsh] expected ", dtype_name(a.dtype), " data aligned to its ", dtype_size(a.dtype),
             "-byte elements, got a matrix starting ", reinterpret_cast<std::uintptr_t>(a.data) % dtype_size(a.dtype),
             " byte(s) past a boundary; pass a copy of it");
}

}  // namespace
}  // namespace cuda

EigResult eigvalsh_cuda(const MatrixView& a, const EigOptions& opt) {
  using namespace cuda;
  check_matrix(a);
  const int64_t n = a.rows;
  EigResult res;
  if (n == 0) return res;
  DeviceGuard guard(a.device.index);
  cudaStream_t st = as_stream(a.stream);
  HandleLease lease(a.device.index, st);
  GF_CUBLAS_CHECK(cublasSetMathMode(lease.h.blas, CUBLAS_DEFAULT_MATH));
  // float64 col-major symmetric work copy, from the upper triangle (as the CPU solver reads it).
  AsyncBuffer w(static_cast<size_t>(n * n) * sizeof(double), st);
  symmetrize_view(a, w.as<double>(), st);
  double asymmetry = 0.0;
  {
    // NaN/Inf: an error at once, as on the CPU, rather than the cuSOLVER retry chain (and a solver
    // that might spin on NaN); and a matrix clearly not symmetric is warned about as on the CPU.
    // One pass over the matrix and one sync, small next to the solve.
    AsyncBuffer flags(3 * sizeof(unsigned long long), st);
    GF_CUDA_CHECK(cudaMemsetAsync(flags.as<void>(), 0, 3 * sizeof(unsigned long long), st));
    check_view(a, flags.as<unsigned long long>(), st);
    unsigned long long h[3] = {0, 0, 0};
    GF_CUDA_CHECK(cudaMemcpyAsync(h, flags.as<void>(), sizeof(h), cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaStreamSynchronize(st));
    if (h[0]) GF_THROW(ValueError, "[eigvalsh] the matrix holds ", h[0], " non-finite value(s) (NaN or Inf)");
    double diff = 0.0, mag = 0.0;
    std::memcpy(&diff, &h[1], sizeof(double));
    std::memcpy(&mag, &h[2], sizeof(double));
    if (mag > 0.0) asymmetry = diff / mag;
  }
  warn_if_asymmetric(asymmetry, res);

  const bool randomized = opt.method == EigMethod::kRandomized;
  if (randomized) {
    if (opt.k < 1 || opt.k > n) GF_THROW(ValueError, "[eigvalsh] k must be in [1, ", n, "], got ", opt.k);
    // As on the CPU: a block as wide as the matrix gains nothing over the dense solver.
    if (opt.k + std::max<int64_t>(opt.oversample, 0) < n) {
      CudaDenseOps ops(lease, w.as<double>(), n, st);
      EigResult r = randomized_eigvalsh(ops, n, opt);
      warn_if_asymmetric(asymmetry, r);
      return r;
    }
  }

  std::vector<double> vals;
  int info = 0;
  PinnedBuffer<int> hinfo(1);
  auto done = [&](std::vector<double> v) {
    std::reverse(v.begin(), v.end());  // syevd: ascending
    if (randomized) v.resize(static_cast<size_t>(opt.k));
    res.values = std::move(v);
    return res;
  };
  if (opt.single_precision) {
    if (syevd_values(lease, w.as<double>(), n, true, vals, info, hinfo.get(), st)) return done(std::move(vals));
    res.warnings.push_back(detail::concat("eigvalsh: cuSOLVER syevd in float32 failed (info=", info,
                                          ", or non-finite values); retried in float64"));
  }
  if (syevd_values(lease, w.as<double>(), n, false, vals, info, hinfo.get(), st)) return done(std::move(vals));
  res.warnings.push_back(detail::concat("eigvalsh: cuSOLVER syevd in float64 failed (info=", info,
                                        ", or non-finite values); solved on the CPU instead"));
  // The CPU solver throws ValueError on a matrix holding NaN/Inf (the usual cause of the failure).
  std::vector<double> host = eigvalsh_on_host(a, n, st);
  if (!all_finite(host)) GF_THROW(RuntimeError, "[eigvalsh] no finite eigenvalues from cuSOLVER or the CPU solver");
  if (randomized) host.resize(static_cast<size_t>(opt.k));
  res.values = std::move(host);
  return res;
}

std::vector<EigResult> eigvalsh_cuda_batch(const std::vector<MatrixView>& as, const EigOptions& opt) {
  using namespace cuda;
  std::vector<EigResult> out(as.size());
  if (as.empty()) return out;
  const int64_t n = as[0].rows;
  for (const MatrixView& a : as) {
    check_matrix(a);
    if (a.rows != n)
      GF_THROW(ValueError, "[eigvalsh] expected a batch of matrices of one size (", n, ", ", n, "), got (", a.rows,
               ", ", a.cols, ")");
  }
  // Randomized (the host reads every iteration) and float32 solves gain nothing from batching.
  if (opt.method == EigMethod::kRandomized || opt.single_precision || n == 0) {
    for (size_t i = 0; i < as.size(); ++i) {
      try {
        out[i] = eigvalsh_cuda(as[i], opt);
      } catch (const ValueError& e) {
        throw in_batch(i, e);
      }
    }
    return out;
  }
  const size_t m = as.size(), nn = static_cast<size_t>(n);
  DeviceGuard guard(as[0].device.index);
  cudaStream_t st = as_stream(as[0].stream);  // the slices of one array: one stream
  std::vector<std::vector<char>> host_work(m);  // syevd's host workspaces: kept past the last sync
  struct SyncOnExit {  // whatever happens below, nothing queued outlives what it uses
    cudaStream_t s;
    ~SyncOnExit() { ignore_error(cudaStreamSynchronize(s)); }
  } sync_on_exit{st};
  // 1. Every matrix's checks (NaN/Inf in the upper triangle, asymmetry) and one sync: a
  // non-finite matrix is an error before any solve (a solver might spin on NaN).
  std::vector<double> asymmetry(m, 0.0);
  {
    AsyncBuffer flags(3 * m * sizeof(unsigned long long), st);
    auto* f = flags.as<unsigned long long>();
    GF_CUDA_CHECK(cudaMemsetAsync(f, 0, 3 * m * sizeof(unsigned long long), st));
    for (size_t i = 0; i < m; ++i) check_view(as[i], f + 3 * i, st);
    PinnedBuffer<unsigned long long> h(3 * m);
    GF_CUDA_CHECK(cudaMemcpyAsync(h.get(), f, 3 * m * sizeof(unsigned long long), cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaStreamSynchronize(st));
    for (size_t i = 0; i < m; ++i) {
      if (h[3 * i])
        GF_THROW(ValueError, "[eigvalsh] matrix ", i, " of the batch: the matrix holds ", h[3 * i],
                 " non-finite value(s) (NaN or Inf)");
      double diff = 0.0, mag = 0.0;
      std::memcpy(&diff, &h[3 * i + 1], sizeof(double));
      std::memcpy(&mag, &h[3 * i + 2], sizeof(double));
      if (mag > 0.0) asymmetry[i] = diff / mag;
    }
  }
  // 2. Every solve queued (float64 syevd, values only) and one sync for all the values.
  AsyncBuffer vals(m * nn * sizeof(double), st), infos(m * sizeof(int), st);
  {
    HandleLease lease(as[0].device.index, st);
    for (size_t i = 0; i < m; ++i) {
      AsyncBuffer w(nn * nn * sizeof(double), st);  // stream-ordered: reused, no sync
      symmetrize_view(as[i], w.as<double>(), st);
      syevd_enqueue(lease, CUDA_R_64F, w.as<void>(), n, vals.as<double>() + i * nn, infos.as<int>() + i,
                    host_work[i], st);
    }
  }
  PinnedBuffer<double> hv(std::max<size_t>(m * nn, 1));
  PinnedBuffer<int> hinfo(m);
  GF_CUDA_CHECK(cudaMemcpyAsync(hv.get(), vals.as<double>(), m * nn * sizeof(double), cudaMemcpyDeviceToHost, st));
  GF_CUDA_CHECK(cudaMemcpyAsync(hinfo.get(), infos.as<int>(), m * sizeof(int), cudaMemcpyDeviceToHost, st));
  GF_CUDA_CHECK(cudaStreamSynchronize(st));
  for (size_t i = 0; i < m; ++i) {
    bool alone = false;
    out[i] = batched_result(hv.get() + i * nn, n, hinfo[i], "eigvalsh", "matrix", i, [&] {
      alone = true;
      return eigvalsh_cuda(as[i], opt);  // warns about asymmetry itself
    });
    if (!alone) warn_if_asymmetric(asymmetry[i], out[i]);
  }
  return out;
}

}  // namespace geomfast
