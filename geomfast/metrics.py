"""Spectral geometry metrics: RankMe, alpha-ReQ and friends.

Every measure is defined on a 1-D spectrum (plain numpy, float64). Functions that also take
activations accept a 2-D array ``[n, d]`` (numpy / torch / cupy, rows are samples) or a
``GramAccumulator`` and obtain the spectrum through the core API (``geomfast.linalg``).
The formulas follow docs ``METRICS.md``; the conventions are named after the tool a user came
from (``li2025`` = Li et al. 2025, ``garrido2023`` = Garrido et al. 2023).

Treatment of numerical noise in spectra (one rule for every function here):

* A covariance spectrum is mathematically >= 0, but eigensolvers return tiny negative values
  for (near-)zero eigenvalues. Every measure uses magnitudes ``|lambda|`` -- this is what the
  papers' own formulas do (``sum_j |s_j|`` in RankMe, ``log|lambda|`` in alpha-ReQ). Negative
  values larger than ``1e-6 * max|lambda|`` are not plausible rounding noise; they are still
  used as ``|lambda|`` but a :class:`SpectrumWarning` says so.
* Exact zeros cannot enter a logarithm: alpha-ReQ drops them from the fit and the R^2 ranges
  (ranks of the remaining values are kept) and warns, once per range; entropies use
  ``0 log 0 = 0``.
* Values at rounding level, ``<= len * eps(float64) * max|lambda|`` (e.g. the d - n + 1
  null-space eigenvalues of a centered covariance with n <= d rows), are kept, but alpha-ReQ
  warns when its fit or R^2 ranges reach them. A 1-D spectrum does not know n: ``rankme``
  (``li2025``) and ``alpha_req`` take ``n_samples=`` so that a spectrum of length d gives
  exactly what its accumulator / activations give (the top ``min(2048, n, d)`` values);
  without it they warn when such values would make the two differ.
* A spectrum on which a measure is undefined (all zeros, too few positive values for a fit)
  raises :class:`DegenerateSpectrumError` (a ``ValueError``) naming the function. ``geometry``
  catches it per measure, stores ``nan`` for that key and explains it in ``"warnings"``.
  No function returns NaN without a warning saying why.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "AlphaReqResult",
    "DegenerateSpectrumError",
    "SpectrumWarning",
    "rankme",
    "alpha_req",
    "geometry",
    "geometry_of_spectra",
    "participation_ratio",
    "stable_rank",
    "spectral_entropy",
    "effective_rank",
    "condition_number",
    "RANKME_CONVENTIONS",
    "LI2025_MAX_COMPONENTS",
    "GEOMETRY_KEYS",
]

RANKME_CONVENTIONS = ("li2025", "garrido2023", "full")
# sklearn PCA(n_components=min(2048, n, d)) in Li et al. (2025).
LI2025_MAX_COMPONENTS = 2048
# Negative eigenvalues below this fraction of max|lambda| are taken as rounding noise silently.
_NEGATIVE_NOISE_RTOL = 1e-6


class SpectrumWarning(RuntimeWarning):
    """A metric was computed, but the spectrum or the settings deserve a look (see message)."""


class DegenerateSpectrumError(ValueError):
    """The measure is undefined on this spectrum (e.g. all zeros, too few positive values)."""


# ----------------------------------------------------------------------------- validation


def _fmt_value(v) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _to_numpy(x):
    """Exact float64 numpy view of numpy / torch (incl. bfloat16) / cupy / list input."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        if x.is_nested or str(x.layout) != "torch.strided" or x.device.type not in ("cpu", "cuda"):
            where = "nested" if x.is_nested else f"layout {x.layout}, device {x.device}"
            raise TypeError(f"expected a dense tensor on cpu or cuda, got one ({where})")
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    elif hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        x = x.get()
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"expected a real numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _as_spectrum(fn: str, arg: str, s) -> np.ndarray:
    """Validate a 1-D spectrum: [m] real, finite, non-empty -> float64 copy."""
    try:
        arr = _to_numpy(s)
    except TypeError as e:
        raise TypeError(f"[{fn}] {arg} must be a 1-D real array, {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"[{fn}] {arg} must be a 1-D spectrum, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"[{fn}] {arg} must be non-empty, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"[{fn}] {arg} must be finite, got {int(bad.sum())} non-finite value(s) "
            f"(first at index {first}: {arr[first]})"
        )
    return np.array(arr, dtype=np.float64, copy=True)


