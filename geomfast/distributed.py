"""Scale-out on torch.distributed: ``torchrun --nproc-per-node K -m geomfast trace …``.

Nothing here does its own networking: process groups, collectives and object collectives are
torch.distributed's (NCCL on CUDA devices, gloo on CPUs).

Two modes for :func:`geomfast.sweep.trace` (``--parallel data|checkpoint``; ``data`` is the
default when ``WORLD_SIZE > 1``):

- **data-parallel** — every rank loads the same checkpoint and takes a disjoint shard of the
  samples (``samples[rank::world]``: together exactly the samples one process would use). The
  Gram states are sums, so they are added with collectives (:func:`all_reduce_accumulators`:
  every rank's state is first re-expressed around one common shift); rank 0 computes the
  spectra and metrics and writes the store.
- **checkpoint-parallel** — the checkpoints not yet done are dealt round robin
  (``todo[rank::world]``); each rank traces its checkpoint on all the samples, then the
  results go to rank 0 with ``gather_object`` (torch's own pickling over the process group;
  nothing is pickled to disk) and rank 0 writes them.

In both modes rank 0 is the only process that opens the results database: it decides which
checkpoints (and which layer × pooling results) are already done and broadcasts that, so a
re-run resumes. Each result is one SQLite transaction, so a rank (or the whole job) that dies
leaves only committed, complete rows; the store's UNIQUE key keeps re-runs from duplicating
anything. Stores written by separate jobs (e.g. on separate machines without a common
process group) are combined with ``geomfast merge`` (:mod:`geomfast.merge`).

Devices: with ``--device cuda`` each rank uses ``cuda:LOCAL_RANK``. With ``--device-map auto``
a rank spreads its model over the GPUs it sees (accelerate); the accumulators then sit on the
devices of their layers' activations and the reduction moves each state through the rank's
own communication device (``torch.cuda.current_device()`` for NCCL, the CPU for gloo). Give each
rank its own GPUs (one rank per node, or ``CUDA_VISIBLE_DEVICES`` per rank) in that case.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "PARALLEL_MODES",
    "DistContext",
    "env_world_size",
    "wants_distributed",
    "init_distributed",
    "shutdown",
    "is_main",
    "barrier",
    "broadcast_object",
    "reshift_state",
    "all_reduce_accumulators",
    "shard",
    "trace_distributed",
]

PARALLEL_MODES = ("data", "checkpoint")


# ----------------------------------------------------------------------------- environment

def env_world_size() -> int:
    """WORLD_SIZE from the environment torchrun sets (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _dist():
    import torch.distributed as dist

    return dist


def _initialized() -> bool:
    try:
        dist = _dist()
    except ImportError:  # pragma: no cover - torch is a dependency of trace
        return False
    return dist.is_available() and dist.is_initialized()


def wants_distributed(parallel: str | None = None) -> bool:
    """True when ``trace`` should run as one rank of several: a torchrun environment with
    ``WORLD_SIZE > 1``, or a process group already initialised with more than one rank."""
    if parallel is not None and parallel not in PARALLEL_MODES:
        raise ValueError(f"[trace] parallel must be one of {PARALLEL_MODES}, got {parallel!r}")
    if _initialized():
        return _dist().get_world_size() > 1
    return env_world_size() > 1


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: str          # the device a plain --device cuda becomes on this rank
    comm_device: str     # where collective tensors live ('cpu' for gloo, 'cuda:i' for NCCL)
    owns_group: bool     # whether init_distributed created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _timeout() -> timedelta:
    # Ranks wait for each other at collectives while one loads a model or runs eigensolvers;
    # a dead rank is noticed by torchrun (which stops the others), so the wait can be long.
    return timedelta(seconds=float(os.environ.get("GEOMFAST_DIST_TIMEOUT", 4 * 3600)))


def init_distributed(device: str = "cpu", *, backend: str | None = None) -> DistContext:
    """Join (or create, from the torchrun environment: RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT) the default process group.

    backend: default ``nccl`` when ``device`` is a CUDA device, ``gloo`` otherwise. With CUDA,
    the rank's device is ``cuda:LOCAL_RANK`` (a plain ``'cuda'``; an explicit ``'cuda:i'`` is
    kept) and it becomes the current device.
    """
    dist = _dist()
    if not dist.is_available():
        raise RuntimeError("[distributed] this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = str(device or "cpu")
    cuda = dev.startswith("cuda")
    if cuda:
        import torch

        if dev == "cuda":
            dev = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(dev))
    owns = False
    if not dist.is_initialized():
        backend = backend or ("nccl" if cuda else "gloo")
        kwargs: dict = {"backend": backend, "timeout": _timeout()}
        if backend == "nccl":
            import torch

            kwargs["device_id"] = torch.device(dev)
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # older torch without device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
        owns = True
    backend = str(dist.get_backend())
    if backend == "nccl":
        import torch

        comm = f"cuda:{torch.cuda.current_device()}"
    else:
        comm = "cpu"
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       backend=backend, device=dev, comm_device=comm, owns_group=owns)


