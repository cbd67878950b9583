"""GramAccumulator against the float64 references of geomfast.reference.

Fresh random inputs every run (np.random.default_rng()); every assertion message carries the seed,
so a failure can be replayed with rng = np.random.default_rng(<seed>).

Code paths of the CPU core (csrc/cpu/gram_cpu.cpp) and how the tests reach them:
- staged: chunks smaller than 2·block_rows·2 rows are centred into a staging block of block_rows
  rows, multiplied when it fills (and when the state is read);
- lanes: chunks of at least 2·block_rows·2 rows are split over the cores, each with its own
  buffers (and, for 'fast', its own float32 partial flushed every fast_flush_rows rows).
`small_blocks` shrinks block_rows/fast_flush_rows so that small inputs run through the lanes
path and through many flushes; the tuning is restored afterwards.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import geomfast
from geomfast import _core
from geomfast import reference as ref
from conftest import fast_kernel, fast_kernels, is_amx, llm_like, rel_fro, subprocess_env, tuning

# Every test here runs once per 'fast' kernel set of this machine (float32 syrk; the AMX kernels
# where the CPU has AMX, or on the tile model where it has AVX-512 without AMX), so both CPU
# implementations of 'fast' meet the same bars.
@pytest.fixture(autouse=True, params=fast_kernels())
def each_fast_kernel(request):
    with fast_kernel(request.param):
        yield request.param


ROOT = Path(__file__).resolve().parents[1]
BARS = {"highest": 1e-12, "fast": 1e-6}  # relative Frobenius error vs the float64 two-pass reference

NUMPY_DTYPES = [np.float64, np.float32, np.float16]
TORCH_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
DTYPES = [("numpy", t) for t in NUMPY_DTYPES] + [("torch", t) for t in TORCH_DTYPES]
DTYPE_IDS = [f"numpy-{np.dtype(t).name}" if lib == "numpy" else str(t).replace(".", "-") for lib, t in DTYPES]
LAYOUTS = ["C", "F", "rows_strided", "cols_strided"]


def new_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**63))



# The two paths: (tuning or None, chunk size). With block_rows = 16 every chunk of >= 64 rows runs
# through the lanes (one per core), and fast partials are flushed every 48 rows inside a lane.
PATHS = {
    "staged": (None, 37),
    "lanes": ((16, 48), 150),
}


def path_context(path):
    tune, _ = PATHS[path]
    return tuning(*tune) if tune else contextlib.nullcontext()


def make_input(rng, n, d, lib, dtype, layout):
    """An (n, d) array of `dtype` in `layout`: mixed column scales and offsets of a few spreads
    (kept moderate so that float16 neither overflows nor loses every digit)."""
    base_rows = 2 * n if layout == "rows_strided" else n
    base_cols = 3 * d if layout == "cols_strided" else d
    x = rng.standard_normal((base_rows, base_cols)) @ np.diag(rng.uniform(0.2, 3.0, base_cols))
    x = x + rng.uniform(-5.0, 5.0, base_cols)
    if lib == "numpy":
        a = x.astype(dtype)
        if layout == "F":
            a = np.asfortranarray(a)
    else:
        a = torch.from_numpy(x).to(dtype)
        if layout == "F":
            a = a.T.contiguous().T  # a transposed (column-major) view, not contiguous
    if layout == "rows_strided":
        a = a[::2]
    elif layout == "cols_strided":
        a = a[:, ::3]
    assert tuple(a.shape) == (n, d)
    return a


def accumulate(x, d, precision, chunk):
    acc = geomfast.GramAccumulator(d, precision=precision)
    for i in range(0, x.shape[0], chunk):
        acc.update(x[i:i + chunk])
    return acc


# --------------------------------------------------------------------------- covariance vs reference
@pytest.mark.parametrize("d", [31, 32, 33])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("precision", ["highest", "fast"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("lib,dtype", DTYPES, ids=DTYPE_IDS)
def test_covariance_matches_two_pass_reference(lib, dtype, layout, precision, path, d):
    seed = new_seed()
    rng = np.random.default_rng(seed)
    n = 600
    x = make_input(rng, n, d, lib, dtype, layout)
    with path_context(path):
        acc = accumulate(x, d, precision, PATHS[path][1])
        cov = acc.covariance()
        mean = acc.mean()
        raw = acc.raw_gram()
    x64 = ref.to_float64(x)  # the same, exactly up-cast values
    msg = f"seed={seed} {lib} {dtype} {layout} {precision} {path} d={d}"
    assert acc.count == n, msg
    assert cov.dtype == np.float64 and cov.shape == (d, d), msg
    err = rel_fro(cov, ref.covariance(x64))
    assert err <= BARS[precision], f"{msg}: covariance relative Frobenius error {err:.3e}"
    # The mean comes from float64 column sums in both precisions.
    mref = x64.mean(axis=0)
    merr = float(np.max(np.abs(mean - mref)) / np.max(np.abs(mref)))
    assert merr <= 1e-13, f"{msg}: mean error {merr:.3e}"
    rerr = rel_fro(raw, ref.raw_gram(x64))
    assert rerr <= BARS[precision], f"{msg}: raw_gram relative Frobenius error {rerr:.3e}"


@pytest.mark.parametrize("precision", ["highest", "fast"])
def test_covariance_is_exactly_symmetric(precision):
    """Σ is symmetric by definition; the core stores one triangle, so the result should be too
    (eigensolvers read one triangle, users compare against cov.T)."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = make_input(rng, 300, 33, "numpy", np.float64, "C")
    # the first chunk's mean (the shift) is not the overall mean, so Σy ≠ 0 enters the result
    acc = geomfast.GramAccumulator(33, precision=precision).update(x[:20]).update(x[20:] + 1.0)
    cov = acc.covariance()
    asym = np.abs(cov - cov.T).max()
    assert asym == 0.0, f"seed={seed} {precision}: covariance differs from its transpose by up to {asym:.3e}"
    assert np.array_equal(acc.raw_gram(), acc.raw_gram().T), f"seed={seed} {precision}: raw_gram not symmetric"


@pytest.mark.parametrize("precision", ["highest", "fast"])
@pytest.mark.parametrize("lib,dtype", [("numpy", np.float32), ("torch", torch.bfloat16), ("numpy", np.float64)],
                         ids=["numpy-float32", "torch-bfloat16", "numpy-float64"])
