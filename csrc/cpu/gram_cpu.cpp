// CPU Gram accumulation: our own conversion/centering passes (threaded), BLAS syrk over the upper
// triangle for the block products.
//
// update(x), x [n, dim] any strides:
//   pass 1  count non-finite values (and their first row) without touching the state; on the first
//           update also the column means, which become the shift;
//   pass 2  for each block of rows: y = x - shift (float64 arithmetic on exactly up-cast values),
//           Σy in float64, then G += yᵀy by syrk — dsyrk on float64 y (highest), or ssyrk on y
//           rounded to float32 into a float32 buffer flushed into G every fast_flush_rows rows (fast).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

#include "cpu/blas.hpp"
#include "cpu/convert.hpp"
#include "cpu/parallel.hpp"
#include "geomfast/backend.hpp"
#include "geomfast/errors.hpp"
#include "geomfast/gram.hpp"

namespace geomfast {

GramTuning& gram_tuning() {
  static GramTuning t;
  return t;
}

namespace cpu {

const float* half_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t h = 0; h < 65536; ++h) {
      const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
      float f;
      if (exp == 0) {
        f = std::ldexp(static_cast<float>(man), -24);  // zero / subnormal
        if (sign) f = -f;
      } else if (exp == 31) {
        const uint32_t bits = sign | 0x7f800000u | (man << 13);
        std::memcpy(&f, &bits, 4);
      } else {
        const uint32_t bits = sign | ((exp + 112) << 23) | (man << 13);
        std::memcpy(&f, &bits, 4);
      }
      t[h] = f;
    }
    return t;
  }();
  return table.data();
}

namespace {

struct ScanResult {
  int64_t nonfinite = 0;
  int64_t first_row = std::numeric_limits<int64_t>::max();
};

// Pass 1 over rows [r0, r1): non-finite count/first row; optionally raw column sums.
template <DType T>
void scan_rows(const MatrixView& x, int64_t r0, int64_t r1, ScanResult& res, double* colsum) {
  using L = Loader<T>;
  const auto* base = static_cast<const typename L::raw*>(x.data);
  const int64_t d = x.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const auto* row = base + r * x.row_stride;
    int64_t bad = 0;
    if (colsum) {
      for (int64_t c = 0; c < d; ++c) {
        const double v = L::get(row + c * x.col_stride);
        bad += !std::isfinite(v);
        colsum[c] += v;
      }
    } else {
      for (int64_t c = 0; c < d; ++c) bad += !std::isfinite(L::get(row + c * x.col_stride));
    }
    if (bad) {
      res.nonfinite += bad;
      res.first_row = std::min(res.first_row, r);
    }
  }
}

// Pass 2 for rows [r0, r1) of the block starting at b0: out[(r-b0)*d + c] = x[r, c] - shift[c];
// colsum[c] += that difference (float64).
template <DType T, typename Out>
void center_rows(const MatrixView& x, int64_t b0, int64_t r0, int64_t r1, const double* shift, Out* out,
                 double* colsum) {
  using L = Loader<T>;
  const auto* base = static_cast<const typename L::raw*>(x.data);
  const int64_t d = x.cols;
  if (x.col_stride == 1) {
    for (int64_t r = r0; r < r1; ++r) {
      const auto* row = base + r * x.row_stride;
      Out* o = out + (r - b0) * d;
      for (int64_t c = 0; c < d; ++c) {
        const double y = L::get(row + c) - shift[c];
        colsum[c] += y;
        o[c] = static_cast<Out>(y);
      }
    }
  } else {  // column-major or strided: walk each column's run of rows
    for (int64_t c = 0; c < d; ++c) {
      const auto* col = base + c * x.col_stride;
      double s = 0.0;
      for (int64_t r = r0; r < r1; ++r) {
        const double y = L::get(col + r * x.row_stride) - shift[c];
        s += y;
        out[(r - b0) * d + c] = static_cast<Out>(y);
      }
      colsum[c] += s;
    }
  }
}

template <typename F>
void dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::kFloat64: f(std::integral_constant<DType, DType::kFloat64>{}); break;
    case DType::kFloat32: f(std::integral_constant<DType, DType::kFloat32>{}); break;
    case DType::kFloat16: f(std::integral_constant<DType, DType::kFloat16>{}); break;
    case DType::kBFloat16: f(std::integral_constant<DType, DType::kBFloat16>{}); break;
  }
}

