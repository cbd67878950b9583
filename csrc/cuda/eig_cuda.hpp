// Pieces of the CUDA eigensolver shared with the batched spectra (gram_cuda.cu).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "cuda/cuda_utils.hpp"
#include "geomfast/eig.hpp"

namespace geomfast::cuda {

// Queues cusolverDnXsyevd (values only, upper triangle, in type t: CUDA_R_64F or CUDA_R_32F) of the
// symmetric n x n col-major matrix `w` (overwritten) on `st`, the lease's stream: ascending values
// into vals [n] and the solver's info into *info, both on the device. No host synchronisation;
// `host_work` must outlive the stream's execution of the call.
void syevd_enqueue(HandleLease& lease, cudaDataType_t t, void* w, int64_t n, void* vals, int* info,
                   std::vector<char>& host_work, cudaStream_t st);

// Problem i of a batch of syevd solves, from its ascending values vals [n] (on the host) and info:
// the values descending, or, when the solve failed (info != 0 or a non-finite value), alone()'s
// result with a first warning "<func>: batched cuSOLVER syevd failed for <what> i (...)".
EigResult batched_result(const double* vals, int64_t n, int info, const char* func, const char* what, size_t i,
                         const std::function<EigResult()>& alone);

}  // namespace geomfast::cuda
