// Loops over the pairs (i, j), i < j, of a square matrix in 64 × 64 tiles, so that m[i n + j] and
// m[j n + i] both stay in cache (a plain double loop walks one of them with stride n).
#pragma once
#include <algorithm>
#include <cstdint>

namespace geomfast::cpu {

// Calls f(i, j) for every strictly-upper pair i < j of an n × n matrix; stops when f returns false.
template <typename F>
bool for_upper_pairs(int64_t n, F&& f) {
  constexpr int64_t kT = 64;
  for (int64_t bi = 0; bi < n; bi += kT)
    for (int64_t bj = bi; bj < n; bj += kT) {
      const int64_t ei = std::min(bi + kT, n), ej = std::min(bj + kT, n);
      for (int64_t i = bi; i < ei; ++i)
        for (int64_t j = std::max(bj, i + 1); j < ej; ++j)
          if (!f(i, j)) return false;
    }
  return true;
}

// Copies the row-major upper triangle of m (n × n) onto its lower one, so both hold it. Read
// column-major, the same call copies the lower triangle onto the upper one.
inline void mirror_upper(double* m, int64_t n) {
  for_upper_pairs(n, [m, n](int64_t i, int64_t j) {
    m[j * n + i] = m[i * n + j];
    return true;
  });
}

}  // namespace geomfast::cpu
