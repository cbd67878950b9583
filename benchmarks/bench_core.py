"""Core benchmarks: pytest-benchmark cases and a script, both built on geomfast.bench.

    pytest benchmarks/bench_core.py --benchmark-only          # small cases, pytest-benchmark table
    python benchmarks/bench_core.py                            # quick ratio table (seconds)
    python benchmarks/bench_core.py --full [--json out.json]   # the issue-2 table:
        Gram n = 200,000, d = 1024, float32 and bfloat16 (highest and fast);
        randomized top-256 vs full eigenvalues at d = 4096 for power-law α in {0.5, 1, 2}

Every figure is measured in the same process against a named baseline (speedup = t(baseline) /
t(geomfast)); nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import json
import sys

import pytest

try:
    from geomfast import bench
except ImportError:  # run as a script from a source checkout: the package is one folder up
    import os

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from geomfast import bench

# ----------------------------------------------------------------------------- pytest-benchmark

_GRAM = {}
_EIG = {}


def _gram_cases(dtype: str, precision: str):
    key = (dtype, precision)
    if key not in _GRAM:
        x = bench.make_activations(4096, 256, dtype)
        _GRAM[key] = bench.gram_cases(x, precision=precision)
    return _GRAM[key]


def _eig_cases(method: str):
    if method not in _EIG:
        a, _ = bench.make_spd(256)
        _EIG[method] = bench.eig_cases(a, method=method, k=32 if method == "randomized" else None)
    return _EIG[method]


@pytest.mark.parametrize("dtype,precision", [("float32", "highest"), ("float32", "fast"),
                                             ("bfloat16", "highest"), ("bfloat16", "fast")])
@pytest.mark.parametrize("which", ["geomfast", "torch float32 X.T@X", "numpy float32 X.T@X"])
def test_gram(benchmark, dtype, precision, which):
    cases = _gram_cases(dtype, precision)
    name = next((n for n in cases if n.startswith(which)), None)
    if name is None:
        pytest.skip(f"{which} has no case for {dtype} input here")
    fn, _ = cases[name]
    benchmark.group = f"gram d=256 n=4096 {dtype} {precision}"
    benchmark(fn)


@pytest.mark.parametrize("method,which", [("full", "geomfast full"), ("full", "numpy.linalg.eigvalsh"),
                                          ("full", "torch.linalg.eigvalsh"),
                                          ("randomized", "geomfast randomized"),
                                          ("randomized", "torch.svd_lowrank")])
def test_eig(benchmark, method, which):
    cases = _eig_cases(method)
    name = next((n for n in cases if n.startswith(which)), None)
    if name is None:
        pytest.skip(f"{which} is not installed")
    benchmark.group = f"eig d=256 {method}"
    benchmark(cases[name])


# ----------------------------------------------------------------------------- script

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="the issue-2 sizes (minutes on a CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--tol", type=float, default=1e-3, help="randomized solver tolerance (default 1e-3)")
    p.add_argument("--eig-only", action="store_true", help="skip the Gram cases")
    p.add_argument("--json", dest="json_out", default=None, metavar="FILE")
    args = p.parse_args(argv)
    if args.full:
        n_rows, d_gram, d_eig, k, repeats = 200_000, 1024, 4096, 256, args.repeats or 3
    else:
        n_rows, d_gram, d_eig, k, repeats = 8192, 256, 512, 32, args.repeats or 3
    log = (lambda s: print(f"… {s}", file=sys.stderr, flush=True))
    results = []
    for dtype in (() if args.eig_only else ("float32", "bfloat16")):
        for precision in ("highest", "fast"):
            log(f"gram n={n_rows} d={d_gram} {dtype} {precision}")
            results += bench.bench_gram(d_gram, n_rows=n_rows, dtype=dtype, precision=precision,
                                        device=args.device, repeats=repeats)
    for alpha in (0.5, 1.0, 2.0):
        log(f"eig d={d_eig} randomized top-{k} vs full, alpha={alpha}")
        # The accuracy bar: the top 100 (α-ReQ's fit range) within 1e-3 relative. Stopping
        # when their change between Krylov steps is below 1e-3 leaves them within ≈1e-4 (measured;
        # see the rel_error_top100 column), an order of magnitude inside the bar.
        results += bench.bench_eig(d_eig, method="randomized", k=k, alpha=alpha, device=args.device,
                                   repeats=repeats, eig_options={"tol": args.tol, "tol_k": min(100, k)})
    print(bench.format_bench(results))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"meta": bench.machine_info(), "results": results}, f, indent=1, default=str)
        print(f"JSON written to {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
