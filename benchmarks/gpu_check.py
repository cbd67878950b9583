"""One command that validates the CUDA backend and times it against baselines, in the same run.

On the project's GPU machine, from a bare start, use `benchmarks/gpu_session.sh` (it builds in
place, then runs this). Elsewhere, from the repository root:

    pip install nvidia-cublas nvidia-cusolver            # cuBLAS 13 / cuSOLVER 12 wheels
    GEOMFAST_CUDA=ON pip install --no-build-isolation .  # builds the CUDA backend (fails loudly if it cannot)
    python benchmarks/gpu_check.py --out gpu-check       # tests, sweeps, timings; table last

Sections, in order (each one's results are written to --out as soon as it ends, so a run that is
killed keeps what it finished; a section that raises is recorded and the next one still runs; a
section whose estimated cost no longer fits --budget-s is skipped and says so):
  1. geomfast.backends(), the card, torch;
  2. each of our own kernels (tc; wg on a 9.0 card) once in a subprocess against float64: one
     that fails there, or faults, is left out of what follows (a fault poisons the CUDA context);
  3. the fast bf16 path's time AND error, per kernel (GEOMFAST_CUDA_GRAM_KERNEL: cuBLAS products,
     gram_tc.cu's two-level WMMA kernel, and on a 9.0 device gram_wgmma.cu's Hopper kernel), the
     cuBLAS path's rows per GEMM chain and per float64 flush (GEOMFAST_CUDA_CHAIN_ROWS,
     GEOMFAST_CUDA_FLUSH_ROWS) and triangle tile (GEOMFAST_CUDA_TRIANGLE_TILE), the own kernels'
     chain length and rows per call (GEOMFAST_CUDA_TC_CHAIN_ROWS, GEOMFAST_CUDA_TC_ROWS), at
     d = 4096 on centred and large-offset bf16 and centred f16 data, against a float64
     reference on the same values: the table to set the defaults from (a failing setting is
     recorded and the sweep goes on);
  4. the bf16 matrix-product peak (a large torch bf16 matmul);
  5. Gram accumulation of chunks of --rows rows at --dims vs torch bf16 X.T @ X with float32
     output; TFLOP/s counted as N·d² (the Gram's useful work);
  6. full eigvalsh vs torch.linalg.eigvalsh (and cupy.linalg.eigvalsh), randomized top-256 vs
     full and vs torch.svd_lowrank;
  7. geomfast.spectra over --batch accumulators (one host synchronisation) vs one spectrum() each
     and vs torch's batched eigvalsh; a forward-like loop of bf16 matmuls with one update per
     layer (each update syncs the host once) against the same loop with torch's X.T @ X;
  8. tests/test_cuda.py (pytest; log in --out/test_cuda.log) unless --skip-tests, last, within
     --test-timeout-s and what is left of the budget, so that it cannot crowd out the figures.
Targets (issue 3, H100): Gram bf16 >= 1.6x torch X.T @ X and >= 60% of the measured bf16 peak;
full eigvalsh <= torch; randomized top-256 >= 10x faster than full.
Exit status: 0 all ran and the tests passed, 1 a test failed or a section raised, 2 no usable CUDA.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("what", "geomfast", "baseline", "ratio / note")


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
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def format_table(title: str, rows: list[tuple[str, str, str, str]]) -> str:
    w = [max(len(r[i]) for r in rows + [HEADER]) for i in range(4)]
    lines = [title, " | ".join(h.ljust(w[i]) for i, h in enumerate(HEADER)), "-+-".join("-" * x for x in w)]
    lines += [" | ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)


class Check:
    """Runs sections under a time budget, keeping every result on disk as soon as it exists."""

    def __init__(self, out: Path | None, budget_s: float):
        self.out = out
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.rows: list[tuple[str, str, str, str]] = []
        self.results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
                              "sections": {}}
        self.failed = False
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def title(self) -> str:
        r = self.results
        return f"geomfast CUDA check on {r.get('card', '?')} ({r['date']}), torch {r.get('torch', '?')}"

    def save(self) -> None:
        if self.out is None:
            return
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2, default=float))
        (self.out / "table.txt").write_text(format_table(self.title(), self.rows) + "\n")

    def section(self, name: str, est_s: float, fn) -> None:
        if self.left() < est_s:
            note = f"skipped: needs ~{est_s:.0f} s, {max(self.left(), 0):.0f} s of the budget left"
            log(f"== {name}: {note}")
            self.results["sections"][name] = {"status": "skipped", "note": note}
            self.rows.append((name, "SKIPPED", "", note))
            self.save()
            return
        log(f"== {name}")
        t = time.perf_counter()
        try:
            fn()
            status = {"status": "ok"}
        except Exception as e:  # recorded, and the next section still runs
            self.failed = True
            tb = traceback.format_exc()
            log(tb)
            status = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": tb}
            self.rows.append((name, "ERROR", "", f"{type(e).__name__}: {str(e)[:120]}"))
        status["seconds"] = time.perf_counter() - t
        self.results["sections"][name] = status
        log(f"   ({status['seconds']:.1f} s; {self.left():.0f} s of the budget left)")
        self.save()


def smoke_kernel(kernel: str, where: str) -> int:
    """One small fast bf16 accumulation on `kernel` (GEOMFAST_CUDA_GRAM_KERNEL) against float64:
    d = 300 (three 128-column tiles, the last partial), 5,000 rows in two chunks (mid-slab, mid-
    chain ends), a fifth of the columns offset by 300 (the split's cross terms)."""
    import geomfast
    import torch

    os.environ["GEOMFAST_CUDA_GRAM_KERNEL"] = kernel
    g = torch.Generator(device=where).manual_seed(3)
    x = torch.randn(5000, 300, generator=g, device=where, dtype=torch.float64)
    x[:, ::5] += 300.0
    x = x.to(torch.bfloat16)
    y = x.to(torch.float64)
    y -= y.mean(0, keepdim=True)
    ref = (y.T @ y / (x.shape[0] - 1)).cpu().numpy()
    ok = True
    for tile in ("128", "192") if kernel == "wg" else ("",):  # wg: both tile widths
        os.environ["GEOMFAST_CUDA_WG_TILE_N"] = tile
        acc = geomfast.GramAccumulator(300, device=where, precision="fast")
        acc.update(x[:2999])
        acc.update(x[2999:])
        cov = acc.covariance()
        err = rel_fro(cov, ref)
        good = bool(np.isfinite(cov).all()) and err <= 1e-6
        ok &= good
        print(f"{kernel}{' tile ' + tile if tile else ''}: rel Frobenius error {err:.2e} against float64 (bar 1e-6) "
              f"-> {'ok' if good else 'WRONG'}")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for gpu_check.json, table.txt and test_cuda.log")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="wall-clock budget; sections that no longer fit are skipped (default 480)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run tests/test_cuda.py")
    ap.add_argument("--test-timeout-s", type=float, default=240.0, help="limit for tests/test_cuda.py")
    ap.add_argument("--per-test-timeout-s", type=float, default=60.0,
                    help="limit per test (where pytest-timeout is installed)")
    ap.add_argument("--dims", default="4096,8192", help="Gram / eigvalsh sizes (comma-separated)")
    ap.add_argument("--rows", type=int, default=65536, help="rows per chunk")
    ap.add_argument("--chunks", type=int, default=4, help="chunks per timed Gram accumulation")
    ap.add_argument("--chains", default="128,256,512", help="cuBLAS path: rows per GEMM (tensor-core chain) to sweep")
    ap.add_argument("--flush", default="256,1024,8192,32768",
                    help="cuBLAS path: rows between float64 flushes to sweep (with each chain length not above it)")
    ap.add_argument("--tiles", default="512,1024,2048", help="triangle tiles to sweep (at the default flush)")
    ap.add_argument("--tc-chains", default="64,128,256",
                    help="tc / wg kernels: rows per tensor-core chain to sweep (wg rounds up to 64)")
    ap.add_argument("--tc-rows", default="8192,32768", help="tc / wg kernels: rows per call (float64 updates) to sweep")
    ap.add_argument("--sweep-dim", type=int, default=4096, help="d of the flush / tile sweep")
    ap.add_argument("--sweep-rows", type=int, default=65536, help="rows of the flush / tile sweep")
    ap.add_argument("--batch", type=int, default=32, help="accumulators in the batched-spectra timing")
    ap.add_argument("--batch-dim", type=int, default=1024, help="their dimension")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run this script's own code on the CPU backend (small sizes; checks the script, "
                         "not the GPU: no figures to keep)")
    ap.add_argument("--smoke-kernel", help=argparse.SUPPRESS)  # internal: one kernel's smoke check, then exit
    args = ap.parse_args()

    import geomfast
    import torch

    if args.smoke_kernel:
        return smoke_kernel(args.smoke_kernel, "cpu" if args.cpu_dry_run else "cuda")

    chk = Check(args.out, args.budget_s)
    res, rows = chk.results, chk.rows
    cuda = geomfast.backends()["cuda"]
    res["backend"] = cuda
    log(f"geomfast {geomfast.__version__}; CUDA backend: {cuda}")
    if args.cpu_dry_run:
        log("CPU dry run: every section on the CPU backend, GPU-only knobs ignored")
    elif not cuda["usable"]:
        log(f"CUDA backend not usable: {cuda['reason']}")
        if not cuda["built"]:
            log("build it with benchmarks/gpu_session.sh, or: pip install nvidia-cublas nvidia-cusolver && "
                "GEOMFAST_CUDA=ON pip install --no-build-isolation .")
        chk.save()
        return 2
    if not args.cpu_dry_run and not torch.cuda.is_available():
        log("torch has no CUDA: the baselines need a CUDA build of torch")
        chk.save()
        return 2
    dev = torch.device("cpu" if args.cpu_dry_run else "cuda:0")
    where = "cpu" if args.cpu_dry_run else "cuda"
    res["card"] = "CPU (dry run)" if args.cpu_dry_run else torch.cuda.get_device_name(dev)
    res["torch"] = torch.__version__
    sync = (lambda: None) if args.cpu_dry_run else torch.cuda.synchronize
    chk.save()

    # ------------------------------------------------------------------ tests
    def tests():
        # -v into the log file as the tests run, so a run cut short still shows which passed; a
        # per-test limit where pytest-timeout is installed (it is on the device image): a slow test
        # fails and the rest still run (signal method; a hang inside a CUDA call is caught by the
        # whole run's limit instead)
        log_path = (args.out / "test_cuda.log") if args.out else Path(tempfile.gettempdir()) / "gpu_check_test_cuda.log"
        cmd = [sys.executable, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_cuda.py")]
        if importlib.util.find_spec("pytest_timeout") is not None:
            cmd += ["--timeout", str(int(args.per_test_timeout_s)), "--timeout-method", "signal"]
        limit = min(args.test_timeout_s, max(30.0, chk.left() - 10.0))
        with open(log_path, "w") as f:
            try:
                rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True, timeout=limit).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        text = log_path.read_text(errors="replace")
        if rc == -1:
            text += f"\n[gpu_check] pytest stopped after {limit:.0f} s"
            log_path.write_text(text)
        tail = text.strip().splitlines()[-25:]
        log("\n".join(tail))
        res["tests"] = {"returncode": rc, "tail": tail}
        if rc != 0:
            chk.failed = True
        rows.append(("tests/test_cuda.py", "passed" if rc == 0 else "FAILED", "", tail[-1] if tail else ""))


    # ------------------------------------------------------------------ flush / tile / kernel sweep
    # Our own two-level kernels: gram_tc.cu everywhere, gram_wgmma.cu on compute capability 9.0
    # (sm_90a; elsewhere geomfast refuses it). The dry run passes both names through the script.
    # Neither has run on a GPU before, and a kernel fault poisons the process's CUDA context: so
    # each first runs once in a subprocess (a small case against float64), and only a kernel that
    # passes there takes part in the sweep and the timings below.
    hopper = not args.cpu_dry_run and tuple(torch.cuda.get_device_capability()) == (9, 0)
    own_kernels = ["tc"] + (["wg"] if hopper or args.cpu_dry_run else [])
    if not hopper and not args.cpu_dry_run:
        rows.append(("gram_wgmma.cu (GEOMFAST_CUDA_GRAM_KERNEL=wg)", "not run", "",
                     f"needs compute capability 9.0, this card is {'.'.join(map(str, torch.cuda.get_device_capability()))}"))

    def smoke_section():
        res["smoke"] = {}
        for kernel in list(own_kernels):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--smoke-kernel", kernel]
            if args.cpu_dry_run:
                cmd.append("--cpu-dry-run")
            try:
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)
                ok, text = proc.returncode == 0, (proc.stdout + proc.stderr).strip()
            except subprocess.TimeoutExpired:
                ok, text = False, "timed out after 90 s (a hang?)"
            last = text.splitlines()[-1] if text else ""
            res["smoke"][kernel] = {"ok": ok, "output": text[-2000:]}
            rows.append((f"smoke check GEOMFAST_CUDA_GRAM_KERNEL={kernel}", "ok" if ok else "FAILED", "", last[:120]))
            log(f"  {kernel}: {'ok' if ok else 'FAILED'}: {last}")
            if not ok:
                chk.failed = True
                own_kernels.remove(kernel)  # kept out of everything below

    chk.section("own-kernel smoke checks (subprocesses)", 20.0, smoke_section)
    knobs = ("GEOMFAST_CUDA_GRAM_KERNEL", "GEOMFAST_CUDA_CHAIN_ROWS", "GEOMFAST_CUDA_FLUSH_ROWS", "GEOMFAST_CUDA_TRIANGLE_TILE",
             "GEOMFAST_CUDA_TC_CHAIN_ROWS", "GEOMFAST_CUDA_TC_ROWS", "GEOMFAST_CUDA_WG_TILE_N")

    def sweep_settings() -> list[tuple[str, dict]]:
        out = [("cublas (defaults)", {})]
        out += [(f"cublas chain {c} flush {f}", {"GEOMFAST_CUDA_CHAIN_ROWS": c, "GEOMFAST_CUDA_FLUSH_ROWS": f})
                for c in args.chains.split(",") if c for f in args.flush.split(",") if f and int(f) >= int(c)]
        out += [(f"cublas tile {t}", {"GEOMFAST_CUDA_TRIANGLE_TILE": t}) for t in args.tiles.split(",") if t]
        for kernel in own_kernels:
            out.append((f"{kernel} (defaults)", {"GEOMFAST_CUDA_GRAM_KERNEL": kernel}))
            for c in args.tc_chains.split(","):
                for r in args.tc_rows.split(","):
                    if c and r:
                        out.append((f"{kernel} chain {c} rows {r}", {"GEOMFAST_CUDA_GRAM_KERNEL": kernel,
                                                                    "GEOMFAST_CUDA_TC_CHAIN_ROWS": c,
                                                                    "GEOMFAST_CUDA_TC_ROWS": r}))
            if kernel == "wg":  # 128 x 192 tiles: 20 % fewer operand bytes per product (is L2 the bound?)
                out.append(("wg tile 192", {"GEOMFAST_CUDA_GRAM_KERNEL": "wg", "GEOMFAST_CUDA_WG_TILE_N": "192"}))
        return out

    def set_knobs(env: dict) -> None:
        for k in knobs:
            os.environ.pop(k, None)
        os.environ.update(env)

    def sweep():
        d, n, parts = args.sweep_dim, args.sweep_rows, 2
        g = torch.Generator(device=dev).manual_seed(0)
        base = torch.randn(n, d, generator=g, device=dev, dtype=torch.float64)
        base *= torch.rand(d, generator=g, device=dev, dtype=torch.float64).add(0.5)
        out = []
        res["sweep"] = out
        # float16 too: its 22-bit products lose more to truncating tensor-core chains than bf16's
        for name, shift, dt in (("centred", None, torch.bfloat16), ("offset 1e3", 1e3, torch.bfloat16),
                                ("f16 centred", None, torch.float16)):
            x64 = base if shift is None else base + shift * torch.rand(d, generator=g, device=dev, dtype=torch.float64)
            x = x64.to(dt)
            del x64
            y = x.to(torch.float64)
            y -= y.mean(0, keepdim=True)
            ref = (y.T @ y / (n - 1)).cpu().numpy()
            del y
            chunks = list(x.split(n // parts))
            for label, env in sweep_settings():
                set_knobs(env)
                try:
                    acc = geomfast.GramAccumulator(d, device=where, precision="fast")
                    for c in chunks:
                        acc.update(c)
                    err = rel_fro(acc.covariance(), ref)

                    def run():
                        acc.reset()
                        for c in chunks:
                            acc.update(c)

                    t = timeit(run, sync=sync, repeat=2)
                except Exception as e:  # one setting failing must not hide the others
                    chk.failed = True
                    out.append({"data": name, "setting": label, "env": env, "error": f"{type(e).__name__}: {e}"})
                    log(f"  {name:10s} {label:26s}: FAILED {type(e).__name__}: {e}")
                    chk.save()
                    continue
                tf = n * d * d / t / 1e12
                out.append({"data": name, "setting": label, "env": env, "rel_fro": err, "seconds": t,
                            "tflops_nd2": tf})
                log(f"  {name:10s} {label:26s}: rel Frobenius error {err:.2e}, {t * 1e3:7.2f} ms, "
                    f"{tf:6.3g} TFLOP/s (N·d²)")
                chk.save()
            del x, chunks
        set_knobs({})
        torch.cuda.empty_cache()
        by = {}
        for r in out:
            by.setdefault(r["setting"], []).append(r)
        for label in ["cublas (defaults)"] + [f"{k} (defaults)" for k in own_kernels]:
            rs = by.get(label, [])
            if rs and all("rel_fro" in r for r in rs):
                worst = max(r["rel_fro"] for r in rs)
                slow = max(r["seconds"] for r in rs)
                rows.append((f"fast bf16 {label}, d={d}", f"error {worst:.2e}",
                             f"{n * d * d / slow / 1e12:.3g} TFLOP/s (N·d²)", "ok" if worst <= 1e-6 else "ABOVE BAR"))
        within = [(label, rs) for label, rs in by.items()
                  if all("rel_fro" in r and r["rel_fro"] <= 1e-6 for r in rs)]
        if within:
            label, rs = min(within, key=lambda lr: max(r["seconds"] for r in lr[1]))
            slow = max(r["seconds"] for r in rs)
            rows.append((f"fastest setting within the bar, d={d}", label,
                         f"{n * d * d / slow / 1e12:.3g} TFLOP/s (N·d²)",
                         f"error {max(r['rel_fro'] for r in rs):.1e}"))

    chk.section("fast bf16 kernel/flush/tile sweep", 90.0, sweep)

    # ------------------------------------------------------------------ bf16 peak
    def peak_section():
        m = 512 if args.cpu_dry_run else 8192
        a = torch.randn(m, m, device=dev, dtype=torch.bfloat16)
        b = torch.randn(m, m, device=dev, dtype=torch.bfloat16)
        t = timeit(lambda: a @ b, sync=sync, repeat=10, warmup=3)
        res["bf16_peak_tflops"] = 2 * m**3 / t / 1e12
        rows.append((f"bf16 matmul peak ({m}^3)", f"{res['bf16_peak_tflops']:.3g} TFLOP/s", "", "torch a @ b"))

    chk.section("bf16 peak", 5.0, peak_section)
    peak = res.get("bf16_peak_tflops", float("nan"))

    dims = [int(s) for s in args.dims.split(",") if s]

    # ------------------------------------------------------------------ Gram timings
    def torch_xtx(x):
        """torch's bf16 X.T @ X with float32 output (the baseline), and its name: torch.mm with
        out_dtype where this torch has it, else (X.T @ X).float()."""
        try:
            torch.mm(x[:64].T, x[:64], out_dtype=torch.float32)
            return (lambda h: torch.mm(h.T, h, out_dtype=torch.float32)), "torch.mm(X.T, X, out_dtype=float32)"
        except (TypeError, RuntimeError):  # older torch, or the CPU dry run
            return (lambda h: (h.T @ h).float()), "torch (X.T @ X).float()"

    def gram_section(d):
        n = args.rows
        x = torch.randn(n, d, device=dev, dtype=torch.bfloat16)
        flops = args.chunks * n * d * d  # N·d²
        xtx, base_name = torch_xtx(x)

        def torch_gram():
            for _ in range(args.chunks):
                xtx(x)

        t_torch = timeit(torch_gram, sync=sync)
        entry = {"d": d, "rows": n, "chunks": args.chunks, "baseline": base_name, "torch_s": t_torch,
                 "torch_tflops": flops / t_torch / 1e12}
        res.setdefault("gram", []).append(entry)
        variants = ([("fast", "cublas")] + [("fast", k) for k in own_kernels]
                    + ([("fast", "wg192")] if "wg" in own_kernels else []) + [("highest", "cublas")])
        for label, data in (("centred", x), ("offset", x + 300.0)):
            for precision, kernel in variants:
                if precision == "highest" and label == "offset":
                    continue
                name = f"{precision}" + (f" {kernel}" if precision == "fast" else "")
                set_knobs({"GEOMFAST_CUDA_GRAM_KERNEL": "wg", "GEOMFAST_CUDA_WG_TILE_N": "192"} if kernel == "wg192"
                          else {"GEOMFAST_CUDA_GRAM_KERNEL": kernel})
                try:
                    acc = geomfast.GramAccumulator(d, device=where, precision=precision)

                    def ours():
                        for _ in range(args.chunks):
                            acc.update(data)

                    t_ours = timeit(ours, sync=sync, repeat=2)
                except Exception as e:  # recorded; the other variants still run
                    chk.failed = True
                    rows.append((f"Gram bf16 {name} {label} d={d}", "ERROR", "", f"{type(e).__name__}: {str(e)[:100]}"))
                    log(f"  {rows[-1]}")
                    continue
                finally:
                    set_knobs({})
                tf = flops / t_ours / 1e12
                key = name.replace(" ", "_")
                entry[f"{key}_{label}_s"] = t_ours
                entry[f"{key}_{label}_tflops"] = tf
                rows.append((f"Gram bf16 {name} {label} d={d}", f"{tf:.3g} TFLOP/s",
                             f"{entry['torch_tflops']:.3g} TFLOP/s ({base_name})",
                             f"{t_torch / t_ours:.2f}x torch, {100 * tf / peak:.0f}% of peak"))
                log(f"  {rows[-1]}")
                chk.save()
                del acc
        del x
        torch.cuda.empty_cache()

    for d in dims:
        chk.section(f"Gram d={d}", 10.0 * (d / 4096) ** 2, lambda d=d: gram_section(d))

    # ------------------------------------------------------------------ eigensolvers
    try:
        import cupy
    except ImportError:
        cupy = None
    if args.cpu_dry_run:
        cupy = None

    def eig_section(d):
        g = torch.Generator(device=dev).manual_seed(d)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, device=dev, dtype=torch.float64))
        lam = torch.arange(1, d + 1, device=dev, dtype=torch.float64) ** -1.0
        a = (q * lam) @ q.T
        a = (a + a.T) / 2
        del q
        entry = {"d": d}
        res.setdefault("eig", []).append(entry)
        ref = np.sort(lam.cpu().numpy())[::-1]
        full = geomfast.eigvalsh(a)
        t_ours = timeit(lambda: geomfast.eigvalsh(a), sync=sync, repeat=2)
        t_torch = timeit(lambda: torch.linalg.eigvalsh(a), sync=sync, repeat=2)
        entry.update(full_s=t_ours, torch_s=t_torch, full_max_err_over_l1=float(np.abs(full - ref).max() / ref[0]))
        rows.append((f"eigvalsh full d={d}", f"{t_ours * 1e3:.3g} ms", f"{t_torch * 1e3:.3g} ms (torch)",
                     f"{t_torch / t_ours:.2f}x; err {entry['full_max_err_over_l1']:.1e}·λ1"))
        chk.save()
        t32 = timeit(lambda: geomfast.eigvalsh(a, single_precision=True), sync=sync, repeat=2)
        entry["full_single_s"] = t32
        rows.append((f"eigvalsh full float32 d={d}", f"{t32 * 1e3:.3g} ms", "", ""))
        if cupy is not None:
            ca = cupy.asarray(a.cpu().numpy())
            t_cp = timeit(lambda: cupy.linalg.eigvalsh(ca), sync=lambda: cupy.cuda.Device().synchronize(), repeat=2)
            entry["cupy_s"] = t_cp
            rows.append((f"eigvalsh full d={d} vs cupy", f"{t_ours * 1e3:.3g} ms", f"{t_cp * 1e3:.3g} ms (cupy)",
                         f"{t_cp / t_ours:.2f}x"))
            del ca
        chk.save()
        k = 256
        top = geomfast.eigvalsh(a, method="randomized", k=k)
        t_rand = timeit(lambda: geomfast.eigvalsh(a, method="randomized", k=k), sync=sync, repeat=2)
        err100 = float(np.max(np.abs(top[:100] - ref[:100]) / ref[:100]))
        t_svd = timeit(lambda: torch.svd_lowrank(a, q=k + 16, niter=4), sync=sync, repeat=2)
        entry.update(randomized_s=t_rand, randomized_top100_rel_err=err100, svd_lowrank_s=t_svd)
        rows.append((f"randomized top-{k} d={d}", f"{t_rand * 1e3:.3g} ms", f"{t_ours * 1e3:.3g} ms (our full)",
                     f"{t_ours / t_rand:.1f}x faster; top-100 err {err100:.1e}"))
        rows.append((f"randomized top-{k} d={d} vs svd_lowrank", f"{t_rand * 1e3:.3g} ms",
                     f"{t_svd * 1e3:.3g} ms (torch.svd_lowrank q={k + 16}, niter=4)", f"{t_svd / t_rand:.2f}x"))
        del a
        torch.cuda.empty_cache()

    for d in dims:
        chk.section(f"eigvalsh d={d}", 8.0 * (d / 4096) ** 3, lambda d=d: eig_section(d))

    # ------------------------------------------------------------------ batched spectra
    def batch_section():
        b, d, n = args.batch, args.batch_dim, 4096
        accs = []
        for i in range(b):
            x = torch.randn(n, d, device=dev, dtype=torch.bfloat16) * (1 + i / b)
            accs.append(geomfast.GramAccumulator(d, device=where, precision="fast").update(x))
        covs = torch.stack([torch.from_numpy(a.covariance()).to(dev) for a in accs])
        t_loop = timeit(lambda: [a.spectrum() for a in accs], sync=sync, repeat=2)
        t_batch = timeit(lambda: geomfast.spectra(accs), sync=sync, repeat=2)
        t_torch = timeit(lambda: torch.linalg.eigvalsh(covs), sync=sync, repeat=2)
        got = geomfast.spectra(accs)
        worst = max(float(np.max(np.abs(g - a.spectrum())) / a.spectrum()[0]) for g, a in zip(got, accs))
        res["batched_spectra"] = {"batch": b, "d": d, "loop_s": t_loop, "spectra_s": t_batch,
                                  "torch_batched_eigvalsh_s": t_torch, "max_diff_over_l1": worst}
        rows.append((f"spectra of {b} accumulators d={d}", f"{t_batch * 1e3:.3g} ms",
                     f"{t_loop * 1e3:.3g} ms (one spectrum() each)", f"{t_loop / t_batch:.2f}x; diff {worst:.1e}·λ1"))
        rows.append((f"spectra of {b} accumulators d={d} vs torch", f"{t_batch * 1e3:.3g} ms",
                     f"{t_torch * 1e3:.3g} ms (torch.linalg.eigvalsh on [{b}, {d}, {d}], covariances given)",
                     f"{t_torch / t_batch:.2f}x"))
        # geomfast.eigvalsh on the same [b, d, d] batch (the drop-in for torch's batched call)
        t_eig = timeit(lambda: geomfast.eigvalsh(covs), sync=sync, repeat=2)
        diff = float(np.max(np.abs(geomfast.eigvalsh(covs) - torch.linalg.eigvalsh(covs).cpu().numpy()[..., ::-1])))
        res["batched_spectra"].update(eigvalsh_batch_s=t_eig, eigvalsh_batch_max_abs_diff=diff)
        rows.append((f"eigvalsh of a [{b}, {d}, {d}] batch vs torch", f"{t_eig * 1e3:.3g} ms",
                     f"{t_torch * 1e3:.3g} ms (torch.linalg.eigvalsh, same batch)",
                     f"{t_torch / t_eig:.2f}x; max |diff| {diff:.1e}"))
        del accs, covs
        torch.cuda.empty_cache()

    chk.section("batched spectra", 20.0, batch_section)

    def forward_loop_section():
        # What a trace costs beside the forward pass: `layers` bf16 matmuls standing for the
        # blocks, each output fed to its own accumulator (as the extraction hooks do, one update
        # per layer per batch). Every update synchronises the host once (the NaN check before the
        # state changes), so the next layer's kernels are queued only after it: this measures
        # that against torch's X.T @ X, which never synchronises.
        d, n, layers = (96, 512, 4) if args.cpu_dry_run else (args.sweep_dim, 8192, 24)
        g = torch.Generator(device=dev).manual_seed(1)
        w = [torch.randn(d, d, generator=g, device=dev, dtype=torch.float32).div_(d ** 0.5).to(torch.bfloat16)
             for _ in range(layers)]
        x0 = torch.randn(n, d, generator=g, device=dev, dtype=torch.float32).to(torch.bfloat16)
        accs = [geomfast.GramAccumulator(d, device=where, precision="fast") for _ in range(layers)]

        def forward(hook):
            h = x0
            for i in range(layers):
                h = torch.tanh(h @ w[i])
                hook(i, h)

        t_fwd = timeit(lambda: forward(lambda i, h: None), sync=sync, repeat=3)
        t_gf = timeit(lambda: forward(lambda i, h: accs[i].update(h)), sync=sync, repeat=3)
        xtx, _ = torch_xtx(x0)  # the Gram section's baseline
        t_torch = timeit(lambda: forward(lambda i, h: xtx(h)), sync=sync, repeat=3)
        res["forward_loop"] = {"d": d, "rows": n, "layers": layers, "forward_s": t_fwd, "with_geomfast_s": t_gf,
                               "with_torch_xtx_s": t_torch}
        rows.append((f"forward-like loop, {layers} layers, {n} x {d} bf16, update per layer",
                     f"{(t_gf - t_fwd) * 1e3:.3g} ms over the forward",
                     f"{(t_torch - t_fwd) * 1e3:.3g} ms (torch X.T @ X per layer)",
                     f"forward {t_fwd * 1e3:.3g} ms; geomfast/torch overhead {(t_gf - t_fwd) / max(t_torch - t_fwd, 1e-9):.2f}x"))
        del accs, w
        if not args.cpu_dry_run:
            torch.cuda.empty_cache()

    chk.section("forward-like loop (a sync per update)", 15.0, forward_loop_section)

    # Last, so that a long test run cannot crowd out the figures: the kernels it would exercise
    # have passed their smoke checks above, and it gets what is left of the budget.
    if not args.skip_tests and not args.cpu_dry_run:
        chk.section("tests/test_cuda.py", 30.0, tests)

    chk.save()
    log("")
    log(format_table(chk.title(), rows))
    return 1 if chk.failed else 0


if __name__ == "__main__":
    sys.exit(main())
