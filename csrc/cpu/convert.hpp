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
template <> struct Loader<DType::kFloat64> {
  using raw = double;
  static double get(const raw* p) { return *p; }
};
template <> struct Loader<DType::kFloat32> {
  using raw = float;
  static double get(const raw* p) { return static_cast<double>(*p); }
};
template <> struct Loader<DType::kBFloat16> {
  using raw = uint16_t;
  static double get(const raw* p) { return static_cast<double>(bf16_to_float(*p)); }
};
template <> struct Loader<DType::kFloat16> {
  using raw = uint16_t;
  static double get(const raw* p) { return static_cast<double>(half_table()[*p]); }
};

}  // namespace geomfast::cpu
