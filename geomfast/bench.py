"""``geomfast bench``: Gram and eigensolver throughput of geomfast against the baselines installed.

Every figure comes from one process: geomfast and each baseline run on the same inputs, one after
the other, with warm-up calls first and the median over ``repeats`` timed calls reported.

Conventions
-----------
* **Gram** (``op='gram'``): input ``X`` is ``[n_rows, d]`` activations (power-law spectrum, large
  column means like LM hidden states). geomfast = ``GramAccumulator(d, precision).update(X)`` then
  ``.covariance()`` (centered, float64). Baselines compute the raw product the paper's scripts do:
  numpy float32 ``X.T @ X``, numpy float64 (``X.astype(float64)`` then ``X.T @ X``), torch
  ``X.float().T @ X.float()`` and ``X.double().T @ X.double()`` (the only ones for bf16/fp16
  input, which numpy cannot hold), cupy on CUDA when installed. GFLOP/s = ``n · d² / t``: the
  symmetric half of the product, the paper's ``N·d²`` (numpy's syrk does that work; a full gemm does
  twice as much). Accuracy = ‖result − reference‖_F / ‖reference‖_F against the float64 product of
  the exactly up-cast input (centered covariance for geomfast, raw ``XᵀX`` for the baselines).
* **Eigenvalues** (``op='eig'``): ``A = Q diag(λ) Qᵀ`` with ``λ_k = k^(−alpha)`` (known exactly),
  float64 ``[d, d]``. geomfast ``eigvalsh(A, method=…)``; baselines ``numpy.linalg.eigvalsh``,
  ``scipy.linalg.eigh(eigvals_only=True, driver='evd')``, ``torch.linalg.eigvalsh``; for
  ``method='randomized'`` also ``torch.svd_lowrank`` and sklearn's ``randomized_svd`` (top ``k``;
  A is positive definite, so its singular values are its eigenvalues). Accuracy = max over the
  returned values of |λ̂_i − λ_i| / λ_1. GFLOP/s uses the nominal ``4/3 · d³`` of a values-only dense
  solve (the tridiagonal reduction) for every method, so randomized rows read as
  "full-solve-equivalent" throughput.
* **speedup** = t(baseline) / t(geomfast) on the same case: above 1, geomfast is faster.

Timings follow the machine's thread settings (OMP/OPENBLAS/MKL_NUM_THREADS, torch threads); both
sides run under the same ones, which the JSON records.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import time
from typing import Callable, Sequence

import numpy as np

__all__ = ["make_activations", "make_spd", "gram_cases", "eig_cases", "time_call", "bench_gram",
           "bench_eig", "run_bench", "format_bench", "machine_info", "register_cli"]

DTYPES = ("float32", "bfloat16", "float16", "float64")
QUICK_SIZES = (256, 512)


def _have(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- inputs

def make_activations(n_rows: int, d: int, dtype: str = "float32", *, device: str = "cpu",
                     alpha: float = 1.0, seed: int = 0):
    """[n_rows, d] LM-like activations: power-law column scales (k^(−alpha/2)), column means
    ~10× the spread, one outlier column. numpy for float32/float64/float16 on the CPU, torch
    otherwise (bfloat16, or any dtype on CUDA)."""
    if dtype not in DTYPES:
        raise ValueError(f"[bench] dtype must be one of {DTYPES}, got {dtype!r}")
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, d + 1) ** (-alpha / 2)).astype(np.float32)
    mean = (10.0 * rng.uniform(-1, 1, d)).astype(np.float32)
    x = np.empty((n_rows, d), dtype=np.float32)
    step = 16384
    for i in range(0, n_rows, step):  # chunks: no float64 [n, d] temporary
        m = min(step, n_rows - i)
        x[i:i + m] = rng.standard_normal((m, d), dtype=np.float32) * scale + mean
    x[:, d // 2] *= 20.0  # a "massive activation" column
    if dtype in ("float32", "float64", "float16") and device == "cpu":
        return x.astype(dtype, copy=False)
    import torch

    t = torch.from_numpy(x).to(getattr(torch, dtype))
    return t.to(device) if device != "cpu" else t


def make_spd(d: int, *, alpha: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(A [d, d] float64 symmetric positive definite, its eigenvalues descending: k^(−alpha)).

    alpha must be a finite number >= 0 (0: a flat spectrum, A = I up to rounding); a negative
    alpha would make the spectrum ascending."""
    _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    lam = np.arange(1, d + 1, dtype=np.float64) ** (-alpha)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q *= np.sign(np.diag(r))
    a = (q * lam) @ q.T
    return (a + a.T) / 2, lam


