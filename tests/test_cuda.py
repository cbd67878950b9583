"""The CUDA backend against float64 references and the CPU backend.

Every GPU test is skipped, with the reason geomfast.backends() gives, where the CUDA backend is
not usable (no driver, no device, or not built). One test runs everywhere: wherever nvcc is on
PATH, the CUDA backend must have been built, so CUDA code can never silently stop compiling.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import geomfast
from geomfast import reference
from conftest import rel_fro

_CUDA = geomfast.backends()["cuda"]
_USABLE = bool(_CUDA["usable"])
_REASON = _CUDA["reason"] or "the CUDA backend is not usable here"


def test_cuda_backend_built_whenever_nvcc_is_on_path():
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH: nothing says the CUDA backend should have been built")
    assert _CUDA["built"], (
        f"nvcc is on PATH but the CUDA backend was not built ({_CUDA['reason']}); "
        "build with GEOMFAST_CUDA=ON after `pip install nvidia-cublas nvidia-cusolver`")


def test_cuda_backend_reports_why_when_unusable():
    if _USABLE:
        pytest.skip("the CUDA backend is usable here")
    assert _CUDA["reason"], "an unusable backend must say why"


# Everything below needs a usable CUDA device.
gpu = pytest.mark.skipif(not _USABLE, reason=_REASON)
torch = None
if _USABLE:
    try:
        import torch  # noqa: F811
        if not torch.cuda.is_available():
            torch = None
    except ImportError:  # pragma: no cover
        torch = None
needs_torch = pytest.mark.skipif(_USABLE and torch is None, reason="torch with CUDA is not installed")

DTYPES = ["float64", "float32", "float16", "bfloat16"]
BARS = {"highest": 1e-12, "fast": 1e-6}


def tdtype(name):
    return getattr(torch, name)


def gpu_reference_cov(x, ddof: int = 1) -> np.ndarray:
    """Two-pass float64 covariance of the exactly up-cast values, computed on the GPU (fast)."""
    y = x.to(torch.float64)
    y = y - y.mean(dim=0, keepdim=True)
    return (y.T @ y / (y.shape[0] - ddof)).cpu().numpy()


def random_rows(n, d, dtype, *, seed, mean=0.0, device="cuda"):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, d, generator=g, device=device, dtype=torch.float64)
    x = x * torch.rand(d, generator=g, device=device, dtype=torch.float64).add(0.5) + mean
    return x.to(tdtype(dtype))


def _hopper() -> bool:
    """gram_wgmma.cu runs on compute capability 9.0 (H100/H200) only."""
    return torch is not None and tuple(torch.cuda.get_device_capability()) == (9, 0)


def use_kernel(kernel: str, monkeypatch) -> None:
    """cublas, tc, wg (128 x 128 tiles) or wg192 (128 x 192 tiles); wg needs a 9.0 device."""
    if kernel.startswith("wg") and not _hopper():
        pytest.skip("GEOMFAST_CUDA_GRAM_KERNEL=wg needs a compute capability 9.0 GPU (sm_90a)")
    monkeypatch.setenv("GEOMFAST_CUDA_GRAM_KERNEL", "wg" if kernel.startswith("wg") else kernel)
    if kernel == "wg192":
        monkeypatch.setenv("GEOMFAST_CUDA_WG_TILE_N", "192")
    else:
        monkeypatch.delenv("GEOMFAST_CUDA_WG_TILE_N", raising=False)


@pytest.fixture(params=["cublas", "tc", "wg", "wg192"])
def gram_kernel(request, monkeypatch):
    """The fast 16-bit path on cuBLAS products, on gram_tc.cu's two-level WMMA kernel, or on
    gram_wgmma.cu's Hopper kernel (9.0 devices only) with either tile width."""
    use_kernel(request.param, monkeypatch)
    return request.param


def feed(acc, x, splits=(0.37, 0.81)):
    """Streams x in three uneven chunks (the first sets the shift)."""
    n = x.shape[0]
    cuts = [0] + [int(n * s) for s in splits] + [n]
    for a, b in zip(cuts[:-1], cuts[1:]):
        acc.update(x[a:b])
    return acc


