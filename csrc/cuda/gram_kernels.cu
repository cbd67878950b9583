// The CUDA backend's own kernels: fused column statistics with non-finite checks, shifted
// centering (float64 / float32), the exact 16-bit hi+lo split, float32 -> float64 flushes over the
// upper triangle, and the chunk commit. Launchers and shapes are documented in gram_kernels.cuh.
// The kernels' source also runs on the CPU under tests/cuda_emulation: GEOMFAST_CUDA_EMULATE
// adds an emulation of what they use (and leaves the launchers out, unless
// GEOMFAST_CUDA_EMULATE_HOST, where the launchers run through launch.cuh's emulated launches).
#ifdef GEOMFAST_CUDA_EMULATE
#include "wmma_emulation.hpp"  // tests/cuda_emulation: these kernels' source run on a CPU
#include "geomfast/errors.hpp"
#endif
#if !defined(GEOMFAST_CUDA_EMULATE) || defined(GEOMFAST_CUDA_EMULATE_HOST)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/cuda_utils.hpp"
#endif
#include "cuda/launch.cuh"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda/gram_kernels.cuh"

namespace geomfast::cuda {
namespace {

__device__ __forceinline__ double to_double(double v) { return v; }
__device__ __forceinline__ double to_double(float v) { return static_cast<double>(v); }
__device__ __forceinline__ double to_double(__half v) { return static_cast<double>(__half2float(v)); }
__device__ __forceinline__ double to_double(__nv_bfloat16 v) {
  return static_cast<double>(__bfloat162float(v));
}
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T16> __device__ __forceinline__ T16 round16(float v);
template <> __device__ __forceinline__ __half round16<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 round16<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Calls f(T{}) with the C++ type of `t`.
template <typename F>
void dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::kFloat64: f(double{}); return;
    case DType::kFloat32: f(float{}); return;
    case DType::kFloat16: f(__half{}); return;
    case DType::kBFloat16: f(__nv_bfloat16{}); return;
  }
  GF_ASSERT(false, "unknown dtype");
}

unsigned grid_1d(int64_t n, int threads) {
  return static_cast<unsigned>(std::min<int64_t>((n + threads - 1) / threads, 1 << 20));
}

// ------------------------------------------------------------------------- column statistics
constexpr int kStatsCols = 32;     // columns per block (threadIdx.x)
constexpr int kStatsLanes = 8;     // row lanes per block (threadIdx.y)
constexpr int kStatsMaxParts = 128;

// One value of the statistics pass, from row r, against kernel shift cj: a non-finite value is
// counted (and the first row holding one kept: rows only increase per thread); otherwise y = v - cj
// goes into the sums and |y| > split_max (when split_max > 0) is counted. Shared by both kernels.
struct StatsCounts {
  unsigned long long bad = 0, first = ULLONG_MAX, over = 0;
};
__device__ __forceinline__ void stats_take(double v, double cj, int64_t r, double split_max, double& sum,
                                           double& sq, StatsCounts& n) {
  if (!isfinite(v)) {
    if (n.bad++ == 0) n.first = static_cast<unsigned long long>(r);
    return;
  }
  const double y = v - cj;
  sum += y;
  sq += y * y;
  if (split_max > 0.0 && fabs(y) > split_max) ++n.over;
}
__device__ __forceinline__ void stats_flags(const StatsCounts& n, unsigned long long* flags) {
  if (n.bad) {
    atomicAdd(&flags[0], n.bad);
    atomicMin(&flags[1], n.first);
  }
  if (n.over) atomicAdd(&flags[2], n.over);
}