def _to_numpy64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _reference_gram(x, centered: bool) -> np.ndarray:
    """float64 XᵀX (or the centered covariance, ddof=1) of the exactly up-cast input, by chunks."""
    n, d = x.shape
    mean = np.zeros(d)
    if centered:
        for i in range(0, n, 16384):
            mean += _to_numpy64(x[i:i + 16384]).sum(axis=0)
        mean /= n
    g = np.zeros((d, d))
    for i in range(0, n, 16384):
        c = _to_numpy64(x[i:i + 16384]) - mean
        g += c.T @ c
    return g / (n - 1) if centered else g


# ----------------------------------------------------------------------------- checks

def _name(key: str, cli: bool) -> str:
    """How an error names a setting: the CLI flag (``--tol-k``) or the keyword (``tol_k``)."""
    return "--" + key.replace("_", "-") if cli else key


def _fail(msg: str, cli: bool):
    raise ValueError(msg if cli else f"[bench] {msg}")


def _check_alpha(alpha, cli: bool = False) -> float:
    """alpha: the power-law exponent of the eigenvalue spectrum k^(−alpha), descending. 0 is a
    flat spectrum (every row still has a meaningful error against it); negative would be ascending."""
    if (isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating))
            or not math.isfinite(alpha) or alpha < 0):
        _fail(f"{_name('alpha', cli)} must be a finite number >= 0 (the spectrum k^-alpha descends; "
              f"0 is flat), got {alpha!r}", cli)
    return float(alpha)


_DEVICE_RE = re.compile(r"cuda(?::(\d+))?")


def _check_device(device, cli: bool = False) -> str:
    """cpu, cuda or cuda:N, where for cuda geomfast's CUDA backend is usable (and torch, which makes
    the inputs there, has CUDA)."""
    flag = _name("device", cli)
    if not isinstance(device, str):
        _fail(f"{flag} must be cpu, cuda or cuda:N, got {device!r}", cli)
    if device == "cpu":
        return device
    m = _DEVICE_RE.fullmatch(device)
    if m is None:
        _fail(f"{flag} must be cpu, cuda or cuda:N, got {device!r}", cli)
    from .linalg import backends

    cuda = backends().get("cuda", {})
    if not cuda.get("usable"):
        _fail(f"{flag} {device}: geomfast's CUDA backend is not usable here: "
              f"{cuda.get('reason') or 'no reason given'}", cli)
    count = int(cuda.get("device_count") or 0)
    if m.group(1) is not None and int(m.group(1)) >= count:
        _fail(f"{flag} {device}: expected cuda:0 to cuda:{count - 1} ({count} CUDA device(s)), "
              f"got index {m.group(1)}", cli)
    if not _have("torch"):
        _fail(f"{flag} {device}: the benchmark makes its CUDA inputs with torch, which is not installed", cli)
    import torch

    if not torch.cuda.is_available():
        _fail(f"{flag} {device}: the benchmark makes its CUDA inputs with torch, and this torch "
              f"({torch.__version__}) has no usable CUDA", cli)
    return device


