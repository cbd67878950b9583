"""Extraction equals output_hidden_states of the full model; the forward pass is truncated."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

import geomfast
from geomfast.data import tokenize_samples
from geomfast.extract import extract_accumulators, pool
from geomfast.models import (
    LayerSpec,
    find_decoder_layers,
    find_final_norm,
    load_model,
    load_tokenizer,
    resolve_layers,
)
from helpers_models import ARCHS, GENERIC_ARCHS, build_tiny_model, corpus_texts, save_tiny_model, tiny_tokenizer

N_LAYERS = 3


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny matrices: one intra-op thread is far faster than several spinning on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

POOLS = ("last", "mean", "all")
RTOL = 1e-5


@pytest.fixture(scope="module")
def samples():
    tok = tiny_tokenizer()
    s = tokenize_samples(corpus_texts(120, seed=5), tok, n_samples=23, min_length=2, max_length=40, seed=0)
    s.append(s[0][:1])  # a one-token sequence: the most padding a batch can hold
    lengths = {len(x) for x in s}
    assert min(lengths) == 1 and max(lengths) == 40 and len(lengths) > 8
    return s


_MODELS: dict = {}


def _model(arch):
    if arch not in _MODELS:
        _MODELS[arch] = build_tiny_model(arch, layers=N_LAYERS, hidden=32, seed=7)
    return _MODELS[arch]


_REFS: dict = {}


def _reference(arch, samples):
    """{layer_name: [per-sample [t, d] float64 arrays]} from the full model, one unpadded sequence at a time."""
    if arch in _REFS:
        return _REFS[arch]
    model = _model(arch)
    _, blocks = find_decoder_layers(model)
    captured = []
    h = blocks[-1].register_forward_hook(lambda m, a, out: captured.append(out[0] if isinstance(out, tuple) else out))
    rows: dict = {}
    try:
        with torch.no_grad():
            for s in samples:
                captured.clear()
                hs = model(torch.tensor([s]), output_hidden_states=True).hidden_states
                assert len(hs) == N_LAYERS + 1
                rows.setdefault("embed", []).append(hs[0][0])
                for i in range(N_LAYERS - 1):
                    rows.setdefault(f"block{i}", []).append(hs[i + 1][0])  # hidden_states[i+1] = output of block i
                rows.setdefault(f"block{N_LAYERS - 1}", []).append(captured[-1][0])  # before the final norm
                rows.setdefault("last", []).append(hs[-1][0])
    finally:
        h.remove()
    _REFS[arch] = {k: [x.double().numpy() for x in v] for k, v in rows.items()}
    return _REFS[arch]


def _pooled(rows, how):
    if how == "last":
        return np.stack([x[-1] for x in rows])
    if how == "mean":
        return np.stack([x.mean(axis=0) for x in rows])
    return np.concatenate(rows)


def _assert_matches(acc, x, what):
    assert acc.count == x.shape[0], what
    scale = np.abs(x).max()
    np.testing.assert_allclose(acc.mean(), x.mean(axis=0), rtol=RTOL, atol=RTOL * scale, err_msg=what)
    cov = np.cov(x.T)
    np.testing.assert_allclose(acc.covariance(), cov, rtol=RTOL, atol=RTOL * np.abs(cov).max(), err_msg=what)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ARCHS + GENERIC_ARCHS)
def test_all_layers_all_poolings_match_hidden_states(arch, side, samples):
    ref = _reference(arch, samples)
    accs = extract_accumulators(_model(arch), samples, layers="all", pooling=list(POOLS), batch_size=5,
                                padding_side=side)
    names = ["embed"] + [f"block{i}" for i in range(N_LAYERS)] + ["last"]
    assert set(accs) == {(n, p) for n in names for p in POOLS}
    for name in names:
        for how in POOLS:
            acc = accs[(name, how)]
            assert isinstance(acc, geomfast.GramAccumulator) and acc.dim == 32
            _assert_matches(acc, _pooled(ref[name], how), f"{arch} {side} {name} {how}")


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layers, expect", [
    ("embed", ["embed"]),
    ("0", ["block0"]),
    ("embed,-2", ["embed", "block1"]),
    ("last", ["last"]),
    ([-1], ["block2"]),
])
def test_truncated_requests_match(arch, side, layers, expect, samples):
    ref = _reference(arch, samples)
    accs = extract_accumulators(_model(arch), samples, layers=layers, pooling=("last", "mean"), batch_size=8,
                                padding_side=side)
    assert list(accs) == [(n, p) for n in expect for p in ("last", "mean")]
    for (name, how), acc in accs.items():
        _assert_matches(acc, _pooled(ref[name], how), f"{arch} {side} {name} {how}")


def _watch(model):
    """Record calls of the LM head, the final norm and every block."""
    calls: list = []
    _, blocks = find_decoder_layers(model)
    handles = [model.get_output_embeddings().register_forward_hook(lambda *a: calls.append("lm_head"))]
    norm = find_final_norm(model)
    assert norm is not None
    handles.append(norm.register_forward_hook(lambda *a: calls.append("norm")))
    for i, b in enumerate(blocks):
        handles.append(b.register_forward_hook(lambda *a, i=i: calls.append(f"block{i}")))
    return calls, handles


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layers, ran", [
    ("embed", set()),
    ("0", {"block0"}),
    ("embed,1", {"block0", "block1"}),
    ("last", {"block0", "block1", "block2", "norm"}),
])
def test_lm_head_and_later_blocks_never_run(arch, layers, ran, samples):
    model = _model(arch)
    calls, handles = _watch(model)
    try:
        extract_accumulators(model, samples[:6], layers=layers, pooling="last", batch_size=3)
        assert "lm_head" not in calls
        assert set(calls) == ran
        # the watch itself works: a full forward calls everything
        calls.clear()
        with torch.no_grad():
            model(torch.tensor([samples[0]]))
        assert {"lm_head", "norm", "block2"} <= set(calls)
    finally:
        for h in handles:
            h.remove()


def test_out_of_memory_halves_the_batch_without_double_counting(samples, monkeypatch):
    arch = "gpt_neox"
    model = _model(arch)
    ref = _reference(arch, samples)
    _, blocks = find_decoder_layers(model)
    sizes = []

    def fake_oom(module, args):
        sizes.append(args[0].shape[0])
        if args[0].shape[0] > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    # block 1 fails after embed and block0 have been fed: those must not be fed twice
    h = blocks[1].register_forward_pre_hook(fake_oom)
    try:
        accs = extract_accumulators(model, samples, layers="all", pooling=["last", "all"], batch_size=16)
    finally:
        h.remove()
    # 16 fails, then 8 and 4, and the reduced size sticks: once a batch of <= 3 ran, none is larger
    assert sizes[:3] == [16, 8, 4]
    first_ok = next(i for i, n in enumerate(sizes) if n <= 3)
    assert max(sizes[first_ok:]) <= 3
    for (name, how), acc in accs.items():
        _assert_matches(acc, _pooled(ref[name], how), f"oom {name} {how}")

    def always_oom(module, args):
        raise RuntimeError("out of memory")

    h = blocks[0].register_forward_pre_hook(always_oom)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            extract_accumulators(model, samples[:4], layers="last", batch_size=4)
    finally:
        h.remove()


def test_other_errors_propagate_and_hooks_are_removed(samples):
    model = _model("olmo")
    _, blocks = find_decoder_layers(model)
    before = [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in blocks]
    h = blocks[1].register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(ValueError("boom")))
    try:
        with pytest.raises(ValueError, match="boom"):
            extract_accumulators(model, samples[:4], layers="last", batch_size=4)
    finally:
        h.remove()
    assert [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in blocks] == before
    with pytest.raises(ValueError, match="pooling"):
        extract_accumulators(model, samples[:2], layers="last", pooling="max")
    with pytest.raises(ValueError, match="empty"):
        extract_accumulators(model, [[1, 2], []], layers="last")


def test_continue_existing_accumulators_and_fast_precision(samples):
    model = _model("olmo2")
    ref = _reference("olmo2", samples)
    first = extract_accumulators(model, samples[:10], layers="last", pooling="mean", precision="fast")
    assert first[("last", "mean")].precision == "fast"
    both = extract_accumulators(model, samples[10:], layers="last", pooling="mean", accumulators=dict(first))
    _assert_matches(both[("last", "mean")], _pooled(ref["last"], "mean"), "continued")


def test_pool_left_and_right():
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(h, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(h, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(h, right, "mean").flatten().tolist() == [0.5, 5.5]
    assert pool(h, left, "all").flatten().tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    # padding positions are never read: HF's eager attention in float64 with left padding leaves
    # NaN there, and a mean weighted by the mask was NaN (NaN · 0)
    dirty = h.clone().double()
    dirty[0, :2] = float("nan")
    dirty[0, 1] = float("inf")
    assert pool(dirty, left, "mean").flatten().tolist() == [2.5, 5.5]
    assert pool(dirty, left, "last").flatten().tolist() == [3.0, 7.0]


def test_resolve_layers():
    model = _model("gpt_neox")
    names = lambda x: [s.name for s in resolve_layers(model, x)]  # noqa: E731
    assert names("all") == ["embed", "block0", "block1", "block2", "last"]
    assert names("embed,0,-1,last") == ["embed", "block0", "block2", "last"]
    assert names([0, "block1", -3, "final"]) == ["block0", "block1", "last"]
    assert names(-2) == ["block1"]
    assert resolve_layers(model, "last") == [LayerSpec("last", "last", N_LAYERS)]
    assert resolve_layers(model, "embed")[0].depth == 0 and resolve_layers(model, "last")[0].depth == N_LAYERS + 1
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers(model, "3")
    with pytest.raises(ValueError, match="unknown layer"):
        resolve_layers(model, "mlp")


def test_find_layers_errors_clearly():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = torch.nn.Sequential(torch.nn.Linear(2, 2))

    with pytest.raises(ValueError, match="decoder blocks"):
        find_decoder_layers(Odd())


@pytest.mark.parametrize("arch", ARCHS)
def test_load_model_and_tokenizer_from_folder(arch, tmp_path, samples):
    folder = save_tiny_model(tmp_path / arch, arch, seed=7, layers=N_LAYERS)
    model = load_model(str(folder))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    ids = torch.tensor([samples[1]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, _model(arch)(ids).logits)
    half = load_model(str(folder), dtype="bf16")
    assert next(half.parameters()).dtype == torch.bfloat16
    accs = extract_accumulators(half, samples[:6], layers="last", pooling="mean", batch_size=3)
    assert accs[("last", "mean")].count == 6
    tok = load_tokenizer(str(folder))
    assert tok("model layer token")["input_ids"] == tiny_tokenizer()("model layer token")["input_ids"]
    with pytest.raises(ValueError, match="dtype"):
        load_model(str(folder), dtype="int3")


def test_progress_bar_and_layer_specs(samples):
    model = _model("gpt_neox")
    specs = resolve_layers(model, "embed,last")
    accs = extract_accumulators(model, samples[:5], layers=specs, pooling="all", progress=True, pad_id=3)
    assert list(accs) == [("embed", "all"), ("last", "all")]
    assert accs[("embed", "all")].count == sum(len(s) for s in samples[:5])
