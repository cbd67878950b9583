"""Model and tokenizer loading, and finding the layers geomfast reads.

Architectures: GPT-NeoX (Pythia), OLMo, OLMo-2 and any Llama-like ``AutoModelForCausalLM``.
The decoder blocks are found generically (the ModuleList of ``num_hidden_layers`` blocks in the
base model); ``last`` is the base model's output (``last_hidden_state``, after the final norm),
which is what ``hidden_states[-1]`` holds.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "LayerSpec",
    "num_blocks",
    "load_model",
    "load_tokenizer",
    "resolve_layers",
    "find_base_model",
    "find_decoder_layers",
    "find_final_norm",
    "model_device",
    "check_device",
    "DTYPES",
]

DTYPES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64", "double": "float64",
    "auto": "auto",
}


_DEVICE_RE = re.compile(r"(cpu|cuda)(?::(\d+))?")


def check_device(device) -> tuple[str, int | None]:
    """(type, index or None) of a device string geomfast traces on: 'cpu', 'cuda' or 'cuda:N'
    ('cpu:N' too, as torch takes it). ValueError (no prefix: the caller names the argument) for
    anything else: 'tpu', 'cuda:abc', a number. Whether CUDA is there is the caller's check."""
    m = _DEVICE_RE.fullmatch(device) if isinstance(device, str) else None
    if m is None:
        raise ValueError(f"expected cpu, cuda or cuda:N (N a device index), got {device!r}")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def _torch_dtype(dtype):
    import torch

    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    key = DTYPES.get(str(dtype).lower().replace("torch.", ""))
    if key is None:
        raise ValueError(f"[load_model] dtype must be one of {sorted(set(DTYPES.values()))}, got {dtype!r}")
    return "auto" if key == "auto" else getattr(torch, key)


def _local_only(source: str, local_files_only: bool | None) -> bool | None:
    if os.path.isdir(str(source)):
        return True
    if local_files_only is not None:
        return bool(local_files_only)
    from .checkpoints import _offline

    return True if _offline(False) else None


def _transformers_version() -> tuple[int, int]:
    import transformers

    nums = re.findall(r"\d+", transformers.__version__)
    return int(nums[0]), int(nums[1])


