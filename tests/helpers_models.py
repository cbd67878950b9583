"""Tiny models and tokenizers built offline into temporary folders, for tests.

    from helpers_models import build_tiny_model, make_checkpoint_folder, train_tokenizer

Everything here runs without the network (HF_HUB_OFFLINE is set on import) in well under a
second per model: GPT-NeoX, OLMo and OLMo-2 from their configs, and a byte-level BPE tokenizer
trained in-process on generated text.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHS = ("gpt_neox", "olmo", "olmo2")
GENERIC_ARCHS = ("llama",)  # a generic Llama-like AutoModelForCausalLM
VOCAB_SIZE = 512

_WORDS = (
    "the of and to in is was for on that with as by at from his her an which it were be this are "
    "model layer token training step checkpoint geometry rank spectrum entropy compression warmup "
    "language representation matrix eigenvalue covariance sample sequence length batch device "
    "river mountain city winter summer garden window letter music number table window question answer"
).split()


def corpus_texts(n: int = 400, *, seed: int = 0, min_words: int = 3, max_words: int = 60) -> list[str]:
    """n pseudo-English documents of varied length (deterministic for a seed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(min_words, max_words)
        words = [rng.choice(_WORDS) for _ in range(k)]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + ".")
    return out


def train_tokenizer(vocab_size: int = VOCAB_SIZE, texts: Sequence[str] | None = None):
    """A byte-level BPE tokenizer (<= vocab_size ids) as a PreTrainedTokenizerFast.

    Special tokens: <|pad|> = 0, <|endoftext|> = 1 (also bos/eos).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|pad|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts) if texts is not None else corpus_texts(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token=None,
    )


_TOKENIZER_CACHE: dict = {}


def tiny_tokenizer():
    """One tokenizer per test process (training it twice gives the same one anyway)."""
    if "tok" not in _TOKENIZER_CACHE:
        _TOKENIZER_CACHE["tok"] = train_tokenizer()
    return _TOKENIZER_CACHE["tok"]


def tiny_config(arch: str, *, hidden: int = 32, layers: int = 2, heads: int = 4, vocab_size: int = VOCAB_SIZE,
                max_positions: int = 256):
    """A config for 'gpt_neox', 'olmo', 'olmo2' or 'llama' with pad 0 and bos/eos 1."""
    common = dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, vocab_size=vocab_size, max_position_embeddings=max_positions,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, tie_word_embeddings=False,
    )
    if arch == "gpt_neox":
        from transformers import GPTNeoXConfig

        return GPTNeoXConfig(**common, hidden_dropout=0.0, attention_dropout=0.0, rotary_pct=0.25)
    if arch == "olmo":
        from transformers import OlmoConfig

        return OlmoConfig(**common)
    if arch == "olmo2":
        from transformers import Olmo2Config

        return Olmo2Config(**common)
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS + GENERIC_ARCHS}")


def build_tiny_model(arch: str = "gpt_neox", *, seed: int = 0, **config_kwargs):
    """A float32 causal LM in eval mode with random weights drawn from ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **config_kwargs))
    # Default inits leave some weights (norm scales, biases) at constants; perturb every
    # parameter so each layer does something distinct and seeds give different checkpoints.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.float().eval()


def save_tiny_model(path, arch: str = "gpt_neox", *, seed: int = 0, tokenizer=True, **config_kwargs) -> Path:
    """Build a tiny model (and the tiny tokenizer) into folder ``path``; returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(arch, seed=seed, **config_kwargs)
    model.save_pretrained(path)
    if tokenizer:
        (tiny_tokenizer() if tokenizer is True else tokenizer).save_pretrained(path)
    return path


def make_checkpoint_folder(root, steps: Sequence[int] = (0, 1, 2, 4, 8, 16), *, arch: str = "gpt_neox",
                           name: str = "step{step}", tokenizer=True, **config_kwargs) -> Path:
    """A folder of checkpoint sub-folders ``root/step{N}`` (different random weights per step),
    as resolve_checkpoints reads them. ``name`` formats each sub-folder name."""
    root = Path(root)
    for i, step in enumerate(steps):
        save_tiny_model(root / name.format(step=step), arch, seed=1000 + i, tokenizer=tokenizer, **config_kwargs)
    return root


def write_text_files(folder, texts: Sequence[str] | None = None) -> dict:
    """The same documents as .txt, .jsonl and .parquet in ``folder``; returns {suffix: path}."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = list(texts) if texts is not None else corpus_texts()
    paths = {"txt": folder / "docs.txt", "jsonl": folder / "docs.jsonl", "parquet": folder / "docs.parquet"}
    paths["txt"].write_text("\n".join(texts) + "\n", encoding="utf-8")
    with open(paths["jsonl"], "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": i, "text": t}) + "\n")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), paths["parquet"])
    except ImportError:  # pragma: no cover
        del paths["parquet"]
    return paths
