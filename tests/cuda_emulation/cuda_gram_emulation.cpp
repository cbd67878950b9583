// The CUDA backend's Gram accumulator itself (CudaGram, csrc/cuda/gram_cuda.cu, with its kernels
// and launchers) run on the CPU: the kernels under wmma_emulation.hpp, the runtime / cuBLAS calls
// under fake_cuda_runtime.cpp. Checks every path CudaGram::update takes (highest: DSYRK; fast:
// SSYRK for float32/float64, the 16-bit split on cuBLAS products or the tc kernel, the float32
// fallback when a float16 split would overflow), dtype switches between updates, non-finite
// chunks, state()/set_state()/add_state()/reset(), views at any offset and stride (no 16-byte
// vector load of a misaligned row: the emulation aborts on one), data misaligned for its type
// refused, against a long-double two-pass covariance.
// Prints a line per case; exits 1 on any failure. Built and run by tests/test_cuda_emulation.py.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_utils.hpp"  // the device's shared work buffers (case_shared_scratch)
#include "geomfast/backend.hpp"
#include "geomfast/errors.hpp"
#include "geomfast/gram.hpp"

using namespace geomfast;

namespace {

// Where a view's elements sit in its buffer, as torch / cupy views put them: element (r, j) at
// element offset + r * rs + j * cs from a 16-byte boundary, plus byte_shift bytes (not 0 only for
// memory misaligned for its own type, e.g. a cupy array made at memptr + 1).
struct Layout {
  int64_t offset = 0, rs = 0, cs = 0;
  size_t byte_shift = 0;
};

// Rows of one dtype, stored as the raw bytes the accumulator reads, plus their exact values.
struct Chunk {
  DType dtype;
  int64_t rows, cols;
  bool column_major = false;
  std::vector<unsigned char> bytes;
  std::vector<double> values;  // [rows, cols] row-major, the exact values of `bytes`
  bool strided = false;        // a view laid out by `layout` (from byte `lead` of bytes)
  Layout layout{};
  size_t lead = 0;

  MatrixView view() const {
    MatrixView v;
    v.data = bytes.data();
    v.dtype = dtype;
    v.rows = rows;
    v.cols = cols;
    v.row_stride = column_major ? 1 : cols;
    v.col_stride = column_major ? rows : 1;
    v.device = Device{DeviceType::kCUDA, 0};
    if (strided) {
      const unsigned char* base = bytes.data() + lead;  // 16-aligned + byte_shift when made
      if (reinterpret_cast<std::uintptr_t>(base) % 16 != layout.byte_shift) {
        std::printf("strided chunk: its buffer moved to another alignment\n");
        std::exit(1);
      }
      v.data = base + layout.offset * static_cast<int64_t>(dtype_size(dtype));
      v.row_stride = layout.rs;
      v.col_stride = layout.cs;
    }
    return v;
  }
};

Chunk make_chunk(DType t, int64_t rows, int64_t cols, const std::vector<double>& mean, const std::vector<double>& sd,
                 std::mt19937_64& rng, bool column_major = false) {
  std::normal_distribution<double> nd(0.0, 1.0);
  Chunk c{t, rows, cols, column_major, std::vector<unsigned char>(rows * cols * dtype_size(t)), std::vector<double>(rows * cols)};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const double v = mean[j] + sd[j] * nd(rng);
      const int64_t at = column_major ? r + j * rows : r * cols + j;
      double exact = v;
      switch (t) {
        case DType::kFloat64: reinterpret_cast<double*>(c.bytes.data())[at] = v; break;
        case DType::kFloat32: {
          const float f = static_cast<float>(v);
          reinterpret_cast<float*>(c.bytes.data())[at] = f;
          exact = f;
          break;
        }
        case DType::kFloat16: {
          const __half h = __float2half_rn(static_cast<float>(v));
          reinterpret_cast<__half*>(c.bytes.data())[at] = h;
          exact = __half2float(h);
          break;
        }
        case DType::kBFloat16: {
          const __nv_bfloat16 h = __float2bfloat16_rn(static_cast<float>(v));
          reinterpret_cast<__nv_bfloat16*>(c.bytes.data())[at] = h;
          exact = __bfloat162float(h);
          break;
        }
      }
      c.values[r * cols + j] = exact;
    }
  return c;
}

