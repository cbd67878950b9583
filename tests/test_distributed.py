"""Scale-out on torch.distributed (gloo, 2 processes on the CPU): the all_reduce of Gram states,
data- and checkpoint-parallel ``geomfast trace`` under torchrun against one process, resume
after a rank dies, and ``geomfast merge``.

The tiny models run with batch size 1 so that a sample's activations do not depend on which
other samples share its batch (float32 forward passes round differently with other padding);
what is left between 1 and 2 processes is then the float64 accumulation alone.
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers_models import make_checkpoint_folder, write_text_files

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is needed", allow_module_level=True)

from conftest import subprocess_env  # noqa: E402

STEPS = (0, 1, 2)
TIMEOUT = 180
# Functions of the smallest eigenvalues, which near the float64 rounding floor (a rank-deficient
# 'last' pooling) amplify its errors: compared through λ_min/λ_max there.
ILL_CONDITIONED = ("condition_number", "alpha_r2_100")
FROM_SINGULAR = ("rankme_garrido2023", "effective_rank_roy")


def _env() -> dict:
    return subprocess_env()


def _torchrun(args, cwd, *, script=None, check=True) -> subprocess.CompletedProcess:
    target = [str(script)] if script is not None else ["-m", "geomfast"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *target, *args]
    out = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A 3-checkpoint folder, a text file, and the single-process reference database."""
    from geomfast.sweep import trace

    root = tmp_path_factory.mktemp("dist")
    ck = make_checkpoint_folder(root / "ckpts", steps=STEPS)
    docs = write_text_files(root / "data")["txt"]
    ref = root / "ref.db"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s = trace(str(ck), **_kwargs(docs, ref))
    finally:
        torch.set_num_threads(threads)
    assert s.ok == len(STEPS)
    return ck, docs, ref


def _kwargs(docs, db) -> dict:
    return dict(dataset=str(docs), out=str(db), n_samples=40, layers="embed,last",
                pooling="last,mean", fit_range=(3, 20), batch_size=1, progress=False)


def _cli_args(ck, docs, db) -> list[str]:
    return ["trace", "--model", str(ck), "--dataset", str(docs), "--n-samples", "40",
            "--layers", "embed,last", "--pooling", "last,mean", "--fit-range", "3:20",
            "--batch-size", "1", "--out", str(db), "--no-progress"]


def _table(db) -> dict:
    """{(model, revision, layer, pooling, options_hash): (row, covariance spectrum)}."""
    from geomfast.store import ResultStore

    with ResultStore(db, readonly=True) as store:
        out = {}
        for r in store.rows():
            key = (r["model"], r["revision"], r["layer"], r["pooling"], r["options_hash"])
            assert key not in out, f"duplicate {key}"
            out[key] = (r, store.spectrum(r["id"]), store.spectrum(r["id"], "singular"))
        return out


def _assert_same_results(db, ref, *, exact=False) -> None:
    from geomfast.store import METRIC_COLUMNS

    got, want = _table(db), _table(ref)
    assert set(got) == set(want)
    for key, (r, spec, _) in got.items():
        w, wspec, wsv = want[key]
        assert r["status"] == w["status"] == "ok", key
        assert (r["n"], r["dim"]) == (w["n"], w["dim"]), key
        if exact:
            np.testing.assert_array_equal(spec, wspec)
        else:  # float64 state: spectra within 1e-12 of the largest eigenvalue
            np.testing.assert_allclose(spec, wspec, rtol=0, atol=1e-12 * max(wspec[0], 1e-300),
                                       err_msg=str(key))
        for c in METRIC_COLUMNS:
            if w[c] is None or r[c] is None:
                assert w[c] is r[c] is None, (key, c)
            elif exact:
                assert r[c] == w[c], (key, c)
            elif c in ILL_CONDITIONED and wspec[-1] < 1e-6 * wspec[0]:
                # λ_min near the rounding floor: λ_min/λ_max agrees to 1e-12 (checked on the
                # spectrum); its inverse and the log-fit through it do not (skipped).
                if c == "condition_number":
                    assert 1 / r[c] == pytest.approx(1 / w[c], rel=0, abs=1e-12), (key, c)
            elif c in FROM_SINGULAR and wsv[-1] < 1e-6 * wsv[0]:
                # σ from the raw Gram's eigenvalues: below ≈1e-8·σ₁ they are rounding noise
                # (geomfast.GramAccumulator.singular_values), which moves the entropy by ~σ/σ₁.
                assert r[c] == pytest.approx(w[c], rel=1e-6), (key, c)
            else:
                assert r[c] == pytest.approx(w[c], rel=1e-10, abs=1e-12), (key, c)


