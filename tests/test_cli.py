"""The command line end to end on a local checkpoint folder: trace -> show -> export -> plot."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers_models import make_checkpoint_folder, write_text_files

REQUIRED = ["model", "revision", "step", "tokens", "layer", "pooling", "n", "dim", "rankme",
            "rankme_garrido2023", "rankme_full", "alpha", "alpha_r2", "alpha_r2_100", "status",
            "error"]


def test_end_to_end_on_a_checkpoint_folder(tmp_path, capsys):
    pytest.importorskip("transformers")
    from geomfast.cli import main

    ck = make_checkpoint_folder(tmp_path / "ckpts", steps=(0, 1, 2, 4, 8))
    docs = write_text_files(tmp_path / "data")["jsonl"]
    db = tmp_path / "results.db"
    rc = main(["trace", "--model", str(ck), "--dataset", str(docs), "--n-samples", "48",
               "--layers", "embed,0,last", "--pooling", "last", "--out", str(db),
               "--fit-range", "3:20", "--batch-size", "8", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "5 traced" in out

    assert main(["show", str(db)]) == 0
    out = capsys.readouterr().out
    for word in ("revision", "rankme", "alpha", "step0", "step8", "block0", "last", "embed"):
        assert word in out
    assert main(["show", str(db), "--all-columns"]) == 0
    assert "participation_ratio" in capsys.readouterr().out

    assert main(["export", str(db), "--format", "csv", "-o", str(tmp_path / "r.csv")]) == 0
    with open(tmp_path / "r.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 and set(REQUIRED) <= set(rows[0])
    assert {r["revision"] for r in rows} == {"step0", "step1", "step2", "step4", "step8"}
    assert sorted({int(r["step"]) for r in rows}) == [0, 1, 2, 4, 8]
    assert all(r["status"] == "ok" for r in rows)
    assert all(np.isfinite(float(r["rankme"])) for r in rows if r["layer"] != "embed")

    pq = pytest.importorskip("pyarrow.parquet")
    assert main(["export", str(db), "--format", "parquet", "-o", str(tmp_path / "r.parquet")]) == 0
    t = pq.read_table(tmp_path / "r.parquet")
    assert t.num_rows == 15 and set(REQUIRED) <= set(t.column_names)

    png = tmp_path / "plot.png"
    assert main(["plot", str(db), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    capsys.readouterr()

    # The same trace again resumes: nothing to do.
    rc = main(["trace", "--model", str(ck), "--dataset", str(docs), "--n-samples", "48",
               "--layers", "embed,0,last", "--pooling", "last", "--out", str(db),
               "--fit-range", "3:20", "--no-progress"])
    assert rc == 0 and "5 already done" in capsys.readouterr().out


def _fake_db(path):
    from geomfast.store import ResultStore

    with ResultStore(path) as s:
        for i, step in enumerate((0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)):
            ck = dict(model="org/tiny", revision=f"step{step}", step=step, order=i)
            for layer in ("embed", "block3", "last"):
                s.write_result(ck, layer, "last", options={"x": 1},
                               metrics={"rankme": 10 + np.sin(i) + len(layer), "alpha": 1 + i / 10,
                                        "n": 100, "dim": 64})
        s.write_error(dict(model="org/tiny", revision="step2000", step=2000, order=12),
                      options={"x": 1}, error="OSError: cannot load", layers=["*last"],
                      poolings=["last"])
    return path


def test_show_plot_export_without_models(tmp_path, capsys):
    from geomfast.cli import main

    db = _fake_db(tmp_path / "f.db")
    assert main(["show", str(db)]) == 0
    out = capsys.readouterr().out
    assert "org/tiny" in out and "step1000" in out and "1 error row" in out
    assert main(["show", str(db), "--errors"]) == 0
    out = capsys.readouterr().out
    assert "cannot load" in out and "36 ok, 1 error" in out  # the header counts the whole group
    pytest.importorskip("matplotlib")
    assert main(["plot", str(db), "-o", str(tmp_path / "p.png"), "--metrics", "rankme,alpha,n"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 20_000
    assert main(["export", str(db), "-o", str(tmp_path / "x.csv"), "--ok-only"]) == 0
    assert "36 row(s)" in capsys.readouterr().out
    # an output name that says no format, or a metric that is not a column: errors, no file
    assert main(["export", str(db), "-o", str(tmp_path / "x.xlsx")]) == 1
    assert "cannot tell the format" in capsys.readouterr().err and not (tmp_path / "x.xlsx").exists()
    assert main(["plot", str(db), "-o", str(tmp_path / "q.png"), "--metrics", "rankme,foo"]) == 1
    assert "unknown metric" in capsys.readouterr().err and not (tmp_path / "q.png").exists()


def test_filters_take_the_names_trace_takes(tmp_path, capsys):
    """--layer 3 / -1 find 'block3' (the deepest stored block), --model takes a folder as typed;
    a filter that matches nothing is an error listing what the database holds."""
    from geomfast.cli import main
    from geomfast.store import filter_rows, layer_key, model_key

    db = _fake_db(tmp_path / "f.db")
    for layer in ("3", "block3", "-1"):
        assert main(["phases", str(db), "--layer", layer]) == 0
        assert "layer block3" in capsys.readouterr().out
    assert main(["phases", str(db), "--layer", "7"]) == 1
    err = capsys.readouterr().err
    assert "no results for layer '7'" in err and "block3, embed, last" in err
    assert layer_key("embedding", []) == "embed" and layer_key("final", []) == "last"
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "sub").mkdir()
    assert model_key(str(tmp_path / "sub" / ".." / "run")) == str(run.resolve())
    assert model_key("org/tiny") == "org/tiny"
    assert filter_rows([], layer="x") == []


def test_plot_keeps_runs_with_other_options_apart():
    from geomfast.plot import series

    rows = [dict(model="m", layer="last", pooling="last", options_hash=h, step=s, ord=s, rankme=v)
            for h, v in (("aaa", 1.0), ("bbb", 2.0)) for s in (0, 1, 2)]
    groups = series(rows)
    assert sorted(groups) == [("m", "last", "last", "aaa"), ("m", "last", "last", "bbb")]
    assert all({r["rankme"] for r in g} in ({1.0}, {2.0}) for g in groups.values())


def test_errors_are_reported_not_raised(tmp_path, capsys):
    from geomfast.cli import main

    assert main(["show", str(tmp_path / "missing.db")]) == 1
    assert "no results database" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["trace", "--out", "x.db"])  # --model is required


def test_subcommands_are_registered(capsys):
    from geomfast import cli

    seen = {}

    def add(p):
        p.add_argument("--flag", type=int, default=3)

    def run(args):
        seen["flag"] = args.flag
        return 0

    n = len(cli.COMMANDS)
    try:
        cli.register("hello", "a test subcommand", add, run)
        cli.register("hello", "replaced, not duplicated", add, run)
        assert len(cli.COMMANDS) == n + 1
        assert cli.main(["hello", "--flag", "7"]) == 0 and seen["flag"] == 7
    finally:
        cli.COMMANDS[:] = [c for c in cli.COMMANDS if c.name != "hello"]
    names = [c.name for c in cli.COMMANDS]
    for name in ("trace", "show", "export", "plot", "demo"):
        assert name in names


def test_python_dash_m(tmp_path):
    from conftest import subprocess_env

    env = subprocess_env()
    out = subprocess.run([sys.executable, "-m", "geomfast", "--help"], capture_output=True,
                         text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and "trace" in out.stdout and "demo" in out.stdout
    out = subprocess.run([sys.executable, "-m", "geomfast", "trace", "--help"], capture_output=True,
                         text=True, env=env, timeout=120, cwd=tmp_path)
    assert "--preset" in out.stdout and "--revisions" in out.stdout


def test_demo_pipeline_runs_short(tmp_path, capsys):
    """The demo's whole pipeline on 16 training steps (the real demo trains 1400)."""
    pytest.importorskip("transformers")
    from geomfast.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "16", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "warm-up collapse" in text and "compression-seeking" in text
    for name in ("results.db", "geometry.png", "summary.txt"):
        assert (out / name).stat().st_size > 0
    steps = sorted(int(p.name[4:]) for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert steps == [0, 1, 2, 4, 8, 16]
    assert (out / "checkpoints" / "step16" / "model.safetensors").exists()
    from geomfast.store import ResultStore

    with ResultStore(out / "results.db", readonly=True) as s:
        rows = s.rows()
    assert len(rows) == 6 * 3 and all(r["status"] == "ok" for r in rows)
    assert {r["layer"] for r in rows} == {"embed", "block0", "last"}
    # again with other settings into the same folder: the earlier run's checkpoints and rows are
    # gone (they used to be reused: "7 already done", a step30 left in a 60-step run)
    assert main(["demo", "--out", str(out), "--steps", "9", "--no-progress"]) == 0
    capsys.readouterr()
    steps = sorted(int(p.name[4:]) for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert steps == [0, 1, 2, 4, 8, 9]
    with ResultStore(out / "results.db", readonly=True) as s:
        assert sorted({r["step"] for r in s.rows()}) == [0, 1, 2, 4, 8, 9]
    # a folder the demo did not write is never touched; a file is refused
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["demo", "--out", str(other), "--steps", "4", "--no-progress"]) == 1
    assert (other / "notes.txt").read_text() == "keep me" and len(list(other.iterdir())) == 1
    assert main(["demo", "--out", str(other / "notes.txt"), "--steps", "4", "--no-progress"]) == 1
    assert main(["demo", "--out", str(tmp_path / "d3"), "--steps", "-3", "--no-progress"]) == 1
    assert "steps must be >= 1" in capsys.readouterr().err


def test_outputs_never_overwrite_an_input_database(tmp_path, capsys):
    """export -o / plot -o / phases --json FILE refuse their input database, by any name (a
    symlink, a hard link), and any other SQLite database: they wrote CSV, PNG or JSON over it."""
    import json

    from geomfast.cli import main
    from geomfast.store import ResultStore

    db = _fake_db(tmp_path / "f.db")
    other = _fake_db(tmp_path / "g.db")
    (tmp_path / "link.csv").symlink_to(db)
    os.link(db, tmp_path / "hard.png")
    for argv, flag in ((["export", str(db), "-o", str(db), "--format", "csv"], "-o"),
                       (["export", str(db), "-o", str(tmp_path / "link.csv")], "-o"),
                       (["plot", str(db), "-o", str(tmp_path / "hard.png")], "-o"),
                       (["phases", str(db), "--json", str(db)], "--json")):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert f"error: {flag} " in err and "is the input database RESULTS.db" in err, err
    assert main(["export", str(db), "-o", str(other), "--format", "csv"]) == 1
    assert "is an SQLite database; refusing to overwrite it" in capsys.readouterr().err
    # --json takes an optional FILE: typed in the usage order, the database is not taken for it
    assert main(["phases", "--json", str(db)]) == 0
    assert {d["layer"] for d in json.loads(capsys.readouterr().out)} == {"embed", "block3", "last"}
    with pytest.raises(SystemExit) as e:
        main(["phases", "--json", str(other), str(db)])
    err = capsys.readouterr().err  # a user error: one line, exit status 1 (not argparse's usage and 2)
    assert e.value.code == 1 and "this is an SQLite database" in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        main(["phases", "--json"])
    assert "required: RESULTS.db" in capsys.readouterr().err
    # `--json=FILE` with no database: FILE is where the JSON goes, never read as the database
    (tmp_path / "old.json").write_text("[]\n")
    for name in ("new.json", "old.json"):
        with pytest.raises(SystemExit) as e:
            main(["phases", f"--json={tmp_path / name}"])
        err = capsys.readouterr().err
        assert e.value.code == 1 and "required: RESULTS.db" in err and "names where the JSON goes" in err, err
    assert not (tmp_path / "new.json").exists() and (tmp_path / "old.json").read_text() == "[]\n"
    # both old spellings of a JSON file still write it
    for argv in (["phases", str(db), "--json", str(tmp_path / "a.json")],
                 ["phases", "--json", str(tmp_path / "b.json"), str(db)]):
        assert main(argv) == 0 and "JSON written" in capsys.readouterr().out
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
    for path in (db, other):
        with ResultStore(path, readonly=True) as s:
            assert s.count("ok") == 36


def test_paths_a_command_cannot_use_are_one_error_line(tmp_path, capsys, monkeypatch):
    """A folder given as a file or a database, a file given as a folder, a text file given as
    trace's database: each was a raw traceback (IsADirectoryError, FileExistsError,
    sqlite3.OperationalError / DatabaseError); now one error line naming the argument and the
    path, exit 1, and trace refuses before any model loads."""
    import geomfast.sweep as sweep_mod
    from geomfast.cli import main

    db = _fake_db(tmp_path / "f.db")
    folder = tmp_path / "adir.db"
    folder.mkdir()
    text = tmp_path / "docs.txt"
    text.write_text("one document\nanother document\n")

    def no_load(*a, **k):
        raise AssertionError("a checkpoint was loaded for a trace whose --out is unusable")

    monkeypatch.setattr(sweep_mod, "load_checkpoint", no_load)
    trace = ["trace", "--model", str(tmp_path / "no-model"), "--dataset", str(text), "--no-progress"]
    cases = [(["show", str(folder)], "RESULTS.db", folder, "is a folder"),
             (["export", str(db), "-o", str(folder)], "-o", folder, "is a folder"),
             (["plot", str(db), "-o", str(text / "x.png")], "-o", text / "x.png", "is a file, not a folder"),
             (["export", str(db), "-o", str(text / "sub" / "x.csv")], "-o", text / "sub" / "x.csv",
              "is a file, not a folder"),
             (["phases", str(db), "--json", str(folder)], "--json", folder, "is a folder"),
             ([*trace, "--out", str(folder)], "[trace] out", folder, "is a folder"),
             ([*trace, "--out", str(text)], "[trace] out", text, "not an SQLite database"),
             (["merge", str(folder), str(db)], "OUT.db", folder, "is a folder"),
             (["merge", str(text / "m.db"), str(db)], "OUT.db", text / "m.db", "is a file, not a folder"),
             (["merge", str(tmp_path / "m.db"), str(folder)], "IN.db", folder, "is a folder")]
    for argv, flag, path, what in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"geomfast {argv[0]}: error: {flag} {path}: ") and what in err, (argv, err)
        assert "Traceback" not in err and err.count("\n") == 1, err
    assert text.read_text() == "one document\nanother document\n"


