// The CUDA backend's fast 16-bit path with the tc kernel, run on the CPU: the kernels of
// csrc/cuda/gram_kernels.cu and csrc/cuda/gram_tc.cu (their unchanged source, under
// wmma_emulation.hpp), called in the order CudaGram::update calls them (csrc/cuda/gram_cuda.cu;
// that host code itself needs the CUDA runtime and is mirrored here, step by step).
//
// Checks: (1) the exact hi + lo split: hi + lo == x - c in exact arithmetic for every element,
// on values spread over many binades around large and small shifts; (2) the whole path (column
// statistics, kernel shift, split, HᵀH / HᵀL / LᵀL products, cross terms, commits, covariance)
// against a float64 two-pass covariance of the same 16-bit values, streamed in uneven chunks,
// with centred columns, columns whose mean is 10³ times their spread, and a non-finite chunk that
// must be counted and rejected. Prints a line per case; exits 1 on any failure.
#define GEOMFAST_CUDA_EMULATE 1
#include "../../csrc/cuda/gram_kernels.cu"
#include "../../csrc/cuda/gram_tc.cu"

#include <cmath>
#include <cstring>
#include <cstdio>
#include <random>
#include <string>

using namespace geomfast::cuda;
using gf_emu::Dim3;
using gf_emu::launch;

