"""Interleaved timings of the full eigensolver: geomfast's two CPU paths and the baselines.

Every round calls each implementation once, back to back, on the same matrix, and forms the
ratios within the round (this VM's speed drifts over seconds; see bench_gram_ab.py). The table
gives the median over rounds of each time and each ratio.

    python benchmarks/bench_eig_ab.py                          # d = 2048, 4096; 3 rounds
    python benchmarks/bench_eig_ab.py --dims 4096,6144 --rounds 5
    python benchmarks/bench_eig_ab.py --batch 4 --dims 4096   # many spectra: batched vs one by one
    python benchmarks/bench_eig_ab.py --geometry 50000 --dims 2048   # geometry(X) vs two solves

Implementations (all values only, float64, of one SPD matrix with spectrum k^-1):
  geomfast[two_stage]   band reduction + LAPACK dsytrd_sb2st + dsterf (the default from d = 3072)
  geomfast[dsyevd]      LAPACK dsyevd (the default below d = 3072)
  torch.linalg.eigvalsh torch's LAPACK (MKL in the CPU wheels)
  numpy.linalg.eigvalsh numpy's LAPACK (OpenBLAS in the wheels)
Each row's error is max |λ − λ_true| / λ₁ against the matrix's known spectrum.

--batch N: the spectra of N accumulators (every layer of a checkpoint, as a sweep solves them):
geomfast.spectra (several CPU solves at a time, single-threaded BLAS each) and
geomfast.singular_values_of, against the same calls one accumulator at a time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

try:
    import geomfast
    from geomfast import bench
except ImportError:  # run from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import geomfast
    from geomfast import bench

_ENV = "GEOMFAST_CPU_EIG_FULL"


def _geomfast(a, solver):
    def run():
        old = os.environ.get(_ENV)
        os.environ[_ENV] = solver
        try:
            return geomfast.eigvalsh(a)
        finally:
            if old is None:
                del os.environ[_ENV]
            else:
                os.environ[_ENV] = old
    return run


def cases(a) -> dict:
    impls = {"geomfast[two_stage]": _geomfast(a, "two_stage"), "geomfast[dsyevd]": _geomfast(a, "dsyevd")}
    try:
        import torch

        t = torch.from_numpy(a)
        impls["torch.linalg.eigvalsh"] = lambda: torch.linalg.eigvalsh(t).numpy()
    except ImportError:
        pass
    impls["numpy.linalg.eigvalsh"] = lambda: np.linalg.eigvalsh(a)
    return impls


def interleaved(impls: dict, rounds: int) -> dict:
    """{name: [seconds per round]}: each implementation once per round, back to back."""
    times = {k: [] for k in impls}
    for _ in range(rounds):
        for name, fn in impls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def run(dims, rounds: int, alpha: float = 1.0, out=print) -> list[dict]:
    """Times every implementation once per round at each d; returns one row per (d, impl)."""
    rows = []
    for d in dims:
        a, lam = bench.make_spd(d, alpha=alpha, seed=d)
        impls = cases(a)
        errors = {}
        for name, fn in impls.items():  # warm-up, and the accuracy of each
            vals = np.sort(np.asarray(fn(), dtype=np.float64))[::-1]
            errors[name] = float(np.max(np.abs(vals - lam)) / lam[0])
        times = interleaved(impls, rounds)
        ours = times["geomfast[two_stage]"]
        out(f"\neig full  d={d}  spectrum k^-{alpha:g}  {rounds} interleaved rounds "
            f"(ratio = t(impl) / t(geomfast[two_stage]) per round; above 1, two_stage is faster)")
        out(f"{'implementation':<24}{'median s':>10}  {'rel. error':>10}  {'ratio (median; per round)'}")
        for name, ts in times.items():
            ratios = [t / o for t, o in zip(ts, ours)]
            med_ratio = statistics.median(ratios)
            per = " ".join(f"{r:.2f}" for r in ratios)
            ratio_txt = "(geomfast)" if name == "geomfast[two_stage]" else f"x{med_ratio:.2f} ({per})"
            out(f"{name:<24}{statistics.median(ts):>10.3f}  {errors[name]:>10.1e}  {ratio_txt}")
            rows.append({"d": d, "impl": name, "median_s": statistics.median(ts), "times_s": ts,
                         "rel_error": errors[name], "ratio_vs_two_stage": med_ratio})
    return rows


def run_batch(d: int, count: int, rounds: int, out=print) -> dict:
    """spectra() / singular_values_of() of `count` accumulators vs one by one, interleaved."""
    accs = []
    for i in range(count):
        a, _ = bench.make_spd(d, alpha=1.0, seed=d + i)
        accs.append(geomfast.GramAccumulator.from_state_dict(
            {"dim": d, "count": 100_000, "shift": np.zeros(d), "sum": np.zeros(d), "gram": a * 99_999}))
    impls = {
        "geomfast.spectra": lambda: geomfast.spectra(accs),
        "[a.spectrum() for a]": lambda: [a.spectrum() for a in accs],
        "geomfast.singular_values_of": lambda: geomfast.singular_values_of(accs),
        "[a.singular_values() for a]": lambda: [a.singular_values() for a in accs],
    }
    times = interleaved(impls, rounds)
    out(f"\nbatched spectra  {count} accumulators of d={d}  {rounds} interleaved rounds "
        f"(ratio = t(one by one) / t(batched) per round)")
    res = {}
    for batched, alone in (("geomfast.spectra", "[a.spectrum() for a]"),
                           ("geomfast.singular_values_of", "[a.singular_values() for a]")):
        ratios = [t / b for t, b in zip(times[alone], times[batched])]
        res[batched] = statistics.median(ratios)
        out(f"{batched:<30}{statistics.median(times[batched]):>8.2f} s   {alone:<30}"
            f"{statistics.median(times[alone]):>8.2f} s   x{res[batched]:.2f} "
            f"({' '.join(f'{r:.2f}' for r in ratios)})")
    return res


def run_geometry(n_rows: int, d: int, rounds: int, out=print) -> float:
    """geomfast.geometry(X) on raw activations against what it did before: spectrum(X) and
    singular_values(X), each accumulating X and solving alone. Returns the median ratio."""
    x = bench.make_activations(n_rows, d, "float32")
    impls = {"geomfast.geometry(X)": lambda: geomfast.geometry(x),
             "spectrum(X) + singular_values(X)": lambda: (geomfast.spectrum(x), geomfast.singular_values(x))}
    times = interleaved(impls, rounds)
    ratios = [b / a for a, b in zip(*times.values())]
    med = statistics.median(ratios)
    out(f"\ngeometry  X = {n_rows} x {d} float32  {rounds} interleaved rounds")
    out(f"geomfast.geometry(X) {statistics.median(times['geomfast.geometry(X)']):.2f} s   "
        f"spectrum(X) + singular_values(X) {statistics.median(times['spectrum(X) + singular_values(X)']):.2f} s   "
        f"x{med:.2f} ({' '.join(f'{r:.2f}' for r in ratios)})")
    return med


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", default="2048,4096", help="comma-separated matrix sizes")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--alpha", type=float, default=1.0, help="the spectrum's power-law exponent")
    p.add_argument("--batch", type=int, default=0, help="time N accumulators' spectra, batched vs one by one")
    p.add_argument("--geometry", type=int, default=0, metavar="N_ROWS",
                   help="time geometry() on N_ROWS x d float32 activations against two separate solves")
    args = p.parse_args(argv)
    dims = [int(x) for x in args.dims.split(",") if x]
    if not dims or min(dims) < 1:
        p.error(f"--dims must list positive sizes, got {args.dims!r}")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.batch < 0:
        p.error(f"--batch must be >= 0, got {args.batch}")
    if args.geometry:
        for d in dims:
            run_geometry(args.geometry, d, args.rounds)
        return
    if args.batch:
        for d in dims:
            run_batch(d, args.batch, args.rounds)
        return
    run(dims, args.rounds, alpha=args.alpha)


if __name__ == "__main__":
    main()
