// The two-level tensor-core Gram product (GEOMFAST_CUDA_GRAM_KERNEL=tc; shapes in gram_kernels.cuh).
//
// Why: float32 accumulation on tensor cores truncates (public probes of the H100: a ~25-bit window,
// round toward zero), so a chain's error grows linearly with its length. The cuBLAS path therefore
// needs short chains, i.e. a float32 -> float64 flush through memory every few hundred rows, and
// those flushes then cost more than the products (see gram_cuda.cu). Here the chain is reset every
// `chain_rows` rows into a second float32 accumulator held in registers (round-to-nearest adds on
// the CUDA cores, one per element per chain), and the float64 output is read and written once per
// call. benchmarks/tensor_core_model.py models the error: 2.6e-7 for 128-row chains and 8192 rows
// per call, against 3.5e-6 for the cuBLAS path's former 1024-row flush.
//
// Layout: one CTA per 128 x 128 output tile (tiles wholly below the diagonal return at once when
// `upper`), 8 warps as 2 x 4, each warp 64 x 32 = 4 x 2 WMMA 16x16x16 fragments. Rows stream
// through shared memory in slabs of 32, double-buffered, the next slab's global loads (16-byte
// vectors) in flight while the current one is multiplied. Output fragments go through a per-warp
// shared stage into float64 (each CTA owns its tile: no atomics).
//
// NOT YET RUN ON A GPU (no session has had one): tests/test_cuda.py runs every fast-path test on
// this kernel too, and benchmarks/gpu_check.py times it against the cuBLAS path. Its source also
// runs on the CPU under tests/cuda_emulation (GEOMFAST_CUDA_EMULATE), which checks its logic.
#ifdef GEOMFAST_CUDA_EMULATE
#include "wmma_emulation.hpp"  // tests/cuda_emulation: this kernel's source run on a CPU
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif
#if !defined(GEOMFAST_CUDA_EMULATE) || defined(GEOMFAST_CUDA_EMULATE_HOST)
#include "cuda/cuda_utils.hpp"
#endif
#include "cuda/launch.cuh"

#include <cstdint>

#include "cuda/gram_kernels.cuh"

namespace geomfast::cuda {
namespace {

using namespace nvcuda;

constexpr int kBM = static_cast<int>(kTcTile);  // tile rows (output index a)
constexpr int kBN = static_cast<int>(kTcTile);  // tile columns (output index b)
constexpr int kBK = 32;                         // input rows per shared-memory slab
constexpr int kLds = kBM + 8;                   // padded shared row: a multiple of 8 elements
constexpr int kThreads = 256;
constexpr int kVecPerSlab = kBK * kBM / 8;      // 16-byte vectors of one operand's slab
static_assert(kVecPerSlab % kThreads == 0, "slab loads must split evenly over the threads");
constexpr int kVecPerThread = kVecPerSlab / kThreads;
constexpr int kVecPerRow = kBM / 8;

template <typename T>
struct Slab {
  __align__(32) T a[kBK][kLds];
  __align__(32) T b[kBK][kLds];
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
tc_gram_kernel(const T* __restrict__ a, int64_t lda, int64_t m,
               const T* __restrict__ b, int64_t ldb, int64_t n,
               int64_t rows, int chain_slabs, bool upper,
               double* __restrict__ c, int64_t ldc) {
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  if (upper && m0 > n0 + kBN - 1) return;  // wholly below the diagonal

  __shared__ Slab<T> slab[2];
  __shared__ __align__(32) float stage[kThreads / 32][16 * 16];

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const int wm = warp / 4, wn = warp % 4;  // warp tile: rows wm*64 .. +64, columns wn*32 .. +32

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> chain[4][2], total[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::fill_fragment(chain[i][j], 0.0f);
      wmma::fill_fragment(total[i][j], 0.0f);
    }

  uint4 ra[kVecPerThread], rb[kVecPerThread];
  auto load = [&](int64_t r0) {  // global -> registers (rows past the end read as zeros)
#pragma unroll
    for (int q = 0; q < kVecPerThread; ++q) {
      const int v = tid + q * kThreads;
      const int rr = v / kVecPerRow, cc = (v % kVecPerRow) * 8;
      const int64_t r = r0 + rr;
      ra[q] = make_uint4(0, 0, 0, 0);
      rb[q] = make_uint4(0, 0, 0, 0);
      if (r < rows) {
        ra[q] = __ldg(reinterpret_cast<const uint4*>(a + r * lda + m0 + cc));
        rb[q] = __ldg(reinterpret_cast<const uint4*>(b + r * ldb + n0 + cc));
      }
    }
  };
  auto store = [&](Slab<T>& s) {  // registers -> shared
#pragma unroll
    for (int q = 0; q < kVecPerThread; ++q) {
      const int v = tid + q * kThreads;
      const int rr = v / kVecPerRow, cc = (v % kVecPerRow) * 8;
      *reinterpret_cast<uint4*>(&s.a[rr][cc]) = ra[q];
      *reinterpret_cast<uint4*>(&s.b[rr][cc]) = rb[q];
    }
  };

  auto end_chain = [&] {  // the chain's sums into the second accumulator, the chain restarted
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int t = 0; t < chain[i][j].num_elements; ++t) total[i][j].x[t] += chain[i][j].x[t];
        wmma::fill_fragment(chain[i][j], 0.0f);
      }
  };

