// Pieces of the CUDA eigensolver shared with the batched spectra (gram_cuda.cu).
#pragma once
#include <cstdint>
#include <vector>

#include "cuda/cuda_utils.hpp"

namespace geomfast::cuda {

// Queues cusolverDnXsyevd (values only, upper triangle, in type t: CUDA_R_64F or CUDA_R_32F) of the
// symmetric n x n col-major matrix `w` (overwritten) on `st`, the lease's stream: ascending values
// into vals [n] and the solver's info into *info, both on the device. No host synchronisation;
// `host_work` must outlive the stream's execution of the call.
void syevd_enqueue(HandleLease& lease, cudaDataType_t t, void* w, int64_t n, void* vals, int* info,
                   std::vector<char>& host_work, cudaStream_t st);

}  // namespace geomfast::cuda
