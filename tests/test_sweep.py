"""The sweep runner: resume after SIGKILL, broken checkpoints, options, prefetch, metrics."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers_models import make_checkpoint_folder, save_tiny_model, write_text_files

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import subprocess_env  # noqa: E402

STEPS = (0, 1, 2, 4, 8, 16)
LAYERS = "embed,last"
POOLINGS = "last,mean"
ROWS_PER_CKPT = 4


def _env() -> dict:
    return subprocess_env()


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    ck = make_checkpoint_folder(root / "ckpts", steps=STEPS)
    docs = write_text_files(root / "data")["txt"]
    return ck, docs


def _trace_args(ck, docs, db, n=48):
    return ["trace", "--model", str(ck), "--dataset", str(docs), "--n-samples", str(n),
            "--layers", LAYERS, "--pooling", POOLINGS, "--out", str(db), "--fit-range", "3:20",
            "--batch-size", "16", "--no-progress"]


def _rows(db) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(
            "SELECT id, model, revision, layer, pooling, status, run_id, created_at, rankme "
            "FROM results ORDER BY id").fetchall()
    finally:
        con.close()


def _ok_count(db) -> int:
    if not os.path.exists(db):
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM results WHERE status='ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # schema not created yet
        return 0


def test_resume_after_sigkill(series, tmp_path):
    ck, docs = series
    db = tmp_path / "r.db"
    args = _trace_args(ck, docs, db)
    # The first run is slowed down after each commit (0.4 s) so that the kill lands in the
    # middle of the sweep, after at least one committed result.
    slow = textwrap.dedent(f"""
        import sys, time
        import geomfast.store as st
        _orig = st.ResultStore.write_result
        def slow(self, *a, **k):
            out = _orig(self, *a, **k)
            time.sleep(0.4)
            return out
        st.ResultStore.write_result = slow
        from geomfast.cli import main
        sys.exit(main({args!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", slow], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    try:
        while _ok_count(db) < 1:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "no result committed within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _rows(db)
    total = len(STEPS) * ROWS_PER_CKPT
    assert 1 <= len(before) < total, "the kill should land mid-sweep"
    from geomfast.store import ResultStore

    with ResultStore(db, readonly=True) as store:  # the killed run is not reported as running
        assert [r["status"] for r in store.runs()] == ["interrupted"]

    # Re-run the very same command, plainly.
    out = subprocess.run([sys.executable, "-m", "geomfast", *args], env=_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    after = _rows(db)
    assert len(after) == total
    keys = [r[1:5] for r in after]
    assert len(set(keys)) == total, "duplicated results"
    assert all(r[5] == "ok" for r in after)
    # Nothing committed before the kill was lost or rewritten (same id, time and values).
    by_id = {r[0]: r for r in after}
    for r in before:
        assert by_id[r[0]] == r
    # Finished work was skipped: run 1's rows stay run 1's; run 2 wrote only the rest.
    run1 = {r[0] for r in before}
    assert all(r[6] == 1 for r in after if r[0] in run1)
    assert all(r[6] == 2 for r in after if r[0] not in run1)
    # A third run finds everything done and writes nothing.
    out = subprocess.run([sys.executable, "-m", "geomfast", *args], env=_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"{len(STEPS)} already done" in out.stdout
    assert _rows(db) == after
    with sqlite3.connect(db) as con:  # recorded as such by the next run, finished ones as finished
        assert [r[0] for r in con.execute("SELECT status FROM runs ORDER BY id")] == \
            ["interrupted", "finished", "finished"]
    # `show` says the killed run's work was completed since, not "re-run to complete"
    out = subprocess.run([sys.executable, "-m", "geomfast", "show", str(db)], env=_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "1 interrupted, since completed by a later run" in out.stdout and "re-run" not in out.stdout


def _corrupt(folder: Path) -> None:
    weights = folder / "model.safetensors"
    assert weights.exists()
    weights.write_bytes(b"\x00garbage, not a safetensors file" * 10)


def test_broken_checkpoint_is_recorded_and_sweep_goes_on(tmp_path):
    from geomfast.store import ResultStore
    from geomfast.sweep import trace

    ck = make_checkpoint_folder(tmp_path / "ckpts", steps=(0, 1, 2))
    docs = write_text_files(tmp_path / "data")["txt"]
    _corrupt(ck / "step1")
    db = tmp_path / "r.db"
    kw = dict(dataset=str(docs), out=str(db), n_samples=32, layers="last", pooling="last",
              fit_range=(3, 20), progress=False)
    s = trace(str(ck), **kw)
    assert (s.ok, s.failed) == (2, 1)
    with ResultStore(db, readonly=True) as store:
        rows = store.rows()
    err = [r for r in rows if r["status"] == "error"]
    assert len(err) == 1 and err[0]["revision"] == "step1"
    assert err[0]["error"] and "load" in err[0]["error"]
    assert sorted(r["revision"] for r in rows if r["status"] == "ok") == ["step0", "step2"]

    # A re-run retries only the failed checkpoint (still broken: one error row, not two).
    s = trace(str(ck), **kw)
    assert (s.ok, s.failed, s.skipped) == (0, 1, 2)
    with ResultStore(db, readonly=True) as store:
        assert store.count("error") == 1 and store.count("ok") == 2

    # Repaired, it is traced and its error row disappears.
    save_tiny_model(ck / "step1", seed=7)
    s = trace(str(ck), **kw)
    assert (s.ok, s.failed, s.skipped) == (1, 0, 2)
    with ResultStore(db, readonly=True) as store:
        assert store.count("error") == 0 and store.count("ok") == 3


def test_metrics_match_output_hidden_states(series, tmp_path):
    """The stored row equals geometry() of the paper's representation computed by hand."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from geomfast.data import load_samples
    from geomfast.metrics import geometry
    from geomfast.store import ResultStore
    from geomfast.sweep import trace

    ck, docs = series
    db = tmp_path / "r.db"
    trace(str(ck), dataset=str(docs), out=str(db), revisions="step4", n_samples=40,
          layers="last", pooling="last", fit_range=(3, 20), progress=False)
    src = ck / "step4"
    tok = AutoTokenizer.from_pretrained(src)
    samples = load_samples(str(docs), tok, n_samples=40)
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    with torch.no_grad():
        h = np.stack([model(torch.tensor([s]), output_hidden_states=True).hidden_states[-1][0, -1]
                      .double().numpy() for s in samples])
    ref = geometry(h, fit_range=(3, 20))
    with ResultStore(db, readonly=True) as store:
        (row,) = store.rows()
        spec = store.spectrum(row["id"])
    assert row["n"] == 40 and row["dim"] == h.shape[1]
    for k in ("rankme", "rankme_garrido2023", "rankme_full", "alpha"):
        assert row[k] == pytest.approx(ref[k], rel=1e-5), k
    hc = h - h.mean(0)
    np.testing.assert_allclose(spec, np.linalg.eigvalsh(hc.T @ hc / 39)[::-1], rtol=1e-5,
                               atol=1e-9 * spec[0])


def test_options_change_what_counts_as_done_and_layer_resume(series, tmp_path):
    from geomfast.store import ResultStore
    from geomfast.sweep import trace

    ck, docs = series
    db = tmp_path / "r.db"
    kw = dict(dataset=str(docs), out=str(db), revisions="step0,step1", layers=LAYERS,
              pooling=POOLINGS, fit_range=(3, 20), progress=False)
    assert trace(str(ck), n_samples=32, **kw).ok == 2
    # Another sample count is another configuration: traced again, stored beside.
    s = trace(str(ck), n_samples=24, **kw)
    assert (s.ok, s.skipped) == (2, 0)
    with ResultStore(db) as store:
        assert store.count("ok") == 2 * 2 * ROWS_PER_CKPT
        assert len({r["options_hash"] for r in store.rows()}) == 2
        # Lose one (layer, pooling) of step1 and its checkpoint marker: the re-run
        # writes only that one row and keeps the others as they were.
        victim = [r for r in store.rows(status="ok") if r["revision"] == "step1"
                  and r["layer"] == "embed" and r["pooling"] == "mean" and r["n"] == 24][0]
        with store.transaction():
            store.conn.execute("DELETE FROM spectra WHERE result_id=?", (victim["id"],))
            store.conn.execute("DELETE FROM results WHERE id=?", (victim["id"],))
            store.conn.execute("DELETE FROM checkpoints WHERE revision='step1' AND options_hash=?",
                               (victim["options_hash"],))
        before = {r["id"]: r for r in store.rows()}
    s = trace(str(ck), n_samples=24, **kw)
    assert (s.ok, s.skipped, s.rows_written) == (1, 1, 1)
    with ResultStore(db, readonly=True) as store:
        after = {r["id"]: r for r in store.rows()}
    assert set(before) < set(after) and len(after) == len(before) + 1
    (new,) = [after[i] for i in set(after) - set(before)]
    assert (new["revision"], new["layer"], new["pooling"]) == ("step1", "embed", "mean")
    assert new["rankme"] == pytest.approx(victim["rankme"], rel=1e-12)


def test_a_request_already_stored_loads_no_model(series, tmp_path, monkeypatch):
    """A request whose rows are all stored (here a subset of an earlier one) is done without
    loading any checkpoint (on the hub, a download each), and is marked done."""
    import geomfast.sweep as sweep_mod
    from geomfast.sweep import trace

    ck, docs = series
    db = tmp_path / "r.db"
    kw = dict(dataset=str(docs), out=str(db), revisions="step0,step1", n_samples=24, fit_range=(3, 20),
              progress=False)
    assert trace(str(ck), layers=LAYERS, pooling=POOLINGS, **kw).ok == 2

    def no_load(*a, **k):
        raise AssertionError("a checkpoint was loaded for a request already stored")

    monkeypatch.setattr(sweep_mod, "load_checkpoint", no_load)
    s = trace(str(ck), layers="last", pooling="mean", **kw)
    assert (s.ok, s.skipped, s.failed, s.rows_written) == (0, 2, 0, 0)
    # a layer that is not stored yet still runs (and needs a model)
    monkeypatch.undo()
    s = trace(str(ck), layers="0", pooling="mean", **kw)
    assert (s.ok, s.rows_written) == (2, 2)


def test_an_unusable_dataset_stops_the_sweep_with_the_reason(series, tmp_path):
    """No usable document: one clear error for the sweep (not a failed row per checkpoint)."""
    from geomfast.data import DatasetError
    from geomfast.store import ResultStore
    from geomfast.sweep import trace

    ck, _ = series
    short = tmp_path / "short.txt"  # documents, none longer than min_length tokens
    short.write_text("a b\nc d\ne f\n")
    db = tmp_path / "r.db"
    with pytest.raises(DatasetError, match="0 usable sample"):
        trace(str(ck), dataset=str(short), out=str(db), revisions="step0,step1", n_samples=8,
              min_length=20, layers="last", pooling="last", progress=False)
    with ResultStore(db, readonly=True) as store:
        assert store.count("error") == 0 and store.count("ok") == 0
    # A file with no document at all is refused before anything, database included.
    blank, db2 = tmp_path / "blank.txt", tmp_path / "r2.db"
    blank.write_text("\n   \n\n")
    with pytest.raises(DatasetError, match="holds 0 documents"):
        trace(str(ck), dataset=str(blank), out=str(db2), revisions="step0,step1", n_samples=8,
              layers="last", pooling="last", progress=False)
    assert not db2.exists()


def test_sequences_are_cut_at_the_model_context(tmp_path):
    """With no max_length, sequences are truncated to the model's trained context (16 positions
    here; the corpus has longer documents): the stored token count of 'all' pooling says so."""
    from geomfast.store import ResultStore
    from geomfast.sweep import trace

    ck = save_tiny_model(tmp_path / "short", max_positions=16)
    docs = write_text_files(tmp_path / "data")["txt"]
    db = tmp_path / "r.db"
    s = trace(str(ck), dataset=str(docs), out=str(db), n_samples=20, layers="last", pooling="all",
              fit_range=(3, 12), progress=False)
    assert s.ok == 1, s.errors
    with ResultStore(db, readonly=True) as store:
        (row,) = store.rows(status="ok")
    assert 20 < row["n"] <= 20 * 16


def test_prefetch_gives_the_same_results(series, tmp_path):
    from geomfast.store import ResultStore
    from geomfast.sweep import trace

    ck, docs = series
    out = {}
    for prefetch in (True, False):
        db = tmp_path / f"r{prefetch}.db"
        trace(str(ck), dataset=str(docs), out=str(db), revisions="step0,step2,step8",
              n_samples=32, layers="last", pooling="mean", fit_range=(3, 20), progress=False,
              prefetch=prefetch)
        with ResultStore(db, readonly=True) as store:
            out[prefetch] = [(r["revision"], r["rankme"], r["alpha"]) for r in store.rows()]
    assert out[True] == out[False] and len(out[True]) == 3


def test_preset_and_explicit_options(tmp_path):
    from geomfast.sweep import make_config

    d = tmp_path / "d.txt"
    d.write_text("one document\nanother one\n")
    cfg = make_config(model="EleutherAI/pythia-70m", dataset=str(d), out="r.db", preset="li2025")
    assert (cfg.layers, cfg.poolings, cfg.dtype, cfg.n_samples, cfg.min_length, cfg.max_length,
            cfg.fit_range) == (("last",), ("last",), "float16", 15000, 32, 512, (11, 100))
    cfg = make_config(model="m", dataset=str(d), out="r.db", preset="li2025", n_samples=100,
                      dtype="float32", layers="embed,-1", pooling=None)
    assert (cfg.n_samples, cfg.dtype, cfg.layers, cfg.poolings) == (100, "float32", ("embed", "-1"), ("last",))
    assert cfg.result_options() != make_config(model="m", dataset=str(d), out="r.db",
                                               preset="li2025").result_options()
    with pytest.raises(ValueError, match="unknown preset"):
        make_config(model="m", dataset=str(d), out="r.db", preset="nope")
    with pytest.raises(ValueError, match="dataset"):
        make_config(model="m", out="r.db")


def test_bad_trace_options_are_refused_before_any_model_loads(tmp_path, monkeypatch):
    """Each of these used to load every checkpoint and fail each one (or, for --layers all, hang
    for hours expanding 'all' against a stand-in depth of 2^20 blocks)."""
    import threading

    from geomfast.sweep import make_config

    d = tmp_path / "d.txt"
    d.write_text("a document\n")
    (tmp_path / "d.csv").write_text("text\nx\n")
    done = []
    t = threading.Thread(target=lambda: done.append(make_config(model="m", dataset=str(d), out="r.db",
                                                                layers="all,embed", pooling="last")))
    t.start()
    t.join(30)
    assert done and done[0].layers == ("all", "embed"), "make_config(layers='all') did not return"
    cases = [({"dataset": str(tmp_path / "nofile.txt")}, FileNotFoundError, "no such file"),
             ({"dataset": str(tmp_path / "d.csv")}, ValueError, r"\.txt, \.jsonl or \.parquet"),
             ({"n_samples": 0}, ValueError, "n_samples must be >= 2"),
             ({"n_samples": 1}, ValueError, "n_samples must be >= 2"),
             ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
             ({"max_length": 0}, ValueError, "max_length must be >= 1"),
             ({"fit_range": (5, 3)}, ValueError, "fit_range"),
             ({"layers": "99x"}, ValueError, "unknown layer")]
    import torch

    if not torch.cuda.is_available():
        cases.append(({"device": "cuda"}, ValueError, "needs CUDA"))
    for opts, err, msg in cases:
        kw = {"dataset": str(d), **opts}
        with pytest.raises(err, match=msg):
            make_config(model="m", out="r.db", **kw)


def test_an_out_of_range_block_index_is_refused_before_any_weights_load(series, tmp_path, monkeypatch,
                                                                        capsys):
    """--layers 5 on a 2-block model loaded every checkpoint and wrote an error row for each:
    it is refused from the first checkpoint's config, naming --layers, the valid range and the
    depth; per model (a post-training series may mix depths), one config read per training run."""
    import geomfast.sweep as sweep_mod
    from geomfast.checkpoints import resolve_checkpoints
    from geomfast.cli import main
    from geomfast.store import ResultStore
    from geomfast.sweep import make_config, trace

    ck, docs = series

    def no_load(*a, **k):
        raise AssertionError("a checkpoint was loaded for an out-of-range block index")

    reads = []
    real_config = sweep_mod._model_config

    def config(c, cfg):
        reads.append(c.source)
        return real_config(c, cfg)

    monkeypatch.setattr(sweep_mod, "load_checkpoint", no_load)
    monkeypatch.setattr(sweep_mod, "_model_config", config)
    kw = dict(dataset=str(docs), out=str(tmp_path / "r.db"), n_samples=24, progress=False)
    for layers, bad in (("5", "5"), ("embed,-3,last", "-3"), ("0,2,-1", "2")):
        with pytest.raises(ValueError, match=rf"--layers {layers}: block index {bad} is out of range for "
                                             rf"{ck.resolve()}, which has 2 blocks: expected -2\.\.1"):
            trace(str(ck), layers=layers, **kw)
    assert len(reads) == 3, reads  # one config per sweep, not one per checkpoint
    db = tmp_path / "cli.db"
    assert main(["trace", "--model", str(ck), "--dataset", str(docs), "--n-samples", "24", "--layers", "5",
                 "--out", str(db), "--no-progress"]) == 1
    assert "--layers 5: block index 5 is out of range" in capsys.readouterr().err
    assert not db.exists()  # refused before any work: no database, no run recorded
    # a database already there keeps its runs and results as they were
    monkeypatch.undo()  # (checkpoints load again)
    assert main(["trace", "--model", str(ck), "--dataset", str(docs), "--n-samples", "24", "--layers", "0",
                 "--out", str(db), "--no-progress"]) == 0
    with ResultStore(db, readonly=True) as store:
        before = (store.runs(), store.count("ok"), store.count("error"))
        assert len(before[0]) == 1 and before[1] > 0 and before[2] == 0
    assert main(["trace", "--model", str(ck), "--dataset", str(docs), "--n-samples", "24", "--layers", "0,7",
                 "--out", str(db), "--no-progress"]) == 1
    assert "--layers 0,7: block index 7 is out of range" in capsys.readouterr().err
    with ResultStore(db, readonly=True) as store:
        assert (store.runs(), store.count("ok"), store.count("error")) == before
    # a series of models of other depths: each is checked against its own
    deep = save_tiny_model(tmp_path / "deep", layers=3)
    shallow = save_tiny_model(tmp_path / "shallow", layers=2)
    with pytest.raises(ValueError, match=f"out of range for {shallow}, which has 2 blocks"):
        trace([str(deep), str(shallow)], layers="2", **kw)
    from geomfast.sweep import check_block_indices

    cfg = make_config(model=str(deep), dataset=str(docs), out="x.db", layers="2,-3")
    check_block_indices(resolve_checkpoints(str(deep)), cfg)  # in range for 3 blocks


def test_results_are_keyed_on_the_dataset_file_and_its_content(tmp_path, monkeypatch):
    """The same file typed two ways is one dataset; an edited file is another (its SHA-256 is in
    the options hash), so stale results are never taken for new ones."""
    from geomfast.store import options_hash
    from geomfast.sweep import make_config

    d = tmp_path / "docs.txt"
    d.write_text("first document\nsecond document\n")
    monkeypatch.chdir(tmp_path)
    h_rel = options_hash(make_config(model="m", dataset="docs.txt", out="r.db").result_options())
    h_abs = options_hash(make_config(model="m", dataset=str(d), out="r.db").result_options())
    assert h_rel == h_abs
    d.write_text("first document\nan edited second document\n")
    h_new = options_hash(make_config(model="m", dataset=str(d), out="r.db").result_options())
    assert h_new != h_abs


def test_checkpoint_spectra_solved_together_equal_each_alone():
    """finalize() on the batch's spectra (sweep.solve_all: geomfast.spectra + singular_values_of)
    gives the metrics finalize() computes alone; a batch that cannot run falls back to {}."""
    import geomfast
    from geomfast.sweep import TraceConfig, finalize, solve_all

    from conftest import llm_like

    rng = np.random.default_rng(int(np.random.SeedSequence().entropy % (2**63)))
    cfg = TraceConfig(models=["m"], dataset=None, out="unused.db")
    accs = {(f"layer{i}", "mean"): geomfast.GramAccumulator(520).update(llm_like(700, 520, rng))
            for i in range(3)}
    solved = solve_all(accs, cfg)
    assert set(solved) == set(accs)
    for key, acc in accs.items():
        spec, sv = solved[key]
        batch_metrics, batch_spectra = finalize(acc, cfg, spectrum=spec, singular_values=sv)
        alone_metrics, alone_spectra = finalize(acc, cfg)
        for name in ("covariance", "singular"):
            a, b = batch_spectra[name], alone_spectra[name]
            assert a.shape == b.shape and np.abs(a**2 - b**2).max() <= 1e-13 * b[0] ** 2, (key, name)
        # rel 1e-7: the raw matrix's small singular values (from Σxxᵀ, large-mean columns) sit at
        # sqrt(eps)·σ₁, so single- vs multi-threaded BLAS moves RankMe (garrido2023) by ~5e-9. The
        # condition number (λ₁/λ_min ~ 1e12 here) is left out: λ_min itself is known to ~1e-4.
        for name, v in alone_metrics.items():
            if name != "condition_number" and isinstance(v, float) and np.isfinite(v):
                assert batch_metrics[name] == pytest.approx(v, rel=1e-7, abs=1e-12), (key, name)
    assert solve_all(dict(list(accs.items())[:1]), cfg) == {}  # one accumulator: nothing to batch
    accs[("empty", "mean")] = geomfast.GramAccumulator(520)  # no rows: the batch raises
    assert solve_all(accs, cfg) == {}


def test_a_checkpoint_rewritten_in_place_is_recomputed(tmp_path, capsys):
    """A run retrained into the same step* folders: the results of a checkpoint whose weight
    files changed are removed and recomputed from the new weights; untouched checkpoints are
    skipped, and a re-run with nothing changed recomputes nothing."""
    from helpers_models import save_tiny_model

    from geomfast.store import ResultStore
    from geomfast.sweep import trace

    ck = make_checkpoint_folder(tmp_path / "ckpts", steps=(0, 1))
    docs = write_text_files(tmp_path / "data")["txt"]
    db = tmp_path / "r.db"
    kw = dict(dataset=str(docs), out=str(db), n_samples=24, layers="last", pooling="mean",
              fit_range=(3, 20), progress=False)
    assert trace(str(ck), **kw).ok == 2
    with ResultStore(db, readonly=True) as store:
        first = {r["revision"]: r for r in store.rows()}
    assert trace(str(ck), **kw).skipped == 2  # unchanged: nothing recomputed
    save_tiny_model(ck / "step1", seed=77)  # other weights, same folder
    s = trace(str(ck), **kw)
    assert (s.ok, s.skipped) == (1, 1)
    assert "weight files changed" in capsys.readouterr().err
    with ResultStore(db, readonly=True) as store:
        second = {r["revision"]: r for r in store.rows()}
    assert len(second) == 2
    assert second["step0"]["id"] == first["step0"]["id"]  # kept as it was
    assert second["step1"]["id"] != first["step1"]["id"]
    assert second["step1"]["rankme"] != pytest.approx(first["step1"]["rankme"], rel=1e-9)
    # the new row is what a fresh database gives for the new weights
    fresh = tmp_path / "fresh.db"
    trace(str(ck), **{**kw, "out": str(fresh)}, revisions="step1")
    with ResultStore(fresh, readonly=True) as store:
        (row,) = store.rows()
    assert row["rankme"] == pytest.approx(second["step1"]["rankme"], rel=1e-12)
    assert trace(str(ck), **kw).skipped == 2


def _eos_appending_tokenizer():
    import copy

    from tokenizers import processors

    from helpers_models import tiny_tokenizer

    tok = copy.deepcopy(tiny_tokenizer())
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", eos)])
    return tok


def test_truncation_keeping_an_appended_eos_has_its_own_options_hash(tmp_path, monkeypatch):
    """A tokenizer that appends EOS, with max_length: the run's options say so (``truncation``),
    so rows traced when truncation sliced the EOS off long documents never count as done for it,
    and the two kinds never mix under one hash. Without an appended token, or without
    max_length, the options hash is the one it always was."""
    from geomfast import models
    from geomfast.data import appends_special_tokens
    from geomfast.store import ResultStore, options_hash
    from geomfast.sweep import TRUNCATION_KEEPS_SPECIAL, make_config, trace

    from helpers_models import tiny_tokenizer

    eos_tok = _eos_appending_tokenizer()
    assert appends_special_tokens(eos_tok) and not appends_special_tokens(tiny_tokenizer())
    docs = write_text_files(tmp_path / "data")["txt"]
    plain = make_checkpoint_folder(tmp_path / "plain", steps=(0, 1))
    eos = make_checkpoint_folder(tmp_path / "eos", steps=(0, 1), tokenizer=eos_tok)
    kw = dict(dataset=str(docs), n_samples=24, layers="last", pooling="last", fit_range=(3, 12),
              progress=False)

    def hashes(db):
        with ResultStore(db, readonly=True) as store:
            return {r["options_hash"] for r in store.rows(status="ok")}

    def base_hash(ck, db, max_length):
        return options_hash(make_config(model=str(ck), out=str(db), max_length=max_length,
                                        **kw).result_options())

    for ck, max_length, marked in [(plain, 20, False), (eos, None, False), (eos, 20, True)]:
        db = tmp_path / f"{ck.name}-{max_length}.db"
        s = trace(str(ck), out=str(db), max_length=max_length, **kw)
        assert s.ok == 2, s.errors
        want = options_hash(make_config(model=str(ck), out=str(db), max_length=max_length, **kw)
                            .result_options() | ({"truncation": TRUNCATION_KEEPS_SPECIAL} if marked else {}))
        assert hashes(db) == {want}
        assert (want != base_hash(ck, db, max_length)) == marked

    # A database traced the old way (its rows under the options without the mark): resumed,
    # nothing of it counts as done; both kinds stay, each under its own hash.
    db = tmp_path / "old.db"
    import geomfast.sweep as sweep

    with monkeypatch.context() as m:
        m.setattr(sweep, "_truncation_matters", lambda cfg: False)  # as before the mark existed
        assert trace(str(eos), out=str(db), max_length=20, **kw).ok == 2
    s = trace(str(eos), out=str(db), max_length=20, **kw)
    assert (s.ok, s.skipped) == (2, 0)
    assert len(hashes(db)) == 2

    # A tokenizer that cannot be asked when the options are hashed, but loads later: its
    # checkpoints are refused (recorded as failures), not written under the unmarked hash.
    real, calls = models.load_tokenizer, []

    def flaky(*a, **k):
        calls.append(a)
        if len(calls) == 1:
            raise OSError("tokenizer temporarily unavailable")
        return real(*a, **k)

    monkeypatch.setattr(models, "load_tokenizer", flaky)
    s = trace(str(eos), out=str(tmp_path / "flaky.db"), max_length=20, **kw)
    assert (s.ok, s.failed) == (0, 2)
    assert all("appends special tokens" in msg for _, msg in s.errors), s.errors


@pytest.mark.parametrize("layers", ["all", "embed,last"])
def test_another_fit_range_or_eps_is_derived_from_the_stored_spectra(series, tmp_path, monkeypatch, layers):
    """Re-tracing with only another fit_range or eps writes its rows from the spectra already
    stored (no model loads), equal to what a fresh trace computes; a change of anything that
    changes the spectra (here n_samples) still runs the model. With layer names known only from
    the model ('all'), the checkpoint marker is carried over too."""
    import geomfast.sweep as sweep
    from geomfast.store import ResultStore
    from geomfast.sweep import trace

    ck, docs = series
    kw = dict(dataset=str(docs), revisions="step0,step2", n_samples=40, layers=layers,
              pooling="last,mean", progress=False)
    db = tmp_path / "r.db"
    first = trace(str(ck), out=str(db), fit_range=(3, 20), **kw)
    assert first.ok == 2, first.errors
    n_rows = first.rows_written
    with ResultStore(db, readonly=True) as store:
        (h_first,) = {r["options_hash"] for r in store.rows(status="ok")}

    real = sweep.load_checkpoint
    loads = []

    def no_model(*a, **k):
        loads.append(a[0].revision)
        return real(*a, **k)

    monkeypatch.setattr(sweep, "load_checkpoint", no_model)
    metric_cols = ("rankme", "rankme_garrido2023", "rankme_full", "alpha", "alpha_r2", "alpha_r2_100",
                   "participation_ratio", "stable_rank", "spectral_entropy", "effective_rank_roy",
                   "condition_number", "n", "dim", "warnings")

    def by_key(path, h=None):
        with ResultStore(path, readonly=True) as store:
            return {(r["revision"], r["layer"], r["pooling"]): tuple(r[c] for c in metric_cols)
                    for r in store.rows(status="ok", options_hash=h)}

    for opts in [dict(fit_range=(3, 12)), dict(fit_range=(3, 20), eps=1e-4)]:
        s = trace(str(ck), out=str(db), **{**dict(fit_range=(3, 20)), **opts}, **kw)
        assert (s.ok, s.skipped, s.derived) == (0, 2, n_rows), s
        assert loads == []
        fresh = tmp_path / f"fresh-{len(opts)}-{opts.get('eps')}.db"
        monkeypatch.setattr(sweep, "load_checkpoint", real)
        trace(str(ck), out=str(fresh), **{**dict(fit_range=(3, 20)), **opts}, **kw)
        monkeypatch.setattr(sweep, "load_checkpoint", no_model)
        with ResultStore(fresh, readonly=True) as store:
            (h,) = {r["options_hash"] for r in store.rows(status="ok")}
        want = by_key(fresh)
        assert by_key(db, h) == want and len(want) == n_rows
        assert want != by_key(db, h_first)  # recomputed under the new options, not copied
        again = trace(str(ck), out=str(db), **{**dict(fit_range=(3, 20)), **opts}, **kw)
        assert (again.ok, again.skipped, again.derived) == (0, 2, 0)
        assert loads == []

    # a narrower request derives only its own rows
    s = trace(str(ck), out=str(db), fit_range=(3, 15), **{**kw, "layers": "last", "pooling": "mean"})
    assert (s.ok, s.derived) == (0, 2) and loads == []

    s = trace(str(ck), out=str(db), fit_range=(3, 20), **{**kw, "n_samples": 30})
    assert (s.ok, s.derived) == (2, 0) and sorted(loads) == ["step0", "step2"]