def _check_eig_options(eig_options: dict | None, cli: bool = False, k: int | None = None) -> dict:
    """The randomized solver's options, by geomfast.eigvalsh's rules (linalg._eig_args): tol a
    finite float > 0, the integer options >= 0; and what the benchmark sets itself: a block width
    >= 1 (0 would silently be the solver's default width, not what the row says it timed) and
    tol_k in [1, k] (past k the solver clamps it to k)."""
    from .linalg import eig_option_problem

    opts = dict(eig_options or {})
    problem = eig_option_problem(opts, lambda key: _name(key, cli))
    if problem:
        _fail(problem, cli)
    if opts.get("block") == 0:
        _fail(f"{_name('block', cli)} must be an int >= 1 (leave it out for the solver's default, "
              "clamp(k/8, 32, 256)), got 0", cli)
    tol_k = opts.get("tol_k")
    if tol_k is not None and (tol_k == 0 or (k is not None and tol_k > k)):
        _fail(f"{_name('tol_k', cli)} must be an int in [1, {_name('k', cli)}={k}] (leave it out for all k), "
              f"got {tol_k}", cli)
    return opts


def _check_counts(repeats, warmup, cli: bool = False) -> None:
    """repeats >= 1 timed calls, warmup >= 0 untimed ones (a negative count ran none, silently)."""
    for key, value, least in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            _fail(f"{_name(key, cli)} must be an int >= {least}, got {value!r}", cli)


def _check_k(k, sizes: Sequence[int], cli: bool = False) -> int:
    """randomized top-k: 1 <= k <= every size, as geomfast.eigvalsh refuses k > d (no clamping)."""
    smallest = min(int(d) for d in sizes)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= smallest:
        _fail(f"{_name('k', cli)} must be an int in [1, {smallest}] (the smallest size: "
              f"eigvalsh refuses k > d), got {k!r}", cli)
    return int(k)


def _error_kind(message: str) -> str:
    """'ValueError' of 'ValueError: …' (the exception type a row's error starts with)."""
    head = message.split(":", 1)[0]
    return head if head.isidentifier() else "see below"


# ----------------------------------------------------------------------------- cases

def gram_cases(x, *, precision: str = "highest", device: str = "cpu") -> dict[str, tuple[Callable, bool]]:
    """name -> (call returning the product as something numpy can read, centered?) for input x.
    The first entry is geomfast."""
    from .accumulator import GramAccumulator

    d = x.shape[1]
    cases: dict[str, tuple[Callable, bool]] = {
        f"geomfast[{precision}]": (lambda: GramAccumulator(d, device=device, precision=precision)
                                   .update(x).covariance(), True)}
    is_torch = hasattr(x, "detach")
    if not is_torch:
        if x.dtype == np.float32:
            cases["numpy float32 X.T@X"] = (lambda: x.T @ x, False)
        cases["numpy float64 X.T@X"] = (lambda: (lambda y: y.T @ y)(x.astype(np.float64)), False)
    if _have("torch"):
        import torch

        t = x if is_torch else torch.from_numpy(x)
        if device != "cpu" and not is_torch:
            t = t.to(device)
        cases["torch float32 X.T@X"] = (lambda: (lambda y: y.T @ y)(t.float()), False)
        cases["torch float64 X.T@X"] = (lambda: (lambda y: y.T @ y)(t.double()), False)
    if device.startswith("cuda") and _have("cupy") and not (is_torch and str(x.dtype) == "torch.bfloat16"):
        import cupy

        c = cupy.asarray(x) if not is_torch else cupy.from_dlpack(x)
        cases["cupy float32 X.T@X"] = (lambda: (lambda y: y.T @ y)(c.astype(cupy.float32)), False)
        cases["cupy float64 X.T@X"] = (lambda: (lambda y: y.T @ y)(c.astype(cupy.float64)), False)
    return cases