namespace {

unsigned cdiv(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

template <typename T16>
T16 to16(double v) {
  if constexpr (std::is_same_v<T16, __half>)
    return __float2half_rn(static_cast<float>(v));
  else
    return __float2bfloat16_rn(static_cast<float>(v));
}
template <typename T16>
double from16(T16 v) {
  if constexpr (std::is_same_v<T16, __half>)
    return __half2float(v);
  else
    return __bfloat162float(v);
}
template <typename T16>
const char* name16() {
  return std::is_same_v<T16, __half> ? "f16" : "bf16";
}

// Mirror of CudaGram (precision fast, 16-bit input, tc kernel), state in host vectors.
template <typename T16>
struct Fast16Path {
  int64_t d;
  int64_t rows_per_call, chain_rows;
  int64_t rs, cs;  // x's strides (elements): row-major (d, 1) or a column-major view (1, ld)
  std::vector<double> shift, sum, gram, c, zsum, zsq, part;
  std::vector<unsigned long long> flags = std::vector<unsigned long long>(kNumFlags);
  std::vector<int> col2j;
  int64_t nj = 0, count = 0;
  bool shift_set = false, c_ready = false;

  Fast16Path(int64_t dim, int64_t rpc, int64_t chain, int64_t row_stride, int64_t col_stride)
      : d(dim), rows_per_call(rpc), chain_rows(chain), rs(row_stride), cs(col_stride), shift(dim), sum(dim), gram(dim * dim), c(dim), zsum(dim),
        zsq(dim), col2j(dim, -1) {}

  void stats(const T16* x, int64_t n, const double* cc, double split_max) {
    const int64_t nparts = std::max<int64_t>(1, std::min<int64_t>((n + 127) / 128, 128));
    part.assign(static_cast<size_t>(nparts * 2 * d), 0.0);
    launch(Dim3{1, 1, 1}, Dim3{1, 1, 1}, false, [&] { init_flags_kernel(flags.data()); });
    launch(Dim3{cdiv(d, 32), static_cast<unsigned>(nparts), 1}, Dim3{32, 8, 1}, true, [&] {
      column_stats_kernel<T16>(x, n, d, rs, cs, cc, split_max, part.data(), flags.data());
    });
    launch(Dim3{cdiv(d, 256), 1, 1}, Dim3{256, 1, 1}, false,
           [&] { reduce_parts_kernel(part.data(), nparts, d, zsum.data(), zsq.data()); });
  }

  // Returns false (state untouched) when x holds non-finite values, as NonFiniteError would.
  bool update(const T16* x, int64_t n) {
    const bool fresh = !shift_set;
    if (fresh) {
      stats(x, n, nullptr, 0.0);
      if (flags[0] != 0) return false;
      launch(Dim3{cdiv(d, 256), 1, 1}, Dim3{256, 1, 1}, false,
             [&] { set_shift_kernel(zsum.data(), d, static_cast<double>(n), shift.data()); });
      shift_set = true;
    }
    if (!c_ready) {
      const double max16 = std::is_same_v<T16, __half> ? 65504.0 : 3.0e38;
      const double* ysum = fresh ? zsum.data() : sum.data();
      const double* ysq = fresh ? zsq.data() : gram.data();
      const int64_t stride = fresh ? 1 : d + 1, base = fresh ? n : count;
      launch(Dim3{cdiv(d, 256), 1, 1}, Dim3{256, 1, 1}, false, [&] {
        choose_split_shift_kernel<T16>(shift.data(), ysum, ysq, stride, d, static_cast<double>(base), 0.5, max16,
                                       c.data());
      });
      nj = 0;
      for (int64_t j = 0; j < d; ++j) col2j[j] = c[j] != 0.0 ? static_cast<int>(nj++) : -1;
      c_ready = true;
    }
    stats(x, n, c.data(), std::is_same_v<T16, __half> ? 65504.0 : 3.0e38);
    if (flags[0] != 0) return false;
    if (flags[2] != 0) {
      std::printf("unexpected split overflow\n");
      std::exit(1);
    }
    const int64_t ldh = (d + kTcTile - 1) / kTcTile * kTcTile, ldl = nj > 0 ? (nj + kTcTile - 1) / kTcTile * kTcTile : 0;
    std::vector<double> hl(static_cast<size_t>(d * std::max<int64_t>(nj, 1)), 0.0), ll(static_cast<size_t>(std::max<int64_t>(nj * nj, 1)), 0.0);
    for (int64_t r0 = 0; r0 < n; r0 += rows_per_call) {
      const int64_t nb = std::min(rows_per_call, n - r0);
      std::vector<T16> hi(static_cast<size_t>(nb * ldh), to16<T16>(12345.0)), lo(static_cast<size_t>(nb * std::max<int64_t>(ldl, 1)), to16<T16>(12345.0));
      // poisoned: the split kernel must write every element, padding included
      launch(Dim3{std::min(cdiv(ldh, 256), 64u), static_cast<unsigned>(std::min<int64_t>(nb, 65535)), 1}, Dim3{256, 1, 1},
             false, [&] {
               split_rows_kernel<T16>(x, r0, nb, d, rs, cs, c.data(), col2j.data(), nj, hi.data(), ldh, lo.data(), ldl);
             });
      const int chain = static_cast<int>(chain_rows / 32);
      launch(cdiv(d, kTcTile), cdiv(d, kTcTile), 256,
             [&] { tc_gram_kernel<T16>(hi.data(), ldh, d, hi.data(), ldh, d, nb, chain, true, gram.data(), d); });
      if (nj > 0) {
        launch(cdiv(d, kTcTile), cdiv(nj, kTcTile), 256,
               [&] { tc_gram_kernel<T16>(hi.data(), ldh, d, lo.data(), ldl, nj, nb, chain, false, hl.data(), d); });
        launch(cdiv(nj, kTcTile), cdiv(nj, kTcTile), 256,
               [&] { tc_gram_kernel<T16>(lo.data(), ldl, nj, lo.data(), ldl, nj, nb, chain, true, ll.data(), nj); });
      }
    }
    const Dim3 tiles{cdiv(d, 32), cdiv(d, 32), 1}, lanes{32, 8, 1};
    if (nj > 0)
      launch(tiles, lanes, false, [&] {
        flush_upper_split_kernel<double>(nullptr, hl.data(), ll.data(), col2j.data(), d, nj, gram.data());
      });
    launch(Dim3{cdiv(d, 256), 1, 1}, Dim3{256, 1, 1}, false, [&] {
      commit_sum_kernel(shift.data(), c.data(), zsum.data(), d, static_cast<double>(n), sum.data());
    });
    launch(tiles, lanes, false, [&] {
      commit_gram_kernel(shift.data(), c.data(), zsum.data(), d, static_cast<double>(n), gram.data());
    });
    count += n;
    return true;
  }

  std::vector<double> covariance() {
    std::vector<double> full(static_cast<size_t>(d * d));
    launch(Dim3{cdiv(d, 32), cdiv(d, 32), 1}, Dim3{32, 8, 1}, false, [&] {
      symmetric_from_upper_kernel(gram.data(), sum.data(), d, static_cast<double>(count),
                                  1.0 / static_cast<double>(count - 1), full.data());
    });
    return full;
  }
};

template <typename T16>
bool split_is_exact(unsigned seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  const int64_t d = 300, n = 64;
  const double top = std::is_same_v<T16, __half> ? 3.0e4 : 1e30;
  std::vector<double> c(d);
  std::vector<int> col2j(d);
  for (int64_t j = 0; j < d; ++j) {
    const double mag = std::pow(10.0, u(rng) * (std::is_same_v<T16, __half> ? 4.0 : 25.0));
    c[j] = from16<T16>(to16<T16>(std::min(mag, top / 2) * (u(rng) > 0 ? 1 : -1)));
    col2j[j] = static_cast<int>(j);
  }
  std::vector<T16> x(static_cast<size_t>(n * d));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < d; ++j) {
      // values near the shift, far below it, far above it (within the format's range)
      const double scale = std::fabs(c[j]) * std::pow(2.0, std::floor(u(rng) * 30.0));
      x[r * d + j] = to16<T16>(std::max(-top / 2, std::min(top / 2, c[j] + u(rng) * scale)));
    }
  const int64_t ldh = 384, ldl = 384;
  std::vector<T16> hi(n * ldh), lo(n * ldl);
  launch(Dim3{2, static_cast<unsigned>(n), 1}, Dim3{256, 1, 1}, false, [&] {
    split_rows_kernel<T16>(x.data(), 0, n, d, d, 1, c.data(), col2j.data(), d, hi.data(), ldh, lo.data(), ldl);
  });
  int64_t inexact = 0, pad = 0;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < d; ++j) {
      const long double want = static_cast<long double>(from16<T16>(x[r * d + j])) - c[j];
      const long double got = static_cast<long double>(from16<T16>(hi[r * ldh + j])) + from16<T16>(lo[r * ldl + j]);
      inexact += got != want;
    }
    for (int64_t j = d; j < ldh; ++j) pad += from16<T16>(hi[r * ldh + j]) != 0.0 || from16<T16>(lo[r * ldl + j]) != 0.0;
  }
  std::printf("%-5s split hi + lo == x - c exactly, %lld values over ~50 binades: %lld inexact, %lld bad padding -> %s\n",
              name16<T16>(), (long long)(n * d), (long long)inexact, (long long)pad, inexact == 0 && pad == 0 ? "ok" : "WRONG");
  return inexact == 0 && pad == 0;
}

