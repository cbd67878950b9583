import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from geomfast.data import (
    length_batches,
    load_samples,
    load_texts,
    synthetic_sequences,
    tokenize_samples,
    tokenizer_fingerprint,
)
from helpers_models import corpus_texts, tiny_tokenizer, write_text_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_text_files(tmp_path_factory.mktemp("docs"), corpus_texts(200, seed=3))


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_local_formats_give_the_same_documents(files):
    texts = corpus_texts(200, seed=3)
    for kind in ("txt", "jsonl", "parquet"):
        assert load_texts(str(files[kind])) == texts, kind
    sub = load_texts(str(files["jsonl"]), n_samples=10, seed=1)
    assert len(sub) == 10 and set(sub) <= set(texts)
    assert sub == load_texts(str(files["parquet"]), n_samples=10, seed=1)
    assert sub != load_texts(str(files["txt"]), n_samples=10, seed=2)


def test_text_field_and_errors(tmp_path, files):
    p = tmp_path / "x.jsonl"
    p.write_text('{"body": "hello there"}\n\n{"body": "general kenobi"}\n')
    assert load_texts(str(p), text_field="body") == ["hello there", "general kenobi"]
    with pytest.raises(ValueError, match="no field 'text'"):
        load_texts(str(p))
    with pytest.raises(ValueError, match="no column 'body'"):
        load_texts(str(files["parquet"]), text_field="body")
    with pytest.raises(FileNotFoundError):
        load_texts(str(tmp_path / "missing.txt"))
    with pytest.raises((RuntimeError, ImportError), match="local"):
        load_texts("HuggingFaceFW/fineweb:sample-10BT", n_samples=5)


def test_min_max_length_and_determinism(files, tok):
    texts = load_texts(str(files["txt"]))
    a = tokenize_samples(texts, tok, n_samples=40, min_length=32, max_length=48, seed=0)
    assert len(a) == 40
    assert all(len(s) <= 48 for s in a)
    full = {tuple(tok(t)["input_ids"]) for t in texts}
    # every sample is a kept document (> 32 tokens) truncated to 48
    long_prefixes = {d[:48] for d in full if len(d) > 32}
    assert all(tuple(s) in long_prefixes for s in a)
    assert tokenize_samples(texts, tok, n_samples=40, min_length=32, max_length=48, seed=0) == a
    assert tokenize_samples(texts, tok, n_samples=10, min_length=32, max_length=48, seed=0) == a[:10]
    assert tokenize_samples(texts, tok, n_samples=40, min_length=32, max_length=48, seed=1) != a
    # the boundary: exactly min_length tokens is dropped, one more is kept
    lengths = sorted(len(d) for d in full)
    m = lengths[len(lengths) // 2]
    kept = tokenize_samples(texts, tok, n_samples=None, min_length=m)
    assert min(len(s) for s in kept) == m + 1 or min(len(s) for s in kept) > m
    assert len(kept) == sum(1 for t in texts if len(tok(t)["input_ids"]) > m)
    with pytest.warns(UserWarning, match="only"):
        few = tokenize_samples(texts, tok, n_samples=10_000, min_length=0)
    assert len(few) == len(texts)


@pytest.mark.parametrize("template", [None, "<|endoftext|> $A", "$A <|endoftext|>", "<|endoftext|> $A <|endoftext|>"])
def test_truncation_keeps_the_special_tokens_the_tokenizer_adds(files, template):
    """max_length cuts a document as ``tokenizer(text, truncation=True, max_length=…)`` does: the
    special tokens the tokenizer adds are kept at both ends. Slicing the ids dropped an appended
    EOS from long documents only, so 'last' pooling read EOS for short documents and a text token
    for long ones. Without an appended token, a long document is its first max_length ids."""
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tiny_tokenizer())
    if template is not None:
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[("<|endoftext|>", tok.convert_tokens_to_ids("<|endoftext|>"))])
    texts = load_texts(str(files["txt"]))
    full = [tok(t)["input_ids"] for t in texts]
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    got = tokenize_samples(texts, tok, n_samples=None, min_length=8, max_length=40, seed=0)
    assert len(got) == sum(len(f) > 8 for f in full)
    assert sum(len(f) > 40 for f in full) >= 20  # long documents are there to cut
    by_text = {tuple(tok(t, truncation=True, max_length=40)["input_ids"]) for t, f in zip(texts, full) if len(f) > 8}
    assert {tuple(s) for s in got} == by_text and all(len(s) <= 40 for s in got)
    if template is not None and template.endswith("<|endoftext|>"):
        assert all(s[-1] == eos for s in got)
    if template is not None and template.startswith("<|endoftext|>"):
        assert all(s[0] == eos for s in got)
    if template is None or not template.endswith("<|endoftext|>"):  # cutting is slicing
        assert {tuple(s) for s in got} == {tuple(f[:40]) for f in full if len(f) > 8}


