// Stands in for the CUDA backend when it is not built, so every build exposes the same API.
#include "geomfast/backend.hpp"
#include "geomfast/errors.hpp"

#ifndef GEOMFAST_CUDA_WHY
#define GEOMFAST_CUDA_WHY "not built"
#endif

namespace geomfast {

BackendInfo cuda_backend_info() {
  BackendInfo info;
  info.built = false;
  info.usable = false;
  info.reason = std::string("the CUDA backend was not built: ") + GEOMFAST_CUDA_WHY;
  return info;
}

std::unique_ptr<GramBackend> make_cuda_gram(int64_t, int, Precision) {
  GF_THROW(RuntimeError, "[GramAccumulator] has no CUDA implementation in this build (",
           GEOMFAST_CUDA_WHY, "); rebuild with GEOMFAST_CUDA=ON");
}

std::vector<EigResult> spectra_cuda(const std::vector<const GramBackend*>&, int64_t, const EigOptions&) {
  GF_THROW(RuntimeError, "[spectra] has no CUDA implementation in this build (", GEOMFAST_CUDA_WHY,
           "); rebuild with GEOMFAST_CUDA=ON");
}

std::vector<EigResult> eigvalsh_cuda_batch(const std::vector<MatrixView>&, const EigOptions&) {
  GF_THROW(RuntimeError, "[eigvalsh] has no CUDA implementation in this build (", GEOMFAST_CUDA_WHY,
           "); rebuild with GEOMFAST_CUDA=ON");
}

EigResult eigvalsh_cuda(const MatrixView&, const EigOptions&) {
  GF_THROW(RuntimeError, "[eigvalsh] has no CUDA implementation in this build (", GEOMFAST_CUDA_WHY,
           "); rebuild with GEOMFAST_CUDA=ON");
}

}  // namespace geomfast
