"""The results store: round trip, uniqueness, WAL, resume keys, export, recompute."""
from __future__ import annotations

import csv
import os
import sqlite3
import struct

import numpy as np

from geomfast.checkpoints import Checkpoint as Ck
import pytest

from geomfast.store import (
    EXPORT_COLUMNS,
    METRIC_COLUMNS,
    ResultStore,
    decode_spectrum,
    encode_spectrum,
    export,
    options_hash,
)

OPTS = {"dataset": "synthetic", "n_samples": 64, "seed": 0}




def ck(step: int) -> Ck:
    return Ck("tiny", f"step{step}", f"/ckpts/step{step}", None, step, step * 1000, step)


def metrics(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    m = {c: float(rng.uniform(1, 10)) for c in METRIC_COLUMNS}
    m.update(n=100, dim=8, warnings=["a note"])
    return m


def test_spectrum_encoding_is_float64_little_endian():
    x = np.array([3.5, 2.0, -1e-300, 0.0])
    blob = encode_spectrum(x)
    assert len(blob) == 32
    assert struct.unpack("<4d", blob) == tuple(x)
    np.testing.assert_array_equal(decode_spectrum(blob), x)
    assert decode_spectrum(blob).flags.writeable


def test_round_trip(tmp_path):
    db = tmp_path / "r.db"
    spec = np.sort(np.random.default_rng(1).uniform(0, 1, 8))[::-1]
    sv = np.sqrt(spec) * 3
    m = metrics()
    with ResultStore(db) as s:
        run = s.start_run(OPTS, ["geomfast", "trace"])
        assert s.write_result(ck(4), "last", "mean", options=OPTS, metrics=m,
                              spectra={"covariance": spec, "singular": sv},
                              timings={"load_s": 0.5, "extract_s": 1.5, "metrics_s": 0.1},
                              run_id=run)
        s.finish_run(run)
    with ResultStore(db, readonly=True) as s:
        (row,) = s.rows()
        assert (row["model"], row["revision"], row["step"], row["tokens"], row["layer"],
                row["pooling"], row["n"], row["dim"]) == ("tiny", "step4", 4, 4000, "last", "mean", 100, 8)
        for c in METRIC_COLUMNS:
            assert row[c] == m[c]
        assert row["status"] == "ok" and row["error"] is None
        assert row["options_hash"] == options_hash(OPTS)
        assert row["extract_s"] == 1.5 and row["run_id"] == run
        np.testing.assert_array_equal(s.spectrum(row["id"]), spec)
        np.testing.assert_array_equal(s.spectrum(row["id"], "singular"), sv)
        (r,) = s.runs()
        assert r["status"] == "finished" and r["command"] == "geomfast trace"


def test_unique_key_nothing_duplicates(tmp_path):
    db = tmp_path / "r.db"
    with ResultStore(db) as s:
        assert s.write_result(ck(1), "last", "last", options=OPTS, metrics=metrics(1),
                              spectra={"covariance": [2.0, 1.0]})
        # the same key again: kept from the first write, nothing added
        assert not s.write_result(ck(1), "last", "last", options=OPTS, metrics=metrics(2),
                                  spectra={"covariance": [5.0, 1.0]})
        assert s.count() == 1
        assert s.rows()[0]["rankme"] == metrics(1)["rankme"]
        # the schema itself refuses a duplicate, whatever the code does
        with pytest.raises(sqlite3.IntegrityError):
            s.conn.execute("INSERT INTO results(model, revision, layer, pooling, options_hash, "
                           "status, created_at) VALUES ('tiny', 'step1', 'last', 'last', ?, 'ok', 0)",
                           (options_hash(OPTS),))
        # another options hash is another result
        assert s.write_result(ck(1), "last", "last", options={**OPTS, "seed": 1}, metrics=metrics())
        assert s.count() == 2
        assert s.conn.execute("SELECT COUNT(*) FROM spectra").fetchone()[0] == 1


def test_errors_are_retried_and_replaced(tmp_path):
    with ResultStore(tmp_path / "r.db") as s:
        s.write_error(ck(2), options=OPTS, error="OSError: corrupt", layers=["*last"],
                      poolings=["last"])
        assert s.count("error") == 1
        assert s.done_keys(options_hash(OPTS)) == set()
        s.write_result(ck(2), "last", "last", options=OPTS, metrics=metrics())
        # the checkpoint-level error row is gone once the checkpoint succeeds
        assert s.count("error") == 0 and s.count("ok") == 1
        assert s.done_keys(options_hash(OPTS)) == {("tiny", "step2", "last", "last")}
        # an error for a key that is already ok never overwrites it
        s.write_error(ck(2), options=OPTS, error="late", layers=["last"], poolings=["last"])
        assert s.rows()[0]["status"] == "ok"


def test_done_checkpoints(tmp_path):
    with ResultStore(tmp_path / "r.db") as s:
        h = options_hash(OPTS)
        s.mark_checkpoint_done("tiny", "step0", h, "req")
        s.mark_checkpoint_done("tiny", "step0", h, "req")
        assert s.done_checkpoints(h, "req") == {("tiny", "step0")}
        assert s.done_checkpoints(h, "other") == set()
        assert s.done_checkpoints("x", "req") == set()


def test_wal_and_concurrent_reader(tmp_path):
    db = tmp_path / "r.db"
    s = ResultStore(db)
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    s.write_result(ck(0), "last", "last", options=OPTS, metrics=metrics())
    # a reader sees committed rows while the writer holds an open write transaction
    s.conn.execute("BEGIN IMMEDIATE")
    s.conn.execute("UPDATE results SET rankme = -1")
    with ResultStore(db, readonly=True) as r:
        assert r.count() == 1 and r.rows()[0]["rankme"] != -1
    s.conn.execute("ROLLBACK")
    s.close()


def test_transaction_is_atomic(tmp_path):
    with ResultStore(tmp_path / "r.db") as s:
        with pytest.raises(RuntimeError):
            with s.transaction():
                s.conn.execute("INSERT INTO meta(key, value) VALUES ('x', 'y')")
                raise RuntimeError("boom")
        assert s.conn.execute("SELECT COUNT(*) FROM meta WHERE key='x'").fetchone()[0] == 0


def test_schema_version_checked(tmp_path):
    db = tmp_path / "r.db"
    ResultStore(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match="schema version 999"):
        ResultStore(db)
    with pytest.raises(FileNotFoundError):
        ResultStore(tmp_path / "missing.db", readonly=True)


def _filled(tmp_path):
    db = tmp_path / "r.db"
    with ResultStore(db) as s:
        for step in (0, 1, 2):
            for layer in ("embed", "last"):
                s.write_result(ck(step), layer, "last", options=OPTS, metrics=metrics(step),
                               spectra={"covariance": np.linspace(1, 0.1, 8)})
        s.write_error(ck(3), options=OPTS, error="OSError: bad weights", layers=["*last"],
                      poolings=["last"])
    return db


REQUIRED = ["model", "revision", "step", "tokens", "layer", "pooling", "n", "dim", "rankme",
            "rankme_garrido2023", "rankme_full", "alpha", "alpha_r2", "alpha_r2_100", "status",
            "error"]


def test_export_csv(tmp_path):
    db = _filled(tmp_path)
    out = tmp_path / "r.csv"
    assert export(db, out) == 7
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert set(REQUIRED) <= set(rows[0]) and list(rows[0]) == list(EXPORT_COLUMNS)
    assert len(rows) == 7
    err = [r for r in rows if r["status"] == "error"]
    assert len(err) == 1 and "bad weights" in err[0]["error"] and err[0]["rankme"] == ""
    assert export(db, tmp_path / "ok.csv", include_errors=False) == 6


def test_export_from_python_never_writes_over_a_database(tmp_path):
    """export(db, db) wrote CSV over the database itself (every spectrum lost); the CLI refused it,
    the function did not. Also through a symlink, and over any other SQLite database."""
    db = _filled(tmp_path)
    before = db.read_bytes()
    link = tmp_path / "link.csv"
    link.symlink_to(db)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t(x)").connection.close()
    for out, why in [(db, "the results database itself"), (link, "the results database itself"),
                     (other, "a SQLite database")]:
        with pytest.raises(ValueError, match=why):
            export(db, out, format="csv")
    assert db.read_bytes() == before
    with ResultStore(db) as s:  # an open store too
        with pytest.raises(ValueError, match="itself"):
            export(s, db, format="csv")
    assert ResultStore(db, readonly=True).count() == 7


def test_export_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    db = _filled(tmp_path)
    out = tmp_path / "r.parquet"
    assert export(db, out, format="parquet") == 7
    t = pq.read_table(out)
    assert set(REQUIRED) <= set(t.column_names)
    assert str(t.schema.field("rankme").type) == "double"
    assert str(t.schema.field("step").type) == "int64"
    d = t.to_pydict()
    assert sorted(set(d["step"])) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="format"):
        export(db, tmp_path / "x.xlsx", format="xlsx")


