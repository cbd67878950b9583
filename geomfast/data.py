"""Datasets: local text files, Hugging Face datasets (streamed), and the built-in synthetic corpus.

Samples are token-id lists chosen once per (dataset, tokenizer, options) so that every
checkpoint of a series sees exactly the same sequences. ``length_batches`` groups them by
length so that little compute goes to padding.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

__all__ = [
    "load_texts",
    "tokenize_samples",
    "synthetic_sequences",
    "load_samples",
    "length_batches",
    "pad_batch",
    "length_order",
    "tokenizer_fingerprint",
    "SYNTHETIC_NAMES",
]

SYNTHETIC_NAMES = ("synthetic", "builtin:synthetic")
_LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")


# ----------------------------------------------------------------------------- the dataset argument

class DatasetError(ValueError):
    """The dataset cannot give what the sweep needs (e.g. fewer than two usable samples): the
    same for every checkpoint, so a sweep stops at once rather than failing each one."""


def is_local_dataset(dataset: str) -> bool:
    """A local file spec (a known suffix, or an existing path), as load_texts reads it."""
    path = Path(str(dataset)).expanduser()
    return path.suffix.lower() in _LOCAL_SUFFIXES or path.exists()


def check_dataset(dataset: str, *, text_field: str = "text", local_files_only: bool = False) -> str:
    """The dataset argument checked before any model is loaded: 'synthetic', a hub id (as given),
    or a local .txt/.jsonl/.parquet file, returned as its resolved path (the same file however it
    is typed).

    What would fail alike for every checkpoint is refused here, as :class:`DatasetError`: a local
    file that load_texts cannot read (a folder, a .jsonl line that is not a JSON object with a
    string ``text_field``, a .parquet without a string column ``text_field``, a .txt that is not
    UTF-8), and a hub id when the hub is offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE,
    ``local_files_only``) or the ``datasets`` package is missing. A local file is read once for
    this (a .parquet: its schema only), as the options hash reads it anyway."""
    spec = str(dataset)
    if spec in SYNTHETIC_NAMES:
        return spec
    if not is_local_dataset(spec):
        _check_hub_dataset(spec, local_files_only)
        return spec
    path = Path(spec).expanduser()
    if path.is_dir():
        raise DatasetError(f"[trace] dataset {spec!r} is a folder, expected a local .txt, .jsonl or .parquet "
                           "file (a hub dataset id, or 'synthetic')")
    if not path.is_file():
        raise FileNotFoundError(f"[trace] dataset: no such file {spec!r} (expected a local .txt, .jsonl or "
                           ".parquet file, a hub dataset id, or 'synthetic')")
    if path.suffix.lower() not in _LOCAL_SUFFIXES:
        raise DatasetError(f"[trace] dataset must be a .txt, .jsonl or .parquet file, got {spec!r}")
    resolved = path.resolve()
    _check_local_file(resolved, text_field)
    return str(resolved)


def _check_hub_dataset(spec: str, local_files_only: bool) -> None:
    from .checkpoints import _env_on, _offline

    if _offline(local_files_only) or _env_on("HF_DATASETS_OFFLINE"):
        how = "--local-files-only" if local_files_only else "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE"
        raise DatasetError(
            f"[trace] dataset {spec!r} is not a local file, and a hub dataset is streamed from the Hugging "
            f"Face hub, which is off ({how}): expected a local .txt, .jsonl or .parquet file, or 'synthetic'")
    import importlib.util

    if importlib.util.find_spec("datasets") is None:
        raise DatasetError(
            f"[trace] dataset {spec!r} is not a local file; streaming a hub dataset needs the `datasets` "
            "package (pip install datasets), or pass a local .txt, .jsonl or .parquet file, or 'synthetic'")


_CHECKED: dict[tuple[str, int, int, str], bool] = {}
_UPFRONT = "[trace] dataset"


def _check_local_file(path: Path, text_field: str) -> None:
    """Refuse (DatasetError) a local dataset file that _read_local would refuse, or whose texts are
    not strings, or that holds no document; each (path, size, mtime, field) is checked
    once per process. (Too few documents above --min-length tokens is the sample cache's
    DatasetError, once tokenized.)"""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns, text_field)
    if key in _CHECKED:
        return
    suffix = path.suffix.lower()
    docs = 0  # documents with some text (a parquet: its rows)
    if suffix == ".parquet":
        docs = _parquet_text_column(path, text_field, _UPFRONT).read_metadata(path).num_rows
    else:
        try:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    if suffix == ".jsonl":
                        t = _jsonl_text(path, lineno, line, text_field, _UPFRONT)
                        docs += bool(t and t.strip())
                    else:
                        docs += 1
        except UnicodeDecodeError as err:
            raise DatasetError(f"{_UPFRONT} {path} is not UTF-8 text ({err})") from None
    if docs == 0:
        raise DatasetError(f"{_UPFRONT} {path} holds 0 documents with text (a .txt: a document per non-blank "
                           f"line; a .jsonl: a record per line with a string {text_field!r}): nothing to trace")
    _CHECKED[key] = True


def _jsonl_text(path: Path, lineno: int, line: str, text_field: str, where: str = "[load_texts]"):
    """The text of one .jsonl record (None or '' when empty: skipped), or DatasetError."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{where} {path}:{lineno} is not valid JSON ({err})") from None
    if not isinstance(rec, dict) or text_field not in rec:
        got = f"keys {sorted(rec)[:8]}" if isinstance(rec, dict) else f"a JSON {type(rec).__name__}"
        raise DatasetError(f"{where} {path}:{lineno} has no field {text_field!r}: expected a JSON "
                           f"object with a string {text_field!r}, got {got}")
    t = rec[text_field]
    if t is not None and not isinstance(t, str):
        raise DatasetError(f"{where} {path}:{lineno}: field {text_field!r} must be a string, got "
                           f"{type(t).__name__} {str(t)[:40]!r}")
    return t


