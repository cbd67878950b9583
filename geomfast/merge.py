"""``geomfast merge OUT.db IN.db [IN.db …]``: combine results databases of the same schema.

For stores written by separate jobs (other machines, other GPUs without a common process
group, a sweep split by hand). Rows are copied with their spectra; the results' UNIQUE key
(model, revision, layer, pooling, options_hash) decides what is already there:

- a key absent from OUT is inserted;
- an ``'ok'`` row in OUT is kept (the incoming one is skipped);
- an ``'error'`` row in OUT is replaced by an incoming ``'ok'`` row (a retry that succeeded),
  and an incoming ``'ok'`` row clears OUT's checkpoint-level error rows, as a trace would
  (both counted as replaced);
- an incoming checkpoint-level error row (layer ``'*…'``) is skipped where OUT already holds an
  ``'ok'`` row of that checkpoint: a failure since traced is stale.

Runs are copied once (a run already copied is recognised by its command, options, host and
start time) and the run ids of the copied rows follow them; a run copied while it was still
``'running'`` takes the status and end time the input has since recorded (``'finished'``,
``'failed'``, ``'interrupted'``), so a merge made mid-run and repeated later does not keep it
running, or report it interrupted once its process is gone. Checkpoint markers are added if
absent. Each input is merged in one transaction, so merging is atomic per input and
idempotent: merging the same input again changes nothing.

A run's status is what happened to it: an interrupted run stays ``'interrupted'`` after a
later run completed its work (here or in another input). :func:`completed_by` tells the two
apart, for reports that advise re-running.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from ._paths import same_file
from .store import ResultStore

__all__ = ["MergeSummary", "completed_by", "merge_stores", "register_cli"]

_RUN_IDENTITY = ("command", "options", "options_hash", "version", "host", "started_at")
# What a run records when it ends (a copy made while it ran lacks them until merged again).
_RUN_OUTCOME = ("status", "finished_at")

# Options of a trace run that do not change which results it writes, or under which options
# hash: where (``out``: a resume elsewhere, then merged, is the same work), on what hardware and
# how fast, with what progress output. Everything else in a run's options must match for a
# later run to have done its work.
_NOT_WORK = frozenset({"out", "device", "device_map", "accumulate_on", "batch_size", "progress", "prefetch",
                       "parallel", "world_size"})


def _work(run: Mapping) -> str | None:
    """The work a run was asked for, canonical (its options less :data:`_NOT_WORK`); None when
    its options are not a JSON object (nothing can be said to have redone it)."""
    try:
        opts = json.loads(run.get("options") or "")
    except (TypeError, ValueError):
        return None
    if not isinstance(opts, dict) or not opts:
        return None
    return json.dumps({k: v for k, v in opts.items() if k not in _NOT_WORK}, sort_keys=True, default=str)


def completed_by(runs: Iterable[Mapping]) -> dict[int, int | None]:
    """For each interrupted run of ``runs`` (``ResultStore.runs()``: statuses as judged there,
    a dead process's ``'running'`` included), the id of a run started after it that asked for
    the same work (the same models, revisions, layers, poolings and result options; see
    :data:`_NOT_WORK` for what may differ) and finished, or None where there is none: work of
    that run may still be missing, and re-running its command completes it.

    A finished trace leaves every checkpoint of its request done or recorded as an error
    (``show --errors``), whatever an earlier run of that request had written; a run started
    before the interrupted one proves nothing (results may have been removed since, e.g. for
    rewritten weights). Runs whose options cannot be read are never judged completed."""
    runs = list(runs)
    out: dict[int, int | None] = {}
    for r in runs:
        if r.get("status") != "interrupted":
            continue
        work = _work(r)
        later = [o for o in runs if o.get("status") == "finished" and work is not None
                 and (o.get("started_at") or 0) > (r.get("started_at") or 0) and _work(o) == work]
        out[int(r["id"])] = int(min(later, key=lambda o: o["started_at"])["id"]) if later else None
    return out


@dataclass
class MergeSummary:
    out: str
    inputs: int = 0
    inserted: int = 0
    replaced: int = 0
    skipped: int = 0
    runs: int = 0
    checkpoints: int = 0
    runs_updated: int = 0  # runs copied earlier while running, that have ended since

    def __str__(self) -> str:
        updated = f", {self.runs_updated} run(s) ended since an earlier merge updated" if self.runs_updated else ""
        return (f"{self.inputs} database(s) merged into {self.out}: {self.inserted} row(s) added, "
                f"{self.replaced} error row(s) replaced, {self.skipped} already there; "
                f"{self.runs} run(s) and {self.checkpoints} checkpoint marker(s) added{updated}")


def _columns(conn, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def merge_stores(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> MergeSummary:
    """Merge every database of ``inputs`` into ``out`` (created if needed). See the module doc."""
    out = os.fspath(out)
    summary = MergeSummary(out=out)
    inputs = [os.fspath(p) for p in inputs]
    for p in inputs:
        if not os.path.exists(p):
            raise FileNotFoundError(f"[merge] no results database at {p!r}")
        if os.path.exists(out) and same_file(p, out):
            raise ValueError(f"[merge] {p!r} is the output database itself")
    for p in inputs:  # every input is a geomfast database before OUT is created or changed
        ResultStore(p, readonly=True).close()
    with ResultStore(out) as dst:  # refuses an OUT of another program, changing nothing
        for p in inputs:
            with ResultStore(p, readonly=True) as src:
                if src.schema_version != dst.schema_version:
                    raise ValueError(f"[merge] {p!r} has schema version {src.schema_version}, "
                                     f"{out!r} has {dst.schema_version}")
                _merge_one(src.conn, dst, summary)
            summary.inputs += 1
    return summary


def _merge_one(src, dst: ResultStore, summary: MergeSummary) -> None:
    conn = dst.conn
    run_cols = [c for c in _columns(src, "runs") if c != "id" and c in _columns(conn, "runs")]
    res_cols = [c for c in _columns(src, "results") if c not in ("id", "run_id")
                and c in _columns(conn, "results")]
    ck_cols = [c for c in _columns(src, "checkpoints") if c in _columns(conn, "checkpoints")]
    with dst.transaction():
        # Runs: copy each once; map the input's run ids to the output's.
        run_map: dict = {}
        for r in src.execute(f"SELECT id, {', '.join(run_cols)} FROM runs ORDER BY id"):
            ident = [c for c in _RUN_IDENTITY if c in run_cols]
            cond = " AND ".join(f"{c} IS ?" for c in ident)
            old = conn.execute(f"SELECT id, status FROM runs WHERE {cond}", [r[c] for c in ident]).fetchone()
            if old is not None:
                run_map[r["id"]] = old[0]
                outcome = [c for c in _RUN_OUTCOME if c in run_cols]
                if "status" in outcome and old["status"] == "running" and r["status"] != "running":
                    # copied while it ran: it has ended since (the input's record is the newer)
                    conn.execute(f"UPDATE runs SET {', '.join(f'{c}=?' for c in outcome)} WHERE id=?",
                                 [*(r[c] for c in outcome), old[0]])
                    summary.runs_updated += 1
                continue
            cur = conn.execute(f"INSERT INTO runs({', '.join(run_cols)}) VALUES "
                               f"({', '.join('?' * len(run_cols))})", [r[c] for c in run_cols])
            run_map[r["id"]] = int(cur.lastrowid)
            summary.runs += 1
        # Results and their spectra.
        for r in src.execute(f"SELECT id, run_id, {', '.join(res_cols)} FROM results ORDER BY id"):
            key = (r["model"], r["revision"], r["layer"], r["pooling"], r["options_hash"])
            if r["status"] != "ok" and str(r["layer"]).startswith("*") and conn.execute(
                    "SELECT 1 FROM results WHERE model=? AND revision=? AND options_hash=? AND status='ok' "
                    "LIMIT 1", (key[0], key[1], key[4])).fetchone() is not None:
                summary.skipped += 1  # a checkpoint-level failure OUT has since traced: stale
                continue
            old = conn.execute("SELECT id, status FROM results WHERE model=? AND revision=? AND "
                               "layer=? AND pooling=? AND options_hash=?", key).fetchone()
            if old is not None:
                if old["status"] == "ok" or r["status"] != "ok":
                    summary.skipped += 1
                    continue
                dst._delete_result(old["id"])
                summary.replaced += 1
            else:
                summary.inserted += 1
            cols = ["run_id", *res_cols]
            vals = [run_map.get(r["run_id"]), *[r[c] for c in res_cols]]
            cur = conn.execute(f"INSERT INTO results({', '.join(cols)}) VALUES "
                               f"({', '.join('?' * len(cols))})", vals)
            rid = int(cur.lastrowid)
            for s in src.execute("SELECT kind, length, data FROM spectra WHERE result_id=?",
                                 (r["id"],)):
                conn.execute("INSERT INTO spectra(result_id, kind, length, data) VALUES (?, ?, ?, ?)",
                             (rid, s["kind"], s["length"], s["data"]))
            if r["status"] == "ok":
                cur = conn.execute("DELETE FROM results WHERE model=? AND revision=? AND options_hash=? "
                                   "AND status='error' AND layer LIKE '*%'",
                                   (key[0], key[1], key[4]))
                summary.replaced += max(cur.rowcount, 0)
        # The weights local checkpoints' results were computed from (the output's record wins).
        if _columns(src, "weights"):
            for r in src.execute("SELECT model, revision, fingerprint, recorded_at FROM weights"):
                conn.execute("INSERT OR IGNORE INTO weights(model, revision, fingerprint, recorded_at) "
                             "VALUES (?, ?, ?, ?)", tuple(r))
        # Checkpoint markers (all their rows came along above, or were already there).
        for r in src.execute(f"SELECT {', '.join(ck_cols)} FROM checkpoints"):
            vals = {c: r[c] for c in ck_cols}
            if "run_id" in vals:
                vals["run_id"] = run_map.get(vals["run_id"])
            cur = conn.execute(f"INSERT OR IGNORE INTO checkpoints({', '.join(vals)}) VALUES "
                               f"({', '.join('?' * len(vals))})", list(vals.values()))
            summary.checkpoints += cur.rowcount > 0


# ----------------------------------------------------------------------------- CLI

def _add_merge(p) -> None:
    p.add_argument("out", metavar="OUT.db", help="the database to merge into (created if needed)")
    p.add_argument("inputs", nargs="+", metavar="IN.db", help="databases to merge from")


def _run_merge(args) -> int:
    summary = merge_stores(args.out, args.inputs)
    print(summary)
    return 0


def register_cli(register) -> None:
    from .cli import PathArg

    # merge refuses an input that is OUT.db itself
    register("merge", "merge results databases (e.g. from separate machines) into one; "
                      "idempotent", _add_merge, _run_merge,
             paths=(PathArg("out", "OUT.db", "database"), PathArg("inputs", "IN.db", "input")))