def test_lanes_path_with_default_tuning(lib, dtype, precision):
    """One chunk of more than 2·512·2 rows: the lanes path with the shipped block sizes (lanes
    flush their float32 partials at the end of their range and every 2048 rows)."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    # highest's exact AMX-INT8 kernel (16-bit input) multiplies blocks of at least 2048 rows
    block = max(_core.get_tuning()[0], 2048)
    n, d = 4 * block + 2 * 2048 + 7, 33
    x = make_input(rng, n, d, lib, dtype, "C")
    acc = geomfast.GramAccumulator(d, precision=precision).update(x)
    x64 = ref.to_float64(x)
    err = rel_fro(acc.covariance(), ref.covariance(x64))
    assert acc.count == n
    assert err <= BARS[precision], f"seed={seed} {lib} {dtype} {precision}: error {err:.3e}"


@pytest.mark.parametrize("precision", ["highest", "fast"])
def test_mixed_chunk_sizes_cross_both_paths(precision):
    """Small and large chunks interleaved: staged rows are settled before a lanes update and the
    staging block keeps working after it; the tuning changes midway (staged rows > new block)."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    d = 32
    x = make_input(rng, 1500, d, "numpy", np.float32, "C")
    acc = geomfast.GramAccumulator(d, precision=precision)
    bounds = [0, 5, 100, 101, 400, 433, 700, 1000, 1001, 1500]
    with tuning(64, 100):
        for a, b in zip(bounds[:3], bounds[1:3]):
            acc.update(x[a:b])
    with tuning(16, 48):  # 100 rows were staged in a block of 64 (+36), now the block is 16
        for a, b in zip(bounds[2:-1], bounds[3:]):
            acc.update(x[a:b])
    err = rel_fro(acc.covariance(), ref.covariance(x))
    assert acc.count == 1500
    assert err <= BARS[precision], f"seed={seed} {precision}: error {err:.3e}"


@pytest.mark.parametrize("n", [2, 3, 17])
@pytest.mark.parametrize("precision", ["highest", "fast"])
def test_tiny_inputs_and_ddof(n, precision):
    seed = new_seed()
    rng = np.random.default_rng(seed)
    d = 33
    x = rng.standard_normal((n, d)) + 7.0
    acc = geomfast.GramAccumulator(d, precision=precision).update(x)
    for ddof in (0, 1):
        err = rel_fro(acc.covariance(ddof=ddof), ref.covariance(x, ddof=ddof))
        assert err <= BARS[precision], f"seed={seed} n={n} ddof={ddof}: error {err:.3e}"


def test_integer_input_is_upcast_exactly():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = rng.integers(-1000, 1000, size=(200, 31)).astype(np.int32)
    acc = geomfast.GramAccumulator(31).update(x).update(torch.from_numpy(x[:50].astype(np.int64)))
    full = np.concatenate([x, x[:50]]).astype(np.float64)
    err = rel_fro(acc.covariance(), ref.covariance(full))
    assert err <= 1e-12, f"seed={seed}: error {err:.3e}"


# --------------------------------------------------------------------------- metrics: fast vs highest
def test_rankme_and_alpha_from_fast_match_highest_on_llm_like_data():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    n, d = 3000, 256
    x = llm_like(n, d, rng).astype(np.float32)
    specs = {}
    for precision in ("highest", "fast"):
        acc = geomfast.GramAccumulator(d, precision=precision)
        for i in range(0, n, 700):  # 700-row chunks: staged, and lanes for none (block 512)
            acc.update(x[i:i + 700])
        specs[precision] = acc.spectrum()
    for convention in ("li2025", "garrido2023", "full"):
        hi = geomfast.rankme(specs["highest"], convention=convention)
        fa = geomfast.rankme(specs["fast"], convention=convention)
        assert abs(fa - hi) <= 1e-6 * abs(hi), f"seed={seed} rankme[{convention}] fast {fa!r} vs highest {hi!r}"
    hi = geomfast.alpha_req(specs["highest"]).alpha
    fa = geomfast.alpha_req(specs["fast"]).alpha
    assert abs(fa - hi) <= 1e-6 * abs(hi), f"seed={seed} alpha fast {fa!r} vs highest {hi!r}"


# --------------------------------------------------------------------------- large offsets
def _two_pass_longdouble(x64):
    """The two-pass covariance with every step in long double (x87 80-bit on x86-64: 11 more
    bits than float64)."""
    xl = np.asarray(x64, dtype=np.longdouble)
    y = xl - xl.mean(axis=0)
    return (y.T @ y) / (xl.shape[0] - 1)


def _smallest_eigenvalue_error(cov, reference, m=10):
    """Max relative change of the m smallest eigenvalues of `reference` when it becomes `cov`, to
    first order: |vₖᵀ(cov − reference)vₖ| / λₖ, in long double.

    Why not compare eigvalsh outputs: these covariances have condition numbers of 1e10–1e13, and
    LAPACK's absolute error ε·λ₁ makes float64 eigvalsh itself wrong by up to ~1e-5 relative in
    the smallest eigenvalues (measured: numpy's two-pass result against the same in long double
    differed by > 1e-6 in 6 of 150 draws, which made this test fail ~1 in 60 runs). The first-order
    change measures what the accumulation did to the matrix in the small directions; over 150
    draws: rounding the long-double reference to float64 1.9e-8 at most, geomfast `highest`
    4.0e-8, numpy's float64 two-pass 6.6e-9, the naive formula 1.4e-6 to 4.5 (median 5.6e-5)."""
    w, v = np.linalg.eigh(np.asarray(reference, dtype=np.float64))
    v = v[:, :m].astype(np.longdouble)
    lam = np.einsum("ik,ij,jk->k", v, reference, v)
    delta = np.einsum("ik,ij,jk->k", v, np.asarray(cov, dtype=np.longdouble) - reference, v)
    return float(np.max(np.abs(delta / lam)))


def _large_offset_bar(x64, reference):
    """1e-6, unless float64 arithmetic itself cannot get there on this draw: some draws are nearly
    singular (the random mixing in llm_like; one had condition number 3e14 and λ_min = 1.5e-12,
    where merely rounding the exact covariance to float64 moves λ_min by 6e-7 and numpy's float64
    two-pass covariance is off by 3.3e-6). Then the bar is 10× numpy's float64 two-pass error.
    Ordinary draws: numpy's error ~1e-12, so the bar is 1e-6."""
    floor = _smallest_eigenvalue_error(ref.covariance(x64), reference)
    return max(1e-6, 10 * floor)


