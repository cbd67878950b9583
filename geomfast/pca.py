"""``geomfast.PCA``: a drop-in for ``sklearn.decomposition.PCA`` on the geomfast core.

The paper's pipeline (Li et al. 2025) calls ``PCA(n_components=...).fit(X).explained_variance_ratio_``
and computes RankMe from the ratios. Changing the import to ``from geomfast import PCA`` runs the
same code on the streaming Gram core: the data are never centered in a copy, never decomposed by
an SVD of the n × d matrix, and may be fed in chunks with ``partial_fit``.

How it computes (and why it equals scikit-learn's PCA):

* ``fit`` / ``partial_fit`` stream rows into a :class:`geomfast.GramAccumulator` (float64 state,
  shift-centered), so memory is O(d²) whatever n is; chunks may be numpy, torch (CPU/CUDA, any
  float dtype incl. bfloat16) or cupy arrays.
* ``explained_variance_`` are the eigenvalues of the unbiased covariance (ddof = 1) from the native
  eigensolver — equal to sklearn's ``S² / (n - 1)`` — kept to at most ``min(n_samples, n_features)``
  values, as sklearn's full SVD does. ``explained_variance_ratio_`` divides by the total variance
  (the covariance trace), ``singular_values_ = sqrt(explained_variance_ · (n - 1))``.
* Eigenvectors: the native core returns eigenvalues only. ``components_`` (and so ``transform``,
  ``inverse_transform``, ``get_covariance``) are computed **lazily, on first use**, with
  ``numpy.linalg.eigh`` on the float64 covariance (O(d³) on the CPU), then sign-fixed like
  sklearn's ``svd_flip(u_based_decision=False)``: the largest-magnitude entry of each component is
  positive. Code that only reads spectra never pays for eigenvectors.
* ``svd_solver='randomized'`` solves only the top ``n_components`` eigenvalues (the core's
  randomized subspace iteration); the ratio still divides by the exact trace. ``'auto'`` picks
  randomized when ``n_components`` is an int well below ``n_features`` (see ``geomfast.eigvalsh``).
  A fixed ``iterated_power=q`` runs the Krylov space to depth q + 1 on ``n_components +
  n_oversamples`` start columns, a superset of sklearn's q-iteration subspace (so at least its
  accuracy). sklearn's exact ``'covariance_eigh'`` and ``'arpack'`` are solved as ``'full'``
  (``'arpack'`` with sklearn's ``n_components`` rule). Values of the constructor arguments that
  sklearn refuses are a ``ValueError`` naming the argument.
* A fitted PCA pickles and deep-copies (the accumulator travels as its ``state_dict``).
* The probabilistic PCA model (Tipping & Bishop; Bishop, PRML 12.2.1), as sklearn defines it:
  ``get_covariance`` (sklearn's formula), ``get_precision`` (its inverse), ``score_samples``
  (each row's Gaussian log-likelihood under it) and ``score`` (their mean). In the basis of
  ``components_`` the model covariance is diagonal — ``w·max(ev - σ², 0) + σ²`` along each
  component (``w = ev`` when ``whiten``, as in sklearn, else 1) and ``σ² = noise_variance_``
  across the rest — so the precision, the log-determinant and each row's Mahalanobis term come
  from that diagonal (the eigenvectors are computed then, once), without sklearn's
  inversion-lemma cancellation. With every component kept (``n_components_ = n_features``) the
  model is the sample covariance C (C² whitened, by sklearn's formula) and they come from C⁻¹
  (LU; no eigenvectors), which unlike an eigenbasis is not thrown off by features of very
  different scales. A model covariance singular to working precision (a variance at rounding
  level: ``σ² = 0`` with ``n_components_ < n_features``, e.g. ``n_components=None`` with fewer
  samples than features, or a constant or dependent feature) has no precision or density:
  ``ValueError`` saying which ``n_components`` has one (sklearn returns rounding noise there, e.g.
  a precision of 1e16 and scores of ±inf).
* ``get_feature_names_out`` (``pca0``, ``pca1``, …), ``set_output`` (``transform`` and
  ``fit_transform`` as pandas / polars DataFrames; also sklearn's global ``transform_output``),
  and sklearn's estimator hooks (``get_metadata_routing``, ``__sklearn_tags__``), so pipelines
  with ``set_output`` or metadata routing take it.
* Not supported: ``n_components='mle'`` (raises ``ValueError``); ``feature_names_in_`` (column
  names of a DataFrame are not recorded).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._array import _is_cupy, _is_torch, check_kind, device_of, parse_device
from .accumulator import GramAccumulator

__all__ = ["PCA"]

SOLVERS = ("auto", "full", "covariance_eigh", "arpack", "randomized")  # sklearn's
NORMALIZERS = ("auto", "QR", "LU", "none")


def _to_numpy64(x) -> np.ndarray:
    """float64 numpy copy/view of numpy / torch / cupy / array-like input."""
    if _is_torch(x):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        return x.double().numpy()
    if _is_cupy(x):
        return np.asarray(x.get(), dtype=np.float64)
    return np.asarray(x, dtype=np.float64)


class PCA:
    """Principal component analysis with scikit-learn's estimator API, on the geomfast core.

    Args:
        n_components: None (keep min(n_samples, n_features)), an int k, or a float in (0, 1)
            (the fewest components whose explained variance ratios sum to more than it).
            'mle' is not supported.
        device: where rows are accumulated and the eigenvalues solved: 'cpu', 'cuda', 'cuda:<i>'.
            Chunks on another device are moved there.
        precision: 'highest' (float64 products) or 'fast' (float32 block products flushed into
            float64; see GramAccumulator).
        svd_solver: 'full', 'randomized' (top n_components only; an int, or None for all
            min(n_samples, n_features)), 'auto', or sklearn's 'covariance_eigh' and 'arpack',
            which are exact as 'full' is (they are solved as 'full'; 'arpack' keeps sklearn's
            rule: an int n_components in [1, min(n_samples, n_features)), None = that minus 1).
        random_state: seed of the randomized solver: None (= 0), an int in [0, 2**32) or a
            numpy RandomState (a seed is drawn from it), as sklearn takes.
        whiten: as in sklearn: transform divides by sqrt(explained_variance_).
        copy, tol, iterated_power, n_oversamples, power_iteration_normalizer: sklearn's, so that
            code passing them runs unchanged; values sklearn refuses are a ValueError naming
            the parameter. X is never modified (copy=False changes nothing); tol is for
            sklearn's 'arpack', solved exactly here (tol=0's answer); iterated_power (an int) fixes
            the randomized solver's Krylov depth and n_oversamples its extra width; the solver
            always orthonormalizes, whatever power_iteration_normalizer says.

    Attributes (after fit): components_ [k, d] (lazy), explained_variance_ [k],
    explained_variance_ratio_ [k], singular_values_ [k], mean_ [d], n_components_,
    n_samples_seen_, n_samples_, n_features_in_, noise_variance_ — numpy float64.

    Methods: fit, partial_fit, transform, fit_transform, inverse_transform, get_covariance,
    get_precision, score_samples, score, get_feature_names_out, set_output, get_params,
    set_params (and sklearn's get_metadata_routing / __sklearn_tags__).
    """

    def __init__(self, n_components=None, *, copy=True, whiten=False, svd_solver="auto", tol=0.0,
                 iterated_power="auto", n_oversamples=10, power_iteration_normalizer="auto", random_state=None,
                 device="cpu", precision="highest"):
        self.n_components = n_components
        self.copy = copy
        self.whiten = whiten
        self.svd_solver = svd_solver
        self.tol = tol
        self.iterated_power = iterated_power
        self.n_oversamples = n_oversamples
        self.power_iteration_normalizer = power_iteration_normalizer
        self.random_state = random_state
        self.device = device
        self.precision = precision

    # ------------------------------------------------------------------ sklearn plumbing
    _PARAMS = ("n_components", "copy", "whiten", "svd_solver", "tol", "iterated_power", "n_oversamples",
               "power_iteration_normalizer", "random_state", "device", "precision")

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._PARAMS}

    def set_params(self, **params) -> "PCA":
        for k, v in params.items():
            if k not in self._PARAMS:
                raise ValueError(f"[PCA.set_params] invalid parameter {k!r}; valid: {list(self._PARAMS)}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.get_params().items()
                   if v != PCA().get_params()[k]}
        return "PCA(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"

    def __getstate__(self) -> dict:
        """Pickle / deepcopy (as sklearn's fitted PCA allows: joblib.dump, n_jobs, caching): the
        native accumulator travels as its state_dict and is rebuilt on its device."""
        state = self.__dict__.copy()
        acc = state.pop("_acc", None)
        if acc is not None:
            state["_acc_state"] = (acc.state_dict(), acc.device)
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        saved = state.pop("_acc_state", None)
        self.__dict__.update(state)
        if saved is not None:
            sd, device = saved
            self._acc = GramAccumulator.from_state_dict(sd, device=device, precision=sd.get("precision"))

    # ------------------------------------------------------------------ validation
    def _check_params(self, n_features: int) -> None:
        nc = self.n_components
        if isinstance(nc, str):
            raise ValueError(f"[PCA] n_components={nc!r} is not supported by geomfast.PCA "
                             "(use None, an int or a float in (0, 1))")
        if nc is not None and not isinstance(nc, numbers.Real) or isinstance(nc, bool):
            raise ValueError(f"[PCA] n_components must be None, an int or a float in (0, 1), got {nc!r}")
        if isinstance(nc, numbers.Real) and not isinstance(nc, numbers.Integral):
            if not 0.0 < float(nc) < 1.0:
                raise ValueError(f"[PCA] a float n_components must be in (0, 1), got {nc!r}")
        if n_features < 1:
            raise ValueError(f"[PCA.fit] X has 0 features (shape [n, 0]): expected at least 1")
        if not isinstance(self.svd_solver, str) or self.svd_solver not in SOLVERS:
            raise ValueError(f"[PCA] svd_solver must be one of {SOLVERS}, got {self.svd_solver!r}")
        if self.svd_solver in ("randomized", "arpack") and not (nc is None or isinstance(nc, numbers.Integral)):
            raise ValueError(f"[PCA] svd_solver={self.svd_solver!r} needs an int n_components (or None), "
                             f"got {nc!r}")
        # sklearn's constraints on the other arguments (it raises InvalidParameterError, a ValueError)
        for name in ("whiten", "copy"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"[PCA] {name} must be a bool, got {getattr(self, name)!r}")
        tol = self.tol
        if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real) or not 0 <= tol < math.inf:
            raise ValueError(f"[PCA] tol must be a float >= 0, got {tol!r}")
        it = self.iterated_power
        if not (isinstance(it, str) and it == "auto") and (
                isinstance(it, (bool, np.bool_)) or not isinstance(it, numbers.Integral) or it < 0):
            raise ValueError(f"[PCA] iterated_power must be 'auto' or an int >= 0, got {it!r}")
        ov = self.n_oversamples
        if isinstance(ov, (bool, np.bool_)) or not isinstance(ov, numbers.Integral) or ov < 1:
            raise ValueError(f"[PCA] n_oversamples must be an int >= 1, got {ov!r}")
        if not isinstance(self.power_iteration_normalizer, str) or self.power_iteration_normalizer not in NORMALIZERS:
            raise ValueError(f"[PCA] power_iteration_normalizer must be one of {NORMALIZERS}, "
                             f"got {self.power_iteration_normalizer!r}")
        rs = self.random_state
        if not (rs is None or isinstance(rs, np.random.RandomState) or (
                isinstance(rs, numbers.Integral) and not isinstance(rs, (bool, np.bool_)) and 0 <= rs < 2**32)):
            raise ValueError(f"[PCA] random_state must be None, an int in [0, 2**32) or a "
                             f"numpy.random.RandomState, got {rs!r}")
        parse_device(self.device)

    def _seed(self) -> int:
        rs = self.random_state
        if rs is None:
            return 0
        if isinstance(rs, np.random.RandomState):  # sklearn draws from it too
            return int(rs.randint(0, 2**31 - 1))
        return int(rs)

    def _move(self, x):
        """x on self.device, in a form GramAccumulator.update accepts."""
        want = "cpu" if str(self.device) == "cpu" else None
        if not (_is_torch(x) or _is_cupy(x)):
            x = np.asarray(x)
            if x.dtype.kind not in "fiub":
                raise TypeError(f"[PCA] expected a numeric array, got dtype {x.dtype}")
            if want == "cpu":
                return x
            import torch

            return torch.from_numpy(np.ascontiguousarray(x)).to(str(self.device))
        dev = device_of(x)
        if want == "cpu":
            if dev == "cpu":
                return x
            return x.detach().cpu() if _is_torch(x) else x.get()
        dt, di = parse_device(self.device)
        target = f"cuda:{di}"
        if dev == target:
            return x
        if _is_torch(x):
            return x.detach().to(target)
        import cupy

        with cupy.cuda.Device(di):
            return cupy.asarray(x.get() if dev != "cpu" else x)

    @staticmethod
    def _shape(x, func: str) -> tuple[int, int]:
        if type(x).__module__.startswith("scipy.sparse"):  # np.asarray would make a 0-d object array
            raise TypeError(f"[PCA.{func}] X is a sparse matrix ({type(x).__name__}); geomfast.PCA takes dense "
                            "arrays: pass X.toarray(), or dense row blocks of it to partial_fit")
        check_kind(x, func=f"PCA.{func}", arg="X")  # complex, object, sparse, meta: named here
        shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
        if len(shape) != 2:
            raise ValueError(f"[PCA.{func}] expected a 2-D array [n_samples, n_features], got shape {shape}")
        return int(shape[0]), int(shape[1])

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None) -> "PCA":
        """Fit on all rows of X [n_samples, n_features] (numpy / torch / cupy). A fit that fails
        (bad shape, too few rows, NaN) leaves the previous fit as it was."""
        n, d = self._shape(X, "fit")
        self._check_params(d)
        self._check_counts(n, d, "fit")
        acc = GramAccumulator(d, device=self.device, precision=self.precision).update(self._move(X))
        self._reset()
        self._acc = acc
        return self._refresh(d)

    def partial_fit(self, X, y=None, check_input=True) -> "PCA":
        """Add the rows of X to the running covariance and refresh the fitted attributes.

        Unlike IncrementalPCA the result equals a PCA fitted on every row seen so far (the
        covariance is accumulated exactly, not approximated batch by batch), and a chunk may hold
        fewer rows than n_components: the rows seen in all are checked against it when a fitted
        attribute is first read. A chunk that is refused (wrong width, NaN) adds nothing."""
        n, d = self._shape(X, "partial_fit")
        acc = getattr(self, "_acc", None)
        if acc is not None and d != acc.dim:
            raise ValueError(f"[PCA.partial_fit] X has {d} features, but PCA was fitted with {acc.dim}")
        self._check_params(d)
        if acc is None:
            acc = GramAccumulator(d, device=self.device, precision=self.precision)
        if n:
            acc.update(self._move(X))  # raises before it changes anything
        self._acc = acc
        return self._refresh(d)

    def _check_counts(self, count: int, d: int, func: str) -> None:
        if count < 2:
            raise ValueError(f"[PCA.{func}] needs at least 2 samples in all, got {count}")
        m = min(count, d)
        nc = self.n_components
        if isinstance(nc, numbers.Integral) and not 0 <= nc <= m:
            raise ValueError(f"[PCA.{func}] n_components={nc} must be between 0 and "
                             f"min(n_samples, n_features)={m}")
        if self.svd_solver == "arpack" and isinstance(nc, numbers.Integral) and not 1 <= nc < m:
            raise ValueError(f"[PCA.{func}] n_components={nc} must be between 1 and min(n_samples, "
                             f"n_features)={m} (strictly less) with svd_solver='arpack', as in sklearn")

    def _refresh(self, d: int) -> "PCA":
        # Cheap attributes now; the spectrum (O(d³)) when an attribute that needs it is read,
        # so streaming many chunks through partial_fit costs one eigensolve, not one per chunk.
        acc = self._acc
        self.n_samples_seen_ = self.n_samples_ = acc.count
        self.n_features_in_ = d
        if acc.count:
            self.mean_ = acc.mean()
        else:
            self.__dict__.pop("mean_", None)
        self._fitted = None
        return self

    def _reset(self) -> None:
        for k in ("_acc", "_fitted", "n_samples_seen_", "n_samples_", "n_features_in_", "mean_"):
            self.__dict__.pop(k, None)

    def _spectral(self, attr: str) -> dict:
        """The fitted spectral attributes, computed on first need after a (partial_)fit."""
        self._check_fitted(attr)
        if self._fitted is None:
            self._check_counts(self._acc.count, self._acc.dim, attr)
            self._fitted = self._solve()
        return self._fitted

    def _solve(self) -> dict:
        acc: GramAccumulator = self._acc
        n, d = acc.count, acc.dim
        m = min(n, d)
        nc = self.n_components
        cov = acc.covariance(ddof=1)
        total_var = float(np.trace(cov))
        solver = self.svd_solver
        if nc is None and solver == "arpack":
            nc = m - 1  # sklearn's default for arpack, which cannot give all m
        if solver in ("covariance_eigh", "arpack"):  # sklearn's exact solvers: the exact spectrum
            solver = "full"
        if solver == "auto":
            solver = ("randomized" if isinstance(nc, numbers.Integral) and nc > 0 and d >= 512
                      and (nc + 16) * 4 <= d else "full")
        if solver == "randomized":
            if nc is None:
                nc = m
            seed = self._seed()
            opts = {"oversample": int(self.n_oversamples)}
            if self.iterated_power != "auto":  # sklearn's power iterations: a fixed Krylov depth here
                # sklearn's q iterations span C^(q+1)·Ω, Ω of k + n_oversamples columns (its range
                # finder multiplies by X once before them); the core's depth j spans Ω … C^j·Ω of
                # `block` columns, so depth q + 1 with that width holds sklearn's space. (Depth q of
                # the default 32-wide block was q products short and far narrower: up to 96 % off
                # where sklearn is 3 %.)
                opts["n_iter"] = int(self.iterated_power) + 1
                opts["block"] = min(d, int(nc) + int(self.n_oversamples))
            ev = (acc.spectrum(ddof=1, method="randomized", k=int(nc), seed=seed, **opts) if nc > 0
                  else np.zeros(0))
        else:
            ev = acc.spectrum(ddof=1, method="full")[:m]
        ev = np.clip(ev, 0.0, None)  # rounding-level negatives, as sklearn clips
        ratio = ev / total_var if total_var > 0 else np.zeros_like(ev)
        if nc is None:
            k = m
        elif isinstance(nc, numbers.Integral):
            k = int(nc)
        else:
            k = int(np.searchsorted(np.cumsum(ratio), float(nc), side="right") + 1)
            k = min(k, m)
        if k < m:
            rest = ev[k:] if solver == "full" else None
            if rest is not None:
                noise = float(rest.mean())
            else:  # only the top k are known: the remaining variance spread over the rest
                noise = (total_var - float(ev[:k].sum())) / (m - k)
        else:
            noise = 0.0
        ev_k = ev[:k].copy()
        return {"n_components_": k, "explained_variance_": ev_k,
                "explained_variance_ratio_": ratio[:k].copy(),
                "singular_values_": np.sqrt(ev_k * (n - 1)), "noise_variance_": noise,
                "solver": solver, "cov": cov, "components": None}

    def _check_fitted(self, func: str) -> None:
        if getattr(self, "_acc", None) is None or "n_samples_seen_" not in self.__dict__:
            raise _not_fitted(f"[PCA.{func}] this PCA instance is not fitted yet; call fit or partial_fit first")

    n_components_ = property(lambda self: self._spectral("n_components_")["n_components_"],
                             doc="Number of components kept.")
    explained_variance_ = property(
        lambda self: self._spectral("explained_variance_")["explained_variance_"],
        doc="[k] covariance eigenvalues (ddof=1), descending.")
    explained_variance_ratio_ = property(
        lambda self: self._spectral("explained_variance_ratio_")["explained_variance_ratio_"],
        doc="[k] explained_variance_ / total variance (the covariance trace).")
    singular_values_ = property(lambda self: self._spectral("singular_values_")["singular_values_"],
                                doc="[k] singular values of the centered data: sqrt(ev · (n - 1)).")
    noise_variance_ = property(lambda self: self._spectral("noise_variance_")["noise_variance_"],
                               doc="Mean variance of the discarded directions (probabilistic PCA).")

    # ------------------------------------------------------------------ lazy eigenvectors
    @property
    def components_(self) -> np.ndarray:
        """[n_components_, n_features] principal axes (rows), computed on first access with
        numpy.linalg.eigh on the covariance; signs follow sklearn (largest |entry| positive)."""
        f = self._spectral("components_")
        if f["components"] is None:
            _, v = np.linalg.eigh(f["cov"])  # ascending
            vt = v[:, ::-1].T[: f["n_components_"]]
            idx = np.argmax(np.abs(vt), axis=1)
            signs = np.sign(vt[np.arange(vt.shape[0]), idx])
            signs[signs == 0] = 1.0
            f["components"] = np.ascontiguousarray(vt * signs[:, None])
        return f["components"]

    def get_covariance(self) -> np.ndarray:
        """Model covariance [d, d] (sklearn's formula: components' variance plus isotropic noise)."""
        self._check_fitted("get_covariance")
        comp = self.components_
        ev = self.explained_variance_
        if self.whiten:
            comp = comp * np.sqrt(ev)[:, None]
        diff = np.where(ev > self.noise_variance_, ev - self.noise_variance_, 0.0)
        cov = (comp.T * diff) @ comp  # sklearn's formula, whitened components included
        cov.flat[:: cov.shape[0] + 1] += self.noise_variance_
        return cov

    def _model(self, func: str) -> tuple[int, int, np.ndarray, float]:
        """The probabilistic PCA model of get_covariance in the basis of components_: (k, d, the
        model variances along the k components [k], σ² = noise_variance_ across the other d - k
        directions). ValueError, naming ``func``, where that covariance is singular to working
        precision (its precision, log-determinant and densities do not exist)."""
        self._check_fitted(func)
        f = self._spectral(func)
        ev = f["explained_variance_"]
        s2 = float(f["noise_variance_"])
        k, d = int(f["n_components_"]), int(self._acc.dim)
        # The variances the model is made of: the kept eigenvalues along the components and σ²
        # across the rest. One at the covariance's rounding level (d·ε·largest) is no variance
        # (a null direction of the data, e.g. beyond n_samples - 1): the model is singular.
        fitted = np.concatenate([ev, [s2] if k < d else []])
        vmax = float(fitted.max()) if fitted.size else 0.0
        vmin = float(fitted.min()) if fitted.size else 0.0
        tiny = d * np.finfo(np.float64).eps * vmax
        if not vmin > tiny:
            what = (f"noise_variance_ = {s2:.3g} across the {d - k} feature direction(s) the "
                    f"{k} component(s) leave out" if k < d and s2 <= vmin
                    else f"explained variance {vmin:.3g} along component {int(np.argmin(ev))}")
            r = int(np.sum(ev > tiny))  # the data's directions of nonzero variance (numerically)
            fix = (f"fit with n_components at most {r - 1}" if r >= 1 else
                   "the rows are all the same, and no Gaussian has them as samples")
            raise ValueError(
                f"[PCA.{func}] the model covariance is singular to working precision: {what} (the "
                f"largest variance is {vmax:.3g}), so it has no inverse and the data no density "
                f"under it. The data vary in {r} of the {d} feature directions; {fix} (now "
                f"n_components={self.n_components!r}, n_components_ = {k})")
        diff = np.where(ev > s2, ev - s2, 0.0)
        lam = (ev if self.whiten else 1.0) * diff + s2  # get_covariance: comp_w.T·diag(diff)·comp_w + σ²·I
        if lam.size and not lam.min() > 0:  # whiten: ev·(ev - σ²) + σ² underflows only with σ² = 0
            raise ValueError(f"[PCA.{func}] the whitened model variance ev² of component "
                             f"{int(np.argmin(lam))} underflows to 0: the model covariance is singular")
        return k, d, lam, s2

    def _inverse_covariance(self, func: str) -> tuple[np.ndarray, float]:
        """(C⁻¹, log det C) of the sample covariance C (ddof=1), by LU: with every component
        kept (n_components_ = n_features) the model covariance is C (C² when whitened, by
        sklearn's formula), and an inverse taken from C's entries is insensitive to the scale
        of each feature, which one through its eigenvectors is not (data with outlier features
        lose digits there)."""
        f = self._spectral(func)
        if f.get("cov_inv") is None:
            cov = f["cov"]
            sign, logdet = np.linalg.slogdet(cov)
            if not sign > 0:
                raise ValueError(f"[PCA.{func}] the sample covariance is singular (its determinant is "
                                 f"{'0' if sign == 0 else 'negative'} in floating point): no precision "
                                 "or density; fit with a smaller n_components")
            inv = np.linalg.solve(cov, np.eye(cov.shape[0]))
            f["cov_inv"] = ((inv + inv.T) / 2, float(logdet))
        return f["cov_inv"]

    def get_precision(self) -> np.ndarray:
        """Model precision [d, d]: the inverse of :meth:`get_covariance` (sklearn's definition,
        whiten included)."""
        k, d, lam, s2 = self._model("get_precision")
        if k == d:  # every component kept: C⁻¹ (C⁻² whitened)
            inv, _ = self._inverse_covariance("get_precision")
            return inv @ inv if self.whiten else inv.copy()
        comp = self.components_ if k else np.zeros((0, d))
        prec = (comp.T * (1.0 / lam - 1.0 / s2)) @ comp  # the model's eigenbasis
        prec.flat[:: d + 1] += 1.0 / s2
        return prec

    def score_samples(self, X):
        """Log-likelihood of each row of X [n, n_features] under the probabilistic PCA model
        (Gaussian with mean ``mean_`` and covariance :meth:`get_covariance`; Bishop, PRML
        12.2.1), as sklearn's PCA.score_samples: [n] in X's library and device, float64."""
        k, d, lam, s2 = self._model("score_samples")
        mean, whiten = self.mean_, self.whiten
        if k == d:  # the model covariance is C (C² whitened): from C⁻¹, see _inverse_covariance
            inv, logdet_c = self._inverse_covariance("score_samples")
            logdet = 2.0 * logdet_c if whiten else logdet_c
        else:
            comp = self.components_ if k else np.zeros((0, d))
            logdet = float(np.sum(np.log(lam))) + (d - k) * math.log(s2)
        const = -0.5 * (d * math.log(2.0 * math.pi) + logdet)

        def fn(x, conv):
            xr = x - conv(mean)
            if k == d:
                y = xr @ conv(inv)
                q = (y * y).sum(1) if whiten else (xr * y).sum(1)
                return -0.5 * q + const
            c = conv(comp)
            z = xr @ c.T  # coordinates along the components
            q = (z * z / conv(lam)).sum(1)
            r = xr - z @ c  # the rest, measured directly rather than as |x|² - |z|²
            q = q + (r * r).sum(1) / s2
            return -0.5 * q + const

        return self._apply(X, fn, "score_samples", self.n_features_in_, keep_float64=True)

    def score(self, X, y=None) -> float:
        """Mean log-likelihood of the rows of X under the model (:meth:`score_samples`)."""
        ll = self.score_samples(X)
        return float(ll.mean())

    # ------------------------------------------------------------------ sklearn API extras
    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the transform's output columns, as sklearn's: ``pca0`` … ``pca{k-1}``
        (object array). ``input_features``, when given, must have n_features_in_ names."""
        self._check_fitted("get_feature_names_out")
        if input_features is not None:
            names = np.asarray(input_features, dtype=object)
            if names.ndim != 1 or len(names) != self.n_features_in_:
                raise ValueError(f"[PCA.get_feature_names_out] input_features should have length equal "
                                 f"to number of features ({self.n_features_in_}), got "
                                 f"{len(names) if names.ndim == 1 else f'shape {names.shape}'}")
        k = self.n_components_  # the spectrum only: no eigenvectors for names
        return np.asarray([f"pca{i}" for i in range(k)], dtype=object)

    _OUTPUTS = ("default", "pandas", "polars")

    def set_output(self, *, transform=None) -> "PCA":
        """Output container of transform and fit_transform, as sklearn's set_output:
        'default' (an array of X's kind), 'pandas' or 'polars' (a DataFrame with columns
        get_feature_names_out(); pandas keeps X's index), None (unchanged). Unset, sklearn's
        global ``transform_output`` (sklearn.set_config) applies, as for sklearn's PCA."""
        if transform is None:
            return self
        if transform not in self._OUTPUTS:
            raise ValueError(f"[PCA.set_output] transform must be one of {self._OUTPUTS} or None, "
                             f"got {transform!r}")
        if not hasattr(self, "_sklearn_output_config"):  # sklearn's name: clone() copies it
            self._sklearn_output_config = {}
        self._sklearn_output_config["transform"] = transform
        return self

    def _output(self) -> str:
        mode = getattr(self, "_sklearn_output_config", {}).get("transform")
        if mode is None:
            try:
                from sklearn import get_config
            except ImportError:
                return "default"
            mode = get_config().get("transform_output", "default")
        if mode not in self._OUTPUTS:
            raise ValueError(f"[PCA.transform] output container must be one of {self._OUTPUTS}, got {mode!r}")
        return mode

    def _wrap(self, z, X):
        mode = self._output()
        if mode == "default":
            return z
        if _is_torch(z):
            z = z.detach().cpu().numpy()
        elif _is_cupy(z):
            z = z.get()
        columns = list(self.get_feature_names_out())
        try:
            lib = __import__(mode)
        except ImportError as e:
            raise ImportError(f"[PCA.transform] set_output(transform={mode!r}) needs {mode}, which is "
                              f"not installed") from e
        if mode == "pandas":
            index = getattr(X, "index", None) if isinstance(X, lib.DataFrame) else None
            return lib.DataFrame(z, index=index, columns=columns, copy=False)
        return lib.DataFrame(z, schema=columns, orient="row")

    def get_metadata_routing(self):
        """sklearn's metadata routing: PCA requests no metadata (an empty MetadataRequest)."""
        from sklearn.utils.metadata_routing import MetadataRequest

        return MetadataRequest(owner=self)

    def __sklearn_tags__(self):
        """sklearn's estimator tags (sklearn >= 1.6): a transformer that needs fitting, takes
        dense 2-D input without NaN and preserves float32 / float64."""
        from sklearn.base import BaseEstimator, TransformerMixin

        class _Transformer(TransformerMixin, BaseEstimator):  # sklearn's defaults for one
            pass

        tags = _Transformer().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ------------------------------------------------------------------ projections
    def _apply(self, X, fn, func: str, expected_cols: int, keep_float64: bool = False):
        """Run fn on a float64 version of X in X's own library/device; return X's kind of array
        (float32 for float32/16/bfloat16 inputs, float64 otherwise, like sklearn; float64
        always with ``keep_float64``)."""
        n, d = self._shape(X, func)
        if d != expected_cols:
            raise ValueError(f"[PCA.{func}] X has {d} features, expected {expected_cols}")
        if _is_torch(X):
            import torch

            out_dtype = torch.float64 if X.dtype == torch.float64 or keep_float64 else torch.float32
            xt = X.detach().to(torch.float64)
            _check_finite(torch.isfinite(xt).all(dim=1).cpu().numpy(), func)
            res = fn(xt, lambda a: torch.as_tensor(a, dtype=torch.float64, device=xt.device))
            return res.to(out_dtype)
        if _is_cupy(X):
            import cupy

            out_dtype = cupy.float64 if X.dtype == cupy.float64 or keep_float64 else cupy.float32
            xc = X.astype(cupy.float64)
            _check_finite(cupy.asnumpy(cupy.isfinite(xc).all(axis=1)), func)
            res = fn(xc, lambda a: cupy.asarray(a, dtype=cupy.float64))
            return res.astype(out_dtype)
        x = np.asarray(X)
        out_dtype = np.float32 if x.dtype in (np.float32, np.float16) and not keep_float64 else np.float64
        x64 = x.astype(np.float64, copy=False)
        _check_finite(np.isfinite(x64).all(axis=1), func)
        res = fn(x64, lambda a: np.asarray(a, dtype=np.float64))
        return res.astype(out_dtype, copy=False)

    def transform(self, X):
        """Project X [n, n_features] on the components: [n, n_components_]."""
        self._check_fitted("transform")
        comp, mean = self.components_, self.mean_
        scale = np.sqrt(self.explained_variance_) if self.whiten else None

        def fn(x, conv):
            z = (x - conv(mean)) @ conv(comp).T
            if scale is not None:
                z = z / conv(np.where(scale > 0, scale, 1.0))
            return z

        return self._wrap(self._apply(X, fn, "transform", self.n_features_in_), X)

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    def inverse_transform(self, X):
        """Back to feature space: [n, n_components_] -> [n, n_features]."""
        self._check_fitted("inverse_transform")
        comp, mean = self.components_, self.mean_
        if self.whiten:
            comp = comp * np.sqrt(self.explained_variance_)[:, None]

        def fn(z, conv):
            return z @ conv(comp) + conv(mean)

        return self._apply(X, fn, "inverse_transform", self.n_components_)

    # ------------------------------------------------------------------ geomfast extras
    @property
    def accumulator(self) -> GramAccumulator:
        """The underlying GramAccumulator (e.g. to merge states across processes or save them)."""
        self._check_fitted("accumulator")
        return self._acc


def _check_finite(row_ok: np.ndarray, func: str) -> None:
    """NaN/Inf in X is an error (sklearn raises too), not rows of NaN in the result."""
    if not row_ok.all():
        bad = np.flatnonzero(~row_ok)
        raise ValueError(f"[PCA.{func}] X holds NaN or Inf in {bad.size} row(s), the first is row {int(bad[0])}: "
                         "expected finite values")


def _not_fitted(msg: str) -> Exception:
    try:  # sklearn's own class, so `except NotFittedError` in user code still works
        from sklearn.exceptions import NotFittedError

        return NotFittedError(msg)
    except ImportError:  # pragma: no cover
        return AttributeError(msg)
