"""The ``geomfast`` command line.

Subcommands are registered, not hard-wired: each is a :class:`Command` (name, help,
``add_arguments(parser)``, ``run(args) -> int``) appended with :func:`register`. Another
module adds one with::

    from geomfast.cli import register
    register("phases", "detect training phases", add_phases_arguments, run_phases)

and ``main()`` picks it up (modules listed in ``_PLUGIN_MODULES`` are imported first, if
present, so their ``register`` calls run).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import re
import sqlite3
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["Command", "COMMANDS", "PathArg", "register", "check_paths", "build_parser",
           "main", "format_table"]


@dataclass(frozen=True)
class PathArg:
    """A path argument of a subcommand, checked by main() before the subcommand runs, so that a
    path it cannot use is one error line naming the argument, not a traceback half-way through.

    dest: its attribute in the parsed arguments (a path, a list of paths, or None / '-' when
    absent); flag: how the user types it, for messages; kind: 'input' (a results database it
    reads), 'file' (a file it writes: never one of its inputs, nor any SQLite database),
    'database' (a results database it creates or adds to) or 'folder' (a folder it writes in);
    check: False where the subcommand checks it itself (named in SQLite errors all the same)."""

    dest: str
    flag: str
    kind: str
    check: bool = True


@dataclass(frozen=True)
class Command:
    """A subcommand. ``prepare(parser, args)``, when given, runs on the parsed arguments before
    their paths are checked and before ``run``: to settle what parsing alone cannot (it may call
    ``parser.error``). ``paths``: its path arguments, checked by :func:`check_paths` before it
    runs and named in SQLite errors."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    prepare: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None
    paths: tuple[PathArg, ...] = ()


COMMANDS: list[Command] = []

# Modules that may register more subcommands (imported if they exist).
_PLUGIN_MODULES = ("geomfast.phases", "geomfast.bench", "geomfast.merge")


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int], *,
             prepare: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
             paths: Sequence[PathArg] = ()) -> Command:
    """Add (or replace) a subcommand."""
    cmd = Command(name, help, add_arguments, run, prepare, tuple(paths))
    for i, c in enumerate(COMMANDS):
        if c.name == name:
            COMMANDS[i] = cmd
            return cmd
    COMMANDS.append(cmd)
    return cmd


# ----------------------------------------------------------------------------- trace

