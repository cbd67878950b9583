// CudaGram: the streaming Gram state on a CUDA device (GramBackend over our kernels + cuBLAS).
//
// State (float64, on the device): shift [d], sum = Σ (x - shift) [d], gram = Σ (x - shift)(x -
// shift)ᵀ [d, d] col-major with the upper triangle kept (cuBLAS UPPER), count on the host.
//
// One update(x) of n rows, all on the caller's stream (x.stream):
//  1. column_stats: one fused pass over x (16-byte vector loads where x is row-major and
//     aligned, the common case; one value per load otherwise) computing Σ (x - c) and
//     Σ (x - c)² per column in float64, the number of non-finite values and the first row
//     holding one (atomicMin), and,
//     for the 16-bit split path, values whose split would overflow. Here c is the "kernel shift"
//     the products centre by (below). The first update runs it once more beforehand with c = 0 to
//     set shift = that chunk's column means.
//  2. HOST SYNC (the only one in the steady state): the 3 flags are copied to pinned memory and
//     the stream is synchronised, so that NonFiniteError is thrown before the state is touched.
//     (The first update, and the first one after a state change or a new 16-bit dtype, also
//     downloads the kernel shift once to build the compact column list J.)
//  3. products over blocks of rows, flushed into the float64 state (no sync in this loop):
//     - highest (any dtype): y = x - shift in float64, cublasDsyrk into gram (beta = 1).
//     - fast, float32/float64 input: y = fl32(x - shift), cublasSsyrk (pedantic math: no TF32,
//       which carries only 11 bits) over chains of kFast32ChainRows rows added into a float32
//       block (beta = 1), flushed every kFast32FlushRows rows.
//     - fast, float16/bfloat16 input: the exact hi + lo split on tensor cores (below).
//     On the fast paths the products' diagonal is then replaced by step 1's float64 Σ (x - c)²
//     (float32 products lose a column whose values are tiny beside the others').
//  4. commit: sum += Σ (x - c) - n (shift - c); gram += the exact algebraic correction from
//     centring by c instead of shift (only where they differ); count += n.
//
// Error analysis of the fast 16-bit path. Inputs x are bfloat16 (p = 8 significant bits) or
// float16 (p = 11). Rounding x - shift to 16 bits would cost a relative 2^-p per element (4e-3 for
// bfloat16), far above the `fast` bar (1e-6 relative Frobenius against float64 arithmetic on the
// same values); products on raw x with the shift corrected afterwards lose the small eigenvalues
// of large-offset data to cancellation (Σ x xᵀ is (1 + mean²/var) times larger than what is
// kept). Instead:
//  * the kernel shift c[j] is shift[j] rounded to the input's 16-bit type, or 0 for columns whose
//    |shift| <= kSplitTau · std (there raw x loses at most a factor 1 + kSplitTau² = 1.25 to the
//    later correction);
//  * x - c = hi + lo EXACTLY with hi, lo 16-bit (TwoSum: the rounding error of a 16-bit addition
//    is itself a 16-bit number; see split_rows_kernel). lo = 0 in columns with c = 0, so only the
//    columns J with c != 0 carry a lo part;
//  * Σ (hi + lo)(hi + lo)ᵀ = HᵀH + HᵀL_J + (HᵀL_J)ᵀ + L_JᵀL_J, all with exact 16x16-bit products
//    on tensor cores (cublasGemmEx, float32 accumulation): HᵀH over the upper triangle's column
//    blocks only, HᵀL_J [d, |J|] and L_JᵀL_J [|J|, |J|]. Cost: 1x (plus d²/(2·kTriangleTile) of
//    diagonal-block waste) when no column needs a shift, up to 4x when all do (large offsets);
//  * so the only rounding is float32 accumulation: inside one GEMM call of kBf16ChainRows (bf16)
//    or kF16ChainRows (f16) rows (the tensor cores' chain), then across calls in the float32 block
//    (the GEMM epilogue, beta = 1, round-to-nearest), flushed into float64 every kFast16FlushRows
//    rows. Per entry
//    the chain's relative error is about k·2^-24 for k = rows / 16 tensor-core accumulation steps
//    when the hardware truncates (worst case; about sqrt(k)·2^-24 with round-to-nearest), i.e.
//    ≈ 1e-7..4e-6 at 1024 rows — the chain length is the knob, measured by
//    benchmarks/gpu_check.py (GEOMFAST_CUDA_CHAIN_ROWS and GEOMFAST_CUDA_FLUSH_ROWS override them);
//  * the float64 commit re-expresses Σ (x - c)(x - c)ᵀ around the state's shift exactly in
//    algebra; it amplifies the float32 error by 1 + (shift - c)²/var per column, ≤ 1.25 for c = 0
//    and ≈ 1 + (ulp16(mean)/2)²/var otherwise, which stays O(1) because 16-bit data with a mean
//    that large is itself quantised on that ulp grid.
// Columns whose split would overflow (|x - c| beyond the 16-bit range, only possible for float16
// with huge opposite-signed values) send the chunk down the float32 path instead.
//
// Throughput of the fast 16-bit path (an estimate from the H200's figures, NOT yet measured): a
// float64 flush reads the float32 triangle (2d² bytes) and rewrites the float64 one (8d² bytes),
// about 168 MB at d = 4096, ~48 us at 3.5 TB/s, while the tensor-core work of 1024 rows is ~22 us
// at 790 TFLOP/s (counting N·d²). Flushing every 256 rows (the first design) was bound by the
// flushes, at roughly a tenth of peak; the two levels flush every 8192 rows, but each 256-row
// chain's epilogue still reads and writes the float32 triangle blocks (~84 MB, ~5.5 us of
// products against ~17 us of traffic, less what L2 holds), so this path stays bandwidth-bound
// near a quarter of peak (estimate). The ≥ 60 %-of-peak target needs chains kept in registers
// across thousands of rows, which cuBLAS cannot do without 4096-row chains (model: 2e-5). Hence the
// two-level kernel of gram_tc.cu (GEOMFAST_CUDA_GRAM_KERNEL=tc): tensor-core chains reset every
// 128 rows into a second float32 register accumulator, float64 touched every 8192 rows (model:
// 2.6e-7). That kernel issues WMMA (mma.sync), which public H100 microbenchmarks put well below
// the wgmma rate, so gram_wgmma.cu does the same on wgmma with a cp.async pipeline (=wg; 9.0 only).
// gpu_check.py sweeps GEOMFAST_CUDA_FLUSH_ROWS, GEOMFAST_CUDA_TRIANGLE_TILE and the kernels for
// time AND error at d = 4096, so the defaults here can be set from one run.
// This file's code also runs on the CPU under tests/cuda_emulation (GEOMFAST_CUDA_EMULATE_HOST: the
// kernels emulated, the runtime and cuBLAS calls answered on the host), which checks every update
// path, the state operations and the non-finite rejection against float64 where no GPU exists.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_utils.hpp"
#include "cuda/eig_cuda.hpp"
#include "cuda/gram_kernels.cuh"
#include "geomfast/backend.hpp"
#include "geomfast/gram.hpp"

