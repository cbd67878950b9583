// A host emulation of the few CUDA features the kernels of csrc/cuda/gram_tc.cu and
// csrc/cuda/gram_kernels.cu use, so that their own source (indexing, padding and row masking, the
// double-buffered slabs, the chain bookkeeping, the exact 16-bit split, the column statistics and
// commits) runs on a CPU in tests (tests/test_cuda_emulation.py). GEOMFAST_CUDA_EMULATE swaps
// the CUDA includes for this header and leaves out the launchers (<<<>>>).
//
// How: each CTA runs as std::threads (or, for kernels without barriers, sequentially); __syncthreads() is a std::barrier over them and
// __syncwarp() one over the 32 threads of the warp; __shared__ variables are function statics
// (one CTA runs at a time). WMMA fragments hold the whole 16 x 16 tile in every thread
// (num_elements = 256), so warp-collective loads, stores and products are done redundantly by
// each thread, and element-wise loops over x[0 .. num_elements) cover the whole tile, as the 32
// threads' shares do together on the GPU. Products are summed in double and rounded to float
// once per mma_sync: the emulation checks the kernel's logic, not the tensor cores' rounding.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

// The CUDA headers define these for host compilers (mostly as nothing); here they mean what the
// emulation needs.
#undef __global__
#undef __launch_bounds__
#undef __shared__
#undef __align__
#define __global__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

namespace gf_emu {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local Dim3 thread_idx, block_idx, block_dim, grid_dim;

struct Cta {
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
};
inline Cta* g_cta = nullptr;  // null while a barrier-free kernel runs sequentially
inline thread_local int warp_of = 0;
// What the end of an emulated GPU thread means to other emulated features (wgmma_emulation.hpp
// counts the async operations it left pending): the pooled host threads outlive each emulated
// thread, so these run after each one.
inline std::vector<void (*)()>& thread_exit_hooks() {
  static std::vector<void (*)()> hooks;
  return hooks;
}

// Host threads that run a CTA's threads at once, kept between CTAs and launches (a thread created
// and joined per emulated GPU thread made the emulation mostly thread start-up: minutes of system
// time per test run). run(n, body) calls body(t) for t < n, each on its own pool thread, all at the
// same time (so barriers between them work), and returns when every one has returned.
class CtaPool {
 public:
  static CtaPool& instance() {
    static CtaPool pool;
    return pool;
  }
  void run(unsigned n, const std::function<void(unsigned)>& body) {
    std::unique_lock<std::mutex> lk(mu_);
    while (workers_.size() < n) {
      const unsigned id = static_cast<unsigned>(workers_.size());
      workers_.emplace_back([this, id, seen = gen_] { loop(id, seen); });
    }
    body_ = &body;
    n_ = n;
    pending_ = n;
    ++gen_;
    cv_.notify_all();
    done_.wait(lk, [&] { return pending_ == 0; });
    body_ = nullptr;
  }
  ~CtaPool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  void loop(unsigned id, uint64_t seen) {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || gen_ != seen; });
      if (stop_) return;
      seen = gen_;
      if (id >= n_) continue;
      const std::function<void(unsigned)>* body = body_;
      lk.unlock();
      (*body)(id);
      lk.lock();
      if (--pending_ == 0) done_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(unsigned)>* body_ = nullptr;
  unsigned n_ = 0, pending_ = 0;
  uint64_t gen_ = 0;
  bool stop_ = false;
};