def _magnitudes(fn: str, arg: str, s: np.ndarray, notes: list[str]) -> np.ndarray:
    """|s| sorted descending; notes a warning for implausibly large negative values."""
    lo = float(s.min())
    if lo < 0.0:
        scale = float(np.abs(s).max())
        if -lo > _NEGATIVE_NOISE_RTOL * scale:
            notes.append(
                f"[{fn}] {arg} has negative values down to {lo:.3e} "
                f"({-lo / scale:.1e} of max|value|), larger than rounding noise; "
                f"using |value| as the formula's |lambda| does"
            )
    return np.sort(np.abs(s))[::-1]


def _check_eps(fn: str, eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"[{fn}] eps must be a float >= 0, got {type(eps).__name__}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"[{fn}] eps must be a finite float >= 0, got {eps}")
    return eps


def _check_convention(fn: str, convention) -> str:
    if convention not in RANKME_CONVENTIONS:
        allowed = ", ".join(repr(c) for c in RANKME_CONVENTIONS)
        raise ValueError(
            f"[{fn}] convention must be one of {allowed}, got {_fmt_value(convention)}"
        )
    return convention


def _check_fit_range(fn: str, fit_range) -> tuple[int, int]:
    try:
        lo, hi = fit_range
    except (TypeError, ValueError):
        raise TypeError(
            f"[{fn}] fit_range must be a pair (start, stop) of 0-based indices, got {fit_range!r}"
        ) from None
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(
                f"[{fn}] fit_range must hold integers, got {fit_range!r}"
            )
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi - lo < 2:
        raise ValueError(
            f"[{fn}] fit_range must satisfy 0 <= start and stop - start >= 2 "
            f"(0-based, stop exclusive), got ({lo}, {hi})"
        )
    return lo, hi


def _check_n_samples(fn: str, n_samples) -> int | None:
    if n_samples is None:
        return None
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
        raise TypeError(
            f"[{fn}] n_samples must be an int >= 1 or None, got {type(n_samples).__name__}"
        )
    if int(n_samples) < 1:
        raise ValueError(f"[{fn}] n_samples must be an int >= 1 or None, got {int(n_samples)}")
    return int(n_samples)


def _check_n_samples_matches(fn: str, n_samples: int | None, n: int) -> None:
    if n_samples is not None and n_samples != n:
        raise ValueError(
            f"[{fn}] n_samples={n_samples} contradicts the {n} rows of the 2-D input; "
            f"n_samples is for 1-D spectra (2-D input knows its n)"
        )


def _rounding_floor(mags: np.ndarray) -> float:
    """len * eps * lambda_1: values at or below it are at rounding level (descending mags)."""
    return mags.size * np.finfo(np.float64).eps * float(mags[0])


_NULL_SPACE_HINT = (
    "; for the spectrum of a covariance with n <= d rows (d - n + 1 null-space values at "
    "rounding level) pass n_samples=n, or the GramAccumulator / activations, to use the top "
    "min(2048, n, d) values as they do"
)


def _emit(notes: list[str], stacklevel: int = 3) -> None:
    for msg in notes:
        warnings.warn(msg, SpectrumWarning, stacklevel=stacklevel)


def _is_accumulator(x) -> bool:
    return all(hasattr(x, a) for a in ("spectrum", "singular_values", "count", "dim")) and not (
        hasattr(x, "shape")
    )


def _activation_shape(fn: str, arg: str, x) -> tuple[int, int]:
    """(n, d) of activations or an accumulator; raises for anything else."""
    if _is_accumulator(x):
        return int(x.count), int(x.dim)
    from ._array import check_kind

    check_kind(x, func=fn, arg=arg)  # complex / object / sparse / meta named here, not by spectrum()
    shape = getattr(x, "shape", None)
    if shape is None:
        shape = np.shape(x)
    shape = tuple(int(v) for v in shape)
    if len(shape) != 2:
        raise ValueError(
            f"[{fn}] {arg} must be 2-D activations [n, d] or a GramAccumulator, got shape {shape}"
        )
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"[{fn}] {arg} must be non-empty, got shape {shape}")
    return shape


def _input_ndim(x, fn: str = "", arg: str = "x_or_spectrum") -> int:
    if _is_accumulator(x):
        return 2
    if fn and hasattr(x, "detach") and (x.is_nested or str(x.layout) != "torch.strided"):
        from ._array import check_kind

        check_kind(x, func=fn, arg=arg)  # a nested tensor's ndim counts its ragged dimension
    nd = getattr(x, "ndim", None)
    return int(nd) if nd is not None else int(np.ndim(x))


def _covariance_spectrum(fn: str, x, n: int, *, method="full", k=None) -> np.ndarray:
    if n < 2:
        raise ValueError(
            f"[{fn}] a covariance spectrum (ddof=1) needs at least 2 rows, got {n}"
        )
    from .linalg import spectrum

    return np.asarray(spectrum(x, ddof=1, method=method, k=k), dtype=np.float64)


def _raw_singular_values(x) -> np.ndarray:
    from .linalg import singular_values

    return np.asarray(singular_values(x), dtype=np.float64)