def _ids(db) -> dict:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {tuple(r[1:]): r[0] for r in con.execute(
            "SELECT id, revision, layer, pooling, created_at FROM results")}
    finally:
        con.close()


# ----------------------------------------------------------------------------- all_reduce helper

_WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def work(rank, world, init, data, out):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
        from geomfast import GramAccumulator
        from geomfast.distributed import all_reduce_accumulators

        z = np.load(data)
        for mode in ("all", "dst"):
            accs = {}
            # Rank r takes every other chunk, starting at its own: each rank's first chunk,
            # hence its shift, differs. Key ('b', ...) has rows on rank 1 only; ('c', ...) has
            # another dim. Keys are inserted in a different order on each rank.
            for name in (("a", "b", "c") if rank == 0 else ("c", "b", "a")):
                x = z[name]
                acc = accs[(name, "p")] = GramAccumulator(x.shape[1])
                bounds = z[name + "_bounds"]
                for i in range(rank, len(bounds) - 1, world):
                    if name == "b" and rank == 0:
                        continue
                    acc.update(x[bounds[i]:bounds[i + 1]])
            all_reduce_accumulators(accs, dst=0 if mode == "dst" else None)
            if mode == "all" or rank == 0:
                save = {}
                for (name, _), acc in accs.items():
                    st = acc.state_dict()
                    save[name + "_count"] = np.array(st["count"])
                    save[name + "_cov"] = acc.covariance()
                    save[name + "_mean"] = acc.mean()
                np.savez(f"{out}/{mode}{rank}.npz", **save)
        dist.barrier()
        dist.destroy_process_group()

    if __name__ == "__main__":
        init, data, out = sys.argv[1:4]
        mp.spawn(work, args=(2, init, data, out), nprocs=2, join=True)
