"""trace --shard I/N: independent jobs (a SLURM array) each trace an interleaved share of the
checkpoints into their own database; merged, the shards hold exactly what one trace writes."""
from __future__ import annotations

import sqlite3

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers_models import make_checkpoint_folder, write_text_files  # noqa: E402

STEPS = (0, 1, 2, 4, 8, 16, 32)


@pytest.mark.parametrize("text, want", [("0/1", (0, 1)), ("2/4", (2, 4)), (" 3/4 ", (3, 4)), ((1, 3), (1, 3))])
def test_shard_spellings(text, want):
    from geomfast.sweep import parse_shard

    assert parse_shard(text) == want


@pytest.mark.parametrize("text, needle", [
    ("4/4", "expected N >= 1 and 0 <= I < N (shards count from 0: the last of N is N-1/N)"),
    ("-1/4", "shard -1/4: expected N >= 1 and 0 <= I < N"),
    ("0/0", "shard 0/0: expected N >= 1"),
    ("a/b", "shard must be 'I/N' (the I-th of N shards, from 0), got 'a/b'"),
    ("1", "shard must be 'I/N'"),
    ((True, 2), "shard must be 'I/N'"),
    ((0.5, 2), "shard must be 'I/N'"),
])
def test_bad_shards_are_refused_naming_the_option(text, needle):
    from geomfast.sweep import parse_shard

    with pytest.raises(ValueError) as e:
        parse_shard(text)
    assert str(e.value).startswith("[trace] shard") and needle in str(e.value), str(e.value)


def _rows(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return sorted(con.execute("SELECT model, revision, layer, pooling, options_hash, status, rankme, alpha "
                                  "FROM results").fetchall())
    finally:
        con.close()


def test_shards_merged_equal_one_trace(tmp_path):
    from geomfast.merge import merge_stores
    from geomfast.sweep import trace

    ck = make_checkpoint_folder(tmp_path / "ckpts", steps=STEPS)
    docs = write_text_files(tmp_path / "data")["txt"]
    kw = dict(dataset=str(docs), n_samples=24, layers="0,last", pooling="last,mean", fit_range=(3, 20),
              progress=False)
    whole = trace(str(ck), out=str(tmp_path / "whole.db"), **kw)
    assert whole.ok == len(STEPS)
    parts = []
    for i in range(3):
        s = trace(str(ck), out=str(tmp_path / f"part{i}.db"), shard=f"{i}/3", **kw)
        assert (s.checkpoints, s.ok, s.failed) == (len(STEPS[i::3]), len(STEPS[i::3]), 0)
        got = {r[1] for r in _rows(tmp_path / f"part{i}.db")}
        assert got == {f"step{st}" for st in STEPS[i::3]}  # interleaved: step0, step4, step32 …
        parts.append(tmp_path / f"part{i}.db")
    merge_stores(tmp_path / "merged.db", parts)
    assert _rows(tmp_path / "merged.db") == _rows(tmp_path / "whole.db")
    # the merged shards count as the whole request done: an unsharded trace there does nothing
    resumed = trace(str(ck), out=str(tmp_path / "merged.db"), **kw)
    assert (resumed.ok, resumed.skipped, resumed.failed) == (0, len(STEPS), 0)
    # a shard re-run resumes its own share only: nothing left to do
    again = trace(str(ck), out=str(tmp_path / "part1.db"), shard=(1, 3), **kw)
    assert (again.ok, again.skipped) == (0, len(STEPS[1::3]))
    # the run records which share it traced (a shard's finished run never stands for the whole)
    con = sqlite3.connect(tmp_path / "part1.db")
    try:
        assert all('"shard": [1, 3]' in o for (o,) in con.execute("SELECT options FROM runs"))
    finally:
        con.close()


def test_an_empty_shard_warns_and_writes_nothing(tmp_path):
    from geomfast.sweep import trace

    ck = make_checkpoint_folder(tmp_path / "ckpts", steps=(0, 1))
    docs = write_text_files(tmp_path / "data")["txt"]
    with pytest.warns(UserWarning, match=r"shard 3/4 holds no checkpoint: the request resolves to 2"):
        s = trace(str(ck), dataset=str(docs), out=str(tmp_path / "r.db"), n_samples=16, fit_range=(3, 20),
                  progress=False, shard="3/4")
    assert (s.checkpoints, s.ok, s.failed) == (0, 0, 0)
    assert _rows(tmp_path / "r.db") == []


def test_cli_shard_is_checked_by_the_parser(tmp_path, capsys):
    from geomfast.cli import main

    with pytest.raises(SystemExit) as e:
        main(["trace", "--model", "m", "--dataset", "synthetic", "--out", str(tmp_path / "r.db"), "--shard", "4/4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1
    assert "--shard" in err[0] and "the last of N is N-1/N" in err[0], err
    assert not (tmp_path / "r.db").exists()
