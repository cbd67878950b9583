// A software model of the AMX tile instructions the two AMX kernels use (tile load/store/zero,
// TDPBF16PS and the four TDPB[SU][SU]D), so that those kernels' packing, block indexing, part
// skipping and flushes run — and are tested — on CPUs with AVX-512 but no AMX (AMD Zen 4/5, Intel
// Ice Lake with BF16 absent: see emulation_unavailable_reason). Tests only (GramTuning::amx_emulate):
// the arithmetic is the instructions' as the Intel SDM's pseudocode describes it (exact bf16 or int8
// products; for TDPBF16PS float32 FMA sums into per-instruction temporaries, round to nearest,
// denormals flushed; exact int32 sums for the int8 forms), at a small fraction of the tile unit's
// speed. Real hardware may order its float32 sums differently, so results match it to rounding,
// not bitwise.
//
// The kernels are templates on a bool kEmu; their tile macros expand to these calls when kEmu is
// true and to the real instructions otherwise (if constexpr: no cost on the native path).
#pragma once
#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace geomfast::cpu::amx::emu {

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// The eight 16-row × 64-byte tile registers of this thread (the kernels load, use and store them
// within one call, as with the real tile state).
struct alignas(64) Tiles {
  uint8_t t[8][1024];
};
inline Tiles& tiles() {
  thread_local Tiles state;
  return state;
}

inline void zero(int t) { std::memset(tiles().t[t], 0, 1024); }
inline void load(int t, const void* base, long stride) {
  const auto* src = static_cast<const uint8_t*>(base);
  for (int r = 0; r < 16; ++r) std::memcpy(tiles().t[t] + 64 * r, src + r * stride, 64);
}
inline void store(int t, void* base, long stride) {
  auto* dst = static_cast<uint8_t*>(base);
  for (int r = 0; r < 16; ++r) std::memcpy(dst + r * stride, tiles().t[t] + 64 * r, 64);
}

// C (float32 16×16) += A (16 rows × 16 bf16 pairs) · B (16 pair rows × 16 columns, VNNI layout),
// as the Intel SDM's pseudocode for TDPBF16PS has it: per row m, two float32 temporaries per column
// n start from zero and sum the even and the odd products over k = 0..15 by FMA (round to nearest,
// denormal inputs and outputs flushed to zero), and C[m][n] += (even + odd) at the end.
__attribute__((target("avx512f,avx512dq"))) inline __m512 flush_denormals(__m512 v) {
  const __m512 tiny = _mm512_set1_ps(1.17549435e-38f);  // FLT_MIN
  const __mmask16 keep = _mm512_cmp_ps_mask(_mm512_abs_ps(v), tiny, _CMP_GE_OQ);
  return _mm512_maskz_mov_ps(keep, v);
}
__attribute__((target("avx512f,avx512dq"))) inline void dpbf16ps(int c, int a, int b) {
  Tiles& s = tiles();
  float* cm = reinterpret_cast<float*>(s.t[c]);
  const uint8_t* am = s.t[a];
  const uint8_t* bm = s.t[b];
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u));
  for (int m = 0; m < 16; ++m) {
    __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();
    for (int k = 0; k < 16; ++k) {
      int32_t w;
      std::memcpy(&w, am + 64 * m + 4 * k, 4);
      const uint32_t uw = static_cast<uint32_t>(w);
      uint32_t ae_bits = uw << 16, ao_bits = uw & 0xffff0000u;
      float ae, ao;
      std::memcpy(&ae, &ae_bits, 4);
      std::memcpy(&ao, &ao_bits, 4);
      const __m512i brow = _mm512_loadu_si512(bm + 64 * k);
      const __m512 be = flush_denormals(_mm512_castsi512_ps(_mm512_slli_epi32(brow, 16)));
      const __m512 bo = flush_denormals(_mm512_castsi512_ps(_mm512_and_si512(brow, hi_mask)));
      const __m512 aev = flush_denormals(_mm512_set1_ps(ae)), aov = flush_denormals(_mm512_set1_ps(ao));
      even = flush_denormals(_mm512_fmadd_ps(aev, be, even));
      odd = flush_denormals(_mm512_fmadd_ps(aov, bo, odd));
    }
    const __m512 sum = flush_denormals(_mm512_add_ps(even, odd));
    _mm512_storeu_ps(cm + 16 * m, flush_denormals(_mm512_add_ps(_mm512_loadu_ps(cm + 16 * m), sum)));
  }
}

// C (int32 16×16) += A (16 rows × 16 byte quads) · B (16 quad rows × 16 columns): signed or
// unsigned bytes per operand (TDPBSSD: both signed, TDPBSUD: A signed, TDPBUSD: B signed, TDPBUUD:
// neither). Exact: int32 sums of products of bytes, in any order (the kernels keep them in range).
template <bool kSignedA, bool kSignedB>
inline void dp_int8(int c, int a, int b) {
  Tiles& s = tiles();
  int32_t* cm = reinterpret_cast<int32_t*>(s.t[c]);
  const uint8_t* am = s.t[a];
  const uint8_t* bm = s.t[b];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      int32_t sum = cm[16 * m + n];
      for (int k = 0; k < 16; ++k)
        for (int i = 0; i < 4; ++i) {
          const uint8_t x = am[64 * m + 4 * k + i], y = bm[64 * k + 4 * n + i];
          const int32_t xv = kSignedA ? static_cast<int32_t>(static_cast<int8_t>(x)) : static_cast<int32_t>(x);
          const int32_t yv = kSignedB ? static_cast<int32_t>(static_cast<int8_t>(y)) : static_cast<int32_t>(y);
          sum += xv * yv;
        }
      cm[16 * m + n] = sum;
    }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace geomfast::cpu::amx::emu

// The tile operations of both kernels, inside templates on `bool kEmu`: the model when kEmu, else
// the instructions. Loads and stores are asm with a memory clobber (GCC's intrinsics tell the
// compiler nothing about the memory they read or write), so packing stores and later reads of
// stored tiles are never moved across them.
#define GF_TILE_LOAD(tmm, base, stride)                                                 \
  do {                                                                                 \
    if constexpr (kEmu)                                                                \
      ::geomfast::cpu::amx::emu::load(tmm, (base), (stride));                          \
    else                                                                               \
      __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #tmm                               \
                       : : "r"((const void*)(base)), "r"((long)(stride)) : "memory");  \
  } while (0)
#define GF_TILE_STORE(tmm, base, stride)                                                \
  do {                                                                                 \
    if constexpr (kEmu)                                                                \
      ::geomfast::cpu::amx::emu::store(tmm, (base), (stride));                         \
    else                                                                               \
      __asm__ volatile("tilestored %%tmm" #tmm ", (%0,%1,1)"                           \
                       : : "r"((void*)(base)), "r"((long)(stride)) : "memory");        \
  } while (0)
#define GF_TILE_ZERO(tmm)                                        \
  do {                                                           \
    if constexpr (kEmu) ::geomfast::cpu::amx::emu::zero(tmm);    \
    else _tile_zero(tmm);                                        \
  } while (0)
#endif
