"""`geomfast merge`: the runs it copies keep their true outcome, and an interrupted run whose
work a later run completed (in the same input or another) is told apart from one whose work
is missing."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from geomfast.merge import completed_by, merge_stores
from geomfast.store import ResultStore

from conftest import subprocess_env


def _options(out, **kw) -> dict:
    """A run's options as trace records them: the whole TraceConfig and the result options hash."""
    from geomfast.sweep import TraceConfig

    cfg = TraceConfig(models=("org/tiny",), dataset="synthetic", out=str(out), **kw)
    return {**dataclasses.asdict(cfg), "options_hash": "h1"}


def _write(store, step, run_id=None):
    store.write_result(dict(model="org/tiny", revision=f"step{step}", step=step, order=step), "last",
                       "last", options={"x": 1}, run_id=run_id,
                       metrics={"rankme": 1.0 + step, "alpha": 1.0, "n": 10, "dim": 4})


def _killed_run(db, options, steps=(0,)) -> None:
    """A run that wrote some results and was killed (SIGKILL: no finish_run), in a child
    process that is gone when this returns, so its 'running' reads as interrupted."""
    code = (
        "import json, os, sys\n"
        "from geomfast.store import ResultStore\n"
        "s = ResultStore(sys.argv[1])\n"
        "rid = s.start_run(json.loads(sys.argv[2]), 'geomfast trace --model org/tiny')\n"
        "for step in json.loads(sys.argv[3]):\n"
        "    s.write_result(dict(model='org/tiny', revision=f'step{step}', step=step, order=step), 'last',\n"
        "                   'last', options={'x': 1}, run_id=rid,\n"
        "                   metrics={'rankme': 1.0 + step, 'alpha': 1.0, 'n': 10, 'dim': 4})\n"
        "os._exit(0)\n")
    import json

    subprocess.run([sys.executable, "-c", code, str(db), json.dumps(options), json.dumps(list(steps))],
                   check=True, env=subprocess_env(), cwd=os.path.dirname(os.fspath(db)))  # (not the source tree)


def _statuses(db) -> list[str]:
    with ResultStore(db, readonly=True) as s:
        return [r["status"] for r in s.runs()]


def test_a_run_merged_while_running_takes_the_outcome_it_had_since(tmp_path, capsys):
    """Merged mid-run, merged again once it ended: the copy ends as the run did (it stayed
    'running' for ever, or read 'interrupted' — 're-run to complete' — once its process was
    gone). Merging again after that changes nothing."""
    a, m = tmp_path / "a.db", tmp_path / "m.db"
    with ResultStore(a) as s:
        rid = s.start_run(_options(a), "geomfast trace --model org/tiny")
        _write(s, 0, rid)
    assert merge_stores(m, [a]).runs == 1
    assert _statuses(m) == ["running"]  # this process: still running
    with ResultStore(a) as s:
        _write(s, 1, rid)
        s.finish_run(rid)
        finished_at = s.runs()[0]["finished_at"]
    summary = merge_stores(m, [a])
    assert (summary.runs, summary.inserted, summary.runs_updated) == (0, 1, 1)
    assert "1 run(s) ended since an earlier merge updated" in str(summary)
    with ResultStore(m, readonly=True) as s:
        (run,) = s.runs()
        assert (run["status"], run["finished_at"]) == ("finished", finished_at)
    again = merge_stores(m, [a])
    assert (again.runs, again.inserted, again.runs_updated) == (0, 0, 0)

    from geomfast.cli import main

    capsys.readouterr()
    assert main(["show", str(m)]) == 0
    assert "interrupted" not in capsys.readouterr().out