def shutdown(ctx: DistContext | None) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx is not None and ctx.owns_group and _initialized():
        _dist().destroy_process_group()


def is_main() -> bool:
    """Rank 0, or no process group at all (a plain single process)."""
    return not _initialized() or _dist().get_rank() == 0


def barrier() -> None:
    if _initialized():
        _dist().barrier()


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (torch's object broadcast)."""
    if not _initialized():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def _all_gather_object(obj: Any) -> list:
    dist = _dist()
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _gather_object(obj: Any, dst: int = 0) -> list | None:
    dist = _dist()
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


# ----------------------------------------------------------------------------- reduction

def reshift_state(count: int, shift: np.ndarray, s: np.ndarray, g: np.ndarray,
                  new_shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same rows' Σy and Σyyᵀ around ``new_shift`` instead of ``shift`` (float64, exact
    algebra): with δ = shift − new_shift, y' = y + δ, so Σy' = Σy + nδ and
    Σy'y'ᵀ = Σyyᵀ + δ(Σy)ᵀ + (Σy)δᵀ + nδδᵀ."""
    s = np.asarray(s, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    if count == 0:
        return np.zeros_like(s), np.zeros_like(g)
    delta = np.asarray(shift, dtype=np.float64) - np.asarray(new_shift, dtype=np.float64)
    n = float(count)
    g2 = g + np.outer(delta, s) + np.outer(s, delta) + n * np.outer(delta, delta)
    return s + n * delta, g2


def _sort_key(key) -> tuple:
    return tuple(str(k) for k in key) if isinstance(key, tuple) else (str(key),)


def all_reduce_accumulators(accs: Mapping[Any, Any], *, dst: int | None = None, group=None) -> Mapping:
    """Sum every rank's accumulators in place, key by key.

    ``accs`` maps keys (e.g. ``(layer, pooling)``) to :class:`geomfast.GramAccumulator`; every
    rank must hold the same keys with the same dims (checked; a mismatch raises on every rank
    alike). For each key, in sorted key order on every rank: the shift of the first rank that
    has rows is broadcast, each rank re-expresses its state around it, and
    ``[count, Σy, Σyyᵀ]`` is summed as one float64 tensor (``all_reduce``, or ``reduce`` to
    rank ``dst`` when given: then only that rank's accumulators hold the total and the others'
    are left as they were). Tensors live on the CPU for gloo and on the rank's current CUDA
    device for NCCL, whatever device each accumulator sits on (a ``device_map`` model spreads
    them over several). Returns ``accs``.
    """
    import torch

    dist = _dist()
    if not _initialized() or dist.get_world_size(group) == 1:
        return accs
    backend = str(dist.get_backend(group))
    comm = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    keys = sorted(accs, key=_sort_key)
    mine = [(_sort_key(k), int(accs[k].dim), int(accs[k].count)) for k in keys]
    everyone = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    layouts = [[(k, d) for k, d, _ in e] for e in everyone]
    if any(lay != layouts[0] for lay in layouts):
        raise ValueError("[all_reduce_accumulators] ranks hold different keys or dims: "
                         + "; ".join(f"rank {r}: {lay}" for r, lay in enumerate(layouts)))
    ranks = [dist.get_global_rank(group, r) if group is not None else r
             for r in range(len(everyone))]
    for i, key in enumerate(keys):
        acc = accs[key]
        counts = [e[i][2] for e in everyone]
        if not any(counts):
            continue
        src = ranks[next(r for r, c in enumerate(counts) if c > 0)]
        d = int(acc.dim)
        n, shift, s, g = acc._native.state()
        common = torch.tensor(np.asarray(shift, dtype=np.float64), device=comm)  # a copy
        dist.broadcast(common, src=src, group=group)
        common_np = common.cpu().numpy()
        s2, g2 = reshift_state(int(n), shift, s, g, common_np)
        flat = np.empty(1 + d + d * d, dtype=np.float64)
        flat[0] = float(n)
        flat[1:1 + d] = s2
        flat[1 + d:] = g2.ravel()
        t = torch.from_numpy(flat).to(comm)
        del flat, g2
        if dst is None:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        else:
            dist.reduce(t, dst=dst, op=dist.ReduceOp.SUM, group=group)
            if dist.get_rank() != dst:
                continue
        total = t.cpu().numpy()
        del t
        acc._native.set_state(int(round(float(total[0]))), np.ascontiguousarray(common_np),
                              np.ascontiguousarray(total[1:1 + d]),
                              np.ascontiguousarray(total[1 + d:].reshape(d, d)))
    return accs


def shard(samples: Sequence, rank: int, world_size: int) -> list:
    """This rank's disjoint share of the samples: ``samples[rank::world_size]``."""
    return list(samples[rank::world_size])


# ----------------------------------------------------------------------------- the sweep

class _RecordingStore:
    """What :func:`geomfast.sweep._run_one` needs from a store, on a rank that does not open
    it: reads come from rank 0's broadcast, writes are recorded and replayed by rank 0."""

    def __init__(self, done_keys: set):
        self._done = done_keys
        self.calls: list[tuple[str, tuple, dict]] = []

    def done_keys(self, options_hash=None, *, model=None):
        return {k for k in self._done if model is None or k[0] == model}

    def write_result(self, *args, **kwargs) -> bool:
        self.calls.append(("write_result", args, kwargs))
        return True

    def write_error(self, *args, **kwargs) -> None:
        self.calls.append(("write_error", args, kwargs))

    def mark_checkpoint_done(self, *args, **kwargs) -> None:
        self.calls.append(("mark_checkpoint_done", args, kwargs))


def _loaded_iter(checkpoints: Sequence, cfg, samples, prefetch: bool) -> Iterator:
    """load_checkpoint for each, the next one loading in a background thread."""
    from .sweep import load_checkpoint

    if not checkpoints:
        return
    if not prefetch:
        for c in checkpoints:
            yield load_checkpoint(c, cfg, samples)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="geomfast-loader") as ex:
        pending = ex.submit(load_checkpoint, checkpoints[0], cfg, samples)
        for i in range(len(checkpoints)):
            loaded = pending.result()
            pending = ex.submit(load_checkpoint, checkpoints[i + 1], cfg, samples) \
                if i + 1 < len(checkpoints) else None
            yield loaded
            del loaded


