// CPU Gram accumulation: our own conversion/centering passes (threaded), BLAS syrk over the upper
// triangle for the block products.
//
// update(x), x [n, dim] any strides:
//   pass 1  count non-finite values (and their first row) without touching the state; on the first
//           update also the column means of its first rows (≤ 4096), which become the shift;
//   pass 2  for each block of rows: y = x - shift (float64 arithmetic on exactly up-cast values),
//           Σy in float64, then G += yᵀy by syrk — dsyrk on float64 y (highest), or ssyrk on y
//           rounded to float32 into a float32 buffer flushed into G every fast_flush_rows rows (fast).
//           On CPUs with AMX-BF16, fast runs the same blocks through amx::SplitSyrk instead (y split
//           exactly into three bf16 parts, six part products on the tile unit; amx_gram.cpp).
//           On CPUs with AMX-INT8, highest runs bf16/f16 input through amx::ExactSyrk instead of
//           dsyrk: with the shift on the input's grid, y has few significant bits, and its int8
//           digits multiply exactly on the tile unit (rows that need more digits go to dsyrk;
//           amx_exact.cpp). At least as accurate as dsyrk.
// Both passes use the vectorized row kernels of row_kernels.cpp on row-major input.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <memory>
#include <cstdlib>
#include <mutex>

#include "cpu/amx_exact.hpp"
#include "cpu/amx_gram.hpp"
#include "cpu/blas.hpp"
#include "cpu/convert.hpp"
#include "cpu/parallel.hpp"
#include "cpu/row_kernels.hpp"
#include "geomfast/backend.hpp"
#include "geomfast/errors.hpp"
#include "geomfast/gram.hpp"

namespace geomfast {

namespace blas {
std::mutex& mode_mutex() {
  static std::mutex m;
  return m;
}
SingleThreadedScope::SingleThreadedScope() {
#ifdef GF_BLAS_OPENBLAS
  previous_ = GF_BLAS(openblas_get_num_threads)();
  if (previous_ != 1) GF_BLAS(openblas_set_num_threads)(1);
#endif
}
SingleThreadedScope::~SingleThreadedScope() {
#ifdef GF_BLAS_OPENBLAS
  if (previous_ > 1) GF_BLAS(openblas_set_num_threads)(previous_);
#endif
}
}  // namespace blas

GramTuning& gram_tuning() {
  static GramTuning t;
  return t;
}

const std::string& cpu_amx_unavailable_reason() { return cpu::amx::unavailable_reason(); }
const std::string& cpu_amx_exact_unavailable_reason() { return cpu::amx::exact_unavailable_reason(); }
const std::string& cpu_amx_emulation_unavailable_reason() { return cpu::amx::emulation_unavailable_reason(); }

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
  double max_abs = 0.0;       // over the finite values
  bool short_values = true;   // every value has at most 11 significant bits (RowScan)
};

// The vectorized row kernels of each dtype (row_kernels.cpp).
template <DType T> struct RowOps;
#define GF_ROW_OPS(DT, RAW, SUFFIX)                                                                   \
  template <> struct RowOps<DType::DT> {                                                             \
    static RowScan scan(const RAW* p, int64_t n) { return scan_row_##SUFFIX(p, n); }                 \
    template <typename Out>                                                                          \
    static void center(const RAW* p, int64_t n, const double* s, double* cs, Out* o) {               \
      center_row_##SUFFIX(p, n, s, cs, o);                                                           \
    }                                                                                                \
  };
GF_ROW_OPS(kFloat64, double, f64)
GF_ROW_OPS(kFloat32, float, f32)
GF_ROW_OPS(kBFloat16, uint16_t, bf16)
GF_ROW_OPS(kFloat16, uint16_t, f16)
#undef GF_ROW_OPS

// Pass 1 over rows [r0, r1): non-finite count, first bad row, largest finite magnitude.
template <DType T>
void scan_rows(const MatrixView& x, int64_t r0, int64_t r1, ScanResult& res) {
  using L = Loader<T>;
  const auto* base = static_cast<const typename L::raw*>(x.data);
  const int64_t d = x.cols;
  if (x.col_stride == 1) {
    for (int64_t r = r0; r < r1; ++r) {
      const RowScan s = RowOps<T>::scan(base + r * x.row_stride, d);
      res.max_abs = s.max_abs > res.max_abs ? s.max_abs : res.max_abs;
      res.short_values = res.short_values && s.short_values;
      if (s.nonfinite) {
        res.nonfinite += s.nonfinite;
        res.first_row = std::min(res.first_row, r);
      }
    }
  } else {  // column-major or strided: walk each column's run of rows
    // float32 / float64: OR the low mantissa bits as scan_row_f32/f64 do (11 significant bits)
    uint64_t low = 0;
    for (int64_t c = 0; c < d; ++c) {
      const auto* col = base + c * x.col_stride;
      for (int64_t r = r0; r < r1; ++r) {
        const auto* p = col + r * x.row_stride;
        if constexpr (T == DType::kFloat32) {
          uint32_t u;
          std::memcpy(&u, p, 4);
          low |= u & kShortLowBitsF32;
        } else if constexpr (T == DType::kFloat64) {
          uint64_t u;
          std::memcpy(&u, p, 8);
          low |= u & kShortLowBitsF64;
        }
        if (L::nonfinite(p)) {
          ++res.nonfinite;
          res.first_row = std::min(res.first_row, r);
        } else {
          res.max_abs = std::max(res.max_abs, std::abs(L::get(p)));
        }
      }
    }
    res.short_values = res.short_values && low == 0;
  }
}

// Column sums (and, when colsq is given, sums of squares), exactly up-cast, in float64, over m rows
// spread evenly over x (row i·rows/m for i in [i0, i1)), into colsum [d] / colsq [d]: the shift
// estimate.
template <DType T>
void colsum_sampled(const MatrixView& x, int64_t i0, int64_t i1, int64_t m, double* colsum, double* colsq) {
  using L = Loader<T>;
  const auto* base = static_cast<const typename L::raw*>(x.data);
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t r = i * x.rows / m;
    for (int64_t c = 0; c < x.cols; ++c) {
      const double v = L::get(base + r * x.row_stride + c * x.col_stride);
      colsum[c] += v;
      if (colsq) colsq[c] += v * v;
    }
  }
}

