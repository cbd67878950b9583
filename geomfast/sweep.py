"""The sweep runner: trace a model's representation geometry across checkpoints and layers.

``trace()`` resolves the checkpoints, loads the samples once per tokenizer (the same samples
for every checkpoint), then for each checkpoint not already in the results database: loads
the model (the next one loads in a background thread while the current one computes),
extracts one ``GramAccumulator`` per requested layer × pooling in a single forward pass,
computes the spectrum and every metric, and commits each (checkpoint, layer, pooling) result
with its spectra in one transaction. A checkpoint that fails is recorded with its error and
the sweep goes on. Re-running the same command resumes: finished work is skipped and, thanks
to the store's UNIQUE key, nothing is ever duplicated — even after a SIGKILL.

The work is split into three functions so that data-parallel or checkpoint-parallel modes
(torch.distributed) can reuse them:

- :func:`load_checkpoint` — checkpoint -> model (on the device) + its samples;
- :func:`extract_checkpoint` — model + samples -> ``{(layer, pooling): GramAccumulator}``
  (the accumulators are sums: ranks can all-reduce / merge them before the next step);
- :func:`finalize` — accumulator -> (metrics, spectra), then :meth:`ResultStore.write_result`.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import sys
import time
import traceback
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ._paths import check_output_database
from .data import DatasetError, check_dataset
from .store import ResultStore, options_hash

__all__ = [
    "PRESETS",
    "TraceConfig",
    "TraceSummary",
    "make_config",
    "trace",
    "load_checkpoint",
    "extract_checkpoint",
    "finalize",
    "LoadedCheckpoint",
]

# What the paper's code did (Li et al. 2025, METRICS.md): final layer after the final norm,
# last non-padding token, fp16 weights, 15,000 sequences longer than 32 tokens truncated to
# 512, RankMe on the top-2048 covariance explained-variance ratios, α fitted on 0-based
# indices 11..99. ``min_length`` is exclusive (data.load_samples keeps MORE than 32 tokens).
PRESETS: dict[str, dict[str, Any]] = {
    "li2025": {
        "layers": "last",
        "pooling": "last",
        "dtype": "float16",
        "n_samples": 15000,
        "min_length": 32,
        "max_length": 512,
        "fit_range": (11, 100),
        "eps": 1e-7,
        "spectrum_method": "full",
    },
}

# Defaults when neither the preset nor a flag says otherwise.
DEFAULTS: dict[str, Any] = {
    "layers": "last",
    "pooling": "last",
    "dtype": "float32",
    "n_samples": 1000,
    "min_length": 0,
    "max_length": None,
    "fit_range": (11, 100),
    "eps": 1e-7,
    "spectrum_method": "full",
    "seed": 0,
    "precision": "highest",
    "batch_size": 32,
    "device": "cpu",
    "padding_side": "right",
    "accumulate_on": "auto",
}


@dataclass(frozen=True)
class TraceConfig:
    """Everything a sweep needs, after the preset and explicit options are merged."""

    models: tuple[str, ...]
    dataset: str
    out: str
    revisions: str | None = None
    layers: tuple[str, ...] = ("last",)
    poolings: tuple[str, ...] = ("last",)
    n_samples: int = 1000
    seed: int = 0
    min_length: int = 0
    max_length: int | None = None
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 32
    precision: str = "highest"
    padding_side: str = "right"
    preset: str | None = None
    fit_range: tuple[int, int] = (11, 100)
    eps: float = 1e-7
    spectrum_method: str = "full"
    trust_remote_code: bool = False
    local_files_only: bool = False
    # where later training stages start: ((stage, step, tokens or None), …); see resolve_checkpoints
    stage_starts: tuple[tuple[int, int, int | None], ...] = ()
    device_map: str | None = None
    # where the Gram states live: 'model' (each activation's own device) or 'cpu' (host memory;
    # make_config resolves 'auto': the model's device where geomfast's backend for it can run)
    accumulate_on: str = "auto"
    # (index, count): this process traces every count-th checkpoint from the index-th (0-based)
    # of the resolved list, e.g. one job of a SLURM array; the shards' databases merge into one
    shard: tuple[int, int] | None = None
    progress: bool = True
    prefetch: bool = True

    def result_options(self) -> dict[str, Any]:
        """The options that change the numbers: hashed, so a different config is not 'done'. A
        local dataset file counts by its content too (an edited file is a new dataset)."""
        from .data import SYNTHETIC_NAMES, dataset_fingerprint

        extra = {}
        if self.dataset not in SYNTHETIC_NAMES and os.path.isfile(self.dataset):
            extra["dataset_sha256"] = dataset_fingerprint(self.dataset)
        return {
            **extra,
            "dataset": self.dataset,
            "n_samples": self.n_samples,
            "seed": self.seed,
            "min_length": self.min_length,
            "max_length": self.max_length,
            "dtype": self.dtype,
            "precision": self.precision,
            "preset": self.preset,
            "fit_range": list(self.fit_range),
            "eps": self.eps,
            "spectrum_method": self.spectrum_method,
        }

    def request(self) -> str:
        """The layer × pooling request, canonical (the checkpoint-level resume key)."""
        return json.dumps({"layers": list(self.layers), "poolings": list(self.poolings)},
                          separators=(",", ":"))


@dataclass
class TraceSummary:
    db: str
    checkpoints: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    rows_written: int = 0
    seconds: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)
    derived: int = 0  # rows written from stored spectra (derive_from_stored_spectra), no model

    def __str__(self) -> str:
        derived = f" (and {self.derived} derived from stored spectra)" if self.derived else ""
        s = (f"{self.checkpoints} checkpoint(s): {self.ok} traced, {self.skipped} already done, "
             f"{self.failed} failed; {self.rows_written} row(s) written{derived} to {self.db} "
             f"in {self.seconds:.1f} s")
        for rev, err in self.errors:
            s += f"\n  error at {rev}: {err}"
        return s


def _split_spec(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        items: list[str] = []
        for v in value:
            items.extend(_split_spec(v))
        return tuple(items)
    return tuple(s.strip() for s in str(value).split(",") if s.strip())


def make_config(*, model, dataset=None, out, preset: str | None = None, **options) -> TraceConfig:
    """Merge DEFAULTS < preset < explicit options (``None`` means "not given")."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"[trace] unknown preset {preset!r}; known: {sorted(PRESETS)}")
    merged: dict[str, Any] = dict(DEFAULTS)
    if preset is not None:
        merged.update(PRESETS[preset])
    merged.update({k: v for k, v in options.items() if v is not None})
    if dataset is None:
        raise ValueError("[trace] dataset is required (a local .txt/.jsonl/.parquet file, a hub "
                         "dataset id, or 'synthetic')")
    models = (model,) if isinstance(model, str) else tuple(model)
    if not models:
        raise ValueError("[trace] at least one model is required")
    pooling = merged.pop("pooling")
    layers = merged.pop("layers")
    fit_range = tuple(int(v) for v in merged.pop("fit_range"))
    layers, poolings = _split_spec(layers), _split_spec(pooling)
    _validate_request(layers, poolings)
    _validate_options(merged, fit_range)
    merged["accumulate_on"] = _resolve_accumulate_on(merged)
    if merged.get("shard") is not None:
        merged["shard"] = parse_shard(merged["shard"])
    # what would fail alike for every checkpoint (an unreadable file, a hub id offline)
    dataset = check_dataset(dataset, local_files_only=bool(merged.get("local_files_only")))
    if "stage_starts" in merged:
        from .checkpoints import stage_starts_of

        merged["stage_starts"] = tuple((k, *v) for k, v in sorted(stage_starts_of(merged["stage_starts"]).items()))
    known = {f.name for f in dataclasses.fields(TraceConfig)}
    unknown = set(merged) - known
    if unknown:
        raise TypeError(f"[trace] unknown option(s): {sorted(unknown)}")
    return TraceConfig(models=models, dataset=str(dataset), out=str(out), preset=preset,
                       layers=layers, poolings=poolings, fit_range=fit_range, **merged)