template <typename T>
T make_value(double v) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>)
    return static_cast<T>(v);
  else
    return to16<T>(v);
}

// The 16-byte-vector column statistics (and, for 16-bit input, the split) that the launchers use
// for row-major contiguous input, against the scalar kernels on the same data: partial sums,
// flags, hi and lo bit for bit equal. Non-finite values, shifted columns and values over the
// split threshold included; rows odd (the two-row batches' tail) and columns over two blocks.
template <typename T>
bool vector_kernels_match(int64_t d, int64_t n, unsigned seed) {
  constexpr bool is16 = !std::is_same_v<T, float> && !std::is_same_v<T, double>;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> mean(d), c(d, 0.0);
  for (int64_t j = 0; j < d; ++j) {
    mean[j] = j % 3 == 0 ? 200.0 : 0.1 * static_cast<double>(j % 7);
    c[j] = j % 3 == 0 ? (is16 ? from16<T>(to16<T>(mean[j])) : mean[j]) : 0.0;
  }
  std::vector<T> x(static_cast<size_t>(n * d));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < d; ++j) x[r * d + j] = make_value<T>(mean[j] + nd(rng) * (j % 5 == 0 ? 50.0 : 1.0));
  x[7 * d + 3] = make_value<T>(NAN);
  x[(n - 1) * d + d - 1] = make_value<T>(INFINITY);
  x[(n / 2) * d] = make_value<T>(-INFINITY);
  const int64_t nparts = std::max<int64_t>(1, std::min<int64_t>((n + 127) / 128, 128));
  constexpr int64_t V = 16 / sizeof(T);
  auto stats = [&](bool vec, std::vector<double>& part, std::vector<unsigned long long>& flags) {
    part.assign(static_cast<size_t>(nparts * 2 * d), -1.0);
    flags.assign(kNumFlags, 7);
    launch(Dim3{1, 1, 1}, Dim3{1, 1, 1}, false, [&] { init_flags_kernel(flags.data()); });
    if (vec)
      launch(Dim3{cdiv(d, 32 * V), static_cast<unsigned>(nparts), 1}, Dim3{32, 8, 1}, true, [&] {
        column_stats_vec_kernel<T>(x.data(), n, d, d, c.data(), 60.0, part.data(), flags.data());
      });
    else
      launch(Dim3{cdiv(d, 32), static_cast<unsigned>(nparts), 1}, Dim3{32, 8, 1}, true, [&] {
        column_stats_kernel<T>(x.data(), n, d, d, 1, c.data(), 60.0, part.data(), flags.data());
      });
  };
  std::vector<double> ps, pv;
  std::vector<unsigned long long> fs, fv;
  stats(false, ps, fs);
  stats(true, pv, fv);
  bool ok = std::memcmp(ps.data(), pv.data(), ps.size() * sizeof(double)) == 0 && fs == fv && fs[0] == 3 &&
            fs[1] == 7 && fs[2] > 0;
  int64_t split_diff = 0;
  if constexpr (is16) {
    std::vector<int> col2j(d, -1);
    int64_t nj = 0;
    for (int64_t j = 0; j < d; ++j)
      if (c[j] != 0.0) col2j[j] = static_cast<int>(nj++);
    for (int64_t r = 0; r < n; ++r)  // the split needs finite input (the statistics reject the rest)
      for (int64_t j = 0; j < d; ++j)
        if (!std::isfinite(from16<T>(x[r * d + j]))) x[r * d + j] = to16<T>(1.0);
    const int64_t ldh = (d + 127) / 128 * 128, ldl = (nj + 127) / 128 * 128;
    auto split = [&](bool vec, std::vector<T>& hi, std::vector<T>& lo) {
      hi.assign(static_cast<size_t>(n * ldh), to16<T>(12345.0));
      lo.assign(static_cast<size_t>(n * ldl), to16<T>(12345.0));
      const unsigned gx = std::min(cdiv(vec ? ldh / 8 : ldh, 256), 64u);
      launch(Dim3{gx, static_cast<unsigned>(n), 1}, Dim3{256, 1, 1}, false, [&] {
        if (vec)
          split_rows_vec_kernel<T>(x.data(), 0, n, d, d, c.data(), col2j.data(), nj, hi.data(), ldh, lo.data(), ldl);
        else
          split_rows_kernel<T>(x.data(), 0, n, d, d, 1, c.data(), col2j.data(), nj, hi.data(), ldh, lo.data(), ldl);
      });
    };
    std::vector<T> hs, ls, hv, lv;
    split(false, hs, ls);
    split(true, hv, lv);
    for (size_t i = 0; i < hs.size(); ++i) split_diff += std::memcmp(&hs[i], &hv[i], sizeof(T)) != 0;
    for (size_t i = 0; i < ls.size(); ++i) split_diff += std::memcmp(&ls[i], &lv[i], sizeof(T)) != 0;
    ok &= split_diff == 0;
  }
  const char* tname = std::is_same_v<T, float> ? "f32" : std::is_same_v<T, double> ? "f64" : name16<T>();
  std::printf("%-5s 16-byte-vector kernels vs scalar, d=%-4lld n=%-5lld: statistics %s, flags %llu/%llu/%llu, "
              "split values differing %lld -> %s\n",
              tname, (long long)d, (long long)n, std::memcmp(ps.data(), pv.data(), ps.size() * sizeof(double)) == 0 ? "identical" : "DIFFER",
              fv[0], fv[1], fv[2], (long long)split_diff, ok ? "ok" : "WRONG");
  return ok;
}