template <typename T>
__global__ void column_stats_kernel(const T* __restrict__ x,  // [rows, cols], strides (rs, cs)
                                    int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                                    const double* __restrict__ c,  // [cols] or nullptr
                                    double split_max,
                                    double* __restrict__ part,  // [gridDim.y, 2, cols]
                                    unsigned long long* __restrict__ flags) {  // [kNumFlags]
  __shared__ double s_sum[kStatsLanes][kStatsCols + 1];
  __shared__ double s_sq[kStatsLanes][kStatsCols + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kStatsCols + tx;
  double sum = 0.0, sq = 0.0;
  StatsCounts counts;
  if (col < cols) {
    const double cj = c ? c[col] : 0.0;
    for (int64_t r = static_cast<int64_t>(blockIdx.y) * kStatsLanes + ty; r < rows;
         r += static_cast<int64_t>(gridDim.y) * kStatsLanes)
      stats_take(to_double(x[r * rs + col * cs]), cj, r, split_max, sum, sq, counts);
  }
  s_sum[ty][tx] = sum;
  s_sq[ty][tx] = sq;
  __syncthreads();
  if (ty == 0 && col < cols) {
    double a = 0.0, b = 0.0;
    for (int l = 0; l < kStatsLanes; ++l) {  // fixed order: deterministic
      a += s_sum[l][tx];
      b += s_sq[l][tx];
    }
    part[(static_cast<int64_t>(blockIdx.y) * 2 + 0) * cols + col] = a;
    part[(static_cast<int64_t>(blockIdx.y) * 2 + 1) * cols + col] = b;
  }
  stats_flags(counts, flags);
}

// The same over 16-byte vectors: x row-major with unit column stride, 16-byte aligned rows, cols
// a multiple of V = 16 / sizeof(T). Thread (tx, ty) of block (bx, by) owns columns
// bx * 32V + tx * V .. + V and the rows of the scalar kernel's thread (tx, ty), two rows' loads in
// flight: the scalar kernel keeps one 2-byte load per thread in flight, a small fraction of what
// the memory system needs to run at bandwidth. Same rows, same order of additions, same fixed
// reduction: bit for bit the scalar kernel's result (tests/cuda_emulation checks).
template <typename T>
__global__ void column_stats_vec_kernel(const T* __restrict__ x,  // [rows, cols], row stride rs
                                        int64_t rows, int64_t cols, int64_t rs,
                                        const double* __restrict__ c,  // [cols] or nullptr
                                        double split_max,
                                        double* __restrict__ part,  // [gridDim.y, 2, cols]
                                        unsigned long long* __restrict__ flags) {  // [kNumFlags]
  constexpr int V = static_cast<int>(16 / sizeof(T));
  __shared__ double s_sum[kStatsLanes][kStatsCols * V + 1];
  __shared__ double s_sq[kStatsLanes][kStatsCols * V + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kStatsCols * V + tx * V;
  double sum[V], sq[V], cj[V];
#pragma unroll
  for (int v = 0; v < V; ++v) sum[v] = sq[v] = 0.0;
  StatsCounts counts;
  if (col0 < cols) {
#pragma unroll
    for (int v = 0; v < V; ++v) cj[v] = c ? c[col0 + v] : 0.0;
    auto take = [&](const uint4& raw, int64_t r) {
      T vals[V];
      memcpy(vals, &raw, sizeof(raw));
#pragma unroll
      for (int v = 0; v < V; ++v) stats_take(to_double(vals[v]), cj[v], r, split_max, sum[v], sq[v], counts);
    };
    const int64_t step = static_cast<int64_t>(gridDim.y) * kStatsLanes;
    int64_t r = static_cast<int64_t>(blockIdx.y) * kStatsLanes + ty;
    for (; r + step < rows; r += 2 * step) {
      const uint4 a = __ldg(reinterpret_cast<const uint4*>(x + r * rs + col0));
      const uint4 b = __ldg(reinterpret_cast<const uint4*>(x + (r + step) * rs + col0));
      take(a, r);
      take(b, r + step);
    }
    if (r < rows) take(__ldg(reinterpret_cast<const uint4*>(x + r * rs + col0)), r);
  }
#pragma unroll
  for (int v = 0; v < V; ++v) {
    s_sum[ty][tx * V + v] = sum[v];
    s_sq[ty][tx * V + v] = sq[v];
  }
  __syncthreads();
  if (ty == 0 && col0 < cols) {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      double a = 0.0, b = 0.0;
      for (int l = 0; l < kStatsLanes; ++l) {  // fixed order: deterministic
        a += s_sum[l][tx * V + v];
        b += s_sq[l][tx * V + v];
      }
      part[(static_cast<int64_t>(blockIdx.y) * 2 + 0) * cols + col0 + v] = a;
      part[(static_cast<int64_t>(blockIdx.y) * 2 + 1) * cols + col0 + v] = b;
    }
  }
  stats_flags(counts, flags);
}

__global__ void reduce_parts_kernel(const double* __restrict__ part,  // [nparts, 2, cols]
                                    int64_t nparts, int64_t cols,
                                    double* __restrict__ csum,  // [cols]
                                    double* __restrict__ csq) {  // [cols]
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  double a = 0.0, b = 0.0;
  for (int64_t p = 0; p < nparts; ++p) {
    a += part[(p * 2 + 0) * cols + col];
    b += part[(p * 2 + 1) * cols + col];
  }
  csum[col] = a;
  csq[col] = b;
}

__global__ void init_flags_kernel(unsigned long long* flags) {  // [kNumFlags]
  flags[0] = 0;
  flags[1] = ULLONG_MAX;
  flags[2] = 0;
}

// ------------------------------------------------------------------------- shifts
__global__ void set_shift_kernel(const double* __restrict__ csum,  // [d]
                                 int64_t d, double n, double* __restrict__ shift) {  // [d]
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < d) shift[j] = csum[j] / n;
}

