// The two-level Gram product on Hopper's warpgroup MMA (GEOMFAST_CUDA_GRAM_KERNEL=wg; sm_90a only).
//
// Same contract and numerics as gram_tc.cu's kernel (see tc_gram_update in gram_kernels.cuh):
// tensor-core chains of chain_rows rows, each added into a second float32 accumulator held in
// registers (round-to-nearest adds), float64 output read and written once per call. What changes is
// the machinery, which on an H100/H200 the WMMA kernel cannot reach:
//  - wgmma.mma_async m64n128k16: a warpgroup (4 warps) multiplies straight from shared memory,
//    asynchronously, at the full Hopper rate (public microbenchmarks put WMMA / mma.sync well
//    below it on an H100);
//  - both operands MN-major in shared memory (x's rows are k, its columns m / n), read through
//    matrix descriptors with imm-trans-a/b = 1, in the PTX ISA's canonical MN-major 128-byte-
//    swizzle layout ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)), T = 8 values: atoms of 8 rows x 64
//    columns (1024 bytes), 16-byte chunk c of row r stored at chunk c ^ (r % 8), the next 64
//    columns one atom on (LBO = 1024) and the next 8 rows two atoms on (SBO = 2048);
//  - a 5-stage cp.async pipeline of 64-row slabs (32 KiB per stage: both operands), loads issued
//    three slabs ahead, and wgmma groups kept one deep in flight (wait_group 1), so the tensor
//    cores see no gap between slabs;
//  - the two warpgroups (rows 0-63 and 64-127 of the tile) end their chains half a chain apart,
//    so while one drains its chain into the second accumulator the other's products keep the
//    tensor cores busy.
// One CTA (256 threads) per output tile of 128 x 128 (161 KiB of dynamic shared memory, 178
// registers) or 128 x 192 (GEOMFAST_CUDA_WG_TILE_N=192: 201 KiB, 242 registers; 20 % fewer operand
// bytes per product, for when L2 bandwidth bounds the smaller tile); neither spills (ptxas -v,
// CUDA 13.0). Tiles wholly below the diagonal return at once when `upper`.
// Checked in the SASS (cuobjdump -sass, CUDA 13.0): HGMMA.64x128x16 / 64x192x16 with .tnspA.tnspB,
// LDGSTS for the copies, no local memory, and inside the slab loop only our own waits
// (WARPGROUP.DEPBAR.LE gsb0 1 per slab, 0 where a chain ends): an earlier shape of the loop let
// ptxas insert a full wait in every iteration (C7517), which drained the tensor cores per slab.
//
// NOT YET RUN ON A GPU. Its source runs on the CPU under tests/cuda_emulation
// (wgmma_emulation.hpp), which executes cp.async copies and wgmma products as late as PTX allows
// (at the wait that retires them), reads operands through the descriptors and the swizzle as
// this file states them, and so checks the pipeline's ordering and the layout's self-consistency;
// whether the hardware reads the layout as stated is for tests/test_cuda.py and
// benchmarks/gpu_check.py on an H100/H200.
#ifdef GEOMFAST_CUDA_EMULATE
#include "wmma_emulation.hpp"
#include "wgmma_emulation.hpp"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/wgmma.cuh"
#endif
#if !defined(GEOMFAST_CUDA_EMULATE) || defined(GEOMFAST_CUDA_EMULATE_HOST)
#include "cuda/cuda_utils.hpp"
#endif
#include "cuda/launch.cuh"

#include <cstdint>
#include <string>

#include "cuda/gram_kernels.cuh"