@gpu
@needs_torch
@pytest.mark.parametrize("precision", ["highest", "fast"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [31, 32, 33, 4095, 4096, 4097])
def test_covariance_matches_float64_reference(d, dtype, precision):
    n = 3000 if d < 1000 else 6000
    x = random_rows(n, d, dtype, seed=1000 * d + DTYPES.index(dtype), mean=0.3)
    acc = feed(geomfast.GramAccumulator(d, device="cuda", precision=precision), x)
    assert acc.count == n
    cov = acc.covariance()
    assert np.isfinite(cov).all()
    assert np.array_equal(cov, cov.T), "the covariance must be exactly symmetric"
    ref = gpu_reference_cov(x)
    assert rel_fro(cov, ref) <= BARS[precision], (d, dtype, precision, rel_fro(cov, ref))
    if d <= 33:  # the CPU backend is the reference implementation of the same streaming state
        cpu = feed(geomfast.GramAccumulator(d, device="cpu", precision="highest"), x.cpu())
        assert rel_fro(cov, cpu.covariance()) <= BARS[precision]
        np.testing.assert_allclose(acc.mean(), cpu.mean(), rtol=1e-12, atol=1e-12)


@gpu
@needs_torch
@pytest.mark.parametrize("precision", ["highest", "fast"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_offset_keeps_small_eigenvalues(dtype, precision, make_llm_like, gram_kernel):
    """Column means far above the spread (llm_like): `highest` keeps the 10 smallest eigenvalues
    within 1e-6 relative; `fast` is held to its Frobenius bar (as in the CPU twin,
    test_gram.py::test_large_offset_keeps_smallest_eigenvalues: float32 products of this data,
    condition 5e7-7e8, move the smallest eigenvalues by ~1e-4 relative on the CPU too)."""
    rng = np.random.default_rng(7 + DTYPES.index(dtype))
    x64 = make_llm_like(20000, 64, rng)
    if dtype == "float16":
        x64 *= 3e4 / np.abs(x64).max()  # inside float16's range
    x = torch.from_numpy(x64).to("cuda").to(tdtype(dtype))
    acc = feed(geomfast.GramAccumulator(64, device="cuda", precision=precision), x)
    ref = reference.eigvalsh_desc(reference.covariance(x.cpu()))
    if precision == "highest":
        np.testing.assert_allclose(acc.spectrum()[-10:], ref[-10:], rtol=1e-6)
    assert rel_fro(acc.covariance(), reference.covariance(x.cpu())) <= BARS[precision]


@gpu
@needs_torch
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fast_16bit_with_a_few_offset_columns(dtype, gram_kernel):
    """The exact split path with a mix of shifted and unshifted columns (J a strict subset)."""
    d = 300
    x = random_rows(5000, d, "float64", seed=3)
    x[:, ::7] += 50.0  # these columns need a shift
    x = x.to(tdtype(dtype))
    acc = feed(geomfast.GramAccumulator(d, device="cuda", precision="fast"), x)
    assert rel_fro(acc.covariance(), gpu_reference_cov(x)) <= 1e-6


@gpu
@needs_torch
@pytest.mark.parametrize("rows_per_call", [None, "96"])
@pytest.mark.parametrize("offset", [False, True])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("d", [31, 127, 128, 129, 300, 4095, 4097])
@pytest.mark.parametrize("kernel", ["tc", "wg", "wg192"])
def test_own_kernel_matches_reference_and_cublas(kernel, d, dtype, offset, rows_per_call, monkeypatch):
    """gram_tc.cu / gram_wgmma.cu on and off their 128- (192-) column tile edges, with odd row
    counts per call (96 rows: 3 slabs of 32 for tc with chains of 32 rows, a slab and a half of 64
    for wg with chains of 64), some columns shifted (HᵀL and LᵀL terms) or none."""
    use_kernel(kernel, monkeypatch)
    n = 2500 if d < 1000 else 5000
    x = random_rows(n, d, "float64", seed=d + 7 * offset)
    if offset:
        x[:, ::5] += 300.0
    x = x.to(tdtype(dtype))
    ref = gpu_reference_cov(x)
    if rows_per_call:
        monkeypatch.setenv("GEOMFAST_CUDA_TC_ROWS", rows_per_call)
        monkeypatch.setenv("GEOMFAST_CUDA_TC_CHAIN_ROWS", "32" if kernel == "tc" else "64")
    own = feed(geomfast.GramAccumulator(d, device="cuda", precision="fast"), x).covariance()
    assert np.isfinite(own).all() and np.array_equal(own, own.T)
    assert rel_fro(own, ref) <= BARS["fast"], rel_fro(own, ref)
    monkeypatch.setenv("GEOMFAST_CUDA_GRAM_KERNEL", "cublas")
    cb = feed(geomfast.GramAccumulator(d, device="cuda", precision="fast"), x).covariance()
    assert rel_fro(own, cb) <= 2 * BARS["fast"]
    assert not np.array_equal(own, cb), f"the {kernel} kernel did not run (results identical to cuBLAS)"


@gpu
@needs_torch
def test_backends_lists_the_fast_kernels_this_device_runs():
    details = geomfast.backends()["cuda"]["details"]
    assert "fast 16-bit kernels cublas, tc" in details, details
    assert ("fast 16-bit kernels cublas, tc, wg)" in details) == _hopper(), details


@gpu
@needs_torch
def test_gram_kernel_choice_is_checked(monkeypatch):
    """An unknown GEOMFAST_CUDA_GRAM_KERNEL, wg on a device other than 9.0, or an unknown wg tile
    width, is refused by name before the state changes."""
    x = random_rows(200, 40, "bfloat16", seed=5)
    acc = geomfast.GramAccumulator(40, device="cuda", precision="fast")
    acc.update(x)
    before = acc.state_dict()
    monkeypatch.setenv("GEOMFAST_CUDA_GRAM_KERNEL", "wgmma")
    with pytest.raises(ValueError, match="GEOMFAST_CUDA_GRAM_KERNEL.*wgmma"):
        acc.update(x)
    monkeypatch.setenv("GEOMFAST_CUDA_GRAM_KERNEL", "wg")
    if not _hopper():
        with pytest.raises(ValueError, match="compute capability 9.0"):
            acc.update(x)
    else:
        monkeypatch.setenv("GEOMFAST_CUDA_WG_TILE_N", "256")
        with pytest.raises(ValueError, match="GEOMFAST_CUDA_WG_TILE_N.*256"):
            acc.update(x)
    after = acc.state_dict()
    assert after["count"] == before["count"] == 200
    assert np.array_equal(after["gram"], before["gram"])


@gpu
@needs_torch
@pytest.mark.parametrize("precision", ["highest", "fast"])
@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_input_raises_and_leaves_state_unchanged(dtype, first, precision):
    d = 40
    acc = geomfast.GramAccumulator(d, device="cuda", precision=precision)
    if not first:
        acc.update(random_rows(100, d, dtype, seed=1))
    before = acc.state_dict()
    bad = random_rows(50, d, dtype, seed=2)
    bad[7, 3] = float("nan")
    bad[9, 0] = float("inf")
    bad[30, 5] = float("-inf")
    with pytest.raises(ValueError, match=r"3 .*row 7") as info:
        acc.update(bad)
    assert isinstance(info.value, geomfast.NonFiniteError)
    after = acc.state_dict()
    assert after["count"] == before["count"]
    for key in ("shift", "sum", "gram"):
        assert np.array_equal(after[key], before[key]), key
    # still usable afterwards, and exact
    good = random_rows(60, d, dtype, seed=3)
    acc.update(good)
    if first:
        assert rel_fro(acc.covariance(), gpu_reference_cov(good)) <= BARS[precision]


@gpu
@needs_torch
@pytest.mark.parametrize("precision", ["highest", "fast"])
def test_poisoned_device_memory_does_not_leak_into_results(precision, gram_kernel):
    """Fill freed device memory with NaN so that any element we forget to write shows up."""
    d = 1000
    poison = torch.full((256 << 20,), float("nan"), device="cuda", dtype=torch.float64)  # 2 GiB
    del poison
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # back to the driver: our cudaMalloc likely gets these pages
    x = random_rows(3000, d, "bfloat16", seed=11, mean=2.0)
    acc = feed(geomfast.GramAccumulator(d, device="cuda", precision=precision), x)
    cov = acc.covariance()
    st = acc.state_dict()
    for a in (cov, st["gram"], st["sum"], st["shift"], acc.spectrum()):
        assert np.isfinite(a).all()
    assert rel_fro(cov, gpu_reference_cov(x)) <= BARS[precision]
    ev = geomfast.eigvalsh(torch.from_numpy(cov).cuda())
    assert np.isfinite(ev).all()


@gpu
@needs_torch
def test_strided_and_column_major_inputs():
    d = 65
    base = random_rows(4000, 2 * d, "float32", seed=5, mean=1.0)
    views = {"every other column": base[:, ::2], "column-major": base[:, :d].T.contiguous().T,
             "row slice": base[::3, 10:10 + d]}
    for name, x in views.items():
        for precision in ("highest", "fast"):
            acc = geomfast.GramAccumulator(d, device="cuda", precision=precision).update(x)
            assert rel_fro(acc.covariance(), gpu_reference_cov(x)) <= BARS[precision], (name, precision)


@gpu
@needs_torch
@pytest.mark.parametrize("precision", ["highest", "fast"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_views_not_on_16_byte_boundaries(dtype, precision, gram_kernel):
    """Views whose rows are not 16-byte aligned (the 16-byte-vector kernels must not read them):
    x[:, 1:], a storage offset of one element with whole-vector strides, 16-bit rows 8 bytes
    apart, x[3:] of an odd width, a transposed view at an offset; and x[3:] of whole vectors,
    which the vector kernels read. tests/cuda_emulation checks the same on the CPU."""
    if precision == "highest" and gram_kernel != "cublas":
        pytest.skip("the kernel choice is the fast 16-bit path's")
    n = 3000
    flat = random_rows(n * 72 + 8, 1, dtype, seed=41, mean=3.0).reshape(-1)
    views = {
        "x[:, 1:]": flat[: n * 65].view(n, 65)[:, 1:],
        "offset 1, row stride 72": flat[1 : 1 + n * 72].view(n, 72)[:, :64],
        "rows of 68": flat[: n * 68].view(n, 68)[:, :64],
        "x[3:], 37 columns": flat[: (n + 3) * 37].view(n + 3, 37)[3:],
        "x[3:], 64 columns": flat[: (n + 3) * 64].view(n + 3, 64)[3:],
        "transposed, offset 1": flat[1 : 1 + 40 * (n + 1)].view(40, n + 1)[:, :n].T,
    }
    for name, x in views.items():
        acc = feed(geomfast.GramAccumulator(x.shape[1], device="cuda", precision=precision), x)
        torch.cuda.synchronize()  # a misaligned load would surface here, as a sticky error
        assert rel_fro(acc.covariance(), gpu_reference_cov(x)) <= BARS[precision], name


@gpu
def test_cupy_data_misaligned_for_its_type_is_refused():
    """A cupy array made at a byte offset (memptr + 1): every load of it would fault (and lose the
    context), so update() and eigvalsh() refuse it before any kernel runs."""
    cupy = pytest.importorskip("cupy")
    d = 16
    raw = cupy.zeros(4 * d * d + 16, dtype=cupy.uint8)
    x = cupy.ndarray((d, d), dtype=cupy.float32, memptr=raw.data + 2)
    acc = geomfast.GramAccumulator(d, device="cuda", precision="fast")
    with pytest.raises(ValueError, match="aligned"):
        acc.update(x)
    assert acc.count == 0
    with pytest.raises(ValueError, match="aligned"):
        geomfast.eigvalsh(x)
    cupy.cuda.Device().synchronize()  # the context is intact


@gpu
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_default_stream(dtype):
    d = 96
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = random_rows(8000, d, dtype, seed=21, mean=-1.0)  # written on s, read by us on s
        acc = feed(geomfast.GramAccumulator(d, device="cuda", precision="fast"), x)
        cov = acc.covariance()
    torch.cuda.synchronize()
    assert rel_fro(cov, gpu_reference_cov(x)) <= 1e-6


@gpu
@needs_torch
@pytest.mark.parametrize("how", ["torch stream", "int handle", "converted input"])
def test_update_on_a_given_stream(how):
    """update(x, stream=s) reads x on s, not on the current stream: x is written on s and s is
    not the current stream (a read on the current stream would race with the writes)."""
    d = 80
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = random_rows(6000, d, "bfloat16", seed=22, mean=2.0)
        if how == "converted input":
            x = x.to(torch.int32)  # upcast to float64 by geomfast on the current stream, then read on s
    if how == "converted input":
        s.synchronize()
    acc = geomfast.GramAccumulator(d, device="cuda", precision="fast")
    acc.update(x, stream=s if how != "int handle" else s.cuda_stream)
    cov = acc.covariance()
    torch.cuda.synchronize()
    assert rel_fro(cov, gpu_reference_cov(x)) <= BARS["fast"]
    with pytest.raises(ValueError, match="stream"):
        acc.update(x, stream=-3)


@gpu
def test_cupy_input():
    cupy = pytest.importorskip("cupy")
    d = 70
    rng = np.random.default_rng(4)
    for dtype in (np.float64, np.float32, np.float16):
        xh = (rng.standard_normal((3000, d)) + 3.0).astype(dtype)
        with cupy.cuda.Stream(non_blocking=True):
            x = cupy.asarray(xh)
            acc = geomfast.GramAccumulator(d, device="cuda", precision="fast").update(x)
            cov = acc.covariance()
        assert rel_fro(cov, reference.covariance(xh)) <= 1e-6
        ev = geomfast.eigvalsh(cupy.asarray(reference.covariance(xh)))
        ref = reference.eigvalsh_desc(reference.covariance(xh))
        assert np.abs(ev - ref).max() <= 1e-10 * ref[0]


@gpu
@needs_torch
@pytest.mark.parametrize("precision", ["highest", "fast"])
def test_state_moves_between_devices_and_merges(precision):
    d = 50
    x1 = random_rows(2000, d, "float32", seed=31, mean=5.0)
    x2 = random_rows(1500, d, "float32", seed=32, mean=-2.0)
    g = geomfast.GramAccumulator(d, device="cuda", precision=precision).update(x1)
    # the same precision on both sides: a 'fast' state merged into a 'highest' accumulator is refused
    c = geomfast.GramAccumulator(d, device="cpu", precision=precision).update(x2.cpu())
    # cuda -> cpu -> cuda round trips exactly
    back = geomfast.GramAccumulator.from_state_dict(g.state_dict(), device="cpu").to("cuda")
    for key in ("shift", "sum", "gram"):
        assert np.array_equal(back.state_dict()[key], g.state_dict()[key])
    # merging a CPU state (another shift) into a GPU one, and the other way round
    both = torch.cat([x1, x2])
    ref = gpu_reference_cov(both)
    g2 = geomfast.GramAccumulator.from_state_dict(g.state_dict(), device="cuda").merge(c)
    assert rel_fro(g2.covariance(), ref) <= BARS[precision]
    c2 = geomfast.GramAccumulator.from_state_dict(c.state_dict(), device="cpu").merge(g)
    assert rel_fro(c2.covariance(), ref) <= BARS[precision]
    # a GPU accumulator keeps streaming after a merge (new kernel shift from the merged state)
    x3 = random_rows(1000, d, "bfloat16", seed=33, mean=5.0)
    g2.update(x3)
    ref3 = gpu_reference_cov(torch.cat([both, x3.to(torch.float32)]))
    assert rel_fro(g2.covariance(), ref3) <= BARS[precision]
    g2.reset()
    assert g2.count == 0
    g2.update(x2)
    assert rel_fro(g2.covariance(), gpu_reference_cov(x2)) <= BARS[precision]


@gpu
@needs_torch
def test_dtype_switch_between_updates():
    d = 64
    a = random_rows(3000, d, "bfloat16", seed=41, mean=10.0)
    b = random_rows(3000, d, "float32", seed=42, mean=10.0)
    c = random_rows(3000, d, "float16", seed=43, mean=10.0)
    acc = geomfast.GramAccumulator(d, device="cuda", precision="fast")
    for x in (a, b, c, a):
        acc.update(x)
    ref = gpu_reference_cov(torch.cat([t.to(torch.float64) for t in (a, b, c, a)]))
    assert rel_fro(acc.covariance(), ref) <= 1e-6


@gpu
@needs_torch
@pytest.mark.parametrize("n", [31, 32, 33, 512, 1500])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_eigvalsh_full_matches_numpy(n, dtype):
    rng = np.random.default_rng(n)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.sort(rng.uniform(-1, 3, n))[::-1]
    a = (q * lam) @ q.T
    a = (a + a.T) / 2
    a = a.astype(dtype)
    ref = reference.eigvalsh_desc(a.astype(np.float64))
    t = torch.from_numpy(a).cuda()
    got = geomfast.eigvalsh(t)
    assert got.dtype == np.float64 and got.shape == (n,)
    assert np.abs(got - ref).max() <= 1e-10 * np.abs(ref).max()
    got32 = geomfast.eigvalsh(t, single_precision=True)
    assert np.abs(got32 - ref).max() <= 1e-4 * np.abs(ref).max()
    # only the upper triangle is read, as on the CPU
    lower_poisoned = torch.triu(t) + torch.tril(torch.full_like(t, float("nan")), -1)
    assert np.abs(geomfast.eigvalsh(lower_poisoned) - ref).max() <= 1e-10 * np.abs(ref).max()
    cpu = geomfast.eigvalsh(a)
    assert np.abs(got - cpu).max() <= 1e-10 * np.abs(ref).max()


@gpu
@needs_torch
@pytest.mark.parametrize("n", [33, 512])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_eigvalsh_of_a_batch_on_the_gpu(n, dtype):
    """A [2, 3, n, n] CUDA batch (queued with two host syncs): each slice's values as the CPU gives
    them, a strided batch too; a NaN in one slice is named by its index before any solve."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2, 3, n, n))
    a = ((x + np.swapaxes(x, -1, -2)) / 2).astype(dtype)
    t = torch.from_numpy(a).cuda()
    got = geomfast.eigvalsh(t)
    cpu = geomfast.eigvalsh(a)
    scale = np.abs(cpu).max()
    assert got.shape == (2, 3, n) and np.abs(got - cpu).max() <= 1e-10 * scale
    assert np.abs(geomfast.eigvalsh(t[:, ::2]) - cpu[:, ::2]).max() <= 1e-10 * scale
    assert geomfast.eigvalsh(t, k=5).shape == (2, 3, 5)
    top = geomfast.eigvalsh(t, method="randomized", k=5, tol=1e-10)
    assert np.abs(top - cpu[..., :5]).max() <= 1e-6 * scale
    t[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"a\[1, 2\]: .*non-finite"):
        geomfast.eigvalsh(t)


@gpu
@needs_torch
@pytest.mark.parametrize("method", ["full", "randomized"])
def test_eigvalsh_reads_the_upper_triangle_and_warns_when_they_differ(method):
    lam = 1.0 / np.arange(1, 301)
    a = torch.diag(torch.from_numpy(lam)).to("cuda")
    a[7, 3] = 0.25  # below the diagonal: not read
    with pytest.warns(RuntimeWarning, match="not symmetric"):
        got = geomfast.eigvalsh(a, method=method, k=10)
    np.testing.assert_allclose(got, lam[:10], rtol=1e-6)


@gpu
@needs_torch
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("method", ["full", "randomized"])
def test_eigvalsh_non_finite_matrix_is_an_error_not_nan(method):
    """NaN/Inf in the upper triangle (what is read) is a ValueError before any solver runs, as on
    the CPU; in the lower triangle it is not read at all."""
    a = torch.eye(300, device="cuda", dtype=torch.float64)
    a[3, 5] = float("nan")
    a[7, 9] = float("inf")
    with pytest.raises(ValueError, match="2 non-finite"):
        geomfast.eigvalsh(a, method=method, k=10)
    lam = 1.0 / np.arange(1, 301)
    b = torch.diag(torch.from_numpy(lam)).to("cuda")
    b[5, 3] = float("nan")
    np.testing.assert_allclose(geomfast.eigvalsh(b, method=method, k=10), lam[:10], rtol=1e-6)


@gpu
@needs_torch
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_randomized_top_k_matches_full(alpha):
    n, k = 2048, 256
    rng = np.random.default_rng(int(alpha * 10))
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.arange(1, n + 1, dtype=np.float64) ** (-alpha)
    a = (q * lam) @ q.T
    a = (a + a.T) / 2
    t = torch.from_numpy(a).cuda()
    got = geomfast.eigvalsh(t, method="randomized", k=k, seed=3)
    assert got.shape == (k,)
    np.testing.assert_allclose(got[:100], lam[:100], rtol=1e-3)
    cpu = geomfast.eigvalsh(a, method="randomized", k=k, seed=3)
    np.testing.assert_allclose(got[:100], cpu[:100], rtol=1e-3)


@gpu
@needs_torch
def test_spectrum_on_device_matches_reference():
    d = 300
    x = random_rows(4000, d, "bfloat16", seed=51, mean=1.0)
    acc = geomfast.GramAccumulator(d, device="cuda", precision="fast").update(x)
    ref = reference.eigvalsh_desc(gpu_reference_cov(x))
    assert np.abs(acc.spectrum() - ref).max() <= 1e-5 * ref[0]  # ||E||_2 <= 1e-6 ||C||_F
    top = acc.spectrum(method="randomized", k=20)
    np.testing.assert_allclose(top, ref[:20], rtol=1e-4)


@gpu
@needs_torch
def test_second_device_if_present():
    if torch.cuda.device_count() < 2:
        pytest.skip("one CUDA device")
    d = 48
    x = random_rows(2000, d, "bfloat16", seed=61, device="cuda:1")
    acc = geomfast.GramAccumulator(d, device="cuda:1").update(x)
    assert rel_fro(acc.covariance(), gpu_reference_cov(x)) <= 1e-6
    with pytest.raises(ValueError):
        acc.update(x.to("cuda:0"))


@gpu
@needs_torch
def test_batched_spectra_match_one_by_one_and_keep_order():
    rng = np.random.default_rng(21)
    dims = [31, 300, 1000, 300, 129]
    accs = []
    for i, d in enumerate(dims):
        device = "cpu" if i == 3 else "cuda"  # a CPU accumulator in the middle keeps its place
        x = torch.from_numpy(rng.standard_normal((1500, d)) + 5.0).to(torch.bfloat16)
        accs.append(geomfast.GramAccumulator(d, device=device, precision="fast").update(
            x if device == "cpu" else x.cuda()))
    got = geomfast.spectra(accs)
    assert [g.shape for g in got] == [(d,) for d in dims]
    for a, g in zip(accs, got):
        one = a.spectrum()
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, one, rtol=1e-12, atol=1e-12 * one[0])
    top = geomfast.spectra(accs, k=10)
    assert all(t.shape == (10,) for t in top)
    rnd = geomfast.spectra(accs[2:3], method="randomized", k=20)
    np.testing.assert_allclose(rnd[0], got[2][:20], rtol=1e-5)
    # the accumulators stay usable: spectra queued their covariances behind pending updates
    accs[0].update(torch.from_numpy(rng.standard_normal((10, 31))).cuda())
    assert accs[0].count == 1510


@gpu
@needs_torch
def test_singular_values_solved_on_the_device_match_the_cpu():
    x = random_rows(3000, 257, "float32", seed=31, mean=4.0)
    gpu_acc = geomfast.GramAccumulator(257, device="cuda", precision="highest").update(x)
    cpu_acc = geomfast.GramAccumulator(257, device="cpu", precision="highest").update(x.cpu())
    got, want = gpu_acc.singular_values(), cpu_acc.singular_values()
    assert got.shape == want.shape == (257,)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * want[0])


@gpu
@needs_torch
def test_extraction_from_a_gpu_model_into_cpu_states_matches_gpu_states():
    """--accumulate-on cpu: pooled CUDA activations copied to host accumulators give the states
    the CUDA accumulators give (both 'highest', so within 1e-12 of the same float64 sums)."""
    pytest.importorskip("transformers")
    from geomfast.extract import extract_accumulators
    from helpers_models import build_tiny_model, corpus_texts, tiny_tokenizer

    tok = tiny_tokenizer()
    samples = [tok(t)["input_ids"] for t in corpus_texts(40, seed=5)]
    model = build_tiny_model("gpt_neox", layers=2).eval().to("cuda")
    opts = dict(layers=[0, "last"], pooling=["last", "mean", "all"], batch_size=8, precision="highest")
    on_gpu = extract_accumulators(model, samples, **opts)
    on_cpu = extract_accumulators(model, samples, device="cpu", **opts)
    assert sorted(on_gpu) == sorted(on_cpu)
    for key in on_gpu:
        assert on_gpu[key].device.startswith("cuda") and on_cpu[key].device == "cpu"
        assert on_gpu[key].count == on_cpu[key].count > 0
        assert rel_fro(on_cpu[key].covariance(), on_gpu[key].covariance()) <= 1e-11
