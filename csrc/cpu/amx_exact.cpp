// Exact AMX-INT8 Gram accumulation (see amx_exact.hpp).
//
// update() cuts the rows into blocks of at most kMaxBlockRows; per block:
//   scan   column max |y| -> E_i. A row is representable with s 8-bit slices iff every
//          U = y * 2^(55 - E_i) (exact power-of-two scaling, |U| < 2^55) is an integer divisible by
//          2^(56 - 8s), i.e. the OR of the row's U has at least 56 - 8s trailing zeros; a
//          non-integer U (bits below 2^(E_i - 55), or lost to underflow) fits no slice count.
//   choose the slice count s by a cost model (tile products grow as s^2, rows that need more go
//          the slower ways below) from the row classes of the previous block of the same instance
//          (a stream's blocks look alike), or of this block in an extra pass when there is none;
//          or send the whole block to dsyrk.
//   pack   one pass over the rows: U of each row into a four-row buffer, its class; representable
//          rows are packed four at a time into int8 digit tiles. The digits of U are its bytes:
//          d_1 = byte 6 read as signed (= U >> 48, in [-128, 127] because |U| < 2^55), d_k = byte
//          7 - k unsigned (k = 2..7), so y = sum_k d_k 2^(E_i + 1 - 8k). Byte permutes (VPERMT2B)
//          build the VNNI B tiles (16 features x 4 samples per row) and a 32-bit transpose gives
//          the feature-major A tiles. Layout [feature tile][64-row step][slice].
//          A row that needs more slices is split, y = h + l (h = y cut toward zero to s slices,
//          l = the cut-off bits, exact): h is packed like any row and the correction
//          y y^T - h h^T = l y^T + h l^T is summed in float64 for the few columns where l != 0.
//          Rows with many non-zero l go to dsyrk (gathered, float64).
//   sweep  over the upper 32x32 feature blocks; for each digit weight c = k + l (2s .. 2) the four
//          int32 tiles of the block sum d_k d_l over all rows and all pairs with that weight
//          (TDPBSSD / TDPBSUD / TDPBUSD / TDPBUUD by the digits' signedness; |sum| <= 2048 rows *
//          7 pairs * 255^2 < 2^30: no overflow), are added into a float64 block as
//          T_c * 2^(2 - 8c) (exact scaling; smallest weights first), and finally
//          g += block * 2^(E_i + E_j) (exact scaling, one rounding in the add).
// Tiles compute C[j][i] (A from the column block Q, B from the row block P), so a tile row is a
// contiguous stretch of a column of the column-major g.
#include "cpu/amx_exact.hpp"

#include "cpu/amx_gram.hpp"
#include "cpu/amx_common.hpp"
#include "cpu/amx_emulation.hpp"
#include "cpu/blas.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#ifdef GEOMFAST_AMX_EXACT_PROFILE
#include <chrono>
extern "C" double geomfast_exact_prof_scan_s, geomfast_exact_prof_pack_s, geomfast_exact_prof_tile_s,
    geomfast_exact_prof_combine_s, geomfast_exact_prof_fallback_s;
double geomfast_exact_prof_scan_s = 0, geomfast_exact_prof_pack_s = 0, geomfast_exact_prof_tile_s = 0,
       geomfast_exact_prof_combine_s = 0, geomfast_exact_prof_fallback_s = 0;
#define GFX_PROF_NOW() std::chrono::steady_clock::now()
#define GFX_PROF_ADD(var, t0) var += std::chrono::duration<double>(GFX_PROF_NOW() - (t0)).count()
#endif

