"""Bad input gets a clear error: it names the function and the argument, and says what was
expected and what came. Non-finite values leave the accumulator exactly as it was.

Fresh random inputs every run; assertion messages carry the seed.
"""
from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest
import torch

import geomfast
from geomfast import reference as ref
from conftest import rel_fro, tuning

G = geomfast.GramAccumulator


def new_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**63))


def check_message(err: BaseException, func: str, *needles: str, says_expected: bool = True) -> str:
    """The message starts with '[func]', contains every needle (the argument, the value that came,
    what was expected), and says what was expected ('expected', 'must' or 'needs')."""
    msg = str(err)
    assert msg.startswith(f"[{func}]"), f"message does not name {func!r}: {msg!r}"
    for needle in needles:
        assert needle in msg, f"{needle!r} missing from {msg!r}"
    if says_expected:
        assert re.search(r"expected|must|needs", msg), f"message does not say what was expected: {msg!r}"
    return msg



# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("shape", [(8,), (2, 3, 8), (1, 1, 1, 8)])
def test_wrong_ndim(lib, shape):
    x = np.zeros(shape) if lib == "numpy" else torch.zeros(shape)
    with pytest.raises(ValueError) as e:
        G(8).update(x)
    check_message(e.value, "GramAccumulator.update", "x", "2-D", str(shape))


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("cols", [7, 9, 1])
def test_wrong_number_of_columns(lib, cols):
    x = np.ones((4, cols)) if lib == "numpy" else torch.ones((4, cols))
    acc = G(8)
    with pytest.raises(ValueError) as e:
        acc.update(x)
    check_message(e.value, "GramAccumulator.update", "x", "8 columns", f"(4, {cols})")
    assert acc.count == 0


@pytest.mark.parametrize("shape", [(0, 0), (0, 7), (3, 0)])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_empty_input_of_the_wrong_width(lib, shape):
    x = np.zeros(shape) if lib == "numpy" else torch.zeros(shape)
    acc = G(8).update(np.ones((3, 8)))
    with pytest.raises(ValueError) as e:
        acc.update(x)
    check_message(e.value, "GramAccumulator.update", "x", str(shape))
    assert acc.count == 3


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_a_chunk_of_zero_rows_adds_nothing(lib):
    # a batch whose rows were all masked out: streaming loops need not special-case it
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 8))
    acc = G(8).update(x[:20])
    before = acc.state_dict()
    empty = np.zeros((0, 8)) if lib == "numpy" else torch.zeros((0, 8), dtype=torch.bfloat16)
    assert acc.update(empty) is acc
    after = acc.state_dict()
    assert acc.count == 20 and all(np.array_equal(before[k], after[k]) for k in ("shift", "sum", "gram"))
    fresh = G(8).update(empty)  # a first chunk of zero rows sets no shift
    assert fresh.count == 0
    fresh.update(x)
    assert rel_fro(fresh.covariance(), np.cov(x, rowvar=False)) <= 1e-13


def test_empty_chunk_on_another_device_is_still_refused():
    if not torch.cuda.is_available():
        x = torch.zeros((0, 8), device="meta")
        with pytest.raises(ValueError) as e:
            G(8).update(x)
        check_message(e.value, "GramAccumulator.update", "meta", "cpu")


@pytest.mark.parametrize("ddof,rows", [(1, 0), (1, 1), (0, 0), (2, 2)])
def test_too_few_rows_at_finalize(ddof, rows):
    acc = G(5)
    if rows:
        acc.update(np.ones((rows, 5)))
    with pytest.raises(ValueError) as e:
        acc.covariance(ddof=ddof)
    check_message(e.value, "GramAccumulator.covariance", f"got {rows}", str(ddof + 1))
    with pytest.raises(ValueError) as e:
        acc.spectrum(ddof=ddof)
    check_message(e.value, "GramAccumulator.spectrum", f"got {rows}")


