// Host stand-ins for the CUDA runtime, cuBLAS and cuSOLVER calls of the CUDA backend's Gram code
// (csrc/cuda/gram_cuda.cu, cuda_context.cu), so that code runs on a CPU under tests/cuda_emulation
// (GEOMFAST_CUDA_EMULATE_HOST). "Device" memory is host memory; every call completes at once, so
// stream order is program order; one device, cuda:0.
//
// (fake_cuda_solver.cpp does the same for cuSOLVER and the level-3 products of the eigensolvers.)
// The cuBLAS products are written from cuBLAS's documented semantics (column-major operands,
// op(A) as given by trans, only the `uplo` triangle of a syrk result referenced and updated), not
// from how the backend calls them, so that a wrong argument in the backend shows up as a wrong
// result. They sum in double and round once: the emulation checks the code, not the hardware.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <stdexcept>
#include <utility>
#include <vector>

#include "geomfast/errors.hpp"

namespace {

std::mutex g_mu;
std::set<const void*> g_device;  // live "device" allocations (base pointers)
std::set<const void*> g_pooled;  // those of them from a memory pool (freed with cudaFreeAsync only)
thread_local int g_current = 0;
int g_pool_tag = 0;              // what a cudaMemPool_t points to

// GF_FAKE_NO_MEMPOOLS=1: a device without memory pools (cudaDevAttrMemoryPoolsSupported = 0), whose
// stream-ordered calls fail as they do on one.
bool no_mempools() {
  const char* v = std::getenv("GF_FAKE_NO_MEMPOOLS");
  return v && *v && std::strcmp(v, "0") != 0;
}

// The thread's last error, as the runtime keeps it: set by every failing call, returned and reset
// by cudaGetLastError (so an error the backend ignores without clearing it surfaces at its next
// launch check, as on a GPU).
thread_local cudaError_t g_last_error = cudaSuccess;
cudaError_t fail(cudaError_t e) {
  g_last_error = e;
  return e;
}

// GF_FAKE_ALLOC_LIMIT=N: device and pinned allocations of more than N bytes fail (out of memory).
size_t alloc_limit() {
  const char* v = std::getenv("GF_FAKE_ALLOC_LIMIT");
  return v && *v ? std::strtoull(v, nullptr, 10) : SIZE_MAX;
}

void* alloc(size_t bytes) {
  if (bytes > alloc_limit()) return nullptr;
  const size_t size = std::max<size_t>((bytes + 255) / 256 * 256, 256);  // aligned_alloc: a multiple of 256
  void* p = std::aligned_alloc(256, size);
  if (p) std::memset(p, 0xFF, size);  // NaN bytes: memory read before it is written shows
  return p;
}

template <typename T>
T* fake_handle() {
  return reinterpret_cast<T*>(new char[16]);
}

double load(const void* p, cudaDataType_t t, size_t i) {
  switch (t) {
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(p)[i]);
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    case CUDA_R_64F: return static_cast<const double*>(p)[i];
    default: throw std::runtime_error("fake cuBLAS: unsupported data type");
  }
}

// C (n x n, col-major, the uplo triangle) = alpha op(A) op(A)ᵀ + beta C; trans N: A is n x k, T: k x n.
// Products are rounded to T (float32 for SSYRK, as the device forms them; exact below that, and
// summed in double, which is kinder than the device's float32 sums).
template <typename T>
cublasStatus_t syrk(cublasFillMode_t uplo, cublasOperation_t trans, int n, int k, const T* alpha, const T* A,
                           int lda, const T* beta, T* C, int ldc) {
  if (n < 0 || k < 0 || ldc < std::max(1, n) || lda < std::max(1, trans == CUBLAS_OP_N ? n : k))
    return CUBLAS_STATUS_INVALID_VALUE;
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < n; ++i) {
      if (uplo == CUBLAS_FILL_MODE_UPPER ? i > j : i < j) continue;
      double s = 0.0;
      for (int p = 0; p < k; ++p) {
        const double a = trans == CUBLAS_OP_N ? A[i + static_cast<size_t>(p) * lda] : A[p + static_cast<size_t>(i) * lda];
        const double b = trans == CUBLAS_OP_N ? A[j + static_cast<size_t>(p) * lda] : A[p + static_cast<size_t>(j) * lda];
        s += static_cast<double>(static_cast<T>(a * b));  // each product in T, as the device forms it
      }
      T& c = C[i + static_cast<size_t>(j) * ldc];
      c = static_cast<T>(*alpha * s + (*beta == T(0) ? 0.0 : *beta * static_cast<double>(c)));
    }
  return CUBLAS_STATUS_SUCCESS;
}
[[noreturn]] void bad_free(const char* call, const void* p) {
  std::fprintf(stderr, "fake CUDA runtime: %s(%p) of memory it did not allocate that way\n", call, p);
  std::abort();
}
}  // namespace