def _validate_options(opts: dict, fit_range: tuple[int, ...]) -> None:
    """Refuse bad numbers and devices before any model is loaded (not once per checkpoint)."""
    def at_least(name: str, least: int, what: str = "") -> None:
        v = opts.get(name)
        if v is not None and int(v) < least:
            raise ValueError(f"[trace] {name} must be >= {least}{what}, got {v}")

    at_least("n_samples", 2, " (a covariance needs two rows)")
    at_least("batch_size", 1)
    at_least("max_length", 1)
    at_least("min_length", 0)
    at_least("seed", 0, " (numpy's generators take non-negative seeds)")
    from .metrics import _check_fit_range

    _check_fit_range("trace", fit_range)  # the rule alpha_req applies, before the forward passes
    from .models import check_device

    device = opts.get("device") or "cpu"
    if type(device).__name__ == "device":  # a torch.device
        device = str(device)
    try:
        kind, index = check_device(device)  # 'tpu', 'cuda:abc': torch's error at every load
    except ValueError as e:
        raise ValueError(f"[trace] device {device!r} is not a device geomfast traces on: {e}") from None
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"[trace] device {device!r} needs CUDA, which this torch cannot use "
                             f"(torch {torch.__version__}, torch.cuda.is_available() is False)")
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise ValueError(f"[trace] device {device!r}: expected cuda:0 to cuda:{count - 1} "
                             f"({count} CUDA device(s) here), got index {index}")


def parse_shard(shard) -> tuple[int, int]:
    """(index, count) from 'I/N' or a pair: the I-th of N shards, 0 <= I < N (0-based, as
    SLURM_ARRAY_TASK_ID with --array=0-(N-1), or torch's RANK)."""
    text = shard if isinstance(shard, str) else None
    try:
        if text is not None:
            i, n = (int(p) for p in text.strip().split("/"))
        else:
            i, n = (int(p) for p in shard)
            if any(isinstance(p, bool) or int(p) != p for p in shard):
                raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"[trace] shard must be 'I/N' (the I-th of N shards, from 0), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        hint = " (shards count from 0: the last of N is N-1/N)" if n >= 1 and i == n else ""
        raise ValueError(f"[trace] shard {i}/{n}: expected N >= 1 and 0 <= I < N{hint}")
    return i, n