__global__ void copy_diagonal_kernel(const double* __restrict__ gram, int64_t d, double* __restrict__ out) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < d) out[j] = gram[j + j * d];
}

__global__ void set_diagonal_kernel(double* __restrict__ gram, int64_t d, const double* __restrict__ base,
                                    const double* __restrict__ add) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < d) gram[j + j * d] = base[j] + add[j];
}

template <typename T16>
__global__ void choose_split_shift_kernel(const double* __restrict__ shift,  // [d]
                                          const double* __restrict__ ysum,   // [d]
                                          const double* __restrict__ ysq,    // [d] strided
                                          int64_t ysq_stride, int64_t d, double n, double tau,
                                          double max16, double* __restrict__ c) {  // [d]
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= d) return;
  const double s = shift[j];
  const double m = n > 0 ? ysum[j] / n : 0.0;
  const double var = n > 0 ? fmax(ysq[j * ysq_stride] / n - m * m, 0.0) : 0.0;
  if (!(fabs(s) <= max16) || fabs(s) <= tau * sqrt(var)) {
    c[j] = 0.0;  // raw x is exact in 16 bits: no lo part for this column
  } else {
    c[j] = static_cast<double>(to_float(round16<T16>(static_cast<float>(s))));
  }
}

// ------------------------------------------------------------------------- centering
constexpr int kRowThreads = 256;

template <typename T, typename O>
__global__ void center_rows_kernel(const T* __restrict__ x,  // [*, cols], strides (rs, cs)
                                   int64_t r0, int64_t nb, int64_t cols, int64_t rs, int64_t cs,
                                   const double* __restrict__ c,  // [cols]
                                   O* __restrict__ y) {           // [nb, cols] row-major
  for (int64_t r = blockIdx.y; r < nb; r += gridDim.y) {
    const T* xr = x + (r0 + r) * rs;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < cols;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      y[r * cols + j] = static_cast<O>(to_double(xr[j * cs]) - c[j]);
    }
  }
}

// Exact hi + lo split (see gram_cuda.cu for the error analysis). With x, c in the 16-bit format
// F (p significant bits; p = 8 for bfloat16, 11 for float16):
//  * TwoSum in float32 gives s + e = x - c exactly (no float32 overflow: |x|, |c| < 2^128).
//  * hi = RN_F(s) = RN_F(x - c): rounding to float32 first is innocuous since 24 >= 2p + 2.
//  * x - c - hi is exactly representable in F (the error of a correctly rounded addition in F),
//    and it equals (s - hi) + e where s - hi is exact in float32; since the exact sum is a float32
//    value, the float32 addition returns it exactly, and rounding it to F is exact too.
// The only failure, overflow of hi, is detected by column_stats (split_max) beforehand.
// The split of one value: x - c = h + *l exactly, c a 16-bit value (shared by both kernels).
template <typename T16>
__device__ __forceinline__ T16 split_one(T16 x, double c, T16* l) {
  const float a = to_float(x);
  const float b = -static_cast<float>(c);  // exact: c is a 16-bit value
  const float s = __fadd_rn(a, b);
  const float bb = __fsub_rn(s, a);
  const float e = __fadd_rn(__fsub_rn(a, __fsub_rn(s, bb)), __fsub_rn(b, bb));
  const T16 h = round16<T16>(s);
  *l = round16<T16>(__fadd_rn(__fsub_rn(s, to_float(h)), e));
  return h;
}

template <typename T16>
__global__ void split_rows_kernel(const T16* __restrict__ x,  // [*, cols], strides (rs, cs)
                                  int64_t r0, int64_t nb, int64_t cols, int64_t rs, int64_t cs,
                                  const double* __restrict__ c,  // [cols], values in T16
                                  const int* __restrict__ col2j,  // [cols]
                                  int64_t nj,
                                  T16* __restrict__ hi, int64_t ldh,  // [nb, ldh] row-major
                                  T16* __restrict__ lo, int64_t ldl) {  // [nb, ldl] row-major
  // Columns [cols, ldh) of hi and [nj, ldl) of lo are padding, written as zeros (ldl <= ldh).
  for (int64_t r = blockIdx.y; r < nb; r += gridDim.y) {
    const T16* xr = x + (r0 + r) * rs;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < ldh;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      if (j >= nj && j < ldl) lo[r * ldl + j] = round16<T16>(0.0f);
      if (j >= cols) {
        hi[r * ldh + j] = round16<T16>(0.0f);
        continue;
      }
      T16 l;
      hi[r * ldh + j] = split_one(xr[j * cs], c[j], &l);
      const int jj = col2j[j];
      if (jj >= 0) lo[r * ldl + jj] = l;
    }
  }
}