extern "C" {

// ------------------------------------------------------------------------- runtime
cudaError_t CUDARTAPI cudaMalloc(void** p, size_t bytes) {
  *p = alloc(bytes);
  std::lock_guard<std::mutex> lk(g_mu);
  g_device.insert(*p);
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
// Strict about pairing (the backend records how each buffer was allocated, and ignores what its
// frees return): cudaFree of pool memory, cudaFreeAsync of cudaMalloc memory, or a free of
// memory not allocated, aborts the emulation.
cudaError_t CUDARTAPI cudaFree(void* p) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_pooled.count(p) || !g_device.count(p)) bad_free("cudaFree", p);
  g_device.erase(p);
  std::free(p);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaMallocFromPoolAsync(void** p, size_t bytes, cudaMemPool_t pool, cudaStream_t) {
  if (no_mempools() || pool != reinterpret_cast<cudaMemPool_t>(&g_pool_tag)) return fail(cudaErrorNotSupported);
  *p = alloc(bytes);
  if (!*p) return fail(cudaErrorMemoryAllocation);
  std::lock_guard<std::mutex> lk(g_mu);
  g_device.insert(*p);
  g_pooled.insert(*p);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaMallocAsync(void** p, size_t bytes, cudaStream_t st) {
  return cudaMallocFromPoolAsync(p, bytes, reinterpret_cast<cudaMemPool_t>(&g_pool_tag), st);
}
cudaError_t CUDARTAPI cudaFreeAsync(void* p, cudaStream_t) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::mutex> lk(g_mu);
  if (!g_pooled.count(p)) bad_free("cudaFreeAsync", p);
  g_pooled.erase(p);
  g_device.erase(p);
  std::free(p);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaDeviceGetAttribute(int* v, enum cudaDeviceAttr attr, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  if (attr != cudaDevAttrMemoryPoolsSupported) return fail(cudaErrorNotSupported);  // (nothing else is asked)
  *v = no_mempools() ? 0 : 1;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaMemPoolCreate(cudaMemPool_t* pool, const struct cudaMemPoolProps* props) {
  if (no_mempools()) return fail(cudaErrorNotSupported);
  if (props->location.type != cudaMemLocationTypeDevice || props->location.id != 0) return fail(cudaErrorInvalidValue);
  *pool = reinterpret_cast<cudaMemPool_t>(&g_pool_tag);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaMemPoolSetAttribute(cudaMemPool_t pool, enum cudaMemPoolAttr, void*) {
  return pool == reinterpret_cast<cudaMemPool_t>(&g_pool_tag) ? cudaSuccess : fail(cudaErrorInvalidValue);
}
cudaError_t CUDARTAPI cudaMallocHost(void** p, size_t bytes) {
  *p = alloc(bytes);
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t CUDARTAPI cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaMemcpyAsync(void* dst, const void* src, size_t n, enum cudaMemcpyKind, cudaStream_t) {
  if (n) std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  if (n) std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  *s = fake_handle<CUstream_st>();
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaStreamDestroy(cudaStream_t s) {
  delete[] reinterpret_cast<char*>(s);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t CUDARTAPI cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }
cudaError_t CUDARTAPI cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) {
  *e = fake_handle<CUevent_st>();
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t CUDARTAPI cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t CUDARTAPI cudaEventDestroy(cudaEvent_t e) {
  delete[] reinterpret_cast<char*>(e);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaGetDevice(int* d) {
  *d = g_current;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaSetDevice(int d) {
  if (d != 0) return fail(cudaErrorInvalidDevice);
  g_current = d;
  return cudaSuccess;
}
// No driver here: no driver entry points (DeviceGuard then always restores the caller's device).
cudaError_t CUDARTAPI cudaGetDriverEntryPointByVersion(const char*, void** fn, unsigned int, unsigned long long,
                                                       cudaDriverEntryPointQueryResult* status) {
  *fn = nullptr;
  if (status) *status = cudaDriverEntryPointSymbolNotFound;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaGetDeviceProperties(struct cudaDeviceProp* prop, int) {
  std::memset(prop, 0, sizeof(*prop));
  std::strcpy(prop->name, "CPU emulation");
  prop->major = 9;
  prop->minor = 0;
  prop->totalGlobalMem = size_t(1) << 34;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaFuncSetAttribute(const void*, enum cudaFuncAttribute, int) { return cudaSuccess; }
cudaError_t CUDARTAPI cudaFuncGetAttributes(struct cudaFuncAttributes* attr, const void*) {
  std::memset(attr, 0, sizeof(*attr));
  attr->binaryVersion = 90;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaGetLastError(void) { return std::exchange(g_last_error, cudaSuccess); }
const char* CUDARTAPI cudaGetErrorString(cudaError_t) { return "error (CPU emulation)"; }
cudaError_t CUDARTAPI cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaPointerGetAttributes(struct cudaPointerAttributes* a, const void* p) {
  std::memset(a, 0, sizeof(*a));
  std::lock_guard<std::mutex> lk(g_mu);
  a->type = g_device.count(p) ? cudaMemoryTypeDevice : cudaMemoryTypeUnregistered;
  a->device = 0;
  return cudaSuccess;
}

// ------------------------------------------------------------------------- cuBLAS
cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t* h) {
  *h = fake_handle<cublasContext>();
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t h) {
  delete[] reinterpret_cast<char*>(h);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t CUBLASWINAPI cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t CUBLASWINAPI cublasGetVersion_v2(cublasHandle_t, int* v) {
  *v = 130000;
  return CUBLAS_STATUS_SUCCESS;
}
const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t) { return "cuBLAS error (CPU emulation)"; }

cublasStatus_t CUBLASWINAPI cublasDsyrk_v2(cublasHandle_t, cublasFillMode_t uplo, cublasOperation_t trans, int n, int k,
                                           const double* alpha, const double* A, int lda, const double* beta, double* C,
                                           int ldc) {
  return syrk(uplo, trans, n, k, alpha, A, lda, beta, C, ldc);
}
cublasStatus_t CUBLASWINAPI cublasSsyrk_v2(cublasHandle_t, cublasFillMode_t uplo, cublasOperation_t trans, int n, int k,
                                           const float* alpha, const float* A, int lda, const float* beta, float* C,
                                           int ldc) {
  return syrk(uplo, trans, n, k, alpha, A, lda, beta, C, ldc);
}

// C (m x n, col-major, float32) = alpha op(A) op(B) + beta C; op(A) m x k, op(B) k x n.
cublasStatus_t CUBLASWINAPI cublasGemmEx(cublasHandle_t, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                                         int k, const void* alpha, const void* A, cudaDataType Atype, int lda,
                                         const void* B, cudaDataType Btype, int ldb, const void* beta, void* C,
                                         cudaDataType Ctype, int ldc, cublasComputeType_t computeType, cublasGemmAlgo_t) {
  if (Ctype != CUDA_R_32F || computeType != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  // GF_FAKE_GEMM_FAIL_AFTER=N: the calls after the first N fail, as a device fault would (counted
  // while the variable is set)
  static int calls = 0;
  if (const char* v = std::getenv("GF_FAKE_GEMM_FAIL_AFTER")) {
    if (calls++ >= std::atoi(v)) return CUBLAS_STATUS_EXECUTION_FAILED;
  } else {
    calls = 0;
  }
  if (m < 0 || n < 0 || k < 0 || ldc < std::max(1, m) || lda < std::max(1, transa == CUBLAS_OP_N ? m : k) ||
      ldb < std::max(1, transb == CUBLAS_OP_N ? k : n))
    return CUBLAS_STATUS_INVALID_VALUE;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  float* c = static_cast<float*>(C);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double s = 0.0;
      for (int p = 0; p < k; ++p) {
        const size_t ia = transa == CUBLAS_OP_N ? i + static_cast<size_t>(p) * lda : p + static_cast<size_t>(i) * lda;
        const size_t ib = transb == CUBLAS_OP_N ? p + static_cast<size_t>(j) * ldb : j + static_cast<size_t>(p) * ldb;
        // a product of two 16-bit values is exact in float32 unless it falls below float32's
        // normal range, where the device's float32 product loses bits, as it does here
        s += static_cast<double>(static_cast<float>(load(A, Atype, ia) * load(B, Btype, ib)));
      }
      float& cij = c[i + static_cast<size_t>(j) * ldc];
      cij = static_cast<float>(al * s + (be == 0.0f ? 0.0 : be * static_cast<double>(cij)));
    }
  return CUBLAS_STATUS_SUCCESS;
}

// ------------------------------------------------------------------------- cuSOLVER (handles only)
cusolverStatus_t CUSOLVERAPI cusolverDnCreate(cusolverDnHandle_t* h) {
  *h = fake_handle<cusolverDnContext>();
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t CUSOLVERAPI cusolverDnCreateParams(cusolverDnParams_t* p) {
  *p = fake_handle<cusolverDnParams>();
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t CUSOLVERAPI cusolverDnDestroy(cusolverDnHandle_t h) {
  delete[] reinterpret_cast<char*>(h);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t CUSOLVERAPI cusolverDnDestroyParams(cusolverDnParams_t p) {
  delete[] reinterpret_cast<char*>(p);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t CUSOLVERAPI cusolverDnSetStream(cusolverDnHandle_t, cudaStream_t) { return CUSOLVER_STATUS_SUCCESS; }
cusolverStatus_t CUSOLVERAPI cusolverGetVersion(int* v) {
  *v = 12000;
  return CUSOLVER_STATUS_SUCCESS;
}

}  // extern "C"
