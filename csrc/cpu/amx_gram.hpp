// AMX-BF16 Gram accumulation with float32-class accuracy: each float32 value is split exactly into
// three bfloat16 parts, y = hi + mid + lo, and
//   yᵀy ≈ hiᵀhi + hiᵀmid + midᵀhi + midᵀmid + hiᵀlo + loᵀhi
// (the dropped terms are ≤ ~2^-24 relative). Every bf16·bf16 product is exact in float32 and the
// tile unit accumulates in float32, so the result is comparable to a float32 ssyrk.
//
// Only the upper-triangle blocks are computed. Everything x86-specific lives in amx_gram.cpp behind
// function target attributes, so this compiles with the normal (no -march) flags; on other CPUs
// unavailable_reason() says why and constructing SplitSyrk throws std::runtime_error.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cpu/aligned_buffer.hpp"

namespace geomfast::cpu::amx {

// "" when the AMX path can run in this process, else why not (not x86-64, CPU lacks
// AMX-BF16/AMX-TILE/AVX512-BF16/AVX-512, OS did not enable or refused the tile state,
// GEOMFAST_AMX=0). Computed once, thread-safe; includes the Linux arch_prctl tile-data request.
const std::string& unavailable_reason();
inline bool available() { return unavailable_reason().empty(); }
// "" when both AMX kernels can run on the software model of the tile instructions
// (amx_emulation.hpp; tests on CPUs without AMX), else why not. GEOMFAST_AMX=0 does not affect it.
const std::string& emulation_unavailable_reason();
inline bool emulation_available() { return emulation_unavailable_reason().empty(); }

// One thread at a time per instance (not thread-safe); distinct instances may run concurrently
// on distinct threads. The tile configuration is loaded at the start of update() and released at
// its end, so no tile state is left behind between calls. A moved-from instance may only be
// destroyed or assigned to.
// Memory: the accumulator is 4 KiB per upper 32x32 block (~2*dim^2 bytes, 33 MiB at dim 4096)
// plus ~12*256*dim bytes of packing scratch (3 MiB per 1024 features).
// Accuracy: products are exact; sums are float32, over 256-row chunks in the tile unit and then
// chunk by chunk in the accumulator, comparable to (measured slightly better than) float32 ssyrk.
// Inputs: finite |y| up to ~5e33 split exactly (beyond that the split overflows; y*y would
// overflow float32 soon after anyway); parts below the float32 normal range (|y| < ~1e-33) are
// flushed to zero by the tile unit, an absolute error < ~1e-38 per value. NaN/Inf propagate.
class SplitSyrk {
 public:
  // dim >= 1 else std::invalid_argument; no AMX (or, with emulate, no emulation): std::runtime_error.
  // emulate: the tile instructions run on the software model (tests).
  explicit SplitSyrk(int64_t dim, bool emulate = false);
  ~SplitSyrk();
  SplitSyrk(SplitSyrk&&) noexcept;
  SplitSyrk& operator=(SplitSyrk&&) noexcept;
  SplitSyrk(const SplitSyrk&) = delete;
  SplitSyrk& operator=(const SplitSyrk&) = delete;

  int64_t dim() const { return dim_; }
  // acc += yᵀy (six split products), y: [rows, dim] row-major float32 with row stride ld >= dim
  // (elements). rows == 0 is a no-op. No alignment requirement on y.
  void update(const float* y, int64_t rows, int64_t ld);
  // g[i + j*ldg] += acc(i, j) for 0 <= i <= j < dim (float64, column-major upper triangle; nothing
  // else in g is read or written), then acc = 0. ldg >= dim.
  void flush_into(double* g, int64_t ldg);
  int64_t pending_rows() const { return pending_; }

 private:
  using Buf = AlignedBuf;

  int64_t dim_ = 0;
  bool emulate_ = false;
  int64_t npairs_ = 0;   // 32-feature blocks (dim padded to a multiple of 32)
  int64_t pending_ = 0;
  Buf acc_;              // float32, upper 32x32 blocks, each block four 16x16 row-major tiles
  Buf apack_, bpack_;    // bf16 packing scratch for one chunk of rows (A: transposed, B: VNNI)
  std::vector<uint8_t> lo_blk_;  // per 32-feature block: any non-zero lo part in the current chunk
};

}  // namespace geomfast::cpu::amx