@pytest.mark.parametrize("path", list(PATHS))
def test_large_offset_keeps_smallest_eigenvalues(path):
    """Column means 1e3× the spread plus an outlier column 1e2× larger (llm_like): the 10 smallest
    covariance eigenvalues of `highest` stay within 1e-6 relative of those of the two-pass
    covariance (computed in long double; see _smallest_eigenvalue_error for the measure)."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    n, d = 3000, 64
    x = llm_like(n, d, rng)
    reference = _two_pass_longdouble(x)
    with path_context(path):
        acc = accumulate(x, d, "highest", 400 if path == "staged" else PATHS[path][1])
        err = _smallest_eigenvalue_error(acc.covariance(), reference)
    bar = _large_offset_bar(x, reference)
    assert err <= bar, f"seed={seed} {path}: smallest eigenvalues off by {err:.3e} relative (bar {bar:.1e})"
    # `fast` is held to its Frobenius bar on the same data.
    with path_context(path):
        fast = accumulate(x, d, "fast", 400 if path == "staged" else PATHS[path][1])
        err = rel_fro(fast.covariance(), ref.covariance(x))
    assert err <= BARS["fast"], f"seed={seed} {path}: fast error {err:.3e}"


def test_naive_uncentered_accumulation_fails_the_large_offset_bar():
    """The same bar rejects 'x.T @ x − n·m·mᵀ' in float64, so the test above can fail. Its error
    varies between draws (median 5.6e-5 over 150 seeds, the smallest 1.4e-6), so it has to fail
    on at least two of three fresh draws."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    n, d = 3000, 64
    errors = []
    for _ in range(3):
        x = llm_like(n, d, rng)
        m = x.mean(axis=0)
        naive = (x.T @ x - n * np.outer(m, m)) / (n - 1)
        reference = _two_pass_longdouble(x)
        errors.append(_smallest_eigenvalue_error(naive, reference) / _large_offset_bar(x, reference))
    assert sum(e > 1 for e in errors) >= 2, f"seed={seed}: the naive formula passed (error/bar {errors}); the bar proves nothing"


# --------------------------------------------------------------------------- eigenvalues
@pytest.mark.parametrize("d", [1, 2, 31, 32, 33, 100])
def test_spectrum_matches_numpy_eigvalsh(d):
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = llm_like(4 * d + 10, d, rng, n_outliers=0) if d > 2 else rng.standard_normal((9, d)) + 3
    acc = geomfast.GramAccumulator(d).update(x)
    cov = acc.covariance()
    expected = np.linalg.eigvalsh(cov)[::-1]
    for name, got in (("acc.spectrum", acc.spectrum()), ("geomfast.eigvalsh", geomfast.eigvalsh(cov)),
                      ("geomfast.spectrum", geomfast.spectrum(acc))):
        assert got.shape == (d,) and got.dtype == np.float64
        assert np.all(np.diff(got) <= 0), f"seed={seed} {name}: not descending"
        err = np.max(np.abs(got - expected))
        assert err <= 1e-10 * expected[0], f"seed={seed} {name} d={d}: error {err:.3e}·λ1={expected[0]:.3e}"


# --------------------------------------------------------------------------- properties (hypothesis)
def _merge_tree(accs, order):
    """Merges a list of accumulators pairwise in the order given by `order` (a list of indices
    into the current list), returning the root."""
    accs = list(accs)
    for i in order:
        if len(accs) == 1:
            break
        i %= len(accs) - 1
        a, b = accs[i], accs.pop(i + 1)
        a.merge(b)
    while len(accs) > 1:
        accs[0].merge(accs.pop())
    return accs[0]


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), d=st.sampled_from([1, 5, 31, 32, 33]),
       precision=st.sampled_from(["highest", "fast"]), small_blocks=st.booleans())
def test_any_chunking_order_and_merge_tree_gives_the_same_covariance(data, seed, d, precision, small_blocks):
    rng = np.random.default_rng(seed)
    n = data.draw(st.integers(2, 300), label="n")
    x = llm_like(n, d, rng, n_outliers=min(1, d)) if d >= 2 else rng.standard_normal((n, 1)) * 3 + 1e3
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n - 1), max_size=8), label="cuts")))
    chunks = [x[a:b] for a, b in zip([0] + cuts, cuts + [n])]
    perm = data.draw(st.permutations(range(len(chunks))), label="order")
    groups = data.draw(st.lists(st.integers(0, 3), min_size=len(chunks), max_size=len(chunks)), label="groups")
    tree = data.draw(st.lists(st.integers(0, 10), max_size=6), label="tree")
    with tuning(16, 48) if small_blocks else contextlib.nullcontext():
        accs = [geomfast.GramAccumulator(d, precision=precision) for _ in range(4)]
        for i in perm:
            accs[groups[i]].update(chunks[i])
        root = _merge_tree(accs, tree)
        cov = root.covariance()
    msg = f"seed={seed} n={n} d={d} {precision} cuts={cuts} order={list(perm)} groups={groups} tree={tree}"
    assert root.count == n, msg
    err = rel_fro(cov, ref.covariance(x))
    assert err <= BARS[precision], f"{msg}: error {err:.3e}"


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), d=st.sampled_from([3, 31, 32, 33]),
       first_rows=st.integers(1, 5), offset=st.sampled_from([0.0, 1e2, 1e4]))
def test_merge_of_accumulators_with_very_different_shifts(seed, d, first_rows, offset):
    """a's shift is the mean of many rows; b's the mean of `first_rows` rows drawn `offset` spreads
    away from the rest of b's data: merging re-shifts exactly."""
    rng = np.random.default_rng(seed)
    xa = llm_like(200, d, rng)
    xb = llm_like(150, d, rng) + 3.0
    head = xb[:first_rows] + offset * rng.standard_normal(d) * xb.std(axis=0)
    a = geomfast.GramAccumulator(d).update(xa)
    b = geomfast.GramAccumulator(d).update(head).update(xb[first_rows:])
    cov_b = b.covariance()
    merged = a.merge(b)
    every = np.concatenate([xa, head, xb[first_rows:]])
    err = rel_fro(merged.covariance(), ref.covariance(every))
    msg = f"seed={seed} d={d} first_rows={first_rows} offset={offset}"
    assert merged.count == 350, msg
    assert err <= 1e-12, f"{msg}: merged covariance error {err:.3e}"
    # exactly rounded column means: numpy's pairwise float64 sum is itself off by up to 1.4e-13
    # relative here (an outlier column with spread 225x its mean; geomfast 8e-16 on that draw)
    exact_mean = np.array([math.fsum(every[:, c]) for c in range(d)]) / every.shape[0]
    merr = float(np.max(np.abs(merged.mean() - exact_mean)) / np.max(np.abs(exact_mean)))
    assert merr <= 1e-13, f"{msg}: merged mean error {merr:.3e}"
    # merging leaves the other accumulator as it was
    assert np.array_equal(b.covariance(), cov_b), msg


def test_merge_with_empty_accumulators():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = llm_like(100, 32, rng)
    a = geomfast.GramAccumulator(32).update(x)
    before = a.state_dict()
    a.merge(geomfast.GramAccumulator(32))
    after = a.state_dict()
    for key in ("shift", "sum", "gram"):
        assert np.array_equal(before[key], after[key]), f"seed={seed}: {key} changed by merging an empty state"
    e = geomfast.GramAccumulator(32).merge(a)
    assert e.count == 100
    assert rel_fro(e.covariance(), ref.covariance(x)) <= 1e-12, f"seed={seed}"


def _state_equal(s1, s2):
    return (s1["count"] == s2["count"] and s1["dim"] == s2["dim"] and s1["precision"] == s2["precision"]
            and all(np.array_equal(s1[k], s2[k]) for k in ("shift", "sum", "gram")))