def shard_checkpoints(checkpoints: Sequence, shard: tuple[int, int] | None) -> list:
    """The checkpoints of one shard: every N-th of the resolved list from the I-th (interleaved,
    so each shard holds early and late checkpoints of every series alike)."""
    if shard is None:
        return list(checkpoints)
    i, n = shard
    return list(checkpoints)[i::n]


ACCUMULATE_ON = ("auto", "model", "cpu")


def _resolve_accumulate_on(opts: dict) -> str:
    """'model' or 'cpu' for the ``accumulate_on`` option. 'auto' (the default) is 'model' unless
    the activations are on a CUDA device that geomfast's CUDA backend cannot use (not built, no
    driver it can run on: ``geomfast.backends()['cuda']['reason']``); then the states are
    accumulated in host memory, with a warning, rather than every checkpoint failing after its
    model loaded. An explicit 'model' there is refused, with the reason."""
    want = opts.get("accumulate_on") or "auto"
    if not isinstance(want, str) or want.lower() not in ACCUMULATE_ON:
        raise ValueError(f"[trace] accumulate_on must be one of {', '.join(ACCUMULATE_ON)}, got {want!r}")
    want = want.lower()
    if want == "cpu":
        return "cpu"
    device = str(opts.get("device") or "cpu")
    on_cuda = device.startswith("cuda")
    if not on_cuda and opts.get("device_map"):
        import torch

        on_cuda = torch.cuda.is_available()  # accelerate places the layers on the GPUs
    if not on_cuda:
        return "model"
    from .linalg import backends

    cuda = backends()["cuda"]
    if cuda["usable"]:
        return "model"
    where = "the model's GPUs" if opts.get("device_map") else repr(device)
    if want == "model":
        raise ValueError(f"[trace] accumulate_on 'model' keeps the Gram states on {where}, but geomfast's CUDA "
                         f"backend cannot run here ({cuda['reason']}); expected accumulate_on 'cpu' (or 'auto'), "
                         "which accumulates them in host memory, or a geomfast built with CUDA "
                         "(GEOMFAST_CUDA=ON, see the README)")
    warnings.warn(f"[trace] geomfast's CUDA backend cannot run here ({cuda['reason']}): the Gram states are "
                  f"accumulated on the CPU (as --accumulate-on cpu) while the model runs on {where}",
                  stacklevel=3)
    return "cpu"


def _validate_request(layers: tuple[str, ...], poolings: tuple[str, ...]) -> None:
    """Refuse a bad layer or pooling before any model is loaded (not once per checkpoint)."""
    from .models import resolve_layers

    if not layers or not poolings:
        raise ValueError("[trace] expected at least one layer and one pooling")
    bad = [p for p in poolings if p.lower() not in ("last", "mean", "all")]
    if bad:
        raise ValueError(f"[trace] pooling must be last, mean or all; got {', '.join(bad)}")
    # Block indices are checked against each model's depth by check_block_indices, from its
    # config, before any weights load; 'all' needs none (expanding it against a stand-in depth
    # of 2^20 blocks took hours).
    named = [x for x in layers if str(x).strip().lower() != "all"]
    if named:
        resolve_layers(1 << 20, named)


# ----------------------------------------------------------------------------- what is left

def static_layer_names(layers: Sequence[str]) -> list[str] | None:
    """The store names of a layer request that needs no model to resolve ('last', 'embed',
    block indices >= 0), or None when it does ('all', negative indices)."""
    from .models import parse_layer

    names: list[str] = []
    for item in layers:
        try:
            kind, index = parse_layer(item)
        except ValueError:  # refused by make_config already; here it only means "load the model"
            return None
        if kind == "all" or (kind == "block" and index < 0):
            return None
        name = f"block{index}" if kind == "block" else kind
        if name not in names:
            names.append(name)
    return names


def _depth_key(checkpoint) -> str:
    """Checkpoints with one key share their depth: the revisions of a hub model, the step*
    sub-folders of a local run. The models of a post-training series each have their own."""
    if checkpoint.hub_revision is not None:
        return checkpoint.source  # the hub id
    parent = os.path.dirname(checkpoint.source)
    return parent if parent == checkpoint.model else checkpoint.source


def check_block_indices(checkpoints, cfg: TraceConfig) -> None:
    """Refuse a block index of ``cfg.layers`` out of range for a model, from the config of its
    first checkpoint (config.json, which the sample loader reads anyway), before any weights
    load: otherwise each checkpoint is loaded only to fail. A config that cannot be read, or
    that does not say its depth, is left to the model's own load."""
    from .models import num_blocks, parse_layer

    indices = []
    for item in cfg.layers:
        kind, index = parse_layer(item)
        if kind == "block":
            indices.append(index)
    if not indices:
        return
    seen: set[str] = set()
    for c in checkpoints:
        key = _depth_key(c)
        if key in seen:
            continue
        seen.add(key)
        try:
            n = num_blocks(_model_config(c, cfg))
        except Exception:  # offline, remote code, a broken config: the load reports it
            continue
        if n is None:
            continue
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise ValueError(
                f"[trace] --layers {','.join(cfg.layers)}: block index {', '.join(map(str, bad))} is out "
                f"of range for {key}, which has {n} blocks: expected {-n}..{n - 1} (negative counts "
                "from the end), or last, embed, all")