  const int64_t nslabs = (rows + kBK - 1) / kBK;
  load(0);
  store(slab[0]);
  __syncthreads();
  int since = 0;  // slabs in the current chain
  for (int64_t s = 0; s < nslabs; ++s) {
    Slab<T>& cur = slab[s & 1];
    const bool more = s + 1 < nslabs;
    if (more) load((s + 1) * kBK);
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      // Aᵀ (m x k) is column-major in the slab (element (i, k) at a[k][i]); B (k x n) row-major.
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> fa[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) wmma::load_matrix_sync(fa[i], &cur.a[kk][wm * 64 + i * 16], kLds);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &cur.b[kk][wn * 32 + j * 16], kLds);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(chain[i][j], fa[i], fb[j], chain[i][j]);
    }
    // The other buffer was last read in the previous iteration, before its closing barrier.
    if (more) store(slab[(s + 1) & 1]);
    __syncthreads();
    if (++since == chain_slabs) {
      since = 0;
      end_chain();
    }
  }
  if (since != 0) end_chain();  // the last, partial chain

  float* st = stage[warp];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(st, total[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int64_t ga = m0 + wm * 64 + i * 16 + e / 16;
        const int64_t gb = n0 + wn * 32 + j * 16 + e % 16;
        if (ga < m && gb < n && (!upper || ga <= gb)) c[ga + gb * ldc] += static_cast<double>(st[e]);
      }
      __syncwarp();
    }
}

}  // namespace

#if !defined(GEOMFAST_CUDA_EMULATE) || defined(GEOMFAST_CUDA_EMULATE_HOST)
void tc_gram_update(const void* a, int64_t lda, int64_t m, const void* b, int64_t ldb, int64_t n,
                    int64_t rows, int chain_rows, DType dtype, bool upper, double* c, int64_t ldc,
                    cudaStream_t stream) {
  if (rows <= 0 || m <= 0 || n <= 0) return;
  GF_ASSERT(lda % 8 == 0 && ldb % 8 == 0, "tc_gram_update: leading dimensions must be multiples of 8");
  GF_ASSERT(lda >= (m + kBM - 1) / kBM * kBM && ldb >= (n + kBN - 1) / kBN * kBN,
            "tc_gram_update: operands must be padded to whole tiles");
  GF_ASSERT(reinterpret_cast<std::uintptr_t>(a) % 16 == 0 && reinterpret_cast<std::uintptr_t>(b) % 16 == 0,
            "tc_gram_update: operands must be 16-byte aligned");
  GF_ASSERT(chain_rows >= kBK && chain_rows % kBK == 0, "tc_gram_update: chain_rows must be a multiple of 32");
  GF_ASSERT(ldc >= m, "tc_gram_update: ldc < m");
  const dim3 grid(static_cast<unsigned>((m + kBM - 1) / kBM), static_cast<unsigned>((n + kBN - 1) / kBN));
  const int chain_slabs = chain_rows / kBK;
  if (dtype == DType::kBFloat16) {
    GF_LAUNCH_SYNC((tc_gram_kernel<__nv_bfloat16>), (grid, kThreads, 0, stream), (
        static_cast<const __nv_bfloat16*>(a), lda, m, static_cast<const __nv_bfloat16*>(b), ldb, n, rows,
        chain_slabs, upper, c, ldc));
  } else {
    GF_ASSERT(dtype == DType::kFloat16, "tc_gram_update needs bfloat16 or float16 operands");
    GF_LAUNCH_SYNC((tc_gram_kernel<__half>), (grid, kThreads, 0, stream), (static_cast<const __half*>(a), lda, m,
                                                          static_cast<const __half*>(b), ldb, n, rows,
                                                          chain_slabs, upper, c, ldc));
  }
  GF_CUDA_CHECK_LAUNCH(stream);
}
#endif  // GEOMFAST_CUDA_EMULATE

}  // namespace geomfast::cuda