def test_mean_of_nothing():
    with pytest.raises(ValueError) as e:
        G(3).mean()
    check_message(e.value, "GramAccumulator.mean", "got 0")


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("x", [
    np.zeros((3, 8), dtype=np.complex128),
    np.zeros((3, 8), dtype=np.complex64),
    np.zeros((3, 8), dtype=object),
    np.full((3, 8), "a"),
    np.zeros((3, 8), dtype="datetime64[s]"),
    torch.zeros((3, 8), dtype=torch.complex64),
], ids=["complex128", "complex64", "object", "str", "datetime", "torch-complex64"])
def test_unsupported_dtype(x):
    acc = G(8)
    with pytest.raises(TypeError) as e:
        acc.update(x)
    check_message(e.value, "GramAccumulator.update", "x", "float64", str(x.dtype))
    assert acc.count == 0


@pytest.mark.parametrize("x", [
    np.arange(24, dtype=np.int8).reshape(3, 8),
    np.arange(24, dtype=np.uint16).reshape(3, 8),
    np.arange(24, dtype=np.int64).reshape(3, 8) * 10**9,
    np.eye(3, 8, dtype=bool),
    torch.arange(24, dtype=torch.int8).reshape(3, 8),
    torch.arange(24, dtype=torch.int32).reshape(3, 8),
], ids=["int8", "uint16", "int64-large", "bool", "torch-int8", "torch-int32"])
def test_integer_input_is_upcast_by_design(x):
    acc = G(8).update(x)
    assert acc.count == 3
    err = np.linalg.norm(acc.covariance() - ref.covariance(np.asarray(x, dtype=np.float64)))
    assert err <= 1e-12 * max(np.linalg.norm(ref.covariance(np.asarray(x, dtype=np.float64))), 1e-300)


@pytest.mark.parametrize("order", [">f8", ">f4"])
def test_byte_swapped_floats_are_read_as_their_values(order):
    """A big-endian float64 is float64 all the same: one converting copy, the same result."""
    seed = new_seed()
    x = np.random.default_rng(seed).standard_normal((300, 12)) * 3.0 + 50.0
    swapped = x.astype(order)
    assert not swapped.dtype.isnative
    got = G(12).update(swapped).covariance()
    want = ref.covariance(swapped.astype(np.float64))
    assert rel_fro(got, want) <= 1e-12, seed
    assert abs(geomfast.rankme(swapped) - geomfast.rankme(swapped.astype(np.float64))) <= 1e-12, seed


@pytest.mark.parametrize("x", [np.zeros((0, 8), dtype=np.complex128), np.zeros((0, 8), dtype=object),
                               torch.zeros((0, 8), dtype=torch.complex64)],
                         ids=["complex", "object", "torch-complex"])
def test_zero_row_chunk_of_an_unsupported_dtype_is_refused(x):
    acc = G(8)
    with pytest.raises(TypeError) as e:
        acc.update(x)
    check_message(e.value, "GramAccumulator.update", "x", "float64", str(x.dtype))


@pytest.mark.parametrize("make, needle", [
    (lambda x: x.to_sparse(), "sparse_coo"),
    (lambda x: x.to_sparse_csr(), "sparse_csr"),
    (lambda x: torch.nested.nested_tensor([x[:3], x[3:5]]), "nested"),
], ids=["coo", "csr", "nested"])
def test_tensors_that_are_not_dense_are_refused_by_name(make, needle):
    t = make(torch.randn(6, 8, dtype=torch.float64))
    for call, func, arg in [(lambda: G(8).update(t), "GramAccumulator.update", "x"),
                            (lambda: geomfast.rankme(t), "rankme", "x_or_spectrum"),
                            (lambda: geomfast.PCA(2).fit(t), "PCA.fit", "X")]:
        with pytest.raises(TypeError) as e:
            call()
        check_message(e.value, func, arg, needle)


@pytest.mark.parametrize("x", [np.zeros((5, 8), dtype=np.complex128), np.zeros((5, 8), dtype=object),
                               torch.zeros((5, 8), dtype=torch.complex64)],
                         ids=["complex", "object", "torch-complex"])
@pytest.mark.parametrize("metric", ["rankme", "alpha_req"])
def test_metrics_of_activations_name_themselves_for_a_bad_dtype(x, metric):
    with pytest.raises(TypeError) as e:
        getattr(geomfast, metric)(x)
    check_message(e.value, metric, "x_or_spectrum", str(x.dtype))


