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

// For a call whose failure is ignored (destructors, clean-up on an error path): a failed runtime
// call also leaves its error as the thread's last error, which the next launch check
// (cudaGetLastError) would report as that launch's own; so a failure here is cleared. (A sticky
// error stays: every later call reports it.)
inline void ignore_error(cudaError_t e) noexcept {
  if (e != cudaSuccess) (void)cudaGetLastError();
}

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

// Whether a view's data start at its elements' natural alignment, which every kernel's loads of it
// need: the strides count elements, so then every element is aligned. Otherwise each load is a
// misaligned address (cudaErrorMisalignedAddress, sticky: the context is lost for the process).
// torch views always are (storage offsets count elements); a cupy array made at a byte offset
// (cupy.ndarray(shape, dtype, memptr=m + 1)) need not be.
inline bool elements_aligned(const MatrixView& x) {
  return reinterpret_cast<std::uintptr_t>(x.data) % dtype_size(x.dtype) == 0;
}

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
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_ && has_primary_context(prev_))
      ignore_error(cudaSetDevice(prev_));
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

// Stream-ordered device memory on the current device (cuda_context.cu). It comes from geomfast's
// own memory pool there, which keeps up to GEOMFAST_CUDA_POOL_KEEP_MB MiB (default 512) between
// uses: the default pool hands all freed memory back to the driver at every synchronisation, so
// scratch allocated per call or per solver iteration would be mapped anew each time. On a device
// without memory pools (some virtualised GPUs) it is plain cudaMalloc / cudaFree, which synchronise.
// `pooled` (out of stream_alloc) says which, for stream_free. Freeing on `st` is safe when all
// work using the memory is ordered before what `st` runs next.
void* stream_alloc(std::size_t bytes, cudaStream_t st, bool& pooled);
void stream_free(void* p, cudaStream_t st, bool pooled) noexcept;

// Owning device allocation, grow-only in the backends (no allocation in the steady state of a
// stream of updates). Growth is stream-ordered on the stream given, so an update that needs a larger
// buffer does not synchronise the device; free() without a stream (destructors) needs the memory
// to be idle.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(std::size_t n, cudaStream_t st) { resize(n, st); }
  ~DeviceBuffer() { free(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Grows to at least n elements (contents are not kept).
  void reserve(std::size_t n, cudaStream_t st) {
    if (n > n_) resize(n, st);
  }
  void resize(std::size_t n, cudaStream_t st) {
    free(st);
    if (n > 0) ptr_ = static_cast<T*>(stream_alloc(n * sizeof(T), st, pooled_));
    n_ = n;
  }
  void free(cudaStream_t st = nullptr) noexcept {  // never throws from a destructor
    if (ptr_) stream_free(ptr_, st, pooled_);
    ptr_ = nullptr;
    n_ = 0;
  }
  T* get() const { return ptr_; }
  std::size_t size() const { return n_; }

 private:
  T* ptr_ = nullptr;
  std::size_t n_ = 0;
  bool pooled_ = false;
};

// Stream-ordered scratch allocation for a scope (freed on the same stream: no device sync).
class AsyncBuffer {
 public:
  AsyncBuffer(size_t bytes, cudaStream_t st) : st_(st) {
    if (bytes > 0) p_ = stream_alloc(bytes, st, pooled_);
  }
  ~AsyncBuffer() {
    if (p_) stream_free(p_, st_, pooled_);
  }
  AsyncBuffer(const AsyncBuffer&) = delete;
  AsyncBuffer& operator=(const AsyncBuffer&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(p_); }

 private:
  void* p_ = nullptr;
  cudaStream_t st_;
  bool pooled_ = false;
};

// Records `event` on `stream` when the scope ends, however it ends (the next user waits for all the
// scope queued there).
struct RecordOnExit {
  cudaEvent_t event;
  cudaStream_t stream;
  ~RecordOnExit() { ignore_error(cudaEventRecord(event, stream)); }
};

// Page-locked host buffer (for the small device-to-host copies that must be read right away).
template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;  // allocate() later (e.g. once the right device is current)
  explicit PinnedBuffer(std::size_t n) { allocate(n); }
  void allocate(std::size_t n) {
    GF_ASSERT(ptr_ == nullptr, "PinnedBuffer allocated twice");
    GF_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&ptr_), n * sizeof(T)));
  }
  ~PinnedBuffer() {
    if (ptr_) ignore_error(cudaFreeHost(ptr_));
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
// The work buffers of the Gram products (centred or split rows, float32 product blocks, the tc/wg
// kernels' float64 cross terms), one set per device shared by all its accumulators: only the state
// is per accumulator. At d = 4096 these buffers reach ~335 MB (the state is 134 MB), and a trace of
// every layer holds dozens of accumulators. Used only while the handles' mutex is held, and on the
// GPU only after `ready` (recorded by the previous user on its stream, waited for on the next one's:
// updates of accumulators on different streams run their products one after another).
struct GramScratch {
  DeviceBuffer<char> block;        // centred rows (f64 / f32) or the hi + lo 16-bit split
  DeviceBuffer<float> acc, hl, ll;  // [d, d], [d, nj], [nj, nj] float32 products
  DeviceBuffer<double> hl64, ll64;  // [d, nj], [nj, nj] cross terms of the tc / wg kernels
  cudaEvent_t ready = nullptr;
  int users = 0;  // live accumulators of the device; at 0 the buffers are freed
};

struct DeviceHandles {
  std::mutex mutex;
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  cusolverDnParams_t params = nullptr;
  GramScratch scratch;  // guarded by mutex
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
