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