def test_load_samples_dispatch(files, tok):
    s = load_samples(str(files["parquet"]), tok, n_samples=7, seed=4, min_length=5, max_length=20)
    texts = load_texts(str(files["parquet"]))
    assert s == tokenize_samples(texts, tok, n_samples=7, seed=4, min_length=5, max_length=20)
    syn = load_samples("synthetic", None, n_samples=5, vocab_size=300, max_length=32)
    assert len(syn) == 5 and all(len(x) == 32 for x in syn)
    assert load_samples("builtin:synthetic", tok, n_samples=3) == load_samples(
        "synthetic", None, n_samples=3, vocab_size=len(tok))
    with pytest.raises(ValueError, match="vocab_size"):
        load_samples("synthetic", None, n_samples=3)
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(tiny_tokenizer())


def test_synthetic_corpus_properties():
    v, n, t = 256, 2000, 64
    x = synthetic_sequences(n, vocab_size=v, seq_len=t, seed=0)
    assert x.shape == (n, t) and x.dtype == np.int64
    assert x.min() >= 0 and x.max() < v
    assert np.array_equal(x, synthetic_sequences(n, vocab_size=v, seq_len=t, seed=0))
    y = synthetic_sequences(n, vocab_size=v, seq_len=t, seed=1)
    assert not np.array_equal(x, y)
    # second half repeats the first
    assert np.array_equal(x[:, : t // 2], x[:, t // 2:])
    first = x[:, : t // 2]
    # Zipf-skewed unigrams: the top token is far more frequent than the median one
    counts = np.sort(np.bincount(first.ravel(), minlength=v))[::-1]
    assert counts[0] > 20 * max(1, counts[v // 2])
    # sparse bigrams: each token's 4 most common successors take far more than 4/v of its transitions
    pairs = np.stack([first[:, :-1].ravel(), first[:, 1:].ravel()], axis=1)
    top = np.bincount(pairs[:, 0], minlength=v).argmax()
    nxt = np.bincount(pairs[pairs[:, 0] == top, 1], minlength=v)
    share = np.sort(nxt)[::-1][:4].sum() / nxt.sum()
    assert share > 0.3
    # same language for different seeds: the top successors agree
    yf = y[:, : t // 2]
    ypairs = np.stack([yf[:, :-1].ravel(), yf[:, 1:].ravel()], axis=1)
    ynxt = np.bincount(ypairs[ypairs[:, 0] == top, 1], minlength=v)
    assert set(np.argsort(nxt)[-4:]) & set(np.argsort(ynxt)[-4:])
    odd = synthetic_sequences(3, vocab_size=v, seq_len=7, seed=0)
    assert np.array_equal(odd[:, 4:], odd[:, :3])
    assert synthetic_sequences(0, vocab_size=v).shape == (0, 64)


@pytest.mark.parametrize("side", ["right", "left"])
def test_length_batches(side):
    samples = [[1] * n for n in (5, 1, 9, 3, 9, 2, 7)]
    samples = [[i + 10] * len(s) for i, s in enumerate(samples)]
    batches = list(length_batches(samples, 3, pad_id=0, padding_side=side, with_indices=True))
    assert [b["input_ids"].shape for b in batches] == [(3, 9), (3, 5), (1, 1)]
    seen = []
    for b in batches:
        ids, mask = b["input_ids"], b["attention_mask"]
        assert ids.dtype == torch.int64 and mask.dtype == torch.int64
        for row, m, i in zip(ids, mask, b["indices"]):
            tokens = row[m.bool()].tolist()
            assert tokens == samples[i]
            n = len(samples[i])
            if side == "right":
                assert m[:n].all() and not m[n:].any()
            else:
                assert m[m.shape[0] - n:].all() and not m[: m.shape[0] - n].any()
            assert (row[~m.bool()] == 0).all()
            seen.append(i)
    assert sorted(seen) == list(range(len(samples)))
    plain = next(iter(length_batches(samples, 2, pad_id=0, padding_side=side)))
    assert set(plain) == {"input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="padding_side"):
        next(iter(length_batches(samples, 2, pad_id=0, padding_side="middle")))


def test_check_dataset_refuses_what_every_checkpoint_would_fail_on(tmp_path, files, monkeypatch):
    """The checks trace makes before any model loads (DatasetError: the sweep stops with it):
    what load_texts refuses later, strings only (a parquet of integers was traced as their
    digits), and a hub id the hub cannot stream."""
    import importlib.util

    import pyarrow as pa
    import pyarrow.parquet as pq

    from geomfast.data import DatasetError, check_dataset

    for path in files.values():
        assert check_dataset(str(path)) == str(path.resolve())
    assert check_dataset("synthetic") == "synthetic"
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n["text"]\n')
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"text": null}\n{"text": ["x"]}\n')
    pq.write_table(pa.table({"text": [1.5, 2.5]}), tmp_path / "c.parquet")
    (tmp_path / "d.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "e.txt").write_bytes(b"ok\n\xff\xfe\n")
    cases = {"a.jsonl": "a.jsonl:2 has no field 'text': expected a JSON object with a string 'text', got a JSON list",
             "b.jsonl": "b.jsonl:3: field 'text' must be a string, got list",
             "c.parquet": "column 'text' must hold strings, got double",
             "d.parquet": "is not a readable Parquet file",
             "e.txt": "is not UTF-8 text"}
    for name, needle in cases.items():
        with pytest.raises(DatasetError, match=r"^\[trace\] dataset ") as e:
            check_dataset(str(tmp_path / name))
        assert needle in str(e.value), (name, str(e.value))
    # the loader refuses the same (a DatasetError too: should it get there, the sweep stops)
    with pytest.raises(DatasetError, match=r"^\[load_texts\] .*c\.parquet: column 'text' must hold strings"):
        load_texts(str(tmp_path / "c.parquet"))
    with pytest.raises(DatasetError, match=r"^\[load_texts\] .*b\.jsonl:3: field 'text' must be a string"):
        load_texts(str(tmp_path / "b.jsonl"))
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_texts(str(tmp_path))
    # hub ids: offline (the environment, or local_files_only), or without the datasets package
    with pytest.raises(DatasetError, match="HF_HUB_OFFLINE / HF_DATASETS_OFFLINE"):
        check_dataset("org/corpus")
    import geomfast.checkpoints as ck

    monkeypatch.setattr(ck, "_offline", lambda local_files_only: bool(local_files_only))
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(DatasetError, match=r"\(--local-files-only\)"):
        check_dataset("org/corpus", local_files_only=True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    with pytest.raises(DatasetError, match="needs the `datasets` package"):
        check_dataset("org/corpus")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "datasets" else real(name, *a))
    assert check_dataset("org/corpus:config") == "org/corpus:config"  # online, with datasets: as given


def test_a_hub_dataset_that_cannot_be_streamed_is_a_dataset_error(monkeypatch, tok):
    """No such dataset / config, or records without the text field: the same for every
    checkpoint, so a DatasetError (the sweep stops with it) instead of an error row per
    checkpoint. A stream that works gives its texts in order."""
    import sys
    import types

    import geomfast.checkpoints as ck
    from geomfast.data import DatasetError

    monkeypatch.setattr(ck, "_offline", lambda local_files_only: False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    now = {}

    class Stream:
        def __init__(self, records):
            self.records = records

        def shuffle(self, seed, buffer_size):
            return self

        def __iter__(self):
            return iter(self.records)

    def load_dataset(name, config, split, streaming):
        assert streaming
        got = now["records"]
        if isinstance(got, Exception):
            raise got
        return Stream(got)

    class DatasetNotFoundError(FileNotFoundError):
        pass

    fake = types.ModuleType("datasets")
    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    now["records"] = DatasetNotFoundError("Dataset 'org/nope' doesn't exist on the Hub\nor cannot be accessed.")
    with pytest.raises(DatasetError, match=r"^\[trace\] dataset 'org/nope:cfg' \(split 'train'\) could not be "
                                           r"streamed from the hub: DatasetNotFoundError: Dataset 'org/nope' "
                                           r"doesn't exist on the Hub or cannot be accessed\.$"):
        load_samples("org/nope:cfg", tok, n_samples=4)
    now["records"] = []
    with pytest.raises(DatasetError, match=r"'org/empty' \(split 'train'\) streamed no records"):
        load_texts("org/empty", n_samples=4)
    now["records"] = [{"content": "a text", "id": 1}]
    with pytest.raises(DatasetError, match=r"has no field 'text': its records have \['content', 'id'\]"):
        load_texts("org/other-field", n_samples=4)
    texts = corpus_texts(20, seed=9)
    now["records"] = [{"text": t} for t in texts]
    assert load_texts("org/ok", n_samples=5) == texts[:5]
    assert len(load_samples("org/ok", tok, n_samples=4)) == 4
