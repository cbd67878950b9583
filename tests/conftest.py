"""Shared test helpers. Keep this file tiny."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np


def rel_fro(a, b) -> float:
    """Relative Frobenius error of a against the reference b, in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def llm_like(n: int, d: int, rng: np.random.Generator, *, alpha: float = 1.0,
             n_outliers: int | None = None) -> np.ndarray:
    """[n, d] float64 activations shaped like LM hidden states, for numerically hard tests.

    - a power-law covariance spectrum (variance of latent k ~ k^-alpha) mixed by a random
      matrix, so columns are correlated;
    - column means about 1e3 x the spread of the values around them (centering by
      "raw Gram minus n mu mu^T" loses ~6 digits here);
    - ``n_outliers`` columns (default max(1, d // 256)) 1e2 x larger than the rest, mean and
      fluctuation alike, like the "massive activations" of real LMs.
    """
    latent = rng.standard_normal((n, d)) * np.arange(1, d + 1) ** (-alpha / 2)
    x = latent @ (rng.standard_normal((d, d)) / np.sqrt(d))
    spread = float(x.std())
    x += 1e3 * spread * rng.uniform(0.5, 1.5, d) * rng.choice([-1.0, 1.0], d)
    k = max(1, d // 256) if n_outliers is None else n_outliers
    x[:, rng.choice(d, size=min(k, d), replace=False)] *= 1e2
    return x


import pytest  # noqa: E402


@pytest.fixture
def make_llm_like():
    """The generator above as a fixture, for tests that prefer fixtures to imports."""
    return llm_like


def geomfast_root() -> str:
    """The folder holding the geomfast package this test session imported: the source tree with
    an in-place build during development, site-packages when installed (as in CI)."""
    import geomfast

    return str(Path(geomfast.__file__).resolve().parents[1])


def unprivileged_prefix() -> list[str]:
    """The command prefix under which a child process lacks root's override of file permissions
    ([] when not root), so that an unwritable folder is unwritable to it; skips the test where
    that cannot be had (root without setpriv, or a container where setpriv may not drop
    capabilities)."""
    import shutil
    import subprocess

    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: every folder is writable")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.strip()[:200]}")
    return prefix


def subprocess_env(**extra: str) -> dict:
    """Environment for child processes that import geomfast: the same geomfast as the tests
    (never a source tree without its compiled core), offline, one thread each."""
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", GEOMFAST_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([geomfast_root(), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


@contextlib.contextmanager
def tuning(block_rows: int, fast_flush_rows: int):
    """Temporarily change the CPU Gram block sizes (to reach the staged or lane code paths)."""
    from geomfast import _core

    old = _core.get_tuning()
    _core.set_tuning(block_rows, fast_flush_rows, *old[2:])
    try:
        yield
    finally:
        _core.set_tuning(*old)


def fast_kernels() -> list[str]:
    """The CPU Gram kernel sets this machine can run: 'syrk' everywhere (BLAS ssyrk for 'fast',
    dsyrk for 'highest'), and 'amx' where the CPU has AMX (chosen by default there): the bf16
    split products for 'fast' and, with AMX-INT8, the exact int8 digit products for 'highest' on
    bf16/f16 input. Without AMX but with AVX-512 (BF16, VBMI), 'amx-emulated': the same two AMX
    kernels with their tile instructions on a software model (csrc/cpu/amx_emulation.hpp), so
    that their packing, indexing and part skipping are tested on such machines too."""
    from geomfast import _core

    if _core.amx_unavailable_reason() == "":
        return ["syrk", "amx"]
    return ["syrk"] + (["amx-emulated"] if _core.amx_emulation_unavailable_reason() == "" else [])


def is_amx(name: str) -> bool:
    """Whether kernel set `name` runs the AMX kernels (natively or on the model)."""
    return name in ("amx", "amx-emulated")


@contextlib.contextmanager
def fast_kernel(name: str):
    """Accumulators constructed inside use this kernel set ('syrk', 'amx' or 'amx-emulated', see
    fast_kernels)."""
    from geomfast import _core

    old = _core.get_tuning()
    _core.set_tuning(old[0], old[1], is_amx(name), is_amx(name), name == "amx-emulated")
    try:
        yield
    finally:
        _core.set_tuning(*old)