def test_pca_transform_refuses_complex_input():
    """fit refused complex input; transform used to drop the imaginary part with only numpy's
    ComplexWarning."""
    x = np.random.default_rng(new_seed()).standard_normal((40, 6))
    p = geomfast.PCA(2).fit(x)
    for func in ("transform", "inverse_transform"):
        arg = x + 1j * x if func == "transform" else (x[:, :2] + 1j)
        with pytest.raises(TypeError) as e:
            getattr(p, func)(arg)
        check_message(e.value, f"PCA.{func}", "X", "complex128")


def test_meta_tensors_in_metrics_and_pca():
    with pytest.raises(TypeError) as e:
        geomfast.rankme(torch.empty(8, device="meta"), convention="full")
    check_message(e.value, "rankme", "x_or_spectrum", "meta")
    with pytest.raises(ValueError) as e:
        geomfast.PCA(2).fit(torch.empty(50, 8, device="meta"))
    check_message(e.value, "PCA.fit", "X", "meta", "cpu")


# --------------------------------------------------------------------------- devices and options
def test_tensor_on_meta_device():
    acc = G(8)
    with pytest.raises(ValueError) as e:
        acc.update(torch.zeros((3, 8), device="meta"))
    check_message(e.value, "GramAccumulator.update", "x", "meta", "cpu")
    assert acc.count == 0


def test_overflowing_sums_are_an_error_not_inf():
    """Finite input whose squares overflow float64 is refused by update(), and a merge that would
    overflow by merge(), each leaving the state as it was. What still overflows is read as an
    error, never Inf/NaN: the raw (uncentred) Gram of rows far from 0 but well centred."""
    rng = np.random.default_rng(new_seed())
    acc = G(3)
    with pytest.raises(ValueError) as e:
        acc.update(rng.random((10, 3)) * 1e200)
    check_message(e.value, "GramAccumulator.update", "overflow float64")
    assert acc.count == 0
    far = G(3).update(1e153 * (1 + 1e-3 * rng.standard_normal((1000, 3))))  # centred squares ~1e303
    assert np.isfinite(far.covariance()).all()
    with pytest.raises(FloatingPointError) as e:
        far.raw_gram()
    check_message(e.value, "GramAccumulator.raw_gram", "overflowed")
    other = G(3).update(-1e153 * (1 + 1e-3 * rng.standard_normal((1000, 3))))
    before = far.state_dict()
    with pytest.raises(ValueError) as e:
        far.merge(other)
    check_message(e.value, "GramAccumulator.merge", "overflow float64")
    after = far.state_dict()
    assert after["count"] == before["count"] and np.array_equal(after["gram"], before["gram"])


def test_spectra_names_the_accumulator_that_failed():
    rng = np.random.default_rng(new_seed())
    good = G(3).update(rng.random((10, 3)))
    bad = G(3).update(rng.random((1, 3)))  # one row: no covariance
    with pytest.raises(ValueError, match=r"\[spectra\] accumulator 2 of 3 .*count=1.*needs at least 2 row"):
        geomfast.spectra([good, good, bad])


def test_tampered_states_are_refused():
    rng = np.random.default_rng(new_seed())
    st = G(4).update(rng.random((10, 4))).state_dict()
    g = st["gram"]
    for change, needle in (({"format": "bogus"}, "format"), ({"count": 2.5}, "integer"),
                           ({"count": 0}, "count is 0"), ({"gram": -np.abs(g) * 1e6}, "negative diagonal"),
                           ({"gram": g + np.triu(np.ones((4, 4)), 1)}, "not symmetric")):
        with pytest.raises(ValueError) as e:
            G.from_state_dict({**st, **change})
        check_message(e.value, "GramAccumulator.from_state_dict", needle, says_expected=False)
    assert G.from_state_dict(st).count == 10


def test_save_into_a_missing_folder(tmp_path):
    acc = G(4).update(np.random.default_rng(0).standard_normal((5, 4)))
    with pytest.raises(FileNotFoundError) as e:
        acc.save(tmp_path / "missing" / "x.safetensors")
    check_message(e.value, "GramAccumulator.save", "missing", "x.safetensors")
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("stream", [0, 7, "stream", 1.5, True, -1])
def test_stream_is_checked(stream):
    """update(x, stream=...) orders the read of CUDA input: a stream with CPU input, or something
    that is not a stream, is an error before any work, and the state is unchanged."""
    acc = G(8).update(np.ones((2, 8)))
    bad_type = isinstance(stream, (str, float, bool))
    with pytest.raises(TypeError if bad_type else ValueError) as e:
        acc.update(np.zeros((3, 8)), stream=stream)
    check_message(e.value, "GramAccumulator.update", "stream", *(() if bad_type else ("cpu",)))
    assert acc.count == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a cuda tensor")
