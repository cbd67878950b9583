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

Training stages (OLMo-2). Stage 1 is the pretraining run. A later stage restarts its step and token
counters, and its *ingredients* (``stage2-ingredient1``, ``stage2-ingredient2``, ...) are parallel
runs on different data mixes, each starting from the end of stage 1, so several share step numbers.
They are never mixed into stage 1's curve: each later-stage series (an ingredient, or a stage
without ingredients) is a series of its own, store key ``'<model> [stage2-ingredient1]'`` (the
revision stays the branch name), whose checkpoints continue after the end of the stage before:
global step = that stage's last step + the stage-local step, tokens likewise (None where either is
unknown). Where that start is not known (the hub's branch list was not read: offline, a pinned
revision without network; no revision of the stage before is listed; a stage following several
parallel ingredients), the series keeps its stage-local step and tokens under the key
``'<model> [stage2-ingredient1 local steps]'``, with a warning: rows whose steps mean something
else never share a key, and one checkpoint maps to one key on every run that knows as much.
``stage_starts`` (``geomfast trace --stage-start 2=stage1-step…``) tells a run where a stage
starts when its list does not. See :func:`resolve_checkpoints`.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Checkpoint",
    "pythia_revisions",
    "parse_revision",
    "revision_sort_key",
    "revision_stage",
    "revision_series",
    "select_revisions",
    "check_selector",
    "resolve_checkpoints",
    "stage_starts_of",
    "is_model_folder",
    "weights_fingerprint",
]

# What from_pretrained reads the weights from (sharded or not); their index files too.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_WEIGHT_NAMES = _WEIGHT_SUFFIXES + tuple(s + ".index.json" for s in _WEIGHT_SUFFIXES)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a series.

    model: series name used as the store key (hub id, local folder path, or series name); a
        later training stage is a series of its own: ``'<hub id or folder> [stage2-ingredient1]'``
        (``'... [stage2-ingredient1 local steps]'`` when its start is not known).
    revision: revision name ('step1000', 'stage1-step1000-tokens5B',
        'stage2-ingredient1-step1000-tokens5B'), sub-folder name, 'main', or a model id for
        post-training series.
    source: what ``from_pretrained`` loads: hub id or local folder.
    hub_revision: revision passed to ``from_pretrained`` (None for local folders).
    step, tokens: parsed from the revision name when it carries them; for a later stage, global
        (the end of the stage before + the stage-local numbers) when that end is known.
    order: position in the resolved list (0-based): stage 1 by step, then each later-stage
        series (stage, ingredient) by step.
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
_STAGE_RE = re.compile(r"(?<![a-z])stage[-_]?(\d+)", re.IGNORECASE)
_INGREDIENT_RE = re.compile(r"(?<![a-z])ingredient[-_]?(\d+)", re.IGNORECASE)
_TOKEN_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_revision(name: str) -> tuple[int | None, int | None]:
    """(step, tokens) from a revision or folder name; None for what the name does not carry.

    >>> parse_revision("stage1-step1000-tokens5B")
    (1000, 5000000000)
    >>> parse_revision("main")
    (None, None)

    A bare number (a folder called ``1000``) is read as a step. The numbers are the name's own:
    for a later training stage (``stage2-ingredient1-step1000-tokens5B``) they count from the
    start of that stage; :func:`resolve_checkpoints` places such a checkpoint after stage 1.
    """
    name = _base_name(name)
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


def _base_name(name) -> str:
    return str(name).strip().rstrip("/").rsplit("/", 1)[-1]


def revision_stage(name: str) -> tuple[int | None, int | None]:
    """(stage, ingredient) from a revision or folder name; None for what the name does not carry.

    >>> revision_stage("stage2-ingredient1-step1000-tokens5B")
    (2, 1)
    >>> revision_stage("step1000-tokens4B")
    (None, None)
    """
    base = _base_name(name)
    stage = _STAGE_RE.search(base)
    ingredient = _INGREDIENT_RE.search(base)
    return (int(stage.group(1)) if stage else None, int(ingredient.group(1)) if ingredient else None)


def revision_series(name: str) -> str | None:
    """The training series a revision belongs to: None for the pretraining run (no stage, or
    stage 0 or 1, no ingredient), else a canonical label: ``'stage2-ingredient1'``, ``'stage2'``,
    ``'stage3'`` (and, should a name carry one, ``'stage1-ingredient2'`` or ``'ingredient2'``).

    >>> revision_series("stage2_ingredient1-step1000-tokens5B")
    'stage2-ingredient1'
    >>> revision_series("stage1-step1000-tokens5B") is None
    True
    """
    stage, ingredient = revision_stage(name)
    if ingredient is None and (stage is None or stage <= 1):
        return None
    parts = ([] if stage is None else [f"stage{stage}"]) + ([] if ingredient is None else [f"ingredient{ingredient}"])
    return "-".join(parts)