def test_a_killed_then_resumed_run_merged_before_and_after_the_resume(tmp_path):
    """Killed, merged (the copy reads interrupted: its process is gone), resumed to the end,
    merged again: the merged database holds both runs as they ended, the killed one
    'interrupted' — what happened — and completed_by names the resume as having finished its
    work, as it does in the input itself."""
    a, m = tmp_path / "a.db", tmp_path / "m.db"
    _killed_run(a, _options(a), steps=(0, 1))
    merge_stores(m, [a])
    assert _statuses(m) == ["interrupted"]
    with ResultStore(m, readonly=True) as s:
        assert completed_by(s.runs()) == {1: None}  # its work is missing: re-run to complete
    with ResultStore(a) as s:
        rid = s.start_run(_options(a), "geomfast trace --model org/tiny")  # records the kill
        _write(s, 2, rid)
        s.finish_run(rid)
        assert completed_by(s.runs()) == {1: rid}
    merge_stores(m, [a])
    with ResultStore(m, readonly=True) as s:
        runs = s.runs()
        assert [r["status"] for r in runs] == ["interrupted", "finished"]
        assert completed_by(runs) == {runs[0]["id"]: runs[1]["id"]}
        assert len(s.rows(status="ok")) == 3
    with ResultStore(m) as s:  # the next run in the merged database keeps that record as it is
        s.finish_run(s.start_run(_options(m), "geomfast trace --model org/tiny"))
    assert _statuses(m) == ["interrupted", "finished", "finished"]


def test_work_completed_in_another_input_counts_as_completed(tmp_path):
    """Killed on one machine (a.db), the same trace run to the end on another (b.db, another
    -o, device and batch size): merged, the kill's work is done — merged in either order."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    _killed_run(a, _options(a), steps=(0,))
    with ResultStore(b) as s:
        rid = s.start_run(_options(b, device="cuda", batch_size=8), "geomfast trace --model org/tiny")
        for step in (0, 1, 2):
            _write(s, step, rid)
        s.finish_run(rid)
    for order in ([a, b], [b, a]):
        m = tmp_path / f"m{order[0].stem}.db"
        merge_stores(m, order)
        with ResultStore(m, readonly=True) as s:
            runs = {r["command"] + r["status"]: r["id"] for r in s.runs()}
            killed = runs["geomfast trace --model org/tinyinterrupted"]
            done = runs["geomfast trace --model org/tinyfinished"]
            assert completed_by(s.runs()) == {killed: done}
            assert len(s.rows(status="ok")) == 3


def test_only_a_later_finished_run_of_the_same_work_completes_an_interrupted_one(tmp_path):
    """Other layers, other result options, another revision list, a run still going, one that
    failed, one started before the kill, or options that cannot be read: the work may still be
    missing (None)."""
    a = tmp_path / "a.db"
    base = _options(a)
    runs = [dict(id=1, status="finished", started_at=5.0, options=_json(base))]  # before the kill
    runs.append(dict(id=2, status="interrupted", started_at=10.0, options=_json(base)))
    others = [
        _options(a, layers=("last", "embed")),
        _options(a, poolings=("mean",)),
        _options(a, revisions="step0..step8"),
        _options(a, n_samples=50),
        {**base, "options_hash": "h2"},
    ]
    for i, o in enumerate(others):
        runs.append(dict(id=10 + i, status="finished", started_at=20.0 + i, options=_json(o)))
    runs.append(dict(id=30, status="running", started_at=30.0, options=_json(base)))
    runs.append(dict(id=31, status="failed", started_at=31.0, options=_json(base)))
    runs.append(dict(id=40, status="interrupted", started_at=40.0, options="not json"))
    runs.append(dict(id=41, status="finished", started_at=41.0, options="not json"))
    assert completed_by(runs) == {2: None, 40: None}
    # the same work, finished later: that one (the first of several)
    runs += [dict(id=51, status="finished", started_at=51.0, options=_json({**base, "progress": False})),
             dict(id=50, status="finished", started_at=50.0, options=_json({**base, "out": "elsewhere.db"}))]
    assert completed_by(runs) == {2: 50, 40: None}


def _json(d) -> str:
    import json

    return json.dumps(d, sort_keys=True, default=str)