def test_cuda_tensor_into_cpu_accumulator():
    acc = G(8)
    with pytest.raises(ValueError) as e:
        acc.update(torch.zeros((3, 8), device="cuda"))
    check_message(e.value, "GramAccumulator.update", "x", "cuda", "cpu")


@pytest.mark.parametrize("device", ["cpu", "cpu:0", torch.device("cpu")])
def test_host_device_spellings(device):
    assert G(8, device=device).device == "cpu"


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", "cpu:1", "tpu:0", ""])
def test_bad_device_string(device):
    with pytest.raises(ValueError) as e:
        G(8, device=device)
    check_message(e.value, "GramAccumulator", "device", repr(device))


def test_cuda_device_without_cuda_says_why():
    if geomfast.backends()["cuda"]["usable"]:
        pytest.skip("CUDA is usable here")
    with pytest.raises(RuntimeError, match=r"^\[GramAccumulator\].*CUDA"):
        G(8, device="cuda")


@pytest.mark.parametrize("precision", ["float32", "HIGHEST", "", "medium", 1])
def test_bad_precision(precision):
    with pytest.raises(ValueError) as e:
        G(8, precision=precision)
    check_message(e.value, "GramAccumulator", "precision", "'highest'", "'fast'", repr(precision))


@pytest.mark.parametrize("dim", [0, -3, 2.5, True, "8", None])
def test_bad_dim(dim):
    with pytest.raises(ValueError) as e:
        G(dim)
    check_message(e.value, "GramAccumulator", "dim", repr(dim))


# --------------------------------------------------------------------------- non-finite values
CASES = [("numpy", np.float64), ("numpy", np.float32), ("numpy", np.float16), ("torch", torch.bfloat16),
         ("torch", torch.float16), ("torch", torch.float32)]
CASE_IDS = [f"{lib}-{str(t).split('.')[-1].strip(chr(39) + '>')}" for lib, t in CASES]


def _convert(x, lib, dtype, layout):
    a = x.astype(dtype) if lib == "numpy" else torch.from_numpy(x).to(dtype)
    if layout == "F":
        a = np.asfortranarray(a) if lib == "numpy" else a.T.contiguous().T
    return a


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("path", ["staged", "lanes"])
@pytest.mark.parametrize("when", ["first", "later"])
@pytest.mark.parametrize("lib,dtype", CASES, ids=CASE_IDS)
def test_non_finite_values_leave_the_state_unchanged(lib, dtype, when, path, layout):
    seed = new_seed()
    rng = np.random.default_rng(seed)
    d, n = 33, 300
    good = rng.standard_normal((3 * n, d)) + rng.uniform(-4, 4, d)
    bad = good[n:2 * n].copy()
    bad[17, 3] = np.nan
    bad[40, 5] = np.inf
    bad[n - 1, 0] = -np.inf  # last row: the scan's later thread parts report to the same count
    bad[n - 1, d - 1] = np.nan
    good, bad = _convert(good, lib, dtype, layout), _convert(bad, lib, dtype, layout)
    msg = f"seed={seed} {lib} {dtype} {when} {path} {layout}"
    # lanes: block_rows 16 makes a 300-row chunk run over the lanes; staged: default block 512
    with tuning(16, 48) if path == "lanes" else contextlib.nullcontext():
        acc, twin = G(d), G(d)
        if when == "later":
            acc.update(good[:n])
            twin.update(good[:n])
            before = acc.state_dict()
            twin.state_dict()  # reading the state settles staged rows: do it on both
        with pytest.raises(geomfast.NonFiniteError) as e:
            acc.update(bad)
        assert isinstance(e.value, ValueError), msg
        assert e.value.count == 4 and e.value.first_row == 17, f"{msg}: {e.value.count}, {e.value.first_row}"
        text = check_message(e.value, "GramAccumulator.update", "x", "4 non-finite", "row 17", says_expected=False)
        assert "nothing was accumulated" in text, msg
        if when == "first":
            assert acc.count == 0, msg
            with pytest.raises(ValueError):
                acc.covariance()
        else:
            after = acc.state_dict()
            assert after["count"] == n, msg
            for key in ("shift", "sum", "gram"):
                assert np.array_equal(before[key], after[key]), f"{msg}: {key} changed"
        # the accumulator keeps working, exactly like its twin that never saw the bad chunk
        # (the shift of a failed first update is not kept either)
        acc.update(good[n:])
        twin.update(good[n:])
        assert acc.count == twin.count, msg
        assert np.array_equal(acc.covariance(), twin.covariance()), f"{msg}: state differs from the twin"


