"""Where a trace keeps its Gram states (``accumulate_on`` / ``--accumulate-on``): on the
activations' device, or in host memory. 'auto' falls back to the CPU, with a warning, where the
model runs on a GPU that geomfast's CUDA backend cannot use (not built, no usable driver), so a
sweep on such a machine gives results instead of failing at every checkpoint after its load.
(The GPU side, states on the CPU fed from CUDA activations, is tests/test_cuda.py's.)"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import geomfast.linalg  # noqa: E402
from conftest import rel_fro  # noqa: E402
from helpers_models import build_tiny_model, corpus_texts, tiny_tokenizer  # noqa: E402

NO_CUDA = {"built": False, "usable": False, "reason": "the CUDA backend was not built: GEOMFAST_CUDA=OFF",
           "details": "", "device_count": 0}


def _config(tmp_path, **options):
    from geomfast.sweep import make_config

    return make_config(model="m", dataset="synthetic", out=str(tmp_path / "r.db"), **options)


@pytest.fixture
def gpu_without_backend(monkeypatch):
    """torch sees one GPU; geomfast's CUDA backend cannot run (as a CPU-only build would say)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    real = geomfast.linalg.backends
    monkeypatch.setattr(geomfast.linalg, "backends", lambda: {**real(), "cuda": dict(NO_CUDA)})


def test_auto_accumulates_on_the_cpu_with_a_warning_where_cuda_cannot_run(tmp_path, gpu_without_backend):
    with pytest.warns(UserWarning) as w:
        cfg = _config(tmp_path, device="cuda")
    assert cfg.accumulate_on == "cpu" and cfg.device == "cuda"
    msg = " ".join(str(x.message) for x in w)
    assert "CUDA backend cannot run here" in msg and "GEOMFAST_CUDA=OFF" in msg and "on the CPU" in msg
    with pytest.warns(UserWarning, match="model's GPUs"):  # accelerate's map puts layers on the GPUs
        assert _config(tmp_path, device_map="auto").accumulate_on == "cpu"


def test_explicit_model_where_cuda_cannot_run_is_refused_with_the_reason(tmp_path, gpu_without_backend):
    with pytest.raises(ValueError) as e:
        _config(tmp_path, device="cuda:0", accumulate_on="model")
    msg = str(e.value)
    assert msg.startswith("[trace] accumulate_on 'model'") and "'cuda:0'" in msg
    assert "GEOMFAST_CUDA=OFF" in msg and "expected accumulate_on 'cpu'" in msg


