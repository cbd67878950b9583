"""geomfast.PCA against sklearn.decomposition.PCA on the same data."""
from __future__ import annotations

import numpy as np
import pytest

from geomfast.pca import PCA

sk = pytest.importorskip("sklearn.decomposition")
SKPCA = sk.PCA


def _data(n=400, d=48, seed=0, mean=5.0):
    rng = np.random.default_rng(seed)
    spec = np.arange(1, d + 1) ** -1.0
    x = (rng.standard_normal((n, d)) * np.sqrt(spec)) @ np.linalg.qr(rng.standard_normal((d, d)))[0]
    return x + mean * rng.uniform(-1, 1, d)


def _same_up_to_sign(a, b, atol):
    """Rows (components) or columns (scores) equal up to one sign per component."""
    assert a.shape == b.shape
    for i in range(a.shape[0]):
        assert np.allclose(a[i], b[i], atol=atol) or np.allclose(a[i], -b[i], atol=atol), i


@pytest.mark.parametrize("n_components", [None, 1, 7, 48, 0.5, 0.95])
@pytest.mark.parametrize("n,d", [(400, 48), (31, 48)])  # tall, and fewer samples than features
def test_matches_sklearn(n_components, n, d):
    x = _data(n, d)
    if isinstance(n_components, int) and n_components > min(n, d):
        n_components = min(n, d)
    ours = PCA(n_components, svd_solver="full").fit(x)
    ref = SKPCA(n_components, svd_solver="full").fit(x)
    assert ours.n_components_ == ref.n_components_
    k = ref.n_components_
    scale = ref.explained_variance_[0]
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, atol=1e-12)
    np.testing.assert_allclose(ours.singular_values_, ref.singular_values_,
                               atol=1e-6 * ref.singular_values_[0])
    np.testing.assert_allclose(ours.mean_, ref.mean_, atol=1e-12)
    np.testing.assert_allclose(ours.noise_variance_, ref.noise_variance_, atol=1e-10 * scale)
    assert ours.n_samples_seen_ == n and ours.n_features_in_ == d
    # Components/scores of well-separated eigenvalues only (the tail of a rank-deficient
    # spectrum is an arbitrary basis of a null space).
    full_ev = np.linalg.eigvalsh(np.cov(x.T))[::-1]
    sep = [i for i in range(min(k, n - 2))
           if min(abs(np.diff(full_ev[max(i - 1, 0): i + 2]))) > 1e-6 * scale]
    assert sep
    _same_up_to_sign(ours.components_[sep], ref.components_[sep], 1e-6)
    _same_up_to_sign(ours.transform(x).T[sep], ref.transform(x).T[sep], 1e-6 * np.sqrt(scale * n))


def test_components_lazy_and_signs_follow_sklearn():
    x = _data()
    ours = PCA(5).fit(x)
    assert ours._fitted is None  # nothing solved yet
    _ = ours.explained_variance_ratio_
    assert ours._fitted["components"] is None  # eigenvectors only on demand
    ref = SKPCA(5, svd_solver="full").fit(x)
    np.testing.assert_allclose(ours.components_, ref.components_, atol=1e-8)


def test_transform_inverse_get_covariance_whiten():
    x = _data()
    for whiten in (False, True):
        ours = PCA(10, whiten=whiten).fit(x)
        ref = SKPCA(10, whiten=whiten, svd_solver="full").fit(x)
        z = ours.fit_transform(x)
        np.testing.assert_allclose(z, ref.transform(x), atol=1e-8)
        np.testing.assert_allclose(ours.inverse_transform(z), ref.inverse_transform(ref.transform(x)), atol=1e-8)
        np.testing.assert_allclose(ours.get_covariance(), ref.get_covariance(), atol=1e-10)
    full = PCA().fit(x)
    np.testing.assert_allclose(full.inverse_transform(full.transform(x)), x, atol=1e-9)
    np.testing.assert_allclose(full.get_covariance(), np.cov(x.T), atol=1e-11)


