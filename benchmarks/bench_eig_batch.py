"""eigvalsh of a batch [b, n, n] (as torch.linalg.eigvalsh takes): geomfast's batch against geomfast
one matrix at a time and torch.linalg.eigvalsh's batch, in the same run (best of 3 rounds).

    python benchmarks/bench_eig_batch.py [--sizes 1024 2048] [--batch 4]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import geomfast


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; geomfast {geomfast.__version__}")
    for n in args.sizes:
        x = rng.standard_normal((args.batch, n, n))
        a = (x + np.swapaxes(x, -1, -2)) / 2
        t = torch.from_numpy(a)
        calls = {
            "geomfast batch": lambda: geomfast.eigvalsh(a),
            "geomfast one by one": lambda: [geomfast.eigvalsh(a[i]) for i in range(args.batch)],
            "torch.linalg.eigvalsh batch": lambda: torch.linalg.eigvalsh(t),
        }
        best = {k: float("inf") for k in calls}
        for _ in range(args.rounds):  # interleaved rounds: the machine's noise hits all alike
            for name, f in calls.items():
                t0 = time.perf_counter()
                f()
                best[name] = min(best[name], time.perf_counter() - t0)
        err = np.abs(geomfast.eigvalsh(a) - torch.linalg.eigvalsh(t).numpy()[..., ::-1]).max()
        print(f"n = {n}, batch {args.batch}: " + ", ".join(f"{k} {v:.3f} s" for k, v in best.items()))
        print(f"  ratio: {best['geomfast one by one'] / best['geomfast batch']:.2f}x one by one, "
              f"{best['torch.linalg.eigvalsh batch'] / best['geomfast batch']:.2f}x torch; max |diff| vs torch {err:.1e}")


if __name__ == "__main__":
    main()
