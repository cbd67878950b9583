// Error reporting, per-device cuBLAS/cuSOLVER handles and cuda_backend_info().
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <sstream>

#include "cuda/cuda_utils.hpp"
#include "cuda/gram_kernels.cuh"
#include "geomfast/backend.hpp"

namespace geomfast::cuda {

const char* cusolver_status_string(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "cuSOLVER error";
  }
}

bool sync_launches() {
  static const bool on = [] {
    const char* v = std::getenv("GEOMFAST_CUDA_SYNC");
    return v != nullptr && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
  }();
  return on;
}

void throw_cuda_error(const char* what, const char* file, int line, const std::string& err) {
  // A failed runtime call also leaves its error as the thread's last error, which the next
  // launch check (cudaGetLastError) would report as that launch's: an out-of-memory here made the
  // next accumulator's first update fail. Clear it (a sticky error stays: every call reports it).
  (void)cudaGetLastError();
  throw RuntimeError(detail::concat("[cuda] ", what, " failed at ", file, ":", line, ": ", err));
}

namespace {
std::mutex g_registry_mutex;
std::map<int, std::unique_ptr<DeviceHandles>>& registry() {
  static auto* r = new std::map<int, std::unique_ptr<DeviceHandles>>();  // never destroyed:
  return *r;  // handles outlive every static destructor that might still use them
}
}  // namespace

DeviceHandles& device_handles(int device) {
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  auto& reg = registry();
  auto it = reg.find(device);
  if (it != reg.end()) return *it->second;
  DeviceGuard guard(device);
  auto h = std::make_unique<DeviceHandles>();
  cublasStatus_t bs = cublasCreate(&h->blas);
  if (bs != CUBLAS_STATUS_SUCCESS)
    GF_THROW(RuntimeError, "[cuda] cannot create a cuBLAS handle on cuda:", device, ": ",
             cublasGetStatusString(bs));
  cusolverStatus_t ss = cusolverDnCreate(&h->solver);
  if (ss != CUSOLVER_STATUS_SUCCESS) {
    cublasDestroy(h->blas);
    GF_THROW(RuntimeError, "[cuda] cannot create a cuSOLVER handle on cuda:", device, ": ",
             cusolver_status_string(ss));
  }
  try {
    GF_CUSOLVER_CHECK(cusolverDnCreateParams(&h->params));
    GF_CUDA_CHECK(cudaEventCreateWithFlags(&h->scratch.ready, cudaEventDisableTiming));
  } catch (...) {  // not registered: nothing else would destroy what was made
    if (h->params) cusolverDnDestroyParams(h->params);
    cusolverDnDestroy(h->solver);
    cublasDestroy(h->blas);
    throw;
  }
  DeviceHandles& ref = *h;
  reg.emplace(device, std::move(h));
  return ref;
}

HandleLease::HandleLease(int device, cudaStream_t stream)
    : h(device_handles(device)), lock(h.mutex) {
  GF_CUBLAS_CHECK(cublasSetStream(h.blas, stream));
  GF_CUSOLVER_CHECK(cusolverDnSetStream(h.solver, stream));
}

namespace {
// Per device: geomfast's pool (nullptr with pools_supported: the device's default pool, when a pool
// of our own could not be made), or no pools at all.
struct DevicePool {
  bool pools_supported = false;
  cudaMemPool_t pool = nullptr;
};
DevicePool& device_pool(int device) {
  static std::mutex mu;
  static auto* pools = new std::map<int, DevicePool>();  // never destroyed (outlives static destructors)
  std::lock_guard<std::mutex> lock(mu);
  auto it = pools->find(device);
  if (it != pools->end()) return it->second;
  DevicePool dp;
  int supported = 0;
  if (cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) {
    (void)cudaGetLastError();
    supported = 0;
  }
  dp.pools_supported = supported != 0;
  if (dp.pools_supported) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t pool = nullptr;
    if (cudaMemPoolCreate(&pool, &props) == cudaSuccess) {
      const char* v = std::getenv("GEOMFAST_CUDA_POOL_KEEP_MB");
      const long long mb = v && *v ? std::atoll(v) : 512;
      std::uint64_t keep = static_cast<std::uint64_t>(std::max<long long>(mb, 0)) << 20;
      if (cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) != cudaSuccess)
        (void)cudaGetLastError();  // the pool still works, releasing at each sync
      dp.pool = pool;
    } else {
      (void)cudaGetLastError();
    }
  }
  return pools->emplace(device, dp).first->second;
}
}  // namespace

void* stream_alloc(std::size_t bytes, cudaStream_t st, bool& pooled) {
  int device = 0;
  GF_CUDA_CHECK(cudaGetDevice(&device));
  const DevicePool& dp = device_pool(device);
  void* p = nullptr;
  pooled = dp.pools_supported;
  if (dp.pool)
    GF_CUDA_CHECK(cudaMallocFromPoolAsync(&p, bytes, dp.pool, st));
  else if (dp.pools_supported)
    GF_CUDA_CHECK(cudaMallocAsync(&p, bytes, st));
  else
    GF_CUDA_CHECK(cudaMalloc(&p, bytes));
  return p;
}

void stream_free(void* p, cudaStream_t st, bool pooled) noexcept {
  if (p == nullptr) return;
  ignore_error(pooled ? cudaFreeAsync(p, st) : cudaFree(p));
}

int pointer_device(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state of this query
    return -1;
  }
  if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) return attr.device;
  return -1;
}

}  // namespace geomfast::cuda

namespace geomfast {

// Never throws: without a driver or a device, it says why in `reason`.
BackendInfo cuda_backend_info() {
  BackendInfo info;
  info.built = true;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    info.reason = cudaGetErrorString(err);
    return info;
  }
  if (count < 1) {
    info.reason = "no CUDA-capable device is detected";
    return info;
  }
  info.device_count = count;
  std::ostringstream os;
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  os << "CUDA runtime " << rt / 1000 << "." << (rt % 1000) / 10 << ", driver " << drv / 1000 << "."
     << (drv % 1000) / 10;
  for (int d = 0; d < count; ++d) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, d) == cudaSuccess) {
      // GEOMFAST_CUDA_GRAM_KERNEL values this device runs (wg: 9.0 only; whether its sm_90a image
      // loads is checked when it is asked for, so that listing creates no context on device d)
      const bool wg = cuda::wg_gram_unavailable(d, false).empty();
      os << "; cuda:" << d << " " << prop.name << " (sm_" << prop.major << prop.minor << ", "
         << (prop.totalGlobalMem >> 20) << " MiB, fast 16-bit kernels cublas, tc" << (wg ? ", wg" : "") << ")";
    }
  }
  try {
    cuda::DeviceHandles& h = cuda::device_handles(0);
    int blas_v = 0, solver_v = 0;
    {
      std::lock_guard<std::mutex> lock(h.mutex);
      cublasGetVersion(h.blas, &blas_v);
    }
    cusolverGetVersion(&solver_v);
    os << "; cuBLAS " << blas_v << "; cuSOLVER " << solver_v;
  } catch (const std::exception& e) {
    info.reason = e.what();
    info.details = os.str();
    return info;
  }
  info.usable = true;
  info.details = os.str();
  return info;
}

}  // namespace geomfast
