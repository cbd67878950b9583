"""`geomfast plot --spectra` / plot_spectra: the stored eigenspectra of one series across training."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"
STEPS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000)


def _db(path, *, spectra=True, fit_range=(3, 20)):
    """Two layers × one pooling of a power-law spectrum whose decay steepens with training."""
    from geomfast.metrics import alpha_req, rankme
    from geomfast.store import ResultStore

    with ResultStore(path) as s:
        for i, step in enumerate(STEPS):
            ck = dict(model="org/tiny", revision=f"step{step}", step=step, order=i)
            for layer in ("block0", "last"):
                spec = np.arange(1, 65, dtype=np.float64) ** -(0.5 + i / 10)
                metrics = {"rankme": rankme(spec, convention="full"),
                           "alpha": alpha_req(spec, fit_range=fit_range).alpha, "n": 500, "dim": 64}
                s.write_result(ck, layer, "last", options={"fit_range": list(fit_range)}, metrics=metrics,
                               spectra={"covariance": spec, "singular": np.sqrt(spec * 499)} if spectra else None)
    return path


@pytest.mark.parametrize("n, k, want", [(14, 8, [0, 2, 4, 6, 7, 9, 11, 13]), (14, 2, [0, 13]), (14, 1, [13]),
                                         (5, 8, [0, 1, 2, 3, 4]), (3, 3, [0, 1, 2])])
def test_checkpoints_are_spread_over_training_first_and_last_kept(n, k, want):
    from geomfast.plot import spread_checkpoints

    rows = [{"i": i} for i in range(n)]
    assert [r["i"] for r in spread_checkpoints(rows, k)] == want


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_checkpoint_count_is_checked(k):
    from geomfast.plot import spread_checkpoints

    with pytest.raises(ValueError, match=r"\[plot_spectra\] checkpoints must be a positive int"):
        spread_checkpoints([{}], k)


def test_plot_spectra_draws_the_reference_series(tmp_path, monkeypatch):
    """The final layer's curves, spread over training, α and RankMe in the legend, the fit range
    shaded; the picture is a PNG at the path given."""
    import matplotlib.axes

    from geomfast.plot import plot_spectra

    db = _db(tmp_path / "r.db")
    drawn, spans = [], []
    real_loglog, real_span = matplotlib.axes.Axes.loglog, matplotlib.axes.Axes.axvspan

    def loglog(self, x, y, **kw):
        drawn.append((np.asarray(x), np.asarray(y), kw.get("label")))
        return real_loglog(self, x, y, **kw)

    def axvspan(self, a, b, **kw):
        spans.append((a, b))
        return real_span(self, a, b, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "loglog", loglog)
    monkeypatch.setattr(matplotlib.axes.Axes, "axvspan", axvspan)
    out = plot_spectra(db, tmp_path / "spectra", checkpoints=4)
    assert out == str(tmp_path / "spectra") and (tmp_path / "spectra").read_bytes()[:8] == PNG
    assert [lab.split(" (")[0] for _, _, lab in drawn] == ["step 0", "step 8", "step 256", "step 4,000"]
    for i, (x, y, lab) in zip((0, 4, 9, 13), drawn):
        want = np.arange(1, 65, dtype=np.float64) ** -(0.5 + i / 10)
        np.testing.assert_allclose(y, want / want.sum(), rtol=1e-12)
        np.testing.assert_array_equal(x, np.arange(1, 65))
        assert "α " in lab and "RankMe " in lab
    assert spans == [(4, 20)]  # fit_range (3, 20): 0-based [3, 20) -> ranks 4..20


def test_filters_choose_the_series_and_say_what_is_there(tmp_path):
    from geomfast.plot import plot_spectra

    db = _db(tmp_path / "r.db")
    plot_spectra(db, tmp_path / "b0.svg", layer="block0")
    assert b"<svg" in (tmp_path / "b0.svg").read_bytes()
    with pytest.raises(ValueError, match=r"\[plot_spectra\] no results for layer 'block7'.*layers: block0, last"):
        plot_spectra(db, tmp_path / "x.png", layer="block7")
    with pytest.raises(ValueError, match=r"\[plot_spectra\] out .*cannot write '\.xyz' files"):
        plot_spectra(db, tmp_path / "x.xyz")


def test_rows_without_spectra_are_an_error_not_an_empty_plot(tmp_path):
    from geomfast.plot import plot_spectra

    db = _db(tmp_path / "r.db", spectra=False)
    with pytest.raises(ValueError, match=r"no stored covariance spectrum for org/tiny, last, last pooling"):
        plot_spectra(db, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_spectra(tmp_path, capsys):
    from geomfast.cli import main

    db = _db(tmp_path / "r.db")
    assert main(["plot", str(db), "-o", str(tmp_path / "s.png"), "--spectra", "--checkpoints", "3"]) == 0
    assert f"plot written to {tmp_path / 's.png'}" in capsys.readouterr().out
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG
    for extra, needle in ((["--spectra", "--metrics", "rankme"], "--metrics plot(s) metrics against step"),
                          (["--checkpoints", "3"], "--checkpoints K chooses the curves of --spectra")):
        assert main(["plot", str(db), "-o", str(tmp_path / "t.png"), *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("geomfast plot: error:") and needle in err[0], err
    assert not (tmp_path / "t.png").exists()