# In the options of runs whose tokenizer appends special tokens (an EOS) and that truncate to a
# max_length: their long documents keep the appended tokens (data.tokenize_samples), where earlier
# versions sliced them off. Runs without either keep the hash they always had.
TRUNCATION_KEEPS_SPECIAL = "keeps the special tokens the tokenizer appends"


def _truncation_matters(cfg: TraceConfig) -> bool:
    from .data import SYNTHETIC_NAMES

    return cfg.max_length is not None and cfg.dataset not in SYNTHETIC_NAMES


def run_result_options(cfg: TraceConfig, checkpoints) -> dict[str, Any]:
    """``cfg.result_options()`` plus what only the models' tokenizers tell: when a run truncates
    to ``max_length`` and some model's tokenizer appends special tokens (an EOS), the options say
    ``truncation``, so that the run's rows never count as done from (nor mix with) rows traced
    when truncation sliced the appended tokens off long documents. The tokenizer of each model's
    first requested checkpoint is asked (data.appends_special_tokens). One that cannot be loaded
    here is not counted: its checkpoints then fail to load, and should it load later, the sample
    cache refuses it rather than write rows under this hash (_SampleCache.get)."""
    opts = cfg.result_options()
    if not _truncation_matters(cfg):
        return opts
    from .data import appends_special_tokens

    first: dict[str, Any] = {}
    for c in checkpoints:
        first.setdefault(c.model, c)
    for c in first.values():
        try:
            tok = _tokenizer(c, cfg)
        except Exception:  # reported per checkpoint by load_checkpoint
            continue
        if appends_special_tokens(tok):
            opts["truncation"] = TRUNCATION_KEEPS_SPECIAL
            break
    return opts


def requested_checkpoints(cfg: TraceConfig) -> list:
    """The checkpoints a trace asks for (checkpoints.resolve_checkpoints), its block indices
    checked against their depth (check_block_indices): everything a request is refused for
    before any work, so that a refused trace records no run (sweep and torchrun alike)."""
    from .checkpoints import resolve_checkpoints

    checkpoints = resolve_checkpoints(list(cfg.models) if len(cfg.models) > 1 else cfg.models[0],
                                      cfg.revisions, local_files_only=cfg.local_files_only,
                                      stage_starts={k: (step, tokens) for k, step, tokens in cfg.stage_starts})
    check_block_indices(checkpoints, cfg)  # before any weights load
    if cfg.shard is not None:
        mine = shard_checkpoints(checkpoints, cfg.shard)
        if not mine:
            warnings.warn(f"[trace] shard {cfg.shard[0]}/{cfg.shard[1]} holds no checkpoint: the request "
                          f"resolves to {len(checkpoints)}, fewer than the {cfg.shard[1]} shards", stacklevel=3)
        return mine
    return checkpoints


def drop_stale_results(store: ResultStore, checkpoints, cfg: TraceConfig) -> int:
    """Remove the stored results of local checkpoints whose weight files changed since those
    results were computed (checkpoints.weights_fingerprint; ResultStore.sync_weights), so that
    they are recomputed instead of being reported for weights that no longer exist. Says so on
    stderr. Returns the number of rows removed. Call before reading what is done."""
    from .checkpoints import weights_fingerprint

    prints = {(c.model, c.revision): (c.source, fp) for c in checkpoints if c.hub_revision is None
              for fp in [weights_fingerprint(c.source)] if fp is not None}
    if not prints:
        return 0
    removed = store.sync_weights({key: fp for key, (_, fp) in prints.items()})
    for key, n in removed.items():
        print(f"[geomfast] {prints[key][0]}: its weight files changed since {n} result(s) were stored "
              f"for it in {cfg.out}; those results were removed and are recomputed", file=sys.stderr)
    return sum(removed.values())


def pending_checkpoints(store: ResultStore, checkpoints, cfg: TraceConfig, h: str, request: str,
                        run_id: int | None, keys: set | None = None) -> list:
    """The checkpoints with work left for this request. Beside the checkpoint markers, a request
    whose layer names are known without the model counts a checkpoint done when all its (layer,
    pooling) rows are already stored (from other requests), and marks it: no model is loaded for
    nothing (on the hub, a download per checkpoint). ``keys``: store.done_keys(h), if the caller
    has it already."""
    done = store.done_checkpoints(h, request)
    todo = [c for c in checkpoints if (c.model, c.revision) not in done]
    names = static_layer_names(cfg.layers)
    if names is None or not todo:
        return todo
    keys = store.done_keys(h) if keys is None else keys
    left = []
    for c in todo:
        if all((c.model, c.revision, n, p) in keys for n in names for p in cfg.poolings):
            store.mark_checkpoint_done(c.model, c.revision, h, request, run_id)
        else:
            left.append(c)
    return left


# Options that change only the metrics computed from a spectrum, never the spectrum: results that
# differ from a request in these alone are derived from the stored spectra, with no model.
METRIC_ONLY_OPTIONS = ("fit_range", "eps")


def _canonical(options) -> dict:
    return json.loads(json.dumps(dict(options), sort_keys=True, default=str))