// The same over 16-byte vectors of 8 values: x row-major with unit column stride, 16-byte aligned
// rows, cols a multiple of 8; hi 16-byte aligned with ldh a multiple of 8. Each thread takes one
// vector of a row per step: hi written as one 16-byte store. Bit for bit the scalar kernel.
template <typename T16>
__global__ void split_rows_vec_kernel(const T16* __restrict__ x,  // [*, cols], row stride rs
                                      int64_t r0, int64_t nb, int64_t cols, int64_t rs,
                                      const double* __restrict__ c,  // [cols], values in T16
                                      const int* __restrict__ col2j,  // [cols]
                                      int64_t nj,
                                      T16* __restrict__ hi, int64_t ldh,  // [nb, ldh] row-major
                                      T16* __restrict__ lo, int64_t ldl) {  // [nb, ldl] row-major
  constexpr int V = 8;
  const int64_t nv = ldh / V;
  for (int64_t r = blockIdx.y; r < nb; r += gridDim.y) {
    const T16* xr = x + (r0 + r) * rs;
    for (int64_t vi = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; vi < nv;
         vi += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t j0 = vi * V;
      T16 h[V];
      if (j0 < cols) {  // cols % 8 == 0: the whole vector is inside the row
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(xr + j0));
        T16 xs[V];
        memcpy(xs, &raw, sizeof(raw));
#pragma unroll
        for (int e = 0; e < V; ++e) {
          T16 l;
          h[e] = split_one(xs[e], c[j0 + e], &l);
          const int jj = col2j[j0 + e];
          if (jj >= 0) lo[r * ldl + jj] = l;
        }
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) h[e] = round16<T16>(0.0f);  // padding columns
      }
      uint4 out;
      memcpy(&out, h, sizeof(out));
      *reinterpret_cast<uint4*>(hi + r * ldh + j0) = out;
#pragma unroll
      for (int e = 0; e < V; ++e)
        if (j0 + e >= nj && j0 + e < ldl) lo[r * ldl + j0 + e] = round16<T16>(0.0f);
    }
  }
}

// ------------------------------------------------------------------------- flushes and commits
// 32 x 32 tiles of a [d, d] col-major matrix; blocks entirely below the diagonal return at once.
constexpr int kTile = 32;
constexpr int kTileLanes = 8;

// gram[a, b] += HH[a, b] + HL[a, j(b)] + HL[b, j(a)] + LL[j(a), j(b)] for a <= b (terms with a
// column j(.) < 0 are zero; nj = 0: gram += HH). T = float: the cuBLAS paths' float32 blocks; T = double with hh =
// nullptr: the cross terms the tc kernel accumulates in float64 (entries without a J column are
// left untouched).
template <typename T>
__global__ void flush_upper_split_kernel(const T* __restrict__ hh,  // [d, d] col-major, or nullptr
                                         const T* __restrict__ hl,  // [d, nj] col-major
                                         const T* __restrict__ ll,  // [nj, nj] col-major, upper read
                                         const int* __restrict__ col2j,  // [d], increasing where >= 0
                                         int64_t d, int64_t nj,
                                         double* __restrict__ gram) {  // [d, d] col-major
  const int64_t a0 = static_cast<int64_t>(blockIdx.x) * kTile, b0 = static_cast<int64_t>(blockIdx.y) * kTile;
  if (a0 > b0 + kTile - 1) return;
  const int64_t a = a0 + threadIdx.x;
  if (a >= d) return;
  const int ja = nj > 0 ? col2j[a] : -1;
  for (int64_t b = b0 + threadIdx.y; b < b0 + kTile; b += kTileLanes) {
    if (b >= d || a > b) continue;
    const int jb = nj > 0 ? col2j[b] : -1;
    if (!hh && ja < 0 && jb < 0) continue;
    double v = hh ? static_cast<double>(hh[a + b * d]) : 0.0;
    if (jb >= 0) v += static_cast<double>(hl[a + jb * d]);
    if (ja >= 0) v += static_cast<double>(hl[b + ja * d]);
    if (ja >= 0 && jb >= 0) v += static_cast<double>(ll[ja + jb * nj]);  // ja <= jb: col2j increases
    gram[a + b * d] += v;
  }
}