// The same rows as make_chunk's, in a view laid out by `lay` inside a larger buffer (the other
// bytes are NaN patterns: an element read from outside the view shows).
Chunk make_strided_chunk(DType t, int64_t rows, int64_t cols, const std::vector<double>& mean,
                         const std::vector<double>& sd, std::mt19937_64& rng, Layout lay) {
  const Chunk dense = make_chunk(t, rows, cols, mean, sd, rng);
  const size_t es = dtype_size(t);
  const int64_t span = lay.offset + (rows - 1) * lay.rs + (cols - 1) * lay.cs + 1;
  Chunk c{t, rows, cols, false, std::vector<unsigned char>(static_cast<size_t>(span) * es + 32, 0xFF), dense.values};
  c.strided = true;
  c.layout = lay;
  const auto at = reinterpret_cast<std::uintptr_t>(c.bytes.data());
  c.lead = (16 - at % 16) % 16 + lay.byte_shift;
  unsigned char* base = c.bytes.data() + c.lead + lay.offset * static_cast<int64_t>(es);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j)
      std::memcpy(base + (r * lay.rs + j * lay.cs) * static_cast<int64_t>(es), dense.bytes.data() + (r * cols + j) * es, es);
  return c;
}

std::vector<double> reference_cov(const std::vector<const Chunk*>& chunks, int64_t d) {
  std::vector<long double> m(d, 0.0L);
  int64_t n = 0;
  for (const Chunk* c : chunks) {
    for (int64_t r = 0; r < c->rows; ++r)
      for (int64_t j = 0; j < d; ++j) m[j] += c->values[r * d + j];
    n += c->rows;
  }
  for (auto& v : m) v /= n;
  std::vector<long double> g(d * d, 0.0L);
  for (const Chunk* c : chunks)
    for (int64_t r = 0; r < c->rows; ++r)
      for (int64_t a = 0; a < d; ++a) {
        const long double ya = c->values[r * d + a] - m[a];
        for (int64_t b = a; b < d; ++b) g[a * d + b] += ya * (c->values[r * d + b] - m[b]);
      }
  std::vector<double> out(d * d);
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = a; b < d; ++b) out[a * d + b] = out[b * d + a] = static_cast<double>(g[a * d + b] / (n - 1));
  return out;
}

double rel_fro(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

std::vector<double> cov_of(const GramBackend& g) {
  std::vector<double> out(g.dim() * g.dim());
  g.covariance(1, out.data());
  return out;
}

int failures = 0;

// Whether an update left the state exactly as it was (a refused chunk must not touch it).
bool same_state(const GramState& a, const GramState& b) {
  return a.count == b.count && a.gram == b.gram && a.sum == b.sum && a.shift == b.shift;
}

std::vector<const Chunk*> pointers(const std::vector<Chunk>& chunks) {
  std::vector<const Chunk*> out;
  for (const Chunk& c : chunks) out.push_back(&c);
  return out;
}

// g after every chunk was added, in order.
GramBackend& fed(GramBackend& g, const std::vector<Chunk>& chunks) {
  for (const Chunk& c : chunks) g.update(c.view());
  return g;
}

void report(const std::string& what, double err, double bar, bool extra_ok = true, const std::string& note = "") {
  const bool ok = std::isfinite(err) && err <= bar && extra_ok;
  failures += !ok;
  std::printf("%-62s rel Frobenius %.2e (bar %.0e)%s -> %s\n", what.c_str(), err, bar, note.c_str(), ok ? "ok" : "WRONG");
}

const char* dname(DType t) { return dtype_name(t); }

void case_stream(Precision p, DType t, int64_t d, const char* kernel, bool column_major, unsigned seed) {
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", kernel, 1);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.5, 1.5);
  std::vector<double> mean(d), sd(d);
  for (int64_t j = 0; j < d; ++j) {
    sd[j] = u(rng);
    mean[j] = j % 4 == 0 ? 300.0 * sd[j] : (j % 4 == 1 ? 2.0 * sd[j] : 0.2);  // offsets of 300 and 2 spreads
  }
  if (t == DType::kFloat16)
    for (auto& v : mean) v = std::min(v, 3e4);
  std::vector<Chunk> chunks;
  for (int64_t rows : {333, 1, 700, 290}) chunks.push_back(make_chunk(t, rows, d, mean, sd, rng, column_major));
  auto g = make_cuda_gram(d, 0, p);
  for (const Chunk& c : chunks) g->update(c.view());
  std::vector<const Chunk*> all;
  for (const Chunk& c : chunks) all.push_back(&c);
  const auto cov = cov_of(*g);
  bool symmetric = true;
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = 0; b < d; ++b) symmetric = symmetric && cov[a * d + b] == cov[b * d + a];
  const std::string what = std::string(p == Precision::kHighest ? "highest " : "fast ") + dname(t) + " d=" +
                           std::to_string(d) + (std::string(kernel) != "cublas" ? " " + std::string(kernel) : "") +
                           (std::getenv("GEOMFAST_CUDA_WG_TILE_N") ? " tile 192" : "") +
                           (column_major ? " column-major" : "") +
                           (std::getenv("GEOMFAST_CUDA_TRIANGLE_TILE") ? " tile 64" : "") +
                           (std::getenv("GEOMFAST_CUDA_CHAIN_ROWS") ? " chain 48" : "") +
                           (std::getenv("GEOMFAST_CUDA_FLUSH_ROWS") ? " flush 100" : "") +
                           ", 4 uneven chunks, offsets";
  report(what, rel_fro(cov, reference_cov(all, d)), p == Precision::kHighest ? 1e-12 : 1e-6, symmetric && g->count() == 1324);
}

