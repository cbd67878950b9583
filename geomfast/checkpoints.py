"""Checkpoint series: hub revisions, local checkpoint folders and post-training series.

A *series* is what geomfast traces: an ordered list of :class:`Checkpoint`, each one a model
``from_pretrained`` can load. Three kinds of source give one:

- a hub id (``EleutherAI/pythia-160m``, ``allenai/OLMo-2-0425-1B``): its revisions come from the
  hub's branch list when online; Pythia falls back to its known schedule offline;
- a local folder whose sub-folders are checkpoints (``run/step1000``, ``run/checkpoint-2000``),
  or a single local model folder (one checkpoint);
- a list of model ids or folders (base -> SFT -> DPO -> RLVR), each one ordered "checkpoint".

Revision names are parsed into (step, tokens): ``step1000``, ``step1000-tokens4B``,
``stage1-step1000-tokens5B``, ``stage2-ingredient1-step1000-tokens10B``.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Checkpoint",
    "pythia_revisions",
    "parse_revision",
    "revision_sort_key",
    "select_revisions",
    "resolve_checkpoints",
    "is_model_folder",
    "weights_fingerprint",
]

# What from_pretrained reads the weights from (sharded or not); their index files too.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_WEIGHT_NAMES = _WEIGHT_SUFFIXES + tuple(s + ".index.json" for s in _WEIGHT_SUFFIXES)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a series.

    model: series name used as the store key (hub id, local folder path, or series name).
    revision: revision name ('step1000', 'stage1-step1000-tokens5B'), sub-folder name, 'main',
        or a model id for post-training series.
    source: what ``from_pretrained`` loads: hub id or local folder.
    hub_revision: revision passed to ``from_pretrained`` (None for local folders).
    step, tokens: parsed from the revision name when it carries them.
    order: position in the series (0-based).
    """

    model: str
    revision: str
    source: str
    hub_revision: str | None
    step: int | None
    tokens: int | None
    order: int


# ----------------------------------------------------------------------------- schedules

def pythia_revisions() -> list[str]:
    """The 154 Pythia revisions: step0, step1, 2, 4, ..., 512, then step1000 ... step143000."""
    steps = [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))
    return [f"step{s}" for s in steps]


def _is_pythia(model_id: str) -> bool:
    return bool(re.fullmatch(r"(?i)EleutherAI/pythia-[0-9.]+[mb](-deduped)?(-v0)?", model_id.strip()))


# ----------------------------------------------------------------------------- parsing

_STEP_RE = re.compile(r"(?:^|[^a-z])(?:step|checkpoint|ckpt|iter|iteration)[-_]?(\d+)", re.IGNORECASE)
_TOKENS_RE = re.compile(r"tokens[-_]?(\d+(?:\.\d+)?)([KMBT]?)(?![a-z])", re.IGNORECASE)
_STAGE_RE = re.compile(r"stage[-_]?(\d+)", re.IGNORECASE)
_INGREDIENT_RE = re.compile(r"ingredient[-_]?(\d+)", re.IGNORECASE)
_TOKEN_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_revision(name: str) -> tuple[int | None, int | None]:
    """(step, tokens) from a revision or folder name; None for what the name does not carry.

    >>> parse_revision("stage1-step1000-tokens5B")
    (1000, 5000000000)
    >>> parse_revision("main")
    (None, None)

    A bare number (a folder called ``1000``) is read as a step.
    """
    name = str(name).strip().rstrip("/").rsplit("/", 1)[-1]
    step = None
    m = _STEP_RE.search(name)
    if m:
        step = int(m.group(1))
    elif name.isdigit():
        step = int(name)
    tokens = None
    t = _TOKENS_RE.search(name)
    if t:
        value = float(t.group(1)) * _TOKEN_UNITS[t.group(2).upper()]
        tokens = int(round(value))
    return step, tokens


def revision_sort_key(name: str) -> tuple:
    """Training order of revision names: stage, ingredient, step; names without a step last."""
    step, tokens = parse_revision(name)
    stage = _STAGE_RE.search(name)
    ingredient = _INGREDIENT_RE.search(name)
    return (
        0 if step is not None else 1,
        int(stage.group(1)) if stage else 0,
        int(ingredient.group(1)) if ingredient else 0,
        step if step is not None else 0,
        tokens if tokens is not None else 0,
        name,
    )


# ----------------------------------------------------------------------------- selectors