__global__ void commit_sum_kernel(const double* __restrict__ shift,  // [d]
                                  const double* __restrict__ c,      // [d]
                                  const double* __restrict__ zsum,   // [d]
                                  int64_t d, double n, double* __restrict__ sum) {  // [d]
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < d) sum[j] += zsum[j] - n * (shift[j] - c[j]);
}

__global__ void commit_gram_kernel(const double* __restrict__ shift,  // [d]
                                   const double* __restrict__ c,      // [d]
                                   const double* __restrict__ zsum,   // [d]
                                   int64_t d, double n,
                                   double* __restrict__ gram) {  // [d, d] col-major
  const int64_t a0 = static_cast<int64_t>(blockIdx.x) * kTile, b0 = static_cast<int64_t>(blockIdx.y) * kTile;
  if (a0 > b0 + kTile - 1) return;
  const int64_t a = a0 + threadIdx.x;
  if (a >= d) return;
  const double da = shift[a] - c[a], za = zsum[a];
  for (int64_t b = b0 + threadIdx.y; b < b0 + kTile; b += kTileLanes) {
    if (b >= d || a > b) continue;
    const double db = shift[b] - c[b];
    if (da != 0.0 || db != 0.0) gram[a + b * d] += n * da * db - da * zsum[b] - za * db;
  }
}

// The vector half of reshift_upper (after its Gram half has read the old shift and sum).
__global__ void reshift_vectors_kernel(const double* __restrict__ new_shift,  // [d]
                                       int64_t d, double n,
                                       double* __restrict__ shift,  // [d] in/out
                                       double* __restrict__ sum) {  // [d] in/out
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= d) return;
  sum[j] += n * (shift[j] - new_shift[j]);
  shift[j] = new_shift[j];
}

__global__ void symmetric_from_upper_kernel(const double* __restrict__ gram,  // [d, d] col-major
                                            const double* __restrict__ sum,   // [d] or nullptr
                                            int64_t d, double n, double scale,
                                            double* __restrict__ full) {  // [d, d]
  const int64_t a = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  if (a >= d) return;
  for (int64_t b = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.y;
       b < static_cast<int64_t>(blockIdx.y + 1) * kTile && b < d; b += kTileLanes) {
    const int64_t lo = a < b ? a : b, hi = a < b ? b : a;
    double v = gram[lo + hi * d];
    if (sum) v -= sum[a] * sum[b] / n;
    full[a + b * d] = v * scale;
  }
}

template <typename T>
__global__ void symmetrize_view_kernel(const T* __restrict__ a,  // [n, n], strides (rs, cs)
                                            int64_t n, int64_t rs, int64_t cs,
                                            double* __restrict__ w) {  // [n, n] col-major
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  if (i >= n) return;
  for (int64_t j = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.y;
       j < static_cast<int64_t>(blockIdx.y + 1) * kTile && j < n; j += kTileLanes) {
    const int64_t r = i < j ? i : j, q = i < j ? j : i;  // upper triangle: row <= col
    w[i + j * n] = to_double(a[r * rs + q * cs]);
  }
}

__global__ void convert_f64_to_f32_kernel(const double* __restrict__ src,  // [n]
                                          int64_t n, float* __restrict__ dst) {  // [n]
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = static_cast<float>(src[i]);
}

__global__ void fill_nan_kernel(double* __restrict__ p, int64_t n) {  // [n]
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = NAN;
}

// The checks eigvalsh makes on a square view before solving, in one pass: out[0] += the NaN/Inf in
// its upper triangle (row <= col, what is read), out[1] = bits of max |a_ij - a_ji| over finite
// pairs, out[2] = bits of max |a_ij| over finite values (the bit patterns of non-negative doubles
// order as the values do, so atomicMax on them is a max).
template <typename T>
__global__ void check_view_kernel(const T* __restrict__ a, int64_t n, int64_t rs, int64_t cs,
                                  unsigned long long* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  if (i >= n) return;
  unsigned long long bad = 0;
  double diff = 0.0, mag = 0.0;
  for (int64_t j = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.y;
       j < static_cast<int64_t>(blockIdx.y + 1) * kTile && j < n; j += kTileLanes) {
    const double u = to_double(a[i * rs + j * cs]);
    if (isfinite(u)) {
      mag = fmax(mag, fabs(u));
    } else if (i <= j) {
      ++bad;
    }
    if (i < j) {
      const double d = fabs(u - to_double(a[j * rs + i * cs]));
      if (isfinite(d)) diff = fmax(diff, d);
    }
  }
  if (bad) atomicAdd(&out[0], bad);
  if (diff > 0.0) atomicMax(&out[1], static_cast<unsigned long long>(__double_as_longlong(diff)));
  if (mag > 0.0) atomicMax(&out[2], static_cast<unsigned long long>(__double_as_longlong(mag)));
}