def _free(cfg) -> None:
    from .sweep import _empty_device_cache

    gc.collect()
    _empty_device_cache(cfg.device)


def trace_distributed(cfg, *, parallel: str | None = None, command: Sequence[str] | None = None,
                      store=None, on_checkpoint: Callable[[Any, str], None] | None = None):
    """Run :func:`geomfast.sweep.trace` as one rank of a torch.distributed job (see the module
    docstring). Every rank returns rank 0's :class:`~geomfast.sweep.TraceSummary`."""
    from .store import ResultStore, options_hash
    from .sweep import TraceSummary, derive_from_stored_spectra, drop_stale_results, pending_checkpoints, \
        requested_checkpoints, run_result_options

    parallel = parallel or "data"
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"[trace] parallel must be one of {PARALLEL_MODES}, got {parallel!r}")
    ctx = init_distributed(cfg.device)
    cfg = dataclasses.replace(cfg, device=ctx.device, progress=cfg.progress and ctx.is_main)
    t_start = time.perf_counter()
    summary = TraceSummary(db=cfg.out)
    request = cfg.request()
    own_store = False
    run_id = None
    run_status = "failed"
    try:
        # Rank 0 alone opens the store, resolves the checkpoints and says what is left to do.
        plan: dict = {}
        if ctx.is_main:
            try:
                own_store = store is None
                if own_store:
                    from ._paths import check_output_database

                    check_output_database(cfg.out, "[trace] out")
                checkpoints = requested_checkpoints(cfg)  # refused before any work: no run recorded
                result_opts = run_result_options(cfg, checkpoints)  # (asks the tokenizers)
                h = options_hash(result_opts)
                store = store or ResultStore(cfg.out)
                run_id = store.start_run({**dataclasses.asdict(cfg), "options_hash": h,
                                          "parallel": parallel, "world_size": ctx.world_size},
                                         command)
                drop_stale_results(store, checkpoints, cfg)
                summary.derived = derive_from_stored_spectra(store, checkpoints, cfg, result_opts, h,
                                                             request, run_id)
                keys = store.done_keys(h)
                todo = pending_checkpoints(store, checkpoints, cfg, h, request, run_id, keys)
                plan = {"run_id": run_id, "n": len(checkpoints), "todo": todo,
                        "done_keys": keys if todo else set(), "result_opts": result_opts}
            except Exception as e:  # every rank must learn it, or the others wait forever
                plan = {"error": f"{type(e).__name__}: {e}"}
                broadcast_object(plan)
                raise
        plan = broadcast_object(plan)
        if "error" in plan:
            raise RuntimeError(f"[trace] rank 0 failed before the sweep: {plan['error']}")
        run_id, todo, done_keys = plan["run_id"], plan["todo"], plan["done_keys"]
        result_opts = plan["result_opts"]  # rank 0's: every rank hashes the same options
        h = options_hash(result_opts)
        summary.checkpoints = plan["n"]
        summary.skipped = plan["n"] - len(todo)
        if summary.skipped and cfg.progress:
            print(f"[geomfast] {summary.skipped} of {plan['n']} checkpoint(s) already in "
                  f"{cfg.out}: skipped", file=sys.stderr)
        if cfg.progress:
            print(f"[geomfast] {ctx.world_size} ranks ({ctx.backend}), {parallel}-parallel, "
                  f"{len(todo)} checkpoint(s) to trace", file=sys.stderr)
        run = _data_parallel if parallel == "data" else _checkpoint_parallel
        run(ctx, cfg, todo, done_keys, store, result_opts, h, request, run_id, summary,
            on_checkpoint)
        run_status = "finished"
    finally:
        if ctx.is_main and store is not None:
            try:
                if run_id is not None:
                    store.finish_run(run_id, run_status)
            finally:
                if own_store:
                    store.close()
    summary.seconds = time.perf_counter() - t_start
    summary = broadcast_object(summary if ctx.is_main else None)
    barrier()
    shutdown(ctx)
    return summary