namespace geomfast::cpu::amx {

namespace {

constexpr int64_t kBlockRows = ExactSyrk::kMaxBlockRows;
// int32 tile sums: rows * (pairs per weight <= 7) * 255^2 must stay below 2^31.
static_assert(kBlockRows % 64 == 0 && kBlockRows * 7 * 65025 < (int64_t{1} << 31), "int32 overflow");
constexpr int kMaxSlices = 7;  // 7 + 6*8 = 55 bits below the column bound: U is an exact int64
constexpr int kTooMany = kMaxSlices + 1;
// A column whose bound is outside 2^±kMaxExp sends its block to dsyrk: keeps 2^(55 - E) and
// 2^(E_i + E_j) normal numbers (such data is far outside any statistical use anyway).
constexpr int kMaxExp = 500;
constexpr int64_t kTileBytes = 1024;
#ifndef GEOMFAST_EXACT_PANEL_BYTES
#define GEOMFAST_EXACT_PANEL_BYTES (1 << 20)
#endif
constexpr int64_t kPanelBudget = GEOMFAST_EXACT_PANEL_BYTES;  // B panels kept in L2 per group

// Cost model, in units of (one row x one slice pair) of tile work at the padded dim; measured at
// dim 1024 on this Xeon (single thread, OpenBLAS dsyrk): a dsyrk row costs ~28 such units, scanning
// and packing a row ~4.5 units per 1024 features, the float64 combine of one weight ~300 units.
#ifndef GEOMFAST_EXACT_DSYRK_ROW_COST
#define GEOMFAST_EXACT_DSYRK_ROW_COST 28.0
#endif
#ifndef GEOMFAST_EXACT_COMBINE_COST
#define GEOMFAST_EXACT_COMBINE_COST 300.0
#endif
// Splitting a row costs a pass over it (SPLIT_COST units per 1024 features) plus ~3 dim flops per
// non-zero remainder value (SPLIT_VALUE_COST times that each: measured, the buffers mostly miss
// L2), against ~dim^2 for its dsyrk row: split rows with at most dim / SPLIT_DIV remainders; at
// most SPLIT_COLS columns per block may collect remainders (buffer: 2 x SPLIT_COLS x dim float64).
#ifndef GEOMFAST_EXACT_SPLIT_COST
#define GEOMFAST_EXACT_SPLIT_COST 1.0
#endif
#ifndef GEOMFAST_EXACT_SPLIT_VALUE_COST
#define GEOMFAST_EXACT_SPLIT_VALUE_COST 0.7
#endif
#ifndef GEOMFAST_EXACT_SPLIT_DIV
#define GEOMFAST_EXACT_SPLIT_DIV 16
#endif
#ifndef GEOMFAST_EXACT_SPLIT_COLS
#define GEOMFAST_EXACT_SPLIT_COLS 256
#endif
#ifndef GEOMFAST_EXACT_PACK_COST
#define GEOMFAST_EXACT_PACK_COST 4.5
#endif

#if defined(__x86_64__)

// GCC 12's AVX-512 headers self-initialise their "undefined" vectors, which -Wall reports inside
// target-attribute functions; the values are never used.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define GFX_TARGET \
  __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi")))
#define GFX_COMPILER_BARRIER() __asm__ __volatile__("" ::: "memory")
// Tile loads, stores and zeroing (64-byte rows): GF_TILE_LOAD/STORE/ZERO of amx_emulation.hpp
// (instructions with a memory clobber, so that the packing stores and the combine loads are never
// moved across them; or the software model in the kEmu instantiations).
#define GFX_TILE_LOAD(tmm, base) GF_TILE_LOAD(tmm, base, 64L)
#define GFX_TILE_STORE(tmm, base) GF_TILE_STORE(tmm, base, 64L)
// The four signedness variants of the int8 dot product, natively and on the model.
#define GFX_DP_INT8(sa, sb, insn, c, a, b)                 \
  do {                                                     \
    if constexpr (kEmu) emu::dp_int8<sa, sb>(c, a, b);     \
    else insn(c, a, b);                                    \
  } while (0)
#define GFX_DP_dpbssd(c, a, b) GFX_DP_INT8(true, true, _tile_dpbssd, c, a, b)
#define GFX_DP_dpbsud(c, a, b) GFX_DP_INT8(true, false, _tile_dpbsud, c, a, b)
#define GFX_DP_dpbusd(c, a, b) GFX_DP_INT8(false, true, _tile_dpbusd, c, a, b)
#define GFX_DP_dpbuud(c, a, b) GFX_DP_INT8(false, false, _tile_dpbuud, c, a, b)

// Software prefetch of the next step's tiles into L1: 1 = A and B, 2 = A only, 0 = none.
#ifndef GEOMFAST_EXACT_PREFETCH
#define GEOMFAST_EXACT_PREFETCH 1
#endif
#define GFX_PF_TILE(p)                                                          \
  for (int i_ = 0; i_ < 16; ++i_)                                               \
  _mm_prefetch(reinterpret_cast<const char*>(p) + 64 * i_, _MM_HINT_T0)

inline __mmask8 lane_mask(int64_t avail) {
  return avail >= 8 ? static_cast<__mmask8>(0xff)
                    : static_cast<__mmask8>((1u << std::max<int64_t>(avail, 0)) - 1u);
}

// colmax[i] = max_t |y_ti| (colmax has dimp entries, the padding stays 0).
GFX_TARGET void column_max(const double* y, int64_t n, int64_t ld, int64_t dim, int64_t dimp,
                           double* colmax) {
  for (int64_t i = 0; i < dimp; i += 8) _mm512_store_pd(colmax + i, _mm512_setzero_pd());
  for (int64_t t = 0; t < n; ++t) {
    const double* row = y + t * ld;
    for (int64_t i = 0; i < dim; i += 8) {
      const __m512d v = _mm512_abs_pd(_mm512_maskz_loadu_pd(lane_mask(dim - i), row + i));
      _mm512_store_pd(colmax + i, _mm512_max_pd(_mm512_load_pd(colmax + i), v));
    }
  }
}

// One row: returns the slices it needs (0 for an all-zero row, 1..7, or kTooMany when some U is
// not an integer); nb[k] (k in [klo, khi]) = how many of its values need more than k slices (the
// remainders a split at k slices has). u (if not null) gets U (0 in the padding up to dimp).
GFX_TARGET int row_scan(const double* row, int64_t dim, int64_t dimp, const double* scale, int64_t* u,
                        int klo, int khi, uint16_t* nb) {
  const __m512i zero = _mm512_setzero_si512();
  __m512i orv = zero;
  __mmask8 bad = 0;
  int cnt[kMaxSlices + 1] = {0};
  for (int64_t i = 0; i < dimp; i += 8) {
    const __m512d v = _mm512_maskz_loadu_pd(lane_mask(dim - i), row + i);
    const __m512d x = _mm512_mul_pd(v, _mm512_load_pd(scale + i));
    const __m512i ui = _mm512_cvtpd_epi64(x);  // round to nearest: exact iff x is an integer
    // Not an integer, or a non-zero value that underflowed to 0 in the scaling.
    const __mmask8 nonint =
        _mm512_cmp_pd_mask(_mm512_cvtepi64_pd(ui), x, _CMP_NEQ_UQ) |
        _mm512_mask_cmp_pd_mask(_mm512_cmpeq_epi64_mask(ui, zero), v, _mm512_setzero_pd(), _CMP_NEQ_UQ);
    bad |= nonint;
    orv = _mm512_or_si512(orv, ui);
    if (u != nullptr) _mm512_store_si512(u + i, ui);
    for (int k = klo; k <= khi; ++k) {
      const __m512i low = _mm512_set1_epi64(static_cast<int64_t>((uint64_t{1} << (56 - 8 * k)) - 1));
      cnt[k] += __builtin_popcount(static_cast<unsigned>(_mm512_test_epi64_mask(ui, low) | nonint));
    }
  }
  for (int k = klo; k <= khi; ++k) nb[k] = static_cast<uint16_t>(std::min(cnt[k], 65535));
  if (bad != 0) return kTooMany;
  const uint64_t o = static_cast<uint64_t>(_mm512_reduce_or_epi64(orv));
  if (o == 0) return 0;
  // s slices hold bits 56 - 8s .. 54 of U (and the sign); tz <= 54 since |U| < 2^55
  return std::max(1, kMaxSlices - __builtin_ctzll(o) / 8);
}

// Byte-permute tables for pack_rows (built once; see there).
struct PackTables {
  __m512i idx1[2];      // 2 x (16 features x 8 digit bytes) -> [4 slices][16 features]
  __m512i idx2[2];      // two rows' [4 slices][16] -> [2 slices][16 features][2 rows]
  __m512i idx3[2];      // two row pairs' [2 slices][16][2] -> one slice's [16 features][4 rows]
};

PackTables make_tables() {
  alignas(64) uint8_t i1[2][64], i2[2][64], i3[2][64];
  // Digit k (k = 1..7) of a value is byte 7 - k of its U (slot k = 8 is unused: any byte).
  for (int g = 0; g < 2; ++g)
    for (int kk = 0; kk < 4; ++kk)
      for (int n = 0; n < 16; ++n)
        i1[g][16 * kk + n] = static_cast<uint8_t>((n / 8) * 64 + (n % 8) * 8 + std::max(0, 6 - 4 * g - kk));
  for (int h = 0; h < 2; ++h)
    for (int kk = 0; kk < 2; ++kk)
      for (int n = 0; n < 16; ++n)
        for (int rr = 0; rr < 2; ++rr)
          i2[h][32 * kk + 2 * n + rr] = static_cast<uint8_t>(rr * 64 + 16 * (2 * h + kk) + n);
  for (int kk = 0; kk < 2; ++kk)
    for (int n = 0; n < 16; ++n)
      for (int r = 0; r < 4; ++r)
        i3[kk][4 * n + r] = static_cast<uint8_t>((r / 2) * 64 + 32 * kk + 2 * n + (r % 2));
  PackTables t;
  for (int g = 0; g < 2; ++g) {
    std::memcpy(&t.idx1[g], i1[g], 64);
    std::memcpy(&t.idx2[g], i2[g], 64);
    std::memcpy(&t.idx3[g], i3[g], 64);
  }
  return t;
}

const PackTables& tables() {
  static const PackTables t = make_tables();
  return t;
}

// U of 8 values: qword n = value n; its bytes 6 (signed) .. 0 are the digits 1 .. 7.
GFX_TARGET inline __m512i digits8(const double* p, __mmask8 m, const double* scale) {
  const __m512d u = _mm512_mul_pd(_mm512_maskz_loadu_pd(m, p), _mm512_load_pd(scale));
  return _mm512_cvtpd_epi64(u);
}

// Splits a row that needs more than s slices into y = h + l: h = y with the bits below
// 2^(E_i + 56 - 8s - 55) cut off toward zero (its U, exactly s slices, into u), l = y - h (exact: the
// cut-off bits). hrow/lrow get h and l; returns the number of non-zero l.
GFX_TARGET int64_t split_row(const double* row, int64_t dim, int64_t dimp, const double* scale,
                             const double* invscale, int s, int64_t* u, double* hrow, double* lrow) {
  const __m512d down = _mm512_set1_pd(std::ldexp(1.0, -(56 - 8 * s)));
  const __m512d up = _mm512_set1_pd(std::ldexp(1.0, 56 - 8 * s));
  int64_t nl = 0;
  for (int64_t i = 0; i < dimp; i += 8) {
    const __m512d v = _mm512_maskz_loadu_pd(lane_mask(dim - i), row + i);
    // x * 2^-m and back are exact except where |x * 2^-m| < 1 (it truncates to 0 either way).
    const __m512d x = _mm512_mul_pd(v, _mm512_load_pd(scale + i));
    const __m512d xt = _mm512_mul_pd(
        _mm512_roundscale_pd(_mm512_mul_pd(x, down), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC), up);
    _mm512_store_si512(u + i, _mm512_cvtpd_epi64(xt));
    const __m512d h = _mm512_mul_pd(xt, _mm512_load_pd(invscale + i));
    const __m512d l = _mm512_sub_pd(v, h);
    _mm512_store_pd(hrow + i, h);
    _mm512_store_pd(lrow + i, l);
    nl += __builtin_popcount(_mm512_cmp_pd_mask(l, _mm512_setzero_pd(), _CMP_NEQ_UQ));
  }
  return nl;
}

// cc[i] += h_i * l for i <= a (column a of the upper triangle) and r[b] += l * y_b for b >= a
// (row a). Both are per-block buffers, added to g once per block: the same two-level summation as
// dsyrk's (a running sum over the block's rows, then one add into g), and g's rows are strided.
GFX_TARGET void split_update(const double* yrow, const double* hrow, double l, int64_t a, int64_t dim,
                             double* cc, double* r) {
  const __m512d lv = _mm512_set1_pd(l);
  double* ga = cc;
  for (int64_t i = 0; i <= a; i += 8) {
    const __mmask8 m = lane_mask(a + 1 - i);
    _mm512_mask_storeu_pd(ga + i, m, _mm512_fmadd_pd(_mm512_maskz_loadu_pd(m, hrow + i), lv,
                                                      _mm512_maskz_loadu_pd(m, ga + i)));
  }
  for (int64_t b = a; b < dim; b += 8) {
    const __mmask8 m = lane_mask(dim - b);
    _mm512_mask_storeu_pd(r + b, m, _mm512_fmadd_pd(_mm512_maskz_loadu_pd(m, yrow + b), lv,
                                                     _mm512_maskz_loadu_pd(m, r + b)));
  }
}

// One B-tile row (4 samples) of every feature tile and slice: u[r] = U of sample r (dimp values,
// nullptr = a zero padding row); dst = row q of feature tile 0's tile (step, slice 0), consecutive
// slices 1 KiB apart, consecutive feature tiles fstride bytes apart. In each B row, dword n =
// feature n of the tile, byte r = sample r.
GFX_TARGET void pack_quad(const int64_t* const u[4], int64_t ntiles, int s, int8_t* dst, int64_t fstride) {
  const PackTables& tb = tables();
  const int ngroups = (s + 3) / 4;
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t f = 0; f < ntiles; ++f, dst += fstride) {
    __m512i d[4][2];  // [sample][8 features]: qword = U, its bytes the digits
    for (int r = 0; r < 4; ++r) {
      d[r][0] = u[r] != nullptr ? _mm512_load_si512(u[r] + 16 * f) : zero;
      d[r][1] = u[r] != nullptr ? _mm512_load_si512(u[r] + 16 * f + 8) : zero;
    }
    for (int g = 0; g < ngroups; ++g) {
      __m512i x[4];  // per sample: [4 slices][16 features]
      for (int r = 0; r < 4; ++r) x[r] = _mm512_permutex2var_epi8(d[r][0], tb.idx1[g], d[r][1]);
      for (int h = 0; h < 2; ++h) {
        const int kbase = 4 * g + 2 * h;
        if (kbase >= s) break;
        const __m512i y01 = _mm512_permutex2var_epi8(x[0], tb.idx2[h], x[1]);
        const __m512i y23 = _mm512_permutex2var_epi8(x[2], tb.idx2[h], x[3]);
        for (int kk = 0; kk < 2 && kbase + kk < s; ++kk)
          _mm512_store_si512(dst + (kbase + kk) * kTileBytes, _mm512_permutex2var_epi8(y01, tb.idx3[kk], y23));
      }
    }
  }
}

// tmp (tiles 00, 01, 10, 11 of the 32x32 block, int32 16x16 each) = sum over steps and over the
// slice pairs k + l = c of A(k) . B(l). a0/a1: column block Q's two feature tiles at step 0 slice
// 0, b0/b1: row block P's; consecutive steps are s tiles apart.
// Four dot products of the 2x2 block, the loads of tmm7 / tmm5 placed between them so that the
// tile unit can start on the first product while they complete.
#define GFX_DP4(op)                   \
  GFX_DP_##op(0, 4, 6);               \
  GFX_TILE_LOAD(7, b1 + kb);          \
  GFX_DP_##op(1, 4, 7);               \
  GFX_TILE_LOAD(5, a1 + ka);          \
  GFX_DP_##op(2, 5, 6);               \
  GFX_DP_##op(3, 5, 7)

template <bool kEmu>
GFX_TARGET void kernel_weight(int32_t* tmp, const int8_t* a0, const int8_t* a1, const int8_t* b0,
                              const int8_t* b1, int64_t nsteps, int s, int c) {
  const int kmin = std::max(1, c - s), kmax = std::min(s, c - 1);
  const int64_t step = s * kTileBytes;
  GF_TILE_ZERO(0);
  GF_TILE_ZERO(1);
  GF_TILE_ZERO(2);
  GF_TILE_ZERO(3);
  for (int64_t st = 0; st < nsteps; ++st) {
    for (int k = kmin; k <= kmax; ++k) {
      const int64_t ka = (k - 1) * kTileBytes, kb = (c - k - 1) * kTileBytes;
      GFX_TILE_LOAD(4, a0 + ka);
      GFX_TILE_LOAD(6, b0 + kb);
      // Digit 1 is signed, the others unsigned: pick the signedness of each operand.
      if (k == 1 && k == c - 1) {
        GFX_DP4(dpbssd);
      } else if (k == 1) {
        GFX_DP4(dpbsud);
      } else if (c - k == 1) {
        GFX_DP4(dpbusd);
      } else {
        GFX_DP4(dpbuud);
      }
      // The same pair's tiles of the next step, into L1 while the tile unit works (the panels
      // come from L2/L3 and the tile loads would otherwise stall on them).
#if GEOMFAST_EXACT_PREFETCH
      GFX_PF_TILE(a0 + step + ka);
      GFX_PF_TILE(a1 + step + ka);
#if GEOMFAST_EXACT_PREFETCH == 1
      GFX_PF_TILE(b0 + step + kb);
      GFX_PF_TILE(b1 + step + kb);
#endif
#endif
    }
    a0 += step;
    a1 += step;
    b0 += step;
    b1 += step;
  }
  GFX_TILE_STORE(0, tmp);
  GFX_TILE_STORE(1, tmp + 256);
  GFX_TILE_STORE(2, tmp + 512);
  GFX_TILE_STORE(3, tmp + 768);
}

// acc[(16a + m)*32 + 16b + n] (+)= tmp tile (a, b) [m][n] * w, w a power of two (exact product,
// one rounding in the add).
GFX_TARGET void combine_weight(double* acc, const int32_t* tmp, double w, bool first) {
  const __m512d wv = _mm512_set1_pd(w);
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      const int32_t* tt = tmp + 256 * (2 * a + b);
      for (int m = 0; m < 16; ++m) {
        const __m512i v = _mm512_load_si512(tt + 16 * m);
        const __m512d lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(v));
        const __m512d hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(v, 1));
        double* d = acc + (16 * a + m) * 32 + 16 * b;
        if (first) {
          _mm512_store_pd(d, _mm512_mul_pd(lo, wv));
          _mm512_store_pd(d + 8, _mm512_mul_pd(hi, wv));
        } else {
          _mm512_store_pd(d, _mm512_fmadd_pd(lo, wv, _mm512_load_pd(d)));
          _mm512_store_pd(d + 8, _mm512_fmadd_pd(hi, wv, _mm512_load_pd(d + 8)));
        }
      }
    }
}