void case_dtype_switches(Precision p, const char* kernel, unsigned seed) {
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", kernel, 1);
  const int64_t d = 45;
  std::mt19937_64 rng(seed);
  std::vector<double> mean(d), sd(d, 1.0);
  for (int64_t j = 0; j < d; ++j) mean[j] = j % 3 == 0 ? 500.0 : 0.1 * j;
  std::vector<Chunk> chunks;
  for (DType t : {DType::kBFloat16, DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64})
    chunks.push_back(make_chunk(t, 400, d, mean, sd, rng));
  auto g = make_cuda_gram(d, 0, p);
  std::vector<const Chunk*> all;
  for (const Chunk& c : chunks) {
    g->update(c.view());
    all.push_back(&c);
  }
  report(std::string(p == Precision::kHighest ? "highest" : "fast") + " dtype switches bf16>f32>f16>bf16>f64" +
             (std::string(kernel) != "cublas" ? " " + std::string(kernel) : ""),
         rel_fro(cov_of(*g), reference_cov(all, d)), p == Precision::kHighest ? 1e-12 : 1e-6);
}

// Accumulators of one device share the products' work buffers (DeviceHandles::scratch): updates
// of several, interleaved, of different widths, dtypes, precisions and chunk sizes (so the buffers
// grow under one and are then used by another), one destroyed and another made in the middle, each
// against its own reference; the buffers are freed with the device's last accumulator.
void case_shared_scratch(const char* kernel, unsigned seed) {
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", kernel, 1);
  std::mt19937_64 rng(seed);
  struct Acc {
    int64_t d;
    Precision p;
    DType t;
    std::unique_ptr<GramBackend> g;
    std::vector<Chunk> chunks;
  };
  auto make = [&](int64_t d, Precision p, DType t) {
    Acc a{d, p, t, make_cuda_gram(d, 0, p), {}};
    return a;
  };
  auto feed = [&](Acc& a, int64_t rows) {
    std::vector<double> mean(a.d), sd(a.d, 1.0);
    for (int64_t j = 0; j < a.d; ++j) mean[j] = j % 3 == 0 ? 200.0 : 0.05 * j;
    a.chunks.push_back(make_chunk(a.t, rows, a.d, mean, sd, rng));
    a.g->update(a.chunks.back().view());
  };
  std::vector<Acc> accs;
  accs.push_back(make(45, Precision::kFast, DType::kBFloat16));
  accs.push_back(make(20, Precision::kHighest, DType::kFloat32));
  accs.push_back(make(70, Precision::kFast, DType::kFloat16));
  const int64_t rows[] = {50, 300, 700, 40};
  for (int round = 0; round < 4; ++round)
    for (size_t i = 0; i < accs.size(); ++i) feed(accs[i], rows[(round + i) % 4]);
  double worst = 0.0;
  auto check = [&](const Acc& a) {
    const double bar = a.p == Precision::kHighest ? 1e-12 : 1e-6;
    worst = std::max(worst, rel_fro(cov_of(*a.g), reference_cov(pointers(a.chunks), a.d)) / bar);
  };
  check(accs[1]);
  accs.erase(accs.begin() + 1);                              // destroyed in the middle
  accs.push_back(make(33, Precision::kFast, DType::kFloat32));  // and a new one after
  for (int round = 0; round < 3; ++round)
    for (size_t i = 0; i < accs.size(); ++i) feed(accs[i], rows[(round + 2 * i) % 4]);
  for (const Acc& a : accs) check(a);
  cuda::GramScratch& w = cuda::device_handles(0).scratch;
  const bool held = w.block.size() > 0 && w.users == 3;
  accs.clear();
  const bool freed = w.users == 0 && w.block.size() == 0 && w.acc.size() == 0;
  // (the figure: the worst accumulator's error over its own bar, times 1e-6)
  report(std::string("4 accumulators sharing the work buffers, interleaved (") + kernel + ")", worst * 1e-6,
         1e-6, held && freed, held && freed ? "" : " (buffers not held while in use or not freed after)");
}

