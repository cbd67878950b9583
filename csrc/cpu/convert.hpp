// Exact up-casts of the input dtypes to float, and the per-dtype element loader.
#pragma once
#include <cstdint>
#include <cstring>

#include "geomfast/tensor.hpp"

namespace geomfast::cpu {

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// IEEE half -> float via a 65,536-entry table (exact; built once).
const float* half_table();

template <DType T> struct Loader;
// get(): the exact float64 value; nonfinite(): NaN/Inf by the exponent bits (cheap, vectorizes).
template <> struct Loader<DType::kFloat64> {
  using raw = double;
  static double get(const raw* p) { return *p; }
  static bool nonfinite(const raw* p) {
    uint64_t b;
    std::memcpy(&b, p, 8);
    return (b & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
  }
};
template <> struct Loader<DType::kFloat32> {
  using raw = float;
  static double get(const raw* p) { return static_cast<double>(*p); }
  static bool nonfinite(const raw* p) {
    uint32_t b;
    std::memcpy(&b, p, 4);
    return (b & 0x7f800000u) == 0x7f800000u;
  }
};
template <> struct Loader<DType::kBFloat16> {
  using raw = uint16_t;
  static double get(const raw* p) { return static_cast<double>(bf16_to_float(*p)); }
  static bool nonfinite(const raw* p) { return (*p & 0x7f80u) == 0x7f80u; }
};
template <> struct Loader<DType::kFloat16> {
  using raw = uint16_t;
  static double get(const raw* p) { return static_cast<double>(half_table()[*p]); }
  static bool nonfinite(const raw* p) { return (*p & 0x7c00u) == 0x7c00u; }
};

}  // namespace geomfast::cpu
