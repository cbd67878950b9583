// What both AMX kernels (amx_gram.cpp, amx_exact.cpp) share: the tile configuration (eight
// 16-row × 64-byte tiles) and the 16×16 word transpose from B to A tile layout.
#pragma once
#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace geomfast::cpu::amx {

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 headers self-initialise their "undefined" vectors, which -Wall reports inside
// target-attribute functions; the values are never used.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// What cpuid and XCR0 say about the features the AMX kernels and their software model use (one
// reading for both kernels, so that their availability checks cannot drift apart).
struct CpuFeatures {
  bool leaf7 = false, osxsave = false, avx512 = false, avx512_bf16 = false, vbmi = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
  uint64_t xcr0 = 0;
};

inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

inline CpuFeatures read_cpu_features() {
  CpuFeatures f;
  uint32_t r[4];
  cpuid(0, 0, r);
  f.leaf7 = r[0] >= 7;
  if (!f.leaf7) return f;
  cpuid(1, 0, r);
  f.osxsave = (r[2] >> 27) & 1u;
  cpuid(7, 0, r);
  const uint32_t max_sub = r[0], ebx = r[1], ecx = r[2], edx = r[3];
  f.avx512 = ((ebx >> 16) & 1u) && ((ebx >> 17) & 1u) && ((ebx >> 30) & 1u) && ((ebx >> 31) & 1u);  // F DQ BW VL
  f.vbmi = (ecx >> 1) & 1u;
  f.amx_bf16 = (edx >> 22) & 1u;
  f.amx_tile = (edx >> 24) & 1u;
  f.amx_int8 = (edx >> 25) & 1u;
  if (max_sub >= 1) {
    cpuid(7, 1, r);
    f.avx512_bf16 = (r[0] >> 5) & 1u;
  }
  if (f.osxsave) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    f.xcr0 = (static_cast<uint64_t>(hi) << 32) | lo;
  }
  return f;
}

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// All eight tiles 16 rows × 64 bytes (palette 1).
__attribute__((target("amx-tile"))) inline void load_tile_config() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  // Own asm: GCC 12's _tile_loadconfig declares only 8 bytes of the config as read, so the
  // compiler may drop the stores that fill the rest.
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");
}

__attribute__((target("amx-tile"))) inline void release_tiles() { _tile_release(); }

// 16×16 transpose of 32-bit words, turning a B tile (VNNI layout: row k = 16 features × one group
// of samples) into the A tile of the same values (row m = one feature's samples): src and dst are
// 16 rows of 64 bytes, 64-byte aligned.
__attribute__((target("avx512f"))) inline void transpose16x16_words(const void* src, void* dst) {
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  __m512i r[16], a[16], b[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(s + 64 * i);
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    b[4 * i + 0] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  // b[4i + c], 128-bit lane L: rows 4i..4i+3 of column 4L + c; output row 4L + c gathers lane L
  // of b[c], b[4 + c], b[8 + c], b[12 + c].
  for (int c = 0; c < 4; ++c) {
    const __m512i e0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44);
    const __m512i e1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xEE);
    const __m512i e2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44);
    const __m512i e3 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xEE);
    _mm512_store_si512(d + 64 * (0 + c), _mm512_shuffle_i32x4(e0, e2, 0x88));
    _mm512_store_si512(d + 64 * (4 + c), _mm512_shuffle_i32x4(e0, e2, 0xDD));
    _mm512_store_si512(d + 64 * (8 + c), _mm512_shuffle_i32x4(e1, e3, 0x88));
    _mm512_store_si512(d + 64 * (12 + c), _mm512_shuffle_i32x4(e1, e3, 0xDD));
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace geomfast::cpu::amx
#endif