def _fit_range(text: str) -> tuple[int, int]:
    what = "expected START:STOP, 0-based indices with 0 <= START and STOP - START >= 2 (stop exclusive)"
    try:
        lo, hi = (int(v) for v in text.replace(":", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
    if lo < 0 or hi - lo < 2:  # the rule alpha_req applies (metrics._check_fit_range)
        raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
    return lo, hi


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _device(text: str) -> str:
    from .models import check_device

    try:
        check_device(text)
    except ValueError as e:  # whether CUDA is there: make_config, before any model loads
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _add_trace(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, metavar="M",
                   help="hub id, local folder of checkpoints (step* sub-folders) or a model "
                        "folder; repeat for an ordered series (base -> SFT -> DPO -> ...)")
    p.add_argument("--revisions", default=None, metavar="R",
                   help="which checkpoints: all, paper (the paper's sampling of pretraining), "
                        "every:K, log:N, range:A-B, or a comma list of names/steps (default: all)")
    from .sweep import DEFAULTS, PRESETS

    li = PRESETS["li2025"]
    p.add_argument("--dataset", required=True, metavar="D",
                   help="required (no preset sets it): a local .txt (a document a line), .jsonl or "
                        ".parquet (field/column 'text'), a hub dataset id (streamed, online), or "
                        "'synthetic'")
    p.add_argument("--n-samples", type=int, default=None, metavar="N",
                   help=f"documents to trace, each with more than --min-length tokens (default "
                        f"{DEFAULTS['n_samples']}; li2025: {li['n_samples']})")
    p.add_argument("--layers", default=None, metavar="L",
                   help="comma list of: last (after the final norm), embed, block indices "
                        "(negative allowed), all (default: last)")
    p.add_argument("--pooling", default=None, metavar="P",
                   help="comma list of: last, mean, all (default: last)")
    p.add_argument("--out", required=True, metavar="RESULTS.db", help="SQLite results database")
    p.add_argument("--device", type=_device, default=None,
                   help="cpu, cuda, cuda:1 … (default: cpu)")
    p.add_argument("--accumulate-on", default=None, choices=["auto", "model", "cpu"],
                   help="where the Gram states live: model (the activations' device), cpu (host "
                        "memory: the GPU's memory left to the model), or auto (the default: model, "
                        "unless geomfast's CUDA backend cannot run here, then cpu with a warning)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="model weights (default float32; li2025: float16)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help=f"sequences per forward pass; halves by itself on out-of-memory (default "
                        f"{DEFAULTS['batch_size']})")
    p.add_argument("--min-length", type=int, default=None,
                   help=f"keep sequences with MORE than this many tokens (default "
                        f"{DEFAULTS['min_length']}; li2025: {li['min_length']})")
    p.add_argument("--max-length", type=int, default=None,
                   help=f"truncate to this many tokens (default: none, but never past the model's "
                        f"context; li2025: {li['max_length']})")
    p.add_argument("--precision", default=None, choices=["highest", "fast"])
    p.add_argument("--preset", default=None, choices=["li2025"],
                   help="the paper's settings; explicit flags override them")
    p.add_argument("--fit-range", type=_fit_range, default=None, metavar="START:STOP",
                   help="α-ReQ fit over 0-based indices [START, STOP) (default 11:100)")
    p.add_argument("--seed", type=_seed, default=None,
                   help=f"seed (>= 0) of the random choice of documents, or of the synthetic "
                        f"corpus (default {DEFAULTS['seed']})")
    p.add_argument("--padding-side", default=None, choices=["right", "left"])
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--local-files-only", action="store_true",
                   help="never contact the hub (also HF_HUB_OFFLINE=1)")
    p.add_argument("--stage-start", action="append", type=_stage_start, default=None, metavar="K=REVISION",
                   help="where training stage K (>= 2) starts: the last revision of stage K-1, e.g. "
                        "2=stage1-step1000-tokens5B (or a step), so that offline its checkpoints are "
                        "placed after stage K-1 as online; repeat for several stages")
    p.add_argument("--no-prefetch", action="store_true",
                   help="do not load the next checkpoint in the background")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    # scale-out (geomfast.distributed)
    p.add_argument("--parallel", default=None, choices=["data", "checkpoint"],
                   help="under torchrun: shard the samples (data, the default) or deal out the "
                        "checkpoints (checkpoint); rank 0 writes the database")
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="trace only the I-th of N interleaved shares of the checkpoints (I from 0, "
                        "e.g. $SLURM_ARRAY_TASK_ID/N), each job into its own --out; then "
                        "`geomfast merge` the databases")
    p.add_argument("--device-map", type=_device_map, default=None, metavar="MAP",
                   help="accelerate device map for a model larger than one GPU: auto, balanced, "
                        "sequential, or a JSON object")


def _shard(text: str) -> tuple[int, int]:
    from .sweep import parse_shard

    try:
        return parse_shard(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("[trace] ")) from None


def _stage_start(text: str) -> tuple[int, str | int]:
    from .checkpoints import stage_starts_of

    k, sep, rev = text.partition("=")
    rev = rev.strip()
    if not sep or not k.strip().isdigit() or not rev:
        raise argparse.ArgumentTypeError(f"expected K=REVISION (e.g. 2=stage1-step1000-tokens5B), got {text!r}")
    start = (int(k), int(rev) if rev.isdigit() else rev)
    try:
        stage_starts_of(dict([start]))  # the checks resolve_checkpoints makes, at parse time
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {str(e).removeprefix('[resolve_checkpoints] ')}") from None
    return start


def _stage_starts(pairs) -> dict | None:
    if not pairs:
        return None
    out = {}
    for k, rev in pairs:
        if k in out and out[k] != rev:
            raise ValueError(f"--stage-start: stage {k} given twice ({out[k]} and {rev})")
        out[k] = rev
    return out