// g[i + j*ldg] += acc[j - 32Q][i - 32P] * 2^(E_i + E_j) for i <= j inside [0, dim).
GFX_TARGET void add_block_to_g(const double* acc, const int64_t* expo, int64_t p, int64_t q, int64_t dim,
                               double* g, int64_t ldg) {
  for (int jl = 0; jl < 32; ++jl) {
    const int64_t j = 32 * q + jl;
    if (j >= dim) break;
    const __m512i ej = _mm512_set1_epi64(expo[j] + 1023);
    for (int v = 0; v < 4; ++v) {
      const int64_t i0 = 32 * p + 8 * v;
      const int64_t lim = std::min(dim, j + 1);
      if (i0 >= lim) break;
      const __mmask8 m = lane_mask(lim - i0);
      const __m512d sc =
          _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_add_epi64(_mm512_load_si512(expo + i0), ej), 52));
      double* gj = g + j * ldg + i0;
      const __m512d add = _mm512_mul_pd(_mm512_load_pd(acc + jl * 32 + 8 * v), sc);
      _mm512_mask_storeu_pd(gj, m, _mm512_add_pd(_mm512_maskz_loadu_pd(m, gj), add));
    }
  }
}

// A tiles of steps [0, nsteps) of every feature tile (feature tiles tile_stride bytes apart).
GFX_TARGET void transpose_all(const int8_t* bp, int8_t* ap, int64_t ntiles, int64_t tile_stride,
                              int64_t nsteps, int s) {
  for (int64_t f = 0; f < ntiles; ++f)
    for (int64_t t = 0; t < nsteps * s; ++t) {
      const int64_t off = f * tile_stride + t * kTileBytes;
      transpose16x16_words(bp + off, ap + off);
    }
}

