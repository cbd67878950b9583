"""Eigensolvers and spectra: the Python face of the native solvers."""
from __future__ import annotations

import warnings

import numpy as np

from . import _core
from ._array import as_view, device_of
from .accumulator import GramAccumulator

METHODS = ("full", "randomized", "auto")
# Defaults of the randomized solver (measured: see benchmarks/RESULTS.md).
DEFAULT_OVERSAMPLE = 16
DEFAULT_TOL = 1e-6
DEFAULT_MAX_ITER = 40


def _eig_args(n: int, method: str, k, opts: dict, *, func: str) -> tuple:
    """Validates eigensolver options; returns the native argument tuple."""
    unknown = set(opts) - {"oversample", "n_iter", "tol", "max_iter", "seed", "single_precision"}
    if unknown:
        raise TypeError(f"[{func}] unexpected option(s) {sorted(unknown)}")
    if method not in METHODS:
        raise ValueError(f"[{func}] method must be one of {METHODS}, got {method!r}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n):
        raise ValueError(f"[{func}] k must be an int in [1, {n}], got {k!r}")
    oversample = opts.get("oversample")
    oversample = DEFAULT_OVERSAMPLE if oversample is None else int(oversample)
    if method == "auto":
        # Randomized pays off when the block is a small fraction of the matrix.
        method = "randomized" if k is not None and n >= 512 and (k + oversample) * 4 <= n else "full"
    if method == "randomized" and k is None:
        raise ValueError(f"[{func}] method='randomized' needs k (how many leading eigenvalues)")
    n_iter = opts.get("n_iter")
    tol = opts.get("tol")
    max_iter = opts.get("max_iter")
    return (method, int(k or 0), oversample, -1 if n_iter is None else int(n_iter),
            DEFAULT_TOL if tol is None else float(tol), DEFAULT_MAX_ITER if max_iter is None else int(max_iter),
            int(opts.get("seed", 0)), bool(opts.get("single_precision", False)))


def eigvalsh(a, *, method: str = "full", k: int | None = None, **options) -> np.ndarray:
    """Eigenvalues of a symmetric matrix, descending float64 numpy.

    Args:
        a: [n, n] symmetric, numpy / torch / cupy, float64 or float32, on cpu or cuda (solved there).
           Only the upper triangle (row-major) is read.
        method: 'full' (LAPACK/cuSOLVER values only), 'randomized' (top-k by subspace iteration with
            Rayleigh–Ritz; iterates until the top-k values change by less than `tol`), or 'auto'.
        k: number of leading eigenvalues (randomized); full returns all n, or the top k if given.
        options: oversample (16), n_iter (fixed power iterations; default: until tol), tol (1e-6),
            max_iter (40), seed (0), single_precision (CUDA full solve in float32).
    """
    v = as_view(a, func="eigvalsh", arg="a")
    if v.rows != v.cols:
        raise ValueError(f"[eigvalsh] expected a square matrix, got shape ({v.rows}, {v.cols})")
    args = _eig_args(v.rows, method, k, options, func="eigvalsh")
    values, info = _core.eigvalsh(*v.args(), *args)
    for w in info["warnings"]:
        warnings.warn(f"[eigvalsh] {w}", RuntimeWarning, stacklevel=2)
    if args[0] == "full" and k is not None:
        values = values[:k]
    return values


def _accumulate(x, precision: str, func: str) -> GramAccumulator:
    if isinstance(x, GramAccumulator):
        return x
    v = as_view(x, func=func)
    acc = GramAccumulator(v.cols, device=device_of(v.owner), precision=precision)
    acc.update(v.owner)
    return acc


def spectrum(x, *, ddof: int = 1, method: str = "full", k: int | None = None, precision: str = "highest",
             **eig_options) -> np.ndarray:
    """Descending covariance eigenvalues of activations x [n, d] (or of a GramAccumulator)."""
    return _accumulate(x, precision, "spectrum").spectrum(ddof=ddof, method=method, k=k, **eig_options)


def singular_values(x, *, precision: str = "highest") -> np.ndarray:
    """Descending singular values of the raw (uncentered) matrix x [n, d] (or an accumulator's)."""
    return _accumulate(x, precision, "singular_values").singular_values()


def backends() -> dict:
    """What was built and what is usable here, with the reason when a backend is not."""
    return _core.backends()