namespace geomfast {
namespace cuda {
namespace {

// The cuBLAS fast paths work in two levels: each product call (a GEMM or SSYRK over `chain` rows)
// is added into float32 blocks by its epilogue (beta = 1, round-to-nearest), and the blocks are
// flushed into float64 every `flush` rows (GEOMFAST_CUDA_CHAIN_ROWS, GEOMFAST_CUDA_FLUSH_ROWS).
// 16-bit split path on tensor cores: the chain is the hardware's accumulation, which truncates on
// H100 (benchmarks/tensor_core_model.py: 25-bit window, round toward zero), so its error grows
// linearly with the chain: bfloat16 chains of 1024 rows give 3.5e-6, over the 1e-6 bar, 256 give
// 5.6e-7, and the round-to-nearest second level adds nothing visible (5.6e-7 with float64 every
// 8192 rows). float16's 11-bit values make 22-bit products, which lose more to the truncation:
// 1.7e-6 at 256 rows, 7.6e-7 at 128 (`tensor_core_model.py --dtype float16`). The flush, not the product, is what the rows between float64 updates cost: it reads the
// float32 triangle and rewrites the float64 one (~170 MB at d = 4096), against ~84 MB of epilogue
// traffic per chain. Not measured yet; gpu_check.py's sweep measures both knobs.
constexpr int64_t kBf16ChainRows = 256;
constexpr int64_t kF16ChainRows = 128;
constexpr int64_t kFast16FlushRows = 8192;
// float32 input on CUDA cores (round-to-nearest FMA): 512-row SSYRK calls, the CPU backend's
// measured choice of product length.
constexpr int64_t kFast32ChainRows = 512;
constexpr int64_t kFast32FlushRows = 8192;
// Rows split into hi + lo per launch on the cuBLAS 16-bit path (whole chains; the buffers are
// 2 * split rows * d bytes each).
constexpr int64_t kSplitRows = 8192;
// highest: rows centred into float64 per DSYRK (no flush: DSYRK accumulates into the state).
constexpr int64_t kHighestBytes = int64_t(256) << 20;  // cap on the float64 block
// Column blocks of the upper-triangle GEMMs: the block diagonal wastes d·kTriangleTile/2 products.
constexpr int64_t kTriangleTile = 1024;
// Columns with |shift| <= kSplitTau·std are not shifted in the 16-bit split path (no lo part).
constexpr double kSplitTau = 0.5;
// The two-level tensor-core kernel (GEOMFAST_CUDA_GRAM_KERNEL=tc): rows per tensor-core chain
// (GEOMFAST_CUDA_TC_CHAIN_ROWS) and rows per call, i.e. between float64 updates (GEOMFAST_CUDA_TC_ROWS).
constexpr int64_t kTcChainRows = 128;
constexpr int64_t kTcRows = 8192;
// A chunk whose mean is this many spreads from the shift re-centres the state (follow_drift);
// chunks of fewer rows are not judged (their mean is too noisy: one outlier row).
constexpr double kDriftSpreads = 3.0;
constexpr int64_t kDriftChunkRows = 32;

int64_t round_up(int64_t v, int64_t q) { return (v + q - 1) / q * q; }

// Integer tuning knob from the environment (read at each update, so benchmarks/gpu_check.py can
// sweep it in one process); values below `least` keep the default.
int64_t env_int(const char* name, int64_t fallback, int64_t least) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  const long long r = std::atoll(v);
  return r >= least ? static_cast<int64_t>(r) : fallback;
}
// The cuBLAS fast paths' rows per product call and rows between float64 flushes, for a chunk of
// `rows` rows: {chain, flush} with 1 <= chain <= flush <= rows.
std::pair<int64_t, int64_t> chain_and_flush_rows(int64_t chain_default, int64_t flush_default, int64_t rows) {
  const int64_t flush = std::min(env_int("GEOMFAST_CUDA_FLUSH_ROWS", flush_default, 16), rows);
  return {std::min(env_int("GEOMFAST_CUDA_CHAIN_ROWS", chain_default, 16), flush), flush};
}
// GEOMFAST_CUDA_TRIANGLE_TILE: the column-block width of the upper-triangle products.
int64_t env_triangle_tile() { return env_int("GEOMFAST_CUDA_TRIANGLE_TILE", kTriangleTile, 64); }
// GEOMFAST_CUDA_WG_TILE_N: the wg kernel's tile width, 128 (default) or 192 (fewer operand bytes
// per product: the knob for telling whether L2 bandwidth bounds it).
int wg_tile_n() {
  const char* v = std::getenv("GEOMFAST_CUDA_WG_TILE_N");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "128") == 0) return 128;
  if (std::strcmp(v, "192") == 0) return 192;
  GF_THROW(ValueError, "[GramAccumulator.update] GEOMFAST_CUDA_WG_TILE_N: expected 128 or 192, got '", v, "'");
}
// The fast 16-bit path's products: GEOMFAST_CUDA_GRAM_KERNEL = cublas (default: cuBLAS over the
// triangle's column blocks), tc (gram_tc.cu's WMMA kernel) or wg (gram_wgmma.cu's Hopper kernel,
// 9.0 devices only). Read at each update; any other value, or wg where it cannot run, is an error.
enum class Kernel16 { kCublas, kTc, kWg };
Kernel16 fast16_kernel(int device) {
  const char* v = std::getenv("GEOMFAST_CUDA_GRAM_KERNEL");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "cublas") == 0) return Kernel16::kCublas;
  if (std::strcmp(v, "tc") == 0) return Kernel16::kTc;
  if (std::strcmp(v, "wg") != 0)
    GF_THROW(ValueError, "[GramAccumulator.update] GEOMFAST_CUDA_GRAM_KERNEL: expected cublas, tc or wg, got '", v,
             "'");
  static std::mutex mu;
  static std::map<int, std::string> why;  // per device: asked once
  std::lock_guard<std::mutex> lock(mu);
  auto it = why.find(device);
  if (it == why.end()) it = why.emplace(device, wg_gram_unavailable(device)).first;
  if (!it->second.empty()) GF_THROW(ValueError, "[GramAccumulator.update] ", it->second);
  (void)wg_tile_n();  // its knob checked too, before any work
  return Kernel16::kWg;
}

enum class Path { kHighest, kFast32, kFast16 };