@pytest.mark.parametrize("first_row", [0, 64, 299])
def test_non_finite_first_row_and_count_in_strided_input(first_row):
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((600, 99))
    x[2 * first_row, 0] = np.nan       # row first_row of x[::2], column 0 of x[:, ::3]
    x[2 * first_row + 1, 3] = np.nan   # in a skipped row: not part of the view
    x[598, 4] = np.inf                 # row 299 of the view, column 4: skipped column
    x[598, 6] = np.inf                 # column 2 of the view
    acc = G(33)
    with pytest.raises(geomfast.NonFiniteError) as e:
        acc.update(x[::2, ::3])
    expected_count = 1 + 1
    assert (e.value.count, e.value.first_row) == (expected_count, first_row), f"seed={seed}: {e.value}"
    assert acc.count == 0


# --------------------------------------------------------------------------- eigvalsh
@pytest.mark.parametrize("shape", [(3, 4), (4, 3), (1, 2)])
def test_eigvalsh_non_square(shape):
    with pytest.raises(ValueError) as e:
        geomfast.eigvalsh(np.zeros(shape))
    check_message(e.value, "eigvalsh", "square", str(shape))


@pytest.mark.parametrize("shape", [(4,), ()])  # (3-D and more: a batch [..., n, n], test_eig.py)
def test_eigvalsh_wrong_ndim(shape):
    with pytest.raises(ValueError) as e:
        geomfast.eigvalsh(np.zeros(shape))
    check_message(e.value, "eigvalsh", "a", "2-D", str(shape))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", ["full", "randomized"])
def test_eigvalsh_non_finite(value, method):
    a = np.eye(64)
    a[3, 10] = a[10, 3] = value
    with pytest.raises(ValueError) as e:
        geomfast.eigvalsh(a, method=method, k=4 if method == "randomized" else None)
    assert str(e.value).startswith("[eigvalsh]") and "non-finite" in str(e.value) and "2" in str(e.value), str(e.value)


def test_eigvalsh_randomized_without_k():
    with pytest.raises(ValueError) as e:
        geomfast.eigvalsh(np.eye(600), method="randomized")
    check_message(e.value, "eigvalsh", "k", "randomized")


@pytest.mark.parametrize("k", [0, -1, 11, 2.0, True, "3"])
def test_eigvalsh_bad_k(k):
    with pytest.raises(ValueError) as e:
        geomfast.eigvalsh(np.eye(10), method="randomized", k=k)
    check_message(e.value, "eigvalsh", "k", "[1, 10]", repr(k))


@pytest.mark.parametrize("method", ["lanczos", "Full", None])
def test_eigvalsh_bad_method(method):
    with pytest.raises(ValueError) as e:
        geomfast.eigvalsh(np.eye(4), method=method)
    check_message(e.value, "eigvalsh", "method", repr(method))


def test_eigvalsh_unknown_option():
    with pytest.raises(TypeError) as e:
        geomfast.eigvalsh(np.eye(4), n_iters=3)
    check_message(e.value, "eigvalsh", "n_iters")


def test_eigvalsh_unsupported_dtype():
    with pytest.raises(TypeError) as e:
        geomfast.eigvalsh(np.eye(4, dtype=np.complex128))
    check_message(e.value, "eigvalsh", "a", "complex128")