def _device_map(text: str | None):
    if text is None or not text.strip().startswith("{"):
        return text
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected auto, balanced, sequential or a JSON object (module -> "
                                         f"device), got {text!r}, which is not valid JSON ({e})") from None
    if not isinstance(value, dict):  # pragma: no cover - a '{' always parses to an object
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _run_trace(args: argparse.Namespace) -> int:
    from .sweep import trace

    summary = trace(
        args.model if len(args.model) > 1 else args.model[0],
        dataset=args.dataset, out=args.out, revisions=args.revisions, preset=args.preset,
        command=["geomfast", *(sys.argv[1:] if args.argv is None else args.argv)],
        n_samples=args.n_samples, layers=args.layers, pooling=args.pooling, device=args.device,
        dtype=args.dtype, batch_size=args.batch_size, min_length=args.min_length,
        max_length=args.max_length, precision=args.precision, fit_range=args.fit_range,
        seed=args.seed, padding_side=args.padding_side,
        trust_remote_code=args.trust_remote_code or None,
        local_files_only=args.local_files_only or None,
        stage_starts=_stage_starts(args.stage_start),
        prefetch=False if args.no_prefetch else None,
        progress=False if args.no_progress else None,
        parallel=args.parallel, device_map=args.device_map, accumulate_on=args.accumulate_on,
        shard=args.shard,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports for all
        print(summary)
    return 0 if summary.failed == 0 else 2


# ----------------------------------------------------------------------------- export / plot / show

def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("db", metavar="RESULTS.db")
    p.add_argument("--format", choices=["csv", "parquet"], default=None,
                   help="default: from the output file's extension")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("--ok-only", action="store_true", help="leave out error rows")
    p.add_argument("--spectra", action="store_true",
                   help="Parquet only: also each row's stored spectra, as list columns "
                        "covariance_spectrum and singular_values")


def _run_export(args: argparse.Namespace) -> int:
    from .store import export

    n = export(args.db, args.output, format=args.format, include_errors=not args.ok_only, spectra=args.spectra)
    print(f"{n} row(s) written to {args.output}")
    return 0


def _add_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("db", metavar="RESULTS.db")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png")
    p.add_argument("--metrics", default=None,
                   help="comma list of result columns, one panel each (default rankme,alpha)")
    p.add_argument("--spectra", action="store_true",
                   help="plot the stored covariance eigenspectra of one series instead (log-log, one "
                        "curve per checkpoint, α fit range shaded): the --model/--layer/--pooling "
                        "series, by default the final layer, last token")
    p.add_argument("--checkpoints", type=int, default=None, metavar="K",
                   help="with --spectra: at most K checkpoints, spread over training (default 8)")
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--layer", default=None, help="only this layer (e.g. last, block3, embed)")
    p.add_argument("--pooling", default=None, help="only this pooling (last, mean, all)")
    p.add_argument("--options", dest="options_hash", default=None, metavar="HASH",
                   help="only the rows of this option set (its options hash, or a prefix of it)")
    p.add_argument("--no-phases", action="store_true",
                   help="do not shade phases (by default: those of the only series plotted, else of "
                        "the final layer, last token)")
    p.add_argument("--title", default=None)


def _run_plot(args: argparse.Namespace) -> int:
    from .plot import plot_results, plot_spectra

    if args.spectra:
        clash = [flag for flag, given in (("--metrics", args.metrics is not None),
                                          ("--no-phases", args.no_phases)) if given]
        if clash:
            raise ValueError(f"{' and '.join(clash)} plot(s) metrics against step; --spectra plots eigenspectra: "
                             "expected one or the other")
        out = plot_spectra(args.db, args.output, model=args.model, layer=args.layer, pooling=args.pooling,
                           options_hash=args.options_hash, title=args.title,
                           checkpoints=8 if args.checkpoints is None else args.checkpoints)
        print(f"plot written to {out}")
        return 0
    if args.checkpoints is not None:
        raise ValueError("--checkpoints K chooses the curves of --spectra: expected --spectra with it")
    metrics = "rankme,alpha" if args.metrics is None else args.metrics
    out = plot_results(args.db, args.output, metrics=[m for m in metrics.split(",") if m],
                       model=args.model, layer=args.layer, pooling=args.pooling,
                       options_hash=args.options_hash, title=args.title, phases=not args.no_phases)
    print(f"plot written to {out}")
    return 0


def _fmt(v, width: int | None = None) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
        a = abs(v)
        return f"{v:.3g}" if (a >= 1e5 or (0 < a < 1e-3)) else f"{v:.3f}" if a < 10 else f"{v:.2f}"
    return str(v)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows)
               for c in columns]

    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(vals, widths, numeric)).rstrip()

    out = [line(list(columns)), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _add_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("db", metavar="RESULTS.db")
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--all-columns", action="store_true",
                   help="every metric, not only RankMe and α")
    p.add_argument("--errors", action="store_true", help="show only the failures, with messages")


