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