def _li2025_count(n: int, d: int) -> int:
    return min(LI2025_MAX_COMPONENTS, n, d)


def _xlogx(p: np.ndarray) -> np.ndarray:
    """p log p with 0 log 0 = 0."""
    out = np.zeros_like(p)
    pos = p > 0
    out[pos] = p[pos] * np.log(p[pos])
    return out


# ----------------------------------------------------------------------------- RankMe


def _rankme_core(fn: str, mags: np.ndarray, eps: float) -> float:
    """RankMe of descending magnitudes (already truncated as the convention wants)."""
    total = float(mags.sum())
    if total == 0.0:
        raise DegenerateSpectrumError(
            f"[{fn}] spectrum is all zeros ({mags.size} values); RankMe is undefined"
        )
    p = mags / total + eps
    return float(np.exp(-_xlogx(p).sum()))


def rankme(x_or_spectrum, *, convention: str = "li2025", eps: float = 1e-7,
           n_samples: int | None = None) -> float:
    """RankMe = exp(-sum_k p_k log p_k), p_k = s_k / sum_j |s_j| + eps (METRICS.md).

    Parameters
    ----------
    x_or_spectrum
        * 2-D activations ``[n, d]`` (numpy / torch / cupy, any float dtype) or a
          ``GramAccumulator``: the spectrum ``s`` is derived per ``convention``.
        * 1-D spectrum ``[m]`` already in the convention's units; it is sorted descending
          (by magnitude) and, for ``li2025``, truncated to the top 2048 values (the top
          ``min(2048, n_samples, m)`` with ``n_samples``).
    convention
        ``"li2025"``: top ``min(2048, n, d)`` covariance eigenvalues of the centered data as
        explained-variance ratios (sklearn ``PCA(...).explained_variance_ratio_``; Li et al.).
        ``"garrido2023"``: singular values of the raw, uncentered matrix (Garrido et al.).
        ``"full"``: all ``d`` covariance eigenvalues, no cap.
    eps
        Added to every ``p_k`` (1e-7 as in the papers). With it a flat spectrum of size m
        gives slightly more than m.
    n_samples
        For a 1-D ``li2025`` spectrum of all ``d`` covariance eigenvalues: the number of rows
        n it came from, so that the top ``min(2048, n, d)`` are used and the result equals
        ``rankme`` of the accumulator / activations. It matters when n < min(2048, d): the
        d - n + 1 null-space values at rounding level would each add ``eps`` to a ``p_k``.
        Without it, a 1-D ``li2025`` spectrum whose used values hold more than one value at
        rounding level (``<= m * eps(float64) * max``) gives a :class:`SpectrumWarning`.
        No effect for ``garrido2023`` / ``full``; with 2-D input it must equal n.

    Returns
    -------
    float. Negative spectrum values are used as ``|s|`` (see module docstring); an all-zero
    spectrum raises :class:`DegenerateSpectrumError`.
    """
    fn = "rankme"
    convention = _check_convention(fn, convention)
    eps = _check_eps(fn, eps)
    n_samples = _check_n_samples(fn, n_samples)
    notes: list[str] = []
    nd = _input_ndim(x_or_spectrum, fn)
    if nd == 1:
        s = _as_spectrum(fn, "x_or_spectrum", x_or_spectrum)
        mags = _magnitudes(fn, "x_or_spectrum", s, notes)
        if convention == "li2025" and n_samples is not None:
            # The accumulator's own computation, with d = the spectrum's length.
            mags = _explained_variance_ratio(mags, n_samples, mags.size)
        elif convention == "li2025":
            floor = _rounding_floor(mags)
            mags = mags[:LI2025_MAX_COMPONENTS]
            tiny = int(np.count_nonzero(mags <= floor))
            if tiny > 1 and floor > 0.0:
                notes.append(
                    f"[{fn}] x_or_spectrum: {tiny} of the top {mags.size} values that li2025 "
                    f"uses are at rounding level (<= {floor:.2e} = len * eps * max|value|) and "
                    f"each adds eps to its p_k" + _NULL_SPACE_HINT
                )
    elif nd == 2:
        n, d = _activation_shape(fn, "x_or_spectrum", x_or_spectrum)
        _check_n_samples_matches(fn, n_samples, n)
        if convention == "garrido2023":
            s = _as_spectrum(fn, "singular values", _raw_singular_values(x_or_spectrum))
            mags = _magnitudes(fn, "singular values", s, notes)
        else:
            lam = _as_spectrum(fn, "covariance spectrum",
                               _covariance_spectrum(fn, x_or_spectrum, n))
            mags = _magnitudes(fn, "covariance spectrum", lam, notes)
            if convention == "li2025":
                mags = _explained_variance_ratio(mags, n, d)
    else:
        raise ValueError(
            f"[{fn}] x_or_spectrum must be a 1-D spectrum or 2-D activations [n, d], "
            f"got {nd}-D input"
        )
    _emit(notes)
    return _rankme_core(fn, mags, eps)


