// Routes each call to the backend of its device.
#include "geomfast/backend.hpp"
#include "geomfast/errors.hpp"

namespace geomfast {

std::unique_ptr<GramBackend> make_gram_backend(int64_t dim, Device device, Precision precision) {
  if (dim < 1) GF_THROW(ValueError, "[GramAccumulator] dim must be >= 1, got ", dim);
  if (device.type == DeviceType::kCUDA) return make_cuda_gram(dim, device.index, precision);
  return make_cpu_gram(dim, precision);
}

EigResult eigvalsh(const MatrixView& a, const EigOptions& opt) {
  if (a.device.type == DeviceType::kCUDA) return eigvalsh_cuda(a, opt);
  return eigvalsh_cpu(a, opt);
}

}  // namespace geomfast
