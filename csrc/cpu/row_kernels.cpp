// Row kernels of the CPU Gram path (see row_kernels.hpp). Each entry point is a thin wrapper,
// cloned per x86-64 level, around an always-inlined body written so that the compiler vectorizes
// it: magnitudes and non-finite tests on the raw bits (the order of |x|'s bit pattern is the
// order of |x|), half → float by exponent re-biasing (exact, no table), no branches in the loops.
#include "cpu/row_kernels.hpp"

#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__ELF__)
#define GF_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define GF_CLONES
#endif
#define GF_INLINE inline __attribute__((always_inline))

namespace geomfast::cpu {
namespace {

GF_INLINE float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
GF_INLINE double bits_to_double(uint64_t b) {
  double f;
  std::memcpy(&f, &b, 8);
  return f;
}
GF_INLINE uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
// IEEE half (finite) → float, exact and branch-free: normals by re-biasing the exponent,
// subnormals as m · 2^-24 (no float subnormal arithmetic, which is slow on some CPUs).
GF_INLINE float half_to_float(uint16_t h) {
  const uint32_t mag_bits = static_cast<uint32_t>(h & 0x7fffu);
  const float normal = bits_to_float((mag_bits << 13) + (112u << 23));
  const float sub = static_cast<float>(static_cast<int32_t>(h & 0x3ffu)) * 0x1p-24f;
  const float mag = (h & 0x7c00u) ? normal : sub;
  return bits_to_float(float_to_bits(mag) | (static_cast<uint32_t>(h & 0x8000u) << 16));
}
GF_INLINE float bf16_to_float_inline(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// Unsigned magnitude bits against the non-finite threshold, in mask arithmetic (GCC does not
// vectorize the same loop written with a bool and a select). Counts fit in U: n <= 46340.
// *low collects the bits of kLowMask set anywhere (0: every value has them all zero).
template <typename U, U kMagMask, U kNonFinite, U kLowMask = 0>
GF_INLINE U scan_bits(const U* __restrict x, int64_t n, U* max_mag, U* low = nullptr) {
  U bad = 0, m = 0, lo = 0;
  for (int64_t i = 0; i < n; ++i) {
    const U a = static_cast<U>(x[i] & kMagMask);
    const U finite = static_cast<U>(U(0) - static_cast<U>(a < kNonFinite));  // all ones when finite
    bad = static_cast<U>(bad + U(1) + finite);                                // +0 finite, +1 not
    const U keep = static_cast<U>(a & finite);
    m = m > keep ? m : keep;
    if constexpr (kLowMask != 0) lo = static_cast<U>(lo | (x[i] & kLowMask));
  }
  *max_mag = m;
  if constexpr (kLowMask != 0) *low = lo;
  return bad;
}

template <typename In, typename Out, typename Conv>
GF_INLINE void center_body(const In* __restrict x, int64_t n, const double* __restrict shift,
                           double* __restrict colsum, Out* __restrict out, Conv conv) {
  for (int64_t i = 0; i < n; ++i) {
    const double y = static_cast<double>(conv(x[i])) - shift[i];
    colsum[i] += y;
    out[i] = static_cast<Out>(y);
  }
}

}  // namespace

GF_CLONES RowScan scan_row_f64(const double* x, int64_t n) {
  uint64_t m, low;
  const uint64_t bad = scan_bits<uint64_t, 0x7fffffffffffffffull, 0x7ff0000000000000ull, kShortLowBitsF64>(
      reinterpret_cast<const uint64_t*>(x), n, &m, &low);
  return {static_cast<uint32_t>(bad), bits_to_double(m), low == 0};
}
GF_CLONES RowScan scan_row_f32(const float* x, int64_t n) {
  uint32_t m, low;
  const uint32_t bad =
      scan_bits<uint32_t, 0x7fffffffu, 0x7f800000u, kShortLowBitsF32>(reinterpret_cast<const uint32_t*>(x), n, &m, &low);
  return {bad, static_cast<double>(bits_to_float(m)), low == 0};
}
GF_CLONES RowScan scan_row_bf16(const uint16_t* x, int64_t n) {
  uint16_t m;
  const uint16_t bad = scan_bits<uint16_t, 0x7fffu, 0x7f80u>(x, n, &m);
  return {bad, static_cast<double>(bf16_to_float_inline(m))};
}
GF_CLONES RowScan scan_row_f16(const uint16_t* x, int64_t n) {
  uint16_t m;
  const uint16_t bad = scan_bits<uint16_t, 0x7fffu, 0x7c00u>(x, n, &m);
  return {bad, static_cast<double>(half_to_float(m))};
}

#define GF_CENTER(NAME, IN, OUT, CONV)                                                              \
  GF_CLONES void NAME(const IN* x, int64_t n, const double* shift, double* colsum, OUT* out) {      \
    center_body(x, n, shift, colsum, out, CONV);                                                    \
  }
GF_CENTER(center_row_f64, double, double, [](double v) { return v; })
GF_CENTER(center_row_f64, double, float, [](double v) { return v; })
GF_CENTER(center_row_f32, float, double, [](float v) { return v; })
GF_CENTER(center_row_f32, float, float, [](float v) { return v; })
GF_CENTER(center_row_bf16, uint16_t, double, bf16_to_float_inline)
GF_CENTER(center_row_bf16, uint16_t, float, bf16_to_float_inline)
GF_CENTER(center_row_f16, uint16_t, double, half_to_float)
GF_CENTER(center_row_f16, uint16_t, float, half_to_float)
#undef GF_CENTER

GF_CLONES void add_f32_into_f64(const float* acc, int64_t n, double* g) {
  for (int64_t i = 0; i < n; ++i) g[i] += static_cast<double>(acc[i]);
}
GF_CLONES void add_squares_f32(const float* y, int64_t rows, int64_t n, double* sq) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict row = y + r * n;
    for (int64_t i = 0; i < n; ++i) sq[i] += static_cast<double>(row[i]) * static_cast<double>(row[i]);
  }
}
GF_CLONES void add_f64_into_f64(const double* p, int64_t n, double* g) {
  for (int64_t i = 0; i < n; ++i) g[i] += p[i];
}

}  // namespace geomfast::cpu