def _seed() -> int:
    """A fresh seed, printed (pytest shows a failing test's output: the failure can be replayed)."""
    seed = int(np.random.SeedSequence().entropy % (2**63))
    print(f"seed={seed}")
    return seed


def _power_law_row(n: int, decay: float, seed: int):
    """Activations [n, 40] with a power-law spectrum from `seed`: (covariance spectrum, singular
    values, geometry()), what trace stores for one row."""
    import geomfast.metrics as M

    x = np.random.default_rng(seed).standard_normal((n, 40)) @ np.diag(np.arange(1, 41) ** -decay)
    xc = x - x.mean(0)
    spec = np.linalg.eigvalsh(xc.T @ xc / (n - 1))[::-1]
    sv = np.linalg.svd(x, compute_uv=False)
    return spec, sv, M.geometry(x, fit_range=(3, 30), spectrum=spec, singular_values=sv)


def test_recompute_from_stored_spectra(tmp_path):
    M = pytest.importorskip("geomfast.metrics")
    spec, sv, g = _power_law_row(300, 0.7, _seed())
    db = tmp_path / "r.db"
    with ResultStore(db) as s:
        s.write_result(ck(0), "last", "last", options=OPTS, metrics=g,
                       spectra={"covariance": spec, "singular": sv})
    from geomfast.store import recompute_metrics

    (li,) = recompute_metrics(db, convention="li2025", fit_range=(3, 30))
    assert li["rankme"] == pytest.approx(g["rankme"], rel=1e-12)
    assert li["alpha"] == pytest.approx(g["alpha"], rel=1e-12)
    (ga,) = recompute_metrics(db, convention="garrido2023", fit_range=(3, 30))
    assert ga["rankme"] == pytest.approx(g["rankme_garrido2023"], rel=1e-12)
    (full,) = recompute_metrics(db, convention="full", fit_range=(5, 20))
    assert full["rankme"] == pytest.approx(g["rankme_full"], rel=1e-12)
    assert full["alpha"] == pytest.approx(M.alpha_req(spec, fit_range=(5, 20)).alpha, rel=1e-12)


