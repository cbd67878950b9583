"""GramAccumulator: streaming covariance of activation sets far too large to stack.

State (float64, on the accumulator's device), with y = x - shift over every row seen:
count n, shift [dim] (the first chunk's column means), Σy [dim] and Σyyᵀ [dim, dim].
Memory is O(dim²) whatever the number of rows; states merge exactly (they are sums).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import _core
from ._array import CUDA, as_view, check_kind, device_of, parse_device

PRECISIONS = ("highest", "fast")
_FORMAT = "geomfast.gram/1"


def _device_str(dt: int, di: int) -> str:
    return "cpu" if dt != CUDA else f"cuda:{di}"


def _finite(m: np.ndarray, func: str) -> np.ndarray:
    finite = np.isfinite(m)
    if not finite.all():
        bad = int(m.size - np.count_nonzero(finite))
        raise FloatingPointError(
            f"[GramAccumulator.{func}] {bad} entr{'y' if bad == 1 else 'ies'} overflowed float64 (the input's "
            "squares summed past 1.8e308): expected values whose squares, summed over the rows, stay "
            "finite; rescale the input")
    return m


def _check_ddof(ddof, func: str) -> int:
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"[{func}] ddof must be an int >= 0 (as in numpy.cov), got {ddof!r}")
    return int(ddof)


class GramAccumulator:
    """Streaming Gram/covariance accumulator.

    Args:
        dim: number of columns (hidden size) of every chunk.
        device: 'cpu', 'cuda' or 'cuda:<i>'; chunks must live there.
        precision: 'highest' (float64 arithmetic on exactly up-cast values, ≤1e-12 relative; on
            CPUs with AMX-INT8, bf16/f16 chunks are multiplied exactly as int8 digits of values
            centred on a shift on the input's grid, rows needing more digits in float64) or
            'fast' (float32 products over blocks of rows flushed into the float64 state, ≈1e-7;
            on CPUs with AMX-BF16 the products run on the tile unit as the six products of an exact
            three-way bfloat16 split of each float32 value, the same accuracy class; see
            ``geomfast.backends()['cpu']['details']``). None picks 'highest' on the CPU and 'fast'
            on CUDA devices.
    """

    def __init__(self, dim: int, *, device="cpu", precision: str | None = None):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"[GramAccumulator] dim must be a positive int, got {dim!r}")
        dt, di = parse_device(device)
        if precision is None:
            precision = "fast" if dt == CUDA else "highest"
        if precision not in PRECISIONS:
            raise ValueError(f"[GramAccumulator] precision must be 'highest' or 'fast', got {precision!r}")
        self._dt, self._di = dt, di
        self._native = _core.Gram(int(dim), dt, di, precision)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._native.dim

    @property
    def count(self) -> int:
        return self._native.count

    @property
    def device(self) -> str:
        return _device_str(self._dt, self._di)

    @property
    def precision(self) -> str:
        return self._native.precision

    def __repr__(self) -> str:
        return f"GramAccumulator(dim={self.dim}, device='{self.device}', precision='{self.precision}', count={self.count})"

    # ------------------------------------------------------------------ accumulation
    def update(self, x, *, stream=None) -> "GramAccumulator":
        """Add the rows of x: [n, dim], numpy / torch / cupy, float64/32/16 or bfloat16, any strides.

        CUDA input is read in place on the current stream of x's device, or on `stream` (a
        torch.cuda.Stream, a cupy Stream, or a cudaStream_t as an int); later work on the
        accumulator is ordered after it.
        Raises ValueError on NaN/Inf (with their count and first row), and on values whose centred
        squares, summed over the rows, would overflow float64 (~1e150 and beyond); the state is
        then unchanged.
        A chunk of zero rows (e.g. a batch whose rows were all masked out) adds nothing.
        """
        check_kind(x, func="GramAccumulator.update")  # (a nested tensor has no shape to read)
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) == 2 and shape[0] == 0:  # nothing to add, but still the right width, dtype and device
            if shape[1] != self.dim:
                raise ValueError(
                    f"[GramAccumulator.update] expected x with {self.dim} columns, got shape {shape}")
            if device_of(x) != self.device:
                raise ValueError(f"[GramAccumulator.update] x is on {device_of(x)}, expected {self.device} "
                                 "(the accumulator's device)")
            return self
        v = as_view(x, func="GramAccumulator.update", stream=stream)
        if v.cols != self.dim:
            raise ValueError(
                f"[GramAccumulator.update] expected x with {self.dim} columns, got shape ({v.rows}, {v.cols})")
        if v.device != self.device:
            raise ValueError(
                f"[GramAccumulator.update] x is on {v.device}, expected {self.device} (the accumulator's device)")
        self._native.update(*v.args())
        return self

    def merge(self, other: "GramAccumulator") -> "GramAccumulator":
        """Add another accumulator's rows (exactly; shifts may differ). A merge whose centred squares
        would overflow float64 raises ValueError, the state unchanged."""
        if not isinstance(other, GramAccumulator):
            raise TypeError(f"[GramAccumulator.merge] expected a GramAccumulator, got {type(other).__name__}")
        if other.dim != self.dim:
            raise ValueError(f"[GramAccumulator.merge] dim mismatch: expected {self.dim}, got {other.dim}")
        if self.precision == "highest" and other.precision == "fast":
            # the merged state would claim float64 quality for rows summed at float32 accuracy
            raise ValueError(
                "[GramAccumulator.merge] precision mismatch: expected a 'highest' state to merge into this "
                "'highest' accumulator, got a 'fast' one; merge it into a 'fast' accumulator instead "
                "(GramAccumulator.from_state_dict(self.state_dict(), precision='fast').merge(other))")
        self._native.add_state(*other._native.state())
        return self

    def reset(self) -> "GramAccumulator":
        self._native.reset()
        return self

    # ------------------------------------------------------------------ results (float64 numpy)
    def _need_rows(self, func: str, at_least: int = 1):
        if self.count < at_least:
            raise ValueError(f"[GramAccumulator.{func}] needs at least {at_least} row(s), got {self.count}")

    def mean(self) -> np.ndarray:
        """Column means, float64 [dim]."""
        self._need_rows("mean")
        n, shift, s, _ = self._native.state()
        return shift + s / n

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """Covariance of the rows, float64 [dim, dim]. An error, not NaN/Inf, when the sums
        overflowed float64 (values near 1e154 and beyond)."""
        ddof = _check_ddof(ddof, "GramAccumulator.covariance")
        self._need_rows("covariance", ddof + 1)
        return _finite(self._native.covariance(ddof), "covariance")

    def raw_gram(self) -> np.ndarray:
        """Uncentered Σ x xᵀ, float64 [dim, dim] (x = y + shift: Σyyᵀ + shift·(Σy)ᵀ + (Σy)·shiftᵀ +
        n·shift·shiftᵀ, from the state; the same matrix singular_values() solves)."""
        return _finite(self._native.raw_gram(), "raw_gram")

    def spectrum(self, *, ddof: int = 1, method: str = "full", k: int | None = None, **eig_options) -> np.ndarray:
        """Descending covariance eigenvalues, solved on the accumulator's device."""
        from .linalg import _eig_args, _finish

        ddof = _check_ddof(ddof, "GramAccumulator.spectrum")
        self._need_rows("spectrum", ddof + 1)
        args = _eig_args(self.dim, method, k, eig_options, func="GramAccumulator.spectrum")
        values, info = self._native.spectrum(ddof, *args)
        return _finish(values, info, args[0], k, "GramAccumulator.spectrum")

    def singular_values(self) -> np.ndarray:
        """Descending singular values of the raw (uncentered) n × dim matrix, min(n, dim) of them.

        From the eigenvalues of Σxxᵀ, so σ_k carries a relative error of about eps·(σ₁/σ_k)²
        (eps = 2.2e-16): values below ≈1e-8·σ₁ are at float64 rounding level. Raw data with large
        column means put σ₁ on the means: at mean 1e6 and unit spread the small values are ~1e-3
        off (an SVD of the stacked matrix gives ~1e-10). garrido2023 RankMe and Roy's effective
        rank, dominated by the large values, move by < 1e-8 relative there.
        """
        from .linalg import _singular_from_raw_eigenvalues, eigvalsh, singular_values_of

        self._need_rows("singular_values")
        if self.device == "cpu":
            return singular_values_of([self])[0]  # Σxxᵀ built and solved natively
        raw = self.raw_gram()
        # Solved on the accumulator's GPU as its spectrum() is: a d = 4096 solve on the host
        # would cost seconds per (checkpoint, layer) in a sweep.
        try:
            import torch

            if torch.cuda.is_available():
                raw = torch.from_numpy(raw).to(self.device)
        except ImportError:  # no torch: the host solver
            pass
        return _singular_from_raw_eigenvalues(eigvalsh(raw), self)

    # ------------------------------------------------------------------ state (no pickle)
    def state_dict(self) -> dict:
        n, shift, s, g = self._native.state()
        return {"format": _FORMAT, "dim": self.dim, "count": int(n), "precision": self.precision,
                "shift": shift, "sum": s, "gram": g}

    @classmethod
    def from_state_dict(cls, state: dict, *, device=None, precision: str | None = None) -> "GramAccumulator":
        fn = "[GramAccumulator.from_state_dict]"
        for key in ("dim", "count", "shift", "sum", "gram"):
            if key not in state:
                raise ValueError(f"{fn} missing key {key!r}")
        if "format" in state and state["format"] != _FORMAT:
            raise ValueError(f"{fn} expected format {_FORMAT!r}, got {state['format']!r}")
        dim = int(state["dim"])
        count = state["count"]
        if isinstance(count, bool) or float(count) != int(count) or int(count) < 0:
            raise ValueError(f"{fn} count must be an integer >= 0, got {count!r}")
        acc = cls(dim, device=device or "cpu", precision=precision or str(state.get("precision", "highest")))
        shift = np.asarray(state["shift"], dtype=np.float64)
        s = np.asarray(state["sum"], dtype=np.float64)
        g = np.asarray(state["gram"], dtype=np.float64)
        if shift.shape != (dim,) or s.shape != (dim,) or g.shape != (dim, dim):
            raise ValueError(
                f"[GramAccumulator.from_state_dict] expected shift/sum of shape ({dim},) and gram ({dim}, {dim}), "
                f"got {shift.shape}, {s.shape}, {g.shape}")
        for key, arr in (("shift", shift), ("sum", s), ("gram", g)):
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            if bad:
                raise ValueError(f"[GramAccumulator.from_state_dict] {key} holds {bad} non-finite value(s) "
                                 "(NaN or Inf): a corrupted state")
        # What a state of real rows satisfies, up to rounding (a tampered or mixed-up state does not)
        scale = float(np.abs(g).max()) if g.size else 0.0
        if int(count) == 0 and (np.any(s) or np.any(g)):
            raise ValueError(f"{fn} count is 0 but sum/gram are not zero: a corrupted state")
        if scale > 0 and float(np.abs(g - g.T).max()) > 1e-10 * scale:
            raise ValueError(f"{fn} gram is not symmetric (max |g - gᵀ| = {float(np.abs(g - g.T).max()):.3g}, "
                             f"max |g| = {scale:.3g}): a corrupted state")
        if scale > 0 and float(np.diag(g).min()) < -1e-12 * scale:
            raise ValueError(f"{fn} gram has a negative diagonal (a sum of squares): a corrupted state")
        acc._native.set_state(int(count), shift, s, g)
        return acc

    def to(self, device) -> "GramAccumulator":
        """A copy of this accumulator on another device."""
        return GramAccumulator.from_state_dict(self.state_dict(), device=device)

    def save(self, path) -> None:
        """Write the state to .safetensors or .npz (atomically: temp file then rename)."""
        path = Path(path)
        if path.suffix not in (".safetensors", ".npz"):
            raise ValueError(f"[GramAccumulator.save] path must end in .safetensors or .npz, got {path.name!r}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"[GramAccumulator.save] no folder {str(path.parent)!r} to write "
                                    f"{path.name!r} into (expected an existing directory)")
        st = self.state_dict()
        arrays = {"shift": st["shift"], "sum": st["sum"], "gram": st["gram"]}
        meta = {"format": _FORMAT, "dim": str(st["dim"]), "count": str(st["count"]), "precision": st["precision"]}
        tmp = path.with_name(path.name + ".tmp")
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file(arrays, str(tmp), metadata=meta)
        elif path.suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, **{k: np.array(v) for k, v in meta.items()})
        else:
            raise ValueError(f"[GramAccumulator.save] path must end in .safetensors or .npz, got {path.name!r}")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path, *, device=None) -> "GramAccumulator":
        """Read a state written by save() (.safetensors or .npz; never unpickles anything)."""
        path = Path(path)
        if path.suffix not in (".safetensors", ".npz"):
            raise ValueError(f"[GramAccumulator.load] path must end in .safetensors or .npz, got {path.name!r}")
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="numpy") as f:
                    meta = f.metadata() or {}
                    names = set(f.keys())
                    arrays = {k: f.get_tensor(k) for k in ("shift", "sum", "gram") if k in names}
            else:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in ("shift", "sum", "gram") if k in z.files}
                    meta = {k: str(z[k]) for k in ("format", "dim", "count", "precision") if k in z.files}
        except OSError:
            raise
        except Exception as e:  # a damaged or foreign file: say what it is not
            raise ValueError(f"[GramAccumulator.load] {path} is not a readable geomfast Gram state "
                             f"(expected a {path.suffix} file written by GramAccumulator.save): {e}") from e
        if meta.get("format") != _FORMAT or len(arrays) != 3:
            raise ValueError(f"[GramAccumulator.load] {path} is not a geomfast Gram state "
                             f"(format {meta.get('format')!r}, expected {_FORMAT!r})")
        return cls.from_state_dict({**arrays, "dim": int(meta["dim"]), "count": int(meta["count"]),
                                    "precision": meta.get("precision", "highest")}, device=device)