namespace geomfast::cuda {
namespace {

using namespace sm90;

constexpr int kWgBM = static_cast<int>(kTcTile);  // tile rows (output index a): two warpgroups of 64
constexpr int kWgBK = 64;                         // input rows per stage
constexpr int kWgStages = 5;
constexpr int kWgThreads = 256;                   // two warpgroups
constexpr uint32_t kAtomBytes = 1024;             // 8 rows x 64 columns of 16-bit values
static_assert(kWgBM == 128, "two warpgroups of m64");

// The tile's column count BN (output index b): 128, or 192 (a 128 x 192 tile reads 20 % fewer
// operand bytes per product, for 192 accumulator registers per thread instead of 128).
template <int BN>
struct WgTile {
  static_assert(BN == 128 || BN == 192, "wg tiles are 128 x 128 or 128 x 192");
  static constexpr uint32_t kAtomsA = kWgBM / 64, kAtomsB = BN / 64;  // 64-column atoms per 8 rows
  static constexpr uint32_t kBytesA = kWgBK * kWgBM * 2, kBytesB = kWgBK * BN * 2;  // one slab each
  static constexpr uint32_t kStageBytes = kBytesA + kBytesB;
  static constexpr size_t kSmemBytes = size_t(kWgStages) * kStageBytes + kAtomBytes;  // + alignment slack
  static_assert(kWgThreads == 8 * 32 && kWgBK == 2 * 32, "the copy mapping: 8 threads per 128-byte row, 2 x 32 rows");
};

// Byte offset of element (row k, column j) in an operand slab whose 8-row groups hold `atoms`
// 64-column atoms (k < 64, j < 64 atoms).
__host__ __device__ constexpr uint32_t slab_offset(int k, int j, uint32_t atoms) {
  return static_cast<uint32_t>(k / 8) * atoms * kAtomBytes + static_cast<uint32_t>(j / 64) * kAtomBytes +
         static_cast<uint32_t>(k % 8) * 128 + static_cast<uint32_t>(((j % 64) / 8) ^ (k % 8)) * 16 +
         static_cast<uint32_t>(j % 8) * 2;
}

// Shared-memory matrix descriptor of an MN-major, 128-byte-swizzled operand starting at `addr`
// (1024-aligned) with `atoms` atoms per 8-row group: start >> 4 in bits 0-13, leading byte offset
// >> 4 (next 64 columns: one atom on) in 16-29, stride byte offset >> 4 (next 8 rows: `atoms` atoms
// on) in 32-45, base offset 0, swizzle mode 1 (128 B) in 62-63.
__host__ __device__ constexpr uint64_t make_desc(uint32_t addr, uint32_t atoms) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(kAtomBytes >> 4) << 16) |
         (static_cast<uint64_t>((atoms * kAtomBytes) >> 4) << 32) | (uint64_t(1) << 62);
}

template <typename T, int BN>
__global__ void __launch_bounds__(kWgThreads, 1)
wg_gram_kernel(const T* __restrict__ a, int64_t lda, int64_t m,
               const T* __restrict__ b, int64_t ldb, int64_t n,
               int64_t rows, int chain_iters, bool upper,
               double* __restrict__ c, int64_t ldc) {
#if defined(GF_SM90A) || defined(GEOMFAST_CUDA_EMULATE)
  using Tile = WgTile<BN>;
  constexpr int kAcc = BN / 2;  // accumulator registers per thread, per level
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kWgBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  if (upper && m0 > n0 + BN - 1) return;  // wholly below the diagonal

#ifdef GEOMFAST_CUDA_EMULATE
  uint8_t* smem_raw = ::gf_emu::dynamic_smem();
#else
  extern __shared__ __align__(16) uint8_t smem_raw[];
#endif
  // The swizzle is a function of the shared-memory address: stages start on 1024-byte boundaries.
  const uint32_t raw = smem_addr(smem_raw);
  const uint32_t base = (raw + kAtomBytes - 1) & ~(kAtomBytes - 1);

  const int tid = threadIdx.x;
  // This warpgroup's rows: wg*64 .. +64 of the tile. Broadcast from lane 0 so that the compiler
  // sees it as warp-uniform: a branch on it then does not serialize the wgmma (ptxas C7518).
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);

  const int64_t nk = (rows + kWgBK - 1) / kWgBK;
  // Copies: thread t moves the 16-byte chunk t % 8 of rows t / 8 and t / 8 + 32 of every 64-column
  // atom (8 threads cover one 128-byte atom row, a warp four rows): one base pointer per operand.
  const int r0 = tid / 8, c0 = (tid % 8) * 8;
  const T* a_thr = a + r0 * lda + m0 + c0;
  const T* b_thr = b + r0 * ldb + n0 + c0;
  auto load_stage = [&](int64_t s, int buf) {  // slab s (rows s*64 ..) into buffer buf (= s % kWgStages)
    const uint32_t sa = base + static_cast<uint32_t>(buf) * Tile::kStageBytes, sb = sa + Tile::kBytesA;
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int r = r0 + 32 * q;
      const bool ok = s * kWgBK + r < rows;  // rows past the end are zeros
      const int64_t off = s * kWgBK + 32 * q;
#pragma unroll
      for (uint32_t g = 0; g < Tile::kAtomsA; ++g)
        cp_async_16(sa + slab_offset(r, g * 64 + c0, Tile::kAtomsA), ok ? a_thr + off * lda + g * 64 : a, ok);
#pragma unroll
      for (uint32_t g = 0; g < Tile::kAtomsB; ++g)
        cp_async_16(sb + slab_offset(r, g * 64 + c0, Tile::kAtomsB), ok ? b_thr + off * ldb + g * 64 : b, ok);
    }
  };

  float chain[kAcc], total[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; ++i) {
    chain[i] = 0.0f;
    total[i] = 0.0f;
  }