// An update that fails after it began writing the state (a cuBLAS failure in the middle of the
// products) must not leave a silently wrong state: every later read is an error until reset().
void case_failure_midway(unsigned seed) {
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", "cublas", 1);
  setenv("GEOMFAST_CUDA_CHAIN_ROWS", "48", 1);
  setenv("GEOMFAST_CUDA_FLUSH_ROWS", "100", 1);
  const int64_t d = 40;
  std::mt19937_64 rng(seed);
  std::vector<double> mean(d, 5.0), sd(d, 1.0);
  Chunk a = make_chunk(DType::kBFloat16, 300, d, mean, sd, rng), b = make_chunk(DType::kBFloat16, 500, d, mean, sd, rng);
  auto g = make_cuda_gram(d, 0, Precision::kFast);
  g->update(a.view());
  // 3 GEMMs per 48-row chain (HᵀH, HᵀL, LᵀL): the first 100-row flush block of b (9 GEMMs) reaches
  // float64, then the second fails part-way
  setenv("GF_FAKE_GEMM_FAIL_AFTER", "10", 1);
  bool failed = false, refused = true;
  try {
    g->update(b.view());
  } catch (const std::exception&) {
    failed = true;
  }
  unsetenv("GF_FAKE_GEMM_FAIL_AFTER");
  for (int op = 0; op < 4; ++op) {
    try {
      if (op == 0) g->update(a.view());
      if (op == 1) (void)cov_of(*g);
      if (op == 2) (void)g->state();
      if (op == 3) (void)g->spectrum(1, EigOptions{});
      refused = false;
    } catch (const RuntimeError& e) {
      refused = refused && std::string(e.what()).find("state is lost") != std::string::npos;
    }
  }
  g->reset();
  g->update(a.view());
  unsetenv("GEOMFAST_CUDA_CHAIN_ROWS");
  unsetenv("GEOMFAST_CUDA_FLUSH_ROWS");
  report("fast bf16: update failing part-way -> reads refused until reset()", rel_fro(cov_of(*g), reference_cov({&a}, d)),
         1e-6, failed && refused, failed && refused ? "" : " (not failed, or a read was allowed)");
}

// An accumulator that runs out of memory, then another: the failed allocation is also the
// thread's last error, which the next launch check read as its own (the second accumulator's
// first update failed with "out of memory").
void case_errors_left_behind(unsigned seed) {
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", "cublas", 1);
  const int64_t d = 48;
  std::mt19937_64 rng(seed);
  std::vector<double> mean(d, 40.0), sd(d, 1.0);
  Chunk a = make_chunk(DType::kFloat32, 300, d, mean, sd, rng);
  setenv("GF_FAKE_ALLOC_LIMIT", std::to_string(d * d * 8 - 1).c_str(), 1);  // the d × d state fails
  bool refused = false;
  try {
    (void)make_cuda_gram(d, 0, Precision::kHighest);
  } catch (const std::exception&) {
    refused = true;
  }
  unsetenv("GF_FAKE_ALLOC_LIMIT");
  auto g = make_cuda_gram(d, 0, Precision::kHighest);
  g->update(a.view());
  report("an accumulator out of memory, then another: its update is not failed by the old error",
         rel_fro(cov_of(*g), reference_cov({&a}, d)), 1e-12, refused, refused ? "" : " (the first was not refused)");
}