template <typename T16>
bool whole_path(const char* label, int64_t d, int64_t n, int64_t rows_per_call, int64_t chain, unsigned seed,
                double offset = 1e3, bool column_major = false, double entry_bar = 3e-7, bool expect_over = false) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_real_distribution<double> u(0.5, 1.5);
  std::vector<double> mean(d), sd(d);
  for (int64_t j = 0; j < d; ++j) {
    sd[j] = u(rng);
    mean[j] = (j % 3 == 0) ? offset * sd[j] * (j % 2 ? 1 : -1) : 0.1 * nd(rng);  // a third off centre
  }
  std::vector<T16> x(static_cast<size_t>(n * d));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < d; ++j) x[r * d + j] = to16<T16>(mean[j] + sd[j] * nd(rng));
  // The chunks: row-major views of x, or (column_major) views of a column-major copy with leading
  // dimension n, as a transposed torch tensor would be.
  std::vector<T16> xt(static_cast<size_t>(n * d));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < d; ++j) xt[j * n + r] = x[r * d + j];
  const int64_t rs = column_major ? 1 : d, cs = column_major ? n : 1;
  auto rows_at = [&](std::vector<T16>& v, int64_t r0) { return v.data() + r0 * rs; };
  Fast16Path<T16> path(d, rows_per_call, chain, rs, cs);
  std::vector<T16>& src = column_major ? xt : x;
  const int64_t cut1 = n * 37 / 100, cut2 = n * 81 / 100;
  bool ok = path.update(rows_at(src, 0), cut1);
  // a chunk with a NaN and an Inf is rejected before anything changes
  std::vector<T16> bad = src;
  bad[(cut1 + 5) * rs + 2 * cs] = to16<T16>(NAN);
  bad[(cut1 + 9) * rs + 1 * cs] = to16<T16>(INFINITY);
  const auto before = path.gram;
  const bool rejected = !path.update(rows_at(bad, cut1), cut2 - cut1) && path.flags[0] == 2 && path.flags[1] == 5 &&
                        path.gram == before && path.count == cut1;
  ok = ok && rejected && path.update(rows_at(src, cut1), cut2 - cut1) && path.update(rows_at(src, cut2), n - cut2);
  const std::vector<double> cov = path.covariance();
  // float64 two-pass reference on the exact 16-bit values (long double sums)
  std::vector<long double> m(d, 0.0L);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < d; ++j) m[j] += from16<T16>(x[r * d + j]);
  for (auto& v : m) v /= n;
  std::vector<double> ref(static_cast<size_t>(d * d));
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = a; b < d; ++b) {
      long double s = 0.0L;
      for (int64_t r = 0; r < n; ++r) s += (from16<T16>(x[r * d + a]) - m[a]) * (from16<T16>(x[r * d + b]) - m[b]);
      ref[a * d + b] = ref[b * d + a] = static_cast<double>(s / (n - 1));
    }
  double num = 0.0, den = 0.0, entry = 0.0;
  bool symmetric = true;
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = 0; b < d; ++b) {
      const double e = cov[a * d + b] - ref[a * d + b];
      num += e * e;
      den += ref[a * d + b] * ref[a * d + b];
      // each entry against its scale sqrt(C_aa C_bb): catches a term lost in a single entry
      entry = std::max(entry, std::fabs(e) / std::sqrt(ref[a * d + a] * ref[b * d + b]));
      symmetric = symmetric && cov[a * d + b] == cov[b * d + a];
    }
  const double err = std::sqrt(num / den);
  // The contract is 1e-6; the emulation sums exact products in float32 with round-to-nearest
  // (seen: <= 8e-8 on these fixed draws), so entries are held to 3e-7, under what losing even
  // the smallest term, LᵀL (2^-18 of an entry), costs.
  const bool within = std::isfinite(err) && err <= 1e-6 && entry <= entry_bar;
  ok = ok && symmetric && (expect_over ? std::isfinite(err) && err > 1e-6 : within);
  std::printf("%-5s %-34s d=%-4lld n=%-5lld J=%-3lld rows/call=%-4lld chain=%-3lld: rel Frobenius %.2e, "
              "worst entry %.2e (bars 1e-6, %.0e%s), non-finite chunk rejected %s -> %s\n",
              name16<T16>(), label, (long long)d, (long long)n, (long long)path.nj, (long long)rows_per_call,
              (long long)chain, err, entry, entry_bar, expect_over ? "; expected OVER" : "", rejected ? "yes" : "NO",
              ok ? "ok" : "WRONG");
  return ok;
}

}  // namespace