def _run_show(args: argparse.Namespace) -> int:
    from .store import ResultStore, filter_rows, model_key

    with ResultStore(args.db, readonly=True) as store:
        model = model_key(args.model)
        every = filter_rows(store.rows(), model=model, func="show")
        rows = [r for r in every if r["status"] == "error"] if args.errors else every
        runs = store.runs()
        # the header counts every row of a group, also under --errors (which lists only errors)
        counts: dict = {}
        for r in every:
            key = (r["model"], r["options_hash"])
            ok, bad = counts.get(key, (0, 0))
            counts[key] = (ok + (r["status"] == "ok"), bad + (r["status"] != "ok"))
    if not rows:
        print(f"{args.db}: no results")
        return 0
    models = sorted({r["model"] for r in rows})
    cols = ["revision", "step", "layer", "pooling", "n", "dim", "rankme", "rankme_full", "alpha",
            "alpha_r2", "status"]
    if args.all_columns:
        cols = ["revision", "step", "tokens", "layer", "pooling", "n", "dim", "rankme",
                "rankme_garrido2023", "rankme_full", "alpha", "alpha_r2", "alpha_r2_100",
                "participation_ratio", "stable_rank", "spectral_entropy", "effective_rank_roy",
                "condition_number", "extract_s", "status"]
    if args.errors:
        cols = ["revision", "step", "layer", "pooling", "error"]
    hashes = sorted({r["options_hash"] for r in rows})
    for m in models:
        for h in hashes:
            sub = [r for r in rows if r["model"] == m and r["options_hash"] == h]
            if not sub:
                continue
            n_ok, n_bad = counts.get((m, h), (0, 0))
            print(f"\n{m}  (options {h}: {n_ok} ok, {n_bad} error)")
            print(format_table(sub, cols))
    errors = [r for r in rows if r["status"] == "error"]
    if errors and not args.errors:
        print(f"\n{len(errors)} error row(s); `geomfast show {args.db} --errors` lists them")
    from .merge import completed_by

    by = completed_by(runs)  # interrupted run -> the later run that finished its work, or None
    killed = sum(v is None for v in by.values())
    notes = ([f"{killed} interrupted: their finished results are kept, re-run to complete"] if killed else []) \
        + ([f"{len(by) - killed} interrupted, since completed by a later run"] if len(by) > killed else [])
    print(f"\n{len(rows)} row(s), {len(runs)} run(s) recorded in {args.db}"
          + (f" ({'; '.join(notes)})" if notes else ""))
    return 0


# ----------------------------------------------------------------------------- demo

def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="geomfast-demo", metavar="DIR",
                   help="folder for checkpoints, results.db, plot and summary (default ./geomfast-demo)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 1400)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true")


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    kwargs = {"progress": not args.no_progress}
    if args.steps is not None:
        kwargs["steps"] = args.steps
    if args.threads is not None:
        kwargs["threads"] = args.threads
    result = run_demo(args.out, **kwargs)
    print(result["summary"])
    return 0


# ----------------------------------------------------------------------------- info

