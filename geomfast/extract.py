"""Hooks and pooling: stream a model's layer activations into GramAccumulators.

One truncated forward pass per batch: the base model (``model.gpt_neox``, ``model.model``, ...)
is called instead of the CausalLM, so the LM head is never computed; hooks on the decoder blocks
pool each requested layer's activations and hand them to that layer's accumulator on the
activations' own device; after the deepest requested block a private exception stops the pass,
so later blocks do not run. Nothing is stacked: memory is O(d^2) per (layer, pooling) whatever
the number of tokens.

Layers (see :func:`geomfast.models.resolve_layers`): 'embed' = hidden_states[0] (the input of
block 0), 'block{i}' = the output of block i, 'last' = hidden_states[-1] (after the final norm).
Pooling: 'last' (the last non-padding token), 'mean' (over non-padding tokens), 'all' (every
non-padding token is a row).
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

from .data import length_order, pad_batch
from .models import LayerSpec, find_decoder_layers, model_device, resolve_layers

__all__ = ["extract_accumulators", "POOLINGS", "pool"]

POOLINGS = ("last", "mean", "all")


class _StopForward(Exception):
    """Raised from a hook once the deepest requested layer has been read."""


def _is_oom(err: BaseException) -> bool:
    import torch

    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(err, oom_type):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _first_tensor(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    for key in ("last_hidden_state", "hidden_states"):
        t = getattr(out, key, None)
        if isinstance(t, torch.Tensor):
            return t
    raise TypeError(f"[extract_accumulators] expected a block to return a tensor or a tuple starting with one, "
                    f"got {type(out).__name__}")


def pool(h, mask, how: str):
    """Pool hidden states h [b, t, d] under an attention mask [b, t] (1 = token, 0 = padding).

    'last' -> [b, d] the last non-padding token of each row (right or left padding);
    'mean' -> [b, d] the mean over non-padding tokens (float32 or wider);
    'all'  -> [n_tokens, d] every non-padding token.
    """
    import torch

    if how == "last":
        t = mask.shape[1]
        # Index of the last 1 in each row: works for right and left padding alike.
        last = (t - 1) - torch.flip(mask, dims=[1]).argmax(dim=1)
        return h[torch.arange(h.shape[0], device=h.device), last.to(h.device)]
    m = mask.to(h.device)
    if how == "mean":
        acc_dtype = torch.promote_types(h.dtype, torch.float32)
        keep = m.bool().unsqueeze(-1)
        # masked, not multiplied by the mask: padding positions may hold NaN (HF's eager attention
        # in float64 with left padding), and NaN · 0 is NaN
        total = h.to(acc_dtype).masked_fill(~keep, 0).sum(dim=1)
        return total / keep.sum(dim=1).to(acc_dtype)
    if how == "all":
        return h[m.bool()]
    raise ValueError(f"[pool] pooling must be one of {POOLINGS}, got {how!r}")


def _default_factory(dim: int, device: str, precision: str):
    import geomfast

    return geomfast.GramAccumulator(dim, device=device, precision=precision)


def _device_str(device) -> str:
    s = str(device)
    return s


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def extract_accumulators(
    model,
    samples: Sequence[Sequence[int]],
    *,
    layers,
    pooling: str | Sequence[str] = "last",
    batch_size: int = 32,
    precision: str = "highest",
    padding_side: str = "right",
    pad_id: int | None = None,
    progress: bool = False,
    accumulators: dict | None = None,
    accumulator_factory: Callable | None = None,
    min_batch_size: int = 1,
    device: str | None = None,
) -> dict:
    """Accumulate the Gram state of each (layer, pooling) over samples, in one truncated pass.

    model: a causal LM (GPT-NeoX, OLMo, OLMo-2, Llama-like), already on its device(s), eval mode.
    samples: token-id lists (at least one token each); batched longest first, padded per batch.
    layers: as :func:`geomfast.models.resolve_layers` takes them ('last', 'embed', 'all', 0, -1,
        'embed,0,-1,last') or LayerSpec objects.
    pooling: 'last', 'mean', 'all', or several of them.
    precision: passed to each GramAccumulator ('highest' or 'fast').
    padding_side: 'right' or 'left'; positions are taken from the attention mask, so both give
        the states of the unpadded sequences.
    pad_id: the padding token id (default: config pad_token_id, else eos, else 0; its value does
        not matter as padded positions are masked).
    accumulators: existing {(layer, pooling): accumulator} to continue (e.g. over several data
        shards); missing keys are created.
    accumulator_factory: ``f(dim, device, precision)`` -> accumulator (default
        ``geomfast.GramAccumulator``).
    device: where the accumulators live: None (each layer's activations' own device) or a
        device such as 'cpu', to which each pooled chunk is copied (the GPU's memory kept for
        the model, or a GPU that geomfast's CUDA backend cannot use).

    Out of memory halves the batch size (down to ``min_batch_size``) and retries; layers already
    fed by the failed attempt are not fed twice.

    Returns {(layer_name, pooling): accumulator}, e.g. {('last', 'last'): GramAccumulator}.
    """
    import torch

    specs: list[LayerSpec] = resolve_layers(model, layers)
    poolings = [pooling] if isinstance(pooling, str) else list(pooling)
    poolings = list(dict.fromkeys(str(p).strip().lower() for p in poolings))
    for p in poolings:
        if p not in POOLINGS:
            raise ValueError(f"[extract_accumulators] pooling must be one of {POOLINGS}, got {p!r}")
    if padding_side not in ("right", "left"):
        raise ValueError(f"[extract_accumulators] padding_side must be 'right' or 'left', got {padding_side!r}")
    if batch_size < 1:
        raise ValueError(f"[extract_accumulators] batch_size must be >= 1, got {batch_size}")
    for i, s in enumerate(samples):
        if len(s) < 1:
            raise ValueError(f"[extract_accumulators] sample {i} is empty: every sample needs at least one token")

    base, blocks = find_decoder_layers(model)
    n_blocks = len(blocks)
    factory = accumulator_factory or _default_factory
    accs: dict = accumulators if accumulators is not None else {}
    keys = [(s.name, p) for s in specs for p in poolings]
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)

    if pad_id is None:
        cfg = getattr(model, "config", None)
        pad_id = getattr(cfg, "pad_token_id", None)
        if pad_id is None:
            eos = getattr(cfg, "eos_token_id", None)
            pad_id = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
        if pad_id is None or not 0 <= int(pad_id) < getattr(cfg, "vocab_size", 1 << 62):
            pad_id = 0
    pad_id = int(pad_id)
    in_device = model_device(model)
    pass_positions = _accepts(base.forward, "position_ids")

    # State of the current forward pass, read by the hooks.
    state: dict = {"mask": None, "skip": frozenset(), "done": set(), "stop_at": None}

    def feed(spec: LayerSpec, h) -> None:
        mask = state["mask"]
        for p in poolings:
            key = (spec.name, p)
            if key in state["skip"]:
                continue
            x = pool(h, mask, p)
            if device is not None and _device_str(x.device) != device:
                x = x.to(device)
            acc = accs.get(key)
            if acc is None:
                acc = accs[key] = factory(int(x.shape[-1]), _device_str(x.device), precision)
            acc.update(x)
            state["done"].add(key)

    def wants(spec: LayerSpec) -> bool:
        return any((spec.name, p) not in state["skip"] for p in poolings)

    by_block_out = {s.index: s for s in specs if s.kind == "block"}
    embed_spec = next((s for s in specs if s.kind == "embed"), None)
    last_spec = next((s for s in specs if s.kind == "last"), None)

    def pre_hook_block0(module, args, kwargs):
        if embed_spec is not None and wants(embed_spec):
            h = args[0] if args else kwargs.get("hidden_states")
            if h is None:
                raise TypeError("[extract_accumulators] cannot find the hidden states given to block 0")
            feed(embed_spec, h)
        if state["stop_at"] == -1:
            raise _StopForward

    def make_post_hook(i: int):
        def hook(module, args, out):
            spec = by_block_out.get(i)
            if spec is not None and wants(spec):
                feed(spec, _first_tensor(out))
            if state["stop_at"] == i:
                raise _StopForward
        return hook

    def run(chunk: list[int], skip: frozenset) -> None:
        """One forward over samples[chunk], feeding the keys not in skip."""
        state["skip"] = skip
        state["done"] = set()
        todo = [s for s in specs if wants(s)]
        if not todo:
            return
        deepest = max(s.index for s in todo)
        state["stop_at"] = None if deepest >= n_blocks else deepest
        batch = pad_batch([samples[i] for i in chunk], pad_id=pad_id, padding_side=padding_side)
        input_ids = batch["input_ids"].to(in_device)
        mask = batch["attention_mask"].to(in_device)
        state["mask"] = mask
        kwargs = {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
        if pass_positions:
            # Positions count real tokens only, so left padding gives the unpadded states.
            kwargs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
        try:
            out = base(**kwargs)
        except _StopForward:
            return
        if last_spec is not None and wants(last_spec):
            feed(last_spec, _first_tensor(out))

    handles = [blocks[0].register_forward_pre_hook(pre_hook_block0, with_kwargs=True)]
    handles += [blocks[i].register_forward_hook(make_post_hook(i)) for i in range(n_blocks)]

    order = length_order(samples)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc="samples", unit="seq", leave=False)
    current = int(batch_size)

    def run_or_split(chunk: list[int], skip: frozenset) -> None:
        nonlocal current
        try:
            run(chunk, skip)
        except Exception as err:
            if not _is_oom(err) or len(chunk) <= min_batch_size:
                raise
            done = frozenset(state["done"])
            del err
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            current = min(current, max(min_batch_size, len(chunk) // 2))  # later batches too
            pos = 0
            while pos < len(chunk):
                sub = chunk[pos: pos + current]  # `current` may shrink further inside
                run_or_split(sub, skip | done)
                pos += len(sub)

    try:
        with torch.no_grad():
            pos = 0
            while pos < len(order):
                chunk = order[pos: pos + current]
                run_or_split(chunk, frozenset())
                pos += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        for h in handles:
            h.remove()
        state.clear()
        if bar is not None:
            bar.close()

    # Keys that saw no rows (no samples) still get an (empty) accumulator.
    if hidden is not None:
        for key in keys:
            if key not in accs:
                accs[key] = factory(int(hidden), device or _device_str(in_device), precision)
    return {key: accs[key] for key in keys if key in accs}