def _steps_of(revs: list[str], what: str) -> list[int]:
    steps = [parse_revision(r)[0] for r in revs]
    missing = [r for r, s in zip(revs, steps) if s is None]
    if missing:
        raise ValueError(
            f"[select_revisions] selector {what!r} needs a step in every revision name; "
            f"no step in {missing[:5]}"
        )
    return steps  # type: ignore[return-value]


def _paper_keep(revs: list[str]) -> list[str]:
    steps = _steps_of([r for r in revs if r != "main"], "paper")
    named = [r for r in revs if r != "main"]
    if any(_TOKENS_RE.search(r) for r in named):
        # OLMo / OLMo-2: every step <= 10,000 and multiples of 10,000 after that.
        return [r for r, s in zip(named, steps) if s <= 10_000 or s % 10_000 == 0]
    # Pythia: {0, 8, 16, ..., 512} (powers of two) and every 1000 steps.
    return [r for r, s in zip(named, steps) if s == 0 or 8 <= s <= 512 or (s >= 1000 and s % 1000 == 0)]


def _log_keep(revs: list[str], n: int) -> list[str]:
    if n <= 0:
        raise ValueError(f"[select_revisions] 'log:N' needs N >= 1, got {n}")
    if n >= len(revs):
        return list(revs)
    steps = _steps_of(revs, f"log:{n}")
    chosen: set[int] = set()
    pos = [math.log1p(s) for s in steps]
    # Targets evenly spaced in log(1 + step) from the first to the last revision.
    lo, hi = min(pos), max(pos)
    targets = [lo] if n == 1 else [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    for t in targets:
        best = min((i for i in range(len(revs)) if i not in chosen), key=lambda i: (abs(pos[i] - t), i))
        chosen.add(best)
    return [r for i, r in enumerate(revs) if i in chosen]


def select_revisions(revs: list[str], selector: str | None) -> list[str]:
    """Pick revisions from an ordered list.

    selector:
      - None or 'all': every revision;
      - 'every:K': every K-th (the first, K+1-th, ...), the last one always included;
      - 'log:N': N revisions log-spaced by step (step 0 counts as log(1 + 0));
      - 'range:A-B': A <= step <= B (either end may be left out: 'range:1000-');
      - 'paper': the paper's sampling (Pythia: {0, 8, ..., 512} and every 1000;
        OLMo names with 'tokens': every step <= 10,000 and multiples of 10,000);
      - a comma list of revision names and/or steps ('step1000,2000,main').
    The result keeps the order of ``revs``.
    """
    revs = list(revs)
    if selector is None:
        return revs
    sel = str(selector).strip()
    low = sel.lower()
    if low in ("", "all"):
        return revs
    if low == "paper":
        return _paper_keep(revs)
    if low.startswith("every:"):
        try:
            k = int(sel.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"[select_revisions] expected 'every:K' with an integer K, got {sel!r}") from None
        if k <= 0:
            raise ValueError(f"[select_revisions] 'every:K' needs K >= 1, got {k}")
        keep = revs[::k]
        if revs and revs[-1] not in keep:
            keep.append(revs[-1])
        return keep
    if low.startswith("log:"):
        try:
            n = int(sel.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"[select_revisions] expected 'log:N' with an integer N, got {sel!r}") from None
        return _log_keep(revs, n)
    if low.startswith("range:"):
        m = re.fullmatch(r"\s*(\d*)\s*-\s*(\d*)\s*", sel.split(":", 1)[1])
        if not m or (not m.group(1) and not m.group(2)):
            raise ValueError(f"[select_revisions] expected 'range:A-B' with steps A and B, got {sel!r}")
        a = int(m.group(1)) if m.group(1) else -1
        b = int(m.group(2)) if m.group(2) else math.inf
        if a > b:
            raise ValueError(f"[select_revisions] expected 'range:A-B' with A <= B, got {sel!r}")
        named = [r for r in revs if parse_revision(r)[0] is not None]
        kept = [r for r in named if a <= parse_revision(r)[0] <= b]  # type: ignore[operator]
        if not kept:
            steps = sorted(parse_revision(r)[0] for r in named)  # type: ignore[type-var]
            raise ValueError(f"[select_revisions] {sel!r} selects no checkpoint (steps "
                             f"{f'{steps[0]}..{steps[-1]}' if steps else 'none'} available)")
        return kept
    # A comma list of names and/or steps.
    wanted = [w.strip() for w in sel.split(",") if w.strip()]
    by_step: dict[int, list[str]] = {}
    for r in revs:
        s = parse_revision(r)[0]
        if s is not None:
            by_step.setdefault(s, []).append(r)
    keep_set: set[str] = set()
    extra: list[str] = []
    for w in wanted:
        if w in revs:
            keep_set.add(w)
        elif w.isdigit() and int(w) in by_step:
            keep_set.update(by_step[int(w)])
        elif w == "main":
            extra.append(w)
        else:
            near = ", ".join(revs[:3] + (["..."] if len(revs) > 3 else []))
            raise ValueError(
                f"[select_revisions] no revision {w!r} among {len(revs)} ({near}); "
                "expected a name, a step, or one of all, every:K, log:N, range:A-B, paper"
            )
    return [r for r in revs if r in keep_set] + [e for e in extra if e not in keep_set]


# ----------------------------------------------------------------------------- sources

def is_model_folder(path: str | os.PathLike) -> bool:
    """A folder from_pretrained can load (it holds a config.json)."""
    return (Path(path) / "config.json").is_file()


def _offline(local_files_only: bool) -> bool:
    if local_files_only:
        return True
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except Exception:  # pragma: no cover - huggingface_hub comes with transformers
        return False


def _list_hub_branches(model_id: str) -> list[str]:
    """Branch names of a hub repository (network)."""
    from huggingface_hub import list_repo_refs

    return [b.name for b in list_repo_refs(model_id).branches]


def _cached_revisions(model_id: str) -> list[str]:
    """Revisions of model_id present in the local HF cache (offline fallback)."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:
        return []
    names: set[str] = set()
    for repo in info.repos:
        if repo.repo_id == model_id and repo.repo_type == "model":
            for rev in repo.revisions:
                names.update(rev.refs)
    return sorted(names)


def _hub_revisions(model_id: str, selector: str | None, local_files_only: bool) -> list[str]:
    revs: list[str] = []
    authoritative = False
    if not _offline(local_files_only):
        try:
            revs = _list_hub_branches(model_id)
            authoritative = True
        except Exception as err:  # network down, no access: fall back below
            import warnings

            warnings.warn(f"[resolve_checkpoints] could not list the branches of {model_id!r} ({err}); "
                          "falling back to the known schedule / local cache")
            revs = []
    if not revs:
        if _is_pythia(model_id):
            revs = pythia_revisions()
        else:
            revs = _cached_revisions(model_id)
    stepped = [r for r in revs if parse_revision(r)[0] is not None]
    if stepped:
        # 'main' duplicates the final checkpoint of a series; keep it only when named.
        revs = sorted(stepped, key=revision_sort_key)
    else:
        revs = ["main"]
    try:
        return select_revisions(revs, selector)
    except ValueError:
        if authoritative or not _is_name_list(selector):
            raise
        # Offline without the branch list: trust the names the user gave.
        names = [w.strip() for w in str(selector).split(",") if w.strip()]
        return sorted(dict.fromkeys(names), key=revision_sort_key)


def _is_name_list(selector: str | None) -> bool:
    if selector is None:
        return False
    low = str(selector).strip().lower()
    return bool(low) and low not in ("all", "paper") and not re.match(r"(every|log|range):", low)


def _split_series(model: str) -> list[str] | None:
    if "," in model and not os.path.exists(model):
        return [m.strip() for m in model.split(",") if m.strip()]
    return None


def _split_at(entry: str) -> tuple[str, str | None]:
    """'org/model@rev' -> ('org/model', 'rev') for hub ids; paths are left alone."""
    if "@" in entry and not os.path.exists(entry):
        name, rev = entry.rsplit("@", 1)
        return name, (rev or None)
    return entry, None


def _resolved_if_local(entry: str) -> str:
    """A series entry: a local folder as its resolved path, anything else (a hub id) as given."""
    path = Path(entry).expanduser()
    return str(path.resolve()) if path.is_dir() else entry


def resolve_checkpoints(
    model: str | list[str] | tuple[str, ...],
    revisions: str | None = None,
    *,
    local_files_only: bool = False,
    series_name: str | None = None,
) -> list[Checkpoint]:
    """The ordered checkpoints of a series.

    model:
      - a hub id: revisions from the hub's branch list (online), the Pythia schedule for
        EleutherAI/pythia-* offline, else the revisions in the local HF cache, else 'main';
      - a local folder whose sub-folders are model folders: one checkpoint per sub-folder,
        ordered by the step parsed from its name (stage, ingredient, step);
      - a single local model folder (holding config.json): one checkpoint, revision 'main'
        (step parsed from the folder name when it carries one);
      - a list (or comma string) of model ids / folders: a post-training series
        (base -> SFT -> DPO -> RLVR), each one a "checkpoint" whose revision is its id;
        'id@rev' pins a hub revision. The store key is ``series_name`` (default: the ids
        joined with ' -> ').
    revisions: a selector, see :func:`select_revisions`.
    """
    if isinstance(model, str):
        parts = _split_series(model)
        if parts is not None:
            model = parts
    if not isinstance(model, str):
        # local folders by their resolved path: './run' typed in two places is two models, and
        # '/abs/run' and './run' are one
        entries = [_resolved_if_local(str(m)) for m in model]
        if not entries:
            raise ValueError("[resolve_checkpoints] expected at least one model in the series, got none")
        dup = sorted({e for e in entries if entries.count(e) > 1})
        if dup:
            raise ValueError(f"[resolve_checkpoints] a series lists each model once, got {', '.join(dup)} "
                             "more than once")
        name = series_name or " -> ".join(entries)
        chosen = select_revisions(entries, revisions) if revisions not in (None, "", "all") else entries
        out = []
        for i, entry in enumerate(chosen):
            src, rev = _split_at(entry)
            local = os.path.isdir(src)
            out.append(Checkpoint(
                model=name, revision=entry, source=os.path.abspath(src) if local else src,
                hub_revision=None if local else rev, step=None, tokens=None, order=i,
            ))
        return out

    path = Path(model).expanduser()
    if path.is_dir():
        key = str(path.resolve())  # the store key: the same folder however it is typed
        if is_model_folder(path):
            step, tokens = parse_revision(path.name)
            return [Checkpoint(model=series_name or key, revision="main", source=str(path.resolve()),
                               hub_revision=None, step=step, tokens=tokens, order=0)]
        subs = [p for p in path.iterdir() if p.is_dir() and is_model_folder(p)]
        broken = sorted(p.name for p in path.iterdir() if p.is_dir() and not is_model_folder(p)
                        and parse_revision(p.name)[0] is not None)
        if subs and broken:  # named like checkpoints but not loadable: say so, do not drop them silently
            warnings.warn(f"[resolve_checkpoints] {len(broken)} sub-folder(s) of {str(path)!r} named like "
                          f"checkpoints hold no config.json and are left out: {', '.join(broken[:8])}"
                          f"{' ...' if len(broken) > 8 else ''}", stacklevel=2)
        if not subs:
            raise ValueError(
                f"[resolve_checkpoints] {str(path)!r} is neither a model folder (no config.json) nor a folder "
                "of checkpoint sub-folders (none holds a config.json)"
            )
        names = sorted((p.name for p in subs), key=revision_sort_key)
        names = select_revisions(names, revisions)
        out = []
        for i, n in enumerate(names):
            step, tokens = parse_revision(n)
            out.append(Checkpoint(model=series_name or key, revision=n, source=str((path / n).resolve()),
                                  hub_revision=None, step=step, tokens=tokens, order=i))
        return out

    if os.path.sep in str(model) and (str(model).startswith((".", "/", "~")) or str(model).count("/") > 1):
        raise FileNotFoundError(f"[resolve_checkpoints] no such folder: {str(model)!r}")
    model_id, pinned = _split_at(str(model))
    if pinned is not None:
        revs = [pinned]
    else:
        revs = _hub_revisions(model_id, revisions, local_files_only)
    out = []
    for i, r in enumerate(revs):
        step, tokens = parse_revision(r)
        out.append(Checkpoint(model=series_name or model_id, revision=r, source=model_id,
                              hub_revision=r, step=step, tokens=tokens, order=i))
    return out


def weights_fingerprint(source: str) -> str | None:
    """A local model folder's weight files as a short hex digest of their names, sizes and
    modification times (stat calls only: no file is read), or None for a hub source or a folder
    without weight files. Rewriting a checkpoint in place (a run retrained into the same folders)
    changes it; copying a folder without keeping times changes it too, which costs a recomputation,
    never a stale result."""
    import hashlib

    path = Path(str(source)).expanduser()
    if not path.is_dir():
        return None
    entries = []
    for f in sorted(path.iterdir()):
        name = f.name
        if name.endswith(_WEIGHT_NAMES):
            try:
                st = f.stat()
            except OSError:
                continue
            entries.append(f"{name}\t{st.st_size}\t{st.st_mtime_ns}")
    if not entries:
        return None
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:20]
