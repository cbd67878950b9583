// A 64-byte-aligned heap buffer (cache lines, AVX-512 vectors, AMX tiles), owned by a unique_ptr.
#pragma once
#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>

namespace geomfast::cpu {

struct AlignedFree {
  void operator()(void* p) const noexcept { ::operator delete(p, std::align_val_t{64}); }
};
using AlignedBuf = std::unique_ptr<void, AlignedFree>;

// At least `bytes` (and at least 64), uninitialised.
inline AlignedBuf aligned_buffer(size_t bytes) {
  return AlignedBuf(::operator new(std::max<size_t>(bytes, 64), std::align_val_t{64}));
}

}  // namespace geomfast::cpu