// Runs kernel() for every thread of every CTA of `grid` (CTAs one at a time). With `barriers`,
// each CTA's threads run as concurrent host threads (for kernels with __syncthreads/__syncwarp);
// without, one after another on this thread (element-wise kernels; a barrier there aborts).
inline void launch(Dim3 grid, Dim3 block, bool barriers, const std::function<void()>& kernel) {
  const unsigned threads = block.x * std::max(block.y, 1u);
  for (unsigned by = 0; by < std::max(grid.y, 1u); ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      auto set = [&](unsigned t) {
        thread_idx = Dim3{t % block.x, t / block.x, 0};
        block_idx = Dim3{bx, by, 0};
        block_dim = block;
        grid_dim = grid;
        warp_of = static_cast<int>(t / 32);
      };
      if (!barriers) {
        for (unsigned t = 0; t < threads; ++t) {
          set(t);
          kernel();
        }
        continue;
      }
      Cta cta;
      cta.all = std::make_unique<std::barrier<>>(threads);
      for (unsigned w = 0; w < (threads + 31) / 32; ++w) cta.warps.push_back(std::make_unique<std::barrier<>>(32));
      g_cta = &cta;
      CtaPool::instance().run(threads, [&](unsigned t) {
        set(t);
        kernel();
        for (auto* hook : thread_exit_hooks()) hook();
      });
      g_cta = nullptr;
    }
}
// The emulated `kernel<<<grid, block, shared_bytes, stream>>>(...)` of csrc/cuda/launch.cuh: runs at
// once (stream order is then program order, which is what the host code relies on).
// Dynamic shared memory (`extern __shared__`): one buffer, as CTAs run one at a time. Its bytes
// sit at "shared addresses" from kSharedWindow on, deliberately not 1024-aligned, so that kernels
// that align their stages themselves are checked doing so.
constexpr uint32_t kSharedWindow = 0x90;
inline std::vector<uint8_t> g_dyn_smem;
inline void set_dynamic_smem(size_t bytes) { g_dyn_smem.assign(bytes, 0xA5); }  // garbage, not zeros
inline uint8_t* dynamic_smem() { return g_dyn_smem.data(); }

template <typename Stream>
inline void launch_config(bool barriers, dim3 grid, dim3 block, size_t shared_bytes, Stream,
                          const std::function<void()>& kernel) {
  set_dynamic_smem(shared_bytes);
  launch(Dim3{grid.x, grid.y, grid.z}, Dim3{block.x, block.y, block.z}, barriers, kernel);
}
inline void launch(unsigned gx, unsigned gy, int threads, const std::function<void()>& kernel) {
  launch(Dim3{gx, gy, 1}, Dim3{static_cast<unsigned>(threads), 1, 1}, true, kernel);
}

// CUDA's alignment rules where the emulation sees the access (on the GPU a misaligned address is
// cudaErrorMisalignedAddress, sticky: the context is lost; on x86 it would just work, so the
// emulation checks): every load at its type's natural alignment (16 bytes for uint4 / float4),
// WMMA's load_matrix_sync / store_matrix_sync at 256-bit aligned pointers with ldm a multiple of
// 16 bytes (8 elements of 16-bit types, 4 of float), cp.async of 16 bytes at 16-byte aligned
// source and destination. A violation aborts with the address and what needed it.
inline void need_aligned(const void* p, size_t align, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % align != 0) {
    std::fprintf(stderr, "%s: address %p is not %zu-byte aligned (a misaligned address on a GPU)\n", what, p, align);
    std::abort();
  }
}

inline void need_cta(const char* what) {
  if (g_cta == nullptr) {
    std::fprintf(stderr, "%s in a kernel launched without barriers\n", what);
    std::abort();
  }
}

}  // namespace gf_emu

