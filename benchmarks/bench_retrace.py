"""Re-tracing with another fit range: rows derived from the stored spectra vs a trace from scratch.

`geomfast trace` run again with only another ``fit_range`` (or ``eps``) writes its rows from the
spectra already in the database, loading no model (sweep.derive_from_stored_spectra). This times
that against the same trace into a fresh database (the baseline: what re-tracing cost before),
on tiny offline GPT-NeoX checkpoints built in a temporary folder, and checks that both give the
same rows.

    python benchmarks/bench_retrace.py
    python benchmarks/bench_retrace.py --checkpoints 16 --hidden 256 --samples 500

The ratio is printed against the baseline measured in the same run; no timing is asserted.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the offline tiny models and corpus of the test suite
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--samples", type=int, default=300)
    args = p.parse_args()

    from helpers_models import make_checkpoint_folder, write_text_files

    from geomfast.store import METRIC_COLUMNS, ResultStore
    from geomfast.sweep import trace

    root = Path(tempfile.mkdtemp(prefix="geomfast-retrace-"))
    steps = [0] + [2 ** i for i in range(args.checkpoints - 1)]
    ck = make_checkpoint_folder(root / "ck", steps=steps, hidden=args.hidden, layers=args.layers,
                                max_positions=128)
    docs = write_text_files(root / "data")["txt"]
    kw = dict(dataset=str(docs), n_samples=args.samples, layers="all", pooling="last,mean", progress=False)
    db = root / "r.db"
    trace(str(ck), out=str(db), fit_range=(3, 20), **kw)
    t = time.perf_counter()
    derived = trace(str(ck), out=str(db), fit_range=(3, 40), **kw)
    t_derived = time.perf_counter() - t
    t = time.perf_counter()
    fresh = trace(str(ck), out=str(root / "fresh.db"), fit_range=(3, 40), **kw)
    t_fresh = time.perf_counter() - t

    def rows(path, skip=None):
        with ResultStore(path, readonly=True) as s:
            return {(r["revision"], r["layer"], r["pooling"]): tuple(r[c] for c in METRIC_COLUMNS)
                    for r in s.rows(status="ok") if r["options_hash"] != skip}

    with ResultStore(root / "fresh.db", readonly=True) as s:
        (h,) = {r["options_hash"] for r in s.rows(status="ok")}
    with ResultStore(db, readonly=True) as s:
        first = {r["options_hash"] for r in s.rows(status="ok")} - {h}
    same = rows(db, skip=next(iter(first))) == rows(root / "fresh.db")
    print(f"{len(steps)} checkpoints, d = {args.hidden}, {args.layers} layers, {args.samples} samples, "
          f"{fresh.rows_written} rows")
    print(f"  re-trace, another fit range (derived): {t_derived:8.2f} s  ({derived.derived} rows derived, "
          f"{derived.ok} checkpoints traced)")
    print(f"  the same trace from scratch (baseline): {t_fresh:8.2f} s")
    print(f"  ratio baseline / derived: x{t_fresh / t_derived:.1f}; rows identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
