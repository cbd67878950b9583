"""Eigensolvers and spectra: the Python face of the native solvers."""
from __future__ import annotations

import re
import warnings

import numpy as np

from . import _core
from ._array import as_view, check_kind, device_of
from .accumulator import GramAccumulator, _check_ddof

METHODS = ("full", "randomized", "auto")
EIG_OPTIONS = ("oversample", "block", "n_iter", "tol", "tol_k", "max_iter", "seed", "single_precision")
DEFAULT_OVERSAMPLE = 16


def eig_option_problem(opts: dict, name=lambda key: key) -> str | None:
    """What is wrong with the eigensolver options' values (None: nothing): the integer options must
    be ints >= 0 and tol a finite number > 0. `name` spells an option in the message (bench: its
    CLI flag). Shared by eigvalsh and geomfast bench, which checks before it runs anything."""
    for key in ("oversample", "block", "n_iter", "tol_k", "max_iter", "seed"):
        val = opts.get(key)
        if val is not None and (isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 0):
            return f"{name(key)} must be a non-negative int, got {val!r}"
    tol = opts.get("tol")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating))
                            or not np.isfinite(tol) or tol <= 0):
        return f"{name('tol')} must be a finite number > 0, got {tol!r}"
    return None


def _eig_args(n: int, method: str, k, opts: dict, *, func: str) -> tuple:
    """Validates eigensolver options; returns the native (method, k, options) arguments."""
    unknown = set(opts) - set(EIG_OPTIONS)
    if unknown:
        raise TypeError(f"[{func}] unexpected option(s) {sorted(unknown)}; expected some of {EIG_OPTIONS}")
    if method not in METHODS:
        raise ValueError(f"[{func}] method must be one of {METHODS}, got {method!r}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n):
        raise ValueError(f"[{func}] k must be an int in [1, {n}], got {k!r}")
    problem = eig_option_problem(opts)
    if problem:
        raise ValueError(f"[{func}] {problem}")
    if method == "auto":
        # The Krylov solver pays off when the wanted values are a small fraction of the matrix.
        oversample = opts.get("oversample") or DEFAULT_OVERSAMPLE
        method = "randomized" if k is not None and n >= 512 and (k + oversample) * 4 <= n else "full"
    if method == "randomized" and k is None:
        raise ValueError(f"[{func}] method='randomized' needs k (how many leading eigenvalues)")
    return method, int(k or 0), {key: opts[key] for key in EIG_OPTIONS if opts.get(key) is not None}


def _finish(values: np.ndarray, info: dict, method: str, k, func: str, stacklevel: int = 3) -> np.ndarray:
    """A native solve's result: its warnings raised as RuntimeWarnings (attributed to the caller of
    the public function that called this: `stacklevel` frames up), the top k kept of a full solve."""
    for w in info["warnings"]:
        warnings.warn(f"[{func}] {w}", RuntimeWarning, stacklevel=stacklevel)
    return values[:k] if method == "full" and k is not None else values


def eigvalsh(a, *, method: str = "full", k: int | None = None, **options) -> np.ndarray:
    """Eigenvalues of a symmetric matrix, descending float64 numpy.

    Args:
        a: [n, n] symmetric, numpy / torch / cupy, float64 or float32, on cpu or cuda (solved there),
           or a batch [..., n, n] of them (as torch.linalg.eigvalsh takes): values [..., m]. A batch
           is solved several matrices at a time on the CPU, and queued with two host
           synchronisations in all on CUDA (method 'full'); a non-finite matrix is named by its
           index. Only the upper triangle (row-major) is read (numpy and torch read the lower one by
           default): a matrix that is clearly not symmetric draws a RuntimeWarning.
        method: 'full' (LAPACK/cuSOLVER values only), 'randomized' (top-k by randomized block Krylov
            with Rayleigh–Ritz, until the top values change by less than `tol`), or 'auto'.
        k: number of leading eigenvalues (randomized); full returns all n, or the top k if given.
        options (randomized): tol (1e-6: stop when the leading Ritz values change by less, relatively,
            from one Krylov step to the next), tol_k (how many leading values must meet tol; default
            all k — e.g. 100 when only α-ReQ's fit range matters), block (Krylov block width; default
            clamp(k/8, 32, 256)), oversample (16: the space is at least k + oversample wide),
            n_iter (fixed Krylov depth instead of tol), max_iter (64), seed (0). Block Krylov finds
            about `block` copies of a repeated eigenvalue per random start block: a value found that
            often once the values settle restarts the space from a fresh block, until every copy
            is in (a fixed n_iter does not restart; where copies may be missing, it warns).
            single_precision: CUDA full solve in float32 (retried in float64 on failure).
    """
    check_kind(a, func="eigvalsh", arg="a")  # (before a.shape: a nested tensor has none)
    shape = tuple(a.shape) if hasattr(a, "shape") else None
    if shape is not None and len(shape) > 2:
        return _eigvalsh_batch(a, shape, method, k, options)
    v = as_view(a, func="eigvalsh", arg="a")
    if v.rows != v.cols:
        raise ValueError(f"[eigvalsh] expected a square matrix, got shape ({v.rows}, {v.cols})")
    args = _eig_args(v.rows, method, k, options, func="eigvalsh")
    values, info = _core.eigvalsh(*v.args(), *args)
    return _finish(values, info, args[0], k, "eigvalsh")


_BATCH_INDEX = re.compile(r" for matrix \d+")  # the native fallback warning's own index


def _eigvalsh_batch(a, shape: tuple, method: str, k, options: dict) -> np.ndarray:
    """eigvalsh of every [n, n] slice of a [..., n, n] batch (checked by check_kind): values [..., m]."""
    batch, (n, n2) = shape[:-2], shape[-2:]
    if n != n2:
        raise ValueError(f"[eigvalsh] expected a batch [..., n, n] of square matrices, got shape {shape}")
    args = _eig_args(n, method, k, options, func="eigvalsh")
    m = n if k is None else int(k)
    count = int(np.prod(batch))
    if count == 0:
        return np.empty(batch + (m,), dtype=np.float64)
    flat = a.reshape(count, n, n)  # a view wherever the batch dimensions allow one
    views = [as_view(flat[i], func="eigvalsh", arg="a") for i in range(count)]

    def where(i: int) -> str:
        return "a[" + ", ".join(str(int(j)) for j in np.unravel_index(i, batch)) + "]"

    try:
        results = _core.eigvalsh_many([v.args() for v in views], *args)
    except ValueError as e:  # the native message names the flat index
        raise ValueError(re.sub(r"matrix (\d+) of the batch", lambda g: where(int(g.group(1))), str(e))) from None
    out = np.empty((count, m), dtype=np.float64)
    for i, (values, info) in enumerate(results):
        info = dict(info, warnings=[where(i) + ": " + _BATCH_INDEX.sub("", w) for w in info["warnings"]])
        out[i] = _finish(values, info, args[0], k, "eigvalsh", stacklevel=4)  # eigvalsh's caller
    return out.reshape(batch + (m,))


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
    ddof = _check_ddof(ddof, "spectrum")
    acc = _accumulate(x, precision, "spectrum")
    if acc is not x and acc.count < ddof + 1:
        raise ValueError(f"[spectrum] expected x with at least {ddof + 1} rows (ddof={ddof}), got {acc.count}")
    return acc.spectrum(ddof=ddof, method=method, k=k, **eig_options)


def spectra(accumulators, *, ddof: int = 1, method: str = "full", k: int | None = None,
            **eig_options) -> list[np.ndarray]:
    """Descending covariance eigenvalues of many accumulators (e.g. every checkpoint × layer), in order.

    The values of ``[a.spectrum(...) for a in accumulators]``. CUDA accumulators of one device
    are solved as one batch with method='full': every covariance and cuSOLVER call is queued on one
    stream and all values come back with a single host synchronisation, instead of one per
    spectrum. CPU accumulators of dim >= 512 are solved several at a time (as many as the cores,
    GEOMFAST_NUM_THREADS, and ~4 GiB of work matrices allow), each with single-threaded BLAS — the
    same algorithm, so the values agree with spectrum()'s to rounding (measured 1.4x the throughput
    of one-by-one solves at d = 2048 and 4096 on 2 cores).
    """
    ddof = _check_ddof(ddof, "spectra")
    accs = _check_accumulators(accumulators, "spectra", ddof + 1)
    if not accs:
        return []
    args = _eig_args(min(a.dim for a in accs), method, k, eig_options, func="spectra")
    try:
        results = _core.spectra([a._native for a in accs], ddof, *args, [])
    except (ValueError, FloatingPointError, RuntimeError) as e:
        _name_the_culprit(accs, ddof, e)
        raise
    return [_finish(values, info, args[0], k, "spectra") for values, info in results]


def _name_the_culprit(accs, ddof: int, err: BaseException) -> None:
    """A batch failed: say which accumulator (the first whose covariance cannot be formed)."""
    for i, a in enumerate(accs):
        try:
            a.covariance(ddof)
        except (ValueError, FloatingPointError, RuntimeError):
            msg = f"[spectra] accumulator {i} of {len(accs)} ({a!r}): {err}"
            try:
                named = type(err)(msg)
            except Exception:  # an error type with other constructor arguments
                named = RuntimeError(msg)
            raise named from err


def singular_values_of(accumulators) -> list[np.ndarray]:
    """The values of ``[a.singular_values() for a in accumulators]``: descending singular values of
    each raw (uncentered) matrix. CPU accumulators are solved several at a time as in
    :func:`spectra`; CUDA ones one by one on their GPU."""
    accs = _check_accumulators(accumulators, "singular_values_of", 1)
    out: list = [None] * len(accs)
    host = [i for i, a in enumerate(accs) if a.device == "cpu"]
    for i, a in enumerate(accs):
        if a.device != "cpu":
            out[i] = a.singular_values()
    if host:
        args = _eig_args(min(accs[i].dim for i in host), "full", None, {}, func="singular_values_of")
        results = _core.spectra([accs[i]._native for i in host], 0, *args, [True] * len(host))
        for i, (values, info) in zip(host, results):
            ev = _finish(values, info, args[0], None, "singular_values_of")
            out[i] = _singular_from_raw_eigenvalues(ev, accs[i])
    return out


def _singular_from_raw_eigenvalues(ev, acc) -> np.ndarray:
    return np.sqrt(np.clip(ev[: min(acc.count, acc.dim)], 0.0, None))


def spectrum_and_singular_values(acc: GramAccumulator) -> tuple[np.ndarray, np.ndarray]:
    """(acc.spectrum(), acc.singular_values()) — on the CPU the two full solves run at once."""
    accs = _check_accumulators([acc], "spectrum_and_singular_values", 2)
    if acc.device != "cpu":
        return acc.spectrum(), acc.singular_values()
    args = _eig_args(acc.dim, "full", None, {}, func="spectrum_and_singular_values")
    (cv, ci), (rv, ri) = _core.spectra([accs[0]._native] * 2, 1, *args, [False, True])
    return (_finish(cv, ci, args[0], None, "GramAccumulator.spectrum"),
            _singular_from_raw_eigenvalues(_finish(rv, ri, args[0], None, "GramAccumulator.singular_values"), acc))


def _check_accumulators(accumulators, func: str, min_rows: int) -> list:
    accs = list(accumulators)
    for i, a in enumerate(accs):
        if not isinstance(a, GramAccumulator):
            raise TypeError(f"[{func}] expected GramAccumulators, got {type(a).__name__} at position {i}")
        if a.count < min_rows:
            raise ValueError(f"[{func}] accumulator {i} of {len(accs)} ({a!r}) needs at least {min_rows} "
                             f"row(s), got {a.count}")
    return accs


def singular_values(x, *, precision: str = "highest") -> np.ndarray:
    """Descending singular values of the raw (uncentered) matrix x [n, d] (or an accumulator's)."""
    return _accumulate(x, precision, "singular_values").singular_values()


def backends() -> dict:
    """What was built and what is usable here, with the reason when a backend is not."""
    return _core.backends()