def _parquet_text_column(path: Path, text_field: str, where: str = "[load_texts]"):
    """pyarrow.parquet, after checking that ``path`` holds a string column ``text_field``."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is an optional dependency
        raise DatasetError(f"{where} reading .parquet needs pyarrow: pip install 'geomfast[parquet]'") from None
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{where} {path} is not a readable Parquet file ({err})") from None
    if text_field not in schema.names:
        raise DatasetError(f"{where} {path} has no column {text_field!r}; columns: {schema.names}")
    kind = schema.field(text_field).type
    value = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not (pa.types.is_string(value) or pa.types.is_large_string(value) or pa.types.is_null(value)
            or getattr(pa.types, "is_string_view", lambda _: False)(value)):
        raise DatasetError(f"{where} {path}: column {text_field!r} must hold strings, got {kind}")
    return pq


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def dataset_fingerprint(path: str) -> str:
    """SHA-256 of a local dataset file's bytes (cached per path, size and mtime): results are keyed
    on what was read, so an edited file is not taken for the one traced before."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 23), b""):
                h.update(block)
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


# ----------------------------------------------------------------------------- texts

def _read_local(path: Path, text_field: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f if line.strip()]
    if suffix == ".jsonl":
        texts = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                t = _jsonl_text(path, lineno, line, text_field)
                if t:
                    texts.append(t)
        return texts
    if suffix == ".parquet":
        pq = _parquet_text_column(path, text_field)
        col = pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
        return [t for t in col if t]
    raise ValueError(f"[load_texts] expected a {', '.join(_LOCAL_SUFFIXES)} file, got {str(path)!r}")