#pragma unroll
  for (int s = 0; s < kWgStages - 2; ++s) {
    if (s < nk) load_stage(s, s);
    cp_async_commit();  // one group per slab, empty or not: the wait counts below stay exact
  }
  int use = 0, fill = kWgStages - 2;  // buffers of slabs it and it + kWgStages - 2 (counters, not %)
  // Before slab `it`'s products: its copies have landed and are visible to wgmma; the next load.
  auto begin_slab = [&](int64_t it) -> uint32_t {
    cp_async_wait<kWgStages - 3>();  // this thread's copies of slab `it` have landed
    fence_proxy_async();
    // Everyone's copies of slab `it` have landed; and every warpgroup has retired its products of
    // slab it - 2 (one group in flight at most, below), whose buffer the next load reuses.
    __syncthreads();
    if (it + kWgStages - 2 < nk) load_stage(it + kWgStages - 2, fill);
    cp_async_commit();
    const uint32_t sa = base + static_cast<uint32_t>(use) * Tile::kStageBytes;
    use = use + 1 == kWgStages ? 0 : use + 1;
    fill = fill + 1 == kWgStages ? 0 : fill + 1;
    return sa;
  };
  auto issue = [&](uint32_t sa, bool new_chain) {  // slab products into the chain, one wgmma group
    const uint32_t sb = sa + Tile::kBytesA;
    fence_operand(chain);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kWgBK / 16; ++ks)  // 16 rows = two 8-row groups
      wgmma_m64nNk16<T, BN>(chain, make_desc(sa + ks * 2 * Tile::kAtomsA * kAtomBytes + wg * kAtomBytes, Tile::kAtomsA),
                            make_desc(sb + ks * 2 * Tile::kAtomsB * kAtomBytes, Tile::kAtomsB),
                            (new_chain && ks == 0) ? 0 : 1);
    wgmma_commit();
  };
  auto drain_chain = [&] {  // the finished chain into the second accumulator
    wgmma_wait<0>();
    fence_operand(chain);
#pragma unroll
    for (int i = 0; i < kAcc; ++i) total[i] += chain[i];
  };

  // Exactly one wgmma group (the previous slab's) is in flight at the top of every iteration, on
  // both paths through it: where paths met with different counts in flight, ptxas inserted a full
  // wait at the join (C7517), which drained the tensor cores after every slab.
  issue(begin_slab(0), true);
  // Slabs in the current chain. Warpgroup 1 starts half a chain in, so it ends its chains half a
  // chain after warpgroup 0 (its first chain is shorter).
  int since = wg * (chain_iters / 2) + 1;
  for (int64_t it = 1; it < nk; ++it) {
    const uint32_t sa = begin_slab(it);
    if (since == chain_iters) {  // the chain ended with slab it - 1
      drain_chain();
      issue(sa, true);
      since = 1;
    } else {
      issue(sa, false);
      wgmma_wait<1>();  // slab it - 1's products retired
      ++since;
    }
  }
  drain_chain();
  cp_async_wait<0>();

  // The m64nN float32 fragment: warp w of the warpgroup holds rows 16w .. 16w + 15; element i
  // of lane l sits at row l/4 (+ 8 when bit 1 of i is set), column 8 (i / 4) + 2 (l % 4) + i % 2.
  const int w = (tid % 128) / 32, lane = tid % 32;
#pragma unroll
  for (int i = 0; i < kAcc; ++i) {
    const int64_t ga = m0 + wg * 64 + w * 16 + lane / 4 + 8 * ((i >> 1) & 1);
    const int64_t gb = n0 + 8 * (i >> 2) + 2 * (lane % 4) + (i & 1);
    if (ga < m && gb < n && (!upper || ga <= gb)) c[ga + gb * ldc] += static_cast<double>(total[i]);
  }
#endif
}

}  // namespace