template <bool kEmu>
GFX_TARGET void sweep(const int8_t* ap, const int8_t* bp, int64_t nblk, int64_t tile_stride,
                      int64_t nsteps, int s, const int64_t* expo, int64_t dim, double* g, int64_t ldg) {
  // Row blocks are taken in groups whose B panels (2 tiles x all steps x all slices each) fit in
  // about half of L2, and every column block Q runs over the group: each A(Q) panel then comes
  // from L3 once per group instead of a B panel per block (measured ~2x fewer ns per product).
  const int64_t group = std::max<int64_t>(1, kPanelBudget / (2 * tile_stride));
  alignas(64) int32_t tmp[1024];
  alignas(64) double acc[1024];
  for (int64_t p0 = 0; p0 < nblk; p0 += group) {
    const int64_t p1 = std::min(nblk, p0 + group);
    for (int64_t q = p0; q < nblk; ++q) {
      const int8_t* a0 = ap + 2 * q * tile_stride;
      for (int64_t p = p0; p < std::min(p1, q + 1); ++p) {
        const int8_t* b0 = bp + 2 * p * tile_stride;
        for (int c = 2 * s; c >= 2; --c) {
#ifdef GEOMFAST_AMX_EXACT_PROFILE
          auto t0 = GFX_PROF_NOW();
#endif
          kernel_weight<kEmu>(tmp, a0, a0 + tile_stride, b0, b0 + tile_stride, nsteps, s, c);
          GFX_COMPILER_BARRIER();
#ifdef GEOMFAST_AMX_EXACT_PROFILE
          GFX_PROF_ADD(geomfast_exact_prof_tile_s, t0);
          auto t1 = GFX_PROF_NOW();
#endif
          combine_weight(acc, tmp, std::ldexp(1.0, 2 - 8 * c), c == 2 * s);
#ifdef GEOMFAST_AMX_EXACT_PROFILE
          GFX_PROF_ADD(geomfast_exact_prof_combine_s, t1);
#endif
        }
#ifdef GEOMFAST_AMX_EXACT_PROFILE
        auto t2 = GFX_PROF_NOW();
#endif
        add_block_to_g(acc, expo, p, q, dim, g, ldg);
#ifdef GEOMFAST_AMX_EXACT_PROFILE
        GFX_PROF_ADD(geomfast_exact_prof_combine_s, t2);
#endif
      }
    }
  }
}

