// Exact algebra on host Gram states: re-shifting and merging (O(dim²), no row data needed).
#include <algorithm>

#include "geomfast/errors.hpp"
#include "geomfast/gram.hpp"

namespace geomfast {

GramState reshift_state(const GramState& s, const double* new_shift) {
  // y' = x - s' = y + δ with δ = s - s':  Σy' = Σy + nδ,  Σy'y'ᵀ = Σyyᵀ + δ(Σy)ᵀ + (Σy)δᵀ + nδδᵀ.
  const int64_t d = s.dim;
  GramState out = s;
  if (s.count == 0) {
    out.shift.assign(new_shift, new_shift + d);
    return out;
  }
  std::vector<double> delta(d);
  const double n = static_cast<double>(s.count);
  for (int64_t i = 0; i < d; ++i) delta[i] = s.shift[i] - new_shift[i];
  for (int64_t i = 0; i < d; ++i) {
    const double di = delta[i], si = s.sum[i];
    double* row = out.gram.data() + i * d;
    for (int64_t j = 0; j < d; ++j) row[j] += di * s.sum[j] + si * delta[j] + n * (di * delta[j]);  // symmetric
  }
  for (int64_t i = 0; i < d; ++i) out.sum[i] = s.sum[i] + n * delta[i];
  out.shift.assign(new_shift, new_shift + d);
  return out;
}

void add_state_into(GramState& into, const GramState& other) {
  if (into.dim != other.dim)
    GF_THROW(ValueError, "[GramAccumulator.merge] dim mismatch: expected ", into.dim, ", got ", other.dim);
  if (other.count == 0) return;
  if (into.count == 0) {
    into = other;
    return;
  }
  const GramState o = reshift_state(other, into.shift.data());
  const int64_t d = into.dim;
  for (int64_t i = 0; i < d; ++i) into.sum[i] += o.sum[i];
  for (int64_t i = 0; i < d * d; ++i) into.gram[i] += o.gram[i];
  into.count += o.count;
  for (int64_t i = 0; i < d; ++i)
    if (!(into.gram[i * d + i] < kSquaresLimit))
      GF_THROW(ValueError, "[GramAccumulator.merge] the merged squares of column ", i,
               " overflow float64 (the two accumulators' rows lie ~1e154 or more apart): expected merged centred ",
               "squares below ", kSquaresLimit, "; rescale the input; nothing was merged");
}

void covariance_from_state(const GramState& s, int64_t ddof, double* out) {
  const int64_t d = s.dim;
  if (s.count - ddof <= 0)
    GF_THROW(ValueError, "[GramAccumulator.covariance] needs more rows than ddof: count is ", s.count,
             ", ddof is ", ddof);
  const double n = static_cast<double>(s.count);
  const double scale = 1.0 / static_cast<double>(s.count - ddof);
  // (Σyyᵀ − (Σy)(Σy)ᵀ/n) / (n − ddof), written so that the result is exactly symmetric.
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = i; j < d; ++j) {
      const double v = covariance_entry(s.gram[i * d + j], s.sum[i], s.sum[j], n, scale);
      out[i * d + j] = v;
      out[j * d + i] = v;
    }
}

std::vector<double> raw_gram_from_state(GramState&& s) {
  const int64_t d = s.dim;
  const double n = static_cast<double>(s.count);
  std::vector<double> g = std::move(s.gram);
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) {
      const double si = s.shift[i], sj = s.shift[j];
      g[i * d + j] = ((g[i * d + j] + si * s.sum[j]) + s.sum[i] * sj) + n * (si * sj);
    }
  return g;
}

}  // namespace geomfast