def eig_cases(a: np.ndarray, *, method: str = "full", k: int | None = None, device: str = "cpu",
              seed: int = 0, eig_options: dict | None = None) -> dict[str, Callable]:
    """name -> call returning eigenvalues (any order) of the float64 SPD matrix a.
    The first entry is geomfast with ``method``; for randomized, geomfast full follows."""
    from .linalg import eigvalsh

    d = a.shape[0]
    src = a
    if device != "cpu":
        import torch

        src = torch.from_numpy(a).to(device)
    cases: dict[str, Callable] = {}
    if method == "randomized":
        opts = dict(eig_options or {})
        label = "".join(f" {key}={val}" for key, val in sorted(opts.items()))
        cases[f"geomfast randomized k={k}{label}"] = lambda: eigvalsh(src, method="randomized", k=k, seed=seed,
                                                                     **opts)
    cases["geomfast full"] = lambda: eigvalsh(src, method="full")
    if device == "cpu":
        cases["numpy.linalg.eigvalsh"] = lambda: np.linalg.eigvalsh(a)
        if _have("scipy"):
            import scipy.linalg

            cases["scipy eigh evd"] = lambda: scipy.linalg.eigh(a, eigvals_only=True, driver="evd")
    if _have("torch"):
        import torch

        ta = torch.from_numpy(a).to(device)
        cases["torch.linalg.eigvalsh"] = lambda: torch.linalg.eigvalsh(ta)
        if method == "randomized":
            cases[f"torch.svd_lowrank q={k + 16}"] = lambda: torch.svd_lowrank(ta, q=min(d, k + 16), niter=4)[1][:k]
    if method == "randomized" and device == "cpu" and _have("sklearn"):
        from sklearn.utils.extmath import randomized_svd

        cases["sklearn randomized_svd"] = lambda: randomized_svd(a, n_components=k, random_state=seed)[1]
    if device.startswith("cuda") and _have("cupy"):
        import cupy

        ca = cupy.asarray(a)
        cases["cupy.linalg.eigvalsh"] = lambda: cupy.linalg.eigvalsh(ca)
    return cases


def time_call(fn: Callable, *, repeats: int = 5, warmup: int = 1, device: str = "cpu"):
    """(median seconds, min seconds, last result) over ``repeats`` calls after ``warmup`` calls."""
    out = None
    for _ in range(warmup):
        out = fn()
        _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


# ----------------------------------------------------------------------------- runs

def _speedups(rows: list[dict]) -> list[dict]:
    base = rows[0]["median_s"]
    for r in rows:
        r["speedup"] = None if r is rows[0] else r["median_s"] / base
    return rows


def bench_gram(d: int, *, n_rows: int = 16384, dtype: str = "float32", precision: str = "highest",
               device: str = "cpu", repeats: int = 5, warmup: int = 1, seed: int = 0) -> list[dict]:
    """Time the Gram/covariance of one [n_rows, d] input: geomfast first, then each baseline."""
    x = make_activations(n_rows, d, dtype, device=device, seed=seed)
    refs = {True: _reference_gram(x, True), False: _reference_gram(x, False)}
    rows = []
    for name, (fn, centered) in gram_cases(x, precision=precision, device=device).items():
        try:
            med, best, out = time_call(fn, repeats=repeats, warmup=warmup, device=device)
        except Exception as e:  # a baseline that cannot run here (memory, dtype) is reported
            rows.append({"op": "gram", "impl": name, "d": d, "n_rows": n_rows, "dtype": dtype,
                         "precision": precision if name.startswith("geomfast") else None,
                         "case_precision": precision, "device": device, "error": f"{type(e).__name__}: {e}"})
            continue
        ref = refs[centered]
        err = float(np.linalg.norm(_to_numpy64(out) - ref) / np.linalg.norm(ref))
        rows.append({"op": "gram", "impl": name, "d": d, "n_rows": n_rows, "dtype": dtype,
                     "precision": precision if name.startswith("geomfast") else None,
                     "case_precision": precision, "device": device, "median_s": med, "min_s": best, "repeats": repeats,
                     "gflops": n_rows * d * d / med / 1e9, "rel_error": err})
    ok = [r for r in rows if "error" not in r]
    if rows and "error" not in rows[0]:  # the first case is the geomfast one: no silent other baseline
        _speedups(ok)
    return rows


