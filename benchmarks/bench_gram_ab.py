"""Interleaved Gram timings: geomfast and its baselines called in turn, round after round.

On a shared VM the machine's speed drifts over seconds (measured here: the same numpy call moved
by 1.5× between minutes), so timing one implementation after another can put them in different
machine states. Here every round times each implementation once, back to back, and the ratio is
formed per round; the table gives the median over rounds of each ratio (and of each time).

    python benchmarks/bench_gram_ab.py                       # the issue-2 cases, 5 rounds
    python benchmarks/bench_gram_ab.py --rounds 9 --n-rows 100000 --kernels amx,syrk

Cases (n = 200,000, d = 1024, centred float64 covariance out of geomfast):
  float32 highest   vs numpy float64 path (astype, then X.T @ X)
  float32 fast      vs numpy float32 X.T @ X
  bfloat16 highest  vs torch X.double().T @ X.double()
  bfloat16 fast     vs torch X.float().T @ X.float()
For 'fast' every CPU kernel available here runs (float32 syrk; AMX split products where present),
for bfloat16 'highest' too (float64 dsyrk; exact AMX-INT8 digit products where present).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

try:
    from geomfast import _core, bench
    from geomfast.accumulator import GramAccumulator
except ImportError:  # run from a source checkout
    import os

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from geomfast import _core, bench
    from geomfast.accumulator import GramAccumulator


def _geomfast(x, d, precision, amx):
    def run():
        old = _core.get_tuning()
        _core.set_tuning(old[0], old[1], amx, amx)
        try:
            return GramAccumulator(d, precision=precision).update(x).covariance()
        finally:
            _core.set_tuning(*old)
    return run


def cases(x, precision, kernels):
    d = x.shape[1]
    impls = {}
    if precision == "fast":
        for k in kernels:
            impls[f"geomfast[fast/{k}]"] = _geomfast(x, d, "fast", k == "amx")
    elif hasattr(x, "dtype") and str(x.dtype) in ("torch.bfloat16", "torch.float16"):
        # 16-bit input: 'amx' is the exact AMX-INT8 digit product, 'syrk' float64 dsyrk
        for k in kernels:
            impls[f"geomfast[highest/{k}]"] = _geomfast(x, d, "highest", k == "amx")
    else:
        impls["geomfast[highest]"] = _geomfast(x, d, "highest", False)
    if hasattr(x, "detach"):
        if precision == "fast":
            impls["torch X.float().T@X.float()"] = lambda: (lambda y: y.T @ y)(x.float())
        else:
            impls["torch X.double().T@X.double()"] = lambda: (lambda y: y.T @ y)(x.double())
    elif precision == "fast":
        impls["numpy float32 X.T@X"] = lambda: x.T @ x
    else:
        impls["numpy float64 path"] = lambda: (lambda y: y.T @ y)(x.astype(np.float64))
    return impls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n-rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--kernels", default=None, help="fast kernels to time (default: all available here)")
    args = p.parse_args(argv)
    avail = ["syrk"] + (["amx"] if _core.amx_unavailable_reason() == "" else [])
    kernels = args.kernels.split(",") if args.kernels else avail
    for k in kernels:
        if k not in avail:
            raise SystemExit(f"[bench_gram_ab] kernel {k!r} is not available here (available: {avail})")
    info = bench.machine_info()
    print(f"# {info['cpu_model']}, {info['cpu_count']} cpus; geomfast cpu: {info['backends']['cpu']['details']}")
    for dtype in ("float32", "bfloat16"):
        x = bench.make_activations(args.n_rows, args.dim, dtype)
        for precision in ("highest", "fast"):
            impls = cases(x, precision, kernels)
            for fn in impls.values():  # warm-up
                fn()
            times = {name: [] for name in impls}
            for _ in range(args.rounds):
                for name, fn in impls.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            base = [n for n in impls if not n.startswith("geomfast")][0]
            print(f"\n{dtype} {precision}  n={args.n_rows} d={args.dim}  {args.rounds} interleaved rounds")
            print(f"{'implementation':32s} {'median s':>9s} {'min s':>7s}  median ratio {base} / it")
            for name in impls:
                ratios = [b / t for b, t in zip(times[base], times[name])]
                r = "" if name == base else f"x{statistics.median(ratios):.2f}  (rounds: " + \
                    " ".join(f"{v:.2f}" for v in ratios) + ")"
                print(f"{name:32s} {statistics.median(times[name]):9.3f} {min(times[name]):7.3f}  {r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
