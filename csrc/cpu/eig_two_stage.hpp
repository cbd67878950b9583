// All eigenvalues of a dense symmetric matrix through a band (see eig_two_stage.cpp).
#pragma once
#include <vector>

namespace geomfast::cpu {
// Eigenvalues (descending) of the n × n column-major symmetric matrix whose lower triangle `a`
// holds; `a` is destroyed.
std::vector<double> two_stage_values(double* a, int n);
// The band's half-width used for an n × n matrix.
int two_stage_bandwidth(int n);
}  // namespace geomfast::cpu