def derive_from_stored_spectra(store: ResultStore, checkpoints, cfg: TraceConfig, result_opts: dict,
                               h: str, request: str, run_id: int | None) -> int:
    """Rows this request still lacks whose spectra are stored under options that differ only in
    METRIC_ONLY_OPTIONS (another ``fit_range`` or ``eps``): written from those spectra
    (metrics.geometry_of_spectra, exactly what a forward pass would give, the spectra being the
    same float64 values), so re-tracing with another fit range loads no model. A checkpoint
    marked done for this request under the other options is marked done here too. Returns the
    number of rows written."""
    from .metrics import geometry_of_spectra

    base = {k: v for k, v in _canonical(result_opts).items() if k not in METRIC_ONLY_OPTIONS}
    done = store.done_checkpoints(h, request)
    todo = {(c.model, c.revision): c for c in checkpoints if (c.model, c.revision) not in done}
    if not todo:
        return 0
    have = store.done_keys(h)
    names = static_layer_names(cfg.layers)  # None: known only from the model ('all'): every layer
    sources: dict[tuple, dict] = {}  # (model, revision, layer, pooling) -> a row to derive it from
    marked: dict[tuple, set] = {}  # (model, revision) -> the other hashes of its source rows
    alike: dict[str, bool] = {}  # options hash -> its options differ from ours in metric options only

    def differs_in_metrics_only(row) -> bool:
        if row["options_hash"] not in alike:
            try:
                opts = json.loads(row["options"] or "null")
            except ValueError:
                opts = None
            alike[row["options_hash"]] = isinstance(opts, dict) and \
                {k: v for k, v in opts.items() if k not in METRIC_ONLY_OPTIONS} == base
        return alike[row["options_hash"]]

    for model in sorted({m for m, _ in todo}):
        for row in store.rows(status="ok", model=model):
            key = (row["model"], row["revision"], row["layer"], row["pooling"])
            if ((key[0], key[1]) not in todo or row["options_hash"] == h or key in have
                    or key[3] not in cfg.poolings or (names is not None and key[2] not in names)
                    or not differs_in_metrics_only(row)):
                continue
            sources.setdefault(key, row)
            marked.setdefault((key[0], key[1]), set()).add(row["options_hash"])
    written = 0
    for key, row in sources.items():
        spec, sv = store.spectrum(row["id"], "covariance"), store.spectrum(row["id"], "singular")
        if spec is None or sv is None or not row["n"] or not row["dim"]:
            continue
        t0 = time.perf_counter()
        metrics = geometry_of_spectra(spec, sv, n=int(row["n"]), dim=int(row["dim"]),
                                      fit_range=cfg.fit_range, eps=cfg.eps, method=cfg.spectrum_method,
                                      _fn="geometry")  # the notes read as finalize()'s do
        if store.write_result(todo[key[:2]], key[2], key[3], options=result_opts, metrics=metrics,
                              spectra={"covariance": spec, "singular": sv}, run_id=run_id,
                              timings={"metrics_s": time.perf_counter() - t0}):
            written += 1
    done_under = {o: store.done_checkpoints(o, request) for o in {o for hs in marked.values() for o in hs}}
    for (model, revision), hashes in marked.items():
        if any((model, revision) in done_under[o] for o in hashes):
            store.mark_checkpoint_done(model, revision, h, request, run_id)
    if written and cfg.progress:
        print(f"[geomfast] {written} result(s) derived from spectra already stored under other "
              f"{' / '.join(METRIC_ONLY_OPTIONS)}: no model loaded for them", file=sys.stderr)
    return written


# ----------------------------------------------------------------------------- per checkpoint

@dataclass
class LoadedCheckpoint:
    checkpoint: Any
    model: Any = None
    samples: Any = None
    load_s: float = 0.0
    error: BaseException | None = None
    error_trace: str = ""


class _SampleCache:
    """Samples loaded once per tokenizer (or per vocabulary size for the synthetic corpus).

    Only the loader thread touches it, so no lock is needed."""

    def __init__(self, cfg: TraceConfig, result_opts: dict[str, Any] | None = None):
        self.cfg = cfg
        # None: the caller hashes no options (extract-only use); no truncation check
        self._marked = None if result_opts is None else "truncation" in result_opts
        self._by_key: dict[Any, Any] = {}
        self._key_of_model: dict[str, Any] = {}

    def get(self, checkpoint) -> Any:
        from . import data

        cfg = self.cfg
        if checkpoint.model in self._key_of_model:
            return self._by_key[self._key_of_model[checkpoint.model]]
        try:
            conf = _model_config(checkpoint, cfg)
        except Exception:  # the model's own load reports a missing or broken config
            conf = None
        max_length = _effective_max_length(conf, checkpoint, cfg)
        if cfg.dataset == "synthetic":
            vocab = int((conf if conf is not None else _model_config(checkpoint, cfg)).vocab_size)
            key: Any = ("synthetic", vocab, max_length)
            if key not in self._by_key:
                self._by_key[key] = data.load_samples(
                    "synthetic", None, n_samples=cfg.n_samples, seed=cfg.seed,
                    min_length=cfg.min_length, max_length=max_length, vocab_size=vocab)
        else:
            tok = _tokenizer(checkpoint, cfg)
            if (self._marked is False and _truncation_matters(cfg)
                    and data.appends_special_tokens(tok)):
                raise RuntimeError(
                    f"[trace] {checkpoint.model}'s tokenizer appends special tokens, which max_length "
                    "truncation keeps, but it could not be loaded when the run's options were hashed "
                    "(run_result_options): rerun the trace, so that its rows get the right options hash")
            key = ("tokenizer", data.tokenizer_fingerprint(tok), max_length)
            if key not in self._by_key:
                self._by_key[key] = data.load_samples(
                    cfg.dataset, tok, n_samples=cfg.n_samples, seed=cfg.seed,
                    min_length=cfg.min_length, max_length=max_length)
        got = self._by_key[key]
        if len(got) < 2:
            raise data.DatasetError(
                f"[trace] dataset {cfg.dataset!r} gives {len(got)} usable sample(s) with {checkpoint.model}'s "
                f"tokenizer (documents of more than min_length={cfg.min_length} tokens); a covariance needs "
                "at least 2")
        self._key_of_model[checkpoint.model] = key
        return got