std::string compute_exact_reason() {
  const std::string& base = unavailable_reason();
  if (!base.empty()) return base;
  const CpuFeatures f = read_cpu_features();
  if (!f.amx_int8) return "CPU lacks AMX-INT8";
  if (!f.vbmi) return "CPU lacks AVX512-VBMI";
  return "";
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#else  // !__x86_64__

std::string compute_exact_reason() { return "not an x86-64 build"; }

#endif

void fallback_dsyrk(const double* a, int64_t n, int64_t lda, int64_t dim, double* g, int64_t ldg) {
  if (n <= 0) return;
  GF_BLAS(cblas_dsyrk)(blas::kColMajor, blas::kUpper, blas::kNoTrans, static_cast<int>(dim),
                       static_cast<int>(n), 1.0, a, static_cast<int>(lda), 1.0, g, static_cast<int>(ldg));
}

}  // namespace

const std::string& exact_unavailable_reason() {
  static const std::string reason = compute_exact_reason();
  return reason;
}

ExactSyrk::ExactSyrk(int64_t dim, bool emulate) : dim_(dim), emulate_(emulate) {
  if (dim < 1) throw std::invalid_argument("ExactSyrk: dim must be >= 1");
  if (emulate && !emulation_available())
    throw std::runtime_error("ExactSyrk: AMX emulation unavailable: " + emulation_unavailable_reason());
  if (!emulate && !exact_available())
    throw std::runtime_error("ExactSyrk: AMX-INT8 unavailable: " + exact_unavailable_reason());
  nblk_ = (dim + 31) / 32;
  const size_t dimp = static_cast<size_t>(32 * nblk_);
  colmax_ = aligned_buffer(dimp * sizeof(double));
  scale_ = aligned_buffer(dimp * sizeof(double));
  expo_ = aligned_buffer(dimp * sizeof(int64_t));
  rowcls_ = aligned_buffer(kBlockRows);
  ubuf_ = aligned_buffer(static_cast<size_t>(4 * dimp) * sizeof(int64_t));
  rownb_ = aligned_buffer(8 * kBlockRows * sizeof(uint16_t));
  invscale_ = aligned_buffer(dimp * sizeof(double));
  hrow_ = aligned_buffer(dimp * sizeof(double));
  lrow_ = aligned_buffer(dimp * sizeof(double));
  colslot_ = aligned_buffer(2 * dimp * sizeof(int32_t));
  split_cols_ = std::min<int64_t>(static_cast<int64_t>(dimp), GEOMFAST_EXACT_SPLIT_COLS);
  rbuf_ = aligned_buffer(static_cast<size_t>(2 * split_cols_) * dimp * sizeof(double));
}