@settings(deadline=None, max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), d=st.sampled_from([1, 31, 32, 33]), n1=st.integers(1, 120),
       n2=st.integers(1, 120), precision=st.sampled_from(["highest", "fast"]),
       fmt=st.sampled_from(["state_dict", ".safetensors", ".npz"]))
def test_state_round_trips_exactly_and_keeps_accumulating(tmp_path_factory, seed, d, n1, n2, precision, fmt):
    rng = np.random.default_rng(seed)
    x = llm_like(n1 + n2, d, rng, n_outliers=min(1, d)) if d > 1 else rng.standard_normal((n1 + n2, 1)) + 50
    acc = geomfast.GramAccumulator(d, precision=precision).update(x[:n1])
    state = acc.state_dict()
    if fmt == "state_dict":
        back = geomfast.GramAccumulator.from_state_dict(state)
    else:
        path = tmp_path_factory.mktemp("state") / f"acc{fmt}"
        acc.save(path)
        back = geomfast.GramAccumulator.load(path)
    msg = f"seed={seed} d={d} n1={n1} n2={n2} {precision} {fmt}"
    assert _state_equal(back.state_dict(), state), f"{msg}: state changed in the round trip"
    assert back.precision == precision and back.count == n1 and back.dim == d, msg
    # the loaded accumulator keeps going, exactly like the original
    back.update(x[n1:])
    acc.update(x[n1:])
    assert back.count == acc.count == n1 + n2, msg
    assert np.array_equal(back.covariance(), acc.covariance()), f"{msg}: loaded accumulator diverged"
    err = rel_fro(back.covariance(), ref.covariance(x))
    assert err <= BARS[precision], f"{msg}: error {err:.3e} after loading and updating"


def test_reset_and_to_cpu():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = llm_like(300, 33, rng)
    acc = geomfast.GramAccumulator(33).update(x[:100])
    copy = acc.to("cpu")
    assert _state_equal(copy.state_dict(), acc.state_dict()), f"seed={seed}"
    acc.reset()
    assert acc.count == 0
    acc.update(x[100:])  # after reset the shift is taken again from the first chunk
    err = rel_fro(acc.covariance(), ref.covariance(x[100:]))
    assert err <= 1e-12, f"seed={seed}: error {err:.3e} after reset"


def test_reference_accumulator_agrees():
    """The reference accumulator (all rows kept) answers like the streaming one."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = llm_like(500, 31, rng)
    r, g = ref.ReferenceGramAccumulator(31), geomfast.GramAccumulator(31)
    for i in range(0, 500, 123):
        r.update(x[i:i + 123])
        g.update(x[i:i + 123])
    assert r.count == g.count == 500
    assert rel_fro(g.covariance(), r.covariance()) <= 1e-12, f"seed={seed}"
    assert rel_fro(g.raw_gram(), r.raw_gram()) <= 1e-12, f"seed={seed}"
    np.testing.assert_allclose(g.mean(), r.mean(), rtol=1e-13, err_msg=f"seed={seed}")


def test_self_merge_doubles_the_rows():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = llm_like(100, 32, rng)
    acc = geomfast.GramAccumulator(32).update(x)
    acc.merge(acc)
    assert acc.count == 200
    err = rel_fro(acc.covariance(), ref.covariance(np.concatenate([x, x])))
    assert err <= 1e-12, f"seed={seed}: error {err:.3e}"


def test_concurrent_updates_from_python_threads():
    """The GIL is released during updates: several threads feeding two accumulators (small and
    large chunks, so both paths run at once) still give the reference covariance."""
    import threading

    seed = new_seed()
    rng = np.random.default_rng(seed)
    d = 33
    xs = [llm_like(3000, d, rng).astype(np.float32) for _ in range(2)]
    accs = [geomfast.GramAccumulator(d), geomfast.GramAccumulator(d, precision="fast")]
    errors = []

    def feed(acc, x, chunk):
        try:
            for i in range(0, x.shape[0], chunk):
                acc.update(x[i:i + chunk])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    jobs = []
    for acc, x in zip(accs, xs):
        jobs.append(threading.Thread(target=feed, args=(acc, x[:1500], 50)))     # staged
        jobs.append(threading.Thread(target=feed, args=(acc, x[1500:], 1500)))  # lanes (with block 16)
    with tuning(16, 48):
        for t in jobs:
            t.start()
        for t in jobs:
            t.join()
    assert not errors, f"seed={seed}: {errors}"
    for acc, x in zip(accs, xs):
        assert acc.count == 3000
        err = rel_fro(acc.covariance(), ref.covariance(x))
        assert err <= BARS[acc.precision], f"seed={seed} {acc.precision}: error {err:.3e}"


@pytest.mark.parametrize("scale", [1e20, 1e-25])
@pytest.mark.parametrize("lib,dtype", [("numpy", np.float32), ("torch", torch.bfloat16)], ids=["float32", "bfloat16"])
def test_fast_precision_on_extreme_magnitudes(lib, dtype, scale):
    """Finite float32/bfloat16 input far from 1: float32 products of the centred values overflow
    (|y| > ~1.8e19) or underflow (|y| < ~1e-19). `fast` must then either stay within its bar
    or refuse with an error — never return inf/zeros silently."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x64 = rng.standard_normal((300, 8)) * scale
    x = x64.astype(dtype) if lib == "numpy" else torch.from_numpy(x64).to(dtype)
    acc = geomfast.GramAccumulator(8, precision="fast")
    try:
        acc.update(x)
        cov = acc.covariance()
    except (ValueError, OverflowError, ArithmeticError):
        return
    expected = ref.covariance(x)
    err = rel_fro(cov, expected)
    assert np.all(np.isfinite(cov)) and err <= BARS["fast"], (
        f"seed={seed} scale={scale}: fast covariance error {err:.3e} (finite: {np.isfinite(cov).all()})")