def _iter_hub(dataset: str, *, split: str, text_field: str, seed: int, config: str | None) -> Iterator[str]:
    from .checkpoints import _env_on, _offline

    if _offline(False):
        raise RuntimeError(
            f"[load_texts] {dataset!r} is not a local file and the Hugging Face hub is offline "
            "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE): pass a local .txt, .jsonl or .parquet file, or 'synthetic'"
        )
    if _env_on("HF_DATASETS_OFFLINE"):
        raise RuntimeError(f"[load_texts] {dataset!r} needs the hub but HF_DATASETS_OFFLINE is set")
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"[load_texts] {dataset!r} is not a local file; streaming a hub dataset needs the `datasets` "
            "package (pip install datasets), or pass a local .txt/.jsonl/.parquet file"
        ) from None
    # What fails here (no such dataset, config or split; a gated one; the hub unreachable) fails
    # alike for every checkpoint: a DatasetError, which stops the sweep with the reason instead of
    # recording the same error at each checkpoint. (An error later in the stream is the
    # checkpoint's own: the next one streams again.)
    named = f"{dataset}:{config}" if config else dataset
    try:
        ds = datasets.load_dataset(dataset, config, split=split, streaming=True)
        ds = ds.shuffle(seed=seed, buffer_size=10_000)
        records = iter(ds)
        first = next(records, None)
    except Exception as err:  # datasets' own exception types vary across its versions
        raise DatasetError(f"{_UPFRONT} {named!r} (split {split!r}) could not be streamed from the hub: "
                           f"{type(err).__name__}: {' '.join(str(err).split())[:500]}") from None
    if first is None:
        raise DatasetError(f"{_UPFRONT} {named!r} (split {split!r}) streamed no records")
    if text_field not in first:
        raise DatasetError(f"{_UPFRONT} {named!r} (split {split!r}) has no field {text_field!r}: its records "
                           f"have {sorted(first)[:12]}")
    for rec in itertools.chain((first,), records):
        t = rec.get(text_field)
        if t:
            yield str(t)


def _split_config(dataset: str) -> tuple[str, str | None]:
    """'org/name:config' -> ('org/name', 'config') for hub ids."""
    if ":" in dataset and not os.path.exists(dataset) and "://" not in dataset:
        name, cfg = dataset.split(":", 1)
        return name, (cfg or None)
    return dataset, None


def _permuted(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def load_texts(
    dataset: str,
    *,
    n_samples: int | None = None,
    seed: int = 0,
    text_field: str = "text",
    split: str = "train",
) -> list[str]:
    """Documents from a local file or a hub dataset.

    dataset: ``.txt`` (a document a line), ``.jsonl`` (field ``text_field``), ``.parquet``
    (column ``text_field``), or a Hugging Face dataset id, optionally ``id:config``
    (``HuggingFaceFW/fineweb:sample-10BT``; streamed, online only).
    n_samples: None keeps every document of a local file in file order; a number keeps that many
    chosen at random with ``seed`` (hub datasets: the first n after a seeded shuffle buffer).
    """
    path = Path(dataset).expanduser()
    if is_local_dataset(dataset):
        if path.is_dir():
            raise IsADirectoryError(f"[load_texts] {str(path)!r} is a folder, expected a .txt, .jsonl or "
                                    ".parquet file")
        if not path.is_file():
            raise FileNotFoundError(f"[load_texts] no such file: {str(path)!r}")
        texts = _read_local(path, text_field)
        if n_samples is None:
            return texts
        return [texts[i] for i in _permuted(len(texts), seed)[: int(n_samples)]]
    name, cfg = _split_config(dataset)
    if n_samples is None:
        raise ValueError(f"[load_texts] a hub dataset ({dataset!r}) is streamed: pass n_samples")
    out = []
    for t in _iter_hub(name, split=split, text_field=text_field, seed=seed, config=cfg):
        out.append(t)
        if len(out) >= n_samples:
            break
    return out


# ----------------------------------------------------------------------------- tokens

def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    enc = tokenizer(texts, add_special_tokens=True, truncation=False)
    return [list(map(int, ids)) for ids in enc["input_ids"]]


def _encode_truncated(tokenizer, texts: list[str], full: list[list[int]], max_length: int) -> list[list[int]]:
    """Documents longer than max_length, cut as the tokenizer cuts them (``truncation=True``): the
    text is shortened and the special tokens its template adds at either end are kept — an
    appended EOS too, which slicing the ids would drop from long documents only (then 'last'
    pooling read EOS for short documents and a text token for long ones). Where the tokenizer
    cannot (max_length below its special tokens), ``full`` (the untruncated ids) is sliced."""
    if not texts:
        return []
    try:
        enc = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)
        cut = [list(map(int, ids)) for ids in enc["input_ids"]]
    except Exception:  # (a tokenizer without truncation, or max_length below its special tokens)
        cut = [None] * len(texts)
    return [c if c is not None and 0 < len(c) <= max_length else f[:max_length] for c, f in zip(cut, full)]