def _agree(error: str | None) -> list:
    """Every rank's error (None when fine), on every rank: they take the same branch."""
    return _all_gather_object(error)


def _data_parallel(ctx: DistContext, cfg, todo, done_keys, store, result_opts, h, request,
                   run_id, summary, on_checkpoint) -> None:
    from tqdm.auto import tqdm

    from .data import DatasetError
    from .models import resolve_layers
    from .sweep import _SampleCache, _finalize_and_write, _record_failure, _short_error, \
        extract_checkpoint

    samples = _SampleCache(cfg, result_opts)
    bar = tqdm(total=len(todo), desc="checkpoints", unit="ckpt", disable=not cfg.progress,
               position=0, leave=True)
    for loaded in _loaded_iter(todo, cfg, samples, cfg.prefetch):
        ck = loaded.checkpoint
        bar.set_postfix_str(ck.revision)
        if isinstance(loaded.error, DatasetError):
            raise loaded.error  # the same dataset on every rank: all stop, with the reason
        errors = _agree(None if loaded.error is None else _short_error(loaded.error))
        stage, err, extract_s, accs = None, None, 0.0, {}
        if any(errors):
            stage = "load"
        else:
            try:
                names = [spec.name for spec in resolve_layers(loaded.model, list(cfg.layers))]
                missing = [n for n in names
                           if any((ck.model, ck.revision, n, p) not in done_keys for p in cfg.poolings)]
                t0 = time.perf_counter()
                part = shard(loaded.samples, ctx.rank, ctx.world_size)
                accs = extract_checkpoint(loaded.model, part, cfg, layers=missing) if missing else {}
                extract_s = time.perf_counter() - t0
            except Exception as e:
                err = _short_error(e)
                if cfg.progress or not ctx.is_main:
                    traceback.print_exc()
            errors = _agree(err)
            if any(errors):
                stage = "extract"
        loaded.model = None
        if stage is None:
            t0 = time.perf_counter()
            all_reduce_accumulators(accs, dst=0)
            extract_s += time.perf_counter() - t0
        if ctx.is_main:
            if stage is not None:
                r, msg = next((r, m) for r, m in enumerate(errors) if m)
                e = RuntimeError(f"rank {r}: {msg}")
                _record_failure(store, ck, cfg, result_opts, run_id, e, "",
                                {"load_s": loaded.load_s}, summary, stage=stage)
                status = "error"
            else:
                status = _finalize_and_write(store, ck, accs, cfg, result_opts, h, request,
                                             run_id, summary, loaded.load_s, extract_s)
            if on_checkpoint is not None:
                on_checkpoint(ck, status)
        del loaded, accs
        _free(cfg)
        bar.update(1)
    bar.close()