def _tokenizer(checkpoint, cfg: TraceConfig):
    from .models import load_tokenizer

    return load_tokenizer(checkpoint.source, checkpoint.hub_revision, trust_remote_code=cfg.trust_remote_code,
                          local_files_only=cfg.local_files_only or None)


def _model_config(checkpoint, cfg: TraceConfig):
    from transformers import AutoConfig

    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    if checkpoint.hub_revision is not None:
        kwargs["revision"] = checkpoint.hub_revision
    if cfg.local_files_only:
        kwargs["local_files_only"] = True
    return AutoConfig.from_pretrained(checkpoint.source, **kwargs)


_CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def _effective_max_length(conf, checkpoint, cfg: TraceConfig) -> int | None:
    """cfg.max_length, capped at the context of the model's config ``conf`` (None: unknown):
    sequences past it index position embeddings that do not exist (an IndexError for learned
    positions) or run rotary positions the model never saw (silently wrong), and cost quadratic
    attention for nothing."""
    if conf is None:
        return cfg.max_length
    ctx = next((int(getattr(conf, a)) for a in _CONTEXT_ATTRS
                if isinstance(getattr(conf, a, None), int) and getattr(conf, a) > 0), None)
    if ctx is None:
        return cfg.max_length
    if cfg.max_length is not None and cfg.max_length > ctx:
        warnings.warn(f"[trace] max_length {cfg.max_length} is past {checkpoint.model}'s context of {ctx} "
                      f"tokens: sequences are truncated to {ctx}", stacklevel=2)
    return ctx if cfg.max_length is None else min(cfg.max_length, ctx)


def load_checkpoint(checkpoint, cfg: TraceConfig, samples: "_SampleCache | Any") -> LoadedCheckpoint:
    """Load one checkpoint's model (on ``cfg.device``) and its samples. Never raises: a
    failure comes back in ``.error`` so a background loader can hand it over."""
    from .models import load_model

    out = LoadedCheckpoint(checkpoint)
    t0 = time.perf_counter()
    try:
        out.samples = samples.get(checkpoint) if isinstance(samples, _SampleCache) else samples
        out.model = load_model(checkpoint.source, checkpoint.hub_revision, dtype=cfg.dtype,
                               device=cfg.device, trust_remote_code=cfg.trust_remote_code,
                               device_map=cfg.device_map,
                               local_files_only=cfg.local_files_only or None)
    except Exception as e:  # recorded by the caller; KeyboardInterrupt still stops the sweep
        out.error = e
        out.error_trace = traceback.format_exc()
        out.model = None
    out.load_s = time.perf_counter() - t0
    return out


def extract_checkpoint(model, samples, cfg: TraceConfig, *, layers: Sequence[str] | None = None,
                       progress: bool | None = None) -> dict:
    """One forward pass over ``samples``: ``{(layer_name, pooling): GramAccumulator}``.

    This is the unit a distributed mode shards (by samples) and then merges/all-reduces."""
    from .extract import extract_accumulators

    layers = list(cfg.layers if layers is None else layers)
    pooling = list(cfg.poolings)
    return extract_accumulators(
        model, samples, layers=layers, pooling=pooling if len(pooling) > 1 else pooling[0],
        batch_size=cfg.batch_size, precision=cfg.precision, padding_side=cfg.padding_side,
        progress=cfg.progress if progress is None else progress,
        device="cpu" if cfg.accumulate_on == "cpu" else None)