def test_cpu_asked_or_nothing_to_fall_back_from_says_nothing(tmp_path, gpu_without_backend, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _config(tmp_path, device="cuda", accumulate_on="cpu").accumulate_on == "cpu"
        assert _config(tmp_path, device="cpu").accumulate_on == "model"
        assert _config(tmp_path, device="cpu", accumulate_on="CPU").accumulate_on == "cpu"
        real = geomfast.linalg.backends
        monkeypatch.setattr(geomfast.linalg, "backends",
                            lambda: {**real(), "cuda": {**NO_CUDA, "built": True, "usable": True, "reason": ""}})
        assert _config(tmp_path, device="cuda").accumulate_on == "model"  # a usable backend: the GPU


@pytest.mark.parametrize("bad", ["gpu", "", 3])
def test_bad_value_is_refused_naming_the_option(tmp_path, bad):
    if bad == "":  # None / '' mean "not given": the default
        assert _config(tmp_path, accumulate_on=bad).accumulate_on == "model"
        return
    with pytest.raises(ValueError, match=r"\[trace\] accumulate_on must be one of auto, model, cpu, got"):
        _config(tmp_path, accumulate_on=bad)


def test_cli_flag_reaches_the_config_and_refuses_other_values(tmp_path, capsys, monkeypatch):
    from geomfast import cli, sweep

    seen = {}

    def fake_trace(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(sweep, "trace", fake_trace)
    with pytest.raises(SystemExit):
        cli.main(["trace", "--model", "m", "--dataset", "synthetic", "--out", str(tmp_path / "r.db"),
                  "--accumulate-on", "cpu"])
    assert seen["accumulate_on"] == "cpu"
    with pytest.raises(SystemExit) as e:  # a parser error: one line, exit status 1
        cli.main(["trace", "--model", "m", "--dataset", "synthetic", "--out", str(tmp_path / "r.db"),
                  "--accumulate-on", "gpu"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--accumulate-on" in err[0] and "'gpu'" in err[0]


def test_extract_checkpoint_passes_the_device_and_states_land_there(tmp_path):
    """cfg.accumulate_on 'cpu' reaches extract_accumulators as device='cpu': every accumulator
    (an empty one for a key no row reached included) is created there, and the states equal those
    of the default placement."""
    from geomfast.extract import extract_accumulators
    from geomfast.sweep import extract_checkpoint

    tok = tiny_tokenizer()
    samples = [tok(t)["input_ids"] for t in corpus_texts(24, seed=3)]
    model = build_tiny_model("gpt_neox", layers=2).eval()
    made = []

    def factory(dim, device, precision):
        made.append(device)
        return geomfast.GramAccumulator(dim, device=device, precision=precision)

    cfg = _config(tmp_path, accumulate_on="cpu", layers="0,last", pooling="mean,all", progress=False)
    accs = extract_checkpoint(model, samples, cfg)
    ref = extract_accumulators(model, samples, layers=[0, "last"], pooling=["mean", "all"],
                               accumulator_factory=factory)
    assert made == ["cpu"] * 4 and sorted(accs) == sorted(ref)
    tokens = sum(map(len, samples))
    for key in accs:
        assert accs[key].device == "cpu"
        assert accs[key].count == ref[key].count == (tokens if key[1] == "all" else len(samples))
        cov = accs[key].covariance()
        assert np.linalg.norm(cov) > 0 and rel_fro(cov, ref[key].covariance()) < 1e-14
    empty = extract_accumulators(model, [], layers=["last"], pooling="last", accumulator_factory=factory,
                                 device="cpu")
    assert made[-1] == "cpu" and empty[("last", "last")].count == 0


def test_the_config_decides_the_extraction_device(tmp_path, monkeypatch):
    import geomfast.extract
    from geomfast.sweep import extract_checkpoint

    seen = []
    monkeypatch.setattr(geomfast.extract, "extract_accumulators", lambda *a, **k: seen.append(k["device"]) or {})
    for where, device in (("cpu", "cpu"), ("model", None), ("auto", None)):
        extract_checkpoint(None, [], _config(tmp_path, accumulate_on=where, progress=False))
    assert seen == ["cpu", None, None]


@pytest.mark.parametrize("where", ["model", "cpu"])
def test_a_cuda_backend_failure_is_stored_with_the_way_around_it(tmp_path, monkeypatch, where):
    """A checkpoint whose extraction fails inside geomfast's CUDA backend (messages '[cuda] …')
    is recorded, as any failure, with a hint to trace with the states on the CPU; a trace that
    already accumulates there gets no such hint."""
    from helpers_models import make_checkpoint_folder, write_text_files

    import geomfast.sweep as sweep
    from geomfast.store import ResultStore

    ck = make_checkpoint_folder(tmp_path / "ckpts", steps=(0, 1))
    docs = write_text_files(tmp_path / "data")["txt"]

    def cuda_fault(*a, **k):
        raise RuntimeError("[cuda] cudaStreamSynchronize(st) failed at gram_cuda.cu:502: an illegal memory access")

    monkeypatch.setattr(sweep, "extract_checkpoint", cuda_fault)
    s = sweep.trace(str(ck), dataset=str(docs), out=str(tmp_path / "r.db"), n_samples=16,
                    fit_range=(3, 20), progress=False, accumulate_on=where)
    assert (s.ok, s.failed) == (0, 2)
    with ResultStore(tmp_path / "r.db", readonly=True) as store:
        errors = [r["error"] for r in store.rows(status="error")]
    assert len(errors) == 2 and all("illegal memory access" in e for e in errors)
    assert all(("--accumulate-on cpu" in e) == (where == "model") for e in errors), errors
