"""The array boundary: numpy, torch (CPU and CUDA) and cupy arrays become native views.

Views are made without copies wherever the layout allows (any positive element strides, C- or
F-order); the owner is returned alongside so it stays alive for the duration of the native call.
CUDA arrays carry the caller's current stream. Validation happens here, once; the C++ core
trusts what it is given (apart from cheap re-checks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# dtype codes shared with csrc/include/geomfast/tensor.hpp (DType)
FLOAT64, FLOAT32, FLOAT16, BFLOAT16 = 0, 1, 2, 3
_NUMPY_CODES = {np.dtype(np.float64): FLOAT64, np.dtype(np.float32): FLOAT32, np.dtype(np.float16): FLOAT16}
_TORCH_CODES = {"torch.float64": FLOAT64, "torch.float32": FLOAT32, "torch.float16": FLOAT16, "torch.bfloat16": BFLOAT16}
CPU, CUDA = 0, 1
SUPPORTED = "float64, float32, float16 or bfloat16 (integer and bool arrays are up-cast to float64)"


@dataclass
class View:
    """Arguments of a native call for one 2-D array, plus the object that owns the memory."""

    ptr: int
    dtype: int
    rows: int
    cols: int
    row_stride: int
    col_stride: int
    device_type: int
    device_index: int
    stream: int
    owner: Any

    def args(self) -> tuple:
        return (self.ptr, self.dtype, self.rows, self.cols, self.row_stride, self.col_stride,
                self.device_type, self.device_index, self.stream)

    @property
    def device(self) -> str:
        return "cpu" if self.device_type == CPU else f"cuda:{self.device_index}"


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy")


def device_of(x) -> str:
    """'cpu' or 'cuda:i' for a numpy / torch / cupy array."""
    if _is_torch(x):
        if x.device.type == "cuda":
            return f"cuda:{x.device.index or 0}"
        return "cpu" if x.device.type == "cpu" else str(x.device)  # e.g. 'meta': never ours
    if _is_cupy(x):
        return f"cuda:{x.device.id}"
    return "cpu"


def parse_device(device, *, func: str = "GramAccumulator") -> tuple[int, int]:
    """'cpu', 'cuda', 'cuda:1', a torch.device or an int -> (device_type, index)."""
    if device is None:
        return CPU, 0
    if isinstance(device, int):
        return CUDA, device
    s = str(device)
    if s in ("cpu", "cpu:0"):  # torch spells the host "cpu:0" too
        return CPU, 0
    if s == "cuda":
        try:
            import torch

            return CUDA, torch.cuda.current_device() if torch.cuda.is_available() else 0
        except ImportError:
            return CUDA, 0
    if s.startswith("cuda:") and s[5:].isdigit():
        return CUDA, int(s[5:])
    raise ValueError(f"[{func}] device must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")


def check_kind(x, *, func: str, arg: str = "x") -> None:
    """Refuse, naming func and arg, what no view can be made of, before its shape is read: a torch
    tensor that is nested, sparse or on a device without data ('meta'), or a dtype that is not real
    (complex, object, strings, datetimes, ...). Integers and bools pass (they are up-cast exactly)."""
    if _is_torch(x):
        import torch

        if x.is_nested:
            raise TypeError(f"[{func}] {arg} must be a dense tensor, got a nested tensor")
        if x.layout != torch.strided:
            raise TypeError(f"[{func}] {arg} must be a dense (strided) tensor, got layout {x.layout}")
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"[{func}] {arg} is on device {x.device}, expected cpu or cuda")
        if x.is_complex() or (x.is_floating_point() and str(x.dtype) not in _TORCH_CODES):
            raise TypeError(f"[{func}] {arg} must be {SUPPORTED}, got dtype {x.dtype}")
        return
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"[{func}] {arg} must be {SUPPORTED}, got dtype {dtype}") from None
    if _native_order(dtype) in _NUMPY_CODES or dtype.kind in "iub" or dtype.name == "bfloat16":
        return
    raise TypeError(f"[{func}] {arg} must be {SUPPORTED}, got dtype {dtype}")


def _native_order(dtype: np.dtype) -> np.dtype:
    """dtype in this machine's byte order (a big-endian '>f8' is float64 all the same)."""
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def as_view(x, *, func: str, arg: str = "x", ndim: int = 2, stream=None) -> View:
    """Turn x into a View, copying only when no view is possible (negative or odd strides,
    unsupported dtypes of a non-float kind are an error).

    CUDA input is read on the caller's current stream of x's device, or on `stream` when given: a
    torch.cuda.Stream, a cupy Stream or a raw cudaStream_t as an int (0: the legacy default)."""
    if _is_torch(x):
        v = _torch_view(x, func, arg, ndim)
    elif _is_cupy(x):
        v = _cupy_view(x, func, arg, ndim)
    else:
        v = _numpy_view(x if isinstance(x, np.ndarray) else np.asarray(x), func, arg, ndim)
    if stream is not None:
        _override_stream(v, x, stream, func)
    return v


