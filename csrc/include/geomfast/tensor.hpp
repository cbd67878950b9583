// Non-owning views of caller memory, the only way data enters the core.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace geomfast {

enum class DType : int { kFloat64 = 0, kFloat32 = 1, kFloat16 = 2, kBFloat16 = 3 };

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat64: return 8;
    case DType::kFloat32: return 4;
    default: return 2;
  }
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat64: return "float64";
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "?";
}

enum class DeviceType : int { kCPU = 0, kCUDA = 1 };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;
  bool operator==(const Device& o) const { return type == o.type && (type == DeviceType::kCPU || index == o.index); }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const {
    return type == DeviceType::kCPU ? std::string("cpu") : "cuda:" + std::to_string(index);
  }
};

// A 2-D matrix [rows, cols] in caller memory. Strides are in elements (not bytes), so
// row-major contiguous is (row_stride = cols, col_stride = 1) and column-major is (1, rows).
// `stream` is the CUDA stream (cudaStream_t as an integer, 0 = legacy default) the caller's
// work on `data` is ordered on; ignored for CPU views.
struct MatrixView {
  const void* data = nullptr;
  DType dtype = DType::kFloat64;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;
  int64_t col_stride = 1;
  Device device{};
  std::uintptr_t stream = 0;

  bool row_major_contiguous() const { return col_stride == 1 && (row_stride == cols || rows <= 1); }
  bool col_major_contiguous() const { return row_stride == 1 && (col_stride == rows || cols <= 1); }
};

// The n × n row-major (C-contiguous) float64 matrix at `data` on `device`.
inline MatrixView square_f64_view(const double* data, int64_t n, Device device = {}, std::uintptr_t stream = 0) {
  MatrixView v;
  v.data = data;
  v.dtype = DType::kFloat64;
  v.rows = v.cols = n;
  v.row_stride = n;
  v.col_stride = 1;
  v.device = device;
  v.stream = stream;
  return v;
}

}  // namespace geomfast