int main() {
  bool ok = true;
  ok &= split_is_exact<__nv_bfloat16>(1);
  ok &= split_is_exact<__half>(2);
  ok &= vector_kernels_match<__nv_bfloat16>(264, 1001, 11);
  ok &= vector_kernels_match<__half>(64, 37, 12);
  ok &= vector_kernels_match<float>(260, 300, 13);
  ok &= vector_kernels_match<double>(66, 129, 14);
  ok &= whole_path<__nv_bfloat16>("large offsets, 3 chunks", 150, 1500, 256, 64, 3);
  ok &= whole_path<__half>("large offsets, 3 chunks", 150, 1500, 256, 64, 4);
  ok &= whole_path<__nv_bfloat16>("off the tile edge, short calls", 131, 900, 96, 32, 5);
  // offsets of 2 spreads: values span binades around the shift, so x - c needs a lo part
  ok &= whole_path<__nv_bfloat16>("offsets of 2 spreads (lo parts)", 90, 1200, 512, 128, 6, 2.0);
  ok &= whole_path<__half>("offsets of 2 spreads (lo parts)", 90, 1200, 512, 128, 7, 2.0);
  ok &= whole_path<__nv_bfloat16>("column-major view (strided)", 70, 800, 256, 64, 8, 1e3, true);
  // Under the public model of H100 accumulation (25-bit window, round toward zero): the default
  // two-level chains of 128 rows stay within the bar; one chain over all 2048 rows (what cuBLAS
  // products with 2048-row flushes amount to) does not. (2048 rows, split into 3 updates: chains of
  // up to 900 rows; the modelled products are slow to emulate.)
  nvcuda::wmma::g_mma_window = 25;
  ok &= whole_path<__nv_bfloat16>("H100 model, 128-row chains", 48, 2048, 2048, 128, 9, 3.0, false, 1e-6);
  ok &= whole_path<__nv_bfloat16>("H100 model, one chain per update", 48, 2048, 2048, 2048, 9, 3.0, false, 1e-6, true);
  nvcuda::wmma::g_mma_window = 0;
  std::printf(ok ? "ALL OK\n" : "FAILURES\n");
  return ok ? 0 : 1;
}