def test_partial_fit_streams_exactly():
    x = _data(1000, 32)
    stream = PCA(6)
    for chunk in np.array_split(x, 7):
        stream.partial_fit(chunk)
    whole = PCA(6).fit(x)
    assert stream.n_samples_seen_ == 1000
    np.testing.assert_allclose(stream.explained_variance_, whole.explained_variance_, rtol=1e-12)
    np.testing.assert_allclose(stream.mean_, whole.mean_, rtol=1e-12)
    ref = SKPCA(6, svd_solver="full").fit(x)
    np.testing.assert_allclose(stream.explained_variance_ratio_, ref.explained_variance_ratio_, atol=1e-12)
    # fit() starts over
    again = stream.fit(x[:100])
    assert again.n_samples_seen_ == 100
    with pytest.raises(ValueError, match="features"):
        stream.partial_fit(np.ones((3, 5)))


def test_partial_fit_takes_chunks_smaller_than_n_components():
    """The README's streaming loop with batches smaller than n_components (and a 1-row first
    chunk): the rows seen in all are what counts, checked when a fitted attribute is read; a
    refused chunk adds nothing; a failing fit keeps the previous fit."""
    rng = np.random.default_rng(int(np.random.SeedSequence().entropy % (2**63)))
    x = rng.standard_normal((40, 32)) * rng.uniform(0.5, 2.0, 32)
    stream = PCA(n_components=16)
    stream.partial_fit(x[:1])
    with pytest.raises(ValueError, match="at least 2 samples"):
        stream.explained_variance_
    stream.partial_fit(x[1:8])
    with pytest.raises(ValueError, match="n_components=16"):
        stream.components_  # 8 rows so far
    bad = x[8:16].copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError):
        stream.partial_fit(bad)
    assert stream.n_samples_seen_ == 8
    for i in range(8, 40, 8):
        stream.partial_fit(x[i:i + 8])
    whole = PCA(n_components=16).fit(x)
    assert stream.n_samples_seen_ == 40
    np.testing.assert_allclose(stream.explained_variance_, whole.explained_variance_, rtol=1e-10)
    with pytest.raises(ValueError, match=r"\[PCA.fit\] n_components=16"):
        whole.fit(x[:8])
    np.testing.assert_allclose(whole.explained_variance_, stream.explained_variance_, rtol=1e-10)


def test_takes_every_sklearn_constructor_argument():
    """'Change the import, nothing else': every parameter sklearn's PCA takes is accepted (and
    round-trips through get_params/clone); iterated_power and n_oversamples steer the randomized
    solver."""
    import inspect

    sk = pytest.importorskip("sklearn.decomposition")
    from sklearn.base import clone

    missing = set(inspect.signature(sk.PCA).parameters) - set(inspect.signature(PCA).parameters)
    assert not missing, f"sklearn PCA parameters geomfast.PCA does not take: {sorted(missing)}"
    rng = np.random.default_rng(int(np.random.SeedSequence().entropy % (2**63)))
    x = rng.standard_normal((400, 600)) * np.arange(1, 601) ** -1.0  # well-separated leading values
    p = PCA(20, copy=False, tol=0.0, svd_solver="randomized", iterated_power=8, n_oversamples=30,
            power_iteration_normalizer="QR", random_state=1)
    assert clone(p).get_params() == p.get_params()
    full = PCA(20, svd_solver="full").fit(x)
    np.testing.assert_allclose(p.fit(x).explained_variance_, full.explained_variance_, rtol=1e-6)


def test_torch_inputs_and_outputs():
    torch = pytest.importorskip("torch")
    x = _data(300, 24)
    ref = SKPCA(4, svd_solver="full").fit(x)
    t64 = torch.from_numpy(x)
    ours = PCA(4).fit(t64)
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-10)
    z = ours.transform(t64)
    assert isinstance(z, torch.Tensor) and z.dtype == torch.float64
    np.testing.assert_allclose(z.numpy(), ref.transform(x), atol=1e-8)
    # float32 in -> float32 out (like sklearn); bfloat16 accumulated exactly as its up-cast values
    z32 = ours.transform(t64.float())
    assert z32.dtype == torch.float32
    tb = t64.to(torch.bfloat16)
    ours_b = PCA(4).fit(tb)
    ref_b = SKPCA(4, svd_solver="full").fit(tb.double().numpy())
    np.testing.assert_allclose(ours_b.explained_variance_, ref_b.explained_variance_, rtol=1e-10)
    # numpy float32 input keeps float32 output
    assert PCA(3).fit(x.astype(np.float32)).transform(x.astype(np.float32)).dtype == np.float32