def _select_tokens(
    texts: Iterable[str], tokenizer, *, n_samples: int | None, min_length: int, max_length: int | None,
    chunk: int = 256,
) -> list[list[int]]:
    if max_length is not None and max_length < 1:
        raise ValueError(f"[tokenize_samples] max_length must be >= 1, got {max_length}")
    out: list[list[int]] = []
    buf: list[str] = []

    def flush() -> bool:
        encoded = _encode(tokenizer, buf)
        kept = [i for i, ids in enumerate(encoded) if len(ids) > min_length]
        if max_length is not None:
            long = [i for i in kept if len(encoded[i]) > max_length]
            cut = _encode_truncated(tokenizer, [buf[i] for i in long], [encoded[i] for i in long], max_length)
            for i, ids in zip(long, cut):
                encoded[i] = ids
        for i in kept:
            out.append(encoded[i])
            if n_samples is not None and len(out) >= n_samples:
                return True
        buf.clear()
        return False

    with warnings.catch_warnings():
        # "Token indices sequence length is longer than the specified maximum" is expected here.
        warnings.simplefilter("ignore")
        import logging

        tlog = logging.getLogger("transformers.tokenization_utils_base")
        level = tlog.level
        tlog.setLevel(logging.ERROR)
        try:
            for t in texts:
                buf.append(t)
                if len(buf) >= chunk and flush():
                    return out
            if buf:
                flush()
        finally:
            tlog.setLevel(level)
    return out


def tokenize_samples(
    texts: Sequence[str],
    tokenizer,
    *,
    n_samples: int | None,
    min_length: int = 0,
    max_length: int | None = None,
    seed: int = 0,
) -> list[list[int]]:
    """Token-id lists of up to n_samples documents.

    Documents are visited in a seeded random order; a document is kept when it has MORE than
    ``min_length`` tokens (the paper: > 32), then truncated to ``max_length`` (the paper: 512) as
    the tokenizer truncates (``truncation=True``: the special tokens it adds at either end, an
    appended EOS too, are kept).
    The result depends only on (texts, tokenizer, options): the first n of a larger request are
    the same samples. Fewer than n_samples kept documents gives a warning, not an error.
    """
    order = _permuted(len(texts), seed)
    out = _select_tokens((texts[i] for i in order), tokenizer, n_samples=n_samples,
                         min_length=min_length, max_length=max_length)
    if n_samples is not None and len(out) < n_samples:
        warnings.warn(f"[tokenize_samples] only {len(out)} of {len(texts)} documents have more than "
                      f"{min_length} tokens; asked for {n_samples}")
    return out