def finalize(acc, cfg: TraceConfig, *, spectrum=None, singular_values=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Accumulator -> (geometry() metrics, {'covariance': eigenvalues, 'singular': σ}).

    ``spectrum`` / ``singular_values``: the accumulator's, when already solved (see
    :func:`solve_all`); computed here otherwise."""
    import warnings

    from .metrics import SpectrumWarning, geometry

    method = cfg.spectrum_method
    if spectrum is None:
        spectrum = acc.spectrum(method=method)
    if singular_values is None:
        singular_values = acc.singular_values()
    spec = np.asarray(spectrum, dtype=np.float64)
    sv = np.asarray(singular_values, dtype=np.float64)
    with warnings.catch_warnings():
        # The notes are stored in the row's 'warnings' column; no need to flood stderr.
        warnings.simplefilter("ignore", SpectrumWarning)
        metrics = geometry(acc, fit_range=cfg.fit_range, eps=cfg.eps, method=method,
                           spectrum=spec, singular_values=sv)
    return metrics, {"covariance": spec, "singular": sv}


def solve_all(accs: dict, cfg: TraceConfig) -> dict:
    """{key: (spectrum, singular values)} of every accumulator of one checkpoint, solved together
    (geomfast.spectra / singular_values_of: several CPU solves at a time, one CUDA batch), or {}
    when a batch fails — then :func:`finalize` solves each alone and records its own error."""
    from .linalg import singular_values_of, spectra

    keys = list(accs)
    if len(keys) < 2:
        return {}
    try:
        specs = spectra([accs[k] for k in keys], method=cfg.spectrum_method)
        svs = singular_values_of([accs[k] for k in keys])
    except Exception:
        return {}
    return {k: (sp, sv) for k, sp, sv in zip(keys, specs, svs)}


# ----------------------------------------------------------------------------- the sweep

def _short_error(e: BaseException, cfg: "TraceConfig | None" = None) -> str:
    """The error as stored and shown; with ``cfg``, a failure of geomfast's CUDA backend (its
    messages start '[cuda]') says how to trace without it."""
    msg = f"{type(e).__name__}: {e}"
    msg = msg if len(msg) <= 2000 else msg[:2000] + " …"
    if cfg is not None and cfg.accumulate_on == "model" and "[cuda] " in msg:
        msg += (" (geomfast's CUDA backend failed: --accumulate-on cpu, accumulate_on='cpu' in Python, "
                "keeps the Gram states in host memory and solves their spectra on the CPU)")
    return msg


def trace(model: str | Sequence[str], *, dataset: str | None = None, out: str,
          revisions: str | None = None, preset: str | None = None, command: Sequence[str] | None = None,
          store: ResultStore | None = None, on_checkpoint: Callable[[Any, str], None] | None = None,
          parallel: str | None = None, **options) -> TraceSummary:
    """Trace ``model`` (a hub id, a local folder of checkpoints, a model folder, or a list of
    these as an ordered series) across its checkpoints. See :class:`TraceConfig` for the
    options (``layers``, ``pooling``, ``n_samples``, ``seed``, ``min_length``, ``max_length``,
    ``dtype``, ``device``, ``batch_size``, ``precision``, ``fit_range`` …); ``preset='li2025'``
    sets the paper's choices and explicit options override it. Results go to the SQLite file
    ``out``. Returns a :class:`TraceSummary`.

    Under torchrun (``WORLD_SIZE > 1``) each process is one rank: ``parallel='data'`` (the
    default) shards the samples, ``parallel='checkpoint'`` deals out the checkpoints; rank 0
    alone writes ``out``. See :mod:`geomfast.distributed`.
    """
    cfg = make_config(model=model, dataset=dataset, out=out, preset=preset,
                      revisions=revisions, **options)
    with _hf_progress_bars(cfg.progress):
        return _trace(cfg, command=command, store=store, on_checkpoint=on_checkpoint, parallel=parallel)


class _hf_progress_bars:
    """progress=False also silences transformers' own bars ('Loading weights'), then restores them."""

    def __init__(self, on: bool):
        self.on, self.was = on, None

    def __enter__(self):
        if not self.on:
            try:
                from transformers.utils import logging as hf_logging

                self.was = hf_logging.is_progress_bar_enabled()
                hf_logging.disable_progress_bar()
            except Exception:  # an old transformers without the switch: nothing to do
                self.was = None
        return self

    def __exit__(self, *exc):
        if self.was:
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()
        return False


def _trace(cfg: TraceConfig, *, command, store, on_checkpoint, parallel) -> TraceSummary:
    from tqdm.auto import tqdm

    # --- scale-out (geomfast.distributed): one rank of a torch.distributed job -------------
    from . import distributed

    if distributed.wants_distributed(parallel):
        return distributed.trace_distributed(cfg, parallel=parallel, command=command,
                                             store=store, on_checkpoint=on_checkpoint)
    # --- a single process ---------------------------------------------------------------
    t_start = time.perf_counter()
    summary = TraceSummary(db=cfg.out)
    own_store = store is None
    if own_store:
        check_output_database(cfg.out, "[trace] out")  # a folder, a text file, no permission
    # A request refused from what is known before any work (no such model or revision, a block
    # index out of range) leaves the database as it was: no run is recorded for it.
    checkpoints = requested_checkpoints(cfg)
    store = store or ResultStore(cfg.out)
    result_opts = run_result_options(cfg, checkpoints)
    h = options_hash(result_opts)
    request = cfg.request()
    run_id = store.start_run({**dataclasses.asdict(cfg), "options_hash": h}, command)
    run_status = "failed"
    executor: ThreadPoolExecutor | None = None
    try:
        summary.checkpoints = len(checkpoints)
        drop_stale_results(store, checkpoints, cfg)
        summary.derived = derive_from_stored_spectra(store, checkpoints, cfg, result_opts, h, request, run_id)
        todo = pending_checkpoints(store, checkpoints, cfg, h, request, run_id)
        summary.skipped = len(checkpoints) - len(todo)
        if summary.skipped and cfg.progress:
            print(f"[geomfast] {summary.skipped} of {len(checkpoints)} checkpoint(s) already in "
                  f"{cfg.out}: skipped", file=sys.stderr)
        samples = _SampleCache(cfg, result_opts)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geomfast-loader") \
            if cfg.prefetch else None

        def submit(c) -> Future:
            if executor is not None:
                return executor.submit(load_checkpoint, c, cfg, samples)
            f: Future = Future()
            f.set_result(None)  # loaded lazily below, in this thread
            return f

        bar = tqdm(total=len(todo), desc="checkpoints", unit="ckpt", disable=not cfg.progress,
                   position=0, leave=True)
        pending = submit(todo[0]) if todo else None
        for i, ck in enumerate(todo):
            loaded = pending.result() if pending is not None else None
            if loaded is None:
                loaded = load_checkpoint(ck, cfg, samples)
            # Start loading the next checkpoint while this one computes.
            pending = submit(todo[i + 1]) if i + 1 < len(todo) else None
            bar.set_postfix_str(ck.revision)
            status = _run_one(store, loaded, cfg, result_opts, h, request, run_id, summary)
            del loaded
            gc.collect()
            _empty_device_cache(cfg.device)
            if on_checkpoint is not None:
                on_checkpoint(ck, status)
            bar.update(1)
        bar.close()
        run_status = "finished"
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        try:
            store.finish_run(run_id, run_status)
        finally:
            if own_store:
                store.close()
    summary.seconds = time.perf_counter() - t_start
    return summary


