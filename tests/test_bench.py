"""geomfast bench: the tool's correctness (cases, accuracy, JSON, CLI) — never its timings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from geomfast import bench


def test_gram_rows_accuracy_and_speedups():
    rows = bench.bench_gram(33, n_rows=300, dtype="float32", precision="highest", repeats=1, warmup=0)
    names = [r["impl"] for r in rows]
    assert names[0] == "geomfast[highest]"
    assert "numpy float32 X.T@X" in names and "numpy float64 X.T@X" in names
    by = {r["impl"]: r for r in rows}
    assert by["geomfast[highest]"]["rel_error"] <= 1e-12
    assert by["numpy float64 X.T@X"]["rel_error"] <= 1e-14
    assert 1e-9 < by["numpy float32 X.T@X"]["rel_error"] < 1e-4  # float32 rounding, measured
    assert rows[0]["speedup"] is None
    for r in rows[1:]:
        assert r["speedup"] == pytest.approx(r["median_s"] / rows[0]["median_s"])
        assert r["gflops"] == pytest.approx(300 * 33 * 33 / r["median_s"] / 1e9)


def test_gram_bfloat16_uses_torch_baselines():
    pytest.importorskip("torch")
    rows = bench.bench_gram(32, n_rows=200, dtype="bfloat16", precision="fast", repeats=1, warmup=0)
    names = [r["impl"] for r in rows]
    assert names == ["geomfast[fast]", "torch float32 X.T@X", "torch float64 X.T@X"]
    by = {r["impl"]: r for r in rows}
    assert by["torch float64 X.T@X"]["rel_error"] <= 1e-14  # bf16 up-casts exactly
    assert by["geomfast[fast]"]["rel_error"] < 1e-5


def test_eig_full_and_randomized():
    a, lam = bench.make_spd(40, alpha=1.0)
    np.testing.assert_allclose(np.linalg.eigvalsh(a)[::-1], lam, atol=1e-13)
    rows = bench.bench_eig(40, method="full", repeats=1, warmup=0)
    assert rows[0]["impl"] == "geomfast full"
    assert all(r["rel_error"] < 1e-12 for r in rows)
    assert "numpy.linalg.eigvalsh" in [r["impl"] for r in rows]
    rows = bench.bench_eig(64, method="randomized", k=8, alpha=2.0, repeats=1, warmup=0)
    names = [r["impl"] for r in rows]
    assert names[:2] == ["geomfast randomized k=8", "geomfast full"]
    assert rows[0]["n_values"] == 8 and rows[0]["rel_error"] < 1e-5
    if any("torch" in n for n in names):
        assert "torch.svd_lowrank q=24" in names
    with pytest.raises(ValueError, match="randomized needs"):
        bench.bench_eig(16, method="randomized", k=None)


def test_run_bench_table_and_json(tmp_path, capsys):
    from geomfast.cli import main

    out = tmp_path / "b.json"
    assert main(["bench", "--op", "all", "--sizes", "31", "--n-rows", "128", "--repeats", "1",
                 "--warmup", "0", "--precision", "highest,fast", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "geomfast[highest]" in text and "geomfast[fast]" in text and "eig  d=31" in text
    # one block per geomfast precision, each with its own baselines (one block held both, and the
    # second geomfast row read "- (geomfast failed)")
    assert "geomfast failed" not in text
    for prec in ("highest", "fast"):
        block = text.split(f"float32  geomfast {prec}  on cpu")[1].split("\n\n")[0]
        assert f"geomfast[{prec}]" in block and "numpy float32 X.T@X" in block, block
        assert "geomfast[" + ("fast" if prec == "highest" else "highest") + "]" not in block, block
    data = json.loads(out.read_text())
    assert data["config"]["sizes"] == [31] and data["meta"]["backends"]["cpu"]["usable"]
    ops = {r["op"] for r in data["results"]}
    assert ops == {"gram", "eig"}
    assert all("median_s" in r or "error" in r for r in data["results"])
    with pytest.raises(SystemExit):
        main(["bench", "--op", "nope"])
    assert main(["bench", "--dtype", "int8", "--sizes", "8"]) == 1  # reported as a user error


def test_format_bench_reports_errors():
    rows = [{"op": "gram", "impl": "geomfast[highest]", "d": 8, "n_rows": 4, "dtype": "float32",
             "device": "cpu", "median_s": 0.001, "gflops": 1.0, "rel_error": 0.0, "speedup": None},
            {"op": "gram", "impl": "x", "d": 8, "n_rows": 4, "dtype": "float32", "device": "cpu",
             "error": "MemoryError: too big"}]
    text = bench.format_bench(rows)
    assert "error: MemoryError" in text and "(geomfast)" in text


def _bench_cli(argv, capsys):
    """(exit code, stdout, stderr) of `geomfast bench ARGV` run in-process."""
    from geomfast.cli import main

    rc = main(["bench", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("alpha", ["-1", "nan", "inf"])
def test_cli_refuses_bad_alpha_up_front(alpha, capsys):
    rc, out, err = _bench_cli(["--op", "eig", "--sizes", "32", "--alpha", alpha, "--repeats", "1",
                               "--warmup", "0"], capsys)
    assert rc == 1 and out == ""  # nothing ran
    assert "--alpha must be a finite number >= 0" in err and f"got {float(alpha)!r}" in err
    with pytest.raises(ValueError, match=r"alpha must be a finite number >= 0"):
        bench.make_spd(8, alpha=-1.0)
    a, lam = bench.make_spd(8, alpha=0.0)  # 0: a flat spectrum, still descending (non-increasing)
    np.testing.assert_allclose(lam, 1.0) and np.testing.assert_allclose(a, np.eye(8), atol=1e-14)
    rc, out, _ = _bench_cli(["--op", "eig", "--sizes", "16", "--alpha", "0", "--repeats", "1",
                             "--warmup", "0"], capsys)
    assert rc == 0 and "spectrum k^-0" in out


@pytest.mark.parametrize("device, expect", [
    ("cuda", "--device cuda: geomfast's CUDA backend is not usable here: "),
    ("cuda:0", "--device cuda:0: geomfast's CUDA backend is not usable here: "),
    ("tpu", "--device must be cpu, cuda or cuda:N, got 'tpu'"),
    ("cuda:x", "--device must be cpu, cuda or cuda:N, got 'cuda:x'"),
])
def test_cli_refuses_bad_device_up_front(device, expect, capsys, monkeypatch):
    import geomfast.linalg

    monkeypatch.setattr(geomfast.linalg, "backends", lambda: {
        "cpu": {"usable": True, "reason": ""},
        "cuda": {"built": False, "usable": False, "reason": "no CUDA here (test)", "device_count": 0}})
    rc, out, err = _bench_cli(["--sizes", "16", "--n-rows", "32", "--repeats", "1", "--device", device], capsys)
    assert rc == 1 and out == ""
    assert expect in err and len(err.strip().splitlines()) == 1  # one line, no traceback
    if device in ("cuda", "cuda:0"):
        assert "no CUDA here (test)" in err
    # a usable backend with one device: an index past it is named
    monkeypatch.setattr(geomfast.linalg, "backends", lambda: {
        "cuda": {"built": True, "usable": True, "reason": "", "device_count": 1}})
    rc, out, err = _bench_cli(["--sizes", "16", "--device", "cuda:3"], capsys)
    assert rc == 1 and "expected cuda:0 to cuda:0 (1 CUDA device(s)), got index 3" in err


@pytest.mark.parametrize("flag, value, expect", [
    ("--tol", "0", "--tol must be a finite number > 0, got 0.0"),
    ("--tol", "nan", "--tol must be a finite number > 0, got nan"),
    ("--tol-k", "-3", "--tol-k must be a non-negative int, got -3"),
    ("--block", "-4", "--block must be a non-negative int, got -4"),
])
def test_cli_refuses_bad_randomized_options_up_front(flag, value, expect, capsys):
    rc, out, err = _bench_cli(["--op", "eig", "--method", "randomized", "--sizes", "32", "--k", "4",
                               "--repeats", "1", "--warmup", "0", flag, value], capsys)
    assert rc == 1 and out == "" and expect in err


def test_failed_geomfast_row_exits_nonzero_with_full_message(capsys, monkeypatch):
    import geomfast.linalg

    real = geomfast.linalg.eigvalsh
    long_msg = "the randomized solver did not converge: " + "very long explanation " * 6 + "THE END"

    def eigvalsh(a, *, method="full", **kw):
        if method == "randomized":
            raise RuntimeError(long_msg)
        return real(a, method=method, **kw)

    monkeypatch.setattr(geomfast.linalg, "eigvalsh", eigvalsh)
    rc, out, err = _bench_cli(["--op", "eig", "--method", "randomized", "--sizes", "32", "--k", "4",
                               "--repeats", "1", "--warmup", "0"], capsys)
    assert rc == 2 and "1 geomfast case(s) failed" in err
    assert f"[1] geomfast randomized k=4: RuntimeError: {long_msg}" in out  # the whole message
    assert "error: RuntimeError [1]" in out
    # the speedups are not silently taken against another row (geomfast full) instead
    table = {line.split("  ")[0].strip(): line for line in out.splitlines() if line.startswith(("geomfast", "numpy"))}
    assert table["geomfast full"].endswith("- (geomfast failed)")
    assert table["numpy.linalg.eigvalsh"].endswith("- (geomfast failed)")
    rows = bench.bench_eig(32, method="randomized", k=4, repeats=1, warmup=0)
    assert "error" in rows[0] and all(r.get("speedup") is None for r in rows)
    # a failing baseline alone does not fail the run: its message is printed in full too
    monkeypatch.setattr(geomfast.linalg, "eigvalsh", real)
    rows = [{"op": "gram", "impl": "geomfast[highest]", "d": 8, "n_rows": 4, "dtype": "float32",
             "device": "cpu", "median_s": 0.001, "gflops": 1.0, "rel_error": 0.0, "speedup": None},
            {"op": "gram", "impl": "x", "d": 8, "n_rows": 4, "dtype": "float32", "device": "cpu",
             "error": "MemoryError: " + "y" * 100 + " end"}]
    assert "[1] x: MemoryError: " + "y" * 100 + " end" in bench.format_bench(rows)


def test_cli_checks_json_path_before_running(tmp_path, capsys):
    """--json FILE is checked as export's and plot's outputs are, before the first case: a folder
    or an SQLite database is refused; a missing folder is made, as they make theirs."""
    import sqlite3

    rc, out, err = _bench_cli(["--sizes", "16", "--json", str(tmp_path)], capsys)
    assert rc == 1 and out == "" and "…" not in err  # refused before the first case
    assert "--json" in err and "this is a folder, expected a file name" in err
    db = tmp_path / "results.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.commit()
    before = db.read_bytes()
    rc, out, err = _bench_cli(["--sizes", "16", "--json", str(db)], capsys)
    assert rc == 1 and out == "" and "this is an SQLite database" in err
    assert db.read_bytes() == before
    missing = tmp_path / "nope" / "x.json"
    rc, out, err = _bench_cli(["--op", "gram", "--sizes", "16", "--n-rows", "32", "--repeats", "1",
                               "--warmup", "0", "--json", str(missing)], capsys)
    assert rc == 0, err
    assert json.loads(missing.read_text())["results"]


def test_cli_refuses_k_above_size_instead_of_clamping(capsys):
    rc, out, err = _bench_cli(["--op", "eig", "--method", "randomized", "--k", "500", "--sizes", "64",
                               "--repeats", "1", "--warmup", "0"], capsys)
    assert rc == 1 and out == ""
    assert "--k must be an int in [1, 64]" in err and "got 500" in err
    rc, out, err = _bench_cli(["--op", "eig", "--method", "randomized", "--k", "40", "--sizes", "64,32",
                               "--repeats", "1", "--warmup", "0"], capsys)
    assert rc == 1 and out == "" and "--k must be an int in [1, 32]" in err  # before d=64 ran
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 64\]"):
        bench.run_bench(op="eig", sizes=[64], method="randomized", k=500, repeats=1, warmup=0)
    rc, out, _ = _bench_cli(["--op", "eig", "--method", "randomized", "--k", "64", "--sizes", "64",
                             "--repeats", "1", "--warmup", "0"], capsys)
    assert rc == 0 and "top-64" in out  # k = d is allowed, as eigvalsh allows it


def _load_benchmark(name):
    """benchmarks/<name>.py as a module (the scripts are not part of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_gpu_check():
    return _load_benchmark("gpu_check")


def test_gpu_check_sections_record_errors_and_skips(tmp_path):
    """A GPU session has minutes: one failing or oversized section must not lose the others."""
    gc = _load_gpu_check()
    chk = gc.Check(tmp_path, budget_s=100.0)
    ran = []

    def boom():
        raise RuntimeError("kernel exploded")

    chk.section("first", 1.0, lambda: ran.append("first"))
    chk.section("broken", 1.0, boom)
    chk.section("too big", 1e6, lambda: ran.append("too big"))
    chk.section("after", 1.0, lambda: ran.append("after"))
    assert ran == ["first", "after"]
    assert chk.failed
    saved = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert [saved[k]["status"] for k in ("first", "broken", "too big", "after")] == ["ok", "error", "skipped", "ok"]
    assert "kernel exploded" in saved["broken"]["error"]
    table = (tmp_path / "table.txt").read_text()
    assert "ERROR" in table and "SKIPPED" in table


def test_gpu_check_cpu_dry_run_runs_every_section(tmp_path):
    pytest.importorskip("torch")
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--cpu-dry-run", "--out", str(tmp_path),
           "--dims", "300", "--rows", "1024", "--chunks", "1", "--sweep-dim", "96", "--sweep-rows", "2048",
           "--chains", "256", "--flush", "128,256,1024", "--tiles", "512", "--tc-chains", "64", "--tc-rows", "8192",
           "--batch", "3", "--batch-dim", "40"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {v["status"] for v in res["sections"].values()} == {"ok"}
    assert set(res["sections"]) == {"own-kernel smoke checks (subprocesses)", "fast bf16 kernel/flush/tile sweep",
                                   "bf16 peak", "Gram d=300", "eigvalsh d=300", "batched spectra",
                                   "forward-like loop (a sync per update)"}
    assert {k: v["ok"] for k, v in res["smoke"].items()} == {"tc": True, "wg": True}
    # defaults, 1 chain with the 2 flushes not shorter than it, 1 tile, then defaults and 1 chain
    # setting for each of tc and wg, and wg's 192-column tile; on centred and offset bf16 data and
    # centred f16 data
    assert len(res["sweep"]) == 3 * 9 and all(r["rel_fro"] < 1e-6 for r in res["sweep"])
    assert {r["setting"] for r in res["sweep"]} >= {"cublas chain 256 flush 256", "cublas chain 256 flush 1024",
                                                   "wg (defaults)", "wg chain 64 rows 8192", "tc (defaults)",
                                                   "wg tile 192"}
    assert "Gram bf16 fast wg192 centred d=300" in (tmp_path / "table.txt").read_text()
    assert res["eig"][0]["full_max_err_over_l1"] < 1e-12
    assert "randomized top-256 d=300" in (tmp_path / "table.txt").read_text()
    assert res["batched_spectra"]["max_diff_over_l1"] < 1e-12


def test_bench_eig_ab_times_both_cpu_solvers_and_the_baselines(monkeypatch):
    import os

    mod = _load_benchmark("bench_eig_ab")
    monkeypatch.setenv("GEOMFAST_CPU_EIG_FULL", "auto")
    lines = []
    rows = mod.run([70], rounds=2, out=lines.append)
    names = [r["impl"] for r in rows]
    assert names[:2] == ["geomfast[two_stage]", "geomfast[dsyevd]"] and "numpy.linalg.eigvalsh" in names
    assert all(r["rel_error"] < 1e-13 for r in rows), rows
    assert all(len(r["times_s"]) == 2 for r in rows)
    assert rows[0]["ratio_vs_two_stage"] == 1.0
    assert os.environ["GEOMFAST_CPU_EIG_FULL"] == "auto"  # restored after each call
    assert "(geomfast)" in "\n".join(lines)
    with pytest.raises(SystemExit):
        mod.main(["--dims", "0"])
    ratios = mod.run_batch(40, 3, rounds=1, out=lines.append)
    assert set(ratios) == {"geomfast.spectra", "geomfast.singular_values_of"}
    assert all(r > 0 for r in ratios.values())
    assert mod.run_geometry(300, 120, rounds=1, out=lines.append) > 0


def test_the_top_values_column_says_how_many_values_it_covers():
    """A randomized top-32 case labelled its column 'top-100 rel. error' over 32 values; every
    row of a case is now measured over the same leading min(100, d, k) values, and says so."""
    rows = bench.bench_eig(64, method="randomized", k=32, repeats=1, warmup=0)
    assert {r["top_values"] for r in rows if "error" not in r} == {32}
    text = bench.format_bench(rows)
    assert "top-32 rel. error" in text and "top-100" not in text
    rows = bench.bench_eig(64, method="full", repeats=1, warmup=0)
    assert {r["top_values"] for r in rows if "error" not in r} == {64}
    assert "top-64 rel. error" in bench.format_bench(rows)


@pytest.mark.parametrize("argv, expect", [
    (["--warmup", "-1"], "--warmup must be an int >= 0, got -1"),
    (["--repeats", "0"], "--repeats must be an int >= 1, got 0"),
    (["--n-rows", "1"], "--n-rows must be an int >= 2, got 1"),
    (["--op", "eig", "--method", "randomized", "--k", "4", "--tol-k", "9"],
     "--tol-k must be an int in [1, --k=4] (leave it out for all k), got 9"),
    (["--op", "eig", "--method", "randomized", "--k", "4", "--tol-k", "0"],
     "--tol-k must be an int in [1, --k=4] (leave it out for all k), got 0"),
    (["--op", "eig", "--method", "randomized", "--k", "4", "--block", "0"],
     "--block must be an int >= 1 (leave it out for the solver's default, clamp(k/8, 32, 256)), got 0"),
    (["--k", "4", "--tol-k", "9"], "--tol-k: only for the randomized eigensolver (--op eig or all with --method "
                                   "randomized), got --op all --method full"),
    (["--op", "gram", "--method", "randomized", "--block", "8"], "--block: only for the randomized eigensolver "
                                                                 "(--op eig or all with --method randomized), "
                                                                 "got --op gram --method randomized"),
])
def test_cli_refuses_nonsense_counts_and_solver_options_up_front(argv, expect, capsys):
    """Each ran: a negative warm-up as none, tol_k past k clamped, block 0 as the default width,
    randomized-only options under --method full ignored."""
    rc, out, err = _bench_cli(["--sizes", "32", *argv], capsys)
    assert rc == 1 and out == "" and err == f"geomfast bench: error: {expect}\n", err
    with pytest.raises(ValueError, match=r"^\[bench\] warmup must be an int >= 0, got -1"):
        bench.run_bench(op="gram", sizes=[16], n_rows=32, repeats=1, warmup=-1)
    with pytest.raises(ValueError, match=r"^\[bench\] tol_k must be an int in \[1, k=4\]"):
        bench.bench_eig(32, method="randomized", k=4, repeats=1, warmup=0, eig_options={"tol_k": 5})
    from geomfast.cli import main

    with pytest.raises(SystemExit) as e:  # a parser error: one line, exit 1
        main(["bench", "--op", "nope"])
    assert e.value.code == 1 and "argument --op: invalid choice: 'nope'" in capsys.readouterr().err