def test_spectrum_errors_name_their_function():
    with pytest.raises(ValueError) as e:
        geomfast.spectrum(np.zeros(5))
    check_message(e.value, "spectrum", "x", "2-D")
    acc = G(8).update(np.random.default_rng().standard_normal((20, 8)))
    with pytest.raises(ValueError) as e:
        acc.spectrum(method="randomized", k=9)
    check_message(e.value, "GramAccumulator.spectrum", "k", "[1, 8]", "9")


# --------------------------------------------------------------------------- merge / state / files
def test_merge_with_a_different_dim():
    a, b = G(8).update(np.ones((3, 8))), G(9).update(np.ones((3, 9)))
    before = a.state_dict()
    with pytest.raises(ValueError) as e:
        a.merge(b)
    check_message(e.value, "GramAccumulator.merge", "dim", "8", "9")
    assert np.array_equal(a.state_dict()["gram"], before["gram"]) and a.count == 3


def test_merge_of_a_fast_state_into_a_highest_one_is_refused():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((30, 8)), rng.standard_normal((20, 8))
    hi, fa = G(8).update(x), G(8, precision="fast").update(y)
    before = hi.state_dict()
    with pytest.raises(ValueError) as e:
        hi.merge(fa)
    check_message(e.value, "GramAccumulator.merge", "precision", "'highest'", "'fast'")
    assert hi.count == 30 and np.array_equal(hi.state_dict()["gram"], before["gram"])
    # the other way round keeps the weaker label, and is exact
    merged = G(8, precision="fast").update(y).merge(G(8).update(x))
    assert merged.precision == "fast" and merged.count == 50
    assert rel_fro(merged.covariance(), np.cov(np.vstack([y, x]), rowvar=False)) <= 1e-6


def test_merge_with_something_else():
    with pytest.raises(TypeError) as e:
        G(8).merge(np.zeros((8, 8)))
    check_message(e.value, "GramAccumulator.merge", "GramAccumulator", "ndarray")


@pytest.fixture
def state():
    return G(8).update(np.random.default_rng().standard_normal((20, 8))).state_dict()


@pytest.mark.parametrize("key,bad", [("shift", np.zeros(7)), ("sum", np.zeros(9)), ("gram", np.zeros((8, 7))),
                                     ("gram", np.zeros(64)), ("shift", np.zeros((8, 1)))])
def test_from_state_dict_wrong_shapes(state, key, bad):
    with pytest.raises(ValueError) as e:
        G.from_state_dict({**state, key: bad})
    check_message(e.value, "GramAccumulator.from_state_dict", "shift", "gram", "(8, 8)", str(bad.shape))


@pytest.mark.parametrize("key", ["shift", "sum", "gram", "count", "dim"])
def test_from_state_dict_missing_key(state, key):
    with pytest.raises(ValueError) as e:
        G.from_state_dict({k: v for k, v in state.items() if k != key})
    assert str(e.value).startswith("[GramAccumulator.from_state_dict]") and repr(key) in str(e.value)


def test_from_state_dict_negative_count(state):
    with pytest.raises(ValueError) as e:
        G.from_state_dict({**state, "count": -1})
    check_message(e.value, "GramAccumulator.from_state_dict", "count", "-1")


@pytest.mark.parametrize("suffix", [".pt", ".json", ""])
def test_save_and_load_need_a_known_suffix(tmp_path, suffix):
    path = tmp_path / f"state{suffix}"
    with pytest.raises(ValueError) as e:
        G(3).update(np.ones((2, 3))).save(path)
    check_message(e.value, "GramAccumulator.save", "safetensors", "npz", repr(path.name))
    assert not path.exists()
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError) as e:
        G.load(path)
    check_message(e.value, "GramAccumulator.load", "safetensors", "npz", repr(path.name))