class CpuGram final : public GramBackend {
 public:
  CpuGram(int64_t dim, Precision p) : dim_(dim), prec_(p) {
    if (dim > 46340) GF_THROW(ValueError, "[GramAccumulator] dim must be <= 46340 (32-bit BLAS), got ", dim);
    reset();
  }
  int64_t dim() const override { return dim_; }
  Device device() const override { return Device{}; }
  Precision precision() const override { return prec_; }
  int64_t count() const override { return count_; }

  void reset() override {
    count_ = 0;
    shift_.assign(dim_, 0.0);
    sum_.assign(dim_, 0.0);
    g_.assign(static_cast<size_t>(dim_ * dim_), 0.0);
  }

  void update(const MatrixView& x) override {
    if (x.device.type != DeviceType::kCPU)
      GF_THROW(ValueError, "[GramAccumulator.update] x is on ", x.device.str(), ", expected cpu");
    if (x.cols != dim_)
      GF_THROW(ValueError, "[GramAccumulator.update] expected x with ", dim_, " columns, got shape (", x.rows, ", ",
               x.cols, ")");
    if (x.rows < 1) GF_THROW(ValueError, "[GramAccumulator.update] x is empty: shape (", x.rows, ", ", x.cols, ")");
    std::lock_guard<std::mutex> lk(mu_);
    const int64_t n = x.rows, d = dim_;
    const bool first = count_ == 0;

    // ---- pass 1: validate (and find the shift on the first update)
    const int nthreads = cpu::ThreadPool::instance().size();
    std::vector<ScanResult> scans(nthreads);
    std::vector<double> colsums(first ? static_cast<size_t>(nthreads * d) : 0, 0.0);
    dispatch_dtype(x.dtype, [&](auto tag) {
      parallel_for(n, 64, [&](int64_t r0, int64_t r1, int part) {
        scan_rows<decltype(tag)::value>(x, r0, r1, scans[part], first ? colsums.data() + part * d : nullptr);
      });
    });
    ScanResult scan;
    for (auto& s : scans) {
      scan.nonfinite += s.nonfinite;
      scan.first_row = std::min(scan.first_row, s.first_row);
    }
    if (scan.nonfinite)
      throw NonFiniteError(detail::concat("[GramAccumulator.update] x holds ", scan.nonfinite,
                                          " non-finite value(s) (NaN or Inf); the first is in row ", scan.first_row,
                                          "; nothing was accumulated"),
                           scan.nonfinite, scan.first_row);
    if (first) {
      for (int64_t c = 0; c < d; ++c) {
        double s = 0.0;
        for (int p = 0; p < nthreads; ++p) s += colsums[p * d + c];
        shift_[c] = s / static_cast<double>(n);
      }
    }

    // ---- pass 2: centre blocks of rows and multiply
    const auto& tune = gram_tuning();
    const int64_t block = std::max<int64_t>(1, tune.block_rows);
    std::vector<double> partial(static_cast<size_t>(nthreads * d), 0.0);
    if (prec_ == Precision::kHighest) {
      buf64_.resize(static_cast<size_t>(std::min(block, n) * d));
    } else {
      buf32_.resize(static_cast<size_t>(std::min(block, n) * d));
      acc32_.resize(static_cast<size_t>(d * d));
    }
    const int64_t flush_rows = std::max<int64_t>(tune.fast_flush_rows, 1);
    int64_t since_flush = 0;
    for (int64_t b0 = 0; b0 < n; b0 += block) {
      const int64_t nb = std::min(block, n - b0);
      dispatch_dtype(x.dtype, [&](auto tag) {
        parallel_for(nb, 16, [&](int64_t r0, int64_t r1, int part) {
          if (prec_ == Precision::kHighest)
            center_rows<decltype(tag)::value>(x, b0, b0 + r0, b0 + r1, shift_.data(), buf64_.data(),
                                              partial.data() + part * d);
          else
            center_rows<decltype(tag)::value>(x, b0, b0 + r0, b0 + r1, shift_.data(), buf32_.data(),
                                              partial.data() + part * d);
        });
      });
      // buf is row-major [nb, d] = column-major [d, nb] (A); A·Aᵀ = Σ y yᵀ into the upper triangle.
      if (prec_ == Precision::kHighest) {
        GF_BLAS(cblas_dsyrk)(blas::kColMajor, blas::kUpper, blas::kNoTrans, (int)d, (int)nb, 1.0, buf64_.data(),
                             (int)d, 1.0, g_.data(), (int)d);
      } else {
        GF_BLAS(cblas_ssyrk)(blas::kColMajor, blas::kUpper, blas::kNoTrans, (int)d, (int)nb, 1.0f, buf32_.data(),
                             (int)d, since_flush == 0 ? 0.0f : 1.0f, acc32_.data(), (int)d);
        since_flush += nb;
        if (since_flush >= flush_rows || b0 + nb >= n) {
          flush_fast();
          since_flush = 0;
        }
      }
    }
    for (int p = 0; p < nthreads; ++p)
      for (int64_t c = 0; c < d; ++c) sum_[c] += partial[p * d + c];
    count_ += n;
  }

