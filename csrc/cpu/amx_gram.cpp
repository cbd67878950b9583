// AMX-BF16 split Gram (see amx_gram.hpp).
//
// Per update(), rows are processed in chunks of kChunkRows (zero-padded to a multiple of 32):
//   pack   for every 16-feature tile t and 32-row step s, the three bf16 parts (hi, mid, lo) in
//          two layouts, each a 16x64-byte tile:
//            B (VNNI)  row k = 16 features x the sample pair (2k, 2k+1)
//            A         row m = feature m's 32 samples = the 32-bit-word transpose of B
//          stored as [t][s][part] so one step of one tile is 3 KiB contiguous;
//   sweep  over the upper 32x32 blocks (P <= Q), j-blocked so that the B panels stay in L2
//          (A(P) is reused across the row of blocks). Each block is a 2x2 tile kernel (4 C tiles,
//          2 A, 2 B) that runs the six part products per step as 24 TDPBF16PS with 16 tile loads
//          (each B part loaded once, the A reloads hit L1) and prefetches the next step's A and B
//          tiles into L1 meanwhile.
//          The tiles start from zero each chunk and the chunk sum is added into the float32
//          accumulator with AVX-512 (two-level summation, see add_block).
// The float32 accumulator holds only the upper blocks; flush_into adds it into float64.
#include "cpu/amx_gram.hpp"
#include "cpu/amx_common.hpp"
#include "cpu/amx_emulation.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__)
#include <immintrin.h>
#if defined(__linux__)
#include <cerrno>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

#ifdef GEOMFAST_AMX_PROFILE
#include <chrono>
extern "C" double geomfast_amx_prof_pack_s, geomfast_amx_prof_tile_s;
double geomfast_amx_prof_pack_s = 0, geomfast_amx_prof_tile_s = 0;
#endif