def _explained_variance_ratio(mags: np.ndarray, n: int, d: int) -> np.ndarray:
    """Top min(2048, n, d) eigenvalues over the total variance (sklearn's ratio)."""
    total = float(mags.sum())
    top = mags[: _li2025_count(n, d)]
    # The ratio's denominator cancels in RankMe; kept so the numbers mean what li2025 says.
    return top / total if total > 0 else top


# ----------------------------------------------------------------------------- alpha-ReQ


@dataclass(frozen=True)
class AlphaReqResult:
    """Result of :func:`alpha_req`.

    alpha     power-law decay exponent (lambda_k ~ C k^-alpha)
    r2        R^2 of log|lambda| vs the fitted line over 0-based indices
              [start + 1, 500) if the spectrum has >= 512 values else [start + 1, len - 10)
              (start = fit_range[0]; [12, 500) with the paper's default)
    r2_100    the same over [start + 1, 100)
    fitted    [len] float64, the fitted power law C k^-alpha at every rank k = 1..len
    fit_range the (start, stop) 0-based indices actually fitted (after clipping)
    warnings  tuple of str: clipping, dropped zeros, noise-level values, undefined R^2
    """

    alpha: float
    r2: float
    r2_100: float
    fitted: np.ndarray = field(repr=False)
    fit_range: tuple[int, int]
    warnings: tuple[str, ...] = ()


def _log_rank_design(ranks: np.ndarray) -> np.ndarray:
    return np.stack([-np.log(ranks), np.ones_like(ranks)], axis=1)


def _range_text(start: int, stop: int, m: int) -> str:
    """'[start, stop)', with the clipping to a spectrum of length m when stop > m."""
    text = f"[{start}, {stop})"
    return text + (f" (clipped to [{start}, {m}))" if stop > m else "")


def _r2_indices(fn: str, label: str, mags: np.ndarray, start: int,
                stop: int) -> tuple[np.ndarray | None, str | None, str | None]:
    """(indices of the positive values in [start, stop) (clipped) or None if fewer than 2,
    note on dropped zeros or None, note on an undefined R^2 or None)."""
    m = mags.size
    idx = np.arange(start, min(stop, m))
    pos = idx[mags[idx] > 0] if idx.size else idx
    rng = _range_text(start, stop, m)
    if pos.size < 2:
        where = (f"its range {rng} holds {pos.size} positive value(s)" if idx.size
                 else f"its range {rng} is empty")
        return None, None, (f"[{fn}] {label} is undefined (nan): {where}, in a spectrum of "
                            f"length {m}; need >= 2 positive values")
    zeros = None
    if pos.size < idx.size:
        zeros = (f"[{fn}] {idx.size - pos.size} exact zero eigenvalue(s) in the {label} range "
                 f"{rng} cannot enter log|lambda|; dropped from {label} (ranks of the others kept)")
    return pos, zeros, None