def revision_sort_key(name: str) -> tuple:
    """Training order of revision names: stage, ingredient, step; names without a step last."""
    step, tokens = parse_revision(name)
    stage, ingredient = revision_stage(name)
    return (
        0 if step is not None else 1,
        stage if stage is not None else 0,
        ingredient if ingredient is not None else 0,
        step if step is not None else 0,
        tokens if tokens is not None else 0,
        name,
    )


# ----------------------------------------------------------------------------- stages

@dataclass(frozen=True)
class _Placed:
    """Where a revision sits: its series (None: the pretraining run), its step and tokens (global
    for a later stage whose start is known), and whether they are stage-local instead."""

    series: str | None
    step: int | None
    tokens: int | None
    local: bool = False


def stage_starts_of(starts) -> dict[int, tuple[int, int | None]]:
    """``stage_starts`` checked and read: {stage k >= 2: (step, tokens)} where stage k starts (the
    end of stage k-1), each given as a revision name that carries a step (``'stage1-step1000-tokens5B'``,
    ``'step1000'``), a step, or a (step, tokens) pair (tokens may be None)."""
    if starts is None:
        return {}
    if not isinstance(starts, Mapping):
        raise ValueError(f"[resolve_checkpoints] stage_starts must be a mapping {{stage: start}}, got "
                         f"{type(starts).__name__}")
    out = {}
    for k, v in starts.items():
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"[resolve_checkpoints] stage_starts: expected a stage number >= 2 (stage 1 starts "
                             f"at step 0), got {k!r}")
        if isinstance(v, str):
            step, tokens = parse_revision(v)
            if step is None:
                raise ValueError(f"[resolve_checkpoints] stage_starts[{k}]: expected a revision name carrying a "
                                 f"step (e.g. 'stage{k - 1}-step1000-tokens5B'), got {v!r}")
        elif isinstance(v, (tuple, list)) and len(v) == 2:
            step, tokens = v
        else:
            step, tokens = v, None
        for what, x, none_ok in (("step", step, False), ("tokens", tokens, True)):
            if x is None and none_ok:
                continue
            if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                raise ValueError(f"[resolve_checkpoints] stage_starts[{k}]: expected a {what} that is an int >= 0, "
                                 f"got {x!r}")
        out[k] = (step, tokens)
    return out


