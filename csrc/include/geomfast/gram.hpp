// Streaming Gram accumulation: count, shift, Σ(x - shift) and Σ(x - shift)(x - shift)ᵀ in
// float64, whatever the number of rows. Memory is O(dim²).
#pragma once
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "geomfast/eig.hpp"
#include "geomfast/tensor.hpp"

namespace geomfast {

// highest: float64 arithmetic on exactly up-cast values.
// fast: float32 products over blocks of rows (tensor cores on the GPU), flushed into float64.
enum class Precision : int { kHighest = 0, kFast = 1 };

// The state on the host. With y = x - shift over all rows seen:
//   count = n, sum = Σ y  [dim], gram = Σ y yᵀ  [dim, dim] row-major, full and symmetric.
// The shift is fixed at the first update (that chunk's column means), so activations with
// large means (LLM outlier dimensions) keep their small eigenvalues.
struct GramState {
  int64_t dim = 0;
  int64_t count = 0;
  std::vector<double> shift;  // [dim]
  std::vector<double> sum;    // [dim]
  std::vector<double> gram;   // [dim, dim]
};

// A state's column sums of squares stay below this (DBL_MAX / 16, room for the re-centring and the
// covariance's algebra on them): an update or a merge that would pass it is refused, the state
// unchanged, rather than leave an accumulator whose every read overflows.
inline constexpr double kSquaresLimit = 0x1p1020;

// Returns s re-expressed around new_shift [dim]: exact algebra, O(dim²).
GramState reshift_state(const GramState& s, const double* new_shift);
// into += other (re-shifting other onto into's shift; an empty `into` takes other's). Throws
// ValueError when a merged column's squares reach kSquaresLimit (`into` is then part-merged: pass a
// copy).
void add_state_into(GramState& into, const GramState& other);
// One covariance entry from Σyyᵀ_ij, Σy_i, Σy_j: (G_ij − Σy_i·Σy_j / n) · scale, scale = 1/(n − ddof).
// Shared by every path so that all give identical, exactly symmetric results.
inline double covariance_entry(double g_ij, double s_i, double s_j, double n, double scale) {
  return (g_ij - (s_i * s_j) / n) * scale;
}
// A column's spread (standard deviation over n rows) from Σy and Σy² (y = x - any base); 0 for n = 0.
inline double spread_from_sums(double sum, double sumsq, double n) {
  if (!(n > 0)) return 0.0;
  const double m = sum / n, v = sumsq / n - m * m;
  return v > 0 ? std::sqrt(v) : 0.0;
}
// The spread of two groups of rows taken together: n0 rows of mean m0 and spread s0, n1 rows of
// mean m1 and spread s1 (the within-group variances plus the gap between the means).
inline double pooled_spread(double n0, double m0, double s0, double n1, double m1, double s1) {
  const double n = n0 + n1, gap = m0 - m1;
  return std::sqrt((n0 * s0 * s0 + n1 * s1 * s1) / n + n0 * n1 / (n * n) * gap * gap);
}
// Covariance (G - n m mᵀ) / (n - ddof), m = sum / n, written to out [dim, dim] row-major.
void covariance_from_state(const GramState& s, int64_t ddof, double* out);
// The uncentered second moment Σ x xᵀ [dim, dim] row-major (x = y + shift: Σyyᵀ + shift·(Σy)ᵀ +
// (Σy)·shiftᵀ + n·shift·shiftᵀ; GramAccumulator.raw_gram returns it), in place of s.gram, which is
// returned.
std::vector<double> raw_gram_from_state(GramState&& s);

class GramBackend {
 public:
  virtual ~GramBackend() = default;
  virtual int64_t dim() const = 0;
  virtual Device device() const = 0;
  virtual Precision precision() const = 0;
  virtual int64_t count() const = 0;
  // x: [n, dim] on this backend's device (any strides). Checks every value first: NaN/Inf
  // throw NonFiniteError (how many, first bad row) and leave the state unchanged.
  virtual void update(const MatrixView& x) = 0;
  virtual GramState state() const = 0;               // a host copy
  virtual void set_state(const GramState& s) = 0;    // replaces the state
  virtual void add_state(const GramState& s) = 0;    // merge (any shift)
  virtual void reset() = 0;
  // Covariance [dim, dim] row-major into host memory `out`.
  virtual void covariance(int64_t ddof, double* out) const = 0;
  // Descending eigenvalues of the covariance, solved on this backend's device (with the solver's
  // warnings, e.g. a cuSOLVER failure retried elsewhere).
  virtual EigResult spectrum(int64_t ddof, const EigOptions& opt) const = 0;
};

// The spectra of many accumulators, in order. CUDA accumulators of one device are solved as a
// batch (method "full"): every covariance and cuSOLVER call queued on one stream, one host
// synchronisation for all their values. CPU accumulators are solved several at a time, each on one
// thread with single-threaded BLAS (eigvalsh_cpu_many in eig.hpp).
// uncentered (empty, or one flag per accumulator): where set, the eigenvalues of Σ x xᵀ instead of
// the covariance (singular values squared), solved on the host (ddof unused). The same accumulator
// may appear twice, e.g. once for each.
std::vector<EigResult> spectra(const std::vector<const GramBackend*>& accs, int64_t ddof, const EigOptions& opt,
                               const std::vector<bool>& uncentered = {});

// Tunables of the CPU backend (exposed for benchmarks; defaults are measured choices).
struct GramTuning {
  int64_t block_rows = 512;        // rows centred and multiplied at a time (per lane)
  int64_t fast_flush_rows = 2048;  // fast: rows summed in float32 before a float64 flush (measured: ≈1e-8 rel.)
  bool fast_amx = true;            // fast: AMX split products where the CPU has AMX-BF16 (read at construction)
  bool exact_amx = true;          // highest, bf16/f16 input: exact AMX-INT8 digit products (read at construction)
  bool amx_emulate = false;       // tests: the AMX kernels on a software model of the tile instructions where the
                                  // CPU has AVX-512 (cpu/amx_emulation.hpp), with or without AMX (read at construction)
};
GramTuning& gram_tuning();
// "" when the CPU backend's 'fast' Gram runs on AMX (bf16 split products) here, else why not.
const std::string& cpu_amx_unavailable_reason();
// Lanes (per-thread buffers of large CPU updates) held in the process-wide pool between updates,
// shared by all CPU accumulators and freed with the last one (tests).
int64_t cpu_pooled_lanes();
// Tests of the CPU thread pool's error path: runs one job of `nparts` parts in which the parts
// listed in `throw_parts` throw std::runtime_error("part <i>") at once while the others sleep
// `sleep_ms` first. Returns the pool's size, the message of the exception run() rethrew ("" if
// none) and how many of the other parts had ended their sleep when run() returned (all of them,
// unless run() returned early).
struct ThreadPoolProbe {
  int size = 0;
  std::string error;
  int64_t ended = 0;
};
ThreadPoolProbe cpu_thread_pool_probe(int nparts, const std::vector<int>& throw_parts, int sleep_ms);
// "" when the AMX kernels can run on the software model of the tile instructions (tests), else why not.
const std::string& cpu_amx_emulation_unavailable_reason();
// "" when the CPU backend's 'highest' Gram of bf16/f16 input runs exactly on AMX-INT8, else why not.
const std::string& cpu_amx_exact_unavailable_reason();

std::unique_ptr<GramBackend> make_gram_backend(int64_t dim, Device device, Precision precision);
std::unique_ptr<GramBackend> make_cpu_gram(int64_t dim, Precision precision);

}  // namespace geomfast