def _r2(idx: np.ndarray | None, mags: np.ndarray, b: np.ndarray) -> float:
    """Unweighted R^2 of log|lambda| on the 0-based indices idx vs the fitted line."""
    if idx is None:
        return float("nan")
    y = np.log(mags[idx])
    y_hat = _log_rank_design((idx + 1).astype(np.float64)) @ b
    ss_res = float(np.sum((y - y_hat) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        # Constant log-spectrum (flat): a perfect fit explains it fully (sklearn's rule,
        # with a rounding tolerance because the fitted slope is only ~1e-16 from zero).
        tol = idx.size * (1e-12 * max(1.0, float(np.abs(y).max()))) ** 2
        return 1.0 if ss_res <= tol else 0.0
    return 1.0 - ss_res / ss_tot


def _alpha_core(fn: str, mags: np.ndarray, fit_range: tuple[int, int],
                notes: list[str], hint: str = "") -> AlphaReqResult:
    """Weighted least-squares power-law fit on descending magnitudes (METRICS.md).

    ``hint`` is appended to the rounding-level note (1-D input: how to pass n).
    """
    m = mags.size
    lo, hi = fit_range
    if hi > m:
        if m - lo >= 2:  # otherwise the error below says it
            notes.append(
                f"[{fn}] spectrum has {m} values, fewer than fit_range stop {hi}; "
                f"fitting indices [{lo}, {m}) instead"
            )
        hi = m
    if hi - lo < 2:
        raise DegenerateSpectrumError(
            f"[{fn}] spectrum has {m} values; fit_range ({lo}, {fit_range[1]}) leaves "
            f"{max(hi - lo, 0)} point(s) to fit, need >= 2: pass a smaller fit_range"
        )
    idx = np.arange(lo, hi)
    zero = mags[idx] == 0.0
    if zero.any():
        notes.append(
            f"[{fn}] {int(zero.sum())} exact zero eigenvalue(s) in the fit range [{lo}, {hi}) "
            f"cannot enter log|lambda|; dropped from the fit (ranks of the others kept)"
        )
        idx = idx[~zero]
    if idx.size < 2:
        raise DegenerateSpectrumError(
            f"[{fn}] only {idx.size} positive value(s) in the fit range [{lo}, {hi}) of a "
            f"spectrum with {int((mags > 0).sum())} positive value(s); alpha is undefined"
        )
    r2_stop = 500 if m >= 512 else m - 10
    r2_idx, r2_zeros, r2_undefined = _r2_indices(fn, "r2", mags, lo + 1, r2_stop)
    r2_100_idx, r2_100_zeros, r2_100_undefined = _r2_indices(fn, "r2_100", mags, lo + 1, 100)
    notes.extend(v for v in (r2_zeros, r2_100_zeros) if v is not None)
    floor = _rounding_floor(mags)
    reached = [name for name, ix in (("fit range", idx), ("r2 range", r2_idx),
                                     ("r2_100 range", r2_100_idx))
               if ix is not None and float(mags[ix].min()) <= floor]
    if reached:
        if reached[0] != "fit range":
            what = "R^2 describes"
        else:
            what = "alpha describes" if len(reached) == 1 else "alpha and R^2 describe"
        ranges = (reached[0] if len(reached) == 1
                  else ", the ".join(reached[:-1]) + " and the " + reached[-1])
        notes.append(
            f"[{fn}] the {ranges} reach{'es' if len(reached) == 1 else ''} eigenvalues at "
            f"rounding level (<= {floor:.2e} = len * eps * lambda_1); "
            f"{what} numerical noise there" + hint
        )
    notes.extend(v for v in (r2_undefined, r2_100_undefined) if v is not None)
    ranks = (idx + 1).astype(np.float64)
    x = _log_rank_design(ranks)
    y = np.log(mags[idx])
    w = 1.0 / ranks
    # (x^T W x) b = (W x)^T y  -- the normal equations as written in METRICS.md.
    b = np.linalg.solve(x.T @ (w[:, None] * x), (w[:, None] * x).T @ y)
    all_ranks = np.arange(1, m + 1, dtype=np.float64)
    fitted = np.exp(_log_rank_design(all_ranks) @ b)
    r2 = _r2(r2_idx, mags, b)
    r2_100 = _r2(r2_100_idx, mags, b)
    return AlphaReqResult(
        alpha=float(b[0]), r2=r2, r2_100=r2_100, fitted=fitted,
        fit_range=(lo, hi), warnings=tuple(notes),
    )


def alpha_req(x_or_spectrum, *, fit_range=(11, 100),
              n_samples: int | None = None) -> AlphaReqResult:
    """alpha-ReQ: power-law exponent of the covariance spectrum, lambda_k ~ C k^-alpha.

    Weighted least squares (Stringer & Pachitariu; METRICS.md): for 0-based indices i in
    ``[start, stop)``, ranks k = i + 1, y = log|lambda_i|, x = [-log k, 1], w = 1/k; solve
    (x^T W x) b = (W x)^T y; alpha = b[0]. R^2 is the ordinary (unweighted) R^2 of
    log|lambda| against the line, as in the alpha-ReQ authors' code.

    Parameters
    ----------
    x_or_spectrum
        1-D spectrum ``[m]`` (sorted descending by magnitude here), or 2-D activations
        ``[n, d]`` / ``GramAccumulator``: then the top ``min(2048, n, d)`` covariance
        eigenvalues are used, as in Li et al. (so ``len - 10`` in the R^2 range stays clear of
        the zero eigenvalues of a centered matrix with n <= d).
    fit_range
        ``(start, stop)`` 0-based, stop exclusive; default (11, 100) = ranks 12..100.
    n_samples
        For a 1-D spectrum of all ``d`` covariance eigenvalues: the number of rows n it came
        from, so that (as for 2-D input) only the top ``min(2048, n, d)`` are used and the
        result equals ``alpha_req`` of the accumulator / activations. Without it a 1-D
        spectrum is used whole, and when n <= d the R^2 range ``[start + 1, len - 10)`` runs
        into the d - n + 1 null-space values at rounding level: the warning about
        rounding-level values then says to pass ``n_samples``. With 2-D input it must equal n.

    Returns
    -------
    AlphaReqResult. A spectrum shorter than ``stop`` is fitted on ``[start, len)`` with a
    warning (in ``result.warnings`` and as a :class:`SpectrumWarning`). Exact zeros are dropped
    from the fit and the R^2 ranges with a warning; so do fit or R^2 ranges that reach values
    at rounding level (``<= len * eps(float64) * lambda_1``). ``r2``/``r2_100`` are ``nan``
    (with a warning) when their range holds fewer than 2 positive values. Raises :class:`DegenerateSpectrumError` when
    fewer than 2 positive values are left to fit.
    """
    fn = "alpha_req"
    fit_range = _check_fit_range(fn, fit_range)
    n_samples = _check_n_samples(fn, n_samples)
    notes: list[str] = []
    hint = ""
    nd = _input_ndim(x_or_spectrum, fn)
    if nd == 1:
        s = _as_spectrum(fn, "x_or_spectrum", x_or_spectrum)
        mags = _magnitudes(fn, "x_or_spectrum", s, notes)
        if n_samples is not None:
            mags = mags[: _li2025_count(n_samples, mags.size)]
        else:
            hint = _NULL_SPACE_HINT
    elif nd == 2:
        n, d = _activation_shape(fn, "x_or_spectrum", x_or_spectrum)
        _check_n_samples_matches(fn, n_samples, n)
        lam = _as_spectrum(fn, "covariance spectrum", _covariance_spectrum(fn, x_or_spectrum, n))
        mags = _magnitudes(fn, "covariance spectrum", lam, notes)[: _li2025_count(n, d)]
    else:
        raise ValueError(
            f"[{fn}] x_or_spectrum must be a 1-D spectrum or 2-D activations [n, d], "
            f"got {nd}-D input"
        )
    result = _alpha_core(fn, mags, fit_range, notes, hint)
    _emit(list(result.warnings))
    return result


# ----------------------------------------------------------------------------- other measures


def _nonzero_total(fn: str, mags: np.ndarray) -> float:
    total = float(mags.sum())
    if total == 0.0:
        raise DegenerateSpectrumError(
            f"[{fn}] spectrum is all zeros ({mags.size} values); the measure is undefined"
        )
    return total


def _participation_ratio(fn, mags):
    _nonzero_total(fn, mags)
    # Scale by the largest value first so squares of huge/tiny spectra do not over/underflow.
    r = mags / mags[0]
    return float(r.sum() ** 2 / np.sum(r * r))


def participation_ratio(spectrum) -> float:
    """Participation ratio (sum lambda)^2 / sum lambda^2 of a covariance spectrum [m].

    Between 1 (rank one) and m (flat). Uses |lambda|; all zeros raise
    :class:`DegenerateSpectrumError`.
    """
    fn = "participation_ratio"
    notes: list[str] = []
    mags = _magnitudes(fn, "spectrum", _as_spectrum(fn, "spectrum", spectrum), notes)
    _emit(notes)
    return _participation_ratio(fn, mags)


def _stable_rank(fn, mags):
    total = _nonzero_total(fn, mags)
    return float(total / mags[0])


def stable_rank(spectrum) -> float:
    """Stable rank sum lambda / lambda_1 of a covariance spectrum [m] (= ||X||_F^2 / ||X||_2^2).

    Uses |lambda|; all zeros raise :class:`DegenerateSpectrumError`.
    """
    fn = "stable_rank"
    notes: list[str] = []
    mags = _magnitudes(fn, "spectrum", _as_spectrum(fn, "spectrum", spectrum), notes)
    _emit(notes)
    return _stable_rank(fn, mags)


def _entropy(fn, mags):
    total = _nonzero_total(fn, mags)
    p = mags / total
    # + 0.0 turns the -0.0 of a single value (-(1 log 1)) into +0.0; other values unchanged.
    return float(-_xlogx(p).sum()) + 0.0


def spectral_entropy(spectrum) -> float:
    """Von Neumann entropy -sum p log p (natural log) of p = lambda / sum lambda, [m] -> float.

    0 log 0 = 0, so zeros contribute nothing; range [0, log m]. Uses |lambda|; all zeros
    raise :class:`DegenerateSpectrumError`. No eps is added (unlike RankMe).
    """
    fn = "spectral_entropy"
    notes: list[str] = []
    mags = _magnitudes(fn, "spectrum", _as_spectrum(fn, "spectrum", spectrum), notes)
    _emit(notes)
    return _entropy(fn, mags)


def effective_rank(singular_values) -> float:
    """Effective rank of Roy & Vetterli (2007): exp(-sum q log q), q = sigma / sum sigma.

    ``singular_values``: [m] singular values of a matrix (not eigenvalues -- pass
    ``sqrt(lambda)`` for a covariance spectrum). Between 1 and m; 0 log 0 = 0; no eps. Uses
    |sigma|; all zeros raise :class:`DegenerateSpectrumError`.
    """
    fn = "effective_rank"
    notes: list[str] = []
    mags = _magnitudes(fn, "singular_values",
                       _as_spectrum(fn, "singular_values", singular_values), notes)
    _emit(notes)
    return float(np.exp(_entropy(fn, mags)))


def _condition_number(fn, mags, rtol):
    if mags[0] == 0.0:
        raise DegenerateSpectrumError(
            f"[{fn}] spectrum is all zeros ({mags.size} values); the condition number is undefined"
        )
    if rtol is None:
        rtol = mags.size * np.finfo(np.float64).eps
    kept = mags[mags > rtol * mags[0]]
    return float(mags[0] / kept[-1])


def condition_number(spectrum, *, rtol: float | None = None) -> float:
    """lambda_1 / lambda_min over the positive values of a covariance spectrum [m].

    Values at or below ``rtol * lambda_1`` count as zero (the numerically singular part is
    excluded, as numpy's ``matrix_rank`` does); default ``rtol = m * eps(float64)``. Pass
    ``rtol=0`` to use every positive value. The result is finite (>= 1) unless the ratio
    itself overflows float64. Negative values are used as |lambda| like everywhere else
    here; all zeros raise :class:`DegenerateSpectrumError`.
    """
    fn = "condition_number"
    if rtol is not None:
        if isinstance(rtol, bool) or not isinstance(rtol, (int, float, np.floating, np.integer)):
            raise TypeError(f"[{fn}] rtol must be a float >= 0 or None, got {type(rtol).__name__}")
        rtol = float(rtol)
        if not (math.isfinite(rtol) and rtol >= 0.0):
            raise ValueError(f"[{fn}] rtol must be a finite float >= 0 or None, got {rtol}")
    notes: list[str] = []
    mags = _magnitudes(fn, "spectrum", _as_spectrum(fn, "spectrum", spectrum), notes)
    _emit(notes)
    return _condition_number(fn, mags, rtol)


# ----------------------------------------------------------------------------- geometry

GEOMETRY_KEYS = (
    "rankme", "rankme_garrido2023", "rankme_full", "alpha", "alpha_r2", "alpha_r2_100",
    "participation_ratio", "stable_rank", "spectral_entropy", "effective_rank_roy",
    "condition_number", "n", "dim", "warnings",
)


def geometry(x_or_accumulator, *, fit_range=(11, 100), eps: float = 1e-7,
             method: str = "full", k: int | None = None,
             spectrum=None, singular_values=None) -> dict:
    """Every measure of this module on one set of activations.

    Parameters
    ----------
    x_or_accumulator
        2-D activations ``[n, d]`` (numpy / torch / cupy) or a ``GramAccumulator``.
    fit_range, eps
        As in :func:`alpha_req` and :func:`rankme`.
    method, k
        Passed to the covariance eigensolver (``geomfast.spectrum``); with
        ``method="randomized"`` only k eigenvalues exist, which ``rankme_full`` and the
        other full-spectrum measures then use (a warning says so).
    spectrum, singular_values
        Optional precomputed descending covariance eigenvalues (ddof=1, length d or k) and raw
        singular values (length min(n, d)) of the same data, so callers that already have
        them do not recompute. Each one given replaces its computation.

    Returns
    -------
    dict with exactly the keys of ``GEOMETRY_KEYS``:
    ``rankme`` (li2025), ``rankme_garrido2023``, ``rankme_full``, ``alpha``, ``alpha_r2``,
    ``alpha_r2_100`` (alpha-ReQ on the li2025 spectrum: top min(2048, n, d) eigenvalues),
    ``participation_ratio``, ``stable_rank``, ``spectral_entropy`` (all covariance
    eigenvalues), ``effective_rank_roy`` (Roy & Vetterli on the singular values sigma of the
    raw matrix -- the sigma of METRICS.md; it is ``rankme_garrido2023`` without eps. The
    centered alternative, sqrt of covariance eigenvalues, would turn rounding-level
    eigenvalues of a rank-deficient covariance (n <= d) into sizeable sigmas),
    ``condition_number`` (covariance eigenvalues), ``n``, ``dim`` (int), and
    ``warnings`` (list of str). A measure undefined on this data is ``nan`` and
    ``warnings`` says why; warnings are also issued as :class:`SpectrumWarning`.
    """
    fn = "geometry"
    fit_range = _check_fit_range(fn, fit_range)
    eps = _check_eps(fn, eps)
    if _input_ndim(x_or_accumulator, fn, "x_or_accumulator") != 2:
        raise ValueError(
            f"[{fn}] x_or_accumulator must be 2-D activations [n, d] or a GramAccumulator, "
            f"got {_input_ndim(x_or_accumulator)}-D input"
        )
    n, d = _activation_shape(fn, "x_or_accumulator", x_or_accumulator)
    if (spectrum is None or singular_values is None) and not _is_accumulator(x_or_accumulator):
        # One pass over the activations serves both solves (each would otherwise accumulate them).
        from .linalg import _accumulate

        x_or_accumulator = _accumulate(x_or_accumulator, "highest", fn)
    if spectrum is None and singular_values is None and method == "full" and k is None and n >= 2:
        from .linalg import spectrum_and_singular_values

        spectrum, singular_values = spectrum_and_singular_values(x_or_accumulator)  # solved at once
    if spectrum is None:
        lam = _covariance_spectrum(fn, x_or_accumulator, n, method=method, k=k)
    else:
        lam = spectrum
    if singular_values is None:
        singular_values = _raw_singular_values(x_or_accumulator)
    out = geometry_of_spectra(lam, singular_values, n=n, dim=d, fit_range=fit_range, eps=eps,
                              method=method, _fn=fn)
    _emit(out["warnings"])
    return out


def geometry_of_spectra(spectrum, singular_values, *, n: int, dim: int, fit_range=(11, 100),
                        eps: float = 1e-7, method: str = "full", _fn: str = "geometry_of_spectra") -> dict:
    """:func:`geometry` from the spectra alone: ``spectrum`` (descending covariance eigenvalues,
    ddof=1, length ``dim`` or fewer) and ``singular_values`` (of the raw matrix, at most
    min(n, dim)) of n rows of dimension ``dim``. This is what ``geomfast trace`` computes from
    each accumulator, so metrics under other options (``fit_range``, ``eps``) follow from the
    stored spectra without a model. ``method`` only labels the note given when ``spectrum`` is
    shorter than ``dim``. The warnings are returned, not issued."""
    fn = _fn
    fit_range = _check_fit_range(fn, fit_range)
    eps = _check_eps(fn, eps)
    for name, v in (("n", n), ("dim", dim)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"[{fn}] {name} must be an integer >= 1, got {v!r}")
    n, d = int(n), int(dim)
    notes: list[str] = []
    lam = _as_spectrum(fn, "spectrum", spectrum)
    if lam.size > d:
        raise ValueError(
            f"[{fn}] spectrum must have at most dim={d} values, got {lam.size}"
        )
    sv = _as_spectrum(fn, "singular_values", singular_values)
    if sv.size > min(n, d):
        raise ValueError(
            f"[{fn}] singular_values must have at most min(n, dim)={min(n, d)} values, "
            f"got {sv.size}"
        )

    lam_mags = _magnitudes(fn, "spectrum", lam, notes)
    sv_mags = _magnitudes(fn, "singular_values", sv, notes)
    n_li = _li2025_count(n, d)
    if lam.size < d:
        notes.append(
            f"[{fn}] spectrum has {lam.size} of {d} eigenvalues (method={method!r}); "
            f"rankme_full and the full-spectrum measures use only those"
            + (f", and rankme (li2025) uses {lam.size} instead of {n_li}" if lam.size < n_li
               else "")
        )
    li = _explained_variance_ratio(lam_mags, n, d)

    out: dict = {}

    def attempt(key, func):
        try:
            out[key] = func()
        except DegenerateSpectrumError as e:
            out[key] = float("nan")
            notes.append(f"{key} = nan: {e}")

    attempt("rankme", lambda: _rankme_core(fn, li, eps))
    attempt("rankme_garrido2023", lambda: _rankme_core(fn, sv_mags, eps))
    attempt("rankme_full", lambda: _rankme_core(fn, lam_mags, eps))
    try:
        ar = _alpha_core(fn, lam_mags[:n_li], fit_range, notes)
        out["alpha"], out["alpha_r2"], out["alpha_r2_100"] = ar.alpha, ar.r2, ar.r2_100
    except DegenerateSpectrumError as e:
        out["alpha"] = out["alpha_r2"] = out["alpha_r2_100"] = float("nan")
        notes.append(f"alpha = nan: {e}")
    attempt("participation_ratio", lambda: _participation_ratio(fn, lam_mags))
    attempt("stable_rank", lambda: _stable_rank(fn, lam_mags))
    attempt("spectral_entropy", lambda: _entropy(fn, lam_mags))
    attempt("effective_rank_roy", lambda: float(np.exp(_entropy(fn, sv_mags))))
    attempt("condition_number", lambda: _condition_number(fn, lam_mags, None))
    out["n"] = n
    out["dim"] = d
    # alpha's notes may repeat (none do today); keep order, drop duplicates.
    out["warnings"] = list(dict.fromkeys(notes))
    return {key: out[key] for key in GEOMETRY_KEYS}