def _override_stream(v: View, x, stream, func: str) -> None:
    if isinstance(stream, bool) or not (isinstance(stream, int) or hasattr(stream, "cuda_stream")
                                        or hasattr(stream, "ptr")):
        raise TypeError(f"[{func}] stream must be a torch.cuda.Stream, a cupy Stream or an int "
                        f"(cudaStream_t), got {type(stream).__name__}")
    if v.device_type != CUDA:
        raise ValueError(f"[{func}] stream needs CUDA input (it orders the read of x), got x on {v.device}")
    if isinstance(stream, int):
        if stream < 0:
            raise ValueError(f"[{func}] stream must be a cudaStream_t handle (an int >= 0), got {stream}")
        handle = stream
    else:
        handle = int(stream.cuda_stream if hasattr(stream, "cuda_stream") else stream.ptr)
        dev = getattr(stream, "device", None)
        dev_index = getattr(dev, "index", None) if dev is not None else getattr(stream, "device_id", None)
        if isinstance(dev, int):
            dev_index = dev
        if dev_index is not None and dev_index != v.device_index:
            raise ValueError(f"[{func}] stream is on cuda:{dev_index}, expected one on {v.device} (x's device)")
    if _is_torch(x):
        import torch

        if v.owner is not x:
            # x was converted (dtype or strides) on the current stream: finish that before `stream` reads it
            torch.cuda.current_stream(x.device).synchronize()
        # torch's caching allocator may hand x's memory out again on its own stream once the caller
        # drops x: record the reading stream, so that reuse waits for the read queued there
        ts = stream if hasattr(stream, "cuda_stream") else torch.cuda.ExternalStream(handle, device=x.device)
        v.owner.record_stream(ts)
    elif v.owner is not x:
        with x.device:
            import cupy

            cupy.cuda.get_current_stream().synchronize()
    v.stream = handle


def _check_ndim(shape, ndim, func, arg):
    if len(shape) != ndim:
        raise ValueError(f"[{func}] expected {arg} to be a {ndim}-D array, got shape {tuple(shape)}")
    if any(s == 0 for s in shape):
        raise ValueError(f"[{func}] expected {arg} with at least one row and one column, got shape {tuple(shape)}")


def _numpy_view(x: np.ndarray, func, arg, ndim) -> View:
    _check_ndim(x.shape, ndim, func, arg)
    if not x.dtype.isnative and _native_order(x.dtype) in _NUMPY_CODES:
        x = x.astype(_native_order(x.dtype))  # byte-swapped floats: one converting copy
    if x.dtype not in _NUMPY_CODES:
        if x.dtype.kind in "iub":
            x = x.astype(np.float64)  # integers/bools up-cast exactly
        elif x.dtype.name == "bfloat16":  # ml_dtypes
            x = x.astype(np.float32)
        else:
            raise TypeError(f"[{func}] {arg} must be {SUPPORTED}, got dtype {x.dtype}")
    item = x.itemsize
    strides = x.strides if x.ndim == 2 else (x.strides[0], item)
    if any(s < 0 or s % item for s in strides):
        x = np.ascontiguousarray(x)
        strides = x.strides if x.ndim == 2 else (x.strides[0], item)
    rows = x.shape[0]
    cols = x.shape[1] if x.ndim == 2 else 1
    return View(x.ctypes.data, _NUMPY_CODES[x.dtype], rows, cols, strides[0] // item, strides[1] // item,
                CPU, 0, 0, x)


def _torch_view(x, func, arg, ndim) -> View:
    import torch

    check_kind(x, func=func, arg=arg)  # nested / sparse / meta: before x.shape (nested has none)
    _check_ndim(tuple(x.shape), ndim, func, arg)
    if x.requires_grad:
        x = x.detach()
    code = _TORCH_CODES.get(str(x.dtype))
    if code is None:
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"[{func}] {arg} must be {SUPPORTED}, got dtype {x.dtype}")
        x = x.to(torch.float64)
        code = FLOAT64
    st = x.stride() if x.dim() == 2 else (x.stride(0), 1)
    if any(s < 0 for s in st) or x.is_conj() or x.is_neg():
        x = x.contiguous()
        st = x.stride() if x.dim() == 2 else (x.stride(0), 1)
    rows = x.shape[0]
    cols = x.shape[1] if x.dim() == 2 else 1
    if x.device.type == "cuda":
        idx = x.device.index or 0
        stream = torch.cuda.current_stream(x.device).cuda_stream
        return View(x.data_ptr(), code, rows, cols, st[0], st[1], CUDA, idx, int(stream), x)
    if x.device.type != "cpu":
        raise ValueError(f"[{func}] {arg} is on device {x.device}, expected cpu or cuda")
    return View(x.data_ptr(), code, rows, cols, st[0], st[1], CPU, 0, 0, x)


def _cupy_view(x, func, arg, ndim) -> View:
    with x.device:  # conversions, and the current stream, of x's device (not the current one)
        return _cupy_view_on_device(x, func, arg, ndim)


def _cupy_view_on_device(x, func, arg, ndim) -> View:
    import cupy

    _check_ndim(x.shape, ndim, func, arg)
    codes = {np.dtype(np.float64): FLOAT64, np.dtype(np.float32): FLOAT32, np.dtype(np.float16): FLOAT16}
    if x.dtype not in codes:
        if x.dtype.kind in "iub":
            x = x.astype(cupy.float64)
        else:
            raise TypeError(f"[{func}] {arg} must be {SUPPORTED}, got dtype {x.dtype}")
    item = x.itemsize
    strides = x.strides if x.ndim == 2 else (x.strides[0], item)
    if any(s < 0 or s % item for s in strides):
        x = cupy.ascontiguousarray(x)
        strides = x.strides if x.ndim == 2 else (x.strides[0], item)
    stream = cupy.cuda.get_current_stream().ptr
    rows = x.shape[0]
    cols = x.shape[1] if x.ndim == 2 else 1
    return View(x.data.ptr, codes[x.dtype], rows, cols, strides[0] // item, strides[1] // item, CUDA,
                x.device.id, int(stream), x)