ExactSyrk::~ExactSyrk() = default;
ExactSyrk::ExactSyrk(ExactSyrk&&) noexcept = default;
ExactSyrk& ExactSyrk::operator=(ExactSyrk&&) noexcept = default;

void ExactSyrk::ensure_pack(size_t bytes) {
  if (bytes <= pack_bytes_) return;
  apack_ = aligned_buffer(bytes);
  bpack_ = aligned_buffer(bytes);
  pack_bytes_ = bytes;
}

void ExactSyrk::ensure_fallback(size_t bytes) {
  if (bytes <= fb_bytes_) return;
  fb_ = aligned_buffer(bytes);
  fb_bytes_ = bytes;
}

int64_t ExactSyrk::update(const double* y, int64_t rows, int64_t ld, double* g, int64_t ldg) {
  if (rows < 0) throw std::invalid_argument("ExactSyrk::update: rows must be >= 0");
  if (ld < dim_) throw std::invalid_argument("ExactSyrk::update: ld must be >= dim");
  if (ldg < dim_) throw std::invalid_argument("ExactSyrk::update: ldg must be >= dim");
  if (rows == 0) return 0;
  if (y == nullptr || g == nullptr) throw std::invalid_argument("ExactSyrk::update: null pointer");
  int64_t fallback = 0;
  for (int64_t r = 0; r < rows; r += kBlockRows)
    fallback += block(y + r * ld, std::min(kBlockRows, rows - r), ld, g, ldg);
  return fallback;
}

// Slice count for a block of n rows, from each row's class cls[t] and remainder counts
// nb[t][k], trying k in [klo, khi]: the cheapest by the cost model; 0 when dsyrk on the whole
// block is cheaper (or more than a quarter of the rows would go to dsyrk); -1 when every row is 0.
int ExactSyrk::choose_slices(const int8_t* cls, const uint16_t* nb, int64_t n, int klo, int khi) const {
  int64_t nzero = 0;
  for (int64_t t = 0; t < n; ++t) nzero += cls[t] == 0;
  if (nzero == n) return -1;
#ifdef GEOMFAST_EXACT_FORCE_SLICES  // tests: exercise the split / fallback paths
  return GEOMFAST_EXACT_FORCE_SLICES;
#endif
  const double per_dim = 1024.0 / static_cast<double>(32 * nblk_);  // row-linear work, in units
  const double pack_cost = GEOMFAST_EXACT_PACK_COST * per_dim;
  const int64_t max_l = std::max<int64_t>(1, dim_ / GEOMFAST_EXACT_SPLIT_DIV);
  double best = static_cast<double>(n) * GEOMFAST_EXACT_DSYRK_ROW_COST;
  int s = 0;
  for (int k = klo; k <= khi; ++k) {
    double cost = GEOMFAST_EXACT_COMBINE_COST * (2 * k - 1);
    // Remainders are assumed to fall in distinct columns (the split buffer's limit is on columns).
    int64_t ndsyrk = 0, nexact = 0, cols = 0;
    for (int64_t t = 0; t < n; ++t) {
      if (cls[t] == 0) continue;
      const int64_t l = cls[t] <= k ? 0 : nb[8 * t + k];
      if (l <= max_l && cols + l <= split_cols_) {
        ++nexact;
        cols += l;
        cost += k * k + pack_cost +
                (l > 0 ? GEOMFAST_EXACT_SPLIT_COST * per_dim * (1.0 + GEOMFAST_EXACT_SPLIT_VALUE_COST * l) : 0.0);
      } else {
        ++ndsyrk;
        cost += GEOMFAST_EXACT_DSYRK_ROW_COST + pack_cost;
      }
    }
    if (nexact == 0 || 4 * ndsyrk > n) continue;
    if (cost < best) {
      best = cost;
      s = k;
    }
  }
  return s;
}