void case_non_finite_and_state(Precision p, unsigned seed) {
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", "cublas", 1);
  const int64_t d = 20;
  std::mt19937_64 rng(seed);
  std::vector<double> mean(d, 3.0), sd(d, 2.0);
  Chunk a = make_chunk(DType::kBFloat16, 300, d, mean, sd, rng), b = make_chunk(DType::kBFloat16, 200, d, mean, sd, rng);
  Chunk bad = make_chunk(DType::kBFloat16, 50, d, mean, sd, rng);
  reinterpret_cast<__nv_bfloat16*>(bad.bytes.data())[7 * d + 3] = __float2bfloat16_rn(NAN);
  reinterpret_cast<__nv_bfloat16*>(bad.bytes.data())[9 * d + 0] = __float2bfloat16_rn(INFINITY);
  auto g = make_cuda_gram(d, 0, p);
  // the very first chunk non-finite: nothing changes
  bool first_ok = false;
  try {
    g->update(bad.view());
  } catch (const NonFiniteError& e) {
    first_ok = e.count == 2 && e.first_row == 7 && g->count() == 0;
  }
  g->update(a.view());
  const GramState before = g->state();
  bool later_ok = false;
  try {
    g->update(bad.view());
  } catch (const NonFiniteError& e) {
    const GramState after = g->state();
    later_ok = e.count == 2 && e.first_row == 7 && same_state(after, before);
  }
  g->update(b.view());
  const auto ref = reference_cov({&a, &b}, d);
  const double bar = p == Precision::kHighest ? 1e-12 : 1e-6;
  const std::string pn = p == Precision::kHighest ? "highest" : "fast";
  report(pn + " non-finite chunks rejected (first and later), state unchanged", rel_fro(cov_of(*g), ref), bar,
         first_ok && later_ok);
  // state() -> set_state() on a fresh accumulator, then one more update
  auto h = make_cuda_gram(d, 0, p);
  h->set_state(g->state());
  Chunk c = make_chunk(DType::kBFloat16, 123, d, mean, sd, rng);
  h->update(c.view());
  report(pn + " state() -> set_state() -> update()", rel_fro(cov_of(*h), reference_cov({&a, &b, &c}, d)), bar);
  // add_state: a second accumulator's state merged in (different shift)
  std::vector<double> mean2(d, -40.0);
  Chunk e2 = make_chunk(DType::kFloat32, 210, d, mean2, sd, rng);
  auto k = make_cuda_gram(d, 0, p);
  k->update(e2.view());
  g->add_state(k->state());
  report(pn + " add_state() of another accumulator (other shift)", rel_fro(cov_of(*g), reference_cov({&a, &b, &e2}, d)),
         bar, g->count() == 710);
  g->reset();
  g->update(c.view());
  report(pn + " reset() then update()", rel_fro(cov_of(*g), reference_cov({&c}, d)), bar, g->count() == 123);
}

void case_squares_overflow(unsigned seed) {
  // float64 chunks whose squares, summed, pass float64's range: refused at the update with the
  // state unchanged (as non-finite values are), alone or added to the rows already in.
  const int64_t d = 6;
  std::mt19937_64 rng(seed);
  std::vector<double> mean(d, 2.0), sd(d, 1.0), huge(d, 0.0), huge_sd(d, 1e153);
  Chunk a = make_chunk(DType::kFloat64, 40, d, mean, sd, rng);
  Chunk bad = make_chunk(DType::kFloat64, 1000, d, huge, huge_sd, rng);
  auto g = make_cuda_gram(d, 0, Precision::kHighest);
  bool first = false, later = false;
  try {
    g->update(bad.view());
  } catch (const ValueError& e) {
    first = std::string(e.what()).find("overflow float64") != std::string::npos && g->count() == 0;
  }
  g->update(a.view());
  const GramState before = g->state();
  try {
    g->update(bad.view());
  } catch (const ValueError& e) {
    const GramState after = g->state();
    later = std::string(e.what()).find("nothing was accumulated") != std::string::npos && same_state(after, before);
  }
  report("float64 chunks whose squares overflow refused (first and later), state unchanged",
         rel_fro(cov_of(*g), reference_cov({&a}, d)), 1e-12, first && later);
}

void case_f16_split_overflow(unsigned seed) {
  // |x - c| beyond float16's range in a shifted column: the chunk goes down the float32 path.
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", "cublas", 1);
  const int64_t d = 8;
  std::mt19937_64 rng(seed);
  std::vector<double> mean(d, 40000.0), sd(d, 1000.0);
  Chunk a = make_chunk(DType::kFloat16, 200, d, mean, sd, rng);
  std::vector<double> mean2(d, -40000.0);
  Chunk b = make_chunk(DType::kFloat16, 100, d, mean2, sd, rng);  // x - c ≈ -80000: overflows the split
  auto g = make_cuda_gram(d, 0, Precision::kFast);
  g->update(a.view());
  g->update(b.view());
  report("fast f16 split overflow -> float32 path", rel_fro(cov_of(*g), reference_cov({&a, &b}, d)), 1e-6);
}

// A column whose values are ~1e-20 beside O(1) ones: float32 products (and tensor-core chains)
// lose its squares below float32's normal range; the fast paths take the diagonal from float64
// sums of squares, so every variance stays right and >= 0 (it came out negative on the CPU).
void case_tiny_column(DType t, const char* kernel, unsigned seed) {
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", kernel, 1);
  const int64_t d = 20;
  std::mt19937_64 rng(seed);
  std::vector<double> mean(d), sd(d);
  for (int64_t j = 0; j < d; ++j) {
    mean[j] = j % 3 == 0 ? 40.0 : -0.3;
    sd[j] = 1.0 + 0.1 * j;
  }
  mean[3] = 3e-20, sd[3] = 1e-20;
  mean[11] = 0.0, sd[11] = 2e-21;
  std::vector<Chunk> chunks;
  for (int64_t rows : {500, 301}) chunks.push_back(make_chunk(t, rows, d, mean, sd, rng));
  const auto g = make_cuda_gram(d, 0, Precision::kFast);
  const auto cov = cov_of(fed(*g, chunks)), ref = reference_cov(pointers(chunks), d);
  double worst = 0.0;
  for (int64_t j = 0; j < d; ++j) worst = std::max(worst, std::fabs(cov[j * d + j] / ref[j * d + j] - 1.0));
  char note[96];
  std::snprintf(note, sizeof note, " (tiny variances %.3e %.3e vs %.3e %.3e)", cov[3 * d + 3], cov[11 * d + 11],
                ref[3 * d + 3], ref[11 * d + 11]);
  report(std::string("fast ") + dname(t) + " " + kernel + ": a column of ~1e-20 keeps its variance",
         rel_fro(cov, ref), 1e-6, worst <= 1e-6, note);
}