class CudaGram final : public GramBackend {
 public:
  CudaGram(int64_t dim, int device, Precision precision)
      : dim_(dim), device_(device), precision_(precision), h_shift_(static_cast<size_t>(dim), 0.0), h_c_(static_cast<size_t>(dim), 0.0),
        h_scale_(static_cast<size_t>(dim), 0.0), h_sq_(static_cast<size_t>(dim), 0.0) {
    if (dim < 1) GF_THROW(ValueError, "[GramAccumulator] expected dim >= 1, got ", dim);
    DeviceGuard guard(device_);  // (make_cuda_gram has checked this device's cuBLAS/cuSOLVER handles)
    // Every allocation after the guard: pinned memory too would otherwise create a context on the
    // calling thread's current device.
    hflags_.allocate(kNumFlags);
    hstats_.allocate(2 * static_cast<size_t>(dim));
    GF_CUDA_CHECK(cudaStreamCreateWithFlags(&own_stream_, cudaStreamNonBlocking));
    try {
      GF_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
      const size_t d = static_cast<size_t>(dim_);
      cudaStream_t st = own_stream_;
      shift_.resize(d, st);
      sum_.resize(d, st);
      gram_.resize(d * d, st);  // out of memory at large d lands here
      c_.resize(d, st);
      zsum_.resize(d, st);
      zsq_.resize(d, st);
      diag_.resize(d, st);
      flags_.resize(kNumFlags, st);
      zero_state(own_stream_);
      GF_CUDA_CHECK(cudaEventRecord(ready_, own_stream_));
      DeviceHandles& h = device_handles(device_);
      std::lock_guard<std::mutex> lock(h.mutex);
      ++h.scratch.users;  // last: a constructor that throws never counts
    } catch (...) {  // no destructor runs for a constructor that throws: release the stream and event
      // and, while the guard still holds device_ current, the buffers (their own destructors run
      // after the guard's, with the caller's device current: the legacy stream of another GPU)
      ignore_error(cudaStreamSynchronize(own_stream_));
      for (auto* b : {&shift_, &sum_, &gram_, &c_, &zsum_, &zsq_, &diag_}) b->free();
      flags_.free();
      if (ready_) ignore_error(cudaEventDestroy(ready_));
      ignore_error(cudaStreamDestroy(own_stream_));
      throw;
    }
  }

  ~CudaGram() override {
    // DeviceGuard's rule without its throws: the caller's device is restored only where it has a
    // context (cudaSetDevice would create one: a destructor run by a fresh thread, or by Python's
    // garbage collector in a loader thread, would put hundreds of MB on GPU 0).
    int prev = -1;
    const bool known = cudaGetDevice(&prev) == cudaSuccess;
    if (!known || prev != device_) ignore_error(cudaSetDevice(device_));
    if (own_stream_) ignore_error(cudaStreamSynchronize(own_stream_));
    if (ready_) ignore_error(cudaEventSynchronize(ready_));  // work still queued on a caller's stream uses our buffers
    // idle now: freed on device_ (the legacy stream)
    for (auto* b : {&shift_, &sum_, &gram_, &c_, &zsum_, &zsq_, &diag_, &part_}) b->free();
    flags_.free();
    col2j_.free();
    try {
      // The device's shared work buffers go with its last accumulator (after its last products).
      DeviceHandles& h = device_handles(device_);
      std::lock_guard<std::mutex> lock(h.mutex);
      GramScratch& w = h.scratch;
      if (--w.users == 0) {
        ignore_error(cudaEventSynchronize(w.ready));
        w.block.free();
        for (auto* b : {&w.acc, &w.hl, &w.ll}) b->free();
        for (auto* b : {&w.hl64, &w.ll64}) b->free();
      }
    } catch (...) {  // (the handles exist: this accumulator was made with them)
    }
    if (ready_) ignore_error(cudaEventDestroy(ready_));
    if (own_stream_) ignore_error(cudaStreamDestroy(own_stream_));
    if (known && prev != device_ && has_primary_context(prev)) ignore_error(cudaSetDevice(prev));
  }

  int64_t dim() const override { return dim_; }
  Device device() const override { return Device{DeviceType::kCUDA, device_}; }
  Precision precision() const override { return precision_; }
  int64_t count() const override { return count_; }

  void update(const MatrixView& x) override {
    if (x.device.type != DeviceType::kCUDA || x.device.index != device_)
      GF_THROW(ValueError, "[GramAccumulator.update] expected an array on cuda:", device_,
               ", got one on ", x.device.str());
    if (x.cols != dim_)
      GF_THROW(ValueError, "[GramAccumulator.update] expected a 2-D array with ", dim_,
               " columns, got shape (", x.rows, ", ", x.cols, ")");
    if (!elements_aligned(x))  // before any kernel reads it (a fault would lose the context)
      GF_THROW(ValueError, "[GramAccumulator.update] expected ", dtype_name(x.dtype), " data aligned to its ",
               dtype_size(x.dtype), "-byte elements, got an array starting ",
               reinterpret_cast<std::uintptr_t>(x.data) % dtype_size(x.dtype),
               " byte(s) past a boundary; pass a copy of it; nothing was accumulated");
    if (x.rows == 0) return;
    check_intact("update");
    DeviceGuard guard(device_);
    cudaStream_t st = as_stream(x.stream);
    GF_CUDA_CHECK(cudaStreamWaitEvent(st, ready_, 0));
    // From here on, whatever happens, the next operation waits for all this update queued on st
    // (which reads and writes our buffers, pinned ones included).
    const RecordOnExit ready_on_exit{ready_, st};
    const int64_t n = x.rows;
    const int64_t d = dim_;
    part_.reserve(static_cast<size_t>(column_stats_partials(n) * 2 * d), st);

    Path path = choose_path(x.dtype);
    const Kernel16 kernel16 = path == Path::kFast16 ? fast16_kernel(device_) : Kernel16::kCublas;  // before any work
    const bool fresh = !shift_set_;
    if (fresh) {
      // First chunk: its column means become the shift (state untouched until the check passes).
      column_stats(x, nullptr, 0.0, part_.get(), zsum_.get(), zsq_.get(), flags_.get(), st);
      check_flags(st, x);
      set_shift(zsum_.get(), d, n, shift_.get(), st);
      for (int64_t j = 0; j < d; ++j) {  // the host's copy of the shift, and the columns' spread
        h_shift_[j] = hstats_[j] / static_cast<double>(n);
        h_scale_[j] = spread_from_sums(hstats_[j], hstats_[d + j], static_cast<double>(n));
      }
      c_mode_ = Mode::kStale;  // (shift_set_ once the chunk is in: an update that fails before
                               // writing leaves a state of no rows, whose next chunk sets the shift)
    }
    const Mode want = path == Path::kFast16
                          ? (x.dtype == DType::kBFloat16 ? Mode::kBF16 : Mode::kFP16)
                          : Mode::kExact;
    if (c_mode_ != want) {
      // Column variance estimates for choosing c: this chunk (first update) or the state.
      if (fresh)
        prepare_kernel_shift(want, zsum_.get(), zsq_.get(), 1, n, st);
      else
        prepare_kernel_shift(want, sum_.get(), gram_.get(), d + 1, count_, st);
    }
    const double split_max = path == Path::kFast16
                                 ? (x.dtype == DType::kFloat16 ? 65504.0 : 3.0e38)
                                 : 0.0;
    column_stats(x, c_.get(), split_max, part_.get(), zsum_.get(), zsq_.get(), flags_.get(), st);
    check_flags(st, x);  // first update: already checked; this reads the overflow count
    check_squares(x);    // before the state moves (follow_drift)
    const std::vector<double> chunk_sq(hstats_.get() + d, hstats_.get() + 2 * d);
    if (!fresh && n >= kDriftChunkRows && follow_drift(n, st)) {
      // the state now sits on this chunk's mean: a new kernel shift, and the chunk's statistics again
      prepare_kernel_shift(want, sum_.get(), gram_.get(), d + 1, count_, st);
      column_stats(x, c_.get(), split_max, part_.get(), zsum_.get(), zsq_.get(), flags_.get(), st);
      check_flags(st, x);
    }
    if (path == Path::kFast16 && hflags_[2] != 0) path = Path::kFast32;  // c stays valid there

    writing_ = false;
    try {
      HandleLease lease(device_, st);
      GramScratch& w = lease.h.scratch;
      // The shared work buffers: after the previous user's products on the GPU; the next one
      // waits for ours, whatever happens here.
      GF_CUDA_CHECK(cudaStreamWaitEvent(st, w.ready, 0));
      const RecordOnExit scratch_on_exit{w.ready, st};
      // fast: the diagonal is set from column_stats' float64 Σ (x - c)² after the products (the
      // float32 ones lose a column whose values are tiny beside the others': a negative variance)
      const bool exact_diagonal = path != Path::kHighest;
      if (exact_diagonal) copy_diagonal(gram_.get(), d, diag_.get(), st);
      switch (path) {
        case Path::kHighest: products_highest(x, lease, w, st); break;
        case Path::kFast32: products_fast32(x, lease, w, st); break;
        case Path::kFast16:
          if (kernel16 == Kernel16::kCublas)
            products_fast16(x, lease, w, st);
          else
            products_fast16_own(x, kernel16, w, st);
          break;
      }
      writing_ = true;
      if (exact_diagonal) set_diagonal(gram_.get(), d, diag_.get(), zsq_.get(), st);
      commit_chunk(shift_.get(), c_.get(), zsum_.get(), d, n, c_mode_ != Mode::kExact, sum_.get(),
                   gram_.get(), st);
    } catch (const std::exception& e) {
      // Before the products wrote anything (e.g. out of memory for a work buffer) the state is
      // intact; after, part of this chunk is in it and the count is not: refuse to go on.
      if (writing_) broken_ = e.what();
      throw;
    }
    count_ += n;
    shift_set_ = true;
    for (int64_t j = 0; j < d; ++j) h_sq_[j] += chunk_sq[j];
  }