int64_t ExactSyrk::block(const double* y, int64_t n, int64_t ld, double* g, int64_t ldg) {
#if defined(__x86_64__)
#ifdef GEOMFAST_AMX_EXACT_PROFILE
  auto t0 = GFX_PROF_NOW();
#endif
  const int64_t dim = dim_, dimp = 32 * nblk_;
  double* colmax = static_cast<double*>(colmax_.get());
  double* scale = static_cast<double*>(scale_.get());
  int64_t* expo = static_cast<int64_t*>(expo_.get());
  double* invscale = static_cast<double*>(invscale_.get());
  int8_t* cls = static_cast<int8_t*>(rowcls_.get());
  uint16_t* nb = static_cast<uint16_t*>(rownb_.get());

  auto dsyrk_rows = [&](const double* a, int64_t rows, int64_t lda) {
#ifdef GEOMFAST_AMX_EXACT_PROFILE
    auto tf = GFX_PROF_NOW();
#endif
    fallback_dsyrk(a, rows, lda, dim, g, ldg);
#ifdef GEOMFAST_AMX_EXACT_PROFILE
    GFX_PROF_ADD(geomfast_exact_prof_fallback_s, tf);
#endif
    rows_fallback_ += rows;
  };
  auto whole_block_dsyrk = [&]() {
    dsyrk_rows(y, n, ld);
    ++blocks_by_slices_[0];
    next_slices_ = 0;
    return n;
  };

  // Too few rows to pay for the scan: the tile path costs at least one combine per weight.
  if (static_cast<double>(n) * GEOMFAST_EXACT_DSYRK_ROW_COST < GEOMFAST_EXACT_COMBINE_COST * 3.0)
    return whole_block_dsyrk();

  column_max(y, n, ld, dim, dimp, colmax);
  for (int64_t i = 0; i < dimp; ++i) {
    if (colmax[i] == 0.0) {  // all-zero (or padding) column: digits 0, nothing to add
      scale[i] = 0.0;
      invscale[i] = 1.0;
      expo[i] = 0;
      continue;
    }
    int e = 0;
    std::frexp(colmax[i], &e);  // colmax = f 2^e, f in [0.5, 1): smallest E with |y| < 2^E is e
    if (e > kMaxExp || e < -kMaxExp) return whole_block_dsyrk();
    scale[i] = std::ldexp(1.0, 55 - e);
    invscale[i] = std::ldexp(1.0, e - 55);
    expo[i] = e;
  }

  // The slice count: what the previous block's rows favoured (blocks of one data stream look
  // alike), else from a scan of this block's rows. A poor guess costs time, never accuracy: rows
  // that need more slices go to dsyrk.
  int s = next_slices_;
  if (s == 0) {
    for (int64_t t = 0; t < n; ++t)
      cls[t] = static_cast<int8_t>(row_scan(y + t * ld, dim, dimp, scale, nullptr, 1, kMaxSlices, nb + 8 * t));
    s = choose_slices(cls, nb, n, 1, kMaxSlices);
    if (s < 0) {
      rows_zero_ += n;
      return 0;
    }
    if (s == 0) return whole_block_dsyrk();
  }
#ifdef GEOMFAST_AMX_EXACT_PROFILE
  GFX_PROF_ADD(geomfast_exact_prof_scan_s, t0);
  auto t1 = GFX_PROF_NOW();
#endif

  // One pass over the rows: U of each row into a four-row buffer (L1), its class; representable
  // rows are packed four at a time, the others gathered for dsyrk (flushed when the buffer fills).
  const int64_t ntiles = 2 * nblk_;
  const int64_t steps_alloc = (n + 63) / 64;
  const int64_t tile_stride = steps_alloc * s * kTileBytes;  // between consecutive feature tiles
  ensure_pack(static_cast<size_t>(ntiles * tile_stride));
  const int64_t fb_cap = std::max<int64_t>(1, n / 4);
  ensure_fallback(static_cast<size_t>(fb_cap * dim) * sizeof(double));
  int8_t* ap = static_cast<int8_t*>(apack_.get());
  int8_t* bp = static_cast<int8_t*>(bpack_.get());
  double* fb = static_cast<double*>(fb_.get());
  int64_t* ubuf = static_cast<int64_t*>(ubuf_.get());
  const int64_t* quad[4] = {ubuf, ubuf + dimp, ubuf + 2 * dimp, ubuf + 3 * dimp};
  auto quad_dst = [&](int64_t q) { return bp + (q / 16) * s * kTileBytes + (q % 16) * 64; };
  // Rows that need more slices are split, y = h + l, when l has few non-zeros: h goes through the
  // tiles and y y^T - h h^T = l y^T + h l^T (upper part) is summed in float64 into rbuf (for each
  // column a with a non-zero l: row a and column a of the upper triangle), added to g at the end
  // of the block. Rows with many non-zero l, or once rbuf is full, go to dsyrk.
  double* hrow = static_cast<double*>(hrow_.get());
  double* lrow = static_cast<double*>(lrow_.get());
  double* rbuf = static_cast<double*>(rbuf_.get());
  int32_t* colslot = static_cast<int32_t*>(colslot_.get());
  int32_t* kcols = colslot + dimp;
  const int64_t max_split_cols = split_cols_;
  const int64_t max_l = std::max<int64_t>(1, dim / GEOMFAST_EXACT_SPLIT_DIV);
  int64_t nsplitcols = 0;
  std::fill(colslot, colslot + dimp, -1);
  // Remainder counts for the neighbouring slice counts too: the next block's choice.
  const int klo = std::max(1, s - 1), khi = std::min(kMaxSlices, s + 1);
  int64_t nex = 0, nfb = 0, nfb_total = 0, nzero = 0;
  int slot = 0;
  for (int64_t t = 0; t < n; ++t) {
    const int c = row_scan(y + t * ld, dim, dimp, scale, ubuf + slot * dimp, klo, khi, nb + 8 * t);
    cls[t] = static_cast<int8_t>(c);
    if (c == 0) {
      ++nzero;
      continue;
    }
    bool exact = c <= s;
    if (!exact) {
      const double* row = y + t * ld;
      const int64_t nl = nb[8 * t + s];
      if (nl <= max_l) split_row(row, dim, dimp, scale, invscale, s, ubuf + slot * dimp, hrow, lrow);
      int64_t newcols = 0;
      if (nl <= max_l)
        for (int64_t a = 0; a < dim; ++a) newcols += lrow[a] != 0.0 && colslot[a] < 0;
      if (nl <= max_l && nsplitcols + newcols <= max_split_cols) {
        for (int64_t a = 0; a < dim; ++a) {
          if (lrow[a] == 0.0) continue;
          if (colslot[a] < 0) {
            kcols[nsplitcols] = static_cast<int32_t>(a);
            colslot[a] = static_cast<int32_t>(nsplitcols++);
            std::memset(rbuf + 2 * colslot[a] * dimp, 0, static_cast<size_t>(2 * dimp) * sizeof(double));
          }
          double* rb = rbuf + 2 * colslot[a] * dimp;
          split_update(row, hrow, lrow[a], a, dim, rb + dimp, rb);
        }
        ++rows_split_;
        exact = true;
      }
    }
    if (exact) {
      ++nex;
      if (++slot == 4) {
        pack_quad(quad, ntiles, s, quad_dst(nex / 4 - 1), tile_stride);
        slot = 0;
      }
      continue;
    }
    std::memcpy(fb + nfb * dim, y + t * ld, static_cast<size_t>(dim) * sizeof(double));
    if (++nfb == fb_cap) {
      dsyrk_rows(fb, nfb, dim);
      nfb_total += nfb;
      nfb = 0;
    }
  }
  const int64_t nsteps = (nex + 63) / 64;
  int64_t q = nex / 4;
  if (slot > 0) {  // last partial quad, zero-padded
    const int64_t* part[4] = {nullptr, nullptr, nullptr, nullptr};
    for (int r = 0; r < slot; ++r) part[r] = quad[r];
    pack_quad(part, ntiles, s, quad_dst(q++), tile_stride);
  }
  const int64_t* none[4] = {nullptr, nullptr, nullptr, nullptr};
  for (; q < nsteps * 16; ++q) pack_quad(none, ntiles, s, quad_dst(q), tile_stride);
  transpose_all(bp, ap, ntiles, tile_stride, nsteps, s);
  GFX_COMPILER_BARRIER();
#ifdef GEOMFAST_AMX_EXACT_PROFILE
  GFX_PROF_ADD(geomfast_exact_prof_pack_s, t1);
#endif

  if (nsteps > 0) {
    if (emulate_) {
      sweep<true>(ap, bp, nblk_, tile_stride, nsteps, s, expo, dim, g, ldg);
    } else {
      load_tile_config();
      sweep<false>(ap, bp, nblk_, tile_stride, nsteps, s, expo, dim, g, ldg);
      release_tiles();
    }
    GFX_COMPILER_BARRIER();
  }
  if (nfb > 0) dsyrk_rows(fb, nfb, dim);
  nfb_total += nfb;
  for (int64_t k = 0; k < nsplitcols; ++k) {  // row a (columns b >= a) and column a (rows i <= a)
    const int64_t a = kcols[k];
    const double* r = rbuf + 2 * k * dimp;
    for (int64_t b = a; b < dim; ++b) g[a + b * ldg] += r[b];
    for (int64_t i = 0; i <= a; ++i) g[i + a * ldg] += r[dimp + i];
  }
  rows_exact_ += nex;
  rows_zero_ += nzero;
  ++blocks_by_slices_[s];
  next_slices_ = std::max(0, choose_slices(cls, nb, n, klo, khi));
  return nfb_total;
#else
  (void)y;
  (void)n;
  (void)ld;
  (void)g;
  (void)ldg;
  throw std::runtime_error("ExactSyrk: AMX-INT8 unavailable: " + exact_unavailable_reason());
#endif
}

}  // namespace geomfast::cpu::amx