def bench_eig(d: int, *, method: str = "full", k: int | None = 256, device: str = "cpu",
              alpha: float = 1.0, repeats: int = 3, warmup: int = 1, seed: int = 0,
              eig_options: dict | None = None) -> list[dict]:
    """Time the eigenvalues of one [d, d] SPD matrix with spectrum k^(−alpha).

    eig_options go to geomfast's randomized solver (tol, tol_k, block, …). Each row reports
    rel_error (max |error| / λ₁ over the values returned) and rel_error_top100 (max relative
    error over the leading top_values = min(100, d, k) values — the α-ReQ fit range; every row of
    one case over the same values, k those a randomized solve returns)."""
    if method not in ("full", "randomized"):
        raise ValueError(f"[bench] method must be 'full' or 'randomized', got {method!r}")
    if method == "randomized":
        if k is None or not 1 <= k <= d:
            raise ValueError(f"[bench] randomized needs 1 <= k <= d={d}, got k={k!r}")
        eig_options = _check_eig_options(eig_options, k=k)
    _check_counts(repeats, warmup)
    _check_device(device)
    a, lam = make_spd(d, alpha=alpha, seed=seed)
    rows = []
    for name, fn in eig_cases(a, method=method, k=k, device=device, seed=seed, eig_options=eig_options).items():
        try:
            med, best, out = time_call(fn, repeats=repeats, warmup=warmup, device=device)
        except Exception as e:
            rows.append({"op": "eig", "impl": name, "d": d, "method": method, "k": k, "alpha": alpha,
                         "device": device, "error": f"{type(e).__name__}: {e}"})
            continue
        vals = np.sort(_to_numpy64(out).ravel())[::-1]
        err = float(np.max(np.abs(vals - lam[: vals.size])) / lam[0])
        top = min(100, k if method == "randomized" else d, vals.size)
        err100 = float(np.max(np.abs(vals[:top] / lam[:top] - 1.0)))
        rows.append({"op": "eig", "impl": name, "d": d, "method": method,
                     "k": k if method == "randomized" else None, "alpha": alpha, "device": device,
                     "n_values": int(vals.size), "median_s": med, "min_s": best, "repeats": repeats,
                     "gflops": (4.0 / 3.0) * d ** 3 / med / 1e9, "rel_error": err,
                     "rel_error_top100": err100, "top_values": top})
    ok = [r for r in rows if "error" not in r]
    if rows and "error" not in rows[0]:  # the first case is the geomfast one: no silent other baseline
        _speedups(ok)
    return rows


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                       "MKL_NUM_THREADS") if k in os.environ},
            "numpy": np.__version__, "cpu_model": _cpu_model()}
    from . import _version
    from .linalg import backends

    info["geomfast"] = _version.__version__
    info["backends"] = backends()
    for mod in ("scipy", "torch", "cupy", "sklearn"):
        if _have(mod):
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
    if _have("torch"):
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    return info


def run_bench(*, op: str = "all", sizes: Sequence[int] = QUICK_SIZES, n_rows: int = 8192,
              dtypes: Sequence[str] = ("float32",), precisions: Sequence[str] = ("highest",),
              device: str = "cpu", method: str = "full", k: int = 256, alpha: float = 1.0,
              repeats: int = 3, warmup: int = 1, progress: Callable[[str], None] | None = None,
              eig_options: dict | None = None) -> dict:
    """Every requested case; returns {"meta": machine_info(), "config": …, "results": [rows]}."""
    if op not in ("gram", "eig", "all"):
        raise ValueError(f"[bench] op must be gram, eig or all, got {op!r}")
    bad = [d for d in sizes if int(d) < 2]
    if not sizes or bad:
        raise ValueError(f"[bench] sizes must be hidden sizes >= 2, got {list(sizes)}")
    if int(n_rows) < 2 or int(repeats) < 1:
        raise ValueError(f"[bench] expected n_rows >= 2 and repeats >= 1, got n_rows={n_rows}, repeats={repeats}")
    _check_counts(repeats, warmup)
    # every setting checked before the first case runs (a bad one must not cost a whole run)
    _check_device(device)
    if op in ("eig", "all"):
        if method not in ("full", "randomized"):
            raise ValueError(f"[bench] method must be 'full' or 'randomized', got {method!r}")
        _check_alpha(alpha)
        if method == "randomized":
            _check_k(k, sizes)
            eig_options = _check_eig_options(eig_options, k=k)
    results: list[dict] = []
    for d in sizes:
        if op in ("gram", "all"):
            for dt in dtypes:
                for prec in precisions:
                    if progress:
                        progress(f"gram d={d} n={n_rows} {dt} {prec}")
                    results += bench_gram(d, n_rows=n_rows, dtype=dt, precision=prec, device=device,
                                          repeats=repeats, warmup=warmup)
        if op in ("eig", "all"):
            kk = k if method == "randomized" else None
            if progress:
                progress(f"eig d={d} {method}" + (f" k={kk}" if kk else ""))
            results += bench_eig(d, method=method, k=kk, device=device, alpha=alpha, repeats=repeats,
                                 eig_options=eig_options,
                                 warmup=warmup)
    config = {"op": op, "sizes": list(sizes), "n_rows": n_rows, "dtypes": list(dtypes),
              "precisions": list(precisions), "device": device, "method": method, "k": k,
              "alpha": alpha, "repeats": repeats, "warmup": warmup}
    return {"meta": machine_info(), "config": config, "results": results}