// The float64 value rounded to the nearest bfloat16 (through float; exactly a bf16 value).
double round_to_bf16(double v) {
  const float f = static_cast<float>(v);
  uint32_t b;
  std::memcpy(&b, &f, 4);
  b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
  float r;
  std::memcpy(&r, &b, 4);
  return static_cast<double>(r);
}

// The float16 value nearest v (v within the float16 range): 11 significant bits, or the
// subnormal spacing 2^-24 below 2^-14.
double round_to_f16(double v) {
  if (v == 0.0) return 0.0;
  const int e = std::max(std::ilogb(v), -14);  // |v| in [2^e, 2^(e+1)) for normal values
  return std::ldexp(std::nearbyint(std::ldexp(v, 10 - e)), e - 10);
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
    for (int64_t r = r0; r < r1; ++r)
      RowOps<T>::center(base + r * x.row_stride, d, shift, colsum, out + (r - b0) * d);
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


// fast's float32 accumulator of yᵀy [dim, dim] (col-major upper), one interface for both kernels:
// the AMX split products (amx_gram.cpp) where the CPU has them, else float32 ssyrk (with the BLAS
// threading the caller has set). flush_into adds it into a float64 upper triangle and empties it.
class FastAccumulator {
 public:
  // emulate: the AMX kernel on the software model of the tile instructions (tests).
  FastAccumulator(int64_t dim, bool amx, bool emulate) : dim_(dim), diag_(static_cast<size_t>(dim), 0.0) {
    if (amx) split_ = std::make_unique<amx::SplitSyrk>(dim, emulate);
    else acc_.resize(static_cast<size_t>(dim * dim));
  }
  // acc += yᵀy, y [rows, dim] row-major float32, centred rows of input whose values have at most 11
  // significant bits (`short_input`: 16-bit input, or float16/bfloat16 values held in float32 or
  // float64), or not. For ssyrk, short input goes in calls of at most kShortRun rows: such columns, when
  // their mean is large against their spread, hold a few levels only, and the float32 sums inside
  // one ssyrk call then round coherently, so their error grows with the call's length. Measured
  // (GEOMFAST_AMX=0, bf16 bench.make_activations, relative Frobenius): 512-row calls 2.0e-6 at
  // 60,000 x 512 (over the 1e-6 bar) and 6.7e-7 at 200,000 x 1024; 64-row calls 2.3e-7 and 2.8e-7,
  // columns with means of up to 1e3 spreads 1.2e-6 -> 1.8e-7, for ~12 % more time (bf16 200,000
  // x 1024: 1.28 -> 1.44 s, still 1.5x torch X.float().T @ X.float()). 256-row calls changed
  // nothing, 128 were mixed (9.4e-7 at 200,000 x 1024), the flush interval did not matter. Full-
  // precision float32 input keeps whole blocks: its error stays near 1e-8 either way, and short
  // calls cost 10 %; float32 holding the same bf16 values behaved as bf16 (2.0e-6 before).
  static constexpr int64_t kShortRun = 64;
  void update(const float* y, int64_t rows, bool short_input) {
    const int d = static_cast<int>(dim_);
    add_squares(y, rows);
    if (split_) {
      split_->update(y, rows, dim_);
      pending_ += rows;
      return;
    }
    const int64_t run = short_input ? kShortRun : rows;
    for (int64_t r0 = 0; r0 < rows; r0 += run) {
      const int k = static_cast<int>(std::min(run, rows - r0));
      GF_BLAS(cblas_ssyrk)(blas::kColMajor, blas::kUpper, blas::kNoTrans, d, k, 1.0f, y + r0 * dim_, d,
                           pending_ == 0 ? 0.0f : 1.0f, acc_.data(), d);
      pending_ += k;
    }
  }
  // g[i + j*dim] += acc(i, j) for i < j, g[j + j*dim] += the float64 Σ y_j², then acc = 0.
  void flush_into(double* g) {
    if (pending_ == 0) return;
    std::vector<double> before(static_cast<size_t>(dim_));
    for (int64_t j = 0; j < dim_; ++j) before[j] = g[j + j * dim_];
    if (split_)
      split_->flush_into(g, dim_);
    else
      for (int64_t j = 0; j < dim_; ++j) add_f32_into_f64(acc_.data() + j * dim_, j + 1, g + j * dim_);
    for (int64_t j = 0; j < dim_; ++j) {
      g[j + j * dim_] = before[j] + diag_[j];
      diag_[j] = 0.0;
    }
    pending_ = 0;
  }
  int64_t pending_rows() const { return pending_; }

 private:
  // The diagonal (the columns' sums of squares) in float64 from the same float32 rows: one more
  // read of a block the product has just read (O(rows·d) beside its O(rows·d²)). float32 products
  // lose a column whose values are tiny beside the others' (|y| ~ 1e-20: squares below float32's
  // normal range, flushed or subnormal), and its variance came out negative (-1.1e-44 for a true
  // 1.0e-40); the float64 diagonal keeps every variance right and >= 0.
  void add_squares(const float* y, int64_t rows) { add_squares_f32(y, rows, dim_, diag_.data()); }

  int64_t dim_;
  std::vector<double> diag_;               // float64 Σ y² per column since the last flush
  int64_t pending_ = 0;                    // rows added since the last flush
  std::unique_ptr<amx::SplitSyrk> split_;  // AMX kernel, or
  std::vector<float> acc_;                 // the ssyrk accumulator
};

// Lane of a large update: one thread, one contiguous range of rows, its own single-threaded
// BLAS calls and its own accumulator, so the product scales with the cores (OpenBLAS's own
// threading of one syrk scales poorly on few cores).
struct Lane {
  std::vector<double> buf64;  // [block_rows, dim] centred rows (highest, exact)
  std::vector<float> buf32;   // [block_rows, dim] centred rows (fast)
  std::vector<double> part64; // [dim, dim] col-major upper: the lane's float64 partial (lanes > 0)
  std::vector<double> colsum; // [dim]
  std::unique_ptr<FastAccumulator> fast;  // fast: the lane's float32 accumulator
  std::unique_ptr<amx::ExactSyrk> exact;  // bf16/f16 input on AMX-INT8
};

// The lanes' buffers, shared by the process's accumulators. A lane holds nothing between updates
// (its partial is summed into the state, its float32 accumulator flushed at the end of its rows),
// yet each accumulator used to keep its own after its first large update: up to
// GEOMFAST_LANE_MEMORY_MB (2 GB) each, and a trace of every layer holds dozens of accumulators.
// Updates borrow lanes and give them back (concurrent updates from several threads borrow
// disjoint ones); a width's lanes are freed when no accumulator of that width (and AMX setting) is
// left, and lanes an update gave up on part-way (an exception) are never handed out again.
class LanePool {
 public:
  // (dim, kernel bits: 1 its float32 accumulators use AMX, 2 its AMX kernels run emulated)
  using Key = std::pair<int64_t, int>;
  using Lanes = std::vector<std::unique_ptr<Lane>>;
  static LanePool& instance() {
    static auto* pool = new LanePool();  // never destroyed: accumulators may outlive static destructors
    return *pool;
  }
  Lanes take(Key key, int n) {
    Lanes out;
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto& free = free_[key];
      while (static_cast<int>(out.size()) < n && !free.empty()) {
        out.push_back(std::move(free.back()));
        free.pop_back();
      }
    }
    while (static_cast<int>(out.size()) < n) out.push_back(std::make_unique<Lane>());
    return out;
  }
  void give_back(Key key, Lanes& lanes) {
    std::lock_guard<std::mutex> lk(mu_);
    if (users_.count(key)) {  // (an accumulator of this key is alive: the borrower is)
      auto& free = free_[key];
      for (auto& l : lanes) free.push_back(std::move(l));
    }
    lanes.clear();
  }
  void retain(Key key) {
    std::lock_guard<std::mutex> lk(mu_);
    ++users_[key];
  }
  void release(Key key) {
    std::lock_guard<std::mutex> lk(mu_);
    if (--users_[key] == 0) {
      free_.erase(key);
      users_.erase(key);
    }
  }
  // Lanes held for borrowing (tests: that they are shared, and freed with the last accumulator).
  int64_t held() {
    std::lock_guard<std::mutex> lk(mu_);
    int64_t n = 0;
    for (const auto& kv : free_) n += static_cast<int64_t>(kv.second.size());
    return n;
  }

 private:
  std::mutex mu_;
  std::map<Key, Lanes> free_;
  std::map<Key, int64_t> users_;  // live accumulators per key
};

