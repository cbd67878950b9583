"""Plain numpy float64 references for every native op.

Tests and benchmarks compare the native core with these. They favour clarity over speed:
everything is computed in float64 from exactly up-cast inputs, in two passes where that is
the numerically honest way (mean first, then the centered product).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "to_float64",
    "covariance",
    "raw_gram",
    "eigvalsh_desc",
    "covariance_spectrum",
    "singular_values",
    "ReferenceGramAccumulator",
]


def to_float64(x) -> np.ndarray:
    """Exactly up-cast numpy / torch (incl. bfloat16) input to a float64 numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def covariance(x, ddof: int = 1) -> np.ndarray:
    """Two-pass float64 covariance of the rows of x: [n, d] -> [d, d]."""
    x = to_float64(x)
    y = x - x.mean(axis=0)
    return (y.T @ y) / (x.shape[0] - ddof)


def raw_gram(x) -> np.ndarray:
    """Uncentered second moment sum: [n, d] -> [d, d] = x^T x in float64."""
    x = to_float64(x)
    return x.T @ x


def eigvalsh_desc(a) -> np.ndarray:
    """Eigenvalues of a symmetric matrix, float64, descending."""
    return np.linalg.eigvalsh(np.asarray(a, dtype=np.float64))[::-1].copy()


def covariance_spectrum(x, ddof: int = 1) -> np.ndarray:
    return eigvalsh_desc(covariance(x, ddof))


def singular_values(x) -> np.ndarray:
    """Singular values of the raw (uncentered) matrix, float64, descending."""
    return np.linalg.svd(to_float64(x), compute_uv=False)


class ReferenceGramAccumulator:
    """Keeps every row (float64) and answers like GramAccumulator. For tests only."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self._rows: list[np.ndarray] = []

    def update(self, x):
        x = to_float64(x)
        self._rows.append(x.reshape(-1, self.dim))
        return self

    def merge(self, other: "ReferenceGramAccumulator"):
        self._rows.extend(other._rows)
        return self

    @property
    def data(self) -> np.ndarray:
        return np.concatenate(self._rows, axis=0) if self._rows else np.zeros((0, self.dim))

    @property
    def count(self) -> int:
        return sum(r.shape[0] for r in self._rows)

    def mean(self) -> np.ndarray:
        return self.data.mean(axis=0)

    def covariance(self, ddof: int = 1) -> np.ndarray:
        return covariance(self.data, ddof)

    def raw_gram(self) -> np.ndarray:
        return raw_gram(self.data)