namespace geomfast::cpu::amx {

namespace {

#ifndef GEOMFAST_AMX_CHUNK_ROWS
#define GEOMFAST_AMX_CHUNK_ROWS 256
#endif
#ifndef GEOMFAST_AMX_PANEL_BYTES
#define GEOMFAST_AMX_PANEL_BYTES (1 << 20)
#endif
// Rows per chunk: the tiles sum one chunk, then it is added into the float32 accumulator. 256
// (measured against 128 and 512): fewer accumulator passes vs. panels that fit L1/L2.
constexpr int64_t kChunkRows = GEOMFAST_AMX_CHUNK_ROWS;  // multiple of 32
static_assert(kChunkRows % 32 == 0, "chunk rows must be a multiple of 32");
constexpr int64_t kPanelBytes = GEOMFAST_AMX_PANEL_BYTES;  // B panel budget per j-block (L2)
constexpr int64_t kTileElems = 512;                         // bf16 per 16x64-byte tile
constexpr int64_t kStepElems = 3 * kTileElems;              // hi, mid, lo
constexpr int64_t kBlockFloats = 1024;                      // 32x32 block = four 16x16 tiles

inline int64_t block_index(int64_t p, int64_t q, int64_t np) {  // p <= q, row-major upper
  return p * np - p * (p - 1) / 2 + (q - p);
}

#if defined(__x86_64__)

// GCC 12's AVX-512 headers self-initialise their "undefined" vectors, which -Wall reports inside
// target-attribute functions; the values are never used.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define GF_AMX_TARGET \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define GF_COMPILER_BARRIER() __asm__ __volatile__("" ::: "memory")
// Tile loads, stores and zeroing: GF_TILE_LOAD/STORE/ZERO of amx_emulation.hpp (instructions, or
// the software model in the kEmu instantiations).
#define GF_TILE_DPBF16PS(c, a, b)              \
  do {                                         \
    if constexpr (kEmu) emu::dpbf16ps(c, a, b); \
    else _tile_dpbf16ps(c, a, b);              \
  } while (0)

// Exact three-way split x = hi + mid + lo with every part a bfloat16 (8 significant bits) held as
// float32 bits (low half-word zero). Veltkamp splitting with factor 2^16 + 1: c = x*K,
// hi = c - (c - x) keeps the leading 8 bits (round to nearest), r = x - hi is exact and has <= 16
// significant bits, the same split of r gives mid, and lo = r - mid has <= 8 bits, so all three
// are exact. (Overflows for |x| > ~5e33, where x*x overflows float32 anyway; bf16 denormal parts
// are flushed to zero by the tile unit: an absolute error below ~1e-38.)
// The products are rounded explicitly: an empty asm hides them from the compiler, which would
// otherwise contract x*K - x into an FMA (GCC's default -ffp-contract=fast) and break the split.
GF_AMX_TARGET inline void split3(__m512 x, __m512i& hi, __m512i& mid, __m512i& lo) {
  const __m512 k = _mm512_set1_ps(65537.0f);
  __m512 c = _mm512_mul_ps(x, k);
  __asm__("" : "+v"(c));
  const __m512 h = _mm512_sub_ps(c, _mm512_sub_ps(c, x));
  const __m512 r = _mm512_sub_ps(x, h);
  __m512 c2 = _mm512_mul_ps(r, k);
  __asm__("" : "+v"(c2));
  const __m512 m = _mm512_sub_ps(c2, _mm512_sub_ps(c2, r));
  hi = _mm512_castps_si512(h);
  mid = _mm512_castps_si512(m);
  lo = _mm512_castps_si512(_mm512_sub_ps(r, m));
}

// Packs rows [0, nrows) of y (zero-padded to steps*32 rows and ntiles*16 features). lo_blk[p]
// (32-feature block p = tiles 2p, 2p+1) is set when any lo part of the block is non-zero; where it
// is not, the products with lo are exactly zero and the kernel skips them (values with at most 16
// significant bits, e.g. bf16 input centred on a bf16 shift, need only hi and mid).
GF_AMX_TARGET void pack_chunk(const float* y, int64_t nrows, int64_t ld, int64_t dim,
                              int64_t ntiles, int64_t steps, uint16_t* ap, uint16_t* bp, uint8_t* lo_blk) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t p = 0; p < ntiles / 2; ++p) lo_blk[p] = 0;
  for (int64_t s = 0; s < steps; ++s) {  // 32 rows at a time, read left to right
    for (int64_t t = 0; t < ntiles; ++t) {
      __m512i lo_any = _mm512_setzero_si512();
      const int64_t f0 = 16 * t;
      const int64_t nf = std::min<int64_t>(16, dim - f0);
      const __mmask16 m = nf >= 16 ? static_cast<__mmask16>(0xffff)
                                   : static_cast<__mmask16>((1u << std::max<int64_t>(nf, 0)) - 1u);
      const int64_t off = (t * steps + s) * kStepElems;
      uint16_t* bt = bp + off;
      for (int k = 0; k < 16; ++k) {
        const int64_t r0 = 32 * s + 2 * k;
        const __m512 x0 = r0 < nrows ? _mm512_maskz_loadu_ps(m, y + r0 * ld + f0) : zero;
        const __m512 x1 = r0 + 1 < nrows ? _mm512_maskz_loadu_ps(m, y + (r0 + 1) * ld + f0) : zero;
        __m512i h0, m0, l0, h1, m1, l1;
        split3(x0, h0, m0, l0);
        split3(x1, h1, m1, l1);
        // word 2n = sample 2k (low half), word 2n+1 = sample 2k+1
        _mm512_store_si512(bt + 32 * k, _mm512_or_si512(h1, _mm512_srli_epi32(h0, 16)));
        _mm512_store_si512(bt + kTileElems + 32 * k, _mm512_or_si512(m1, _mm512_srli_epi32(m0, 16)));
        const __m512i lw = _mm512_or_si512(l1, _mm512_srli_epi32(l0, 16));
        _mm512_store_si512(bt + 2 * kTileElems + 32 * k, lw);
        lo_any = _mm512_or_si512(lo_any, lw);
      }
      if (_mm512_test_epi32_mask(lo_any, lo_any) != 0) lo_blk[t / 2] = 1;
      for (int p = 0; p < 3; ++p) transpose16x16_words(bt + p * kTileElems, ap + off + p * kTileElems);
    }
  }
}