def test_sqlite_errors_of_the_file_system_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys):
    """What the checks before a command cannot see (a folder made unwritable meanwhile …) is
    still one line naming the databases; a bad SQL statement is a bug and still raises."""
    import sqlite3

    from geomfast import cli

    folder = tmp_path / "adir.db"
    folder.mkdir()

    def add(p):
        p.add_argument("db")
        p.add_argument("--sql", default="SELECT 1")

    def run(args):
        sqlite3.connect(args.db).execute(args.sql)
        return 0

    cli.register("sqltest", "a test subcommand", add, run,
                 paths=(cli.PathArg("db", "DB", "input", check=False),))
    try:
        assert cli.main(["sqltest", str(folder)]) == 1
        assert capsys.readouterr().err == (f"geomfast sqltest: error: SQLite ({folder}): "
                                           "unable to open database file\n")
        with pytest.raises(sqlite3.OperationalError, match="syntax error"):
            cli.main(["sqltest", str(tmp_path / "x.db"), "--sql", "SELEC 1"])
    finally:
        cli.COMMANDS[:] = [c for c in cli.COMMANDS if c.name != "sqltest"]


def test_folders_without_write_permission_are_one_error_line(tmp_path):
    """plot, export, phases --json, trace, merge and demo into a folder the user may not write
    in (PermissionError / sqlite3.OperationalError tracebacks): one line naming the path. Root
    writes anywhere, so as root the commands run without CAP_DAC_OVERRIDE (setpriv)."""
    import textwrap

    from conftest import subprocess_env, unprivileged_prefix

    prefix = unprivileged_prefix()  # root writes anywhere: without its capabilities
    db = _fake_db(tmp_path / "f.db")
    text = tmp_path / "docs.txt"
    text.write_text("one document\nanother document\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    script = textwrap.dedent(f"""
        import contextlib, io, json
        from geomfast.cli import main
        out = []
        for argv in {[["plot", str(db), "-o", str(ro / "p.png")],
                      ["export", str(db), "-o", str(ro / "p.csv")],
                      ["phases", str(db), "--json", str(ro / "sub" / "p.json")],
                      ["trace", "--model", str(tmp_path / "no-model"), "--dataset", str(text),
                       "--out", str(ro / "t.db"), "--no-progress"],
                      ["merge", str(ro / "m.db"), str(db)],
                      ["demo", "--out", str(ro / "demo"), "--steps", "2", "--no-progress"]]!r}:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = main(argv)
            out.append((argv[0], rc, err.getvalue()))
        print(json.dumps(out))
    """)
    try:
        res = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True,
                             env=subprocess_env(), timeout=300, cwd=tmp_path)
    finally:
        ro.chmod(0o755)
    assert res.returncode == 0, res.stderr
    import json

    results = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r[0] for r in results] == ["plot", "export", "phases", "trace", "merge", "demo"]
    for cmd, rc, err in results:
        assert rc == 1 and err.startswith(f"geomfast {cmd}: error: "), (cmd, err)
        assert f"cannot create files in the folder {ro} (permission denied)" in err, (cmd, err)
        assert "Traceback" not in err, err
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("argv", [["export", "{db}", "-o", "/dev/stdout", "--format", "csv"],
                                  ["phases", "{db}", "--json", "/dev/stdout"]])
def test_outputs_to_dev_stdout_and_pipes_still_work(tmp_path, argv):
    """The output checks read a file's first bytes to tell a SQLite database; reading /dev/stdout
    (a pipe here) waited for ever. Non-regular files are never taken for databases."""
    import subprocess
    import sys

    from conftest import subprocess_env

    db = _fake_db(tmp_path / "f.db")
    run = subprocess.run([sys.executable, "-m", "geomfast", *[a.format(db=db) for a in argv]],
                         capture_output=True, text=True, env=subprocess_env(), cwd="/", timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip(), "nothing written to stdout"


# ----------------------------------------------------------------------------- refused up front

def _cli(argv, capsys):
    """(exit status, stdout, stderr) of `geomfast ARGV` in-process; a parser error's SystemExit
    counts as its status."""
    from geomfast.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def _assert_one_error_line(rc, err, command, *needles):
    assert rc == 1, (rc, err)
    assert err.startswith(f"geomfast {command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "usage:" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture
def no_model_loads(monkeypatch):
    """trace may resolve checkpoints and read configs, but never load a checkpoint."""
    import geomfast.sweep as sweep_mod

    def no_load(*a, **k):
        raise AssertionError("a checkpoint was loaded for a trace that should have been refused")

    monkeypatch.setattr(sweep_mod, "load_checkpoint", no_load)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("ckpts")
    return make_checkpoint_folder(root / "run", steps=(0, 1)), write_text_files(root / "data")


def test_an_unusable_dataset_is_one_error_before_any_model_loads(two_checkpoints, tmp_path, capsys,
                                                                no_model_loads):
    """A dataset that fails alike for every checkpoint was one '[load] ValueError' row per checkpoint
    (exit 2), or, for a parquet of integers, traced silently: now one error line, exit 1, before any
    model loads or any run is recorded."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    ck, _ = two_checkpoints
    (tmp_path / "notext.jsonl").write_text('{"body": "a document"}\n{"body": "another"}\n')
    (tmp_path / "badjson.jsonl").write_text('{"text": "a document"}\n{not json\n')
    (tmp_path / "numbers.jsonl").write_text('{"text": "a document"}\n{"text": 17}\n')
    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "nocol.parquet")
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "ints.parquet")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\nsecond\n".encode("latin-1"))
    (tmp_path / "folder.jsonl").mkdir()
    cases = [("notext.jsonl", "notext.jsonl:1 has no field 'text'"),
             ("badjson.jsonl", "badjson.jsonl:2 is not valid JSON"),
             ("numbers.jsonl", "numbers.jsonl:2: field 'text' must be a string, got int"),
             ("nocol.parquet", "has no column 'text'; columns: ['body']"),
             ("ints.parquet", "column 'text' must hold strings, got int64"),
             ("latin1.txt", "is not UTF-8 text"),
             ("folder.jsonl", "is a folder, expected a local .txt, .jsonl or .parquet file"),
             ("org/some-dataset", "is not a local file, and a hub dataset is streamed from the Hugging Face hub")]
    for name, needle in cases:
        spec = name if "/" in name else str(tmp_path / name)
        db = tmp_path / f"{name.replace('/', '_')}.db"
        rc, out, err = _cli(["trace", "--model", str(ck), "--dataset", spec, "--n-samples", "8",
                             "--out", str(db), "--no-progress"], capsys)
        _assert_one_error_line(rc, err, "trace", "[trace] dataset", needle)
        assert out == "" and not db.exists(), name  # no run, no row


