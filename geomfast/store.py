"""The results store: an embedded SQLite database (WAL) holding one row per
model × checkpoint (revision) × layer × pooling × options, plus the spectra behind it.

Why SQLite: a single file, no server, transactions that survive a SIGKILL (a committed
transaction is in the write-ahead log before ``commit`` returns), readers that do not block
the writer (WAL), and a UNIQUE constraint that makes "nothing is duplicated" a property of
the schema rather than of the code that writes it.

Layout (schema version 1)
-------------------------
- ``meta(key, value)``: ``schema_version``, ``created_by``.
- ``runs``: one row per ``geomfast trace`` invocation (command line, options as JSON,
  options hash, start/finish times, status).
- ``results``: one row per (model, revision, layer, pooling, options_hash), UNIQUE. Columns:
  checkpoint identity (model, revision, source, hub_revision, step, tokens, ord), layer,
  pooling, n, dim, every metric of :func:`geomfast.metrics.geometry`, warnings (JSON list),
  options (JSON), timings (load_s, extract_s, metrics_s), status ``'ok'``/``'error'`` and
  error text.
- ``checkpoints(model, revision, options_hash, request)``: checkpoints whose every requested
  (layer, pooling) is written, so a re-run skips them without loading the model.
- ``spectra(result_id, kind, length, data)``: ``kind`` is ``'covariance'`` (covariance
  eigenvalues, descending) or ``'singular'`` (singular values of the raw, uncentered matrix,
  descending); ``data`` is float64 little-endian bytes (never pickle).

The covariance eigenvalues and singular values are everything the metrics need, so every
metric can be recomputed under any convention from the store alone: see
:func:`recompute_metrics`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sqlite3
import sys
import time
import urllib.parse
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "METRIC_COLUMNS",
    "EXPORT_COLUMNS",
    "ResultStore",
    "options_hash",
    "encode_spectrum",
    "decode_spectrum",
    "recompute_metrics",
    "export",
]

SCHEMA_VERSION = 1

# Every float metric of geometry(), in the order they are stored and exported.
METRIC_COLUMNS: tuple[str, ...] = (
    "rankme",
    "rankme_garrido2023",
    "rankme_full",
    "alpha",
    "alpha_r2",
    "alpha_r2_100",
    "participation_ratio",
    "stable_rank",
    "spectral_entropy",
    "effective_rank_roy",
    "condition_number",
)

EXPORT_COLUMNS: tuple[str, ...] = (
    "model", "revision", "step", "tokens", "layer", "pooling", "n", "dim",
    *METRIC_COLUMNS,
    "status", "error", "warnings", "options_hash", "load_s", "extract_s", "metrics_s",
    "source", "hub_revision", "ord", "run_id", "created_at",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    command      TEXT,
    options      TEXT NOT NULL,
    options_hash TEXT NOT NULL,
    version      TEXT,
    host         TEXT,
    started_at   REAL NOT NULL,
    finished_at  REAL,
    status       TEXT NOT NULL DEFAULT 'running',
    pid          INTEGER
);
CREATE TABLE IF NOT EXISTS results (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       INTEGER REFERENCES runs(id),
    model        TEXT NOT NULL,
    revision     TEXT NOT NULL,
    source       TEXT,
    hub_revision TEXT,
    step         INTEGER,
    tokens       INTEGER,
    ord          INTEGER,
    layer        TEXT NOT NULL,
    pooling      TEXT NOT NULL,
    options_hash TEXT NOT NULL,
    options      TEXT,
    status       TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error        TEXT,
    n            INTEGER,
    dim          INTEGER,
    {", ".join(f"{c} REAL" for c in METRIC_COLUMNS)},
    warnings     TEXT,
    load_s       REAL,
    extract_s    REAL,
    metrics_s    REAL,
    created_at   REAL NOT NULL,
    UNIQUE (model, revision, layer, pooling, options_hash)
);
CREATE INDEX IF NOT EXISTS results_by_step ON results (model, options_hash, step);
CREATE TABLE IF NOT EXISTS checkpoints (
    model        TEXT NOT NULL,
    revision     TEXT NOT NULL,
    options_hash TEXT NOT NULL,
    request      TEXT NOT NULL,
    run_id       INTEGER,
    finished_at  REAL NOT NULL,
    PRIMARY KEY (model, revision, options_hash, request)
);
CREATE TABLE IF NOT EXISTS weights (
    model        TEXT NOT NULL,
    revision     TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    recorded_at  REAL NOT NULL,
    PRIMARY KEY (model, revision)
);
CREATE TABLE IF NOT EXISTS spectra (
    result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    kind      TEXT NOT NULL,
    length    INTEGER NOT NULL,
    data      BLOB NOT NULL,
    PRIMARY KEY (result_id, kind)
);
"""