def _place(revs: list[str], *, complete: bool = True,
           starts: Mapping[int, tuple[int, int | None]] | None = None, folder: bool = False
           ) -> tuple[dict[str, _Placed], list[tuple[list[str], int, str]]]:
    """Each revision's series, step and tokens. A stage k >= 2 starts at the end (highest step)
    of stage k-1: its checkpoints get that end's step and tokens added to their own. ``complete``:
    ``revs`` is the full list of the run's revisions (the hub's branch list, a run folder); when
    it is not (offline, the local cache; a pinned revision) where stage 1 ends is not known.
    ``starts`` (see :func:`stage_starts_of`): where the user says stage k starts. Where the list
    tells it too, the two must agree (ValueError), unless the list is a ``folder``'s, which may
    hold only some of stage k-1's checkpoints: there the user's start is used, with a warning.

    Returns the placements and, for each stage left with local steps, (its series, the stage,
    why) for the caller's warning."""
    starts = starts or {}
    parsed = {r: parse_revision(r) for r in revs}
    stage_of = {r: revision_stage(r)[0] for r in revs}
    series_of = {r: revision_series(r) for r in revs}
    out: dict[str, _Placed] = {}
    for r in revs:
        st = stage_of[r]
        if st is None or st <= 1:
            out[r] = _Placed(series_of[r], *parsed[r])

    def end_of(names: list[str]) -> tuple[int, int | None] | None:
        ends = [(out[r].step, out[r].tokens) for r in names if out[r].step is not None]
        return max(ends, key=lambda e: (e[0], -1 if e[1] is None else e[1])) if ends else None

    if not complete:
        prev: tuple[tuple[int, int | None] | None, str] = (
            None, "the full list of revisions was not read (offline, or a pinned revision without "
                  "the hub's branch list)")
    else:
        first = end_of([r for r in out if series_of[r] is None])
        prev = (first, "" if first is not None else "no stage-1 revision with a step is listed")
    notes = []
    later = sorted({st for st in stage_of.values() if st is not None and st >= 2})
    done = 1
    for k in later:
        if k != done + 1:
            prev = (None, f"no stage-{k - 1} revision is listed")
        start, why = prev
        if k in starts:
            given = starts[k]
            if start is not None and (start[0] != given[0] or (
                    start[1] is not None and given[1] is not None and start[1] != given[1])):
                msg = (f"stage_starts[{k}] is step {given[0]}, tokens {given[1]}, but the listed "
                       f"revisions end stage {k - 1} at step {start[0]}, tokens {start[1]}")
                if not folder:
                    raise ValueError(f"[resolve_checkpoints] {msg}")
                warnings.warn(f"[resolve_checkpoints] {msg} (the folder's last stage-{k - 1} checkpoint): "
                              f"placing stage {k} at the start given", stacklevel=4)
                start = given
            else:
                start = (given[0], given[1] if given[1] is not None else start[1] if start else None)
        names = [r for r in revs if stage_of[r] == k]
        for r in names:
            step, tokens = parsed[r]
            if start is None:
                out[r] = _Placed(series_of[r], step, tokens, local=True)
            else:
                out[r] = _Placed(series_of[r], None if step is None else start[0] + step,
                                 None if tokens is None or start[1] is None else start[1] + tokens)
        labels = sorted({series_of[r] for r in names}, key=str)
        if start is None:
            notes.append((labels, k, why))
            prev = (None, f"stage {k}'s own start is not known")
        elif len(labels) > 1:
            prev = (None, f"stage {k} has {len(labels)} parallel series ({', '.join(labels)}), any of "
                          f"which stage {k + 1} may continue")
        else:
            end = end_of(names)
            prev = (end, "" if end is not None else f"no stage-{k} revision with a step is listed")
        done = k
    return out, notes


def _series_key(base: str, placed: _Placed | None) -> str:
    """The store key of a checkpoint's series: ``base`` for the pretraining run."""
    if placed is None or placed.series is None:
        return base
    return f"{base} [{placed.series}{' local steps' if placed.local else ''}]"


def _warn_local(base: str, notes, chosen: list[str], placed: dict[str, _Placed]) -> None:
    present = {placed[r].series for r in chosen if r in placed and placed[r].local}
    for labels, k, why in notes:
        labels = [x for x in labels if x in present]
        if not labels:
            continue
        keys = ", ".join(repr(f"{base} [{x} local steps]") for x in labels)
        warnings.warn(
            f"[resolve_checkpoints] {base}: {', '.join(labels)} start(s) at the end of stage {k - 1}, which "
            f"is not known ({why}): traced with their own stage-local steps and tokens, as the series "
            f"{keys}, apart from stage {k - 1}. Resolve them from the full list (online, or a folder "
            f"holding stage {k - 1}), or say where stage {k - 1} ends (stage_starts={{{k}: REVISION}}; "
            f"geomfast trace --stage-start {k}=REVISION, e.g. {k}=stage{k - 1}-step1000-tokens5B), to place "
            "them after it.", stacklevel=3)


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


def _near(revs: list[str]) -> str:
    return ", ".join(revs[:3] + (["..."] if len(revs) > 3 else []))


