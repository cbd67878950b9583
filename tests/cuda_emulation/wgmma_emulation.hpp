// A host emulation of csrc/cuda/wgmma.cuh (cp.async, the async-proxy fence, warpgroup MMA), for
// csrc/cuda/gram_wgmma.cu's own source under GEOMFAST_CUDA_EMULATE (include after
// wmma_emulation.hpp, which supplies the CTA's threads, barriers and dynamic shared memory).
//
// Asynchrony is modelled at its extremes, one schedule per run (g_schedule): each cp.async copy
// lands, and each wgmma product reads its operands and writes its accumulators, either at issue
// or only when the wait that retires its group runs (cp.async.wait_group N / wgmma.wait_group N
// retire all but the newest N committed groups of this thread):
//   kLate:       both at their retiring wait;
//   kEarlyCopy:  copies at issue, products at their wait: a copy into a buffer that an unretired
//                product still reads corrupts it (write after read);
//   kEarlyMma:   products at issue, copies at their wait: a product over a slab that has not
//                been waited for reads stale bytes (read after write).
// A kernel with a hazard gets wrong numbers under one of them, as it could on the GPU; reading
// accumulators of an unretired product shows under kLate and kEarlyCopy. Work still pending
// when a thread ends is counted in g_async_leftover (a kernel must retire all it issued).
//
// Operands are read through the shared-memory matrix descriptors exactly as gram_wgmma.cu states
// the MN-major 128-byte-swizzle layout (start, leading byte offset between 64-column atoms,
// stride byte offset between 8-row atoms, 16-byte chunks XOR-swizzled by address bits 7-9), and
// each thread computes its own m64nN fragment elements with the register mapping stated there.
// That checks the kernel's self-consistency, not the hardware's reading of the layout.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <type_traits>
#include <vector>

namespace gf_emu {

inline std::atomic<long> g_async_leftover{0};
// The longest tensor-core chain run (k16 steps since a product with scale_d = 0), over all threads.
inline std::atomic<long> g_max_chain_steps{0};
inline thread_local long t_chain_steps = 0;
enum class Schedule { kLate, kEarlyCopy, kEarlyMma };
inline Schedule g_schedule = Schedule::kLate;
inline const char* schedule_name(Schedule s) {
  return s == Schedule::kLate ? "late" : s == Schedule::kEarlyCopy ? "early copies" : "early products";
}

inline uint8_t* shared_bytes_at(uint32_t addr, uint32_t bytes) {
  if (addr < kSharedWindow || addr + bytes > kSharedWindow + g_dyn_smem.size()) {
    std::fprintf(stderr, "shared address 0x%x (+%u) outside the dynamic shared memory\n", addr, bytes);
    std::abort();
  }
  return g_dyn_smem.data() + (addr - kSharedWindow);
}

struct AsyncCopy {
  uint8_t* dst;
  const uint8_t* src;
  bool valid;
};
struct AsyncMma {
  float* d;
  int n;  // N of m64nNk16: d holds n / 2 floats
  uint64_t desc_a, desc_b;
  int scale_d;
  bool f16;
};

// One thread's async operations of one kind, in commit groups (cp.async and wgmma alike).
template <typename Op>
struct AsyncQueue {
  std::vector<Op> open;               // issued, not yet committed
  std::deque<std::vector<Op>> groups;  // committed, oldest first
  void commit() {
    groups.push_back(std::move(open));
    open.clear();
  }
  // The wait_group N of PTX: runs (completes) all but the newest `keep` committed groups.
  template <typename Run>
  void retire(size_t keep, Run run) {
    while (groups.size() > keep) {
      for (const Op& op : groups.front()) run(op);
      groups.pop_front();
    }
  }
  long pending() const {
    long n = static_cast<long>(open.size());
    for (const auto& g : groups) n += static_cast<long>(g.size());
    return n;
  }
};
struct AsyncQueues {
  AsyncQueue<AsyncCopy> copies;
  AsyncQueue<AsyncMma> mmas;
  ~AsyncQueues() { g_async_leftover += copies.pending() + mmas.pending(); }
};
inline thread_local AsyncQueues t_async;
// The end of an emulated thread (the launch's pooled host thread lives on): what it left pending is
// counted as at a thread's exit, and its chain count starts again.
inline void end_of_emulated_thread() {
  g_async_leftover += t_async.copies.pending() + t_async.mmas.pending();
  t_async = AsyncQueues{};
  t_chain_steps = 0;
}
inline const bool g_end_of_thread_hooked = (thread_exit_hooks().push_back(&end_of_emulated_thread), true);

// Element (mn, k) of an MN-major operand described by `desc` (128-byte swizzle only).
inline float desc_element(uint64_t desc, int mn, int k, bool f16) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
  const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3FFF) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
  if ((desc >> 62) != 1 || ((desc >> 49) & 7) != 0 || start % 1024 != 0) {
    std::fprintf(stderr, "descriptor 0x%016llx: expected 128-byte swizzle, base offset 0, a 1024-aligned start\n",
                 static_cast<unsigned long long>(desc));
    std::abort();
  }
  uint32_t addr = start + static_cast<uint32_t>(mn / 64) * lbo + static_cast<uint32_t>(k / 8) * sbo +
                  static_cast<uint32_t>(k % 8) * 128 + static_cast<uint32_t>((mn % 64) / 8) * 16 +
                  static_cast<uint32_t>(mn % 8) * 2;
  addr ^= ((addr >> 7) & 7) << 4;
  const uint8_t* p = shared_bytes_at(addr, 2);
  if (f16) {
    __half h;
    std::memcpy(&h, p, 2);
    return __half2float(h);
  }
  __nv_bfloat16 h;
  std::memcpy(&h, p, 2);
  return __bfloat162float(h);
}