""")


def test_all_reduce_equals_one_accumulation(tmp_path):
    from conftest import llm_like

    from geomfast import GramAccumulator

    rng = np.random.default_rng(7)
    data = {}
    for name, (n, d) in {"a": (500, 48), "b": (300, 48), "c": (200, 7)}.items():
        data[name] = llm_like(n, d, rng)
        cuts = np.sort(rng.choice(np.arange(1, n), size=9, replace=False))
        data[name + "_bounds"] = np.concatenate([[0], cuts, [n]])
    np.savez(tmp_path / "data.npz", **data)
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    init = f"file://{tmp_path / 'rendezvous'}"
    out = subprocess.run([sys.executable, str(script), init, str(tmp_path / "data.npz"),
                          str(tmp_path)], env=_env(), capture_output=True, text=True,
                         timeout=TIMEOUT, cwd=tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    for name in ("a", "b", "c"):
        x, bounds = data[name], data[name + "_bounds"]
        if name == "b":  # rank 1's chunks only
            x = np.concatenate([x[bounds[i]:bounds[i + 1]] for i in range(1, len(bounds) - 1, 2)])
        ref = GramAccumulator(x.shape[1]).update(x)
        cov, mean = ref.covariance(), ref.mean()
        for f in ("all0", "all1", "dst0"):
            z = np.load(tmp_path / f"{f}.npz")
            assert int(z[name + "_count"]) == ref.count, (f, name)
            err = np.linalg.norm(z[name + "_cov"] - cov) / np.linalg.norm(cov)
            assert err <= 1e-12, (f, name, err)
            np.testing.assert_allclose(z[name + "_mean"], mean, rtol=1e-14, atol=0)


# ----------------------------------------------------------------------------- trace under torchrun

def test_data_parallel_matches_one_process_and_resumes(series, tmp_path):
    ck, docs, ref = series
    db = tmp_path / "data.db"
    out = _torchrun([*_cli_args(ck, docs, db), "--parallel", "data", "--device-map", "auto"],
                    tmp_path)
    assert "3 traced" in out.stdout and out.stdout.count("checkpoint(s):") == 1  # rank 0 prints
    _assert_same_results(db, ref)
    assert not list(tmp_path.glob("data.db.rank*")), "only rank 0 opens the store"
    from geomfast.store import ResultStore

    with ResultStore(db, readonly=True) as store:
        (run,) = store.runs()
    assert '"device_map": "auto"' in run["options"] and '"world_size": 2' in run["options"]
    before = _ids(db)
    # Re-running (data-parallel is the default under torchrun) finds everything done.
    out = _torchrun(_cli_args(ck, docs, db), tmp_path)
    assert "3 already done" in out.stdout and "0 row(s) written" in out.stdout
    assert _ids(db) == before


_DIE = textwrap.dedent("""
    # Rank 1 dies (as a crashed process does: no cleanup) on its way into the second round.
    import os, sys
    import geomfast.distributed as D

    if os.environ.get("RANK") == "1":
        _gather, _calls = D._gather_object, [0]

        def gather(obj, dst=0):
            _calls[0] += 1
            if _calls[0] == 2:
                os._exit(17)
            return _gather(obj, dst)

        D._gather_object = gather
    from geomfast.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_checkpoint_parallel_rank_death_then_resume(series, tmp_path):
    ck, docs, ref = series
    db = tmp_path / "ckpt.db"
    script = tmp_path / "die.py"
    script.write_text(_DIE)
    out = _torchrun([*_cli_args(ck, docs, db), "--parallel", "checkpoint"], tmp_path,
                    script=script, check=False)
    assert out.returncode != 0, "the job should fail when a rank dies"
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # Round 1 (step0 on rank 0, step1 on rank 1) was committed, whole; round 2 was not.
        revs = sorted(r[0] for r in con.execute("SELECT revision FROM results"))
        assert revs == ["step0"] * 4 + ["step1"] * 4
        assert con.execute("SELECT COUNT(*) FROM results r WHERE NOT EXISTS (SELECT 1 FROM "
                           "spectra s WHERE s.result_id = r.id)").fetchone()[0] == 0
    finally:
        con.close()
    before = _ids(db)
    out = _torchrun([*_cli_args(ck, docs, db), "--parallel", "checkpoint"], tmp_path)
    assert "2 already done" in out.stdout and "1 traced" in out.stdout
    after = _ids(db)
    assert set(before.items()) <= set(after.items()) and len(after) == len(before) + 4
    # Each checkpoint is traced whole on one rank, as one process would: the same numbers
    # (up to the eigensolver's thread count: the reference ran in this process).
    _assert_same_results(db, ref)


# ----------------------------------------------------------------------------- merge

def _fake_store(path, rows) -> None:
    from geomfast.store import ResultStore

    opts = {"dataset": "x", "n_samples": 3}
    with ResultStore(path) as store:
        run = store.start_run(opts, ["geomfast", "trace", str(path)])
        for rev, layer, status, value in rows:
            ck = {"model": "m", "revision": rev, "step": int(rev[4:]), "order": int(rev[4:])}
            spectra = {"covariance": np.array([value, value / 2])} if status == "ok" else None
            store.write_result(ck, layer, "last", options=opts, status=status,
                               metrics={"rankme": value} if status == "ok" else None,
                               spectra=spectra, error=None if status == "ok" else "boom",
                               run_id=run)
        store.mark_checkpoint_done("m", "step0", "h", "r", run)
        store.finish_run(run)