def test_randomized_and_auto():
    rng = np.random.default_rng(1)
    d = 520
    x = (rng.standard_normal((1200, d)) * np.arange(1, d + 1) ** -1.0) + 3.0
    # sklearn's covariance_eigh solver (>= 1.5) is its exact, fast path for tall data
    import sklearn

    solver = "covariance_eigh" if tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 5) else "full"
    ref = SKPCA(20, svd_solver=solver).fit(x)
    for solver in ("randomized", "auto"):
        ours = PCA(20, svd_solver=solver, random_state=0).fit(x)
        assert ours._spectral("x")["solver"] == "randomized"
        np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-5)
        np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-5)
        np.testing.assert_allclose(ours.noise_variance_, ref.noise_variance_, rtol=1e-5)
    with pytest.raises(ValueError, match="randomized"):
        PCA(0.5, svd_solver="randomized").fit(x)


def test_errors_and_estimator_api():
    x = _data(50, 8)
    with pytest.raises(ValueError, match="mle"):
        PCA("mle").fit(x)
    with pytest.raises(ValueError, match="between 0 and"):
        PCA(9).fit(x)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        PCA(1.5).fit(x)
    with pytest.raises(ValueError, match="2-D"):
        PCA().fit(x[0])
    with pytest.raises(ValueError, match="at least 2"):
        PCA().fit(x[:1])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        PCA().transform(x)
    from sklearn.base import clone

    p = PCA(3, precision="fast", whiten=True)
    q = clone(p)
    assert q.get_params() == p.get_params() and q is not p
    assert p.set_params(n_components=2).n_components == 2
    with pytest.raises(ValueError, match="invalid parameter"):
        p.set_params(bogus=1)
    # fast precision is within its documented error of highest
    f = PCA(precision="fast").fit(x.astype(np.float32))
    h = PCA().fit(x.astype(np.float32))
    np.testing.assert_allclose(f.explained_variance_, h.explained_variance_, rtol=1e-5,
                               atol=1e-6 * h.explained_variance_[0])


def test_in_sklearn_pipeline():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = _data(200, 16)
    ours = make_pipeline(StandardScaler(), PCA(4)).fit_transform(x)
    ref = make_pipeline(StandardScaler(), SKPCA(4, svd_solver="full")).fit_transform(x)
    _same_up_to_sign(ours.T, ref.T, 1e-8)


# The paper-style pipeline (Li et al. 2025): sklearn PCA, then RankMe from the explained variance
# ratios. Run verbatim with sklearn, then with the one import line changed to geomfast.
PAPER_SNIPPET = '''
import numpy as np
from sklearn.decomposition import PCA

def compute_rankme(embeddings, epsilon=1e-7):
    n_components = min(2048, embeddings.shape[0], embeddings.shape[1])
    pca = PCA(n_components=n_components)
    pca.fit(embeddings)
    s = pca.explained_variance_ratio_
    p = s / np.sum(np.abs(s)) + epsilon
    return float(np.exp(-np.sum(p * np.log(p)))), s

result = compute_rankme(EMBEDDINGS)
'''


def test_paper_pipeline_runs_by_changing_one_import():
    x = _data(700, 96, seed=3, mean=40.0)
    ns_ref = {"EMBEDDINGS": x}
    exec(PAPER_SNIPPET, ns_ref)
    swapped = PAPER_SNIPPET.replace("from sklearn.decomposition import PCA", "from geomfast.pca import PCA")
    assert swapped.count("geomfast") == 1
    ns = {"EMBEDDINGS": x}
    exec(swapped, ns)
    rm_ref, ratios_ref = ns_ref["result"]
    rm, ratios = ns["result"]
    np.testing.assert_allclose(ratios, ratios_ref, atol=1e-12)
    assert abs(rm - rm_ref) <= 1e-9 * rm_ref
    from geomfast.metrics import rankme

    assert abs(rankme(x, convention="li2025") - rm) <= 1e-8 * rm