def format_bench(results: Sequence[dict]) -> str:
    """Terminal table: one block per case, geomfast first, speedup = t(baseline) / t(geomfast)."""
    from .cli import format_table

    def case(r):  # a Gram case is also its geomfast precision: its baselines carry it as case_precision
        return (r["op"], r["d"], r.get("n_rows"), r.get("dtype"), r.get("case_precision"), r.get("method"),
                r.get("k"), r.get("alpha"), r.get("device"))

    blocks, seen = [], []
    for r in results:
        if case(r) not in seen:
            seen.append(case(r))
    for key in seen:
        op, d, n, dt, prec, method, k, alpha, device = key
        sub = [r for r in results if case(r) == key]
        title = (f"gram  d={d}  n={n}  {dt}{f'  geomfast {prec}' if prec else ''}  on {device}  "
                 f"(GFLOP/s = n·d²/t)" if op == "gram" else
                 f"eig  d={d}  {method}{f' top-{k}' if k else ''}  spectrum k^-{alpha:g}  on {device}  "
                 f"(GFLOP/s = 4/3·d³/t)")
        errors = [r for r in sub if "error" in r]
        tops = sorted({r["top_values"] for r in sub if "top_values" in r})
        top_col = f"top-{tops[0]} rel. error" if len(tops) == 1 else "top-100 rel. error"

        def speedup(r):
            if "error" in r:  # the type in the cell, the whole message below the table
                return f"error: {_error_kind(r['error'])} [{errors.index(r) + 1}]"
            if r.get("speedup") is not None:
                return f"x{r['speedup']:.2f}"
            return "(geomfast)" if r is sub[0] else "- (geomfast failed)"

        rows = [{"implementation": r["impl"],
                 "median ms": None if "error" in r else round(r["median_s"] * 1e3, 2),
                 "GFLOP/s": None if "error" in r else f"{r['gflops']:.3g}",
                 "rel. error": None if "error" in r else f"{r['rel_error']:.1e}",
                 top_col: (f"{r['rel_error_top100']:.1e}" if "rel_error_top100" in r else ""),
                 "speedup": speedup(r)}
                for r in sub]
        cols = ["implementation", "median ms", "GFLOP/s", "rel. error"]
        cols += [top_col] if op == "eig" else []
        block = title + "\n" + format_table(rows, cols + ["speedup"])
        if errors:
            block += "\nerrors:\n" + "\n".join(f"  [{i}] {r['impl']}: {r['error']}"
                                               for i, r in enumerate(errors, 1))
        blocks.append(block)
    return "\n\n".join(blocks) + "\n\nspeedup = t(baseline) / t(geomfast): above 1, geomfast is faster."


# ----------------------------------------------------------------------------- CLI

def _csv(kind):
    def parse(text):
        vals = [v.strip() for v in text.split(",") if v.strip()]
        return [int(v) for v in vals] if kind is int else vals
    return parse