dim3 tile_grid(int64_t d) {
  const unsigned t = static_cast<unsigned>((d + kTile - 1) / kTile);
  return dim3(t, t);
}

// Whether x's rows load as whole 16-byte vectors of v values: row-major, unit column stride,
// 16-byte aligned rows, cols a multiple of v.
bool rows_as_vectors(const MatrixView& x, int64_t v) {
  const int64_t elem = static_cast<int64_t>(dtype_size(x.dtype));
  return elem * v == 16 && x.col_stride == 1 && x.row_stride % v == 0 && x.cols % v == 0 &&
         reinterpret_cast<std::uintptr_t>(x.data) % 16 == 0;
}

dim3 row_grid(int64_t nb, int64_t cols) {
  const unsigned gx = static_cast<unsigned>(std::min<int64_t>((cols + kRowThreads - 1) / kRowThreads, 64));
  const unsigned gy = static_cast<unsigned>(std::min<int64_t>(nb, 65535));
  return dim3(gx, gy);
}

}  // namespace

#if !defined(GEOMFAST_CUDA_EMULATE) || defined(GEOMFAST_CUDA_EMULATE_HOST)
// ------------------------------------------------------------------------- launchers
int64_t column_stats_partials(int64_t rows) {
  const int64_t per = kStatsLanes * 16;  // at least 16 rows per thread before adding a part
  return std::max<int64_t>(1, std::min<int64_t>((rows + per - 1) / per, kStatsMaxParts));
}

void column_stats(const MatrixView& x, const double* c, double split_max, double* part,
                  double* csum, double* csq, unsigned long long* flags, cudaStream_t stream) {
  const int64_t nparts = column_stats_partials(x.rows);
  GF_LAUNCH((init_flags_kernel), (1, 1, 0, stream), (flags));
  GF_CUDA_CHECK_LAUNCH(stream);
  const dim3 block(kStatsCols, kStatsLanes);
  const dim3 grid(static_cast<unsigned>((x.cols + kStatsCols - 1) / kStatsCols),
                  static_cast<unsigned>(nparts));
  dispatch_dtype(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int64_t V = 16 / sizeof(T);
    if (rows_as_vectors(x, V)) {
      const dim3 vgrid(static_cast<unsigned>((x.cols + kStatsCols * V - 1) / (kStatsCols * V)),
                       static_cast<unsigned>(nparts));
      GF_LAUNCH_SYNC((column_stats_vec_kernel<T>), (vgrid, block, 0, stream), (
          static_cast<const T*>(x.data), x.rows, x.cols, x.row_stride, c, split_max, part, flags));
      return;
    }
    GF_LAUNCH_SYNC((column_stats_kernel<T>), (grid, block, 0, stream), (static_cast<const T*>(x.data), x.rows, x.cols,
                                                       x.row_stride, x.col_stride, c, split_max,
                                                       part, flags));
  });
  GF_CUDA_CHECK_LAUNCH(stream);
  GF_LAUNCH((reduce_parts_kernel), (grid_1d(x.cols, 256), 256, 0, stream), (part, nparts, x.cols, csum, csq));
  GF_CUDA_CHECK_LAUNCH(stream);
}

void set_shift(const double* csum, int64_t d, int64_t n, double* shift, cudaStream_t stream) {
  GF_LAUNCH((set_shift_kernel), (grid_1d(d, 256), 256, 0, stream), (csum, d, static_cast<double>(n), shift));
  GF_CUDA_CHECK_LAUNCH(stream);
}

void copy_diagonal(const double* gram, int64_t d, double* out, cudaStream_t stream) {
  GF_LAUNCH((copy_diagonal_kernel), (grid_1d(d, 256), 256, 0, stream), (gram, d, out));
  GF_CUDA_CHECK_LAUNCH(stream);
}