class CpuGram final : public GramBackend {
 public:
  CpuGram(int64_t dim, Precision p)
      : dim_(dim),
        prec_(p),
        emulate_(gram_tuning().amx_emulate && amx::emulation_available()),
        amx_(p == Precision::kFast && gram_tuning().fast_amx && (emulate_ || amx::available())),
        exact_(p == Precision::kHighest && gram_tuning().exact_amx && (emulate_ || amx::exact_available())) {
    if (dim > 46340) GF_THROW(ValueError, "[GramAccumulator] dim must be <= 46340 (32-bit BLAS), got ", dim);
    reset();
    LanePool::instance().retain(lane_key());  // last: a constructor that throws never counts
  }
  ~CpuGram() override { LanePool::instance().release(lane_key()); }
  CpuGram(const CpuGram&) = delete;
  CpuGram& operator=(const CpuGram&) = delete;
  LanePool::Key lane_key() const { return {dim_, (amx_ ? 1 : 0) | (emulate_ ? 2 : 0)}; }
  int64_t dim() const override { return dim_; }
  Device device() const override { return Device{}; }
  Precision precision() const override { return prec_; }
  int64_t count() const override { return count_; }

  void reset() override {
    std::lock_guard<std::mutex> lk(mu_);
    count_ = 0;
    shift_rows_ = 0;
    shift_.assign(dim_, 0.0);
    scale_.assign(dim_, 0.0);
    sum_.assign(dim_, 0.0);
    g_.assign(static_cast<size_t>(dim_ * dim_), 0.0);
    staged_ = 0;
    stage_inexact_ = false;
    stage_short_ = false;
    stage_fast_.reset();
    max_abs_seen_ = 0.0;
  }

  void update(const MatrixView& x) override {
    if (x.device.type != DeviceType::kCPU)
      GF_THROW(ValueError, "[GramAccumulator.update] x is on ", x.device.str(), ", expected cpu");
    if (x.cols != dim_)
      GF_THROW(ValueError, "[GramAccumulator.update] expected x with ", dim_, " columns, got shape (", x.rows, ", ",
               x.cols, ")");
    if (x.rows < 1) GF_THROW(ValueError, "[GramAccumulator.update] x is empty: shape (", x.rows, ", ", x.cols, ")");
    std::lock_guard<std::mutex> lk(mu_);
    validate_and_shift(x);  // throws before anything changes
    // The exact kernel's per-block costs (column scales, digit planes) want long blocks.
    const bool exact = exact_for(x.dtype);
    const int64_t block = std::max<int64_t>(exact ? amx::ExactSyrk::kPreferredRows : 16, gram_tuning().block_rows);
    const int lanes = lanes_for(x.rows, block);
    if (lanes > 1)
      update_lanes(x, lanes, block, exact);
    else
      update_staged(x, block, exact);
    count_ += x.rows;
    follow_drift(x.dtype);
  }

