// Shared helpers of the CUDA backend: checked calls, a device guard, owning device buffers and
// the per-device cuBLAS/cuSOLVER handles. Every CUDA, cuBLAS and cuSOLVER call goes through one of
// the GF_CUDA_CHECK / GF_CUBLAS_CHECK / GF_CUSOLVER_CHECK macros, which throw
// geomfast::RuntimeError("file:line: call: error string"); every kernel launch is followed by
// GF_CUDA_CHECK_LAUNCH(stream). GEOMFAST_CUDA_SYNC=1 makes each launch synchronous (debugging:
// the error is then reported at the launch that caused it).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>

#include "geomfast/errors.hpp"
#include "geomfast/tensor.hpp"

namespace geomfast::cuda {

const char* cusolver_status_string(cusolverStatus_t s);
bool sync_launches();  // GEOMFAST_CUDA_SYNC=1, read once

[[noreturn]] void throw_cuda_error(const char* what, const char* file, int line, const std::string& err);

}  // namespace geomfast::cuda

#define GF_CUDA_CHECK(call)                                                              \
  do {                                                                                   \
    cudaError_t gf_err_ = (call);                                                        \
    if (gf_err_ != cudaSuccess)                                                          \
      ::geomfast::cuda::throw_cuda_error(#call, __FILE__, __LINE__,                      \
                                         cudaGetErrorString(gf_err_));                   \
  } while (0)

#define GF_CUBLAS_CHECK(call)                                                            \
  do {                                                                                   \
    cublasStatus_t gf_st_ = (call);                                                      \
    if (gf_st_ != CUBLAS_STATUS_SUCCESS)                                                 \
      ::geomfast::cuda::throw_cuda_error(#call, __FILE__, __LINE__,                      \
                                         cublasGetStatusString(gf_st_));                 \
  } while (0)

#define GF_CUSOLVER_CHECK(call)                                                          \
  do {                                                                                   \
    cusolverStatus_t gf_st_ = (call);                                                    \
    if (gf_st_ != CUSOLVER_STATUS_SUCCESS)                                               \
      ::geomfast::cuda::throw_cuda_error(#call, __FILE__, __LINE__,                      \
                                         ::geomfast::cuda::cusolver_status_string(gf_st_)); \
  } while (0)

// After every kernel launch: the launch error, and with GEOMFAST_CUDA_SYNC=1 the execution error.
#define GF_CUDA_CHECK_LAUNCH(stream)                                                     \
  do {                                                                                   \
    GF_CUDA_CHECK(cudaGetLastError());                                                   \
    if (::geomfast::cuda::sync_launches()) GF_CUDA_CHECK(cudaStreamSynchronize(stream)); \
  } while (0)

namespace geomfast::cuda {

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Whether runtime device `device` has an active primary context (the driver's
// cuDevicePrimaryCtxGetState, reached through the runtime: no libcuda link). True when unknown.
inline bool has_primary_context(int device) {
  using GetFn = int (*)(int*, int);                      // cuDeviceGet(CUdevice*, int ordinal)
  using StateFn = int (*)(int, unsigned int*, int*);     // cuDevicePrimaryCtxGetState(CUdevice, ...)
  static const std::pair<GetFn, StateFn> fns = [] {
    auto entry = [](const char* name) -> void* {
      void* p = nullptr;
      cudaDriverEntryPointQueryResult q{};
      if (cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
          q != cudaDriverEntryPointSuccess) {
        (void)cudaGetLastError();
        return nullptr;
      }
      return p;
    };
    return std::pair<GetFn, StateFn>(reinterpret_cast<GetFn>(entry("cuDeviceGet")),
                                     reinterpret_cast<StateFn>(entry("cuDevicePrimaryCtxGetState")));
  }();
  if (!fns.first || !fns.second) return true;
  int dev = 0, active = 1;
  unsigned int flags = 0;
  if (fns.first(&dev, device) != 0 || fns.second(dev, &flags, &active) != 0) return true;
  return active != 0;
}

// Makes `device` current for the scope, restoring the caller's device after, unless that device
// has no context yet: since CUDA 12 cudaSetDevice creates one (hundreds of MB), so a thread
// that never touched device 0 and works on cuda:1 would get a context on GPU 0 (torch's guards
// skip the restore in that case too).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    GF_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) GF_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_ && has_primary_context(prev_)) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

// Owning device allocation (cudaMalloc; grow-only use in the backends, so no allocation happens
// in the steady state of a stream of updates).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) { resize(n); }
  ~DeviceBuffer() { free(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_) { o.ptr_ = nullptr; o.n_ = 0; }

  // Grows to at least n elements (contents are not kept).
  void reserve(std::size_t n) {
    if (n > n_) resize(n);
  }
  void resize(std::size_t n) {
    free();
    if (n > 0) GF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), n * sizeof(T)));
    n_ = n;
  }
  void free() {
    if (ptr_) cudaFree(ptr_);  // never throws from a destructor
    ptr_ = nullptr;
    n_ = 0;
  }
  T* get() const { return ptr_; }
  std::size_t size() const { return n_; }

 private:
  T* ptr_ = nullptr;
  std::size_t n_ = 0;
};

// Stream-ordered scratch allocation (cudaMallocAsync: no device synchronisation on free).
class AsyncBuffer {
 public:
  AsyncBuffer(size_t bytes, cudaStream_t st) : st_(st) {
    if (bytes > 0) GF_CUDA_CHECK(cudaMallocAsync(&p_, bytes, st));
  }
  ~AsyncBuffer() {
    if (p_) cudaFreeAsync(p_, st_);
  }
  AsyncBuffer(const AsyncBuffer&) = delete;
  AsyncBuffer& operator=(const AsyncBuffer&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(p_); }

 private:
  void* p_ = nullptr;
  cudaStream_t st_;
};

// Page-locked host buffer (for the small device-to-host copies that must be read right away).
template <typename T>
class PinnedBuffer {
 public:
  explicit PinnedBuffer(std::size_t n) {
    GF_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&ptr_), n * sizeof(T)));
  }
  ~PinnedBuffer() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  T* get() const { return ptr_; }
  T& operator[](std::size_t i) const { return ptr_[i]; }

 private:
  T* ptr_ = nullptr;
};

// One cuBLAS and one cuSOLVER handle per device, created on first use and kept for the life of
// the process. Handles are not thread-safe: hold `mutex` while using them (the bindings release
// the GIL, so two Python threads may update two accumulators at once). The stream is set by the
// user of the handle for each call sequence (the caller's stream).
struct DeviceHandles {
  std::mutex mutex;
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  cusolverDnParams_t params = nullptr;
};
DeviceHandles& device_handles(int device);  // throws RuntimeError if they cannot be created

// Locks the device's handles and binds them to `stream` for the scope.
class HandleLease {
 public:
  HandleLease(int device, cudaStream_t stream);
  DeviceHandles& h;
  std::unique_lock<std::mutex> lock;
};

// The device a CUDA pointer lives on, or -1 when it is not device memory known to CUDA.
int pointer_device(const void* p);

}  // namespace geomfast::cuda