@pytest.mark.parametrize("ratio,bound", [(1.99, BARS["fast"]), (1.0, 2e-7)])
def test_fast_bfloat16_wide_with_moderate_column_means(ratio, bound, each_fast_kernel):
    """bf16 columns whose mean is 1-2 spreads from 0, 1,024 wide. The AMX kernel once left columns
    within 2 spreads of 0 uncentred (their y = x has few bits); its float32 sums then lose a factor
    ~(mean/spread)² against the covariance, growing with the width. Measured on the AMX kernel under
    the software model of its tile instructions ('amx-emulated'): 1.1e-6 at ratio 1.99 and 4.6e-7
    at ratio 1, against ~4e-8 for ssyrk around the float64 mean; with the 1/4-spread bound now
    used, 1.5e-8 and 2.0e-8."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    n, d = 20000, 1024
    x = torch.from_numpy(ratio * 2.7 + 2.7 * rng.standard_normal((n, d), dtype=np.float32)).to(torch.bfloat16)
    acc = geomfast.GramAccumulator(d, precision="fast").update(x)
    err = rel_fro(acc.covariance(), ref.covariance(x))
    assert err <= bound, f"seed={seed} ratio={ratio} {each_fast_kernel}: fast error {err:.3e}"


@pytest.mark.parametrize("first_rows", [1, 37])
def test_fast_bfloat16_when_the_shift_is_a_single_row(first_rows):
    """bfloat16 rows streamed one at a time at first: the shift is then one bf16 row, the centred
    values and their products are exact short floats, and float32 accumulation over a block of
    rows rounds them with a bias (diagonal entries off by up to ~2e-5 relative). `fast` must keep
    its 1e-6 Frobenius bar whatever the first chunk is."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(5.0 + 2.7 * rng.standard_normal((2049, 32))).to(torch.bfloat16)
    acc = geomfast.GramAccumulator(32, precision="fast").update(x[:first_rows])
    for i in range(first_rows, 2049, 100):
        acc.update(x[i:i + 100])
    err = rel_fro(acc.covariance(), ref.covariance(x))
    assert err <= BARS["fast"], f"seed={seed} first_rows={first_rows}: fast error {err:.3e}"


# --------------------------------------------------------------------------- every bit pattern
# The row kernels (csrc/cpu/row_kernels.cpp) classify and up-cast values on their raw bits, with
# clones per x86-64 level. Every 16-bit pattern goes through them here, in rows of several widths
# (vector bodies and scalar tails), compared with numpy/torch's own conversions.
def _all_patterns(kind: str):
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    if kind == "float16":
        vals = bits.view(np.float16).astype(np.float64)
        t = torch.from_numpy(bits.view(np.float16).copy())
    else:
        t = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)
        vals = t.double().numpy()
    return t, vals


@pytest.mark.parametrize("d", [1, 7, 32, 37])
@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_every_finite_16bit_value_is_up_cast_exactly(kind, d):
    t, vals = _all_patterns(kind)
    finite = np.isfinite(vals)
    rng = np.random.default_rng(new_seed())
    order = rng.permutation(np.flatnonzero(finite))
    n = order.size // d
    x = t[torch.from_numpy(order[: n * d])].reshape(n, d)
    x64 = vals[order[: n * d]].reshape(n, d)
    acc = geomfast.GramAccumulator(d).update(x)
    # the mean is a float64 sum of exactly up-cast values: compare with numpy's, column by column
    scale = np.abs(x64).max(axis=0) * n
    assert np.all(np.abs(acc.mean() * n - x64.sum(axis=0)) <= 1e-13 * scale), kind
    err = rel_fro(acc.covariance(), ref.covariance(x64))
    assert err <= 1e-12, f"{kind} d={d}: covariance error {err:.3e}"


@pytest.mark.parametrize("d", [1, 16, 33])
@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_every_non_finite_16bit_pattern_is_counted(kind, d):
    t, vals = _all_patterns(kind)
    bad = np.flatnonzero(~np.isfinite(vals))
    good = np.flatnonzero(np.isfinite(vals) & (np.abs(vals) < 100) & (np.abs(vals) > 1e-3))
    rng = np.random.default_rng(new_seed())
    n = -(-bad.size // d) + 3
    idx = rng.choice(good, size=n * d)
    first = 2
    idx[first * d:first * d + bad.size] = rng.permutation(bad)  # rows 2.. hold every NaN/Inf pattern
    x = t[torch.from_numpy(idx)].reshape(n, d)
    acc = geomfast.GramAccumulator(d).update(x[:first])
    before = acc.state_dict()
    with pytest.raises(_core.NonFiniteError) as e:
        acc.update(x)
    assert e.value.count == bad.size and e.value.first_row == first, (kind, d, e.value.count, e.value.first_row)
    after = acc.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in ("shift", "sum", "gram")), kind


