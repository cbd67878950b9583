// What each backend offers. The CUDA functions are defined by csrc/cuda (real) or by
// csrc/cuda/stub.cpp (when CUDA is not built), so every build has the same API.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "geomfast/eig.hpp"
#include "geomfast/gram.hpp"

namespace geomfast {

struct BackendInfo {
  bool built = false;
  bool usable = false;
  std::string reason;   // why not usable (empty when usable)
  std::string details;  // versions, device names, BLAS library
  int device_count = 0;
};

BackendInfo cpu_backend_info();
BackendInfo cuda_backend_info();

// CUDA entry points (throw RuntimeError "… has no CUDA implementation: <reason>" in the stub).
std::unique_ptr<GramBackend> make_cuda_gram(int64_t dim, int device_index, Precision precision);
EigResult eigvalsh_cuda(const MatrixView& a, const EigOptions& opt);
// eigvalsh_many() of matrices all on one CUDA device (see eig.hpp).
std::vector<EigResult> eigvalsh_cuda_batch(const std::vector<MatrixView>& as, const EigOptions& opt);
// spectra() of CUDA accumulators, all on one device (`accs` are CudaGram backends).
std::vector<EigResult> spectra_cuda(const std::vector<const GramBackend*>& accs, int64_t ddof,
                                    const EigOptions& opt);

}  // namespace geomfast