// tmp (32x32 block: tiles 00, 01, 10, 11) = six part products over `steps` 32-row steps.
// a0/a1: A steps of feature tiles 2P, 2P+1; b0/b1: B steps of tiles 2Q, 2Q+1 (stride kStepElems).
// kLoA / kLoB false: block P's / Q's lo parts are all zero in this chunk, so lo.hi / hi.lo (exactly
// zero) are skipped.
template <bool kEmu, bool kLoA, bool kLoB>
GF_AMX_TARGET void kernel_2x2(float* tmp, const uint16_t* a0, const uint16_t* a1, const uint16_t* b0,
                              const uint16_t* b1, int64_t steps) {
  constexpr long S = 64;
  GF_TILE_ZERO(0);
  GF_TILE_ZERO(1);
  GF_TILE_ZERO(2);
  GF_TILE_ZERO(3);
#define GF_DP4()                \
  GF_TILE_DPBF16PS(0, 4, 6);    \
  GF_TILE_DPBF16PS(1, 4, 7);    \
  GF_TILE_DPBF16PS(2, 5, 6);    \
  GF_TILE_DPBF16PS(3, 5, 7)
  // Part order lo.hi, mid.hi, hi.hi, hi.mid, mid.mid, hi.lo: each B part is loaded once per step,
  // the A reloads hit L1. The next step's A and B tiles are prefetched into L1 meanwhile (at the
  // last step that is the next feature tile's first step: harmless).
#define GF_PF8(p)                                                     \
  for (int i_ = 0; i_ < 8; ++i_)                                      \
  _mm_prefetch(reinterpret_cast<const char*>(p) + 64 * i_, _MM_HINT_T0)
  for (int64_t s = 0; s < steps; ++s) {
    const uint16_t* n0 = b0 + kStepElems;
    const uint16_t* n1 = b1 + kStepElems;
    GF_TILE_LOAD(6, b0, S);
    GF_TILE_LOAD(7, b1, S);
    if (kLoA) {
      GF_TILE_LOAD(4, a0 + 2 * kTileElems, S);  // lo . hi
      GF_TILE_LOAD(5, a1 + 2 * kTileElems, S);
      GF_DP4();
    }
    GF_PF8(n0);
    GF_PF8(n1);
    GF_PF8(a0 + kStepElems);
    GF_PF8(a1 + kStepElems);
    GF_TILE_LOAD(4, a0 + kTileElems, S);  // mid . hi
    GF_TILE_LOAD(5, a1 + kTileElems, S);
    GF_DP4();
    GF_PF8(n0 + 256);
    GF_PF8(n1 + 256);
    GF_PF8(a0 + kStepElems + 256);
    GF_PF8(a1 + kStepElems + 256);
    GF_TILE_LOAD(4, a0, S);  // hi . hi
    GF_TILE_LOAD(5, a1, S);
    GF_DP4();
    GF_PF8(n0 + 512);
    GF_PF8(n1 + 512);
    GF_PF8(a0 + kStepElems + 512);
    GF_PF8(a1 + kStepElems + 512);
    GF_TILE_LOAD(6, b0 + kTileElems, S);  // hi . mid
    GF_TILE_LOAD(7, b1 + kTileElems, S);
    GF_DP4();
    GF_PF8(n0 + 768);
    GF_PF8(n1 + 768);
    GF_PF8(a0 + kStepElems + 768);
    GF_PF8(a1 + kStepElems + 768);
    GF_TILE_LOAD(4, a0 + kTileElems, S);  // mid . mid
    GF_TILE_LOAD(5, a1 + kTileElems, S);
    GF_DP4();
    GF_PF8(n0 + 1024);
    GF_PF8(n1 + 1024);
    GF_PF8(a0 + kStepElems + 1024);
    GF_PF8(a1 + kStepElems + 1024);
    if (kLoB) {
      GF_TILE_LOAD(4, a0, S);  // hi . lo
      GF_TILE_LOAD(5, a1, S);
      GF_TILE_LOAD(6, b0 + 2 * kTileElems, S);
      GF_TILE_LOAD(7, b1 + 2 * kTileElems, S);
      GF_DP4();
    }
    GF_PF8(n0 + 1280);
    GF_PF8(n1 + 1280);
    GF_PF8(a0 + kStepElems + 1280);
    GF_PF8(a1 + kStepElems + 1280);
    a0 += kStepElems;
    a1 += kStepElems;
    b0 += kStepElems;
    b1 += kStepElems;
  }
#undef GF_PF8
#undef GF_DP4
  GF_TILE_STORE(0, tmp, S);
  GF_TILE_STORE(1, tmp + 256, S);
  GF_TILE_STORE(2, tmp + 512, S);
  GF_TILE_STORE(3, tmp + 768, S);
}