def _write_foreign(path):
    """Files with the right suffix that are not geomfast states."""
    if path.suffix == ".npz":
        np.savez(path, weights=np.zeros(3))
    else:
        from safetensors.numpy import save_file

        save_file({"weights": np.zeros(3)}, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("content", ["foreign", "garbage"])
def test_load_of_a_file_that_is_not_a_geomfast_state(tmp_path, suffix, content):
    path = tmp_path / f"state{suffix}"
    if content == "foreign":
        _write_foreign(path)
    else:
        path.write_bytes(b"this is not an archive" * 10)
    with pytest.raises(ValueError) as e:
        G.load(path)
    assert str(e.value).startswith("[GramAccumulator.load]"), f"{type(e.value).__name__}: {e.value}"
    assert "geomfast" in str(e.value) and str(path.name) in str(e.value), str(e.value)


def test_load_of_a_geomfast_state_with_a_different_format_version(tmp_path):
    path = tmp_path / "state.npz"
    acc = G(4).update(np.ones((3, 4)))
    acc.save(path)
    with np.load(path) as z:
        items = dict(z)
    items["format"] = np.array("geomfast.gram/999")
    np.savez(path, **items)
    with pytest.raises(ValueError) as e:
        G.load(path)
    check_message(e.value, "GramAccumulator.load", "geomfast.gram/999", "geomfast.gram/1")


@pytest.mark.parametrize("ddof", [1.5, True, -1, "1", None])
def test_ddof_must_be_a_non_negative_int(ddof):
    # int(ddof) used to truncate 1.5 to 1 and accept True and -1 (dividing by n + 1)
    acc = G(4).update(np.random.default_rng(0).standard_normal((10, 4)))
    for call, func in ((lambda: acc.covariance(ddof), "GramAccumulator.covariance"),
                       (lambda: acc.spectrum(ddof=ddof), "GramAccumulator.spectrum"),
                       (lambda: geomfast.spectra([acc], ddof=ddof), "spectra"),
                       (lambda: geomfast.spectrum(np.ones((10, 4)), ddof=ddof), "spectrum")):
        with pytest.raises(ValueError) as e:
            call()
        check_message(e.value, func, "ddof", "int >= 0", repr(ddof))
    assert np.array_equal(acc.covariance(np.int64(0)), acc.covariance(0))


def test_batch_functions_name_the_accumulator_without_enough_rows():
    rng = np.random.default_rng(1)
    ok, short = G(3).update(rng.standard_normal((5, 3))), G(3).update(np.ones((1, 3)))
    with pytest.raises(ValueError) as e:
        geomfast.spectra([ok, short])
    check_message(e.value, "spectra", "accumulator 1 of 2", "needs at least 2 row(s), got 1")
    with pytest.raises(ValueError) as e:
        geomfast.singular_values_of([ok, G(3)])
    check_message(e.value, "singular_values_of", "accumulator 1 of 2", "got 0")
    with pytest.raises(ValueError) as e:
        geomfast.spectrum(np.ones((1, 3)))
    check_message(e.value, "spectrum", "x", "at least 2 rows", "got 1")


# --------------------------------------------------------------------------- trace options
@pytest.mark.parametrize("options, needles", [
    ({"device": "tpu"}, ("device 'tpu'", "expected cpu, cuda or cuda:N", "got 'tpu'")),
    ({"device": "cuda:abc"}, ("device 'cuda:abc'", "expected cpu, cuda or cuda:N", "got 'cuda:abc'")),
    ({"device": 3}, ("device 3", "expected cpu, cuda or cuda:N")),
    ({"seed": -1}, ("seed must be >= 0", "got -1")),
])
def test_trace_options_refused_before_any_model_loads(tmp_path, options, needles):
    """A bad device was torch's 'Expected one of cpu, cuda, ipu, …' at each checkpoint's load
    ('cuda:abc': 'needs CUDA'), a negative seed numpy's 'expected non-negative integer'."""
    from geomfast.sweep import make_config

    with pytest.raises(ValueError) as e:
        make_config(model="m", dataset="synthetic", out=str(tmp_path / "r.db"), **options)
    check_message(e.value, "trace", *needles)


def test_a_cuda_index_past_the_devices_is_refused(tmp_path, monkeypatch):
    from geomfast.sweep import make_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError) as e:
        make_config(model="m", dataset="synthetic", out=str(tmp_path / "r.db"), device="cuda:2")
    check_message(e.value, "trace", "device 'cuda:2'", "expected cuda:0 to cuda:1", "got index 2")
    for ok in ("cuda", "cuda:1", "cpu", "cpu:0"):
        assert make_config(model="m", dataset="synthetic", out=str(tmp_path / "r.db"), device=ok).device == ok
    make_config(model="m", dataset="synthetic", out=str(tmp_path / "r.db"), device=torch.device("cpu"))