#if !defined(GEOMFAST_CUDA_EMULATE) || defined(GEOMFAST_CUDA_EMULATE_HOST)
namespace {
template <typename T, int BN>
const void* wg_kernel_entry() {  // for the runtime's C API (the host emulation has no templated one)
  return reinterpret_cast<const void*>(&wg_gram_kernel<T, BN>);
}

template <typename T, int BN>
void launch_wg(const void* a, int64_t lda, int64_t m, const void* b, int64_t ldb, int64_t n, int64_t rows,
               int chain_iters, bool upper, double* c, int64_t ldc, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((m + kWgBM - 1) / kWgBM), static_cast<unsigned>((n + BN - 1) / BN));
  const size_t smem = WgTile<BN>::kSmemBytes;
  GF_CUDA_CHECK(cudaFuncSetAttribute(wg_kernel_entry<T, BN>(), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(smem)));
  GF_LAUNCH_SYNC((wg_gram_kernel<T, BN>), (grid, kWgThreads, smem, stream), (
      static_cast<const T*>(a), lda, m, static_cast<const T*>(b), ldb, n, rows, chain_iters, upper, c, ldc));
}
}  // namespace

std::string wg_gram_unavailable(int device, bool probe_image) {
  cudaDeviceProp prop;
  GF_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  if (prop.major != 9 || prop.minor != 0)
    return "GEOMFAST_CUDA_GRAM_KERNEL=wg needs a compute capability 9.0 GPU (H100/H200: wgmma is sm_90a), got " +
           std::to_string(prop.major) + "." + std::to_string(prop.minor) + " (" + prop.name + ")";
  if (!probe_image) return "";
  DeviceGuard guard(device);  // the image is looked up in this device's context
  cudaFuncAttributes attr;
  if (cudaFuncGetAttributes(&attr, wg_kernel_entry<__nv_bfloat16, 128>()) != cudaSuccess) {
    (void)cudaGetLastError();
    return "GEOMFAST_CUDA_GRAM_KERNEL=wg: this build holds no sm_90a image of the kernel";
  }
  return "";
}

void wg_gram_update(const void* a, int64_t lda, int64_t m, const void* b, int64_t ldb, int64_t n,
                    int64_t rows, int chain_rows, int tile_n, DType dtype, bool upper, double* c, int64_t ldc,
                    cudaStream_t stream) {
  if (rows <= 0 || m <= 0 || n <= 0) return;
  GF_ASSERT(tile_n == 128 || tile_n == 192, "wg_gram_update: tile_n must be 128 or 192");
  GF_ASSERT(lda % 8 == 0 && ldb % 8 == 0, "wg_gram_update: leading dimensions must be multiples of 8");
  GF_ASSERT(lda >= (m + kWgBM - 1) / kWgBM * kWgBM && ldb >= (n + tile_n - 1) / tile_n * tile_n,
            "wg_gram_update: operands must be padded to whole tiles");
  GF_ASSERT(reinterpret_cast<std::uintptr_t>(a) % 16 == 0 && reinterpret_cast<std::uintptr_t>(b) % 16 == 0,
            "wg_gram_update: operands must be 16-byte aligned");
  GF_ASSERT(chain_rows >= kWgBK && chain_rows % kWgBK == 0, "wg_gram_update: chain_rows must be a multiple of 64");
  GF_ASSERT(ldc >= m, "wg_gram_update: ldc < m");
  GF_ASSERT(dtype == DType::kBFloat16 || dtype == DType::kFloat16, "wg_gram_update needs bfloat16 or float16 operands");
  const int chain_iters = chain_rows / kWgBK;
  const bool bf16 = dtype == DType::kBFloat16;
  if (tile_n == 128) {
    if (bf16) launch_wg<__nv_bfloat16, 128>(a, lda, m, b, ldb, n, rows, chain_iters, upper, c, ldc, stream);
    else launch_wg<__half, 128>(a, lda, m, b, ldb, n, rows, chain_iters, upper, c, ldc, stream);
  } else {
    if (bf16) launch_wg<__nv_bfloat16, 192>(a, lda, m, b, ldb, n, rows, chain_iters, upper, c, ldc, stream);
    else launch_wg<__half, 192>(a, lda, m, b, ldb, n, rows, chain_iters, upper, c, ldc, stream);
  }
  GF_CUDA_CHECK_LAUNCH(stream);
}
#endif  // GEOMFAST_CUDA_EMULATE

}  // namespace geomfast::cuda