// A stream whose mean moves away from the first chunk's (a drifting stream): the state is
// re-centred on a chunk whose mean is > 3 spreads from the shift, so later rows are not summed
// off-centre (which cost accuracy growing with the rows). Every entry against its own columns'
// spread: max |ΔC_ij| / sqrt(C_ii C_jj).
// alternate = true: chunks switch between the two regimes (each switch re-centres until the
// state's pooled spread covers both).
void case_drift(Precision p, DType t, double offset, unsigned seed, bool alternate = false) {
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", "cublas", 1);
  const int64_t d = 12;
  std::mt19937_64 rng(seed);
  std::vector<double> mean(d, 0.0), sd(d, 1.0), mean2(d);
  for (int64_t j = 0; j < d; ++j) mean2[j] = offset * (0.5 + 0.1 * j);
  std::vector<Chunk> chunks;
  chunks.push_back(make_chunk(t, 2000, d, mean, sd, rng));
  for (int i = 0; i < 3; ++i) chunks.push_back(make_chunk(t, 6000, d, alternate && i == 1 ? mean : mean2, sd, rng));
  const auto g = make_cuda_gram(d, 0, p);
  const auto cov = cov_of(fed(*g, chunks)), ref = reference_cov(pointers(chunks), d);
  double worst = 0.0;
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = 0; b < d; ++b)
      worst = std::max(worst, std::fabs(cov[a * d + b] - ref[a * d + b]) / std::sqrt(ref[a * d + a] * ref[b * d + b]));
  char what[96];
  std::snprintf(what, sizeof what, "%s %s: later chunks %g spreads off%s (per entry)",
                p == Precision::kHighest ? "highest" : "fast", dname(t), offset, alternate ? ", alternating" : "");
  report(what, worst, p == Precision::kHighest ? 1e-12 : 1e-6, g->count() == 20000);
}