def load_model(
    source: str,
    revision: str | None = None,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    device_map=None,
    local_files_only: bool | None = None,
    attn_implementation: str | None = None,
):
    """An ``AutoModelForCausalLM`` in eval mode with gradients off.

    source: hub id or local folder (``revision`` is ignored for a local folder).
    dtype: float32 / float16 / bfloat16 (fp16, bf16 ...) or 'auto' (the checkpoint's own).
    device: where to put it, unless ``device_map`` (needs accelerate) places it.
    trust_remote_code: runs the repository's own code; only when asked.
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"trust_remote_code": bool(trust_remote_code)}
    local = os.path.isdir(str(source))
    if revision is not None and not local:
        kwargs["revision"] = revision
    lfo = _local_only(source, local_files_only)
    if lfo is not None:
        kwargs["local_files_only"] = lfo
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    td = _torch_dtype(dtype)
    # transformers >= 4.56 names it `dtype`; older ones `torch_dtype`.
    kwargs["dtype" if _transformers_version() >= (4, 56) else "torch_dtype"] = td
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if device_map is None and device is not None:
        model = model.to(torch.device(device))
    model.eval()
    model.requires_grad_(False)
    return model


def load_tokenizer(source: str, revision: str | None = None, *, trust_remote_code: bool = False,
                   local_files_only: bool | None = None):
    """``AutoTokenizer.from_pretrained`` with the same source rules as :func:`load_model`."""
    from transformers import AutoTokenizer

    kwargs: dict = {"trust_remote_code": bool(trust_remote_code)}
    if revision is not None and not os.path.isdir(str(source)):
        kwargs["revision"] = revision
    lfo = _local_only(source, local_files_only)
    if lfo is not None:
        kwargs["local_files_only"] = lfo
    return AutoTokenizer.from_pretrained(source, **kwargs)


# ----------------------------------------------------------------------------- structure

_LAYER_PATHS = ("layers", "h", "blocks", "block", "decoder.layers", "transformer.h", "transformer.blocks",
                "model.layers", "encoder.layer")
_NORM_PATHS = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "norm_f", "final_norm",
               "transformer.ln_f", "model.norm")


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def num_blocks(config) -> int | None:
    """The number of decoder blocks a transformers config declares (num_hidden_layers, n_layer,
    n_layers or num_layers of its text config), or None when it declares none."""
    if config is None:
        return None
    cfg = getattr(config, "get_text_config", lambda: config)()
    for attr in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _num_layers(model) -> int | None:
    return num_blocks(getattr(model, "config", None))


def find_base_model(model):
    """The decoder without its LM head (``model.gpt_neox``, ``model.model``, ...)."""
    import torch

    base = getattr(model, "base_model", None)
    if isinstance(base, torch.nn.Module) and base is not model:
        return base
    for name in ("gpt_neox", "model", "transformer", "decoder"):
        sub = getattr(model, name, None)
        if isinstance(sub, torch.nn.Module):
            return sub
    if base is model and not any(hasattr(model, h) for h in ("lm_head", "embed_out")):
        return model  # already a base model
    raise ValueError(
        f"[find_base_model] cannot find the decoder inside {type(model).__name__}: expected an attribute "
        "named by base_model_prefix (gpt_neox, model, transformer, ...)"
    )


def find_decoder_layers(model):
    """(base_model, blocks): the ModuleList of decoder blocks, in order."""
    import torch

    base = find_base_model(model)
    n = _num_layers(model)
    for path in _LAYER_PATHS:
        cand = _get(base, path)
        if isinstance(cand, torch.nn.ModuleList) and len(cand) > 0 and (n is None or len(cand) == n):
            return base, cand
    lists = [(name, m) for name, m in base.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    fits = [(name, m) for name, m in lists if n is not None and len(m) == n]
    if len(fits) == 1:
        return base, fits[0][1]
    found = ", ".join(f"{name or '<root>'} ({len(m)})" for name, m in lists) or "none"
    raise ValueError(
        f"[find_decoder_layers] cannot find the decoder blocks of {type(model).__name__}: expected one "
        f"ModuleList of num_hidden_layers={n} blocks in {type(base).__name__}; ModuleLists found: {found}"
    )


def find_final_norm(model):
    """The final norm module of the base model, or None when it has none under a known name."""
    import torch

    base = find_base_model(model)
    for path in _NORM_PATHS:
        cand = _get(base, path)
        if isinstance(cand, torch.nn.Module) and not isinstance(cand, torch.nn.ModuleList):
            return cand
    return None


def model_device(model):
    """The device of the model's first parameter (the input embeddings' for a device_map)."""
    import torch

    try:
        emb = model.get_input_embeddings()
        return next(emb.parameters()).device
    except Exception:
        pass
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


# ----------------------------------------------------------------------------- layers

@dataclass(frozen=True)
class LayerSpec:
    """A layer to read.

    name: 'embed', 'block{i}' (i >= 0) or 'last'.
    kind: 'embed' (hidden_states[0], the input of block 0), 'block' (the OUTPUT of block i) or
        'last' (the final layer after the final norm, hidden_states[-1]).
    index: the block index for 'block', -1 for 'embed', num_layers for 'last'.
    depth: how far the forward pass must run: embed 0, block i -> i + 1, last -> num_layers + 1.
    """

    name: str
    kind: str
    index: int

    @property
    def depth(self) -> int:
        return self.index + 1


def parse_layer(item) -> tuple[str, int | None]:
    """One layer item, without the model: ('last' | 'embed' | 'all', None) or ('block', i) with i
    as given (negative counts from the end). ValueError for anything else."""
    if isinstance(item, bool):
        raise ValueError(f"[resolve_layers] expected a layer name or block index, got {item!r}")
    if isinstance(item, int):
        return "block", item
    s = str(item).strip().lower()
    if s in ("last", "final"):
        return "last", None
    if s in ("embed", "embedding", "embeddings", "emb"):
        return "embed", None
    if s == "all":
        return "all", None
    m = re.fullmatch(r"(?:block|layer)?\s*(-?\d+)", s)
    if m:
        return "block", int(m.group(1))
    raise ValueError(
        f"[resolve_layers] unknown layer {item!r}: expected 'last', 'embed', 'all', a block index "
        "(negative allowed) or 'block<i>'"
    )


def _one_layer(item, n: int) -> list[LayerSpec]:
    if isinstance(item, LayerSpec):
        return [item]
    kind, index = parse_layer(item)
    if kind == "last":
        return [LayerSpec("last", "last", n)]
    if kind == "embed":
        return [LayerSpec("embed", "embed", -1)]
    if kind == "all":
        return [LayerSpec("embed", "embed", -1)] + [LayerSpec(f"block{i}", "block", i) for i in range(n)] \
            + [LayerSpec("last", "last", n)]
    i = index + n if index < 0 else index
    if not 0 <= i < n:
        raise ValueError(f"[resolve_layers] block index {index} is out of range for {n} blocks "
                         f"(expected {-n}..{n - 1})")
    return [LayerSpec(f"block{i}", "block", i)]


def resolve_layers(model, layers: str | int | Sequence) -> list[LayerSpec]:
    """Layer specs from 'last', 'embed', block indices (negative allowed; i is the OUTPUT of block i),
    'all' (embed, every block output, last after the final norm) or comma strings like
    'embed,0,-1,last'. Duplicates are dropped, order kept.

    ``model`` may also be an int: the number of blocks.
    """
    n = model if isinstance(model, int) else len(find_decoder_layers(model)[1])
    if isinstance(layers, (str, int, LayerSpec)):
        items = [x for x in str(layers).split(",") if x.strip()] if isinstance(layers, str) else [layers]
    else:
        items = list(layers)
    if not items:
        raise ValueError("[resolve_layers] expected at least one layer, got none")
    out: list[LayerSpec] = []
    seen: set[LayerSpec] = set()
    for item in items:
        for spec in _one_layer(item, n):
            if spec not in seen:
                seen.add(spec)
                out.append(spec)
    return out