def _paper_keep(revs: list[str], placed: dict[str, _Placed]) -> list[str]:
    # The paper sampled pretraining: the run's own series (stage 1, or no stage) only.
    named = [r for r in revs if r != "main" and placed[r].series is None]
    steps = _steps_of(named, "paper")
    if any(_TOKENS_RE.search(r) or _STAGE_RE.search(r) for r in named):
        # OLMo / OLMo-2: every step <= 10,000 and multiples of 10,000 after that.
        keep = [r for r, s in zip(named, steps) if s <= 10_000 or s % 10_000 == 0]
    else:
        # Pythia: {0, 8, 16, ..., 512} (powers of two) and every 1000 steps.
        keep = [r for r, s in zip(named, steps) if s == 0 or 8 <= s <= 512 or (s >= 1000 and s % 1000 == 0)]
    if not keep:
        raise ValueError(
            f"[select_revisions] 'paper' selects no checkpoint among {len(revs)} revision(s) ({_near(revs)}): "
            "it samples the pretraining run's step revisions (Pythia: step 0, 8 ... 512 and every 1000; "
            "OLMo / OLMo-2 stage 1: every step <= 10,000 and multiples of 10,000), and "
            + ("none of them is one" if named else
               "only later training stages are listed (trace those with the other selectors or by name)"
               if any(placed[r].series is not None for r in revs) else "none of them names a step"))
    return keep


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
      - 'paper': the paper's sampling of pretraining (Pythia: {0, 8, ..., 512} and every 1000;
        OLMo / OLMo-2 names with 'tokens' or a stage: every step <= 10,000 and multiples of
        10,000, of stage 1 only);
      - a comma list of revision names and/or steps ('step1000,2000,main').

    Training stages (see :func:`resolve_checkpoints`): 'every:K' and 'log:N' sample each series
    (stage 1, each later-stage ingredient) on its own, 'log:N' by the series' own steps; steps in
    'range:A-B' and in a comma list are global (a later stage's count after the end of stage 1),
    so ``range:0-10000`` is early pretraining only. A selection that keeps nothing is an error.
    The result keeps the order of ``revs``.
    """
    return _select(list(revs), selector, _place(list(revs))[0])


def check_selector(selector: str | None) -> None:
    """Refuse a selector that is blank (``''``, ``' '``: it used to mean 'all') or a comma list
    with an empty item (``','``, ``'step0,,'``: it kept nothing, or ignored the gap), before
    anything is listed (ValueError)."""
    if selector is None:
        return
    sel = str(selector)
    if not sel.strip():
        raise ValueError(f"[select_revisions] expected a selection (all, paper, every:K, log:N, range:A-B, or a "
                         f"comma list of names/steps), got a blank one {sel!r}; leave it out for all")
    items = sel.split(",")
    if len(items) > 1 and not all(w.strip() for w in items):
        which = [i + 1 for i, w in enumerate(items) if not w.strip()]
        many = len(which) > 1
        raise ValueError(f"[select_revisions] expected a comma list of revision names or steps, got {sel!r}, "
                         f"whose item{'s' if many else ''} {', '.join(map(str, which))} (of {len(items)}) "
                         f"{'are' if many else 'is'} empty")


def _select(revs: list[str], selector: str | None, placed: dict[str, _Placed]) -> list[str]:
    check_selector(selector)
    if selector is None:
        return revs
    sel = str(selector).strip()
    low = sel.lower()
    if low in ("", "all"):
        return revs
    if low == "paper":
        return _paper_keep(revs, placed)
    groups: dict[tuple, list[str]] = {}
    for r in revs:
        groups.setdefault((placed[r].series, placed[r].local), []).append(r)
    if low.startswith("every:"):
        try:
            k = int(sel.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"[select_revisions] expected 'every:K' with an integer K, got {sel!r}") from None
        if k <= 0:
            raise ValueError(f"[select_revisions] 'every:K' needs K >= 1, got {k}")
        keep: set[str] = set()
        for g in groups.values():
            keep.update(g[::k])
            keep.add(g[-1])
        return [r for r in revs if r in keep]
    if low.startswith("log:"):
        try:
            n = int(sel.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"[select_revisions] expected 'log:N' with an integer N, got {sel!r}") from None
        if n <= 0:
            raise ValueError(f"[select_revisions] 'log:N' needs N >= 1, got {n}")
        keep = set()
        for g in groups.values():
            keep.update(_log_keep(g, n))
        return [r for r in revs if r in keep]
    if low.startswith("range:"):
        m = re.fullmatch(r"\s*(\d*)\s*-\s*(\d*)\s*", sel.split(":", 1)[1])
        if not m or (not m.group(1) and not m.group(2)):
            raise ValueError(f"[select_revisions] expected 'range:A-B' with steps A and B, got {sel!r}")
        a = int(m.group(1)) if m.group(1) else -1
        b = int(m.group(2)) if m.group(2) else math.inf
        if a > b:
            raise ValueError(f"[select_revisions] expected 'range:A-B' with A <= B, got {sel!r}")
        named = [r for r in revs if placed[r].step is not None]
        kept = [r for r in named if a <= placed[r].step <= b]  # type: ignore[operator]
        if not kept:
            steps = sorted(placed[r].step for r in named)  # type: ignore[type-var]
            raise ValueError(f"[select_revisions] {sel!r} selects no checkpoint (steps "
                             f"{f'{steps[0]}..{steps[-1]}' if steps else 'none'} available)")
        return kept
    # A comma list of names and/or steps.
    wanted = [w.strip() for w in sel.split(",") if w.strip()]
    by_step: dict[int, list[str]] = {}
    for r in revs:
        s = placed[r].step
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
            raise ValueError(
                f"[select_revisions] no revision {w!r} among {len(revs)} ({_near(revs)}); "
                "expected a name, a step, or one of all, every:K, log:N, range:A-B, paper"
            )
    return [r for r in revs if r in keep_set] + [e for e in extra if e not in keep_set]


# ----------------------------------------------------------------------------- sources

def is_model_folder(path: str | os.PathLike) -> bool:
    """A folder from_pretrained can load (it holds a config.json)."""
    return (Path(path) / "config.json").is_file()


def _env_on(var: str) -> bool:
    """Whether the environment variable ``var`` says yes (1, true, yes, on), as the HF libraries read it."""
    return os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")


def _offline(local_files_only: bool) -> bool:
    if local_files_only:
        return True
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _env_on(var):
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


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _names(names: list[str], head: int = 4, tail: int = 2) -> str:
    if len(names) <= head + tail:
        return ", ".join(names)
    return ", ".join(names[:head] + ["..."] + names[-tail:])


def _hub_listing(model_id: str, local_files_only: bool) -> tuple[list[str], bool, str]:
    """The revisions of a hub model: (names, complete, how), ``complete`` when they are the hub's
    branch list, ``how`` where they come from, for messages."""
    if not _offline(local_files_only):
        try:
            names = _list_hub_branches(model_id)
        except Exception as err:  # network down, no access: fall back below
            warnings.warn(f"[resolve_checkpoints] could not list the branches of {model_id!r} ({err}); "
                          "falling back to the known schedule / local cache", stacklevel=3)
            how = f"the hub's branch list could not be read ({err})"
        else:
            names = sorted(names, key=revision_sort_key)
            return names, True, f"the hub lists {_count(len(names), 'branch', 'branches')}: {_names(names)}"
    else:
        how = ("offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE or local_files_only), so the hub's "
               "branch list was not read")
    if _is_pythia(model_id):
        return pythia_revisions(), False, f"{how}; Pythia's known schedule of 154 revisions is used"
    names = sorted(_cached_revisions(model_id), key=revision_sort_key)
    cached = (f"the local cache holds {_count(len(names), 'revision', 'revisions')} of it: {_names(names)}"
              if names else "the local cache holds no revision of it")
    return names, False, f"{how}; {cached}"


def _hub_checkpoint_names(model_id: str, selector: str | None, local_files_only: bool,
                          starts: Mapping[int, tuple[int, int | None]] | None = None
                          ) -> tuple[list[str], dict[str, _Placed], list]:
    """The selected revisions of a hub model, their placements and the notes on later stages
    left with local steps (see :func:`_place`)."""
    listed, complete, how = _hub_listing(model_id, local_files_only)
    stepped = [r for r in listed if parse_revision(r)[0] is not None]
    # 'main' duplicates the final checkpoint of a series; keep it only when named.
    revs = sorted(stepped, key=revision_sort_key) if stepped else ["main"]
    placed, notes = _place(revs, complete=complete, starts=starts)
    try:
        chosen = _select(revs, selector, placed)
    except ValueError as err:
        if complete or not _is_name_list(selector):
            msg = str(err).removeprefix("[select_revisions] ")
            raise ValueError(f"[resolve_checkpoints] {model_id!r} --revisions {selector!r}: {msg}; {how}") from None
        # Offline without the branch list: trust the names the user gave.
        names = [w.strip() for w in str(selector).split(",") if w.strip()]
        chosen = sorted(dict.fromkeys(names), key=revision_sort_key)
        placed, notes = _place(chosen, complete=False, starts=starts)
        return chosen, placed, notes
    if not chosen:
        raise ValueError(f"[resolve_checkpoints] {model_id!r} --revisions {selector!r} selects no checkpoint; {how}")
    if not stepped and not complete and not _is_name_list(selector):
        warnings.warn(f"[resolve_checkpoints] {model_id!r}: {how}; so its training checkpoints (step "
                      "revisions), if it has any, are not known and only 'main' is traced. List them "
                      "online, or name the revisions to trace.", stacklevel=3)
    return chosen, placed, notes


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


def _shown(model) -> str:
    return repr(model) if isinstance(model, str) else " -> ".join(map(str, model))


def _refuse_file(entry: str) -> None:
    """A model given as a path to a file (transformers would read it as a config file): say so,
    rather than 'no such folder' or a JSON error at each load."""
    path = Path(entry).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"[resolve_checkpoints] model {entry!r} is a file, not a folder: expected a model folder (holding "
            "config.json), a folder of checkpoint sub-folders, or a hub id")


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
    stage_starts: Mapping[int, str | int | tuple[int, int | None]] | None = None,
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
    revisions: a selector, see :func:`select_revisions`. One that selects nothing is a
        ValueError naming the model, the selector and the revisions found (and, offline, that
        the hub's branch list was not read); offline, a hub id other than Pythia's with no step
        revision in the local cache resolves to 'main' alone, with a warning.

    Training stages (OLMo-2 ``stage1-...``, ``stage2-ingredient1-...``): stage 1 is the
    pretraining series, keyed by the model (``series_name`` or the hub id / resolved folder);
    each later-stage series (an ingredient, or a stage without ingredients) is a series of its
    own, ``model='<key> [stage2-ingredient1]'``, revision and hub_revision the branch name, whose
    step and tokens continue after the end of the stage before (its highest step in the full
    list of revisions: the hub's branch list, or the folder's sub-folders; stage 3 after a
    single stage-2 series). Where that end is not known (offline or a pinned revision without
    the branch list, no revision of the stage before, a stage after several parallel
    ingredients) the series keeps its stage-local step and tokens under
    ``'<key> [stage2-ingredient1 local steps]'``, with a warning, unless ``stage_starts`` says
    where it starts: ``{2: 'stage1-step1000-tokens5B'}`` (a revision name carrying the step, and
    the tokens if known, of stage 1's end), a step, or (step, tokens); where the list tells the
    end too, the two must agree (ValueError). 'paper' keeps stage 1 only.
    A pinned later-stage revision ('id@stage2-...') reads the branch list (online) to be placed.
    ``order`` runs over the whole list: stage 1 by step, then each later series by step.
    """
    starts = stage_starts_of(stage_starts)
    try:
        check_selector(revisions)  # before any listing, whatever the source
    except ValueError as err:
        raise ValueError(f"[resolve_checkpoints] {_shown(model)} --revisions {revisions!r}: "
                         f"{str(err).removeprefix('[select_revisions] ')}") from None
    if isinstance(model, str):
        parts = _split_series(model)
        if parts is not None:
            model = parts
    if not isinstance(model, str):
        # local folders by their resolved path: './run' typed in two places is two models, and
        # '/abs/run' and './run' are one
        for m in model:
            _refuse_file(_split_at(str(m))[0])
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
        everything = sorted((p.name for p in subs), key=revision_sort_key)
        # the folder is the run: the end of its stage 1 places its later stages
        placed, notes = _place(everything, complete=True, starts=starts, folder=True)
        try:
            names = _select(everything, revisions, placed)
        except ValueError as err:
            msg = str(err).removeprefix("[select_revisions] ")
            raise ValueError(f"[resolve_checkpoints] {str(path)!r} --revisions {revisions!r}: {msg}; its "
                             f"{_count(len(everything), 'checkpoint sub-folder', 'checkpoint sub-folders')}: "
                             f"{_names(everything)}") from None
        base = series_name or key
        _warn_local(base, notes, names, placed)
        out = []
        for i, n in enumerate(names):
            p = placed[n]
            out.append(Checkpoint(model=_series_key(base, p), revision=n, source=str((path / n).resolve()),
                                  hub_revision=None, step=p.step, tokens=p.tokens, order=i))
        return out

    _refuse_file(str(model))
    if os.path.sep in str(model) and (str(model).startswith((".", "/", "~")) or str(model).count("/") > 1):
        raise FileNotFoundError(f"[resolve_checkpoints] no such folder: {str(model)!r}")
    model_id, pinned = _split_at(str(model))
    base = series_name or model_id
    if pinned is not None:
        revs = [pinned]
        placed, notes = _place(revs, complete=False, starts=starts)
        if placed[pinned].local:  # a later stage: where it starts is in the branch list
            listed, complete, _ = _hub_listing(model_id, local_files_only)
            if complete:
                full = sorted(set(listed) | {pinned}, key=revision_sort_key)
                placed, notes = _place(full, complete=True, starts=starts)
    else:
        revs, placed, notes = _hub_checkpoint_names(model_id, revisions, local_files_only, starts)
    _warn_local(base, notes, revs, placed)
    out = []
    for i, r in enumerate(revs):
        p = placed.get(r) or _Placed(None, *parse_revision(r))
        out.append(Checkpoint(model=_series_key(base, p), revision=r, source=model_id,
                              hub_revision=r, step=p.step, tokens=p.tokens, order=i))
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
