"""Tests for geomfast.metrics against independent, written-out formulas.

Random inputs are fresh on every run; each test prints its seed in failure messages so a
failure can be replayed with ``np.random.default_rng(seed)``.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import os
import warnings

import numpy as np
import pytest

from conftest import llm_like
from geomfast.metrics import (
    GEOMETRY_KEYS,
    AlphaReqResult,
    DegenerateSpectrumError,
    SpectrumWarning,
    alpha_req,
    condition_number,
    effective_rank,
    geometry,
    participation_ratio,
    rankme,
    spectral_entropy,
    stable_rank,
)


def fresh_rng():
    seed = int(np.random.SeedSequence().entropy % 2**63)
    return np.random.default_rng(seed), seed


def _core_available() -> bool:
    try:
        linalg = importlib.import_module("geomfast.linalg")
        linalg.spectrum(np.eye(3))
        return True
    except Exception:
        return False


# The core derives raw singular values from the raw Gram X^T X (an accumulator keeps no rows),
# so small sigma_k carry an absolute error ~ sqrt(eps) * sigma_1. On LLM-like data (means 1e3 x
# the spread: sigma_1 / sigma_k ~ 1e4..1e6) RankMe(garrido2023) then agrees with a direct SVD to
# ~1e-8 relative (measured: <= 3.2e-8 at 700 x 128), not 1e-9. Well-conditioned data keeps 1e-9.
GRAM_SV_RTOL = 10 * np.sqrt(np.finfo(np.float64).eps)  # 1.5e-7

needs_core = pytest.mark.skipif(
    not _core_available(), reason="geomfast.linalg (native core) is not importable/built"
)


# ----------------------------------------------------------------------------- hand formulas
# Written out here, separately from geomfast.metrics, straight from METRICS.md.


def hand_rankme(s, eps=1e-7):
    s = np.asarray(s, dtype=np.float64)
    p = s / np.sum(np.abs(s)) + eps
    return math.exp(-np.sum(p * np.log(p)))


def hand_alpha(spec, lo, hi):
    """WLS fit with np.polyfit: weights sqrt(1/k) on residuals == W = diag(1/k)."""
    spec = np.asarray(spec, dtype=np.float64)
    k = np.arange(lo, hi) + 1.0
    slope, intercept = np.polyfit(np.log(k), np.log(np.abs(spec[lo:hi])), 1, w=np.sqrt(1.0 / k))
    return -slope, intercept


def hand_r2(spec, alpha, intercept, start, stop):
    from sklearn.metrics import r2_score

    spec = np.asarray(spec, dtype=np.float64)
    k = np.arange(start, min(stop, spec.size)) + 1.0
    y = np.log(np.abs(spec[start:stop]))
    return r2_score(y, intercept - alpha * np.log(k))


def sklearn_li2025_ratios(x):
    from sklearn.decomposition import PCA

    n, d = x.shape
    return PCA(n_components=min(2048, n, d), svd_solver="full").fit(x).explained_variance_ratio_


def noisy_power_law(rng, m, alpha, sigma=0.05, scale=1.0):
    k = np.arange(1, m + 1, dtype=np.float64)
    return np.sort(scale * k ** -alpha * np.exp(sigma * rng.standard_normal(m)))[::-1]


# ----------------------------------------------------------------------------- RankMe, 1-D


@pytest.mark.parametrize("m", [1, 2, 7, 100, 2048])
@pytest.mark.parametrize("convention", ["li2025", "garrido2023", "full"])
def test_rankme_flat_spectrum_is_slightly_more_than_m(m, convention):
    value = rankme(np.full(m, 3.5), convention=convention)
    # H = (1 + m eps)(log m - m eps + O(eps^2)) exceeds log m exactly when log m > 1, so the
    # "slightly more than m" of METRICS.md holds for m >= 3; m = 1, 2 give slightly less.
    assert (value > m) if m >= 3 else (m - 1e-6 < value < m)
    assert value == pytest.approx(hand_rankme(np.ones(m)), rel=1e-12)
    assert value / m - 1 < 2 * m * 1e-7 * max(math.log(m), 1.0)  # relative excess ~ m eps (log m - 1)


def test_rankme_flat_spectrum_eps_zero_is_m():
    assert rankme(np.ones(37), eps=0.0) == pytest.approx(37.0, rel=1e-12)


@pytest.mark.parametrize("m", [3000, 4096])
def test_rankme_li2025_truncates_1d_to_2048_full_does_not(m):
    rng, seed = fresh_rng()
    s = np.sort(rng.uniform(0.5, 1.0, m))[::-1]
    assert rankme(s, convention="li2025") == pytest.approx(hand_rankme(s[:2048]), rel=1e-12), seed
    assert rankme(s, convention="full") == pytest.approx(hand_rankme(s), rel=1e-12), seed
    assert rankme(s, convention="garrido2023") == pytest.approx(hand_rankme(s), rel=1e-12), seed


@pytest.mark.parametrize("m", [5, 31, 32, 33, 500])
@pytest.mark.parametrize("convention", ["li2025", "garrido2023", "full"])
def test_rankme_1d_matches_hand_formula_and_ignores_order(m, convention):
    rng, seed = fresh_rng()
    s = rng.pareto(1.5, m) + 1e-3
    expected = hand_rankme(s)
    assert rankme(s, convention=convention) == pytest.approx(expected, rel=1e-12), seed
    rng.shuffle(s)
    assert rankme(list(s), convention=convention) == pytest.approx(expected, rel=1e-12), seed


@pytest.mark.parametrize("eps", [0.0, 1e-7, 1e-3])
def test_rankme_eps_is_added_to_every_p(eps):
    s = np.array([4.0, 2.0, 1.0, 0.0, 0.0])
    p = s / s.sum() + eps
    expected = math.exp(-sum(v * math.log(v) for v in p if v > 0))
    assert rankme(s, eps=eps) == pytest.approx(expected, rel=1e-13)


def test_rankme_rank_one_and_single_value_are_defined():
    assert rankme(np.array([2.0, 0.0, 0.0, 0.0])) == pytest.approx(
        hand_rankme([2.0, 0.0, 0.0, 0.0]), rel=1e-13)
    single = rankme(np.array([5.0]))
    assert single == pytest.approx(1.0, abs=1e-6) and np.isfinite(single)


def test_rankme_all_zero_raises():
    with pytest.raises(DegenerateSpectrumError, match=r"\[rankme\] spectrum is all zeros"):
        rankme(np.zeros(10))
    assert issubclass(DegenerateSpectrumError, ValueError)


def test_rankme_tiny_negative_noise_is_silent_and_uses_magnitude():
    s = np.array([3.0, 1.0, 0.5, -1e-17, 1e-18])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = rankme(s, convention="full")
    assert value == pytest.approx(hand_rankme(np.abs(s)), rel=1e-13)


def test_rankme_large_negative_values_warn():
    with pytest.warns(SpectrumWarning, match=r"\[rankme\] x_or_spectrum has negative values"):
        value = rankme(np.array([3.0, 1.0, -0.5]))
    assert np.isfinite(value)


# ----------------------------------------------------------------------------- input errors


@pytest.mark.parametrize("bad, exc, pattern", [
    (np.zeros((2, 2, 2)), ValueError, r"\[rankme\] x_or_spectrum must be a 1-D spectrum or 2-D activations \[n, d\], got 3-D"),
    (np.array([]), ValueError, r"\[rankme\] x_or_spectrum must be non-empty, got shape \(0,\)"),
    (np.array([1.0, np.nan, 2.0]), ValueError, r"\[rankme\] x_or_spectrum must be finite, got 1 non-finite value\(s\) \(first at index 1"),
    (np.array([1.0, np.inf]), ValueError, r"\[rankme\] x_or_spectrum must be finite"),
    (np.array([1 + 1j, 2.0]), TypeError, r"\[rankme\] x_or_spectrum must be a 1-D real array.*complex"),
    (np.array(["a", "b"]), TypeError, r"\[rankme\] x_or_spectrum must be a 1-D real array"),
    (np.float64(3.0), ValueError, r"got 0-D input"),
])
def test_rankme_rejects_bad_input(bad, exc, pattern):
    with pytest.raises(exc, match=pattern):
        rankme(bad)


@pytest.mark.parametrize("convention", ["foo", "Li2025", None, 3])
def test_rankme_unknown_convention(convention):
    with pytest.raises(ValueError, match=r"\[rankme\] convention must be one of 'li2025', "
                                         r"'garrido2023', 'full', got "):
        rankme(np.ones(3), convention=convention)


def test_rankme_unknown_convention_message_exact():
    with pytest.raises(ValueError) as info:
        rankme(np.ones(3), convention="foo")
    assert str(info.value) == (
        "[rankme] convention must be one of 'li2025', 'garrido2023', 'full', got 'foo'")


@pytest.mark.parametrize("eps, exc", [(-1e-7, ValueError), (float("nan"), ValueError),
                                      ("1e-7", TypeError), (True, TypeError)])
def test_rankme_bad_eps(eps, exc):
    with pytest.raises(exc, match=r"\[rankme\] eps must be"):
        rankme(np.ones(3), eps=eps)


@pytest.mark.parametrize("fit_range, exc", [
    ((11,), TypeError), (5, TypeError), ((1.5, 10), TypeError), ((-1, 10), ValueError),
    ((10, 11), ValueError), ((20, 10), ValueError),
])
def test_alpha_req_bad_fit_range(fit_range, exc):
    with pytest.raises(exc, match=r"\[alpha_req\] fit_range must"):
        alpha_req(np.arange(1, 200.0) ** -1, fit_range=fit_range)


@pytest.mark.parametrize("func, arg", [
    (participation_ratio, "spectrum"), (stable_rank, "spectrum"),
    (spectral_entropy, "spectrum"), (effective_rank, "singular_values"),
    (condition_number, "spectrum"), (alpha_req, "x_or_spectrum"),
])
def test_measures_name_function_and_argument_in_errors(func, arg):
    name = func.__name__
    with pytest.raises(ValueError, match=rf"\[{name}\] {arg} must be non-empty"):
        func(np.array([]))
    with pytest.raises(ValueError, match=rf"\[{name}\] {arg} must be finite"):
        func(np.array([1.0, np.nan]))
    if func is not alpha_req:
        with pytest.raises(ValueError, match=rf"\[{name}\] {arg} must be a 1-D spectrum, "
                                             r"got shape \(2, 2\)"):
            func(np.ones((2, 2)))


# ----------------------------------------------------------------------------- alpha-ReQ, 1-D


@pytest.mark.parametrize("alpha", [0.3, 1.0, 1.37, 2.5])
@pytest.mark.parametrize("m", [128, 511, 512, 3000])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_alpha_req_exact_power_law(alpha, m, scale):
    k = np.arange(1, m + 1, dtype=np.float64)
    spec = scale * k ** -alpha
    res = alpha_req(spec)
    assert isinstance(res, AlphaReqResult)
    assert abs(res.alpha - alpha) < 1e-10
    assert res.r2 == pytest.approx(1.0, abs=1e-12)
    assert res.r2_100 == pytest.approx(1.0, abs=1e-12)
    assert res.fit_range == (11, 100) and res.warnings == ()
    assert res.fitted.shape == (m,)
    np.testing.assert_allclose(res.fitted, spec, rtol=1e-9)


def test_alpha_req_flat_spectrum_is_zero_with_r2_one():
    res = alpha_req(np.full(300, 0.25))
    assert abs(res.alpha) < 1e-12 and res.r2 == 1.0 and res.r2_100 == 1.0


@pytest.mark.parametrize("m", [150, 511, 512, 2048])
@pytest.mark.parametrize("fit_range", [(11, 100), (3, 50), (5, 100), (10, 120)])
def test_alpha_req_noisy_matches_independent_fit(m, fit_range):
    rng, seed = fresh_rng()
    alpha = rng.uniform(0.5, 2.0)
    spec = noisy_power_law(rng, m, alpha)
    res = alpha_req(spec, fit_range=fit_range)
    a, c = hand_alpha(spec, *fit_range)
    assert res.alpha == pytest.approx(a, rel=1e-9, abs=1e-12), seed
    assert abs(res.alpha - alpha) < 0.15, (seed, res.alpha, alpha)
    start = fit_range[0] + 1
    assert res.r2 == pytest.approx(hand_r2(spec, a, c, start, 500 if m >= 512 else m - 10),
                                   rel=1e-9, abs=1e-12), seed
    assert res.r2_100 == pytest.approx(hand_r2(spec, a, c, start, 100), rel=1e-9, abs=1e-12), seed
    assert 0.5 < res.r2 <= 1.0, seed


def test_alpha_req_sorts_ascending_input():
    rng, seed = fresh_rng()
    spec = noisy_power_law(rng, 300, 1.1)
    a = alpha_req(spec)
    b = alpha_req(spec[::-1].copy())
    assert a.alpha == b.alpha and a.r2 == b.r2, seed


@pytest.mark.parametrize("m", [64, 100, 99, 13])
def test_alpha_req_short_spectrum_clips_with_warning(m):
    rng, seed = fresh_rng()
    spec = noisy_power_law(rng, m, 1.0)
    stop = min(m, 100)
    if m < 100:
        with pytest.warns(SpectrumWarning, match=rf"\[alpha_req\] spectrum has {m} values, "
                                                 r"fewer than fit_range stop 100"):
            res = alpha_req(spec)
        assert any("fewer than fit_range stop" in w for w in res.warnings)
    else:
        res = alpha_req(spec)
    assert res.fit_range == (11, stop)
    assert res.alpha == pytest.approx(hand_alpha(spec, 11, stop)[0], rel=1e-9), seed
    assert np.isfinite(res.alpha)
    if m - 10 - 12 >= 2:
        assert np.isfinite(res.r2), seed
    else:  # the R^2 range [12, m - 10) is empty: nan, and said so
        assert np.isnan(res.r2)
        assert any("r2 is undefined" in w for w in res.warnings)


def test_alpha_req_too_short_to_fit_raises():
    with pytest.raises(DegenerateSpectrumError,
                       match=r"\[alpha_req\] spectrum has 12 values; fit_range \(11, 100\) leaves 1"):
        alpha_req(np.arange(1, 13.0)[::-1])
    with pytest.raises(DegenerateSpectrumError, match=r"\[alpha_req\]"):
        alpha_req(np.array([7.0]))


def test_alpha_req_zeros_inside_range_are_dropped_with_warning():
    # Magnitudes are sorted descending, so zeros always form the tail: a spectrum with 59
    # positive values has zeros at indices 59..99 of the default fit range.
    spec = np.concatenate([np.arange(1, 60.0) ** -1.2, np.zeros(200)])
    with pytest.warns(SpectrumWarning, match=r"\[alpha_req\] 41 exact zero eigenvalue\(s\) in the fit range"):
        res = alpha_req(spec)
    assert abs(res.alpha - 1.2) < 1e-10
    assert res.r2 == pytest.approx(1.0, abs=1e-12) and res.r2_100 == pytest.approx(1.0, abs=1e-12)
    assert any("exact zero" in w for w in res.warnings)
    # zeros past the fit range change nothing in the fit
    tail = alpha_req(np.concatenate([np.arange(1, 400.0) ** -1.2, np.zeros(3)]))
    assert abs(tail.alpha - 1.2) < 1e-10 and tail.warnings == ()


def test_alpha_req_zeros_only_in_r2_ranges_are_dropped_with_warning():
    # 200 positive values then 50 zeros: the fit range [11, 100) holds none of them, the R^2
    # range [12, 240) holds 40; they are dropped from the R^2 as from the fit, and said so.
    spec = np.concatenate([np.arange(1, 201.0) ** -1.3, np.zeros(50)])
    with pytest.warns(SpectrumWarning, match=r"\[alpha_req\] 40 exact zero eigenvalue\(s\) in "
                                             r"the r2 range \[12, 240\) cannot enter log\|lambda\|"):
        res = alpha_req(spec)
    assert abs(res.alpha - 1.3) < 1e-10
    assert res.r2 == pytest.approx(1.0, abs=1e-12) and res.r2_100 == pytest.approx(1.0, abs=1e-12)
    assert len(res.warnings) == 1 and "r2 range [12, 240)" in res.warnings[0]
    # zeros in the r2_100 range but not in the fit range: fit (3, 30), 60 positive values
    with pytest.warns(SpectrumWarning, match=r"in the r2_100 range"):
        short = alpha_req(np.r_[np.arange(1, 61.0) ** -1.3, np.zeros(140)], fit_range=(3, 30))
    assert any("in the r2_100 range [4, 100)" in w for w in short.warnings), short.warnings


def test_alpha_req_empty_r2_range_message_names_the_range_and_length():
    spec = np.arange(1, 1001.0) ** -1.3
    with pytest.warns(SpectrumWarning, match=r"r2 is undefined"):
        res = alpha_req(spec, fit_range=(600, 700))
    assert np.isnan(res.r2) and np.isnan(res.r2_100) and abs(res.alpha - 1.3) < 1e-9
    assert res.warnings == (
        "[alpha_req] r2 is undefined (nan): its range [601, 500) is empty, in a spectrum of "
        "length 1000; need >= 2 positive values",
        "[alpha_req] r2_100 is undefined (nan): its range [601, 100) is empty, in a spectrum of "
        "length 1000; need >= 2 positive values",
    )
    # a range cut short by the spectrum's end says so
    with pytest.warns(SpectrumWarning, match=r"r2_100 is undefined"):
        res = alpha_req(np.arange(1, 14.0) ** -1.0)
    assert any("r2_100 is undefined (nan): its range [12, 100) (clipped to [12, 13)) holds 1 "
               "positive value(s), in a spectrum of length 13" in w for w in res.warnings)


def _null_space_spectrum(rng, n, d):
    """Descending spectrum of length d shaped like a centered covariance of n <= d rows: n - 1
    power-law values, then d - n + 1 rounding-level ones (~1e-17 of lambda_1)."""
    top = noisy_power_law(rng, n - 1, 1.2)
    return np.r_[top, np.sort(rng.uniform(1e-18, 3e-17, d - n + 1))[::-1]]


@pytest.mark.parametrize("n, d", [(100, 300), (600, 4096), (40, 41)])
def test_1d_spectrum_with_n_samples_equals_top_min_2048_n_d(n, d):
    # The li2025 spectrum of n rows is the top min(2048, n, d) values; a 1-D spectrum does not
    # know n, so n_samples says it.
    rng, seed = fresh_rng()
    spec = _null_space_spectrum(rng, n, d)
    kept = spec[: min(2048, n, d)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rankme(spec, n_samples=n) == pytest.approx(hand_rankme(kept), rel=1e-12), seed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = alpha_req(spec, n_samples=n, fit_range=(11, 90) if n > 90 else (11, 25))
    # li2025 keeps one null-space value (index n - 1; r2_100 may reach it) but needs no hint
    assert not any("n_samples" in str(w.message) for w in caught), seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectrumWarning)
        b = alpha_req(kept, fit_range=a.fit_range)
    assert (a.alpha, a.r2, a.fit_range) == (b.alpha, b.r2, b.fit_range), seed
    assert a.r2_100 == b.r2_100 or (np.isnan(a.r2_100) and np.isnan(b.r2_100)), seed
    assert a.fitted.shape == (kept.size,)
    # no effect where there is no null space to drop (up to the rounding of the accumulator's
    # explained-variance ratios, which n_samples reproduces), nor for the other conventions
    assert rankme(spec[:n], n_samples=10**6) == pytest.approx(rankme(spec[:n]), rel=1e-14), seed
    assert rankme(spec, convention="full", n_samples=n) == rankme(spec, convention="full"), seed


def test_1d_spectrum_with_null_space_warns_and_says_how_to_match():
    rng, seed = fresh_rng()
    spec = _null_space_spectrum(rng, 100, 300)
    # The fit range [11, 90) is clear of the null space (indices >= 99), the R^2 ranges
    # [12, 290) and [12, 100) are not.
    with pytest.warns(SpectrumWarning, match=r"\[alpha_req\] the r2 range and the r2_100 range "
                                             r"reach eigenvalues at rounding level .*"
                                             r"R\^2 describes.*pass n_samples=n"):
        res = alpha_req(spec, fit_range=(11, 90))
    assert res.r2 < 0.5, seed  # what the warning is about: R^2 of the null space
    with pytest.warns(SpectrumWarning, match=r"the r2_100 range reaches") as caught:
        # li2025 keeps index n - 1 = 99, which r2_100's [12, 100) reaches; no hint needed
        assert alpha_req(spec, fit_range=(11, 90), n_samples=100).r2 > 0.9, seed
    assert not any("n_samples" in str(w.message) for w in caught), seed
    with pytest.warns(SpectrumWarning, match=r"\[rankme\] x_or_spectrum: 201 of the top 300 values "
                                             r"that li2025 uses are at rounding level.*n_samples=n"):
        r = rankme(spec)
    assert r == pytest.approx(hand_rankme(spec), rel=1e-12)
    assert r > rankme(spec, n_samples=100)
    # one value at rounding level (n = d) is what li2025 keeps anyway: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rankme(_null_space_spectrum(rng, 50, 50))


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                      (True, TypeError), ("100", TypeError)])
def test_n_samples_must_be_a_positive_int(bad, exc):
    for func in (rankme, alpha_req):
        with pytest.raises(exc, match=rf"\[{func.__name__}\] n_samples must be an int >= 1"):
            func(np.arange(1, 200.0) ** -1, n_samples=bad)


@pytest.mark.parametrize("spec", [np.zeros(200), np.r_[1.0, np.zeros(199)],
                                  np.r_[np.ones(12), np.zeros(188)]])
def test_alpha_req_degenerate_raises_never_nan(spec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectrumWarning)
        with pytest.raises(DegenerateSpectrumError, match=r"\[alpha_req\] only [01] positive"):
            alpha_req(spec)


def test_alpha_req_noise_level_tail_warns():
    spec = np.r_[np.arange(1, 21.0) ** -1.0, np.full(200, 1e-19)]
    with pytest.warns(SpectrumWarning, match=r"rounding level"):
        res = alpha_req(spec)
    assert np.isfinite(res.alpha)


def test_alpha_req_result_is_frozen():
    res = alpha_req(np.arange(1, 200.0) ** -1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.alpha = 2.0
    assert [f.name for f in dataclasses.fields(res)] == [
        "alpha", "r2", "r2_100", "fitted", "fit_range", "warnings"]


# ----------------------------------------------------------------------------- other measures


@pytest.mark.parametrize("m", [1, 2, 31, 32, 33, 1000])
def test_other_measures_match_hand_formulas(m):
    rng, seed = fresh_rng()
    lam = rng.pareto(1.2, m) + 1e-4
    p = lam / lam.sum()
    assert participation_ratio(lam) == pytest.approx(lam.sum() ** 2 / np.sum(lam ** 2), rel=1e-12), seed
    assert stable_rank(lam) == pytest.approx(lam.sum() / lam.max(), rel=1e-12), seed
    assert spectral_entropy(lam) == pytest.approx(-np.sum(p * np.log(p)), rel=1e-12, abs=1e-15), seed
    sv = np.sqrt(lam)
    q = sv / sv.sum()
    assert effective_rank(sv) == pytest.approx(np.exp(-np.sum(q * np.log(q))), rel=1e-12), seed
    assert condition_number(lam) == pytest.approx(lam.max() / lam.min(), rel=1e-12), seed


@pytest.mark.parametrize("m", [1, 5, 64])
def test_other_measures_on_flat_spectrum(m):
    flat = np.full(m, 2.0)
    assert participation_ratio(flat) == pytest.approx(m)
    assert stable_rank(flat) == pytest.approx(m)
    assert spectral_entropy(flat) == pytest.approx(math.log(m), abs=1e-15)
    assert effective_rank(flat) == pytest.approx(m)
    assert condition_number(flat) == 1.0


def test_other_measures_rank_one_defined():
    spec = np.r_[3.0, np.zeros(9)]
    assert participation_ratio(spec) == 1.0
    assert stable_rank(spec) == 1.0
    assert spectral_entropy(spec) == 0.0
    assert effective_rank(spec) == 1.0
    assert condition_number(spec) == 1.0


@pytest.mark.parametrize("func", [participation_ratio, stable_rank, spectral_entropy,
                                  effective_rank, condition_number])
def test_other_measures_all_zero_raise(func):
    with pytest.raises(DegenerateSpectrumError, match=rf"\[{func.__name__}\] spectrum is all zeros"):
        func(np.zeros(5))


def test_condition_number_excludes_rounding_level_values_unless_rtol_zero():
    spec = np.array([4.0, 2.0, 1e-30, -1e-31, 0.0])
    assert condition_number(spec) == 4.0 / 2.0
    assert condition_number(spec, rtol=0.0) == pytest.approx(4.0 / 1e-31)
    assert condition_number(spec, rtol=0.6) == 4.0 / 4.0
    with pytest.raises(ValueError, match=r"\[condition_number\] rtol must be"):
        condition_number(spec, rtol=-1.0)


def test_spectral_entropy_uses_natural_log():
    assert spectral_entropy([1.0, 1.0]) == pytest.approx(math.log(2.0))


@pytest.mark.parametrize("spec", [[2.0], [3.0, 0.0, 0.0]])
def test_spectral_entropy_of_rank_one_is_positive_zero(spec):
    value = spectral_entropy(spec)
    assert value == 0.0 and math.copysign(1.0, value) == 1.0, value  # +0.0, not -0.0


# ----------------------------------------------------------------------------- 2-D activations


def _activation_cases():
    # (name, builder(rng) -> [n, d] float64)
    return [
        ("gaussian-n>d", lambda rng: rng.standard_normal((300, 64)) @ rng.standard_normal((64, 64))),
        ("llm-like-n>d", lambda rng: llm_like(400, 96, rng)),
        ("llm-like-n<d", lambda rng: llm_like(50, 200, rng)),
        ("llm-like-tile-edge", lambda rng: llm_like(129, 33, rng)),
    ]


@needs_core
@pytest.mark.parametrize("name, build", _activation_cases(), ids=[c[0] for c in _activation_cases()])
def test_rankme_li2025_equals_sklearn_pca_code_path(name, build):
    rng, seed = fresh_rng()
    x = build(rng)
    ratios = sklearn_li2025_ratios(x)
    p = ratios / np.sum(np.abs(ratios)) + 1e-7
    expected = math.exp(-np.sum(p * np.log(p)))
    assert rankme(x, convention="li2025") == pytest.approx(expected, rel=1e-9), (name, seed)


@needs_core
def test_rankme_li2025_accumulator_equals_sklearn():
    import geomfast

    rng, seed = fresh_rng()
    x = llm_like(333, 80, rng)
    acc = geomfast.GramAccumulator(80)
    for chunk in np.array_split(x, 7):
        acc.update(chunk)
    ratios = sklearn_li2025_ratios(x)
    assert rankme(acc) == pytest.approx(hand_rankme(ratios), rel=1e-9), seed
    assert rankme(acc, convention="full") == pytest.approx(rankme(x, convention="full"), rel=1e-9), seed
    assert rankme(acc, convention="garrido2023") == pytest.approx(
        hand_rankme(acc.singular_values()), rel=1e-12), seed
    assert rankme(acc, convention="garrido2023") == pytest.approx(
        hand_rankme(np.linalg.svd(x, compute_uv=False)), rel=GRAM_SV_RTOL), seed


@needs_core
@pytest.mark.parametrize("cap", [8, 40])
def test_rankme_li2025_cap_follows_sklearn_n_components(monkeypatch, cap):
    # The 2048 cap at small scale: same code path, PCA(n_components=min(cap, n, d)).
    from sklearn.decomposition import PCA

    import geomfast.metrics as metrics

    monkeypatch.setattr(metrics, "LI2025_MAX_COMPONENTS", cap)
    rng, seed = fresh_rng()
    x = llm_like(300, 64, rng)
    ratios = PCA(n_components=min(cap, 300, 64), svd_solver="full").fit(x).explained_variance_ratio_
    assert metrics.rankme(x) == pytest.approx(hand_rankme(ratios), rel=1e-9), seed
    assert metrics.rankme(x, convention="full") > metrics.rankme(x)


@needs_core
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GEOMFAST_SLOW"), reason="minutes on a small machine; set GEOMFAST_SLOW=1")
def test_rankme_li2025_caps_at_2048_components_like_sklearn():
    rng, seed = fresh_rng()
    x = rng.standard_normal((2150, 2100)) * np.arange(1, 2101) ** -0.5 + 5.0
    ratios = sklearn_li2025_ratios(x)
    assert ratios.size == 2048
    assert rankme(x) == pytest.approx(hand_rankme(ratios), rel=1e-9), seed
    assert rankme(x, convention="full") > rankme(x)


@needs_core
@pytest.mark.parametrize("name, build", _activation_cases(), ids=[c[0] for c in _activation_cases()])
def test_rankme_garrido2023_and_full_match_numpy(name, build):
    rng, seed = fresh_rng()
    x = build(rng)
    from geomfast.linalg import singular_values

    sv = np.linalg.svd(x, compute_uv=False)
    rtol = 1e-9 if name.startswith("gaussian") else GRAM_SV_RTOL
    assert rankme(x, convention="garrido2023") == pytest.approx(hand_rankme(sv), rel=rtol), (name, seed)
    assert rankme(x, convention="garrido2023") == pytest.approx(
        hand_rankme(singular_values(x)), rel=1e-12), (name, seed)
    centered = x - x.mean(axis=0)
    lam = np.linalg.eigvalsh(centered.T @ centered / (x.shape[0] - 1))
    assert rankme(x, convention="full") == pytest.approx(hand_rankme(np.abs(lam)), rel=1e-9), (name, seed)


@needs_core
def test_rankme_2d_accepts_torch_and_float32():
    torch = pytest.importorskip("torch")
    rng, seed = fresh_rng()
    x32 = rng.standard_normal((200, 48)).astype(np.float32)
    expected = rankme(x32.astype(np.float64))
    assert rankme(torch.from_numpy(x32)) == pytest.approx(expected, rel=1e-9), seed


@needs_core
def test_rankme_2d_needs_two_rows():
    with pytest.raises(ValueError, match=r"\[rankme\] a covariance spectrum \(ddof=1\) needs at least 2 rows, got 1"):
        rankme(np.ones((1, 5)))
    with pytest.raises(ValueError, match=r"\[rankme\] x_or_spectrum must be non-empty, got shape \(0, 5\)"):
        rankme(np.ones((0, 5)))


@needs_core
def test_alpha_req_2d_equals_fit_on_pca_ratios():
    rng, seed = fresh_rng()
    x = llm_like(600, 256, rng)
    ratios = sklearn_li2025_ratios(x)
    res = alpha_req(x)
    a, c = hand_alpha(ratios, 11, 100)
    assert res.alpha == pytest.approx(a, rel=1e-7), seed
    assert res.r2 == pytest.approx(hand_r2(ratios, a, c, 12, ratios.size - 10), rel=1e-7, abs=1e-9), seed


# ----------------------------------------------------------------------------- geometry


@needs_core
@pytest.mark.parametrize("n, d", [(400, 96), (60, 150), (700, 128), (800, 520)])  # 520: solved concurrently
def test_geometry_matches_the_single_measures(n, d):
    rng, seed = fresh_rng()
    x = llm_like(n, d, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectrumWarning)
        g = geometry(x)
        ar = alpha_req(x)
    assert tuple(g) == GEOMETRY_KEYS
    assert set(GEOMETRY_KEYS) == {
        "rankme", "rankme_garrido2023", "rankme_full", "alpha", "alpha_r2", "alpha_r2_100",
        "participation_ratio", "stable_rank", "spectral_entropy", "effective_rank_roy",
        "condition_number", "n", "dim", "warnings"}
    assert g["n"] == n and g["dim"] == d and isinstance(g["warnings"], list)
    ratios = sklearn_li2025_ratios(x)
    assert g["rankme"] == pytest.approx(hand_rankme(ratios), rel=1e-9), seed
    assert g["rankme_garrido2023"] == pytest.approx(
        hand_rankme(np.linalg.svd(x, compute_uv=False)), rel=GRAM_SV_RTOL), seed
    assert g["rankme_full"] == pytest.approx(rankme(x, convention="full"), rel=1e-12), seed
    if d < 512:  # the same solver call: the same bits
        assert g["alpha"] == ar.alpha and g["alpha_r2"] == ar.r2, seed
        assert (g["alpha_r2_100"] == ar.r2_100) or (np.isnan(ar.r2_100) and np.isnan(g["alpha_r2_100"]))
    else:  # geometry's two solves ran at once, with single-threaded BLAS: equal to rounding
        assert g["alpha"] == pytest.approx(ar.alpha, rel=1e-10) and g["alpha_r2"] == pytest.approx(ar.r2, rel=1e-8)
        assert g["alpha_r2_100"] == pytest.approx(ar.r2_100, rel=1e-10, nan_ok=True), seed
    centered = x - x.mean(axis=0)
    lam = np.abs(np.linalg.eigvalsh(centered.T @ centered / (n - 1)))
    assert g["participation_ratio"] == pytest.approx(lam.sum() ** 2 / np.sum(lam ** 2), rel=1e-9), seed
    assert g["stable_rank"] == pytest.approx(lam.sum() / lam.max(), rel=1e-9), seed
    p = lam / lam.sum()
    assert g["spectral_entropy"] == pytest.approx(-np.sum(p[p > 0] * np.log(p[p > 0])), rel=1e-9), seed
    sv = np.linalg.svd(x, compute_uv=False)
    q = sv / sv.sum()
    assert g["effective_rank_roy"] == pytest.approx(
        np.exp(-np.sum(q[q > 0] * np.log(q[q > 0]))), rel=GRAM_SV_RTOL), seed
    assert np.isfinite(g["condition_number"]) and g["condition_number"] >= 1.0


def assert_geometry_close(g_a: dict, g_b: dict, seed) -> None:
    """Geometry dicts from two float64 paths agree. Measures of the smallest eigenvalues magnify
    their rounding (llm_like data reach λ_min ≈ 1e-12·λ₁, known to ≈1e-4 relative): the condition
    number is compared through its inverse (absolute float64 rounding), the R² of log λ over
    ranges reaching those values, and α whose (clipped, d = 64) fit range reaches them, at 1e-5."""
    for key in GEOMETRY_KEYS[:-3]:
        if key == "condition_number":
            assert 1.0 / g_a[key] == pytest.approx(1.0 / g_b[key], rel=1e-8, abs=1e-13), (key, seed)
        elif key in ("alpha", "alpha_r2", "alpha_r2_100"):
            assert g_a[key] == pytest.approx(g_b[key], rel=1e-5), (key, seed)
        else:
            assert g_a[key] == pytest.approx(g_b[key], rel=1e-8), (key, seed)


@needs_core
def test_geometry_with_precomputed_spectra_does_not_recompute():
    import geomfast

    rng, seed = fresh_rng()
    x = llm_like(300, 64, rng)
    lam, sv = geomfast.spectrum(x), geomfast.singular_values(x)
    g1 = geometry(x)
    g2 = geometry(x, spectrum=lam, singular_values=sv)
    for key in GEOMETRY_KEYS[:-3]:  # the same spectra, so exactly the same numbers
        assert g2[key] == pytest.approx(g1[key], rel=1e-12, abs=0), (key, seed)
    # Spectra of other data: the result follows them, so nothing was recomputed from x.
    y = rng.standard_normal((300, 64)) * np.linspace(1.0, 3.0, 64)
    lam_y, sv_y = geomfast.spectrum(y), geomfast.singular_values(y)
    g3 = geometry(x, spectrum=lam_y, singular_values=sv_y)
    assert g3["rankme_full"] == pytest.approx(rankme(lam_y, convention="full"), rel=1e-12), seed
    assert g3["rankme_garrido2023"] == pytest.approx(rankme(sv_y, convention="garrido2023"), rel=1e-12), seed
    assert g3["rankme_full"] != pytest.approx(g1["rankme_full"], rel=1e-3), seed
    with pytest.raises(ValueError, match=r"\[geometry\] spectrum must have at most dim=64 values, got 65"):
        geometry(x, spectrum=np.ones(65), singular_values=sv)


@needs_core
def test_geometry_on_accumulator_and_randomized():
    import geomfast

    rng, seed = fresh_rng()
    x = llm_like(500, 128, rng)
    acc = geomfast.GramAccumulator(128).update(x)
    g_acc = geometry(acc)
    g_x = geometry(x)
    assert_geometry_close(g_acc, g_x, seed)
    with pytest.warns(SpectrumWarning, match=r"\[geometry\] spectrum has 32 of 128 eigenvalues"):
        g_r = geometry(acc, method="randomized", k=32)
    assert g_r["rankme"] < g_x["rankme"] and np.isfinite(g_r["alpha"])


@needs_core
def test_geometry_degenerate_data_gives_nan_with_reasons_never_silently():
    x = np.tile(np.arange(1.0, 21.0), (30, 1))  # constant rows: zero covariance
    with pytest.warns(SpectrumWarning):
        g = geometry(x)
    nan_keys = [k for k in GEOMETRY_KEYS[:-3] if isinstance(g[k], float) and np.isnan(g[k])]
    assert nan_keys, g
    for key in nan_keys:
        stem = "alpha" if key.startswith("alpha") else key
        assert any(w.startswith(f"{stem} = nan") for w in g["warnings"]), (key, g["warnings"])
    assert np.isfinite(g["rankme_garrido2023"])  # the raw matrix has rank one, not zero


@needs_core
def test_geometry_at_d1_gives_positive_zero_entropy():
    rng, seed = fresh_rng()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectrumWarning)  # alpha needs >= 2 values
        g = geometry(rng.standard_normal((50, 1)))
    assert g["spectral_entropy"] == 0.0 and math.copysign(1.0, g["spectral_entropy"]) == 1.0, seed


@needs_core
def test_accumulator_spectrum_with_n_samples_equals_accumulator_when_n_le_d():
    import geomfast

    rng, seed = fresh_rng()
    n, d = 100, 300
    x = rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -0.6
    acc = geomfast.GramAccumulator(d).update(x)
    spec = acc.spectrum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectrumWarning)  # [11, 100) reaches index 99 = n - 1
        g = geometry(acc)
        a, b = alpha_req(spec, n_samples=n), alpha_req(acc)
        assert alpha_req(acc, n_samples=n).r2 == b.r2  # 2-D input: the same n is fine
    assert rankme(spec, n_samples=n) == rankme(acc) == g["rankme"], seed
    with pytest.warns(SpectrumWarning, match=r"n_samples=n"):
        assert rankme(spec) != pytest.approx(rankme(acc), rel=1e-6), seed
    assert (a.alpha, a.r2, a.r2_100, a.warnings) == (b.alpha, b.r2, b.r2_100, b.warnings), seed
    assert (g["alpha"], g["alpha_r2"], g["alpha_r2_100"]) == (a.alpha, a.r2, a.r2_100), seed
    with pytest.warns(SpectrumWarning, match=r"r2 range.*rounding level.*pass n_samples=n"):
        assert alpha_req(spec).r2 < b.r2 - 0.5, seed
    # 2-D input knows its n: a different n_samples is an error
    with pytest.raises(ValueError, match=r"\[rankme\] n_samples=99 contradicts the 100 rows"):
        rankme(acc, n_samples=99)
    with pytest.raises(ValueError, match=r"\[alpha_req\] n_samples=7 contradicts the 100 rows"):
        alpha_req(x, n_samples=7)


@needs_core
def test_geometry_rejects_1d_and_bad_arguments():
    with pytest.raises(ValueError, match=r"\[geometry\] x_or_accumulator must be 2-D activations"):
        geometry(np.ones(10))
    with pytest.raises(ValueError, match=r"\[geometry\] eps must be"):
        geometry(np.ones((10, 3)), eps=-1.0)
    with pytest.raises(TypeError, match=r"\[geometry\] fit_range must"):
        geometry(np.ones((10, 3)), fit_range=3)
