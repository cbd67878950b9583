"""One command that validates the CUDA backend and times it against baselines, in the same run.

On a fresh GPU machine (from the repository root):

    pip install nvidia-cublas nvidia-cusolver            # cuBLAS 13 / cuSOLVER 12 wheels
    GEOMFAST_CUDA=ON pip install --no-build-isolation .  # builds the CUDA backend (fails loudly if it cannot)
    python benchmarks/gpu_check.py --json gpu_check.json # tests, accuracy sweep, timings; table last

What it does:
  1. prints geomfast.backends() and stops (exit 2) when CUDA is not usable;
  2. runs tests/test_cuda.py (pytest) unless --skip-tests;
  3. accuracy of precision="fast" for bfloat16 input against a float64 reference, per flush
     interval (GEOMFAST_CUDA_FLUSH_ROWS), on centred data and on large-offset data;
  4. timings against baselines measured in the same process, on the same card:
     - the bf16 matrix-product peak (a large torch bf16 matmul),
     - Gram accumulation of chunks of --rows rows at d = 4096 (and 8192) vs torch bf16 X.T @ X
       with float32 output; TFLOP/s counted as N·d² (the Gram's useful work),
     - full eigvalsh vs torch.linalg.eigvalsh (and cupy.linalg.eigvalsh if installed),
     - randomized top-256 vs full, and vs torch.svd_lowrank.
Targets (issue 3, H100): Gram bf16 >= 1.6x torch X.T @ X and >= 60% of the measured bf16 peak;
full eigvalsh <= torch; randomized top-256 >= 10x faster than full.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, flush=True)


def timeit(fn, *, sync, repeat: int = 3, warmup: int = 1) -> float:
    """Best wall time of fn() in seconds, the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def rel_fro(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--skip-tests", action="store_true", help="do not run tests/test_cuda.py")
    ap.add_argument("--dims", default="4096,8192", help="Gram / eigvalsh sizes (comma-separated)")
    ap.add_argument("--rows", type=int, default=65536, help="rows per chunk")
    ap.add_argument("--chunks", type=int, default=4, help="chunks per timed Gram accumulation")
    ap.add_argument("--flush", default="256,512,1024,2048,4096,8192", help="flush intervals to sweep")
    args = ap.parse_args()

    import geomfast
    import torch

    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node()}
    cuda = geomfast.backends()["cuda"]
    results["backend"] = cuda
    log(f"geomfast {geomfast.__version__}; CUDA backend: {cuda}")
    if not cuda["usable"]:
        log(f"CUDA backend not usable: {cuda['reason']}")
        if not cuda["built"]:
            log("build it with: pip install nvidia-cublas nvidia-cusolver && "
                "GEOMFAST_CUDA=ON pip install --no-build-isolation .")
        return 2
    if not torch.cuda.is_available():
        log("torch has no CUDA: the baselines need a CUDA build of torch")
        return 2
    dev = torch.device("cuda:0")
    results["card"] = torch.cuda.get_device_name(dev)
    results["torch"] = torch.__version__
    sync = torch.cuda.synchronize
    rows: list[tuple[str, str, str, str]] = []  # (what, geomfast, baseline, ratio / note)

    # ------------------------------------------------------------------ 1. tests
    if not args.skip_tests:
        log("== tests/test_cuda.py")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                               str(ROOT / "tests" / "test_cuda.py")], cwd=ROOT, capture_output=True, text=True)
        tail = proc.stdout.strip().splitlines()[-15:]
        log("\n".join(tail))
        results["tests"] = {"returncode": proc.returncode, "tail": tail, "seconds": time.perf_counter() - t0}
        rows.append(("tests/test_cuda.py", "passed" if proc.returncode == 0 else "FAILED", "", tail[-1] if tail else ""))

    # ------------------------------------------------------------------ 2. accuracy vs flush interval
    log("== fast bf16 accuracy vs flush interval (float64 reference on the same values)")
    acc_rows = []
    d_acc, n_acc = 1024, 65536
    g = torch.Generator(device=dev).manual_seed(0)
    base = torch.randn(n_acc, d_acc, generator=g, device=dev, dtype=torch.float64)
    datasets = {"centred": base, "offset 1e3": base + 1e3 * torch.rand(d_acc, generator=g, device=dev,
                                                                       dtype=torch.float64)}
    for name, x64 in datasets.items():
        x = x64.to(torch.bfloat16)
        y = x.to(torch.float64)
        y = y - y.mean(0, keepdim=True)
        ref = (y.T @ y / (n_acc - 1)).cpu().numpy()
        for flush in [int(f) for f in args.flush.split(",")]:
            os.environ["GEOMFAST_CUDA_FLUSH_ROWS"] = str(flush)
            acc = geomfast.GramAccumulator(d_acc, device="cuda", precision="fast")
            for part in x.split(16384):
                acc.update(part)
            err = rel_fro(acc.covariance(), ref)
            acc_rows.append({"data": name, "flush_rows": flush, "rel_fro": err})
            log(f"  {name:10s} flush {flush:5d}: rel Frobenius error {err:.2e}")
    os.environ.pop("GEOMFAST_CUDA_FLUSH_ROWS", None)
    results["flush_accuracy"] = acc_rows
    worst_default = max(r["rel_fro"] for r in acc_rows if r["flush_rows"] == 1024) if any(
        r["flush_rows"] == 1024 for r in acc_rows) else float("nan")
    rows.append(("fast bf16 error @1024 rows (bar 1e-6)", f"{worst_default:.2e}", "", "ok" if worst_default <= 1e-6 else "ABOVE BAR"))
    del base, datasets

    # ------------------------------------------------------------------ 3. bf16 peak
    log("== bf16 matmul peak (torch)")
    m = 8192
    a = torch.randn(m, m, device=dev, dtype=torch.bfloat16)
    b = torch.randn(m, m, device=dev, dtype=torch.bfloat16)
    t = timeit(lambda: a @ b, sync=sync, repeat=10, warmup=3)
    peak = 2 * m**3 / t / 1e12
    results["bf16_peak_tflops"] = peak
    rows.append(("bf16 matmul peak (8192^3)", f"{peak:.0f} TFLOP/s", "", "torch a @ b"))
    del a, b

    dims = [int(s) for s in args.dims.split(",") if s]
    n = args.rows
    results["gram"] = []
    for d in dims:
        log(f"== Gram accumulation d={d}, {args.chunks} chunks of {n} rows")
        x = torch.randn(n, d, device=dev, dtype=torch.bfloat16)
        flops = args.chunks * n * d * d  # N·d²

        def torch_gram():
            for _ in range(args.chunks):
                try:
                    torch.mm(x.T, x, out_dtype=torch.float32)
                except TypeError:  # older torch: no out_dtype
                    (x.T @ x).float()

        t_torch = timeit(torch_gram, sync=sync)
        entry = {"d": d, "rows": n, "chunks": args.chunks, "torch_s": t_torch,
                 "torch_tflops": flops / t_torch / 1e12}
        for label, data in (("centred", x), ("offset", x + 300.0)):
            for precision in ("fast", "highest"):
                if precision == "highest" and label == "offset":
                    continue
                acc = geomfast.GramAccumulator(d, device="cuda", precision=precision)

                def ours():
                    for _ in range(args.chunks):
                        acc.update(data)

                t_ours = timeit(ours, sync=sync, repeat=2)
                tf = flops / t_ours / 1e12
                entry[f"{precision}_{label}_s"] = t_ours
                entry[f"{precision}_{label}_tflops"] = tf
                rows.append((f"Gram bf16 {precision} {label} d={d}", f"{tf:.0f} TFLOP/s",
                             f"{entry['torch_tflops']:.0f} TFLOP/s (torch X.T@X)",
                             f"{t_torch / t_ours:.2f}x torch, {100 * tf / peak:.0f}% of peak"))
                log(f"  {rows[-1]}")
                del acc
        results["gram"].append(entry)
        del x
        torch.cuda.empty_cache()

    # ------------------------------------------------------------------ 4. eigensolvers
    results["eig"] = []
    try:
        import cupy
    except ImportError:
        cupy = None
    for d in dims:
        log(f"== eigvalsh d={d}")
        g = torch.Generator(device=dev).manual_seed(d)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, device=dev, dtype=torch.float64))
        lam = torch.arange(1, d + 1, device=dev, dtype=torch.float64) ** -1.0
        a = (q * lam) @ q.T
        a = (a + a.T) / 2
        del q
        entry = {"d": d}
        t_ours = timeit(lambda: geomfast.eigvalsh(a), sync=sync, repeat=2)
        t_torch = timeit(lambda: torch.linalg.eigvalsh(a), sync=sync, repeat=2)
        full = geomfast.eigvalsh(a)
        ref = np.sort(lam.cpu().numpy())[::-1]
        entry.update(full_s=t_ours, torch_s=t_torch, full_max_err_over_l1=float(np.abs(full - ref).max() / ref[0]))
        rows.append((f"eigvalsh full d={d}", f"{t_ours * 1e3:.0f} ms", f"{t_torch * 1e3:.0f} ms (torch)",
                     f"{t_torch / t_ours:.2f}x; err {entry['full_max_err_over_l1']:.1e}·λ1"))
        t32 = timeit(lambda: geomfast.eigvalsh(a, single_precision=True), sync=sync, repeat=2)
        entry["full_single_s"] = t32
        rows.append((f"eigvalsh full float32 d={d}", f"{t32 * 1e3:.0f} ms", "", ""))
        if cupy is not None:
            ca = cupy.asarray(a.cpu().numpy())
            t_cp = timeit(lambda: cupy.linalg.eigvalsh(ca), sync=lambda: cupy.cuda.Device().synchronize(), repeat=2)
            entry["cupy_s"] = t_cp
            rows.append((f"eigvalsh full d={d} vs cupy", f"{t_ours * 1e3:.0f} ms", f"{t_cp * 1e3:.0f} ms (cupy)",
                         f"{t_cp / t_ours:.2f}x"))
            del ca
        k = 256
        t_rand = timeit(lambda: geomfast.eigvalsh(a, method="randomized", k=k), sync=sync, repeat=2)
        top = geomfast.eigvalsh(a, method="randomized", k=k)
        err100 = float(np.max(np.abs(top[:100] - ref[:100]) / ref[:100]))
        t_svd = timeit(lambda: torch.svd_lowrank(a, q=k + 16, niter=4), sync=sync, repeat=2)
        entry.update(randomized_s=t_rand, randomized_top100_rel_err=err100, svd_lowrank_s=t_svd)
        rows.append((f"randomized top-{k} d={d}", f"{t_rand * 1e3:.0f} ms", f"{t_ours * 1e3:.0f} ms (our full)",
                     f"{t_ours / t_rand:.1f}x faster; top-100 err {err100:.1e}"))
        rows.append((f"randomized top-{k} d={d} vs svd_lowrank", f"{t_rand * 1e3:.0f} ms",
                     f"{t_svd * 1e3:.0f} ms (torch.svd_lowrank q={k + 16}, niter=4)", f"{t_svd / t_rand:.2f}x"))
        results["eig"].append(entry)
        del a
        torch.cuda.empty_cache()

    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
        log(f"wrote {args.json}")

    # ------------------------------------------------------------------ table (last)
    log("")
    log(f"geomfast CUDA check on {results['card']} ({results['date']}), torch {results['torch']}")
    w = [max(len(r[i]) for r in rows + [("what", "geomfast", "baseline", "ratio / note")]) for i in range(4)]
    header = ("what", "geomfast", "baseline", "ratio / note")
    log(" | ".join(h.ljust(w[i]) for i, h in enumerate(header)))
    log("-+-".join("-" * x for x in w))
    for r in rows:
        log(" | ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    return 0 if results.get("tests", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