#define threadIdx (::gf_emu::thread_idx)
#define blockIdx (::gf_emu::block_idx)
#define blockDim (::gf_emu::block_dim)
#define gridDim (::gf_emu::grid_dim)
inline void __syncthreads() {
  ::gf_emu::need_cta("__syncthreads");
  ::gf_emu::g_cta->all->arrive_and_wait();
}
inline void __syncwarp() {
  ::gf_emu::need_cta("__syncwarp");
  ::gf_emu::g_cta->warps[::gf_emu::warp_of]->arrive_and_wait();
}
using std::isfinite;  // device code calls it unqualified
template <typename T>
inline T __ldg(const T* p) {
  ::gf_emu::need_aligned(p, alignof(T), "__ldg");
  return *p;
}
// Round-to-nearest float arithmetic, never contracted into an FMA (as the intrinsics guarantee).
inline float __fadd_rn(float a, float b) {
  volatile float r = a + b;
  return r;
}
inline float __fsub_rn(float a, float b) {
  volatile float r = a - b;
  return r;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  std::atomic_ref<unsigned long long> a(*p);
  unsigned long long cur = a.load();
  while (v < cur && !a.compare_exchange_weak(cur, v)) {
  }
  return cur;
}
inline long long __double_as_longlong(double v) {
  long long r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  std::atomic_ref<unsigned long long> a(*p);
  unsigned long long cur = a.load();
  while (v > cur && !a.compare_exchange_weak(cur, v)) {
  }
  return cur;
}

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

inline float to_f(float v) { return v; }
inline float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float to_f(__half v) { return __half2float(v); }

// Element (i, j) of the 16 x 16 tile at x[i * 16 + j], in every thread.
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int num_elements = 256;
  float x[256];
};

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  ::gf_emu::need_aligned(p, 32, "wmma::load_matrix_sync");
  if (ldm % (16 / sizeof(T)) != 0) {
    std::fprintf(stderr, "wmma::load_matrix_sync: ldm %u is not a multiple of %zu elements\n", ldm, 16 / sizeof(T));
    std::abort();
  }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j)
      f.x[i * 16 + j] = to_f(std::is_same_v<Layout, col_major> ? p[i + j * ldm] : p[i * ldm + j]);
}

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float v) {
  for (float& e : f.x) e = v;
}

// 0: each mma_sync sums exactly and rounds to nearest float once. W > 0: the public model of H100
// tensor-core accumulation (benchmarks/tensor_core_model.py): the accumulator and the 16 exact
// products are truncated to a W-bit window aligned to the largest, summed, and the sum is rounded
// toward zero to float. Set by a test before launching.
inline int g_mma_window = 0;

inline float round_toward_zero(double s) {
  float f = static_cast<float>(s);
  if (std::fabs(static_cast<double>(f)) > std::fabs(s)) f = std::nextafter(f, 0.0f);
  return f;
}

// One tensor-core step of one element: t[0] the float32 accumulator, t[1..16] the 16 exact
// products; the result under the rounding selected by g_mma_window.
inline float mma_step(const double (&t)[17]) {
  double s = 0.0;
  if (g_mma_window <= 0) {
    for (double v : t) s += v;
    return static_cast<float>(s);
  }
  double top = 0.0;
  for (double v : t) top = std::max(top, std::fabs(v));
  if (top == 0.0) return 0.0f;
  const double q = std::ldexp(1.0, std::ilogb(top) - (g_mma_window - 1));
  for (double v : t) s += std::trunc(v / q) * q;  // exact: at most W + 5 bits
  return round_toward_zero(s);
}

template <typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
              const fragment<matrix_b, 16, 16, 16, TB, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      double t[17];
      t[0] = c.x[i * 16 + j];
      for (int k = 0; k < 16; ++k) t[k + 1] = static_cast<double>(a.x[i * 16 + k]) * b.x[k * 16 + j];  // exact
      out[i * 16 + j] = mma_step(t);
    }
  std::memcpy(d.x, out, sizeof(out));
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  ::gf_emu::need_aligned(p, 32, "wmma::store_matrix_sync");
  if (ldm % 4 != 0) {
    std::fprintf(stderr, "wmma::store_matrix_sync: ldm %u is not a multiple of 4 floats\n", ldm);
    std::abort();
  }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      const float v = f.x[i * 16 + j];
      if (layout == mem_row_major)
        p[i * ldm + j] = v;
      else
        p[i + j * ldm] = v;
    }
}

}  // namespace nvcuda::wmma