// acc block += chunk sum. Two-level summation: the tiles hold one chunk's sum only (a single
// running float32 sum over all rows would lose ~sqrt(rows) more accuracy).
GF_AMX_TARGET inline void add_block(float* c, const float* tmp) {
  for (int i = 0; i < kBlockFloats; i += 16)
    _mm512_store_ps(c + i, _mm512_add_ps(_mm512_load_ps(c + i), _mm512_load_ps(tmp + i)));
}

// All upper blocks += this chunk.
template <bool kEmu>
GF_AMX_TARGET void sweep(float* acc, const uint16_t* ap, const uint16_t* bp, int64_t np,
                         int64_t steps, const uint8_t* lo_blk) {
  const int64_t tile_stride = steps * kStepElems;  // elements between consecutive feature tiles
  const int64_t panel_bytes = 2 * tile_stride * 2;  // one 32-feature B panel
  const int64_t jb = std::max<int64_t>(1, kPanelBytes / panel_bytes);
  // The add of block k into the accumulator is issued after block k+1's tile work, so the core
  // does not sit waiting for block k's tile stores before it can feed the tile unit again.
  alignas(64) float tmp[2][kBlockFloats];
  float* pending = nullptr;
  int cur = 0;
  for (int64_t q0 = 0; q0 < np; q0 += jb) {
    const int64_t q1 = std::min(np, q0 + jb);
    for (int64_t p = 0; p < q1; ++p) {
      const uint16_t* a0 = ap + 2 * p * tile_stride;
      const uint16_t* a1 = a0 + tile_stride;
      for (int64_t q = std::max(p, q0); q < q1; ++q) {
        const uint16_t* b0 = bp + 2 * q * tile_stride;
        // this block's accumulator is read after the next block's kernel: fetch it into L2
        const char* accb = reinterpret_cast<const char*>(acc + block_index(p, q, np) * kBlockFloats);
        for (int i = 0; i < 64; ++i) _mm_prefetch(accb + 64 * i, _MM_HINT_T1);
        const uint16_t* b1 = b0 + tile_stride;
        if (lo_blk[p] && lo_blk[q]) kernel_2x2<kEmu, true, true>(tmp[cur], a0, a1, b0, b1, steps);
        else if (lo_blk[p]) kernel_2x2<kEmu, true, false>(tmp[cur], a0, a1, b0, b1, steps);
        else if (lo_blk[q]) kernel_2x2<kEmu, false, true>(tmp[cur], a0, a1, b0, b1, steps);
        else kernel_2x2<kEmu, false, false>(tmp[cur], a0, a1, b0, b1, steps);
        if (pending != nullptr) add_block(pending, tmp[cur ^ 1]);
        pending = acc + block_index(p, q, np) * kBlockFloats;
        cur ^= 1;
      }
    }
  }
  if (pending != nullptr) add_block(pending, tmp[cur ^ 1]);
}

// g[i + j*ldg] += tile(i - r0, j - c0) for i <= j inside [0, dim)^2; the tile is transposed in
// registers so that each column j of g is one contiguous masked vector update (nothing outside
// the upper triangle is read or written).
GF_AMX_TARGET void flush_tile(const float* tile, double* g, int64_t ldg, int64_t r0, int64_t c0,
                              int64_t dim) {
  alignas(64) float t[256];
  transpose16x16_words(reinterpret_cast<const uint16_t*>(tile), reinterpret_cast<uint16_t*>(t));
  const int64_t ncols = std::min<int64_t>(16, dim - c0);
  for (int64_t n = 0; n < ncols; ++n) {
    const int64_t j = c0 + n;
    const int64_t nrow = std::min<int64_t>({16, dim - r0, j - r0 + 1});
    if (nrow <= 0) continue;
    const uint32_t mask = nrow >= 16 ? 0xffffu : (1u << nrow) - 1u;
    const __mmask8 m0 = static_cast<__mmask8>(mask & 0xffu), m1 = static_cast<__mmask8>(mask >> 8);
    const __m512 v = _mm512_load_ps(t + 16 * n);
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi =
        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    double* gj = g + j * ldg + r0;
    _mm512_mask_storeu_pd(gj, m0, _mm512_add_pd(_mm512_maskz_loadu_pd(m0, gj), lo));
    if (m1 != 0) _mm512_mask_storeu_pd(gj + 8, m1, _mm512_add_pd(_mm512_maskz_loadu_pd(m1, gj + 8), hi));
  }
}