void set_diagonal(double* gram, int64_t d, const double* base, const double* add, cudaStream_t stream) {
  GF_LAUNCH((set_diagonal_kernel), (grid_1d(d, 256), 256, 0, stream), (gram, d, base, add));
  GF_CUDA_CHECK_LAUNCH(stream);
}

void choose_split_shift(const double* shift, const double* ysum, const double* ysq,
                        int64_t ysq_stride, int64_t d, int64_t n, double tau, DType dtype16,
                        double* c, cudaStream_t stream) {
  if (dtype16 == DType::kBFloat16) {
    GF_LAUNCH((choose_split_shift_kernel<__nv_bfloat16>), (grid_1d(d, 256), 256, 0, stream), (
        shift, ysum, ysq, ysq_stride, d, static_cast<double>(n), tau, 3.0e38, c));
  } else {
    GF_ASSERT(dtype16 == DType::kFloat16, "choose_split_shift needs a 16-bit dtype");
    GF_LAUNCH((choose_split_shift_kernel<__half>), (grid_1d(d, 256), 256, 0, stream), (
        shift, ysum, ysq, ysq_stride, d, static_cast<double>(n), tau, 65504.0, c));
  }
  GF_CUDA_CHECK_LAUNCH(stream);
}

void center_rows_f64(const MatrixView& x, int64_t r0, int64_t nb, const double* c, double* y,
                     cudaStream_t stream) {
  dispatch_dtype(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    GF_LAUNCH((center_rows_kernel<T, double>), (row_grid(nb, x.cols), kRowThreads, 0, stream), (
        static_cast<const T*>(x.data), r0, nb, x.cols, x.row_stride, x.col_stride, c, y));
  });
  GF_CUDA_CHECK_LAUNCH(stream);
}

void center_rows_f32(const MatrixView& x, int64_t r0, int64_t nb, const double* c, float* y,
                     cudaStream_t stream) {
  dispatch_dtype(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    GF_LAUNCH((center_rows_kernel<T, float>), (row_grid(nb, x.cols), kRowThreads, 0, stream), (
        static_cast<const T*>(x.data), r0, nb, x.cols, x.row_stride, x.col_stride, c, y));
  });
  GF_CUDA_CHECK_LAUNCH(stream);
}

void split_rows_16(const MatrixView& x, int64_t r0, int64_t nb, const double* c, const int* col2j,
                   int64_t nj, void* hi, int64_t ldh, void* lo, int64_t ldl, cudaStream_t stream) {
  GF_ASSERT(ldh >= x.cols && ldl >= nj && ldl <= ldh, "split_rows_16 leading dimensions");
  GF_ASSERT(x.dtype == DType::kBFloat16 || x.dtype == DType::kFloat16, "split_rows_16 needs 16-bit input");
  const bool vec = rows_as_vectors(x, 8) && ldh % 8 == 0 && reinterpret_cast<std::uintptr_t>(hi) % 16 == 0;
  auto launch = [&](auto tag) {
    using T16 = decltype(tag);
    const T16* xp = static_cast<const T16*>(x.data);
    T16* hp = static_cast<T16*>(hi);
    T16* lp = static_cast<T16*>(lo);
    if (vec)
      GF_LAUNCH((split_rows_vec_kernel<T16>), (row_grid(nb, ldh / 8), kRowThreads, 0, stream), (
          xp, r0, nb, x.cols, x.row_stride, c, col2j, nj, hp, ldh, lp, ldl));
    else
      GF_LAUNCH((split_rows_kernel<T16>), (row_grid(nb, ldh), kRowThreads, 0, stream), (
          xp, r0, nb, x.cols, x.row_stride, x.col_stride, c, col2j, nj, hp, ldh, lp, ldl));
  };
  if (x.dtype == DType::kBFloat16)
    launch(__nv_bfloat16{});
  else
    launch(__half{});
  GF_CUDA_CHECK_LAUNCH(stream);
}

void flush_upper_split(const float* hh, const float* hl, const float* ll, const int* col2j,
                       int64_t d, int64_t nj, double* gram, cudaStream_t stream) {
  GF_LAUNCH((flush_upper_split_kernel<float>), (tile_grid(d), dim3(kTile, kTileLanes), 0, stream), (hh, hl, ll, col2j,
                                                                                  d, nj, gram));
  GF_CUDA_CHECK_LAUNCH(stream);
}

void flush_upper(const float* acc, int64_t d, double* gram, cudaStream_t stream) {
  flush_upper_split(acc, nullptr, nullptr, nullptr, d, 0, gram, stream);  // no J columns: gram += acc
}