def environment() -> dict:
    """What this geomfast runs on: versions, the backends (what was built, what is usable here,
    and why not), the CPU's Gram kernels, the CUDA devices torch sees. For bug reports and the
    first run on a new machine; nothing here loads a model or touches the network."""
    import importlib.metadata
    import platform

    from . import __version__
    from .linalg import backends

    def version(dist: str) -> str | None:
        names = (dist,) if dist != "cupy" else ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x")
        for name in names:  # cupy's wheels are named by their CUDA
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                pass
        return None

    info: dict = {"geomfast": __version__, "python": platform.python_version(),
                  "platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "packages": {d: version(d) for d in ("numpy", "torch", "transformers", "tokenizers",
                                                       "safetensors", "accelerate", "datasets", "scipy",
                                                       "scikit-learn", "cupy", "matplotlib", "pyarrow")},
                  "backends": backends(),
                  # what changes geomfast's kernels, threads or hub access without a flag
                  "environment": {k: v for k, v in sorted(os.environ.items())
                                  if k.startswith(_INFO_ENV) and not any(w in k for w in _SECRET_WORDS)}}
    try:
        import torch

        cuda = {"torch_cuda": torch.version.cuda, "available": bool(torch.cuda.is_available())}
        if cuda["available"]:
            cuda["devices"] = [f"cuda:{i}: {torch.cuda.get_device_name(i)} (compute capability "
                               f"{'.'.join(map(str, torch.cuda.get_device_capability(i)))})"
                               for i in range(torch.cuda.device_count())]
        info["torch_cuda"] = cuda
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch_cuda"] = None
    return info


_INFO_ENV = ("GEOMFAST_", "OPENBLAS_", "OMP_", "MKL_", "HF_", "TRANSFORMERS_", "CUDA_VISIBLE_DEVICES")
_SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")  # never printed (an info paste goes into bug reports)


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="the same as JSON on stdout")


def _run_info(args: argparse.Namespace) -> int:
    import json

    info = environment()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"geomfast {info['geomfast']} on Python {info['python']}, {info['platform']}, {info['cpu_count']} CPU(s)")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v is not None))
    missing = [k for k, v in info["packages"].items() if v is None]
    if missing:
        print("not installed: " + ", ".join(missing))
    for name, b in info["backends"].items():
        state = "usable" if b["usable"] else ("built, not usable" if b["built"] else "not built")
        line = f"backend {name}: {state}"
        if b.get("device_count"):
            line += f", {b['device_count']} device(s)"
        print(line + (f" — {b['reason']}" if b.get("reason") else ""))
        if b.get("details"):
            print(f"  {b['details']}")
    if info["environment"]:
        print("environment: " + ", ".join(f"{k}={v}" for k, v in info["environment"].items()))
    tc = info.get("torch_cuda")
    if tc is not None:
        print(f"torch: CUDA {tc['torch_cuda'] or '(CPU build)'}, available: {tc['available']}, "
              f"{info.get('torch_threads')} thread(s)")
        for d in tc.get("devices", []):
            print(f"  {d}")
        if tc["available"] and not info["backends"]["cuda"]["usable"]:
            print("  (geomfast traces there with --accumulate-on cpu: the Gram states in host memory)")
    return 0


_DB = PathArg("db", "RESULTS.db", "input")
# trace checks --out itself (sweep, on rank 0 alone: other ranks never write it)
register("trace", "trace RankMe / α-ReQ across checkpoints and layers into a results database",
         _add_trace, _run_trace, paths=(PathArg("out", "--out", "database", check=False),))
register("show", "print a results database as a table", _add_show, _run_show, paths=(_DB,))
register("export", "export a results database to CSV or Parquet", _add_export, _run_export,
         paths=(_DB, PathArg("output", "-o", "file")))
register("plot", "plot RankMe and α against training step", _add_plot, _run_plot,
         paths=(_DB, PathArg("output", "-o", "file")))
register("demo", "offline demo: train a tiny GPT-NeoX, trace its checkpoints, plot",
         _add_demo, _run_demo, paths=(PathArg("out", "--out", "folder"),))
register("info", "what geomfast runs on here: versions, backends (and why one is unusable), devices",
         _add_info, _run_info)


# ----------------------------------------------------------------------------- paths

def _paths_of(args: argparse.Namespace, arg: PathArg) -> list[str]:
    value = getattr(args, arg.dest, None)
    values = value if isinstance(value, (list, tuple)) else [value]
    return [os.fspath(v) for v in values if v is not None and v != "-"]