def _run_one(store: ResultStore, loaded: LoadedCheckpoint, cfg: TraceConfig, result_opts: dict,
             h: str, request: str, run_id: int, summary: TraceSummary) -> str:
    """Extract, finalize and write one checkpoint. Returns 'ok' or 'error'."""
    ck = loaded.checkpoint
    if isinstance(loaded.error, DatasetError):
        raise loaded.error  # every checkpoint would fail alike: stop, with the reason
    if loaded.error is not None:
        _record_failure(store, ck, cfg, result_opts, run_id, loaded.error, loaded.error_trace,
                        {"load_s": loaded.load_s}, summary, stage="load")
        return "error"
    try:
        from .models import resolve_layers

        # Resume at (layer, pooling) granularity: a checkpoint interrupted between two
        # commits only recomputes the layers it had not written.
        done = store.done_keys(h, model=ck.model)
        names = [spec.name for spec in resolve_layers(loaded.model, list(cfg.layers))]
        missing = [n for n in names
                   if any((ck.model, ck.revision, n, p) not in done for p in cfg.poolings)]
        t0 = time.perf_counter()
        accs = extract_checkpoint(loaded.model, loaded.samples, cfg, layers=missing) if missing else {}
        extract_s = time.perf_counter() - t0
    except Exception as e:
        _record_failure(store, ck, cfg, result_opts, run_id, e, traceback.format_exc(),
                        {"load_s": loaded.load_s}, summary, stage="extract")
        return "error"
    loaded.model = None  # free the weights before the eigensolvers run
    return _finalize_and_write(store, ck, accs, cfg, result_opts, h, request, run_id, summary,
                               loaded.load_s, extract_s)


def _finalize_and_write(store: ResultStore, ck, accs: dict, cfg: TraceConfig, result_opts: dict,
                        h: str, request: str, run_id: int, summary: TraceSummary, load_s: float,
                        extract_s: float) -> str:
    """Finalize each accumulator and write its row (also used by data-parallel rank 0)."""
    layer_errors = 0
    t0 = time.perf_counter()
    solved = solve_all(accs, cfg)
    solve_s = (time.perf_counter() - t0) / max(len(accs), 1)  # the batch's time, shared out
    for key, acc in accs.items():
        layer, pooling = key
        t1 = time.perf_counter()
        try:
            spec, sv = solved.get(key, (None, None))
            metrics, spectra = finalize(acc, cfg, spectrum=spec, singular_values=sv)
            status, err = "ok", None
        except Exception as e:
            metrics, spectra, status, err = None, None, "error", _short_error(e, cfg)
            layer_errors += 1
            summary.errors.append((ck.revision, f"{layer}/{pooling}: {err}"))
        timings = {"load_s": load_s, "extract_s": extract_s,
                   "metrics_s": time.perf_counter() - t1 + (solve_s if key in solved else 0.0)}
        if store.write_result(ck, layer, pooling, options=result_opts, metrics=metrics,
                              spectra=spectra, status=status, error=err, timings=timings,
                              run_id=run_id):
            summary.rows_written += 1
    if layer_errors:
        summary.failed += 1
        return "error"
    store.mark_checkpoint_done(ck.model, ck.revision, h, request, run_id)
    summary.ok += 1
    return "ok"


def _record_failure(store, ck, cfg, result_opts, run_id, e, trace_text, timings, summary, stage):
    msg = _short_error(e, cfg)
    err = f"[{stage}] {msg}"
    if cfg.progress:
        print(f"\n[geomfast] {ck.model}@{ck.revision} failed ({stage}): {msg}",
              file=sys.stderr)
    store.write_error(ck, options=result_opts, error=err, run_id=run_id, timings=timings,
                      layers=["*" + ",".join(cfg.layers)], poolings=[",".join(cfg.poolings)])
    summary.failed += 1
    summary.rows_written += 1
    summary.errors.append((ck.revision, err))


def _empty_device_cache(device: str) -> None:
    if str(device).startswith("cuda"):
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:
            pass