  GramState state() const override {
    std::lock_guard<std::mutex> lk(mu_);
    const_cast<CpuGram*>(this)->settle_pending();
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
    shift_rows_ = s.count;
    shift_ = s.shift;
    sum_ = s.sum;
    g_ = s.gram;  // symmetric, so row- and column-major agree
    scale_ = state_spread();  // the loaded rows' spread, for the drift checks
    staged_ = 0;
    stage_inexact_ = false;
    stage_short_ = false;
    stage_fast_.reset();
    // every loaded row's |x| is within |shift| + sqrt(Σ (x − shift)²) in each column
    max_abs_seen_ = 0.0;
    for (int64_t c = 0; c < dim_; ++c)
      max_abs_seen_ = std::max(max_abs_seen_, std::abs(shift_[c]) + std::sqrt(std::max(0.0, g_[c + c * dim_])));
  }

  void add_state(const GramState& s) override {
    check_state(s, "merge");
    GramState mine = state();
    add_state_into(mine, s);
    set_state(mine);
  }

  // Straight from the internal triangle into `out` [dim, dim] row-major (no state copy: for
  // d = 4096 every extra d² buffer costs as much as a good part of the eigensolve).
  void covariance(int64_t ddof, double* out) const override {
    std::lock_guard<std::mutex> lk(mu_);
    const_cast<CpuGram*>(this)->settle_pending();
    if (count_ - ddof <= 0)
      GF_THROW(ValueError, "[GramAccumulator.covariance] needs more rows than ddof: count is ", count_,
               ", ddof is ", ddof);
    const int64_t d = dim_;
    const double n = static_cast<double>(count_), scale = 1.0 / static_cast<double>(count_ - ddof);
    parallel_for(d, 64, [&](int64_t j0, int64_t j1, int) {
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = 0; i <= j; ++i) {
          const double v = covariance_entry(g_[i + j * d], sum_[i], sum_[j], n, scale);
          out[i * d + j] = v;
          out[j * d + i] = v;
        }
    });
  }

  EigResult spectrum(int64_t ddof, const EigOptions& opt) const override {
    std::vector<double> cov(static_cast<size_t>(dim_ * dim_));
    covariance(ddof, cov.data());
    return eigvalsh_cpu_owned(std::move(cov), dim_, opt);
  }

 private:
  // ---- pass 1: every value checked before the state changes; the first update sets the shift.
  void validate_and_shift(const MatrixView& x) {
    const int64_t n = x.rows, d = dim_;
    // The shift is the column means of the rows seen so far (of a chunk, at most kShiftRows rows
    // spread evenly over it: any shift near the mean centres equally well, and summing a whole
    // chunk in float64 cost as much as the validation itself); it is re-estimated while it rests
    // on few rows (a tiny first chunk), and when the data drift away from it (below), so that
    // later rows stay well centred (fast accumulates in float32, where an off-centre shift costs
    // accuracy, and highest's float64 sums lose to cancellation).
    const bool reshift = count_ == 0 || (shift_rows_ < kShiftRows && count_ + n >= 4 * shift_rows_);
    const int nthreads = ThreadPool::instance().size();
    std::vector<ScanResult> scans(nthreads);
    dispatch_dtype(x.dtype, [&](auto tag) {
      parallel_for(n, 64, [&](int64_t r0, int64_t r1, int part) {
        scan_rows<decltype(tag)::value>(x, r0, r1, scans[part]);
      });
    });
    ScanResult scan;
    for (auto& s : scans) {
      scan.nonfinite += s.nonfinite;
      scan.first_row = std::min(scan.first_row, s.first_row);
      scan.max_abs = std::max(scan.max_abs, s.max_abs);
      scan.short_values = scan.short_values && s.short_values;
    }
    short_input_ = scan.short_values;  // for this update's float32 products (FastAccumulator::update)
    chunk_max_abs_ = scan.max_abs;     // for check_squares
    if (scan.nonfinite)
      throw NonFiniteError(detail::concat("[GramAccumulator.update] x holds ", scan.nonfinite,
                                          " non-finite value(s) (NaN or Inf); the first is in row ", scan.first_row,
                                          "; nothing was accumulated"),
                           scan.nonfinite, scan.first_row);
    if (prec_ == Precision::kFast && (scan.max_abs > kFastMaxAbs || (scan.max_abs > 0 && scan.max_abs < kFastMinAbs)))
      GF_THROW(ValueError, "[GramAccumulator.update] precision='fast' multiplies in float32, which cannot hold ",
               "products of values of magnitude ", scan.max_abs, " (expected max |x| in [", kFastMinAbs, ", ",
               kFastMaxAbs, "]); use precision='highest'");
    // A chunk whose mean (from kDriftRows rows spread over it) is far from the shift: the data
    // moved away (a drifting stream, another kind of text), the rows to come are like this chunk,
    // so the state is re-expressed around its mean before its products. (Re-expressing the rows
    // before it costs a few roundings; the final cancellation stays small unless they are most
    // of the rows.) follow_drift catches a drift of chunks too small to judge alone.
    const bool look = !reshift && n >= kDriftChunkRows;
    if (!reshift && !(look && chunk_moved(x))) return check_squares(x, shift_);
    const int64_t m = std::min<int64_t>(n, reshift ? kShiftRows : kDriftRows);
    // The chunk's column means and variances from m rows spread evenly over it (the first rows of
    // a chunk may not be like the rest: sequences sorted by length, a drifting stream).
    std::vector<double> colsums(static_cast<size_t>(nthreads * d), 0.0), colsqs(colsums.size(), 0.0);
    dispatch_dtype(x.dtype, [&](auto tag) {
      parallel_for(m, 256, [&](int64_t i0, int64_t i1, int part) {
        colsum_sampled<decltype(tag)::value>(x, i0, i1, m, colsums.data() + part * d, colsqs.data() + part * d);
      });
    });
    const double n0 = static_cast<double>(count_), w = static_cast<double>(n), total = n0 + w;
    std::vector<double> mean(d), spread(d);
    bool drift = reshift;
    for (int64_t c = 0; c < d; ++c) {
      double s = 0.0, q = 0.0;
      for (int p = 0; p < nthreads; ++p) s += colsums[p * d + c], q += colsqs[p * d + c];
      const double mu = s / static_cast<double>(m), sc = spread_from_sums(s, q, static_cast<double>(m));
      // the rows so far (Σx over them = count·shift + Σy) and this chunk, weighted by their rows
      const double mu0 = count_ > 0 ? shift_[c] + sum_[c] / n0 : 0.0, s0 = scale_[c];
      mean[c] = reshift ? (n0 * mu0 + w * mu) / total : mu;
      spread[c] = pooled_spread(n0, mu0, s0, w, mu, sc);
      const double sd = std::max(s0, sc);
      drift = drift || (sd > 0 && std::abs(mu - shift_[c]) > kDriftSpreads * sd);
    }
    if (!drift) return check_squares(x, shift_);
    on_grid(mean, spread, x.dtype);
    if (look && mean == shift_) return check_squares(x, shift_);
    check_squares(x, mean);  // (before the state moves to the new shift)
    if (count_ == 0) shift_ = mean;
    else reshift_to(mean);
    scale_ = spread;
    shift_rows_ = std::max(shift_rows_, count_ + m);
  }

  // Squares that overflow float64 (values near 1e150 and beyond, summed over the rows) are refused
  // like non-finite values, before the state changes: accepted, they would leave an accumulator
  // whose every later read fails. Every accepted |x| is at most max_abs_seen_ and every shift, a
  // mean of such values, too, so (rows)·(2·max|x|)² bounds each column's Σ (x − shift)² and, by
  // Cauchy–Schwarz, every product sum; only when that bound is not safely finite are the chunk's
  // exact column sums around `shift` (the one its products will use) taken (one more pass) and
  // added to the state's diagonal around it — data far from 0 but well centred
  // (1e152 · (1 + 1e-3·N(0, 1))) is accepted.
  void check_squares(const MatrixView& x, const std::vector<double>& shift) {
    const int64_t d = dim_, n = x.rows;
    const double a = std::max(max_abs_seen_, chunk_max_abs_);
    const double rows = static_cast<double>(count_ + n);
    if (rows * (2 * a) * (2 * a) < kSquaresLimit) {
      max_abs_seen_ = a;
      return;
    }
    settle_pending();  // the staged rows' products into g_, whose diagonal is read below
    const int nthreads = ThreadPool::instance().size();
    std::vector<double> sq(static_cast<size_t>(nthreads * d), 0.0);
    dispatch_dtype(x.dtype, [&](auto tag) {
      using L = Loader<decltype(tag)::value>;
      const auto* base = static_cast<const typename L::raw*>(x.data);
      parallel_for(n, 64, [&](int64_t r0, int64_t r1, int part) {
        double* q = sq.data() + part * d;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = 0; c < d; ++c) {
            const double y = L::get(base + r * x.row_stride + c * x.col_stride) - shift[c];
            q[c] += y * y;
          }
      });
    });
    const double n0 = static_cast<double>(count_);
    for (int64_t c = 0; c < d; ++c) {
      // the state's Σ (x − shift)² from its Σ (x − shift_)²: y + δ with δ = shift_ − shift
      const double delta = shift_[c] - shift[c];
      double total = count_ > 0 ? g_[c + c * d] + 2 * delta * sum_[c] + n0 * delta * delta : 0.0;
      for (int p = 0; p < nthreads; ++p) total += sq[p * d + c];
      if (!(total < kSquaresLimit))
        GF_THROW(ValueError, "[GramAccumulator.update] the squares of x's column ", c, " (|x| up to ",
                 chunk_max_abs_, "), summed over the rows, overflow float64: expected values whose centred squares ",
                 "sum to less than ", kSquaresLimit, "; rescale the input; nothing was accumulated");
    }
    max_abs_seen_ = a;
  }

  // Is the mean of kDriftRows rows spread over x more than kDriftSpreads spreads from the shift in
  // some column? Row-major chunks through the vectorized centring kernel (Σ (x - shift) into a
  // scratch row): every update of >= kDriftChunkRows rows asks, so this must cost little next to
  // the products (the scalar strided loop cost ~10 % of 64-row updates at d = 256).
  bool chunk_moved(const MatrixView& x) const {
    const int64_t d = dim_, m = std::min<int64_t>(x.rows, kDriftRows);
    std::vector<double> colsum(static_cast<size_t>(d), 0.0);
    if (x.col_stride == 1) {
      std::vector<float> scratch(static_cast<size_t>(d));
      dispatch_dtype(x.dtype, [&](auto tag) {
        using L = Loader<decltype(tag)::value>;
        const auto* base = static_cast<const typename L::raw*>(x.data);
        for (int64_t i = 0; i < m; ++i)
          RowOps<decltype(tag)::value>::center(base + (i * x.rows / m) * x.row_stride, d, shift_.data(),
                                               colsum.data(), scratch.data());
      });
    } else {
      dispatch_dtype(x.dtype, [&](auto tag) { colsum_sampled<decltype(tag)::value>(x, 0, m, m, colsum.data(), nullptr); });
      for (int64_t c = 0; c < d; ++c) colsum[c] -= static_cast<double>(m) * shift_[c];
    }
    for (int64_t c = 0; c < d; ++c)
      if (scale_[c] > 0 && std::abs(colsum[c]) > kDriftSpreads * scale_[c] * static_cast<double>(m)) return true;
    return false;
  }

  // fast on AMX with bf16 input, and the exact AMX-INT8 kernel with bf16/f16 input: the shift on
  // the input's grid. bf16 x minus a bf16 shift is exact in float32 with few significant bits
  // (≤ 16 when the exponents are within 8): the AMX kernel then skips the lo products — a third of
  // its work — wherever they are exactly zero (an exact skip). Columns whose mean is close to 0 are
  // not shifted (y = x itself, no lo part). For AMX fast, "close" is 1/4 of a spread: its float32
  // sums of uncentred products lose a factor ~(mean/spread)² against the covariance, and more with
  // the width (the off-diagonal errors add up over d² entries). Measured on the AMX kernel under the
  // software model of its tile instructions (amx_emulation.hpp: the SDM's TDPBF16PS arithmetic),
  // bf16 columns N(r·s, s²), 20,000 rows, d = 1024, relative Frobenius error: with the old bound of 2
  // spreads r = 1.99 gave 1.1e-6 (over the 1e-6 bar) and r = 1 4.6e-7, against ~4e-8 for ssyrk
  // around the float64 mean; with 1/4 spread 1.5e-8 and 2.0e-8. (An AVX512-BF16 kernel with plain
  // float32 sums, written to test this and not kept, gave 2.0e-6 and 6.0e-7; 5.0e-7 at d = 64.)
  // Extrapolated as r²·sqrt(d), 1/4 spread keeps the loss below 1e-7 up to d = 8192. The cost: such
  // columns, now shifted, need their lo products where values lie far below the shift. The exact
  // kernel's integer sums lose nothing uncentred, so it keeps 2 spreads. Not for float32 syrk: its 512-row
  // float32 sums lost accuracy on grid-shifted data (correlated rounding of short values: 1.0-1.7e-6
  // measured). For the exact kernel the few bits are what make the int8 digits exact; the shift's
  // distance from the mean (≤ 2^-9 of it) costs float64 a few bits at most.
  void on_grid(std::vector<double>& mean, const std::vector<double>& spread, DType t) const {
    const bool bf16_grid = (amx_ || exact_) && t == DType::kBFloat16;
    const bool f16_grid = exact_ && t == DType::kFloat16;
    if (!bf16_grid && !f16_grid) return;
    const double near_zero = exact_ ? 2.0 : 0.25;  // spreads: see above
    for (size_t c = 0; c < mean.size(); ++c)
      mean[c] = std::abs(mean[c]) <= near_zero * spread[c] ? 0.0 : bf16_grid ? round_to_bf16(mean[c]) : round_to_f16(mean[c]);
  }

  // After an update: when the state's mean is more than kDriftSpreads spreads from the shift in
  // some column (small chunks drifting away from the rows the shift came from), the state is
  // re-expressed around it. Rows summed k spreads off-centre lose a factor ~k² to cancellation,
  // and the products' rounding grows with the rows (float32 input 5 spreads off, one update: 5e-11
  // at 160,000 rows, over highest's 1e-12). O(d) per update; the re-shift (O(d²)) only on drift.
  void follow_drift(DType t) {
    const int64_t d = dim_;
    const double n0 = static_cast<double>(count_);
    bool drift = false;
    for (int64_t c = 0; c < d && !drift; ++c) drift = scale_[c] > 0 && std::abs(sum_[c]) > kDriftSpreads * scale_[c] * n0;
    if (!drift) return;
    settle_pending();
    std::vector<double> mean(d);
    for (int64_t c = 0; c < d; ++c) mean[c] = shift_[c] + sum_[c] / n0;
    const std::vector<double> spread = state_spread();
    on_grid(mean, spread, t);
    if (mean == shift_) return;
    reshift_to(mean);
    scale_ = spread;
  }

  // The columns' spread over the rows in the (settled) state.
  std::vector<double> state_spread() const {
    std::vector<double> s(static_cast<size_t>(dim_));
    for (int64_t c = 0; c < dim_; ++c) s[c] = spread_from_sums(sum_[c], g_[c + c * dim_], static_cast<double>(count_));
    return s;
  }

  // Re-expresses the state around a new shift (exact algebra; staged work is settled first).
  void reshift_to(const std::vector<double>& s_new) {
    settle_pending();
    const int64_t d = dim_;
    const double n = static_cast<double>(count_);
    std::vector<double> delta(d);
    for (int64_t i = 0; i < d; ++i) delta[i] = shift_[i] - s_new[i];
    // y' = y + δ:  Σy'y'ᵀ = Σyyᵀ + δ(Σy)ᵀ + (Σy)δᵀ + nδδᵀ  (upper triangle, column-major)
    for (int64_t j = 0; j < d; ++j)
      for (int64_t i = 0; i <= j; ++i)
        g_[i + j * d] += delta[i] * sum_[j] + sum_[i] * delta[j] + n * (delta[i] * delta[j]);
    for (int64_t i = 0; i < d; ++i) sum_[i] += n * delta[i];
    shift_ = s_new;
  }

  // How many lanes a large update uses: one per core, as far as rows and memory allow
  // (each extra lane holds a dim × dim partial).
  int lanes_for(int64_t n, int64_t block) const {
    const int cores = ThreadPool::instance().size();
    const int64_t by_rows = n / (2 * block);
    const int64_t per_lane = dim_ * dim_ * (prec_ == Precision::kHighest ? 8 : 8 + 4);  // partial (+ float32)
    const int64_t budget = lane_memory_budget();
    const int64_t by_mem = 1 + budget / std::max<int64_t>(per_lane, 1);
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({cores, by_rows, by_mem})));
  }

  static int64_t lane_memory_budget() {
    static const int64_t budget = [] {
      if (const char* env = std::getenv("GEOMFAST_LANE_MEMORY_MB")) return static_cast<int64_t>(std::atoll(env)) << 20;
      return int64_t{2048} << 20;
    }();
    return budget;
  }

  template <typename Out>
  void center_into(const MatrixView& x, int64_t r0, int64_t r1, Out* out, double* colsum) const {
    dispatch_dtype(x.dtype, [&](auto tag) {
      center_rows<decltype(tag)::value>(x, r0, r0, r1, shift_.data(), out, colsum);
    });
  }

  // ---- small updates: rows are centred into a staging block; the product runs when it fills
  // (multi-threaded BLAS), so many tiny chunks cost no more than a few large ones.
  void update_staged(const MatrixView& x, int64_t block, bool exact) {
    const int64_t d = dim_, n = x.rows;
    const bool highest = prec_ == Precision::kHighest;
    if (staged_ > block) settle_pending();  // the block shrank (retuned, or the exact kernel's longer block ended)
    if (highest) stage64_.resize(static_cast<size_t>(block * d));
    else stage32_.resize(static_cast<size_t>(block * d));
    const int nthreads = ThreadPool::instance().size();
    std::vector<double> partial(static_cast<size_t>(nthreads * d), 0.0);
    int64_t r = 0;
    while (r < n) {
      const int64_t m = std::min(block - staged_, n - r);
      MatrixView sub = x;
      sub.data = static_cast<const char*>(x.data) + static_cast<size_t>(r * x.row_stride) * dtype_size(x.dtype);
      sub.rows = m;
      if (!exact) stage_inexact_ = true;  // rows of other dtypes in this stage: dsyrk for all of it
      if (short_input_) stage_short_ = true;  // fast: short ssyrk calls for all of it
      parallel_for(m, 64, [&](int64_t a, int64_t b, int part) {
        if (highest)
          center_into(sub, a, b, stage64_.data() + (staged_ + a) * d, partial.data() + part * d);
        else
          center_into(sub, a, b, stage32_.data() + (staged_ + a) * d, partial.data() + part * d);
      });
      staged_ += m;
      r += m;
      if (staged_ == block) multiply_stage();
    }
    for (int p = 0; p < nthreads; ++p)
      for (int64_t c = 0; c < d; ++c) sum_[c] += partial[p * d + c];
  }

  // The staged rows' product into g_ (highest: exact kernel or dsyrk) or the float32 accumulator
  // (fast).
  void multiply_stage() {
    if (staged_ == 0) return;
    const int d = static_cast<int>(dim_);
    std::lock_guard<std::mutex> blk(blas::mode_mutex());
    if (prec_ == Precision::kHighest) {
      if (exact_ && !stage_inexact_) {
        if (!stage_exact_) stage_exact_ = std::make_unique<amx::ExactSyrk>(dim_, emulate_);
        blas::SingleThreadedScope single;  // its dsyrk fallback runs on this thread only
        stage_exact_->update(stage64_.data(), staged_, d, g_.data(), d);
      } else {
        GF_BLAS(cblas_dsyrk)(blas::kColMajor, blas::kUpper, blas::kNoTrans, d, (int)staged_, 1.0, stage64_.data(), d,
                             1.0, g_.data(), d);
      }
    } else {
      if (!stage_fast_) stage_fast_ = std::make_unique<FastAccumulator>(dim_, amx_, emulate_);
      stage_fast_->update(stage32_.data(), staged_, stage_short_);
      if (stage_fast_->pending_rows() >= gram_tuning().fast_flush_rows) stage_fast_->flush_into(g_.data());
    }
    staged_ = 0;
    stage_inexact_ = false;
    stage_short_ = false;
  }

  // Everything staged or pending in float32 goes into g_ (before the state is read).
  void settle_pending() {
    multiply_stage();
    if (stage_fast_) stage_fast_->flush_into(g_.data());
  }

  // ---- large updates: `lanes` threads, each over its own rows with single-threaded BLAS.
  void update_lanes(const MatrixView& x, int lanes, int64_t block, bool exact) {
    settle_pending();
    const int64_t d = dim_, n = x.rows;
    const bool highest = prec_ == Precision::kHighest;
    const int64_t flush_rows = std::max<int64_t>(gram_tuning().fast_flush_rows, 1);
    const LanePool::Key key = lane_key();
    struct Borrowed {  // the lanes go back to the pool when this update completes
      LanePool::Key key;
      LanePool::Lanes lanes;
      int exceptions;
      ~Borrowed() {
        // an update that throws part-way leaves float32 rows pending in its lanes: dropped, never
        // flushed into the next borrower's state
        if (std::uncaught_exceptions() == exceptions) LanePool::instance().give_back(key, lanes);
      }
    } borrowed{key, LanePool::instance().take(key, lanes), std::uncaught_exceptions()};
    auto& pool_lanes = borrowed.lanes;
    for (int p = 0; p < lanes; ++p) {
      Lane& L = *pool_lanes[p];
      if (highest) L.buf64.resize(static_cast<size_t>(block * d));
      else L.buf32.resize(static_cast<size_t>(block * d));
      if (p > 0) L.part64.assign(static_cast<size_t>(d * d), 0.0);
      if (!highest && !L.fast) L.fast = std::make_unique<FastAccumulator>(d, amx_, emulate_);
      if (exact && !L.exact) L.exact = std::make_unique<amx::ExactSyrk>(d, emulate_);
      L.colsum.assign(d, 0.0);
    }
    {
      std::lock_guard<std::mutex> blk(blas::mode_mutex());
      blas::SingleThreadedScope single;
      ThreadPool::instance().run(lanes, [&](int p, int np) {
        Lane& L = *pool_lanes[p];
        const int64_t r0 = n * p / np, r1 = n * (p + 1) / np;
        // Lane 0 accumulates straight into g_, the others into their own partials, summed below
        // in lane order: no locks while the lanes run, and the result does not depend on timing.
        double* target = p == 0 ? g_.data() : L.part64.data();
        for (int64_t b0 = r0; b0 < r1; b0 += block) {
          const int64_t nb = std::min(block, r1 - b0);
          if (highest) {
            center_into(x, b0, b0 + nb, L.buf64.data(), L.colsum.data());
            if (exact)
              L.exact->update(L.buf64.data(), nb, d, target, d);
            else
              GF_BLAS(cblas_dsyrk)(blas::kColMajor, blas::kUpper, blas::kNoTrans, (int)d, (int)nb, 1.0, L.buf64.data(),
                                   (int)d, 1.0, target, (int)d);
          } else {
            center_into(x, b0, b0 + nb, L.buf32.data(), L.colsum.data());
            L.fast->update(L.buf32.data(), nb, short_input_);
            if (L.fast->pending_rows() >= flush_rows || b0 + nb >= r1) L.fast->flush_into(target);
          }
        }
      });
    }
    parallel_for(d, 64, [&](int64_t j0, int64_t j1, int) {
      for (int p = 1; p < lanes; ++p) {
        const double* part = pool_lanes[p]->part64.data();
        for (int64_t j = j0; j < j1; ++j) add_f64_into_f64(part + j * d, j + 1, g_.data() + j * d);
      }
    });
    for (int p = 0; p < lanes; ++p)
      for (int64_t c = 0; c < d; ++c) sum_[c] += pool_lanes[p]->colsum[c];
    // (the lanes' buffers stay in the pool for the next large update of any accumulator)
  }

  void check_state(const GramState& s, const char* fn) const {
    if (s.dim != dim_) GF_THROW(ValueError, "[GramAccumulator.", fn, "] dim mismatch: expected ", dim_, ", got ", s.dim);
    if (s.count < 0) GF_THROW(ValueError, "[GramAccumulator.", fn, "] count must be >= 0, got ", s.count);
    const size_t d = static_cast<size_t>(dim_);
    if (s.shift.size() != d || s.sum.size() != d || s.gram.size() != d * d)
      GF_THROW(ValueError, "[GramAccumulator.", fn, "] state arrays have wrong sizes: shift ", s.shift.size(), ", sum ",
               s.sum.size(), ", gram ", s.gram.size(), " (expected ", d, ", ", d, ", ", d * d, ")");
  }

  static constexpr int64_t kShiftRows = 4096;     // re-estimate the shift until it rests on this many rows
  static constexpr double kDriftSpreads = 3.0;    // a mean this many spreads from the shift: re-shift
  static constexpr int64_t kDriftRows = 64;       // rows sampled from a chunk for its mean (to 1/8 spread)
  static constexpr int64_t kDriftChunkRows = 32;  // smaller chunks' own means are too noisy (an outlier
                                                  // row): only the state's mean is checked after them
  static constexpr double kFastMaxAbs = 1e17;     // float32 sums of ≤ 2048·(1e17)² stay finite
  static constexpr double kFastMinAbs = 1e-15;    // below, float32 squares lose digits to underflow

  int64_t dim_;
  Precision prec_;
  // The AMX kernels run on the software model of the tile instructions (GramTuning::amx_emulate,
  // tests on CPUs without AMX), fixed at construction; declared before amx_ and exact_, which read it.
  const bool emulate_;
  int64_t count_ = 0;
  int64_t shift_rows_ = 0;               // rows the shift was estimated from
  std::vector<double> shift_, sum_, g_;  // g_: [dim, dim] col-major, upper triangle valid
  std::vector<double> scale_;            // the columns' spread when the shift was set (drift checks)
  std::vector<double> stage64_;          // [block_rows, dim] staged centred rows (highest, exact)
  std::vector<float> stage32_;           // [block_rows, dim] staged centred rows (fast)
  int64_t staged_ = 0;                   // rows in the staging block (already in count_/sum_)
  double chunk_max_abs_ = 0.0;           // max |x| of the update being validated (check_squares)
  double max_abs_seen_ = 0.0;            // a bound on |x| over every accepted row (check_squares)
  // (a large update's lanes are borrowed from LanePool)
  // fast: AMX split products (amx_gram.cpp) instead of ssyrk, fixed at construction; staged
  // blocks accumulate in stage_fast_ (float32, flushed into g_), lanes in their own.
  const bool amx_;
  std::unique_ptr<FastAccumulator> stage_fast_;
  // highest: exact AMX-INT8 products (amx_exact.cpp) for bf16/f16 input, fixed at construction;
  // a staging block that holds rows of any other dtype goes to dsyrk whole. Not for fast: on bf16
  // input the split products were faster (interleaved, 6 rounds, bf16 200,000 × 1024: median
  // 0.97 s vs 1.24 s for the exact kernel).
  const bool exact_;
  std::unique_ptr<amx::ExactSyrk> stage_exact_;
  bool stage_inexact_ = false;  // the stage holds rows of other dtypes: dsyrk for all of it
  bool stage_short_ = false;    // the stage holds rows of short-valued input (FastAccumulator::update)
  bool short_input_ = false;    // this update's input has at most 11 significant bits (ScanResult)
  bool exact_for(DType t) const { return exact_ && (t == DType::kBFloat16 || t == DType::kFloat16); }
  mutable std::mutex mu_;
};

}  // namespace
}  // namespace cpu

int64_t cpu_pooled_lanes() { return cpu::LanePool::instance().held(); }

std::unique_ptr<GramBackend> make_cpu_gram(int64_t dim, Precision precision) {
  return std::make_unique<cpu::CpuGram>(dim, precision);
}

}  // namespace geomfast