def test_merge_is_idempotent_and_prefers_ok_rows(series, tmp_path):
    from geomfast.cli import main
    from geomfast.merge import merge_stores
    from geomfast.store import ResultStore

    a, b, out = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "out.db"
    _fake_store(a, [("step0", "last", "ok", 1.0), ("step1", "last", "error", 0.0)])
    _fake_store(b, [("step1", "last", "ok", 2.0), ("step2", "last", "ok", 3.0),
                    ("step0", "last", "ok", 9.0)])
    s = merge_stores(out, [a, b])
    assert (s.inserted, s.replaced, s.skipped, s.runs) == (3, 1, 1, 2)
    with ResultStore(out, readonly=True) as store:
        rows = store.rows()
        got = {r["revision"]: (r["status"], r["rankme"], store.spectrum(r["id"])[0]) for r in rows}
        assert got == {"step0": ("ok", 1.0, 1.0), "step1": ("ok", 2.0, 2.0),
                       "step2": ("ok", 3.0, 3.0)}
        assert len(store.runs()) == 2 and store.done_checkpoints("h", "r") == {("m", "step0")}
        assert {r["run_id"] for r in rows} == {1, 2}
    snapshot = _table(out)
    # Merging again, in any order and through the CLI, changes nothing.
    assert main(["merge", str(out), str(b), str(a)]) == 0
    assert _table(out).keys() == snapshot.keys()
    with ResultStore(out, readonly=True) as store:
        assert store.count() == 3 and len(store.runs()) == 2
    with pytest.raises(ValueError, match="output database itself"):
        merge_stores(out, [out])
    # Real trace databases: the reference merged into an empty store is the reference.
    ck, docs, ref = series
    m = tmp_path / "m.db"
    assert merge_stores(m, [ref]).inserted == 3 * 4
    _assert_same_results(m, ref, exact=True)
    assert merge_stores(m, [ref]).skipped == 3 * 4
    _assert_same_results(m, ref, exact=True)


def test_merge_skips_checkpoint_failures_that_were_since_traced(tmp_path):
    """A checkpoint-level error row ('*' layer: the model did not load) coming in where OUT holds
    that checkpoint's results is stale, and skipped; coming the other way, the ok rows clear it
    (and the summary counts it as replaced)."""
    from geomfast.merge import merge_stores
    from geomfast.store import ResultStore

    ok, failed = tmp_path / "ok.db", tmp_path / "failed.db"
    _fake_store(ok, [("step0", "last", "ok", 1.0), ("step4", "last", "ok", 4.0)])
    _fake_store(failed, [("step0", "last", "ok", 1.0), ("step4", "*last", "error", 0.0)])
    out1, out2 = tmp_path / "o1.db", tmp_path / "o2.db"
    merge_stores(out1, [ok])
    s = merge_stores(out1, [failed])
    assert (s.inserted, s.replaced, s.skipped) == (0, 0, 2)
    merge_stores(out2, [failed])
    s = merge_stores(out2, [ok])
    assert (s.inserted, s.replaced, s.skipped) == (1, 1, 1)
    for out in (out1, out2):
        with ResultStore(out, readonly=True) as store:
            assert store.count("error") == 0 and store.count("ok") == 2


def test_parallel_flag_is_checked_and_single_process_ignores_it(series, tmp_path):
    from geomfast.distributed import wants_distributed
    from geomfast.sweep import trace

    with pytest.raises(ValueError, match="parallel"):
        wants_distributed("pipeline")
    assert not wants_distributed("checkpoint")  # one process: a plain sweep
    ck, docs, ref = series
    db = tmp_path / "one.db"
    kw = _kwargs(docs, db)
    kw.update(revisions="step1", parallel="checkpoint", device_map="auto")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference
    try:
        assert trace(str(ck), **kw).ok == 1
    finally:
        torch.set_num_threads(threads)
    got = _table(db)
    want = {k: v for k, v in _table(ref).items() if k[1] == "step1"}
    assert got.keys() == want.keys()
    for k in got:
        np.testing.assert_array_equal(got[k][1], want[k][1])
        np.testing.assert_array_equal(got[k][2], want[k][2])


def test_data_parallel_broken_checkpoint_is_recorded(tmp_path):
    """A checkpoint that fails to load on the ranks is one error row; no rank hangs."""
    ck = make_checkpoint_folder(tmp_path / "ckpts", steps=(0, 1))
    (ck / "step1" / "model.safetensors").write_bytes(b"\x00not safetensors" * 8)
    docs = write_text_files(tmp_path / "data")["txt"]
    db = tmp_path / "b.db"
    args = ["trace", "--model", str(ck), "--dataset", str(docs), "--n-samples", "16",
            "--layers", "last", "--pooling", "last", "--fit-range", "3:10", "--out", str(db),
            "--no-progress"]
    out = _torchrun(args, tmp_path, check=False)
    assert "1 traced" in out.stdout and "1 failed" in out.stdout, out.stdout + out.stderr[-3000:]
    con = sqlite3.connect(db)
    try:
        rows = sorted(con.execute("SELECT revision, status, error FROM results"))
    finally:
        con.close()
    assert [r[:2] for r in rows] == [("step0", "ok"), ("step1", "error")]
    assert rows[1][2].startswith("[load]")
