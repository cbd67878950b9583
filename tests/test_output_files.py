"""Every file a command writes (export CSV / Parquet, phases --json, bench --json) goes through
one writer: all of it on the disk, or a one-line error with the previous file untouched and no
truncated or temporary file left beside it (the plot's own cases are in test_plot.py)."""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest


def _db(path):
    from geomfast.store import ResultStore

    with ResultStore(path) as s:
        for i, step in enumerate((0, 1, 4, 16, 64, 256, 1000, 4000)):
            ck = dict(model="org/tiny", revision=f"step{step}", step=step, order=i)
            s.write_result(ck, "last", "last", options={"x": 1},
                           metrics={"rankme": 10 + 5 * np.sin(i), "alpha": 1 + i / 10, "n": 100, "dim": 64})
    return path


def _commands(db, out):
    cases = {
        "export-csv": (["export", str(db), "-o", str(out / "r.csv")], out / "r.csv"),
        "phases-json": (["phases", str(db), "--json", str(out / "p.json")], out / "p.json"),
        "bench-json": (["bench", "--op", "gram", "--sizes", "16", "--n-rows", "64", "--dtype", "float32",
                        "--precision", "highest", "--repeats", "1", "--warmup", "0", "--json",
                        str(out / "b.json")], out / "b.json"),
    }
    try:
        import pyarrow  # noqa: F401
        cases["export-parquet"] = (["export", str(db), "-o", str(out / "r.parquet")], out / "r.parquet")
    except ImportError:
        pass
    return cases


@pytest.mark.parametrize("case", ["export-csv", "export-parquet", "phases-json", "bench-json"])
def test_failed_write_keeps_the_previous_file_and_leaves_no_partial_one(case, tmp_path, capsys, monkeypatch):
    from geomfast.cli import main

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    db = _db(tmp_path / "r.db")
    out = tmp_path / "out"
    cases = _commands(db, out)
    if case not in cases:
        pytest.skip("export to parquet needs pyarrow")
    argv, path = cases[case]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    before = path.read_bytes()
    assert len(before) > 64
    if path.suffix == ".json":
        json.loads(before)  # complete

    real_write = os.write
    calls = []

    def full_after_64_bytes(fd, data):  # only files being written under tmp_path/out fill up
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(str(out)):
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data)[:64])

    monkeypatch.setattr(os, "write", full_after_64_bytes)
    assert main(argv) == 1
    monkeypatch.undo()
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("… ")]
    assert calls, "the file was not written through os.write"
    assert len(err) == 1 and err[0].startswith(f"geomfast {argv[0]}: error:"), err  # (bench: "… case" progress lines)
    assert "No space left on device" in err[0] and str(path) in err[0]
    assert path.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [path.name]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_export_to_a_full_disk_raises_naming_the_file(tmp_path):
    from geomfast.store import export

    db = _db(tmp_path / "r.db")
    with pytest.raises(OSError) as e:
        export(db, "/dev/full", format="csv")
    assert e.value.errno == errno.ENOSPC and e.value.filename == "/dev/full"


def test_export_csv_round_trips(tmp_path):
    """The in-memory CSV is the table the rows hold (same columns, one line per row)."""
    import csv

    from geomfast.store import EXPORT_COLUMNS, ResultStore, export

    db = _db(tmp_path / "r.db")
    assert export(db, tmp_path / "r.csv") == 8
    with open(tmp_path / "r.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == list(EXPORT_COLUMNS) and len(table) == 9
    with ResultStore(db, readonly=True) as s:
        rows = s.rows()
    i = table[0].index("rankme")
    assert [float(r[i]) for r in table[1:]] == [r["rankme"] for r in rows]
    assert oct(os.stat(tmp_path / "r.csv").st_mode & 0o777) != oct(0o600)  # not mkstemp's mode


def test_export_with_spectra_holds_the_stored_values(tmp_path, capsys):
    """--spectra: Parquet list columns equal to the stored spectra (null for a row without);
    CSV is refused, naming the fix."""
    pq = pytest.importorskip("pyarrow.parquet")
    from geomfast.cli import main
    from geomfast.store import ResultStore, export

    rng = np.random.default_rng(4)
    want = {}
    with ResultStore(tmp_path / "r.db") as s:
        for i in range(3):
            ck = dict(model="org/tiny", revision=f"step{i}", step=i, order=i)
            spec = np.sort(rng.random(16))[::-1]
            sv = np.sqrt(spec * 99) + rng.random(16) * 1e-3
            s.write_result(ck, "last", "last", options={"x": 1}, metrics={"rankme": 3.0 + i, "n": 100, "dim": 16},
                           spectra={"covariance": spec, "singular": sv})
            want[f"step{i}"] = (spec, sv)
        s.write_error(dict(model="org/tiny", revision="step9", step=9, order=9), options={"x": 1}, error="boom")
    assert main(["export", str(tmp_path / "r.db"), "-o", str(tmp_path / "r.parquet"), "--spectra"]) == 0
    assert "4 row(s) written" in capsys.readouterr().out
    t = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert len(t) == 4
    for r in t:
        if r["revision"] == "step9":
            assert r["status"] == "error" and r["covariance_spectrum"] is None and r["singular_values"] is None
            continue
        spec, sv = want[r["revision"]]
        assert np.array_equal(r["covariance_spectrum"], spec) and np.array_equal(r["singular_values"], sv)
    plain = pq.read_table(export(tmp_path / "r.db", tmp_path / "plain.parquet") and tmp_path / "plain.parquet")
    assert "covariance_spectrum" not in plain.column_names
    with pytest.raises(ValueError, match=r"\[export\] spectra are list columns, which CSV cannot hold"):
        export(tmp_path / "r.db", tmp_path / "r.csv", spectra=True)
    assert main(["export", str(tmp_path / "r.db"), "-o", str(tmp_path / "r.csv"), "--spectra"]) == 1
    assert "expected a .parquet file" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()
