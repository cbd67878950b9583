// Routes each call to the backend of its device.
#include <algorithm>
#include <utility>
#include <vector>

#include "geomfast/backend.hpp"
#include "geomfast/eig.hpp"
#include "geomfast/gram.hpp"
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

std::vector<EigResult> eigvalsh_many(const std::vector<MatrixView>& as, const EigOptions& opt) {
  if (as.empty()) return {};
  for (const MatrixView& a : as)
    if (a.device.type != as[0].device.type || a.device.index != as[0].device.index)
      GF_THROW(ValueError, "[eigvalsh] expected a batch on one device, got matrices on ", as[0].device.str(),
               " and ", a.device.str());
  if (as[0].device.type == DeviceType::kCUDA) return eigvalsh_cuda_batch(as, opt);
  return eigvalsh_cpu_batch(as, opt);
}

std::vector<EigResult> spectra(const std::vector<const GramBackend*>& accs, int64_t ddof, const EigOptions& opt,
                               const std::vector<bool>& uncentered) {
  if (!uncentered.empty() && uncentered.size() != accs.size())
    GF_THROW(ValueError, "[spectra] expected one uncentered flag per accumulator (", accs.size(), "), got ",
             uncentered.size());
  auto raw = [&](size_t i) { return !uncentered.empty() && uncentered[i]; };
  std::vector<EigResult> out(accs.size());
  // CUDA accumulators grouped by device (one batch each); results go back to their positions.
  // The others (and every uncentered one) are solved on the host, several at a time.
  std::vector<std::pair<int, std::vector<size_t>>> groups;
  std::vector<size_t> host;
  int64_t host_dim = 0;
  for (size_t i = 0; i < accs.size(); ++i) {
    GF_ASSERT(accs[i] != nullptr, "spectra: null accumulator");
    const Device dev = accs[i]->device();
    if (dev.type != DeviceType::kCUDA || raw(i)) {
      host.push_back(i);
      host_dim = std::max(host_dim, accs[i]->dim());
      continue;
    }
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == dev.index; });
    if (it == groups.end()) {
      groups.push_back({dev.index, {}});
      it = groups.end() - 1;
    }
    it->second.push_back(i);
  }
  std::vector<EigResult> solved = eigvalsh_cpu_many(
      host.size(),
      [&](size_t h) {
        const GramBackend* a = accs[host[h]];
        HostProblem p;
        p.n = a->dim();
        if (raw(host[h])) {
          p.matrix = raw_gram_from_state(a->state());
        } else {
          p.matrix.resize(static_cast<size_t>(p.n * p.n));
          a->covariance(ddof, p.matrix.data());  // what CpuGram::spectrum() solves
        }
        return p;
      },
      host_dim, opt);
  for (size_t h = 0; h < host.size(); ++h) out[host[h]] = std::move(solved[h]);
  for (const auto& [device, idx] : groups) {
    std::vector<const GramBackend*> batch;
    for (size_t i : idx) batch.push_back(accs[i]);
    std::vector<EigResult> r = spectra_cuda(batch, ddof, opt);
    for (size_t j = 0; j < idx.size(); ++j) out[idx[j]] = std::move(r[j]);
  }
  return out;
}

}  // namespace geomfast