std::string compute_unavailable_reason() {
  const CpuFeatures f = read_cpu_features();
  if (!f.leaf7) return "CPU lacks AMX-BF16 (no cpuid leaf 7)";
  if (!f.amx_tile || !f.amx_bf16) return "CPU lacks AMX-TILE/AMX-BF16";
  if (!f.avx512) return "CPU lacks AVX-512 F/BW/DQ/VL";
  if (!f.avx512_bf16) return "CPU lacks AVX512-BF16";
  if (!f.osxsave) return "OS has not enabled XSAVE";
  if ((f.xcr0 & 0xe6u) != 0xe6u) return "OS has not enabled the AVX-512 register state (XCR0)";
  if ((f.xcr0 & 0x60000u) != 0x60000u) return "OS has not enabled the AMX tile state (XCR0)";
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
    return std::string("OS refused tile data (arch_prctl ARCH_REQ_XCOMP_PERM: ") +
           std::strerror(errno) + ")";
  return "";
#else
  return "AMX tile-data permission is only requested on Linux";
#endif
}

// The software model (amx_emulation.hpp) runs the kernels' AVX-512 packing (their target
// attributes include AVX512-BF16) and the model's float32 FMA, so it needs AVX-512 F/BW/DQ/VL,
// AVX512-BF16 and, for the exact kernel's packing, AVX512-VBMI, with the OS's AVX-512 state.
std::string compute_emulation_reason() {
  const CpuFeatures f = read_cpu_features();
  if (!f.leaf7) return "CPU lacks AVX-512 (no cpuid leaf 7)";
  if (!f.avx512) return "CPU lacks AVX-512 F/BW/DQ/VL";
  if (!f.avx512_bf16) return "CPU lacks AVX512-BF16";
  if (!f.vbmi) return "CPU lacks AVX512-VBMI";
  if (!f.osxsave || (f.xcr0 & 0xe6u) != 0xe6u) return "OS has not enabled the AVX-512 register state (XCR0)";
  return "";
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#else  // !__x86_64__

std::string compute_unavailable_reason() { return "not an x86-64 build"; }
std::string compute_emulation_reason() { return "not an x86-64 build"; }

#endif

}  // namespace

const std::string& unavailable_reason() {
  static const std::string reason = [] {
    const char* env = std::getenv("GEOMFAST_AMX");
    if (env != nullptr && std::strcmp(env, "0") == 0) return std::string("disabled by GEOMFAST_AMX=0");
    return compute_unavailable_reason();
  }();
  return reason;
}

const std::string& emulation_unavailable_reason() {
  static const std::string reason = compute_emulation_reason();
  return reason;
}

SplitSyrk::SplitSyrk(int64_t dim, bool emulate) : dim_(dim), emulate_(emulate) {
  if (dim < 1) throw std::invalid_argument("SplitSyrk: dim must be >= 1");
  if (emulate && !emulation_available())
    throw std::runtime_error("SplitSyrk: AMX emulation unavailable: " + emulation_unavailable_reason());
  if (!emulate && !available()) throw std::runtime_error("SplitSyrk: AMX unavailable: " + unavailable_reason());
  npairs_ = (dim + 31) / 32;
  const int64_t nblocks = npairs_ * (npairs_ + 1) / 2;
  const size_t acc_bytes = static_cast<size_t>(nblocks * kBlockFloats) * sizeof(float);
  acc_ = aligned_buffer(acc_bytes);
  std::memset(acc_.get(), 0, acc_bytes);
  const size_t pack_bytes =
      static_cast<size_t>(2 * npairs_ * (kChunkRows / 32) * kStepElems) * sizeof(uint16_t);
  apack_ = aligned_buffer(pack_bytes);
  bpack_ = aligned_buffer(pack_bytes);
  lo_blk_.assign(static_cast<size_t>(npairs_), 1);
}