  GramState state() const override {
    std::lock_guard<std::mutex> lk(mu_);
    GramState s;
    s.dim = dim_;
    s.count = count_;
    s.shift = shift_;
    s.sum = sum_;
    s.gram.resize(g_.size());
    const int64_t d = dim_;
    // g_ is column-major with the upper triangle valid: element (i, j), i <= j, at g_[i + j*d].
    for (int64_t j = 0; j < d; ++j)
      for (int64_t i = 0; i <= j; ++i) {
        const double v = g_[i + j * d];
        s.gram[i * d + j] = v;
        s.gram[j * d + i] = v;
      }
    return s;
  }

  void set_state(const GramState& s) override {
    check_state(s, "load_state");
    std::lock_guard<std::mutex> lk(mu_);
    count_ = s.count;
    shift_ = s.shift;
    sum_ = s.sum;
    g_ = s.gram;  // symmetric, so row- and column-major agree
  }

  void add_state(const GramState& s) override {
    check_state(s, "merge");
    GramState mine = state();
    add_state_into(mine, s);
    set_state(mine);
  }

  void covariance(int64_t ddof, double* out) const override {
    const GramState s = state();
    covariance_from_state(s, ddof, out);
  }

  std::vector<double> spectrum(int64_t ddof, const EigOptions& opt) const override {
    std::vector<double> cov(static_cast<size_t>(dim_ * dim_));
    covariance(ddof, cov.data());
    MatrixView v;
    v.data = cov.data();
    v.dtype = DType::kFloat64;
    v.rows = v.cols = dim_;
    v.row_stride = dim_;
    v.col_stride = 1;
    return eigvalsh_cpu(v, opt).values;
  }

 private:
  void check_state(const GramState& s, const char* fn) const {
    if (s.dim != dim_) GF_THROW(ValueError, "[GramAccumulator.", fn, "] dim mismatch: expected ", dim_, ", got ", s.dim);
    if (s.count < 0) GF_THROW(ValueError, "[GramAccumulator.", fn, "] count must be >= 0, got ", s.count);
    const size_t d = static_cast<size_t>(dim_);
    if (s.shift.size() != d || s.sum.size() != d || s.gram.size() != d * d)
      GF_THROW(ValueError, "[GramAccumulator.", fn, "] state arrays have wrong sizes: shift ", s.shift.size(), ", sum ",
               s.sum.size(), ", gram ", s.gram.size(), " (expected ", d, ", ", d, ", ", d * d, ")");
  }

  void flush_fast() {
    const int64_t d = dim_;
    parallel_for(d, 16, [&](int64_t j0, int64_t j1, int) {
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = 0; i <= j; ++i) g_[i + j * d] += static_cast<double>(acc32_[i + j * d]);
    });
  }

  int64_t dim_;
  Precision prec_;
  int64_t count_ = 0;
  std::vector<double> shift_, sum_, g_;
  std::vector<double> buf64_;
  std::vector<float> buf32_, acc32_;
  mutable std::mutex mu_;
};

}  // namespace
}  // namespace cpu

std::unique_ptr<GramBackend> make_cpu_gram(int64_t dim, Precision precision) {
  return std::make_unique<cpu::CpuGram>(dim, precision);
}

}  // namespace geomfast