def check_paths(args: argparse.Namespace) -> None:
    """Refuse, before anything runs, a path of the parsed command (its ``paths``) that it cannot use: an
    output that would overwrite one of its input databases or any other SQLite database, a folder
    given as a file or database, a file given as a folder, a folder it may not write in
    (ValueError naming the argument)."""
    from ._paths import check_input_database, check_output_database, check_output_file, \
        check_output_folder

    spec = [a for a in args._command.paths if a.check]
    inputs = [(a.flag, p) for a in spec if a.kind == "input" for p in _paths_of(args, a)]
    check = {"input": check_input_database, "database": check_output_database,
             "folder": check_output_folder,
             "file": lambda path, flag: check_output_file(path, flag, inputs)}
    for a in spec:
        for path in _paths_of(args, a):
            check[a.kind](path, a.flag)


def _databases_of(args: argparse.Namespace) -> list[str]:
    return [p for a in args._command.paths if a.kind in ("input", "database")
            for p in _paths_of(args, a)]


# ----------------------------------------------------------------------------- entry point

def _load_plugins() -> None:
    for name in _PLUGIN_MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        mod = importlib.import_module(name)
        hook = getattr(mod, "register_cli", None)
        if callable(hook):
            hook(register)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, ``geomfast trace: error: …``, exit status 1 (as every other user
    error), not the usage block and exit status 2; ``--help`` shows the usage."""

    def error(self, message: str):
        self.exit(1, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = _Parser(
        prog="geomfast",
        description="Representation geometry (RankMe, α-ReQ) of language models across "
                    "training checkpoints.")
    parser.add_argument("--version", action="version", version=f"geomfast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run, _command=cmd, _parser=p)
    return parser


_NEGATIVE = re.compile(r"-\d")


def _join_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--fit-range -1:5`` / ``--layers -1,-2`` as ``--fit-range=-1:5``: argparse takes a value
    that starts with '-' for an option unless it is a plain negative number, and said only
    "expected one argument"; joined, the option's own check says what is allowed."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        return argv
    i = next((i for i, tok in enumerate(argv) if tok in sub.choices), None)
    if i is None:
        return argv
    valued = {opt for a in sub.choices[argv[i]]._actions if a.option_strings and a.nargs is None
              for opt in a.option_strings}
    out = list(argv[:i + 1])
    rest = iter(argv[i + 1:])
    for tok in rest:
        if tok == "--":
            out.append(tok)
            out.extend(rest)
            break
        if tok in valued:
            nxt = next(rest, None)
            if nxt is not None and _NEGATIVE.match(nxt):
                out.append(f"{tok}={nxt}")
                continue
            out.append(tok)
            if nxt is not None:
                out.append(nxt)
            continue
        out.append(tok)
    return out


def _one_line_warnings(where: list[str]):
    """showwarning for the command line: ``geomfast trace: warning: …`` on one line, without the
    file, line number and source line Python adds (library use keeps Python's own)."""
    def show(message, category, filename, lineno, file=None, line=None):
        stream = file if file is not None else sys.stderr
        try:
            stream.write(f"{where[0]}: warning: {' '.join(str(message).split())}\n")
        except (OSError, ValueError):  # a closed or broken stderr: as Python's own, say nothing
            pass
    return show


def main(argv: Sequence[str] | None = None) -> int:
    where = ["geomfast"]
    with warnings.catch_warnings():
        if not os.environ.get("GEOMFAST_DEBUG"):
            warnings.showwarning = _one_line_warnings(where)
        return _main(argv, where)


def _main(argv: Sequence[str] | None, where: list[str]) -> int:
    _load_plugins()
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(parser, list(sys.argv[1:] if argv is None else argv)))
    args.argv = None if argv is None else list(argv)
    where[0] = f"geomfast {args.command}"
    if args._command.prepare is not None:
        args._command.prepare(args._parser, args)
    try:
        check_paths(args)
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `geomfast show db | head`: the reader left; not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")  # so that the exit's flush does not fail again
        except OSError:
            pass
        return 0
    except (OSError, ValueError, FloatingPointError) as e:  # OSError: permissions, full disks …
        if os.environ.get("GEOMFAST_DEBUG"):
            raise
        print(f"geomfast {args.command}: error: {e}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as e:  # the file system's or the file's; a bad statement is re-raised
        from .store import is_environment_error
        if not is_environment_error(e) or os.environ.get("GEOMFAST_DEBUG"):
            raise
        where = ", ".join(_databases_of(args)) or "?"
        print(f"geomfast {args.command}: error: SQLite ({where}): {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