def synthetic_sequences(
    n: int,
    *,
    vocab_size: int,
    seq_len: int = 64,
    seed: int = 0,
    zipf_exponent: float = 1.1,
    n_successors: int = 4,
    bigram_prob: float = 0.3,
    repeat: bool = True,
    structure_seed: int = 0,
) -> np.ndarray:
    """The built-in corpus: [n, seq_len] int64 token ids.

    Tokens follow Zipf(``zipf_exponent``) unigram frequencies over ``vocab_size`` ids; each token
    has ``n_successors`` likely successors, drawn instead of a fresh unigram token with
    probability ``bigram_prob``; with ``repeat`` the second half of each sequence repeats its
    first half (a long-context dependency a model learns late).

    The language (frequencies, successors) is fixed by ``structure_seed`` and ``vocab_size``;
    ``seed`` only draws the sequences, so different seeds give train / held-out splits of one
    language.
    """
    if vocab_size < 2:
        raise ValueError(f"[synthetic_sequences] vocab_size must be >= 2, got {vocab_size}")
    if seq_len < 1 or n < 0:
        raise ValueError(f"[synthetic_sequences] expected n >= 0 and seq_len >= 1, got n={n}, seq_len={seq_len}")
    lang = np.random.default_rng([int(structure_seed), int(vocab_size)])
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    p = ranks ** (-float(zipf_exponent))
    p /= p.sum()
    ids_by_rank = lang.permutation(vocab_size)  # the most frequent token is not id 0
    unigram = np.empty(vocab_size)
    unigram[ids_by_rank] = p
    k = min(int(n_successors), vocab_size)
    successors = np.stack([lang.choice(vocab_size, size=k, replace=False, p=unigram) for _ in range(vocab_size)])
    cdf = np.cumsum(unigram)
    cdf[-1] = 1.0

    rng = np.random.default_rng(int(seed))
    half = (seq_len + 1) // 2 if repeat else seq_len
    out = np.empty((n, seq_len), dtype=np.int64)
    if n == 0:
        return out
    fresh = np.searchsorted(cdf, rng.random((n, half)), side="right").clip(max=vocab_size - 1)
    use_bigram = rng.random((n, half)) < bigram_prob
    which = rng.integers(0, k, size=(n, half))
    out[:, 0] = fresh[:, 0]
    for t in range(1, half):
        nxt = successors[out[:, t - 1], which[:, t]]
        out[:, t] = np.where(use_bigram[:, t], nxt, fresh[:, t])
    if repeat:
        out[:, half:] = out[:, : seq_len - half]
    return out


def load_samples(
    dataset: str,
    tokenizer=None,
    *,
    n_samples: int | None,
    seed: int = 0,
    min_length: int = 0,
    max_length: int | None = None,
    vocab_size: int | None = None,
    text_field: str = "text",
    split: str = "train",
    seq_len: int | None = None,
) -> list[list[int]]:
    """Token-id samples from any dataset geomfast knows.

    'synthetic' / 'builtin:synthetic': :func:`synthetic_sequences` with ``vocab_size`` (default:
    the tokenizer's length), sequences of ``seq_len`` (default ``max_length`` or 64) tokens; no
    tokenizer needed. Anything else: documents from :func:`load_texts`, tokenized and filtered by
    :func:`tokenize_samples` (hub datasets are streamed until n_samples are kept).
    """
    if dataset.strip().lower() in SYNTHETIC_NAMES:
        if vocab_size is None:
            if tokenizer is None:
                raise ValueError("[load_samples] the synthetic corpus needs vocab_size (or a tokenizer)")
            vocab_size = len(tokenizer)
        length = int(seq_len or max_length or 64)
        if length <= min_length:
            raise ValueError(f"[load_samples] synthetic sequences of {length} tokens are not longer than "
                             f"min_length={min_length}")
        if n_samples is None:
            raise ValueError("[load_samples] the synthetic corpus needs n_samples")
        return synthetic_sequences(int(n_samples), vocab_size=int(vocab_size), seq_len=length, seed=seed).tolist()
    if tokenizer is None:
        raise ValueError(f"[load_samples] {dataset!r} is text: a tokenizer is needed")
    if is_local_dataset(dataset):
        texts = load_texts(dataset, text_field=text_field, split=split)
        return tokenize_samples(texts, tokenizer, n_samples=n_samples, min_length=min_length,
                                max_length=max_length, seed=seed)
    if n_samples is None:
        raise ValueError(f"[load_samples] a hub dataset ({dataset!r}) is streamed: pass n_samples")
    name, cfg = _split_config(dataset)
    texts_iter = _iter_hub(name, split=split, text_field=text_field, seed=seed, config=cfg)
    out = _select_tokens(texts_iter, tokenizer, n_samples=n_samples, min_length=min_length, max_length=max_length)
    if len(out) < n_samples:
        warnings.warn(f"[load_samples] {dataset!r} gave only {len(out)} documents with more than {min_length} tokens")
    return out