  // Squares that overflow float64 (values near 1e150 and beyond, summed over the rows) are refused
  // like non-finite values, before the state changes: accepted, they would leave an accumulator
  // whose every later read fails. From what the update's one host sync brings anyway: this chunk's
  // float64 Σ (x - c)² (hstats_) plus the accepted chunks' (h_sq_; around their own kernel shifts,
  // which sit near the state's shift, so a close bound rather than the exact diagonal).
  void check_squares(const MatrixView& x) const {
    const int64_t d = dim_;
    for (int64_t j = 0; j < d; ++j)
      if (!(h_sq_[j] + hstats_[d + j] < kSquaresLimit))
        GF_THROW(ValueError, "[GramAccumulator.update] the squares of x's column ", j, " (shape (", x.rows, ", ",
                 x.cols, ")), summed over the rows, overflow float64: expected values whose centred squares sum to ",
                 "less than ", kSquaresLimit, "; rescale the input; nothing was accumulated");
  }

  // A state an update left part-written is never used silently (see update).
  void check_intact(const char* func) const {
    if (!broken_.empty())
      GF_THROW(RuntimeError, "[GramAccumulator.", func, "] the state is lost: an earlier update failed part-way (",
               broken_, "); reset() or load a state to go on");
  }

  GramState state() const override {
    check_intact("state");
    DeviceGuard guard(device_);
    GramState s;
    s.dim = dim_;
    s.count = count_;
    const size_t d = static_cast<size_t>(dim_);
    s.shift.resize(d);
    s.sum.resize(d);
    s.gram.resize(d * d);
    cudaStream_t st = own_stream_;
    GF_CUDA_CHECK(cudaStreamWaitEvent(st, ready_, 0));
    AsyncBuffer full(d * d * sizeof(double), st);  // stream-ordered: cudaFree would sync the device
    symmetric_from_upper(gram_.get(), nullptr, dim_, 1.0, 1.0, full.as<double>(), st);
    GF_CUDA_CHECK(cudaMemcpyAsync(s.shift.data(), shift_.get(), d * sizeof(double), cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaMemcpyAsync(s.sum.data(), sum_.get(), d * sizeof(double), cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaMemcpyAsync(s.gram.data(), full.as<double>(), d * d * sizeof(double), cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaStreamSynchronize(st));
    GF_CUDA_CHECK(cudaEventRecord(ready_, st));
    return s;
  }

  void set_state(const GramState& s) override {
    if (s.dim != dim_)
      GF_THROW(ValueError, "[GramAccumulator.set_state] expected a state of dim ", dim_, ", got ", s.dim);
    const size_t d = static_cast<size_t>(dim_);
    if (s.shift.size() != d || s.sum.size() != d || s.gram.size() != d * d)
      GF_THROW(ValueError, "[GramAccumulator.set_state] expected shift/sum of ", d, " and gram of ",
               d * d, " values, got ", s.shift.size(), "/", s.sum.size(), "/", s.gram.size());
    DeviceGuard guard(device_);
    cudaStream_t st = own_stream_;
    GF_CUDA_CHECK(cudaStreamWaitEvent(st, ready_, 0));
    // Symmetric, so the row-major host matrix is also the col-major one cuBLAS reads.
    GF_CUDA_CHECK(cudaMemcpyAsync(shift_.get(), s.shift.data(), d * sizeof(double), cudaMemcpyHostToDevice, st));
    GF_CUDA_CHECK(cudaMemcpyAsync(sum_.get(), s.sum.data(), d * sizeof(double), cudaMemcpyHostToDevice, st));
    GF_CUDA_CHECK(cudaMemcpyAsync(gram_.get(), s.gram.data(), d * d * sizeof(double), cudaMemcpyHostToDevice, st));
    GF_CUDA_CHECK(cudaStreamSynchronize(st));  // the host vectors may go away after return
    GF_CUDA_CHECK(cudaEventRecord(ready_, st));
    count_ = s.count;
    shift_set_ = s.count > 0;
    c_mode_ = Mode::kStale;
    broken_.clear();
    h_shift_ = s.shift;
    for (size_t j = 0; j < d; ++j) {  // the loaded rows' spread, for the drift checks
      h_scale_[j] = spread_from_sums(s.sum[j], s.gram[j * d + j], static_cast<double>(s.count));
      h_sq_[j] = s.gram[j * d + j];
    }
  }

  void add_state(const GramState& s) override {
    // Merges with any shift: exact re-shifting on the host (shared code), then upload.
    GramState cur = state();
    add_state_into(cur, s);
    set_state(cur);
  }

  void reset() override {
    DeviceGuard guard(device_);
    GF_CUDA_CHECK(cudaStreamWaitEvent(own_stream_, ready_, 0));
    zero_state(own_stream_);
    GF_CUDA_CHECK(cudaEventRecord(ready_, own_stream_));
    count_ = 0;
    shift_set_ = false;
    c_mode_ = Mode::kStale;
    broken_.clear();
    std::fill(h_shift_.begin(), h_shift_.end(), 0.0);
    std::fill(h_scale_.begin(), h_scale_.end(), 0.0);
    std::fill(h_sq_.begin(), h_sq_.end(), 0.0);
  }

  void covariance(int64_t ddof, double* out) const override {
    check_intact("covariance");
    DeviceGuard guard(device_);
    const size_t d = static_cast<size_t>(dim_);
    AsyncBuffer cov(d * d * sizeof(double), own_stream_);  // stream-ordered (no device-wide sync)
    covariance_on_device(ddof, cov.as<double>(), own_stream_);
    GF_CUDA_CHECK(cudaMemcpyAsync(out, cov.as<double>(), d * d * sizeof(double), cudaMemcpyDeviceToHost, own_stream_));
    GF_CUDA_CHECK(cudaStreamSynchronize(own_stream_));
  }

  EigResult spectrum(int64_t ddof, const EigOptions& opt) const override {
    check_intact("spectrum");
    DeviceGuard guard(device_);
    const size_t d = static_cast<size_t>(dim_);
    AsyncBuffer cov(d * d * sizeof(double), own_stream_);  // stream-ordered (no device-wide sync)
    covariance_on_device(ddof, cov.as<double>(), own_stream_);
    const MatrixView v = square_f64_view(cov.as<double>(), dim_, Device{DeviceType::kCUDA, device_},
                                         reinterpret_cast<std::uintptr_t>(own_stream_));
    return eigvalsh_cuda(v, opt);  // synchronises own_stream_ before returning values
  }

  // The covariance [d, d] (symmetric, so either order) into device memory `out`, queued on `st`
  // after this accumulator's pending work (the batched spectra).
  void enqueue_covariance(int64_t ddof, double* out, cudaStream_t st) const {
    check_intact("spectra");
    covariance_on_device(ddof, out, st);
  }

 private:
  enum class Mode { kStale, kExact, kBF16, kFP16 };

  Path choose_path(DType t) const {
    if (precision_ == Precision::kHighest) return Path::kHighest;
    if (t == DType::kFloat16 || t == DType::kBFloat16) return Path::kFast16;
    return Path::kFast32;
  }

  void zero_state(cudaStream_t st) {
    const size_t d = static_cast<size_t>(dim_);
    GF_CUDA_CHECK(cudaMemsetAsync(shift_.get(), 0, d * sizeof(double), st));
    GF_CUDA_CHECK(cudaMemsetAsync(sum_.get(), 0, d * sizeof(double), st));
    GF_CUDA_CHECK(cudaMemsetAsync(gram_.get(), 0, d * d * sizeof(double), st));
  }

  // Flags of the last column_stats into hflags_, and its column sums into hstats_ (the update's
  // one host synchronisation); throws NonFiniteError before the state is touched.
  void check_flags(cudaStream_t st, const MatrixView& x) {
    const size_t d = static_cast<size_t>(dim_);
    GF_CUDA_CHECK(cudaMemcpyAsync(hflags_.get(), flags_.get(), kNumFlags * sizeof(unsigned long long),
                                  cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaMemcpyAsync(hstats_.get(), zsum_.get(), d * sizeof(double), cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaMemcpyAsync(hstats_.get() + d, zsq_.get(), d * sizeof(double), cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaStreamSynchronize(st));
    if (hflags_[0] != 0) {
      const auto count = static_cast<int64_t>(hflags_[0]);
      const auto first = static_cast<int64_t>(hflags_[1]);
      throw NonFiniteError(
          detail::concat("[GramAccumulator.update] expected finite values, got ", count,
                         " NaN/Inf value(s) in an array of shape (", x.rows, ", ", x.cols,
                         "), the first in row ", first, "; nothing was accumulated"),
          count, first);
    }
  }

  // The chunk of n rows whose statistics are in hstats_ (Σ (x - c), Σ (x - c)²): when its mean is
  // more than kDriftSpreads spreads from the shift in some column (the data moved away from the
  // rows the shift came from: a drifting stream, another kind of text), the state is re-expressed
  // around the chunk's mean (exact algebra, on the device; only on drift, at the cost of one more
  // host sync for the state's column sums and diagonal) and true is returned. Rows summed k spreads
  // off-centre lose a factor ~k² to cancellation, and the products' rounding grows with the rows
  // (the CPU backend measured 5e-11 per entry in highest at 160,000 float32 rows 5 spreads off,
  // over the 1e-12 bar).
  bool follow_drift(int64_t n, cudaStream_t st) {
    const int64_t d = dim_;
    const size_t du = static_cast<size_t>(d);
    const double nn = static_cast<double>(n);
    std::vector<double> mu(du), sc(du);
    bool drift = false;
    for (int64_t j = 0; j < d; ++j) {
      mu[j] = h_c_[j] + hstats_[j] / nn;
      sc[j] = spread_from_sums(hstats_[j], hstats_[d + j], nn);
      const double sd = std::max(h_scale_[j], sc[j]);
      drift = drift || (sd > 0 && std::abs(mu[j] - h_shift_[j]) > kDriftSpreads * sd);
    }
    if (!drift) return false;
    // The state's Σy and diagonal Σy² (into hstats_, whose chunk sums are consumed), for the
    // pooled spread of the state's rows and this chunk's.
    copy_diagonal(gram_.get(), d, diag_.get(), st);
    GF_CUDA_CHECK(cudaMemcpyAsync(hstats_.get(), sum_.get(), du * sizeof(double), cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaMemcpyAsync(hstats_.get() + d, diag_.get(), du * sizeof(double), cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaStreamSynchronize(st));
    const double n0 = static_cast<double>(count_);
    for (int64_t j = 0; j < d; ++j)
      h_scale_[j] = pooled_spread(n0, h_shift_[j] + hstats_[j] / n0, spread_from_sums(hstats_[j], hstats_[d + j], n0),
                                  nn, mu[j], sc[j]);
    // The new shift through pinned memory (hstats_ is next written by check_flags' copies, which
    // this stream runs after this one), then the state re-expressed around it.
    std::copy(mu.begin(), mu.end(), hstats_.get());
    GF_CUDA_CHECK(cudaMemcpyAsync(diag_.get(), hstats_.get(), du * sizeof(double), cudaMemcpyHostToDevice, st));
    try {
      reshift_upper(diag_.get(), d, count_, shift_.get(), sum_.get(), gram_.get(), st);
    } catch (const std::exception& e) {  // a half-applied re-expression is never used silently
      broken_ = e.what();
      throw;
    }
    h_shift_ = mu;
    c_mode_ = Mode::kStale;  // the kernel shift follows the new shift
    return true;
  }

  // c_ for the path: the shift itself (exact paths), or its 16-bit split version plus the compact
  // list J of shifted columns (downloaded once per shift / dtype change: a host sync).
  void prepare_kernel_shift(Mode mode, const double* ysum, const double* ysq, int64_t ysq_stride,
                            int64_t n, cudaStream_t st) {
    // Stale until the new c_ is complete: c_ and h_c_ change below before calls that may throw,
    // and an old mode kept over them would centre the next chunks on the wrong c (kExact would
    // also skip the Gram correction for c ≠ shift): a wrong covariance, silently.
    c_mode_ = Mode::kStale;
    const size_t d = static_cast<size_t>(dim_);
    if (mode == Mode::kExact) {
      GF_CUDA_CHECK(cudaMemcpyAsync(c_.get(), shift_.get(), d * sizeof(double), cudaMemcpyDeviceToDevice, st));
      h_c_ = h_shift_;
      nj_ = 0;
      c_mode_ = mode;
      return;
    }
    choose_split_shift(shift_.get(), ysum, ysq, ysq_stride, dim_, n, kSplitTau,
                       mode == Mode::kBF16 ? DType::kBFloat16 : DType::kFloat16, c_.get(), st);
    std::vector<double> hc(d);
    GF_CUDA_CHECK(cudaMemcpyAsync(hc.data(), c_.get(), d * sizeof(double), cudaMemcpyDeviceToHost, st));
    GF_CUDA_CHECK(cudaStreamSynchronize(st));
    std::vector<int> col2j(d, -1);
    nj_ = 0;
    for (size_t j = 0; j < d; ++j)
      if (hc[j] != 0.0) col2j[j] = static_cast<int>(nj_++);
    h_c_ = hc;
    col2j_.reserve(d, st);
    GF_CUDA_CHECK(cudaMemcpyAsync(col2j_.get(), col2j.data(), d * sizeof(int), cudaMemcpyHostToDevice, st));
    GF_CUDA_CHECK(cudaStreamSynchronize(st));  // col2j (pageable) must outlive the copy
    c_mode_ = mode;
  }

  void products_highest(const MatrixView& x, HandleLease& lease, GramScratch& w, cudaStream_t st) {
    const int64_t d = dim_;
    const int64_t rows_per = std::clamp<int64_t>(kHighestBytes / (8 * d), 64, 8192);
    const int64_t br = std::min(rows_per, x.rows);
    w.block.reserve(static_cast<size_t>(br * d) * sizeof(double), st);
    double* y = reinterpret_cast<double*>(w.block.get());
    // float64 has no reduced-precision mode: the default lets cuBLAS use FP64 tensor cores (DMMA).
    GF_CUBLAS_CHECK(cublasSetMathMode(lease.h.blas, CUBLAS_DEFAULT_MATH));
    const double one = 1.0;
    writing_ = true;  // from here on an exception leaves the state part-updated
    for (int64_t r0 = 0; r0 < x.rows; r0 += br) {
      const int64_t nb = std::min(br, x.rows - r0);
      center_rows_f64(x, r0, nb, c_.get(), y, st);
      // y row-major [nb, d] is col-major [d, nb]: gram += y_c y_cᵀ = Σ rows yᵀy.
      GF_CUBLAS_CHECK(cublasDsyrk(lease.h.blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, static_cast<int>(d),
                                  static_cast<int>(nb), &one, y, static_cast<int>(d), &one, gram_.get(),
                                  static_cast<int>(d)));
    }
  }

  void products_fast32(const MatrixView& x, HandleLease& lease, GramScratch& w, cudaStream_t st) {
    const int64_t d = dim_;
    const auto [chain, flush] = chain_and_flush_rows(kFast32ChainRows, kFast32FlushRows, x.rows);
    w.block.reserve(static_cast<size_t>(chain * d) * sizeof(float), st);
    w.acc.reserve(static_cast<size_t>(d * d), st);
    float* y = reinterpret_cast<float*>(w.block.get());
    GF_CUBLAS_CHECK(cublasSetMathMode(lease.h.blas, CUBLAS_PEDANTIC_MATH));  // no TF32
    const float one = 1.0f, zero = 0.0f;
    writing_ = true;  // from here on an exception leaves the state part-updated
    for (int64_t f0 = 0; f0 < x.rows; f0 += flush) {
      const int64_t fe = std::min(f0 + flush, x.rows);
      for (int64_t r0 = f0; r0 < fe; r0 += chain) {
        const int64_t nb = std::min(chain, fe - r0);
        center_rows_f32(x, r0, nb, c_.get(), y, st);
        // a flush block's first chain overwrites the float32 block, the others add to it
        GF_CUBLAS_CHECK(cublasSsyrk(lease.h.blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, static_cast<int>(d),
                                    static_cast<int>(nb), &one, y, static_cast<int>(d), r0 == f0 ? &zero : &one,
                                    w.acc.get(), static_cast<int>(d)));
      }
      flush_upper(w.acc.get(), d, gram_.get(), st);
    }
  }

  // The 16-bit split's two row-major blocks in w.block: hi [rows, ldh] and lo [rows, ldl] (lo at a
  // 256-byte boundary).
  static std::pair<void*, void*> split_buffers(int64_t rows, int64_t ldh, int64_t ldl, GramScratch& w,
                                               cudaStream_t st) {
    const size_t hi_bytes = static_cast<size_t>(rows * ldh) * 2;
    const size_t lo_bytes = static_cast<size_t>(rows * ldl) * 2;
    w.block.reserve(hi_bytes + lo_bytes + 256, st);
    return {w.block.get(), w.block.get() + ((hi_bytes + 255) / 256) * 256};
  }

  // The fast 16-bit split path on cuBLAS, in two levels: each GEMM call is one tensor-core chain of
  // `chain` rows (the hardware's own accumulation, truncating on H100) added into the float32
  // blocks by the GEMM's epilogue (beta = 1: a float32 FMA, round-to-nearest), and the blocks are
  // flushed into float64 every `flush` rows. The split runs over up to kSplitRows rows per launch,
  // so a chain's GEMMs are not each preceded by a small split launch.
  void products_fast16(const MatrixView& x, HandleLease& lease, GramScratch& w, cudaStream_t st) {
    const int64_t d = dim_;
    const int64_t nj = nj_;
    const auto [chain, flush] = chain_and_flush_rows(
        x.dtype == DType::kBFloat16 ? kBf16ChainRows : kF16ChainRows, kFast16FlushRows, x.rows);
    const int64_t split_rows = std::max(chain, std::min(flush, kSplitRows) / chain * chain);
    const int64_t tile = env_triangle_tile();
    // Leading dimensions of whole 16-byte rows: cuBLAS picks tensor-core kernels for aligned
    // 16-bit operands only (d or nj not a multiple of 8 would fall back to slower, other kernels).
    const int64_t ldh = round_up(d, 8), ldl = round_up(std::max<int64_t>(nj, 1), 8);
    const auto [hi, lo] = split_buffers(split_rows, ldh, ldl, w, st);
    w.acc.reserve(static_cast<size_t>(d * d), st);
    if (nj > 0) {
      w.hl.reserve(static_cast<size_t>(d * nj), st);
      w.ll.reserve(static_cast<size_t>(nj * nj), st);
    }
    const cudaDataType_t t = x.dtype == DType::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F;
    GF_CUBLAS_CHECK(cublasSetMathMode(lease.h.blas, CUBLAS_DEFAULT_MATH));
    const float one = 1.0f, zero = 0.0f;
    const int di = static_cast<int>(d), nji = static_cast<int>(nj);
    const int ldhi = static_cast<int>(ldh), ldli = static_cast<int>(ldl);
    writing_ = true;  // from here on an exception leaves the state part-updated
    for (int64_t f0 = 0; f0 < x.rows; f0 += flush) {
      const int64_t fe = std::min(f0 + flush, x.rows);
      for (int64_t s0 = f0; s0 < fe; s0 += split_rows) {
        const int64_t sn = std::min(split_rows, fe - s0);
        split_rows_16(x, s0, sn, c_.get(), col2j_.get(), nj, hi, ldh, lo, ldl, st);
        for (int64_t c0 = 0; c0 < sn; c0 += chain) {
          const int k = static_cast<int>(std::min(chain, sn - c0));
          const float* beta = s0 == f0 && c0 == 0 ? &zero : &one;  // a flush block's first chain overwrites
          // hi row-major [sn, ldh] = col-major H_c [ldh, sn] (rows d.. zero, unused): this chain's
          // rows are its columns [c0, c0 + k). HᵀH = H_c H_cᵀ. Column block [j0, j0 + bw) of the
          // upper triangle: rows [0, j0 + bw) (the diagonal block is computed in full).
          const char* h = static_cast<const char*>(hi) + c0 * ldh * 2;
          for (int64_t j0 = 0; j0 < d; j0 += tile) {
            const int bw = static_cast<int>(std::min(tile, d - j0));
            const int m = static_cast<int>(j0) + bw;
            GF_CUBLAS_CHECK(cublasGemmEx(lease.h.blas, CUBLAS_OP_N, CUBLAS_OP_T, m, bw, k, &one, h, t, ldhi,
                                         h + j0 * 2, t, ldhi, beta, w.acc.get() + j0 * d, CUDA_R_32F, di,
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
          }
          if (nj > 0) {
            // lo row-major [sn, ldl] = col-major L_c [ldl, sn]. HᵀL_J = H_c L_cᵀ [d, nj]; L_JᵀL_J [nj, nj].
            const char* l = static_cast<const char*>(lo) + c0 * ldl * 2;
            GF_CUBLAS_CHECK(cublasGemmEx(lease.h.blas, CUBLAS_OP_N, CUBLAS_OP_T, di, nji, k, &one, h, t, ldhi, l, t,
                                         ldli, beta, w.hl.get(), CUDA_R_32F, di, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT));
            GF_CUBLAS_CHECK(cublasGemmEx(lease.h.blas, CUBLAS_OP_N, CUBLAS_OP_T, nji, nji, k, &one, l, t, ldli, l,
                                         t, ldli, beta, w.ll.get(), CUDA_R_32F, nji, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT));
          }
        }
      }
      flush_upper_split(w.acc.get(), nj > 0 ? w.hl.get() : nullptr, nj > 0 ? w.ll.get() : nullptr,
                        col2j_.get(), d, nj, gram_.get(), st);
    }
  }

  // The fast 16-bit split path on one of our two-level tensor-core kernels (gram_tc.cu, or
  // gram_wgmma.cu on Hopper; same contract): hi [nb, ldh] and lo [nb, ldl] padded to whole
  // 128-column tiles; HᵀH straight into the state's upper triangle, HᵀL_J and L_JᵀL_J into float64
  // buffers added once per chunk; float64 touched every kTcRows rows.
  void products_fast16_own(const MatrixView& x, Kernel16 kernel, GramScratch& w, cudaStream_t st) {
    const int64_t d = dim_;
    const int64_t nj = nj_;
    const bool wg = kernel == Kernel16::kWg;
    const int tile_n = wg ? wg_tile_n() : static_cast<int>(kTcTile);
    // Whole tiles in either operand role (128 x tile_n; tc's 128 x 128 included).
    const int64_t ldh = wg_padded(d, tile_n), ldl = nj > 0 ? wg_padded(nj, tile_n) : 0;
    const int64_t br = std::min(env_int("GEOMFAST_CUDA_TC_ROWS", kTcRows, 32), x.rows);
    const int chain = static_cast<int>(round_up(env_int("GEOMFAST_CUDA_TC_CHAIN_ROWS", kTcChainRows, 32),
                                                wg ? 64 : 32));  // chains are whole slabs
    const auto gram_update = [&](const void* a, int64_t lda, int64_t m, const void* b, int64_t ldb, int64_t n,
                                 int64_t rows, bool upper, double* c, int64_t ldc) {
      if (wg)
        wg_gram_update(a, lda, m, b, ldb, n, rows, chain, tile_n, x.dtype, upper, c, ldc, st);
      else
        tc_gram_update(a, lda, m, b, ldb, n, rows, chain, x.dtype, upper, c, ldc, st);
    };
    const auto [hi, lo] = split_buffers(br, ldh, ldl, w, st);
    if (nj > 0) {
      w.hl64.reserve(static_cast<size_t>(d * nj), st);
      w.ll64.reserve(static_cast<size_t>(nj * nj), st);
      GF_CUDA_CHECK(cudaMemsetAsync(w.hl64.get(), 0, static_cast<size_t>(d * nj) * sizeof(double), st));
      GF_CUDA_CHECK(cudaMemsetAsync(w.ll64.get(), 0, static_cast<size_t>(nj * nj) * sizeof(double), st));
    }
    writing_ = true;  // from here on an exception leaves the state part-updated
    for (int64_t r0 = 0; r0 < x.rows; r0 += br) {
      const int64_t nb = std::min(br, x.rows - r0);
      split_rows_16(x, r0, nb, c_.get(), col2j_.get(), nj, hi, ldh, lo, ldl, st);
      gram_update(hi, ldh, d, hi, ldh, d, nb, /*upper=*/true, gram_.get(), d);
      if (nj > 0) {
        gram_update(hi, ldh, d, lo, ldl, nj, nb, /*upper=*/false, w.hl64.get(), d);
        gram_update(lo, ldl, nj, lo, ldl, nj, nb, /*upper=*/true, w.ll64.get(), nj);
      }
    }
    if (nj > 0) add_cross_terms(w.hl64.get(), w.ll64.get(), col2j_.get(), d, nj, gram_.get(), st);
  }

  void covariance_on_device(int64_t ddof, double* out, cudaStream_t st) const {
    if (count_ - ddof <= 0)
      GF_THROW(ValueError, "[GramAccumulator.covariance] expected more than ddof=", ddof,
               " rows, got ", count_);
    GF_CUDA_CHECK(cudaStreamWaitEvent(st, ready_, 0));
    symmetric_from_upper(gram_.get(), sum_.get(), dim_, static_cast<double>(count_),
                         1.0 / static_cast<double>(count_ - ddof), out, st);
    GF_CUDA_CHECK(cudaEventRecord(ready_, st));
  }

  int64_t dim_;
  int device_;
  Precision precision_;
  int64_t count_ = 0;
  bool shift_set_ = false;
  Mode c_mode_ = Mode::kStale;
  int64_t nj_ = 0;

  cudaStream_t own_stream_ = nullptr;  // state(), set_state(), covariance(): no caller stream
  cudaEvent_t ready_ = nullptr;        // recorded after every operation; the next one waits on it

  std::string broken_;                       // why an update left the state part-written, or empty
  bool writing_ = false;                     // the running update has started writing the state
  DeviceBuffer<double> shift_, sum_, gram_;  // the state: [d], [d], [d, d] col-major upper
  DeviceBuffer<double> c_;                   // [d] kernel shift
  DeviceBuffer<double> zsum_, zsq_;          // [d] chunk Σ (x - c), Σ (x - c)²
  DeviceBuffer<double> diag_;                // [d] the state's diagonal before a fast chunk
  DeviceBuffer<double> part_;                // column_stats partials
  DeviceBuffer<unsigned long long> flags_;   // [kNumFlags]
  PinnedBuffer<unsigned long long> hflags_;  // [kNumFlags]
  PinnedBuffer<double> hstats_;              // [2, d] the last column_stats' Σ (x - c), Σ (x - c)²
  std::vector<double> h_shift_, h_c_;        // host copies of the shift and the kernel shift
  std::vector<double> h_scale_;              // the columns' spread when the shift was set (drift)
  std::vector<double> h_sq_;                 // Σ (x - c)² of the accepted chunks (check_squares)
  DeviceBuffer<int> col2j_;                  // [d]
  // (the products' work buffers are the device's, shared: DeviceHandles::scratch)
};

}  // namespace
}  // namespace cuda

// Batched spectra: each covariance built and solved (cuSOLVER syevd, float64) on one stream, the
// values of all of them copied back with one host synchronisation. A solve that reports a failure
// or a non-finite value is redone alone through spectrum(), whose retries warn. Randomized (host
// reads every iteration) and float32 solves gain nothing from batching and run one by one.
std::vector<EigResult> spectra_cuda(const std::vector<const GramBackend*>& accs, int64_t ddof,
                                    const EigOptions& opt) {
  using namespace cuda;
  std::vector<EigResult> out(accs.size());
  if (accs.empty()) return out;
  std::vector<const CudaGram*> g;
  for (const GramBackend* a : accs) {
    const auto* c = dynamic_cast<const CudaGram*>(a);
    GF_ASSERT(c != nullptr, "spectra_cuda: not a CUDA accumulator");
    GF_ASSERT(c->device().index == accs[0]->device().index, "spectra_cuda: accumulators on several devices");
    if (c->count() - ddof <= 0)
      GF_THROW(ValueError, "[spectra] expected more than ddof=", ddof, " rows in every accumulator, got ",
               c->count(), " in one");
    g.push_back(c);
  }
  if (opt.method == EigMethod::kRandomized || opt.single_precision) {
    for (size_t i = 0; i < g.size(); ++i) out[i] = g[i]->spectrum(ddof, opt);
    return out;
  }
  const int device = g[0]->device().index;
  DeviceGuard guard(device);
  cudaStream_t st = nullptr;
  GF_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  std::vector<std::vector<char>> host_work(g.size());  // syevd's host workspaces: kept past the sync
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() {
      ignore_error(cudaStreamSynchronize(s));
      ignore_error(cudaStreamDestroy(s));
    }
  } stream_guard{st};
  std::vector<size_t> offset(g.size() + 1, 0);
  for (size_t i = 0; i < g.size(); ++i) offset[i + 1] = offset[i] + static_cast<size_t>(g[i]->dim());
  AsyncBuffer vals_buf(offset.back() * sizeof(double), st);  // freed in st's order (also when a call throws)
  AsyncBuffer infos_buf(g.size() * sizeof(int), st);
  double* vals = vals_buf.as<double>();
  int* infos = infos_buf.as<int>();
  {
    HandleLease lease(device, st);
    for (size_t i = 0; i < g.size(); ++i) {
      const int64_t d = g[i]->dim();
      AsyncBuffer w(static_cast<size_t>(d * d) * sizeof(double), st);  // stream-ordered: reused, no sync
      g[i]->enqueue_covariance(ddof, w.as<double>(), st);
      syevd_enqueue(lease, CUDA_R_64F, w.as<void>(), d, vals + offset[i], infos + i, host_work[i], st);
    }
  }
  PinnedBuffer<double> hv(std::max<size_t>(offset.back(), 1));
  PinnedBuffer<int> hinfo(g.size());
  GF_CUDA_CHECK(cudaMemcpyAsync(hv.get(), vals, offset.back() * sizeof(double), cudaMemcpyDeviceToHost, st));
  GF_CUDA_CHECK(cudaMemcpyAsync(hinfo.get(), infos, g.size() * sizeof(int), cudaMemcpyDeviceToHost, st));
  GF_CUDA_CHECK(cudaStreamSynchronize(st));
  for (size_t i = 0; i < g.size(); ++i) {
    out[i] = batched_result(hv.get() + offset[i], g[i]->dim(), hinfo[i], "spectra", "accumulator", i,
                            [&] { return g[i]->spectrum(ddof, opt); });
  }
  return out;
}

// Touches only the device asked for: cuda_backend_info() creates handles on device 0, which under
// torchrun would put a context on GPU 0 from every rank (or fail in exclusive-process mode).
std::unique_ptr<GramBackend> make_cuda_gram(int64_t dim, int device_index, Precision precision) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    GF_THROW(RuntimeError, "[GramAccumulator] the CUDA backend is not usable here: ", cudaGetErrorString(err));
  }
  if (count < 1)
    GF_THROW(RuntimeError, "[GramAccumulator] the CUDA backend is not usable here: no CUDA-capable device is detected");
  if (device_index < 0 || device_index >= count)
    GF_THROW(ValueError, "[GramAccumulator] expected a device index in [0, ", count, "), got cuda:", device_index);
  try {
    (void)cuda::device_handles(device_index);  // cuBLAS and cuSOLVER work on this device
  } catch (const std::exception& e) {
    GF_THROW(RuntimeError, "[GramAccumulator] the CUDA backend is not usable here: ", e.what());
  }
  return std::make_unique<cuda::CudaGram>(dim, device_index, precision);
}

}  // namespace geomfast