@pytest.mark.parametrize("precision", ["highest", "fast"])
def test_float32_subnormals_and_signed_zeros(precision):
    """Subnormal and ±0 float32 values among normal ones: up-cast exactly, never flushed."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((300, 24)) * 1e-3).astype(np.float32)
    tiny = np.float32(1e-40)  # subnormal
    x[::3, 5] = tiny * rng.integers(-5, 6, 100)
    x[::7, 6] = -0.0
    acc = geomfast.GramAccumulator(24, precision=precision).update(x)
    x64 = x.astype(np.float64)
    err = rel_fro(acc.covariance(), ref.covariance(x64))
    assert err <= BARS[precision], f"seed={seed} {precision}: error {err:.3e}"
    # float64 column sums: equal to numpy's up to float64 summation-order rounding
    scale = np.abs(x64).max(axis=0) * x64.shape[0]
    assert np.all(np.abs(acc.mean() - x64.mean(axis=0)) * x64.shape[0] <= 1e-13 * scale), f"seed={seed}"


def test_fast_kernel_choice_is_reported_and_used(each_fast_kernel):
    """backends() says which product 'fast' runs on the CPU; where AMX is there (or its software
    model), the AMX and syrk kernels both run (their float32 rounding differs, so their results are
    not bit-identical)."""
    reason = _core.amx_unavailable_reason()
    details = geomfast.backends()["cpu"]["details"]
    if reason:
        assert "syrk" in details and reason in details, details
        assert "amx" not in fast_kernels()
    else:
        assert "AMX" in details, details
    amx = next((k for k in fast_kernels() if is_amx(k)), None)
    if amx is None:
        return
    seed = new_seed()
    x = llm_like(3000, 40, np.random.default_rng(seed)).astype(np.float32)
    covs = {}
    for k in (amx, "syrk"):
        with fast_kernel(k):
            covs[k] = geomfast.GramAccumulator(40, precision="fast").update(x).covariance()
        err = rel_fro(covs[k], ref.covariance(x.astype(np.float64)))
        assert err <= BARS["fast"], f"seed={seed} {k}: error {err:.3e}"
    assert not np.array_equal(covs[amx], covs["syrk"]), f"seed={seed}: the {amx} kernel did not run"


def test_amx_can_be_turned_off_by_environment(each_fast_kernel):
    """GEOMFAST_AMX=0 makes 'fast' use float32 syrk and 'highest' float64 syrk, and backends() says so."""
    import json
    import subprocess
    import sys

    from conftest import subprocess_env

    code = ("import json, geomfast; from geomfast import _core; "
            "print(json.dumps([_core.amx_unavailable_reason(), geomfast.backends()['cpu']['details']]))")
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(GEOMFAST_AMX="0"), capture_output=True,
                         text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    reason, details = json.loads(out.stdout.strip().splitlines()[-1])
    assert reason == "disabled by GEOMFAST_AMX=0", reason
    assert "float32 syrk" in details and reason in details, details
    assert "highest Gram: float64 syrk" in details, details


def _sixteen_bit_llm_like(rng, n, d, torch_dtype):
    """LLM-like activations rounded to bf16/f16, plus what the exact kernel must route to float64:
    tiny values next to large ones in a column (more digits than any slice count holds), exact
    zeros, a constant column and an all-zero column."""
    x = llm_like(n, d, rng)
    x *= 30.0 / np.abs(x).max()  # inside float16's range, outliers included
    x[rng.random((n, d)) < 2e-4] = 3e-7  # bf16 and f16 (subnormal) both hold it
    x[rng.random((n, d)) < 0.01] = 0.0
    x[:, 3] = 1.5
    x[:, 5] = 0.0
    return torch.from_numpy(x).to(torch_dtype)


@pytest.mark.parametrize("torch_dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("path", ["staged", "lanes"])
def test_highest_on_16bit_input_each_kernel(torch_dtype, path, each_fast_kernel):
    """highest on bf16/f16 input: on AMX-INT8 machines the exact int8 digit products (shift on the
    input's grid, rows that need more digits through dsyrk), else dsyrk. Both meet the highest
    bar against float64 numpy; the raw shifted Gram, against long double arithmetic on the same
    centred values, is within 2e-15 of Σ|yᵢ||yⱼ| for the exact kernel (measured at most 2.7e-16
    over 48 draws: one float64 rounding per 2048-row block) and within dsyrk's worst-case bound
    n·2^-53 ≈ 1e-12 for dsyrk (which reached 1.0e-14 here)."""
    precision = "highest"
    seed = new_seed()
    rng = np.random.default_rng(seed)
    n, d = 9000, 70
    xt = _sixteen_bit_llm_like(rng, n, d, torch_dtype)
    x64 = ref.to_float64(xt)
    exact = each_fast_kernel == "amx-emulated" or (each_fast_kernel == "amx" and _core.amx_exact_unavailable_reason() == "")
    acc = geomfast.GramAccumulator(d, precision=precision)
    chunk = 700 if path == "staged" else n  # lanes: one chunk of more than 2 blocks per lane
    for i in range(0, n, chunk):
        acc.update(xt[i:i + chunk])
    err = rel_fro(acc.covariance(), ref.covariance(x64))
    assert err <= BARS["highest"], f"seed={seed} {each_fast_kernel} {path}: error {err:.3e}"
    state = acc.state_dict()
    shift = np.asarray(state["shift"])
    y = x64.astype(np.longdouble) - shift.astype(np.longdouble)
    gram_ld = y.T @ y
    scale = np.abs(y).T @ np.abs(y)
    gram = np.asarray(state["gram"], dtype=np.longdouble)
    bound = np.where(scale > 0, scale, 1)
    worst = float(np.max(np.abs(gram - gram_ld) / bound))
    bar = 2e-15 if exact else n * 2.0 ** -53
    assert worst <= bar, f"seed={seed} {each_fast_kernel} {path}: raw Gram off by {worst:.2e} of sum |y||y|"
    if exact:
        grid = shift.astype(np.float32)
        grid = torch.from_numpy(grid).to(torch_dtype).double().numpy()
        assert np.array_equal(shift, grid), f"seed={seed}: shift not on the {torch_dtype} grid"


@pytest.mark.parametrize("precision", ["highest", "fast"])
def test_mixed_dtype_stream_crosses_kernels(precision):
    """One accumulator fed bf16, float32, f16 and float64 chunks of every size in turn: on AMX-INT8
    machines 16-bit chunks of highest take the exact kernel and the others dsyrk, a staging block
    holding both goes to dsyrk whole, and fast switches between its float32 and float64 staging;
    every way, the state is that of the float64 reference on the same (up-cast) values."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    d = 45
    # moderate offsets (make_input): large-mean bf16 columns are a known limit of fast's float32
    # syrk kernel (test_fast_bfloat16_columns_of_every_mean_to_spread_ratio); tiny values and zeros
    # make the exact kernel split rows
    x = make_input(rng, 12000, d, "numpy", np.float64, "C")
    x[rng.random(x.shape) < 2e-4] = 3e-7
    x[rng.random(x.shape) < 0.01] = 0.0
    kinds = [torch.bfloat16, np.float32, torch.float16, np.float64]
    bounds = [0, 3, 700, 701, 2500, 9000, 9100, 12000]
    parts = []
    acc = geomfast.GramAccumulator(d, precision=precision)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        kind = kinds[i % len(kinds)]
        chunk = torch.from_numpy(x[a:b]).to(kind) if isinstance(kind, torch.dtype) else x[a:b].astype(kind)
        acc.update(chunk)
        parts.append(ref.to_float64(chunk))
    x64 = np.concatenate(parts)
    err = rel_fro(acc.covariance(), ref.covariance(x64))
    assert acc.count == x64.shape[0]
    assert err <= BARS[precision], f"seed={seed} {precision}: error {err:.3e}"


def test_the_tile_model_matches_the_tile_unit():
    """Where the CPU has AMX, the software model of the tile instructions ('amx-emulated', what
    tests run on AVX-512 CPUs without AMX) must reproduce it: the exact int8 kernel's integer sums
    do not depend on order, so its Gram is bit-identical; the bf16 kernel's float32 sums may be
    ordered differently by the hardware, so its covariance agrees to float32 rounding."""
    if _core.amx_unavailable_reason() or _core.amx_emulation_unavailable_reason():
        pytest.skip(f"needs AMX and the model: {_core.amx_unavailable_reason() or _core.amx_emulation_unavailable_reason()}")
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = llm_like(5000, 70, rng)
    xb = torch.from_numpy(x).to(torch.bfloat16)
    out = {}
    for k in ("amx", "amx-emulated"):
        with fast_kernel(k):
            out[k, "fast"] = geomfast.GramAccumulator(70, precision="fast").update(xb).covariance()
            out[k, "fast32"] = geomfast.GramAccumulator(70, precision="fast").update(x.astype(np.float32)).covariance()
            if _core.amx_exact_unavailable_reason() == "":
                out[k, "exact"] = np.asarray(geomfast.GramAccumulator(70).update(xb).state_dict()["gram"])
    for kind in ("fast", "fast32"):
        diff = rel_fro(out["amx-emulated", kind], out["amx", kind])
        assert diff <= 1e-7, f"seed={seed} {kind}: model and tile unit differ by {diff:.2e}"
    if ("amx", "exact") in out:
        assert np.array_equal(out["amx", "exact"], out["amx-emulated", "exact"]), f"seed={seed}: exact kernel differs"


def test_highest_exact_kernel_is_reported_and_used(each_fast_kernel):
    """backends() says which product 'highest' runs for 16-bit input; where AMX-INT8 is there, the
    exact kernel and dsyrk both run (dsyrk rounds its long sums, so they are not bit-identical)."""
    reason = _core.amx_exact_unavailable_reason()
    details = geomfast.backends()["cpu"]["details"]
    if reason:
        assert "highest Gram: float64 syrk" in details and reason in details, details
        exact = "amx-emulated" if "amx-emulated" in fast_kernels() else None
    else:
        assert "exact AMX-INT8" in details, details
        exact = "amx"
    if exact is None:
        return
    seed = new_seed()
    xt = _sixteen_bit_llm_like(np.random.default_rng(seed), 6000, 40, torch.bfloat16)
    grams = {}
    for k in (exact, "syrk"):
        with fast_kernel(k):
            grams[k] = np.asarray(geomfast.GramAccumulator(40).update(xt).state_dict()["gram"])
    assert not np.array_equal(grams[exact], grams["syrk"]), f"seed={seed}: the exact {exact} kernel did not run"



@pytest.mark.parametrize("d", [1, 15, 16, 17, 63, 64, 65, 257])
@pytest.mark.parametrize("path", list(PATHS))
def test_fast_at_tile_edges(d, path):
    """'fast' around the AMX kernel's 16-wide tiles and 32-wide blocks (and the syrk kernel's),
    streamed in uneven chunks on both code paths, on LLM-like data."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = llm_like(700, d, rng).astype(np.float32)
    with path_context(path):
        acc = accumulate(x, d, "fast", PATHS[path][1])
        cov = acc.covariance()
    err = rel_fro(cov, ref.covariance(x.astype(np.float64)))
    assert err <= BARS["fast"], f"seed={seed} d={d} {path}: error {err:.3e}"


@pytest.mark.parametrize("holder", ["bfloat16", "float32", "float32 column-major", "float64 column-major"])
@pytest.mark.parametrize("chunk", [100, 20000])
def test_fast_bfloat16_benchmark_activations_within_the_bar(chunk, holder, each_fast_kernel):
    """bench.make_activations (means up to ~200 spreads in its small-scale columns, an outlier
    column) rounded to bf16, given as bf16 or as float32/float64 holding those values (row-major,
    or column-major views, which the validation scan walks per column), staged (100-row chunks)
    and through the lanes: within the fast bar on every kernel. The syrk kernel's former 512-row
    ssyrk calls gave 2.0e-6 here, for all of them (column-major ones until the strided scan
    looked at their mantissas too)."""
    from geomfast import bench

    x = bench.make_activations(60000, 512, "bfloat16")
    if holder != "bfloat16":
        x = x.to(torch.float32 if holder.startswith("float32") else torch.float64)
    if holder.endswith("column-major"):
        x = x.T.contiguous().T
    acc = geomfast.GramAccumulator(512, precision="fast")
    for c in torch.split(x, chunk):
        acc.update(c)
    ref_cov = np.cov(x.to(torch.float64).numpy(), rowvar=False)
    err = rel_fro(acc.covariance(), ref_cov)
    assert err <= BARS["fast"], f"{each_fast_kernel} chunks of {chunk}: error {err:.3e}"


@pytest.mark.parametrize("path", list(PATHS))
def test_fast_bfloat16_columns_of_every_mean_to_spread_ratio(path, each_fast_kernel):
    """bf16 input, fast on AMX: the shift is put on the bf16 grid (columns within 1/4 spread of 0
    are not shifted) so that centred values need two bf16 parts and the lo products are skipped
    where exactly zero. Columns with means from 0 to 1e3 spreads, values near zero in shifted columns
    (where lo is not zero and the full six products run), exact zeros: all within the bar."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    # (bf16 columns with means of 1e2-1e3 spreads hold a few levels, whose float32 rounding adds up
    # coherently: 1.0-1.5e-6 with the syrk kernel's former 512-row ssyrk calls; 16-bit input now
    # goes in 64-row calls, see FastAccumulator::update)
    ratios = np.array([0.0, 0.2, 0.3, 0.5, 1.0, 1.9, 2.1, 2.5, 3.0, 5.0, 10.0, 1e2, 1e3, -3.0, -1e3])
    d = 3 * ratios.size
    sd = rng.uniform(0.01, 10.0, d)
    mean = np.tile(ratios, 3) * sd
    x = rng.standard_normal((900, d)) * sd + mean
    # exact zeros where they are not 1e3-spread outliers (those push float32 syrk past the bar:
    # 3.7e-6 measured for the syrk kernel, staged path, with zeros in the 1e3 columns too)
    moderate = np.abs(np.tile(ratios, 3)) <= 5.0
    x[:, moderate] = np.where(rng.random((x.shape[0], int(moderate.sum()))) < 0.01, 0.0, x[:, moderate])
    xb = torch.from_numpy(x).to(torch.bfloat16)
    with path_context(path):
        acc = accumulate(xb, d, "fast", PATHS[path][1])
        cov = acc.covariance()
    err = rel_fro(cov, ref.covariance(ref.to_float64(xb)))
    assert err <= BARS["fast"], f"seed={seed} {each_fast_kernel} {path}: error {err:.3e}"
    if is_amx(each_fast_kernel):
        shift = acc.state_dict()["shift"]
        on_grid = torch.from_numpy(shift).to(torch.bfloat16).double().numpy()
        assert np.array_equal(shift, on_grid), f"seed={seed}: shift not on the bf16 grid"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("path", ["one chunk", "lanes", "staged"])
def test_fast_keeps_the_variance_of_a_tiny_column(dtype, path):
    """A column whose values are ~1e-20 beside O(1) ones: float32 products lose its squares
    (below float32's normal range), and its variance came out negative (-1.1e-44 for a true
    1.0e-40). fast's diagonal is summed in float64: every variance is right and >= 0."""
    rng = np.random.default_rng(11)
    n, d = 6000, 24
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 3.0, d) + rng.uniform(-5, 5, d)
    x[:, 3] = rng.standard_normal(n) * 1e-20 + 3e-20
    x[:, 17] = rng.standard_normal(n) * 2e-21
    t = torch.from_numpy(x.astype(np.float32))
    if dtype == "bfloat16":
        t = t.to(torch.bfloat16)
    xr = t.double().numpy()  # the values fed in, exactly
    acc = geomfast.GramAccumulator(d, precision="fast")
    if path == "staged":
        for c in torch.split(t, 97):
            acc.update(c)
    elif path == "lanes":
        with tuning(512, 1024):
            acc.update(t)
    else:
        acc.update(t)
    cov, want = acc.covariance(), np.cov(xr, rowvar=False)
    var, true = np.diag(cov), np.diag(want)
    assert (var > 0).all(), var[[3, 17]]
    assert np.abs(var / true - 1).max() <= 1e-6, (var[[3, 17]], true[[3, 17]])
    assert rel_fro(cov, want) <= BARS["fast"]