def appends_special_tokens(tokenizer) -> bool:
    """Whether ``tokenizer`` adds special tokens after the text (an EOS its template appends).

    For such tokenizers ``max_length`` truncation keeps the appended tokens (see
    :func:`tokenize_samples`), where earlier geomfast sliced them off long documents only; results
    traced with a ``max_length`` differ between the two, and the sweep's options hash tells them
    apart (``geomfast.sweep.run_result_options``). A template the probe text
    cannot be found in counts as appending (the conservative answer: a recompute, never a mix)."""
    probe = "geomfast probe text"
    plain = [int(i) for i in tokenizer(probe, add_special_tokens=False)["input_ids"]]
    full = [int(i) for i in tokenizer(probe, add_special_tokens=True)["input_ids"]]
    if not plain:
        return True
    ends = [i + len(plain) for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain]
    return not ends or ends[-1] < len(full)


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of what a tokenizer does, so token ids can be reused across checkpoints that
    share it (every Pythia revision does)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr((type(tokenizer).__name__, getattr(tokenizer, "bos_token", None),
                   getattr(tokenizer, "add_bos_token", None))).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- batches

def pad_batch(samples: Sequence[Sequence[int]], *, pad_id: int, padding_side: str = "right") -> dict:
    """Pad token-id lists into {'input_ids', 'attention_mask'}: int64 torch tensors [batch, max_len]."""
    import torch

    if padding_side not in ("right", "left"):
        raise ValueError(f"[pad_batch] padding_side must be 'right' or 'left', got {padding_side!r}")
    if not samples:
        raise ValueError("[pad_batch] expected at least one sample, got none")
    lengths = [len(s) for s in samples]
    if min(lengths) < 1:
        raise ValueError("[pad_batch] every sample needs at least one token; got an empty one")
    width = max(lengths)
    ids = np.full((len(samples), width), int(pad_id), dtype=np.int64)
    mask = np.zeros((len(samples), width), dtype=np.int64)
    for i, s in enumerate(samples):
        if padding_side == "right":
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        else:
            ids[i, width - len(s):] = s
            mask[i, width - len(s):] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def length_order(samples: Sequence[Sequence[int]]) -> list[int]:
    """Indices of samples, longest first (stable): the first batch is the largest, so an
    out-of-memory shows at once."""
    return sorted(range(len(samples)), key=lambda i: -len(samples[i]))


def length_batches(
    samples: Sequence[Sequence[int]],
    batch_size: int,
    *,
    pad_id: int,
    padding_side: str = "right",
    with_indices: bool = False,
) -> Iterator[dict]:
    """Batches of samples of similar length (sorted longest first) padded to the longest in the batch.

    Yields {'input_ids': int64 [b, t], 'attention_mask': int64 [b, t]} torch tensors, and with
    ``with_indices`` also 'indices': the positions of the batch's samples in ``samples``.
    """
    if batch_size < 1:
        raise ValueError(f"[length_batches] batch_size must be >= 1, got {batch_size}")
    order = length_order(samples)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        batch = pad_batch([samples[i] for i in idx], pad_id=pad_id, padding_side=padding_side)
        if with_indices:
            batch["indices"] = list(idx)
        yield batch