inline void run_mma(const AsyncMma& op) {
  t_chain_steps = op.scale_d ? t_chain_steps + 1 : 1;
  for (long cur = g_max_chain_steps.load(); t_chain_steps > cur && !g_max_chain_steps.compare_exchange_weak(cur, t_chain_steps);) {
  }
  const int t = static_cast<int>(thread_idx.x) % 128, w = t / 32, lane = t % 32;
  float out[128];
  for (int i = 0; i < op.n / 2; ++i) {
    const int row = 16 * w + lane / 4 + 8 * ((i >> 1) & 1);
    const int col = 8 * (i >> 2) + 2 * (lane % 4) + (i & 1);
    double terms[17];
    terms[0] = op.scale_d ? op.d[i] : 0.0;
    for (int k = 0; k < 16; ++k)
      terms[k + 1] = static_cast<double>(desc_element(op.desc_a, row, k, op.f16)) *
                     desc_element(op.desc_b, col, k, op.f16);  // exact
    out[i] = nvcuda::wmma::mma_step(terms);
  }
  std::memcpy(op.d, out, sizeof(float) * (op.n / 2));
}

}  // namespace gf_emu

inline int __shfl_sync(unsigned, int v, int src) {
  static int slots[64][32];  // [warp][lane]; one CTA at a time
  ::gf_emu::need_cta("__shfl_sync");
  const int w = ::gf_emu::warp_of, lane = static_cast<int>(::gf_emu::thread_idx.x) % 32;
  slots[w][lane] = v;
  __syncwarp();
  const int r = slots[w][src];
  __syncwarp();
  return r;
}

namespace geomfast::cuda::sm90 {

inline uint32_t smem_addr(const void* p) {
  const auto* q = static_cast<const uint8_t*>(p);
  return ::gf_emu::kSharedWindow + static_cast<uint32_t>(q - ::gf_emu::g_dyn_smem.data());
}

inline void land(const ::gf_emu::AsyncCopy& c) {
  if (c.valid)
    std::memcpy(c.dst, c.src, 16);
  else
    std::memset(c.dst, 0, 16);
}
inline void cp_async_16(uint32_t dst, const void* src, bool valid) {
  // cp.async.cg of 16 bytes: both addresses 16-byte aligned (the source too when src-size is 0)
  if (dst % 16 != 0) {
    std::fprintf(stderr, "cp.async: shared address 0x%x is not 16-byte aligned\n", dst);
    std::abort();
  }
  ::gf_emu::need_aligned(src, 16, "cp.async (global source)");
  const ::gf_emu::AsyncCopy c{::gf_emu::shared_bytes_at(dst, 16), static_cast<const uint8_t*>(src), valid};
  if (::gf_emu::g_schedule == ::gf_emu::Schedule::kEarlyCopy)
    land(c);
  else
    ::gf_emu::t_async.copies.open.push_back(c);
}
inline void cp_async_commit() { ::gf_emu::t_async.copies.commit(); }
template <int N>
void cp_async_wait() {
  ::gf_emu::t_async.copies.retire(N, land);
}
inline void fence_proxy_async() {}
inline void wgmma_fence() {}
inline void wgmma_commit() { ::gf_emu::t_async.mmas.commit(); }
template <int N>
void wgmma_wait() {
  ::gf_emu::t_async.mmas.retire(N, ::gf_emu::run_mma);
}
template <int R>
void fence_operand(float (&)[R]) {}

template <typename T, int N>
void wgmma_m64nNk16(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  static_assert(N % 8 == 0 && N <= 256, "m64nNk16");
  const ::gf_emu::AsyncMma op{d, N, desc_a, desc_b, scale_d, std::is_same_v<T, __half>};
  if (::gf_emu::g_schedule == ::gf_emu::Schedule::kEarlyMma)
    ::gf_emu::run_mma(op);
  else
    ::gf_emu::t_async.mmas.open.push_back(op);
}

}  // namespace geomfast::cuda::sm90