# Tables every geomfast results database has had since schema version 1 (later ones are added in
# place): a database without them belongs to another program.
_CORE_TABLES = ("meta", "runs", "results", "spectra")

# SQLite primary result codes (an error's extended code & 0xFF) and, for Pythons whose errors
# lack ``sqlite_errorcode``, the words of each code's message.
_SQLITE_ERROR, _SQLITE_READONLY, _SQLITE_CORRUPT, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 1, 8, 11, 14, 26
_SQLITE_MESSAGES = (("not a database", _SQLITE_NOTADB), ("malformed", _SQLITE_CORRUPT),
                    ("readonly", _SQLITE_READONLY), ("unable to open", _SQLITE_CANTOPEN),
                    ("access permission denied", 3), ("database is locked", 5),
                    ("table is locked", 6), ("out of memory", 7), ("disk i/o error", 10),
                    ("disk is full", 13))
# The codes for what the file system or the file did, not geomfast's SQL: PERM, BUSY, LOCKED,
# NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB. (SQLITE_ERROR, a bad statement or a
# missing table, is a bug.)
_SQLITE_ENVIRONMENT_CODES = frozenset({3, 5, 6, 7, 8, 10, 11, 13, 14, 26})


def _sqlite_code(e: sqlite3.Error) -> int:
    """The extended result code of an sqlite3 error (Python >= 3.11), else read from its text."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return int(code)
    text = str(e).lower()
    for needle, c in _SQLITE_MESSAGES:
        if needle in text:
            return c
    return _SQLITE_ERROR


def is_environment_error(e: sqlite3.Error) -> bool:
    """Whether an sqlite3 error comes from the file system or the file (permissions, locks, a full
    disk, a corrupt or foreign file) rather than from a statement of ours."""
    return _sqlite_code(e) & 0xFF in _SQLITE_ENVIRONMENT_CODES


def options_hash(options: Mapping[str, Any]) -> str:
    """A short stable hash of the options that change results (dataset, sample count, seed,
    lengths, dtype, precision, preset, metric options …). Two runs with the same hash produce
    comparable rows; a different hash never counts as done."""
    blob = json.dumps(dict(options), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode_spectrum(values) -> bytes:
    """1-D array -> float64 little-endian bytes."""
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.float64).ravel(), dtype="<f8")
    return arr.tobytes()


def decode_spectrum(blob: bytes) -> np.ndarray:
    """float64 little-endian bytes -> 1-D float64 numpy array (a writable copy)."""
    return np.frombuffer(blob, dtype="<f8").astype(np.float64, copy=True)


def _float_or_none(v) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else (None if np.isnan(f) else f)


def _run_process_gone(host, pid) -> bool:
    """True when a run recorded by process `pid` on `host` is this host's and that process no
    longer exists. Runs of other hosts, or without a pid (older databases), are not judged."""
    if pid is None or host != os.uname().nodename:
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: someone else's live process (or unknowable)
        return False
    return False


class ResultStore:
    """One SQLite results database.

    ``ResultStore(path)`` creates the file and schema if needed; an existing database must be
    a geomfast results database (one of an older schema is upgraded in place) or hold no
    tables, and anything else is refused unchanged (ValueError). The connection runs in
    autocommit mode; every write goes through an explicit ``BEGIN IMMEDIATE … COMMIT``
    so a result row and its spectra land together or not at all; ``close`` checkpoints the
    write-ahead log into the database file.

    ``readonly=True`` changes nothing, and reads a finished database in a folder it cannot
    write, too (see :meth:`_connect_readonly`).
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = 60.0, readonly: bool = False):
        self.path = os.fspath(path)
        self.readonly = readonly
        if readonly:
            if not os.path.exists(self.path):
                raise FileNotFoundError(f"[ResultStore] no results database at {self.path!r}")
            self.conn = self._connect_readonly(timeout)
        else:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                        check_same_thread=False)
        try:
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self.conn.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                # Before anything is written (schema, WAL mode): an existing database must be
                # geomfast's (older schemas are upgraded below) or hold no tables at all.
                self._inspect_schema()
                mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":  # e.g. a filesystem without shared memory
                    print(f"[ResultStore] warning: journal_mode is {mode!r}, not WAL", file=sys.stderr)
                # FULL: a committed transaction is on disk, not only in the OS cache.
                self.conn.execute("PRAGMA synchronous = FULL")
                self._create_schema()
            self._check_schema()
        except BaseException:
            self.conn.close()
            raise

    def _connect_readonly(self, timeout: float) -> sqlite3.Connection:
        """A read-only connection. A WAL database read with ``mode=ro`` needs its -wal and -shm
        files, which SQLite cannot create in a folder this process cannot write (a read-only
        mount, another user's folder). There, when the -wal is absent or empty (a finished
        database: closing a writable store checkpoints the log into the file), the file holds
        every committed transaction and is opened ``immutable``. (A writer still at work there
        would have write access to the folder that this process has not: not checked.)"""
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"

        def connect(u):
            return sqlite3.connect(u, uri=True, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)

        conn = connect(uri)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the WAL, if any
            return conn
        except sqlite3.DatabaseError as e:
            conn.close()
            if _sqlite_code(e) & 0xFF not in (_SQLITE_READONLY, _SQLITE_CANTOPEN):
                raise self._read_error(e) from e
            wal = self.path + "-wal"
            if os.path.exists(wal) and os.path.getsize(wal) > 0:
                raise ValueError(
                    f"[ResultStore] cannot read {self.path!r} ({e}): its write-ahead log {wal!r} "
                    "holds transactions not yet in the database, which SQLite reads only with a "
                    "-shm file that it cannot create in this folder; open the database once where "
                    "it can be written, or copy it with its -wal file to such a folder") from e
            return connect(uri + "&immutable=1")

    # -- schema ---------------------------------------------------------------------------
    def _create_schema(self) -> None:
        # executescript commits implicitly; run each statement inside one transaction.
        statements = [s.strip() for s in _SCHEMA.split(";") if s.strip()]
        with self.transaction():
            for s in statements:
                self.conn.execute(s)
            # databases written before runs recorded their process id (a column added in place:
            # the schema version is unchanged, older readers ignore it)
            cols = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
            if "pid" not in cols:
                self.conn.execute("ALTER TABLE runs ADD COLUMN pid INTEGER")
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self.conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)",
                                  (str(SCHEMA_VERSION),))
                self.conn.execute("INSERT INTO meta(key, value) VALUES ('created_at', ?)",
                                  (str(time.time()),))

    def _read_error(self, e: sqlite3.Error) -> ValueError:
        """A ValueError for an sqlite error met while reading the schema: a file that is not a
        database, a corrupt one or one without geomfast's tables or columns is not a geomfast
        results database; anything else (locked, I/O) is said as it is."""
        code = _sqlite_code(e) & 0xFF
        if code in (_SQLITE_NOTADB, _SQLITE_CORRUPT) or (
                isinstance(e, sqlite3.OperationalError) and str(e).startswith("no such ")):
            return ValueError(f"[ResultStore] {self.path!r} is not a geomfast results database: {e}"
                              + self._not_written)
        return ValueError(f"[ResultStore] cannot read {self.path!r}: {e}")

    def _inspect_schema(self) -> int | None:
        """The schema version of this geomfast database, or None when it holds no tables (a new
        or empty file). Only reads: raises ValueError for a database of another program (it
        lacks a table every geomfast database has had since schema version 1), one without a
        schema_version, or one newer than this geomfast reads."""
        try:
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            raise self._read_error(e) from e
        if not tables:
            return None
        missing = [t for t in _CORE_TABLES if t not in tables]
        if missing:
            raise ValueError(f"[ResultStore] {self.path!r} is not a geomfast results database: it has "
                             f"no table {', '.join(missing)} (it has {', '.join(sorted(tables))})"
                             + self._not_written)
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise self._read_error(e) from e
        if row is None:
            raise ValueError(f"[ResultStore] {self.path!r} has no schema_version")
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise ValueError(f"[ResultStore] {self.path!r} is not a geomfast results database: "
                             f"its schema_version is {row[0]!r}" + self._not_written) from None
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"[ResultStore] {self.path!r} has schema version {version}; this geomfast reads "
                f"up to {SCHEMA_VERSION} — upgrade geomfast")
        return version

    @property
    def _not_written(self) -> str:
        return "" if self.readonly else (
            "; left unchanged: results are written only to a new or empty file or to a geomfast "
            "results database")

    def _check_schema(self) -> None:
        version = self._inspect_schema()
        if version is None:
            raise ValueError(f"[ResultStore] {self.path!r} is not a geomfast results database: "
                             "it holds no tables")
        self.schema_version = version

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        if not self.readonly:
            # Move the write-ahead log into the database file even while readers are open (the
            # last connection to close does it anyway), so that the file alone holds every
            # result: a copy of it, or a reader in a folder it cannot write, sees them all.
            # Best effort, and brief: a reader of an older snapshot only postpones it.
            try:
                self.conn.execute("PRAGMA busy_timeout = 1000")
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                pass
        self.conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs -----------------------------------------------------------------------------
    def start_run(self, options: Mapping[str, Any], command: str | Sequence[str] | None = None) -> int:
        from . import _version

        if command is not None and not isinstance(command, str):
            command = " ".join(str(c) for c in command)
        with self.transaction():
            # runs of this host left 'running' by a process that no longer exists were killed
            # (SIGKILL, out of memory, a node going down): say so, so that 'running' means running
            for r in self.conn.execute("SELECT id, host, pid FROM runs WHERE status='running'").fetchall():
                if _run_process_gone(r["host"], r["pid"]):
                    self.conn.execute("UPDATE runs SET status='interrupted' WHERE id=?", (r["id"],))
            cur = self.conn.execute(
                "INSERT INTO runs(command, options, options_hash, version, host, started_at, pid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (command, json.dumps(dict(options), sort_keys=True, default=str),
                 options_hash(options), _version.__version__, os.uname().nodename, time.time(),
                 os.getpid()))
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        with self.transaction():
            self.conn.execute("UPDATE runs SET finished_at=?, status=? WHERE id=?",
                              (time.time(), status, run_id))

    def runs(self) -> list[dict]:
        """Every recorded run; status 'running', 'finished', 'failed' or 'interrupted' (a run of
        this host whose process is gone without finishing; also reported so by a read-only store
        before the next run records it)."""
        out = []
        for r in self.conn.execute("SELECT * FROM runs ORDER BY id"):
            d = dict(r)
            if d["status"] == "running" and _run_process_gone(d.get("host"), d.get("pid")):
                d["status"] = "interrupted"
            out.append(d)
        return out

    # -- writing results ------------------------------------------------------------------
    def _delete_result(self, result_id: int) -> None:
        """A result row and its spectra (inside the caller's transaction)."""
        self.conn.execute("DELETE FROM spectra WHERE result_id=?", (result_id,))
        self.conn.execute("DELETE FROM results WHERE id=?", (result_id,))

    def write_result(
        self,
        checkpoint,
        layer: str,
        pooling: str,
        *,
        options: Mapping[str, Any],
        metrics: Mapping[str, Any] | None = None,
        spectra: Mapping[str, Any] | None = None,
        status: str = "ok",
        error: str | None = None,
        timings: Mapping[str, float] | None = None,
        run_id: int | None = None,
        replace: bool = False,
    ) -> bool:
        """Write one (checkpoint, layer, pooling) result and its spectra in one transaction.

        ``checkpoint`` is a :class:`geomfast.checkpoints.Checkpoint` (or any object / mapping
        with model, revision, source, hub_revision, step, tokens, order). ``spectra`` maps a
        kind (``'covariance'``, ``'singular'``) to a 1-D array.

        An ``'ok'`` row is never overwritten unless ``replace``: writing the same key twice
        keeps the first and returns False. An ``'error'`` row is replaced by whatever comes
        next (a retry that succeeds). Returns True when a row was written.
        """
        if status not in ("ok", "error"):
            raise ValueError(f"[write_result] status must be 'ok' or 'error', got {status!r}")
        ck = _checkpoint_fields(checkpoint)
        h = options_hash(options)
        metrics = dict(metrics or {})
        timings = dict(timings or {})
        warnings = metrics.get("warnings")
        values = {
            "run_id": run_id,
            **ck,
            "layer": str(layer),
            "pooling": str(pooling),
            "options_hash": h,
            "options": json.dumps(dict(options), sort_keys=True, default=str),
            "status": status,
            "error": error,
            "n": _int_or_none(metrics.get("n")),
            "dim": _int_or_none(metrics.get("dim")),
            **{c: _float_or_none(metrics.get(c)) for c in METRIC_COLUMNS},
            "warnings": json.dumps(list(warnings)) if warnings else None,
            "load_s": _float_or_none(timings.get("load_s")),
            "extract_s": _float_or_none(timings.get("extract_s")),
            "metrics_s": _float_or_none(timings.get("metrics_s")),
            "created_at": time.time(),
        }
        cols = list(values)
        key = (values["model"], values["revision"], values["layer"], values["pooling"], h)
        with self.transaction():
            old = self.conn.execute(
                "SELECT id, status FROM results WHERE model=? AND revision=? AND layer=? "
                "AND pooling=? AND options_hash=?", key).fetchone()
            if old is not None:
                if old["status"] == "ok" and not replace:
                    return False
                self._delete_result(old["id"])
            cur = self.conn.execute(
                f"INSERT INTO results({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [values[c] for c in cols])
            rid = int(cur.lastrowid)
            for kind, arr in (spectra or {}).items():
                if arr is None:
                    continue
                blob = encode_spectrum(arr)
                self.conn.execute(
                    "INSERT INTO spectra(result_id, kind, length, data) VALUES (?, ?, ?, ?)",
                    (rid, kind, len(blob) // 8, sqlite3.Binary(blob)))
            if status == "ok":
                # A success supersedes checkpoint-level error rows left by earlier attempts.
                self.conn.execute(
                    "DELETE FROM results WHERE model=? AND revision=? AND options_hash=? "
                    "AND status='error' AND layer LIKE '*%'", (key[0], key[1], h))
        return True

    def write_error(self, checkpoint, *, options: Mapping[str, Any], error: str,
                    layers: Iterable[str] = ("*",), poolings: Iterable[str] = ("*",),
                    run_id: int | None = None, timings: Mapping[str, float] | None = None) -> None:
        """Record a failure. When it happened before layer names were known (the model did not
        load), the row's layer is ``'*'`` (or ``'*<spec>'``); such rows are cleared by the
        checkpoint's first success. Existing ``'ok'`` rows are kept."""
        for layer in layers:
            for pooling in poolings:
                self.write_result(checkpoint, layer, pooling, options=options, status="error",
                                  error=error, run_id=run_id, timings=timings)

    # -- reading --------------------------------------------------------------------------
    def done_keys(self, options_hash: str | None = None, *, model: str | None = None
                  ) -> set[tuple[str, str, str, str]]:
        """The (model, revision, layer, pooling) keys with status 'ok' (for the given options
        hash, if any). Error rows are not done: a re-run retries them."""
        q = "SELECT model, revision, layer, pooling FROM results WHERE status='ok'"
        args: list = []
        if options_hash is not None:
            q += " AND options_hash=?"
            args.append(options_hash)
        if model is not None:
            q += " AND model=?"
            args.append(model)
        return {tuple(r) for r in self.conn.execute(q, args)}

    def mark_checkpoint_done(self, model: str, revision: str, options_hash: str, request: str,
                             run_id: int | None = None) -> None:
        """Record that every (layer, pooling) of ``request`` (a canonical string of the layer
        and pooling specs) was written for this checkpoint, so a re-run skips it without
        loading the model. Written after the results, so a kill in between only costs a
        recomputation whose rows are then kept from the first write."""
        with self.transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO checkpoints(model, revision, options_hash, request, run_id, "
                "finished_at) VALUES (?, ?, ?, ?, ?, ?)",
                (model, revision, options_hash, request, run_id, time.time()))

    def sync_weights(self, fingerprints: Mapping[tuple[str, str], str]) -> dict[tuple[str, str], int]:
        """Compare local checkpoints' weight files (``fingerprints``: (model, revision) -> a digest
        of their names, sizes and modification times) with those their stored results were
        computed from. The first time, record them. Where they differ the folder was rewritten
        (e.g. a run retrained into the same folders): every stored result and marker of that
        (model, revision) describes weights that no longer exist, and they are removed, with the
        new fingerprint recorded. One transaction for all. Returns the result rows removed per
        checkpoint (only those with some)."""
        removed: dict[tuple[str, str], int] = {}
        with self.transaction():
            known = {(r[0], r[1]): r[2] for r in self.conn.execute("SELECT model, revision, fingerprint FROM weights")}
            for (model, revision), fingerprint in fingerprints.items():
                old = known.get((model, revision))
                if old == fingerprint:
                    continue
                if old is not None:
                    ids = [r[0] for r in self.conn.execute(
                        "SELECT id FROM results WHERE model=? AND revision=?", (model, revision))]
                    for rid in ids:
                        self._delete_result(rid)
                    self.conn.execute("DELETE FROM checkpoints WHERE model=? AND revision=?", (model, revision))
                    if ids:
                        removed[(model, revision)] = len(ids)
                self.conn.execute("INSERT OR REPLACE INTO weights(model, revision, fingerprint, recorded_at) "
                                  "VALUES (?, ?, ?, ?)", (model, revision, fingerprint, time.time()))
        return removed

    def done_checkpoints(self, options_hash: str, request: str) -> set[tuple[str, str]]:
        """(model, revision) pairs fully done for these options and this layer/pooling request."""
        return {tuple(r) for r in self.conn.execute(
            "SELECT model, revision FROM checkpoints WHERE options_hash=? AND request=?",
            (options_hash, request))}

    def rows(self, *, status: str | None = None, model: str | None = None,
             options_hash: str | None = None, order: str | None = None) -> list[dict]:
        """Result rows as dicts, by model, checkpoint order, then layer depth (embed, block0,
        block1, …, last) and pooling."""
        if order is None:
            order = ("model, ord, step, revision, CASE WHEN layer='embed' THEN -1 "
                     "WHEN layer LIKE 'block%' THEN CAST(SUBSTR(layer, 6) AS INTEGER) "
                     "ELSE 1000000 END, layer, pooling")
        q = "SELECT * FROM results"
        conds, args = [], []
        for col, val in (("status", status), ("model", model), ("options_hash", options_hash)):
            if val is not None:
                conds.append(f"{col}=?")
                args.append(val)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        q += f" ORDER BY {order}"
        return [dict(r) for r in self.conn.execute(q, args)]

    def spectrum(self, result_id: int, kind: str = "covariance") -> np.ndarray | None:
        row = self.conn.execute("SELECT data FROM spectra WHERE result_id=? AND kind=?",
                                (result_id, kind)).fetchone()
        return None if row is None else decode_spectrum(row[0])

    def spectra(self, kind: str = "covariance", *, status: str = "ok") -> Iterator[tuple[dict, np.ndarray]]:
        """Yield (result row, spectrum) for every result that has a spectrum of this kind."""
        q = ("SELECT r.*, s.data AS _data FROM results r JOIN spectra s ON s.result_id = r.id "
             "WHERE s.kind=? AND r.status=? ORDER BY r.model, r.ord, r.step, r.layer, r.pooling")
        for r in self.conn.execute(q, (kind, status)):
            d = dict(r)
            blob = d.pop("_data")
            yield d, decode_spectrum(blob)

    def count(self, status: str | None = None) -> int:
        if status is None:
            return int(self.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        return int(self.conn.execute("SELECT COUNT(*) FROM results WHERE status=?",
                                     (status,)).fetchone()[0])


def _int_or_none(v) -> int | None:
    return None if v is None else int(v)


def _checkpoint_fields(ck) -> dict:
    get = (ck.get if isinstance(ck, Mapping) else lambda k, d=None: getattr(ck, k, d))
    model = get("model")
    revision = get("revision")
    if model is None or revision is None:
        raise ValueError(f"[write_result] checkpoint needs model and revision, got {ck!r}")
    order = get("order", None)
    if order is None:
        order = get("ord", None)
    return {
        "model": str(model),
        "revision": str(revision),
        "source": None if get("source") is None else str(get("source")),
        "hub_revision": None if get("hub_revision") is None else str(get("hub_revision")),
        "step": _int_or_none(get("step")),
        "tokens": _int_or_none(get("tokens")),
        "ord": _int_or_none(order),
    }


# -- recompute and export ---------------------------------------------------------------------

def recompute_metrics(
    db: "str | os.PathLike | ResultStore",
    *,
    convention: str = "li2025",
    fit_range: tuple[int, int] = (11, 100),
    eps: float = 1e-7,
) -> list[dict]:
    """Recompute RankMe (under ``convention``) and α-ReQ (over ``fit_range``) from the stored
    spectra, without running any model. Returns one dict per ok result with the identity
    columns plus ``rankme``, ``alpha``, ``alpha_r2``, ``alpha_r2_100``, ``convention``,
    ``fit_range`` and ``warnings`` (list of str).

    ``convention``: ``'li2025'`` and ``'full'`` use the covariance eigenvalues, ``'garrido2023'``
    the singular values of the raw matrix (both are stored).

    A measure undefined on a row's spectrum (all zeros, too few positive values to fit) is
    ``nan`` for that row, and its ``warnings`` say why, as :func:`geomfast.metrics.geometry`
    (what trace stores) does; the other rows are recomputed.
    """
    import warnings as _warnings

    from . import metrics as M

    store = db if isinstance(db, ResultStore) else ResultStore(db, readonly=True)
    try:
        singular = {row["id"]: sv for row, sv in store.spectra("singular")}
        out = []
        for row, spec in store.spectra("covariance"):
            notes: list[str] = []  # the fit's own notes, then why a measure is nan
            undefined: list[str] = []
            # li2025 keeps the top min(2048, n, d) eigenvalues (sklearn PCA's components),
            # and α is fitted on those; 'full' uses every eigenvalue.
            n, d = row["n"] or spec.size, row["dim"] or spec.size
            top = spec[: min(M.LI2025_MAX_COMPONENTS, n, d)]
            rm: float | None
            try:
                if convention == "garrido2023":
                    sv = singular.get(row["id"])
                    rm = float(M.rankme(sv, convention="garrido2023", eps=eps)) if sv is not None else None
                else:
                    rm = float(M.rankme(top if convention == "li2025" else spec,
                                        convention=convention, eps=eps))
            except M.DegenerateSpectrumError as e:
                rm = float("nan")
                undefined.append(f"rankme = nan: {e}")
            try:
                fit = M.alpha_req(spec if convention == "full" else top, fit_range=tuple(fit_range))
                alpha = float(fit.alpha)
                r2 = None if fit.r2 is None else float(fit.r2)
                r2_100 = None if fit.r2_100 is None else float(fit.r2_100)
                notes.extend(fit.warnings)
            except M.DegenerateSpectrumError as e:
                alpha = r2 = r2_100 = float("nan")
                undefined.append(f"alpha = nan: {e}")
            for note in undefined:  # alpha_req has issued its own notes
                _warnings.warn(note, M.SpectrumWarning, stacklevel=2)
            out.append({
                **{k: row[k] for k in ("id", "model", "revision", "step", "tokens", "layer",
                                       "pooling", "n", "dim", "options_hash")},
                "convention": convention,
                "fit_range": tuple(fit_range),
                "rankme": rm,
                "alpha": alpha,
                "alpha_r2": r2,
                "alpha_r2_100": r2_100,
                "warnings": list(dict.fromkeys(notes + undefined)),
            })
        return out
    finally:
        if not isinstance(db, ResultStore):
            store.close()


def model_key(model: str | None) -> str | None:
    """A --model filter as trace stores it: a local folder (or a comma list of them, a series) by
    its resolved path, anything else (a hub id) as given."""
    if model is None:
        return None
    from .checkpoints import _resolved_if_local, _split_series

    parts = _split_series(str(model))
    return " -> ".join(map(_resolved_if_local, parts)) if parts else _resolved_if_local(str(model).strip())


def layer_key(layer: str | None, present: Iterable[str]) -> str | None:
    """A --layer filter as trace names layers: '0' -> 'block0', '-1' -> the deepest stored block,
    'embedding' -> 'embed', 'final' -> 'last'; anything else as given."""
    if layer is None:
        return None
    from .models import parse_layer

    try:
        kind, i = parse_layer(layer)
    except ValueError:
        return str(layer)  # not a layer name: filter_rows says what the database holds
    if kind in ("last", "embed"):
        return kind
    if kind == "all":
        return str(layer)
    if i >= 0:
        return f"block{i}"
    blocks = sorted(int(n[5:]) for n in present if re.fullmatch(r"block\d+", n))
    return f"block{blocks[-1] + 1 + i}" if blocks and blocks[-1] + 1 + i >= 0 else str(layer)


def filter_rows(rows: list[dict], *, layer: str | None = None, pooling: str | None = None,
                model: str | None = None, options_hash: str | None = None, func: str = "show") -> list[dict]:
    """Rows matching the filters (normalised as trace names things; ``options_hash`` may be a
    prefix of the hash). A filter matching nothing on rows that exist is an error that says what
    is there."""
    if not rows or (layer is None and pooling is None and model is None and options_hash is None):
        return rows
    if options_hash is not None and not str(options_hash).strip():
        raise ValueError(f"[{func}] options hash must be a hash or a prefix of one, got {options_hash!r}")
    key = layer_key(layer, {r["layer"] for r in rows})
    out = [r for r in rows if (model is None or r["model"] == model) and (key is None or r["layer"] == key)
           and (pooling is None or r["pooling"] == pooling)
           and (options_hash is None or str(r.get("options_hash") or "").startswith(str(options_hash).strip()))]
    if not out:
        def have(c):
            return ", ".join(sorted({str(r[c]) for r in rows}))
        asked = ", ".join(f"{k} {v!r}" for k, v in (("model", model), ("layer", layer), ("pooling", pooling),
                                                     ("options hash", options_hash)) if v is not None)
        raise ValueError(f"[{func}] no results for {asked}; the database holds models: {have('model')}; "
                         f"layers: {have('layer')}; poolings: {have('pooling')}; options hashes: "
                         f"{have('options_hash')}")
    return out


def export(db: "str | os.PathLike | ResultStore", path: str | os.PathLike, *,
           format: str | None = None, include_errors: bool = True, spectra: bool = False) -> int:
    """Write every result row to ``path`` as CSV or Parquet (pyarrow).
    Returns the number of rows written. ``format`` defaults to the file extension.
    ``spectra`` (Parquet only): also the stored spectra, as list columns
    ``covariance_spectrum`` (descending covariance eigenvalues) and ``singular_values`` (of the
    raw activations), null where a row has none (errors)."""
    path = os.fspath(path)
    if format is None:
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".csv", ".parquet", ".pq"):
            raise ValueError(f"[export] cannot tell the format from {path!r}: expected a .csv or .parquet "
                             "file name, or format='csv' / 'parquet'")
        format = "csv" if ext == ".csv" else "parquet"
    format = format.lower()
    if format not in ("csv", "parquet"):
        raise ValueError(f"[export] format must be 'csv' or 'parquet', got {format!r}")
    if spectra and format != "parquet":
        raise ValueError(f"[export] spectra are list columns, which CSV cannot hold: expected a .parquet "
                         f"file (or format='parquet') with spectra, got {format!r} for {path!r}")
    from ._paths import is_sqlite_file, same_file, write_file

    src = db.path if isinstance(db, ResultStore) else os.fspath(db)
    if same_file(path, src) or is_sqlite_file(path):  # writing there would destroy a database
        raise ValueError(f"[export] path {path!r} is {'the results database itself' if same_file(path, src) else 'a SQLite database'}"
                         "; expected a new .csv or .parquet file")
    store = db if isinstance(db, ResultStore) else ResultStore(db, readonly=True)
    try:
        rows = store.rows(status=None if include_errors else "ok")
        lists = {}
        if spectra:
            for col, kind in (("covariance_spectrum", "covariance"), ("singular_values", "singular")):
                lists[col] = [None if (s := store.spectrum(r["id"], kind)) is None else s.tolist() for r in rows]
    finally:
        if not isinstance(db, ResultStore):
            store.close()
    cols = list(EXPORT_COLUMNS)
    # Built in memory (a row is ~30 fields, no spectra), then written whole: a full disk or a
    # kill half-way leaves the previous file, never a truncated table that reads as complete.
    if format == "csv":
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
        data = text.getvalue().encode()
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("[export] parquet needs pyarrow: pip install 'geomfast[parquet]'") from e
        types = {c: pa.float64() for c in (*METRIC_COLUMNS, "load_s", "extract_s", "metrics_s", "created_at")}
        types.update({c: pa.int64() for c in ("step", "tokens", "n", "dim", "ord", "run_id")})
        types.update({c: pa.list_(pa.float64()) for c in lists})
        schema = pa.schema([(c, types.get(c, pa.string())) for c in (*cols, *lists)])
        table = pa.table({**{c: [r.get(c) for r in rows] for c in cols}, **lists}, schema=schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
    write_file(path, data)
    return len(rows)