// An unknown GEOMFAST_CUDA_GRAM_KERNEL is refused by name before the state changes.
void case_bad_kernel_name(unsigned seed) {
  const int64_t d = 20;
  std::mt19937_64 rng(seed);
  std::vector<double> mean(d, 1.0), sd(d, 1.0);
  const Chunk a = make_chunk(DType::kBFloat16, 50, d, mean, sd, rng);
  auto g = make_cuda_gram(d, 0, Precision::kFast);
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", "cublas", 1);
  g->update(a.view());
  auto refusal = [&] {  // the ValueError's message of one more update ("" when none)
    try {
      g->update(a.view());
    } catch (const ValueError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", "wgmma", 1);
  const std::string msg = refusal();
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", "wg", 1);
  setenv("GEOMFAST_CUDA_WG_TILE_N", "64", 1);
  const std::string msg2 = refusal();
  unsetenv("GEOMFAST_CUDA_WG_TILE_N");
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", "cublas", 1);
  const bool named = msg.find("GEOMFAST_CUDA_GRAM_KERNEL") != std::string::npos && msg.find("wgmma") != std::string::npos &&
                     msg2.find("GEOMFAST_CUDA_WG_TILE_N") != std::string::npos;
  report("fast bf16: bad GRAM_KERNEL / WG_TILE_N refused, state kept", rel_fro(cov_of(*g), reference_cov({&a}, d)),
         1e-6, named && g->count() == 50, named ? "" : " (messages: " + msg + " | " + msg2 + ")");
}

// Views as torch and cupy hand them over, where 16-byte vector loads (column_stats_vec_kernel,
// split_rows_vec_kernel) would fault: rows starting 2 bytes off a 16-byte boundary (bf16 x[:, 1:]),
// a storage offset of one element with a row stride and width that are whole vectors (only the
// pointer's alignment tells), 16-bit rows 8 bytes apart (only the row stride tells), x[3:] with an
// odd width and with whole vectors (16-byte aligned: the vector kernels run), float32 / float64
// offsets, and transposed views with an offset. The emulation aborts on a misaligned vector load (wmma_emulation.hpp's
// __ldg), so each case checks that the launchers take the one-value-per-load kernels there, and
// gets the covariance right, on every update path.
void case_unaligned_views(Precision p, DType t, const char* kernel, unsigned seed) {
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", kernel, 1);
  struct Shape {
    const char* name;
    int64_t d;
    Layout (*lay)(int64_t rows, int64_t d);
  };
  const Shape shapes[] = {
      {"x[:, 1:] (rows 1 element off)", 64, [](int64_t, int64_t d) { return Layout{1, d + 1, 1, 0}; }},
      {"storage offset 1, row stride 72", 64, [](int64_t, int64_t) { return Layout{1, 72, 1, 0}; }},
      {"x[:, :64] of width 68 (16-bit rows 8 bytes apart)", 64, [](int64_t, int64_t) { return Layout{0, 68, 1, 0}; }},
      {"x[3:], odd width", 37, [](int64_t, int64_t d) { return Layout{3 * d, d, 1, 0}; }},
      {"x[3:], whole vectors (the vector kernels)", 64, [](int64_t, int64_t d) { return Layout{3 * d, d, 1, 0}; }},
      {"x[:, 2:] of width + 2 (8 bytes off for float32)", 64, [](int64_t, int64_t d) { return Layout{2, d + 2, 1, 0}; }},
      {"transposed, offset 1", 40, [](int64_t rows, int64_t) { return Layout{1, 1, rows + 1, 0}; }},
  };
  std::mt19937_64 rng(seed);
  double worst = 0.0;
  bool counts = true;
  for (const Shape& sh : shapes) {
    std::vector<double> mean(sh.d), sd(sh.d, 1.0);
    for (int64_t j = 0; j < sh.d; ++j) mean[j] = j % 3 == 0 ? 200.0 : 0.1 * j;
    std::vector<Chunk> chunks;
    for (int64_t rows : {333, 1, 290}) chunks.push_back(make_strided_chunk(t, rows, sh.d, mean, sd, rng, sh.lay(rows, sh.d)));
    auto g = make_cuda_gram(sh.d, 0, p);
    const double err = rel_fro(cov_of(fed(*g, chunks)), reference_cov(pointers(chunks), sh.d));
    worst = std::max(worst, err);
    counts = counts && g->count() == 624;
    if (!(err <= (p == Precision::kHighest ? 1e-12 : 1e-6))) std::printf("  (%s: %.2e)\n", sh.name, err);
  }
  report(std::string(p == Precision::kHighest ? "highest " : "fast ") + dname(t) + " " + kernel +
             ": unaligned / strided / offset views",
         worst, p == Precision::kHighest ? 1e-12 : 1e-6, counts);
}

// Data misaligned for its own type (a cupy array made at memptr + 1): every kernel's loads of it
// would fault on a GPU (and lose the context), so the update refuses it before any launch, with the
// state unchanged. (The emulation cannot see such a scalar load: x86 reads it.)
void case_misaligned_elements(unsigned seed) {
  setenv("GEOMFAST_CUDA_GRAM_KERNEL", "cublas", 1);
  const int64_t d = 24;
  std::mt19937_64 rng(seed);
  std::vector<double> mean(d, 3.0), sd(d, 1.0);
  const Chunk a = make_chunk(DType::kFloat32, 100, d, mean, sd, rng);
  bool all_refused = true;
  for (DType t : {DType::kBFloat16, DType::kFloat32, DType::kFloat64}) {
    const Chunk bad = make_strided_chunk(t, 50, d, mean, sd, rng, Layout{0, d, 1, 1});
    for (Precision p : {Precision::kHighest, Precision::kFast}) {
      auto g = make_cuda_gram(d, 0, p);
      g->update(a.view());
      const GramState before = g->state();
      bool refused = false;
      try {
        g->update(bad.view());
      } catch (const ValueError& e) {
        const GramState after = g->state();
        refused = std::string(e.what()).find("aligned") != std::string::npos && same_state(after, before);
      }
      all_refused = all_refused && refused;
    }
  }
  auto g = make_cuda_gram(d, 0, Precision::kFast);
  g->update(a.view());
  report("data misaligned for its type (memptr + 1) refused, state unchanged", rel_fro(cov_of(*g), reference_cov({&a}, d)),
         1e-6, all_refused, all_refused ? "" : " (an update took it)");
}

}  // namespace

int main() {
  const BackendInfo info = cuda_backend_info();
  std::printf("backend: usable=%d %s\n", info.usable, info.details.c_str());
  unsigned seed = 1;
  try {
    for (Precision p : {Precision::kHighest, Precision::kFast})
      for (DType t : {DType::kFloat64, DType::kFloat32, DType::kFloat16, DType::kBFloat16})
        case_stream(p, t, 37, "cublas", false, seed++);
    for (DType t : {DType::kFloat16, DType::kBFloat16}) case_stream(Precision::kFast, t, 37, "tc", false, seed++);
    case_stream(Precision::kFast, DType::kBFloat16, 130, "cublas", true, seed++);
    case_stream(Precision::kFast, DType::kBFloat16, 130, "tc", true, seed++);
    case_stream(Precision::kHighest, DType::kFloat32, 130, "cublas", true, seed++);
    // the cuBLAS triangle in several column blocks (64 wide: 3 blocks at d = 130), short flushes
    setenv("GEOMFAST_CUDA_TRIANGLE_TILE", "64", 1);
    setenv("GEOMFAST_CUDA_FLUSH_ROWS", "100", 1);
    case_stream(Precision::kFast, DType::kBFloat16, 130, "cublas", false, seed++);
    case_stream(Precision::kFast, DType::kFloat16, 130, "cublas", false, seed++);
    unsetenv("GEOMFAST_CUDA_TRIANGLE_TILE");
    // several product calls per float64 flush (beta = 1 after the first), the last one cut short
    // by the flush block's end (48 + 48 + 4), and the 16-bit split in 96-row launches within it
    setenv("GEOMFAST_CUDA_CHAIN_ROWS", "48", 1);
    for (DType t : {DType::kBFloat16, DType::kFloat16, DType::kFloat32})
      case_stream(Precision::kFast, t, 130, "cublas", false, seed++);
    unsetenv("GEOMFAST_CUDA_CHAIN_ROWS");
    unsetenv("GEOMFAST_CUDA_FLUSH_ROWS");
    for (Precision p : {Precision::kHighest, Precision::kFast}) case_dtype_switches(p, "cublas", seed++);
    case_dtype_switches(Precision::kFast, "tc", seed++);
    // gram_wgmma.cu's Hopper kernel (the fake device is a 9.0): the same cases as tc
    for (DType t : {DType::kFloat16, DType::kBFloat16}) case_stream(Precision::kFast, t, 37, "wg", false, seed++);
    case_stream(Precision::kFast, DType::kBFloat16, 130, "wg", true, seed++);
    setenv("GEOMFAST_CUDA_WG_TILE_N", "192", 1);  // 128 x 192 tiles (operands padded to 192 columns)
    case_stream(Precision::kFast, DType::kFloat16, 200, "wg", false, seed++);
    unsetenv("GEOMFAST_CUDA_WG_TILE_N");
    case_dtype_switches(Precision::kFast, "wg", seed++);
    case_bad_kernel_name(seed++);
    for (DType t : {DType::kFloat32, DType::kBFloat16}) case_tiny_column(t, "cublas", seed++);
    case_tiny_column(DType::kBFloat16, "tc", seed++);
    case_tiny_column(DType::kBFloat16, "wg", seed++);
    for (double off : {5.0, 1000.0}) {
      case_drift(Precision::kHighest, DType::kFloat32, off, seed++);
      case_drift(Precision::kFast, DType::kFloat32, off, seed++);
    }
    case_drift(Precision::kFast, DType::kBFloat16, 5.0, seed++);
    for (Precision p : {Precision::kHighest, Precision::kFast}) case_drift(p, DType::kFloat32, 1000.0, seed++, true);
    for (Precision p : {Precision::kHighest, Precision::kFast}) case_non_finite_and_state(p, seed++);
    case_f16_split_overflow(seed++);
    case_squares_overflow(seed++);
    case_failure_midway(seed++);
    case_errors_left_behind(seed++);
    for (const char* kernel : {"cublas", "tc"}) case_shared_scratch(kernel, seed++);
    for (DType t : {DType::kBFloat16, DType::kFloat16, DType::kFloat32, DType::kFloat64})
      case_unaligned_views(Precision::kHighest, t, "cublas", seed++);
    for (const char* kernel : {"cublas", "tc", "wg"})
      for (DType t : {DType::kBFloat16, DType::kFloat16}) case_unaligned_views(Precision::kFast, t, kernel, seed++);
    for (DType t : {DType::kFloat32, DType::kFloat64}) case_unaligned_views(Precision::kFast, t, "cublas", seed++);
    case_misaligned_elements(seed++);
  } catch (const std::exception& e) {
    std::printf("EXCEPTION: %s\n", e.what());
    return 1;
  }
  std::printf(failures == 0 ? "ALL OK\n" : "FAILURES\n");
  return failures == 0 ? 0 : 1;
}
