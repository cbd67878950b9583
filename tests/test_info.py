"""`geomfast info`: what geomfast runs on, for bug reports and a new machine's first run."""
from __future__ import annotations

import json

import geomfast


def test_info_names_the_backends_and_why_one_is_unusable(capsys):
    from geomfast.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    b = geomfast.backends()
    assert out.startswith(f"geomfast {geomfast.__version__} on Python ")
    assert "backend cpu: usable" in out and b["cpu"]["details"] in out
    assert "backend cuda: " in out
    if not b["cuda"]["usable"]:
        assert b["cuda"]["reason"] in out


def test_info_json_is_the_environment(capsys):
    from geomfast.cli import environment, main

    assert main(["info", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["geomfast"] == geomfast.__version__
    assert got["backends"] == json.loads(json.dumps(geomfast.backends()))
    assert set(got["packages"]) >= {"numpy", "torch", "transformers"} and got["packages"]["numpy"]
    assert sorted(got) == sorted(environment())


def test_info_points_a_gpu_without_the_cuda_backend_to_host_accumulation(capsys, monkeypatch):
    import torch

    import geomfast.linalg

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Fake H100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (9, 0))
    real = geomfast.linalg.backends
    monkeypatch.setattr(geomfast.linalg, "backends", lambda: {
        **real(), "cuda": {"built": False, "usable": False, "reason": "not built: GEOMFAST_CUDA=OFF",
                           "details": "", "device_count": 0}})
    from geomfast.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cuda:0: Fake H100 (compute capability 9.0)" in out
    assert "backend cuda: not built — not built: GEOMFAST_CUDA=OFF" in out
    assert "--accumulate-on cpu" in out


def test_info_shows_the_variables_that_change_kernels_but_no_token(capsys, monkeypatch):
    from geomfast.cli import main

    monkeypatch.setenv("GEOMFAST_CPU_BAND", "gemm")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("environment: "))
    assert "GEOMFAST_CPU_BAND=gemm" in line and "OPENBLAS_NUM_THREADS=1" in line
    assert "hf_secret" not in out and "UNRELATED_VARIABLE" not in out
    assert main(["info", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)["environment"]
    assert env["GEOMFAST_CPU_BAND"] == "gemm" and "HF_TOKEN" not in env