SplitSyrk::~SplitSyrk() = default;
SplitSyrk::SplitSyrk(SplitSyrk&&) noexcept = default;
SplitSyrk& SplitSyrk::operator=(SplitSyrk&&) noexcept = default;

void SplitSyrk::update(const float* y, int64_t rows, int64_t ld) {
  if (rows < 0) throw std::invalid_argument("SplitSyrk::update: rows must be >= 0");
  if (ld < dim_) throw std::invalid_argument("SplitSyrk::update: ld must be >= dim");
  if (rows == 0) return;
  if (y == nullptr) throw std::invalid_argument("SplitSyrk::update: y is null");
#if defined(__x86_64__)
  float* acc = static_cast<float*>(acc_.get());
  uint16_t* ap = static_cast<uint16_t*>(apack_.get());
  uint16_t* bp = static_cast<uint16_t*>(bpack_.get());
  if (!emulate_) load_tile_config();
  for (int64_t r = 0; r < rows; r += kChunkRows) {
    const int64_t n = std::min(kChunkRows, rows - r);
    const int64_t steps = (n + 31) / 32;
#ifdef GEOMFAST_AMX_PROFILE
    auto t0 = std::chrono::steady_clock::now();
#endif
    pack_chunk(y + r * ld, n, ld, dim_, 2 * npairs_, steps, ap, bp, lo_blk_.data());
    GF_COMPILER_BARRIER();
#ifdef GEOMFAST_AMX_PROFILE
    auto t1 = std::chrono::steady_clock::now();
#endif
    if (emulate_) sweep<true>(acc, ap, bp, npairs_, steps, lo_blk_.data());
    else sweep<false>(acc, ap, bp, npairs_, steps, lo_blk_.data());
    GF_COMPILER_BARRIER();
#ifdef GEOMFAST_AMX_PROFILE
    auto t2 = std::chrono::steady_clock::now();
    geomfast_amx_prof_pack_s += std::chrono::duration<double>(t1 - t0).count();
    geomfast_amx_prof_tile_s += std::chrono::duration<double>(t2 - t1).count();
#endif
  }
  if (!emulate_) release_tiles();
  GF_COMPILER_BARRIER();
  pending_ += rows;
#else
  (void)y;
  throw std::runtime_error("SplitSyrk: AMX unavailable: " + unavailable_reason());
#endif
}

void SplitSyrk::flush_into(double* g, int64_t ldg) {
  if (ldg < dim_) throw std::invalid_argument("SplitSyrk::flush_into: ldg must be >= dim");
  if (g == nullptr) throw std::invalid_argument("SplitSyrk::flush_into: g is null");
  float* acc = static_cast<float*>(acc_.get());
  const int64_t np = npairs_;
  // Column panels of g in order (q outer), so g is streamed column by column.
  for (int64_t q = 0; q < np; ++q) {
    for (int64_t p = 0; p <= q; ++p) {
      float* blk = acc + block_index(p, q, np) * kBlockFloats;
      for (int a = 0; a < 2; ++a) {
        const int64_t r0 = 32 * p + 16 * a;
        if (r0 >= dim_) continue;
        for (int b = 0; b < 2; ++b) {
          const int64_t c0 = 32 * q + 16 * b;
          if (c0 >= dim_) continue;
          const float* tile = blk + (2 * a + b) * 256;
#if defined(__x86_64__)
          flush_tile(tile, g, ldg, r0, c0, dim_);
#else
          const int64_t ncols = std::min<int64_t>(16, dim_ - c0);
          for (int64_t n = 0; n < ncols; ++n) {
            const int64_t j = c0 + n;
            const int64_t nrow = std::min<int64_t>({16, dim_ - r0, j - r0 + 1});
            double* gj = g + j * ldg + r0;
            for (int64_t m = 0; m < nrow; ++m) gj[m] += static_cast<double>(tile[m * 16 + n]);
          }
#endif
        }
      }
      std::memset(blk, 0, kBlockFloats * sizeof(float));
    }
  }
  pending_ = 0;
}

}  // namespace geomfast::cpu::amx