def test_runs_of_a_process_that_is_gone_are_interrupted(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "r.db"
    with ResultStore(db) as s:
        mine = s.start_run(OPTS, "geomfast trace")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        gone = s.start_run(OPTS, "geomfast trace")
        s.conn.execute("UPDATE runs SET pid=? WHERE id=?", (int(dead.stdout), gone))
        other = s.start_run(OPTS, "geomfast trace")
        s.conn.execute("UPDATE runs SET pid=?, host='elsewhere' WHERE id=?", (int(dead.stdout), other))
        old = s.start_run(OPTS, "geomfast trace")
        s.conn.execute("UPDATE runs SET pid=NULL WHERE id=?", (old,))
        by_id = {r["id"]: r["status"] for r in s.runs()}
        # this process's run is running; a run of another host or without a pid is not judged
        assert by_id == {mine: "running", gone: "interrupted", other: "running", old: "running"}
        s.finish_run(mine)
        s.start_run(OPTS, "geomfast trace")  # records the verdict in the database
        (st,) = s.conn.execute("SELECT status FROM runs WHERE id=?", (gone,)).fetchone()
        assert st == "interrupted"


def test_a_database_without_the_pid_column_gains_it(tmp_path):
    import sqlite3

    db = tmp_path / "r.db"
    with ResultStore(db) as s:
        s.start_run(OPTS, "geomfast trace")
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE runs DROP COLUMN pid")
    con.commit()
    con.close()
    with ResultStore(db, readonly=True) as s:  # read-only: read as it is
        assert [r["status"] for r in s.runs()] == ["running"] and "pid" not in s.runs()[0]
    with ResultStore(db) as s:
        s.start_run(OPTS, "geomfast trace")
        runs = s.runs()
        assert [r["pid"] for r in runs] == [None, os.getpid()]


# -- a database of another program is never changed ---------------------------------------------

def _sqlite_file(path, script: str) -> bytes:
    con = sqlite3.connect(path)
    con.executescript(script)
    con.commit()
    con.close()
    return open(path, "rb").read()


def _journal_mode(path) -> str:
    con = sqlite3.connect(path)
    try:
        return con.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        con.close()


def test_a_database_of_another_program_is_refused_and_left_unchanged(tmp_path):
    from geomfast.merge import merge_stores

    good = tmp_path / "good.db"
    with ResultStore(good) as s:
        s.write_result(ck(0), "last", "last", options=OPTS, metrics=metrics(),
                       spectra={"covariance": np.sort(np.random.default_rng(3).uniform(0, 1, 8))[::-1]})
    foreign = {
        # what the audit found altered: a runs table geomfast would ALTER, then crash on
        "app.db": "CREATE TABLE runs(name TEXT, score REAL); INSERT INTO runs VALUES ('alice', 3.5);",
        # a program that also keeps its schema_version in a meta(key, value) table
        "meta.db": "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL); "
                   "INSERT INTO meta VALUES ('schema_version', '1'); CREATE TABLE runs(id INTEGER);",
    }
    for name, script in foreign.items():
        path = tmp_path / name
        before = _sqlite_file(path, script)
        for open_it in (lambda: ResultStore(path), lambda: merge_stores(path, [good])):
            with pytest.raises(ValueError, match=rf"'{path}' is not a geomfast results database: "
                                                 r"it has no table .*left unchanged"):
                open_it()
            assert path.read_bytes() == before, name  # no table, column or journal mode added
            assert not os.path.exists(f"{path}-wal") and _journal_mode(path) == "delete"
        with pytest.raises(ValueError, match=rf"'{path}' is not a geomfast results database"):
            ResultStore(path, readonly=True)
        # a foreign input is refused before the output is created
        with pytest.raises(ValueError, match=rf"'{path}' is not a geomfast results database"):
            merge_stores(tmp_path / "new.db", [good, path])
        assert not (tmp_path / "new.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite " * 100)
    with pytest.raises(ValueError, match="is not a geomfast results database: file is not a database"):
        ResultStore(junk)
    assert junk.read_bytes() == b"not sqlite " * 100


def test_an_empty_file_becomes_a_store_and_an_older_one_is_upgraded(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    no_tables = tmp_path / "no_tables.db"  # e.g. left by a store killed before its schema commit
    assert _sqlite_file(no_tables, "CREATE TABLE t(x); DROP TABLE t;")
    for path in (empty, no_tables):
        with ResultStore(path) as s:
            assert s.count() == 0 and s.schema_version == 1
    # schema version 1 as first written: no pid column, no checkpoints or weights tables
    old = tmp_path / "old.db"
    with ResultStore(old) as s:
        s.start_run(OPTS, "geomfast trace")
        s.write_result(ck(1), "last", "last", options=OPTS, metrics=metrics(),
                       spectra={"covariance": [2.0, 1.0]})
    con = sqlite3.connect(old)
    con.executescript("DROP TABLE checkpoints; DROP TABLE weights; ALTER TABLE runs DROP COLUMN pid;")
    con.close()
    with ResultStore(old) as s:
        tables = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"checkpoints", "weights"} <= tables
        assert "pid" in {r[1] for r in s.conn.execute("PRAGMA table_info(runs)")}
        assert s.count() == 1 and s.done_checkpoints(options_hash(OPTS), "req") == set()


# -- reading where the folder cannot be written --------------------------------------------------

_READ_IN_A_READ_ONLY_FOLDER = r"""
import json, os, sqlite3, sys
from geomfast.store import ResultStore, export

folder, out_csv = sys.argv[1:3]
got = {"folder_writable": os.access(folder, os.W_OK)}
try:  # what a plain read-only open does there
    sqlite3.connect(f"file:{folder}/clean.db?mode=ro", uri=True).execute("SELECT 1 FROM meta").fetchone()
    got["plain_ro"] = "read"
except sqlite3.Error as e:
    got["plain_ro"] = str(e)
with ResultStore(os.path.join(folder, "clean.db"), readonly=True) as s:
    got["rows"] = [[r["layer"], r["rankme"]] for r in s.rows()]
got["exported"] = export(os.path.join(folder, "clean.db"), out_csv)
for name in ("junk.db", "pending.db"):
    try:
        ResultStore(os.path.join(folder, name), readonly=True).close()
        got[name] = "opened"
    except ValueError as e:
        got[name] = str(e)
print(json.dumps(got))
"""


def test_a_finished_database_is_read_in_a_folder_that_cannot_be_written(tmp_path):
    import json
    import shutil
    import subprocess
    import sys

    from conftest import subprocess_env, unprivileged_prefix

    # root writes anywhere: drop its capabilities (as a reader on a read-only mount would lack them)
    prefix = unprivileged_prefix()  # root writes anywhere: without its capabilities
    folder = tmp_path / "ro"
    folder.mkdir()
    with ResultStore(folder / "clean.db") as s:  # a finished run: closed, nothing left in a -wal
        for i, layer in enumerate(("embed", "last")):
            s.write_result(ck(0), layer, "last", options=OPTS, metrics=metrics(i),
                           spectra={"covariance": [3.0, 1.0]})
    (folder / "junk.db").write_bytes(b"not sqlite " * 100)
    # a copy taken while a writer had it open: committed rows only in its -wal, no -shm
    w = ResultStore(tmp_path / "live.db")
    w.write_result(ck(0), "last", "last", options=OPTS, metrics=metrics())
    shutil.copy(tmp_path / "live.db", folder / "pending.db")
    shutil.copy(tmp_path / "live.db-wal", folder / "pending.db-wal")
    w.close()
    files = sorted(os.listdir(folder))
    assert files == ["clean.db", "junk.db", "pending.db", "pending.db-wal"]
    folder.chmod(0o555)
    try:
        proc = subprocess.run([*prefix, sys.executable, "-c", _READ_IN_A_READ_ONLY_FOLDER, str(folder),
                               str(tmp_path / "out.csv")], capture_output=True, text=True,
                              env=subprocess_env(), timeout=120, cwd="/")  # (not the source tree first)
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    # the situation did occur: the reader could not write there, and plain mode=ro failed
    assert got["folder_writable"] is False
    assert "readonly" in got["plain_ro"] or "unable to open" in got["plain_ro"], got["plain_ro"]
    assert got["rows"] == [["embed", metrics(0)["rankme"]], ["last", metrics(1)["rankme"]]]
    assert got["exported"] == 2
    assert sorted(os.listdir(folder)) == files
    assert "is not a geomfast results database: file is not a database" in got["junk.db"]
    # rows only in a -wal that cannot be read there: said, and not called a foreign file
    assert "write-ahead log" in got["pending.db"] and "not a geomfast" not in got["pending.db"]


def test_closing_a_writer_leaves_every_result_in_the_database_file(tmp_path):
    import shutil

    db = tmp_path / "r.db"
    w = ResultStore(db)
    w.write_result(ck(0), "last", "last", options=OPTS, metrics=metrics())
    with ResultStore(db, readonly=True) as r:  # open: the writer's close is not the last one
        assert os.path.getsize(f"{db}-wal") > 0
        w.close()
        assert os.path.getsize(f"{db}-wal") == 0
        assert r.count() == 1
    shutil.copy(db, tmp_path / "copy.db")  # the file alone
    con = sqlite3.connect(f"file:{tmp_path / 'copy.db'}?immutable=1", uri=True)
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1
    con.close()


# -- recompute --------------------------------------------------------------------------------------

def test_recompute_gives_nan_for_a_degenerate_row_and_recomputes_the_others(tmp_path):
    import math
    import warnings

    M = pytest.importorskip("geomfast.metrics")
    from geomfast.store import recompute_metrics

    spec, sv, g = _power_law_row(200, 0.8, _seed())
    # embed pooled at the last token when every sequence ends with the same token: all zeros,
    # stored by trace as 'ok' with NaN measures and warnings
    with pytest.warns(M.SpectrumWarning):
        gz = M.geometry(np.ones((200, 40)), fit_range=(3, 30), spectrum=np.zeros(40),
                        singular_values=np.zeros(40))
    db = tmp_path / "r.db"
    with ResultStore(db) as s:
        s.write_result(ck(0), "embed", "last", options=OPTS, metrics=gz,
                       spectra={"covariance": np.zeros(40), "singular": np.zeros(40)})
        s.write_result(ck(0), "last", "last", options=OPTS, metrics=g,
                       spectra={"covariance": spec, "singular": sv})
    stored = {"li2025": "rankme", "garrido2023": "rankme_garrido2023", "full": "rankme_full"}
    for convention, column in stored.items():
        with pytest.warns(M.SpectrumWarning) as said:
            rows = recompute_metrics(db, convention=convention, fit_range=(3, 30))
        said = [str(w.message) for w in said]
        assert any(w.startswith("rankme = nan: ") and "all zeros" in w for w in said), said
        assert any(w.startswith("alpha = nan: ") for w in said), said
        by_layer = {r["layer"]: r for r in rows}
        assert sorted(by_layer) == ["embed", "last"]
        zero = by_layer["embed"]
        assert all(math.isnan(zero[k]) for k in ("rankme", "alpha", "alpha_r2", "alpha_r2_100"))
        assert any(w.startswith("rankme = nan: ") and "all zeros" in w for w in zero["warnings"])
        assert any(w.startswith("alpha = nan: ") for w in zero["warnings"])
        fine = by_layer["last"]
        assert fine["rankme"] == pytest.approx(g[column], rel=1e-12)
        assert not any("= nan" in w for w in fine["warnings"])
    assert by_layer["last"]["alpha"] == pytest.approx(M.alpha_req(spec, fit_range=(3, 30)).alpha, rel=1e-12)
    # only an undefined measure is NaN: a spectrum that is not a spectrum is still an error
    with ResultStore(db) as s:
        s.write_result(ck(1), "last", "last", options=OPTS, metrics=g,
                       spectra={"covariance": np.array([1.0, np.nan, 0.5])})
    with pytest.raises(ValueError, match="finite") as err, warnings.catch_warnings():
        warnings.simplefilter("ignore", M.SpectrumWarning)  # the all-zero row's, said above
        recompute_metrics(db)
    assert not isinstance(err.value, M.DegenerateSpectrumError)


def test_sqlite_errors_are_told_apart_by_code_and_by_message_where_the_code_is_missing(tmp_path):
    """The CLI's one-line errors rest on this: what the file system or the file did (a locked,
    foreign or unopenable database) is an environment error; a bad statement is not — read from
    ``sqlite_errorcode`` where the error has one and from its message where it does not."""
    from geomfast.store import is_environment_error

    folder = tmp_path / "adir.db"
    folder.mkdir()
    with pytest.raises(sqlite3.OperationalError) as cantopen:
        sqlite3.connect(folder).execute("SELECT 1")
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(sqlite3.DatabaseError) as notadb:
        sqlite3.connect(foreign).execute("SELECT * FROM sqlite_master")
    with pytest.raises(sqlite3.OperationalError) as syntax:
        sqlite3.connect(":memory:").execute("SELEC 1")
    assert is_environment_error(cantopen.value) and is_environment_error(notadb.value)
    assert not is_environment_error(syntax.value)
    for e in (cantopen.value, notadb.value, syntax.value):  # the same verdict from the text alone
        bare = type(e)(str(e))
        assert not hasattr(bare, "sqlite_errorcode")
        assert is_environment_error(bare) == is_environment_error(e), str(e)
    for text in ("database is locked", "disk I/O error", "attempt to write a readonly database",
                 "database or disk is full", "database disk image is malformed"):
        assert is_environment_error(sqlite3.OperationalError(text)), text
    assert not is_environment_error(sqlite3.OperationalError("no such table: results"))