def _checkpoint_parallel(ctx: DistContext, cfg, todo, done_keys, store, result_opts, h, request,
                         run_id, summary, on_checkpoint) -> None:
    from tqdm.auto import tqdm

    from .sweep import TraceSummary, _SampleCache, _run_one

    mine = todo[ctx.rank::ctx.world_size]
    rounds = -(-len(todo) // ctx.world_size)
    samples = _SampleCache(cfg, result_opts)
    # Only rank 0 shows bars; the per-sample bar of a rank's own checkpoint is left out.
    quiet = dataclasses.replace(cfg, progress=False)
    bar = tqdm(total=len(todo), desc="checkpoints", unit="ckpt", disable=not cfg.progress,
               position=0, leave=True)
    loaded_iter = _loaded_iter(mine, quiet, samples, cfg.prefetch)
    for i in range(rounds):
        payload = None
        if i < len(mine):
            loaded = next(loaded_iter)
            rec = _RecordingStore(done_keys)
            local = TraceSummary(db=cfg.out)
            status = _run_one(rec, loaded, quiet, result_opts, h, request, run_id, local)
            payload = {"checkpoint": loaded.checkpoint, "status": status, "calls": rec.calls,
                       "errors": local.errors}
            del loaded
            _free(cfg)
        gathered = _gather_object(payload, dst=0)
        if not ctx.is_main:
            continue
        for p in gathered:  # rank order = todo order within the round
            if p is None:
                continue
            for name, args, kwargs in p["calls"]:
                written = getattr(store, name)(*args, **kwargs)
                if name == "write_result" and written:
                    summary.rows_written += 1
                elif name == "write_error":
                    summary.rows_written += 1
            summary.ok += p["status"] == "ok"
            summary.failed += p["status"] != "ok"
            summary.errors.extend(p["errors"])
            if cfg.progress:
                for rev, err in p["errors"]:
                    print(f"\n[geomfast] {p['checkpoint'].model}@{rev}: {err}", file=sys.stderr)
            if on_checkpoint is not None:
                on_checkpoint(p["checkpoint"], p["status"])
            bar.set_postfix_str(p["checkpoint"].revision)
            bar.update(1)
    bar.close()