def _longdouble_cov(x: np.ndarray) -> np.ndarray:
    xl = x.astype(np.longdouble)
    xl -= xl.mean(0)
    return ((xl.T @ xl) / (len(x) - 1)).astype(np.float64)


def _max_entry_error(c: np.ndarray, ref: np.ndarray) -> float:
    """max |ΔC_ij| / sqrt(C_ii C_jj): every entry against its own columns' spread."""
    return float(np.max(np.abs(c - ref) / np.sqrt(np.outer(np.diag(ref), np.diag(ref)))))


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("layout", ["one update", "4096 then the rest", "updates of 1000", "updates of 100"])
@pytest.mark.parametrize("offset", [5.0, 1000.0])
def test_rows_unlike_the_first_ones_stay_centred(dtype, layout, offset):
    """The shift comes from the first rows; rows after them with another mean (a drifting stream,
    sequences sorted by length) were summed off-centre and lost accuracy with the rows: highest
    1.5e-10 and fast 2.5e-6 per entry at 160,000 rows. The shift is now estimated from rows spread
    over the first chunk and follows the data when they drift (checked against long double)."""
    rng = np.random.default_rng(21)
    n, d = 40_000, 32
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, d)
    x[4096:] += offset * rng.uniform(0.5, 1.5, d)
    t = torch.from_numpy(x.astype(np.float32) if dtype != "float64" else x)
    if dtype == "bfloat16":
        t = t.to(torch.bfloat16)
    xr = t.double().numpy()
    ref = _longdouble_cov(xr)
    parts = {"one update": [t], "4096 then the rest": [t[:4096], t[4096:]],
             "updates of 1000": list(torch.split(t, 1000)), "updates of 100": list(torch.split(t, 100))}[layout]
    for precision in ("highest", "fast"):
        acc = geomfast.GramAccumulator(d, precision=precision)
        for p in parts:
            acc.update(p)
        cov = acc.covariance()
        if precision == "highest":  # every entry, against its own columns' spread
            assert _max_entry_error(cov, ref) <= 1e-12, _max_entry_error(cov, ref)
        else:  # fast's contract (bf16 at 1000 spreads holds 3 levels per column: short-valued)
            assert rel_fro(cov, ref) <= BARS["fast"], rel_fro(cov, ref)