def test_the_same_valid_dataset_keeps_its_samples_and_options_hash(two_checkpoints):
    """The up-front check reads the file only: a valid file's options (hash) and documents are
    those the loader gives."""
    from geomfast.data import load_texts
    from geomfast.store import options_hash
    from geomfast.sweep import make_config

    _, files = two_checkpoints
    for kind, path in files.items():
        cfg = make_config(model="m", dataset=str(path), out="r.db")
        opts = cfg.result_options()
        assert set(opts) == {"dataset_sha256", "dataset", "n_samples", "seed", "min_length", "max_length",
                             "dtype", "precision", "preset", "fit_range", "eps", "spectrum_method"}, kind
        assert opts["dataset"] == str(path.resolve()) and options_hash(opts) == options_hash(
            make_config(model="m", dataset=str(path), out="r.db").result_options())
        assert load_texts(str(path)) == load_texts(str(files["txt"])), kind


@pytest.mark.parametrize("extra, needle", [
    (["--device", "tpu"], "argument --device: expected cpu, cuda or cuda:N (N a device index), got 'tpu'"),
    (["--device", "cuda:abc"], "argument --device: expected cpu, cuda or cuda:N (N a device index), got 'cuda:abc'"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    (["--revisions", ","], "--revisions ',': expected a comma list of revision names or steps, got ',', "
                           "whose items 1, 2 (of 2) are empty"),
    (["--revisions", " "], "--revisions ' ': expected a selection"),
    (["--revisions", "step0,,"], "whose items 2, 3 (of 3) are empty"),
    (["--device-map", "{bad json"], "argument --device-map: expected auto, balanced, sequential or a JSON "
                                    "object (module -> device), got '{bad json', which is not valid JSON"),
    (["--fit-range", "-1:5"], "argument --fit-range: expected START:STOP, 0-based indices with 0 <= START"),
    (["--fit-range", "5:6"], "got '5:6'"),
    (["--stage-start", "1=5"], "argument --stage-start: '1=5': stage_starts: expected a stage number >= 2"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_trace_options_are_one_error_line_naming_the_flag(two_checkpoints, tmp_path, capsys,
                                                             no_model_loads, extra, needle):
    """Each was a per-checkpoint '[load]' error row, a trace of 0 checkpoints with exit 0, a bare
    JSON error, argparse's 'expected one argument', or the usage block with exit 2."""
    ck, files = two_checkpoints
    db = tmp_path / "r.db"
    rc, out, err = _cli(["trace", "--model", str(ck), "--dataset", str(files["txt"]), "--n-samples", "8",
                         "--out", str(db), "--no-progress", *extra], capsys)
    command = "trace" if extra != ["--no-such-flag"] else ""  # (the top-level parser's error)
    if command:
        _assert_one_error_line(rc, err, command, needle)
    else:
        assert rc == 1 and err == f"geomfast: error: {needle}\n", err
    assert not db.exists()


def test_negative_values_reach_the_option_and_parse_errors_exit_1(two_checkpoints, tmp_path, capsys):
    """A value starting with '-' other than a plain number (--layers -1,-2) was taken for an
    option; parser errors (a missing --dataset, no command) are one line, exit 1."""
    ck, files = two_checkpoints
    db = tmp_path / "r.db"
    rc, out, err = _cli(["trace", "--model", str(ck), "--revisions", "step1", "--dataset", str(files["txt"]),
                         "--n-samples", "8", "--layers", "-1,-2", "--out", str(db), "--no-progress"], capsys)
    assert rc == 0 and "1 traced" in out, err
    from geomfast.store import ResultStore

    with ResultStore(db, readonly=True) as s:
        assert sorted(r["layer"] for r in s.rows(status="ok")) == ["block0", "block1"]
    rc, _, err = _cli(["trace", "--model", str(ck), "--out", str(db)], capsys)
    _assert_one_error_line(rc, err, "trace", "the following arguments are required: --dataset")
    rc, _, err = _cli([], capsys)
    assert rc == 1 and err == "geomfast: error: the following arguments are required: COMMAND\n", err
    with pytest.raises(SystemExit) as e:  # --help still prints the usage and exits 0
        from geomfast.cli import main

        main(["trace", "--help"])
    assert e.value.code == 0 and "usage: geomfast trace" in capsys.readouterr().out


def test_a_file_given_as_model_or_a_folder_given_as_dataset_says_so(two_checkpoints, tmp_path, capsys):
    ck, files = two_checkpoints
    folder = tmp_path / "corpus"
    folder.mkdir()
    for model in (str(files["txt"]), os.path.relpath(files["txt"])):
        rc, _, err = _cli(["trace", "--model", model, "--dataset", str(files["txt"]),
                           "--out", str(tmp_path / "r.db"), "--no-progress"], capsys)
        _assert_one_error_line(rc, err, "trace", f"model {model!r} is a file, not a folder")
    rc, _, err = _cli(["trace", "--model", str(ck), "--model", str(files["jsonl"]), "--dataset", str(files["txt"]),
                       "--out", str(tmp_path / "r.db"), "--no-progress"], capsys)
    _assert_one_error_line(rc, err, "trace", "is a file, not a folder")
    rc, _, err = _cli(["trace", "--model", str(ck), "--dataset", str(folder), "--out", str(tmp_path / "r.db"),
                       "--no-progress"], capsys)
    _assert_one_error_line(rc, err, "trace", f"dataset {str(folder)!r} is a folder, expected a local .txt")


@pytest.mark.skipif(not os.path.isfile("/proc/self/status"), reason="needs Linux's /proc")
def test_outputs_where_no_file_can_be_made_name_the_argument(tmp_path, capsys):
    """/proc passes the permission check as root, then failed half-way with a bare
    "[Errno 2] No such file or directory: '/proc/nonexist'"; a file or folder is now made and
    removed there first, and the error names the argument."""
    db = _fake_db(tmp_path / "f.db")
    cases = [(["export", str(db), "-o", "/proc/x.csv"], "-o /proc/x.csv: cannot create files in the folder /proc"),
             (["plot", str(db), "-o", "/proc/x.png"], "-o /proc/x.png: cannot create files in the folder /proc"),
             (["phases", str(db), "--json", "/proc/x.json"], "--json /proc/x.json: cannot create files in the folder /proc"),
             (["export", str(db), "-o", "/proc/nonexist/x.csv"], "-o /proc/nonexist/x.csv: cannot create "),
             (["trace", "--model", str(tmp_path), "--dataset", "synthetic", "--out", "/proc/nonexist/x.db"],
              "[trace] out /proc/nonexist/x.db: cannot create ")]
    for argv, needle in cases:
        rc, out, err = _cli(argv, capsys)
        _assert_one_error_line(rc, err, argv[0], needle)
    # a folder that can be made is made by the command, not left behind by the check
    assert _cli(["export", str(db), "-o", str(tmp_path / "new" / "deep" / "x.csv")], capsys)[0] == 0
    assert (tmp_path / "new" / "deep" / "x.csv").is_file()
    assert not [p for p in tmp_path.rglob(".geomfast-probe-*")]


def test_warnings_are_one_line_on_the_command_line_and_python_s_own_in_the_library(capsys):
    import warnings

    from geomfast import cli

    def add(p):
        pass

    def run(args):
        warnings.warn("[warntest] first line\n  and its second", UserWarning)
        return 0

    cli.register("warntest", "a test subcommand", add, run)
    before = warnings.showwarning
    try:
        rc, out, err = _cli(["warntest"], capsys)
    finally:
        cli.COMMANDS[:] = [c for c in cli.COMMANDS if c.name != "warntest"]
    assert rc == 0 and err == "geomfast warntest: warning: [warntest] first line and its second\n", err
    assert warnings.showwarning is before  # library use keeps Python's warnings
    with pytest.warns(UserWarning, match="first line"):
        run(None)


def test_a_dataset_warning_of_the_trace_is_one_line(two_checkpoints, tmp_path, capsys):
    """--max-length past the model's context: the warning was printed with sweep.py's path, line
    number and source line."""
    ck, files = two_checkpoints
    rc, out, err = _cli(["trace", "--model", str(ck), "--revisions", "step0", "--dataset", str(files["txt"]),
                         "--n-samples", "8", "--max-length", "100000", "--out", str(tmp_path / "r.db"),
                         "--no-progress"], capsys)
    assert rc == 0, err
    assert err == ("geomfast trace: warning: [trace] max_length 100000 is past "
                   f"{ck.resolve()}'s context of 256 tokens: sequences are truncated to 256\n"), err


def test_trace_help_says_what_is_required_and_the_defaults():
    from geomfast.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    text = " ".join(sub.choices["trace"].format_help().split())
    assert "--dataset D [--n-samples N]" in text  # required: not in brackets in the usage
    assert "--dataset D required (no preset sets it)" in text
    assert "--n-samples N documents to trace" in text and "(default 1000; li2025: 15000)" in text
    assert "--batch-size B sequences per forward pass" in text and "(default 32)" in text
    assert "--seed SEED seed (>= 0)" in text and "(default 0)" in text