def _add_arguments(p) -> None:
    p.add_argument("--op", choices=["gram", "eig", "all"], default="all")
    p.add_argument("--sizes", type=_csv(int), default=list(QUICK_SIZES), metavar="D,D,…",
                   help="hidden sizes d (default 256,512 — quick; e.g. 1024,2048,4096,8192 for real figures)")
    p.add_argument("--n-rows", type=int, default=8192, help="rows per Gram input (default 8192)")
    p.add_argument("--dtype", type=_csv(str), default=["float32"], metavar="T,…",
                   help=f"Gram input dtypes among {', '.join(DTYPES)} (default float32)")
    p.add_argument("--precision", type=_csv(str), default=["highest"], metavar="P,…",
                   help="geomfast Gram precision(s): highest, fast (default highest)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--method", choices=["full", "randomized"], default="full", help="eigensolver")
    p.add_argument("--k", type=int, default=256,
                   help="top-k for --method randomized, 1 to the smallest of --sizes (default 256)")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="power-law exponent of the test spectra k^-alpha, finite >= 0 (0: flat; default 1)")
    p.add_argument("--tol", type=float, default=None, help="randomized: relative tolerance (default 1e-6)")
    p.add_argument("--tol-k", type=int, default=None,
                   help="randomized: how many leading values must meet --tol, 1 to --k (default all k)")
    p.add_argument("--block", type=int, default=None,
                   help="randomized: Krylov block width, >= 1 (default clamp(k/8, 32, 256))")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed calls per case, >= 1 (median reported; default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first, >= 0 (default 1)")
    p.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="also write JSON here")


def _run(args) -> int:
    import sys

    for dt in args.dtype:
        if dt not in DTYPES:
            raise ValueError(f"--dtype must be among {DTYPES}, got {dt!r}")
    for pr in args.precision:
        if pr not in ("highest", "fast"):
            raise ValueError(f"--precision must be highest or fast, got {pr!r}")
    # the flags checked here, named as flags, before anything runs
    if not args.sizes or any(d < 2 for d in args.sizes):
        raise ValueError(f"--sizes must be hidden sizes >= 2, got {args.sizes}")
    if args.n_rows < 2:
        raise ValueError(f"--n-rows must be an int >= 2, got {args.n_rows}")
    _check_counts(args.repeats, args.warmup, cli=True)
    _check_device(args.device, cli=True)
    eig_options = {key: val for key, val in (("tol", args.tol), ("tol_k", args.tol_k),
                                             ("block", args.block)) if val is not None}
    if eig_options and (args.op == "gram" or args.method != "randomized"):
        given = ", ".join(_name(key, True) for key in eig_options)
        raise ValueError(f"{given}: only for the randomized eigensolver (--op eig or all with --method "
                         f"randomized), got --op {args.op} --method {args.method}")
    if args.op in ("eig", "all"):
        _check_alpha(args.alpha, cli=True)
        if args.method == "randomized":
            _check_k(args.k, args.sizes, cli=True)
            _check_eig_options(eig_options, cli=True, k=args.k)
    report = run_bench(op=args.op, sizes=args.sizes, n_rows=args.n_rows, dtypes=args.dtype,
                       precisions=args.precision, device=args.device, method=args.method, k=args.k,
                       alpha=args.alpha, repeats=args.repeats, warmup=args.warmup,
                       progress=lambda s: print(f"… {s}", file=sys.stderr, flush=True),
                       eig_options=eig_options)
    print(format_bench(report["results"]))
    if args.json_out:  # (checked before any run: cli.check_paths)
        from ._paths import write_file

        write_file(args.json_out, (json.dumps(report, indent=1, default=str) + "\n").encode())
        print(f"JSON written to {args.json_out}")
    failed = [r for r in report["results"] if "error" in r and r["impl"].startswith("geomfast")]
    if failed:
        print(f"geomfast bench: error: {len(failed)} geomfast case(s) failed (messages under the tables)",
              file=sys.stderr)
        return 2
    return 0


def register_cli(register) -> None:
    from .cli import PathArg

    register("bench", "time geomfast's Gram and eigensolvers against numpy / scipy / torch / cupy",
             _add_arguments, _run, paths=(PathArg("json_out", "--json", "file"),))