void add_cross_terms(const double* hl, const double* ll, const int* col2j, int64_t d, int64_t nj,
                     double* gram, cudaStream_t stream) {
  GF_LAUNCH((flush_upper_split_kernel<double>), (tile_grid(d), dim3(kTile, kTileLanes), 0, stream),
            (static_cast<const double*>(nullptr), hl, ll, col2j, d, nj, gram));
  GF_CUDA_CHECK_LAUNCH(stream);
}

void commit_chunk(const double* shift, const double* c, const double* zsum, int64_t d, int64_t n,
                  bool with_gram, double* sum, double* gram, cudaStream_t stream) {
  GF_LAUNCH((commit_sum_kernel), (grid_1d(d, 256), 256, 0, stream), (shift, c, zsum, d, static_cast<double>(n), sum));
  GF_CUDA_CHECK_LAUNCH(stream);
  if (with_gram) {
    GF_LAUNCH((commit_gram_kernel), (tile_grid(d), dim3(kTile, kTileLanes), 0, stream), (
        shift, c, zsum, d, static_cast<double>(n), gram));
    GF_CUDA_CHECK_LAUNCH(stream);
  }
}

void reshift_upper(const double* new_shift, int64_t d, int64_t n, double* shift, double* sum, double* gram,
                   cudaStream_t stream) {
  // With y' = x - s' = y + δ (δ = s - s'), the Gram half is commit_gram_kernel's algebra with the
  // state's own sums as the "chunk": c = s, shift = s', zsum = Σy gives + nδδᵀ + δ(Σy)ᵀ + (Σy)δᵀ.
  GF_LAUNCH((commit_gram_kernel), (tile_grid(d), dim3(kTile, kTileLanes), 0, stream), (
      new_shift, shift, sum, d, static_cast<double>(n), gram));
  GF_CUDA_CHECK_LAUNCH(stream);
  GF_LAUNCH((reshift_vectors_kernel), (grid_1d(d, 256), 256, 0, stream), (
      new_shift, d, static_cast<double>(n), shift, sum));
  GF_CUDA_CHECK_LAUNCH(stream);
}

void symmetric_from_upper(const double* gram, const double* sum, int64_t d, double n, double scale,
                          double* full, cudaStream_t stream) {
  GF_LAUNCH((symmetric_from_upper_kernel), (tile_grid(d), dim3(kTile, kTileLanes), 0, stream), (gram, sum, d, n,
                                                                                     scale, full));
  GF_CUDA_CHECK_LAUNCH(stream);
}

// Calls launch(p) with p the view's data as const double* or const float* (the two types a
// square view for the eigensolvers may hold).
template <typename F>
void on_f64_or_f32(const MatrixView& a, const char* what, F&& launch) {
  if (a.dtype == DType::kFloat64) {
    launch(static_cast<const double*>(a.data));
  } else {
    GF_ASSERT(a.dtype == DType::kFloat32, what, " takes float32 or float64");
    launch(static_cast<const float*>(a.data));
  }
}

void symmetrize_view(const MatrixView& a, double* w, cudaStream_t stream) {
  on_f64_or_f32(a, "symmetrize_view", [&](auto p) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(p)>>;
    GF_LAUNCH((symmetrize_view_kernel<T>), (tile_grid(a.rows), dim3(kTile, kTileLanes), 0, stream), (
        p, a.rows, a.row_stride, a.col_stride, w));
  });
  GF_CUDA_CHECK_LAUNCH(stream);
}

void convert_f64_to_f32(const double* src, int64_t n, float* dst, cudaStream_t stream) {
  GF_LAUNCH((convert_f64_to_f32_kernel), (grid_1d(n, 256), 256, 0, stream), (src, n, dst));
  GF_CUDA_CHECK_LAUNCH(stream);
}

void check_view(const MatrixView& a, unsigned long long* out, cudaStream_t stream) {
  on_f64_or_f32(a, "check_view", [&](auto p) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(p)>>;
    GF_LAUNCH((check_view_kernel<T>), (tile_grid(a.rows), dim3(kTile, kTileLanes), 0, stream), (
        p, a.rows, a.row_stride, a.col_stride, out));
  });
  GF_CUDA_CHECK_LAUNCH(stream);
}

void fill_nan(double* p, int64_t n, cudaStream_t stream) {
  GF_LAUNCH((fill_nan_kernel), (grid_1d(n, 256), 256, 0, stream), (p, n));
  GF_CUDA_CHECK_LAUNCH(stream);
}

#endif  // GEOMFAST_CUDA_EMULATE

}  // namespace geomfast::cuda