def test_large_updates_borrow_lanes_from_one_shared_pool():
    """A large update's per-core lanes (centred rows, float64 partials, float32 accumulators) hold
    nothing between updates, so all accumulators share one pool of them: six accumulators of one
    width hold the lanes of one update, not six sets (each used to keep its own, up to 2 GB), the
    results are right, and a width's lanes go with its last accumulator (while one of another width
    lives on). In a fresh interpreter, so that no other test's accumulators are alive."""
    import subprocess
    import sys
    import textwrap

    seed = new_seed()
    script = textwrap.dedent(f"""
        import gc, json, numpy as np, geomfast
        from geomfast import _core, reference as ref
        from conftest import llm_like
        rng = np.random.default_rng({seed})
        x = llm_like(6000, 96, rng).astype(np.float32)
        want = ref.covariance(x)
        keep = geomfast.GramAccumulator(8)  # alive throughout: other widths' lanes still go with theirs
        accs, held, errs = [], [], []
        for i in range(6):
            accs.append(geomfast.GramAccumulator(96, precision="fast").update(x))
            held.append(_core._cpu_pooled_lanes())
        errs = [float(np.linalg.norm(a.covariance() - want) / np.linalg.norm(want)) for a in accs]
        del accs
        gc.collect()
        print(json.dumps({{"held": held, "after": _core._cpu_pooled_lanes(), "errs": errs}}))
    """)
    env = subprocess_env(GEOMFAST_NUM_THREADS="2")  # the tests' geomfast (never a source tree without its core)
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(ROOT / "tests")])  # + conftest
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                         cwd="/")  # (python -c puts the working directory, maybe the source tree, first)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["held"][0] == 2, f"seed={seed}: expected the first update to use 2 lanes, {out}"
    assert out["held"] == [2] * 6, f"seed={seed}: lanes not shared: {out}"
    assert out["after"] == 0, f"seed={seed}: lanes kept after the last accumulator: {out}"
    assert max(out["errs"]) <= BARS["fast"], f"seed={seed}: {out}"


def test_the_cpu_thread_pool_waits_for_every_part_and_rethrows_the_first_error():
    """ThreadPool::run (the conversion passes of large CPU updates) returned while workers still
    ran the caller's job when part 0 threw, and a worker's exception ended the process. Each part
    that throws here does so at once while the others sleep 150 ms first: run() must wait for all
    of them, rethrow the exception of the lowest part, and stay usable. In a fresh interpreter with
    a pool of 4 threads (its size is fixed when first used)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import json
        from geomfast import _core
        cases = [[], [0], [1], [3], [2, 3], [1, 0], [0, 1, 2, 3], []]
        print(json.dumps([[c, *_core._cpu_thread_pool_probe(4, c, 150)] for c in cases]))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/",
                         env=subprocess_env(GEOMFAST_NUM_THREADS="4"))
    assert run.returncode == 0, f"the process ended (rc {run.returncode}): {run.stderr[-3000:]}"
    for throws, size, error, ended in json.loads(run.stdout.strip().splitlines()[-1]):
        assert size == 4
        assert error == (f"part {min(throws)}" if throws else ""), (throws, error)
        assert ended == 4 - len(throws), f"parts {throws} threw: run() returned before the others ended ({ended})"
    from geomfast import _core

    with pytest.raises(ValueError, match="nparts >= 1"):
        _core._cpu_thread_pool_probe(0, [], 0)


@pytest.mark.parametrize("layout", ["C", "F"])
def test_an_update_whose_squares_overflow_is_refused_and_leaves_the_state(layout):
    """Values whose centred squares, summed over the rows, pass float64's range are refused at the
    update, like NaN, with nothing accumulated; accepted, every later read of the accumulator
    failed. Data far from 0 but well centred (1e152 · (1 + 1e-3·N(0, 1))) is accepted: the exact
    check runs where the cheap bound cannot tell, and the covariance is float64's."""
    rng = np.random.default_rng(11)
    good = rng.standard_normal((10, 4))
    a = geomfast.GramAccumulator(4)
    a.update(np.asarray(good, order=layout))
    for bad in (np.full((3, 4), 1e300), 1e153 * rng.standard_normal((1000, 4))):
        with pytest.raises(ValueError, match="overflow float64.*nothing was accumulated"):
            a.update(np.asarray(bad, order=layout))
    assert a.count == 10
    np.testing.assert_allclose(a.covariance(), np.cov(good, rowvar=False), rtol=1e-13, atol=1e-15)
    # a fresh accumulator refuses the same chunk as its first
    with pytest.raises(ValueError, match="overflow float64"):
        geomfast.GramAccumulator(4).update(np.asarray(1e153 * rng.standard_normal((1000, 4)), order=layout))

    big = 1e152 * (1 + 1e-3 * rng.standard_normal((3000, 4)))
    b = geomfast.GramAccumulator(4)
    for chunk in np.array_split(big, 3):
        b.update(np.asarray(chunk, order=layout))
    ref = np.cov(big, rowvar=False)
    assert np.abs(b.covariance() - ref).max() / np.abs(ref).max() < 1e-12
