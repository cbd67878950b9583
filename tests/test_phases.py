"""Phase detection on synthetic trajectories with known boundaries, on the demo's measured
trajectory (LEADS.md) and on small results databases built with geomfast.store."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from geomfast.phases import (PHASES, detect_phases, detect_transitions, format_phases,
                             phases_from_store)

# The demo's measured trajectory (tiny GPT-NeoX, d = 64; LEADS.md): warm-up collapse to step 64,
# entropy-seeking to 600, compression-seeking after.
DEMO_STEPS = [0, 32, 64, 128, 256, 512, 600, 800, 1000, 1400, 2000]
DEMO_RANKME = [26.0, 15.3, 5.2, 11.3, 18.7, 31.6, 32.1, 31.0, 25.0, 22.7, 21.9]
DEMO_ALPHA = [1.39, 1.51, 2.48, 3.39, 2.81, 1.29, 1.20, 1.27, 1.57, 1.69, 1.80]

# Pythia's schedule: 0, 1, 2, 4, …, 512, then every 1000 to 143000.
PYTHIA_STEPS = np.array([0] + [2 ** i for i in range(10)] + list(range(1000, 143001, 1000)))


def _piecewise(steps, knots, values):
    """Piecewise linear in log(step + 1) through (knot step, value) pairs."""
    return np.interp(np.log1p(steps), np.log1p(knots), values)


def _kinds(res):
    return [p.kind for p in res.phases]


def _logerr(a, b):
    return abs(np.log1p(a) - np.log1p(b))


def test_demo_trajectory_three_phases():
    res = detect_phases(DEMO_STEPS, DEMO_RANKME, DEMO_ALPHA)
    assert _kinds(res) == list(PHASES)
    assert res.absent == []
    assert [b["step"] for b in res.boundaries] == [64, 600]
    assert all(p.alpha_agrees for p in res.phases)
    w, e, c = res.phases
    assert (w.start_step, w.end_step, e.end_step, c.end_step) == (0, 64, 600, 2000)
    assert w.rankme_change < 0 < e.rankme_change and c.rankme_change < 0


def test_demo_second_seed_shape():
    # LEADS.md second seed: 26.1 -> 3.9 (step 64) -> 27.7 (step 400) -> 16.3 (step 1000)
    steps = [0, 16, 32, 64, 128, 256, 400, 600, 800, 1000]
    rk = [26.1, 20.0, 9.0, 3.9, 10.5, 22.0, 27.7, 24.0, 19.5, 16.3]
    res = detect_phases(steps, rk)
    assert _kinds(res) == list(PHASES)
    assert [b["step"] for b in res.boundaries] == [64, 400]


def test_brief_rise_at_initialisation_belongs_to_warmup():
    # measured on the real demo database (final layer): RankMe rose 22.6 -> 27.1 in the first
    # 16 steps, then collapsed to 3.1 at step 64
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000]
    rk = [22.6, 22.9, 23.8, 25.0, 26.3, 27.1, 12.0, 3.1, 9.0, 19.0, 28.5, 28.2, 27.0, 25.6, 24.5,
          23.6, 23.0, 22.7, 22.5]
    res = detect_phases(steps, rk)
    assert _kinds(res) == list(PHASES)
    assert [b["step"] for b in res.boundaries] == [64, 512]
    assert "rose briefly" in res.phases[0].note
    late = detect_phases(steps[5:], rk[5:])  # not from initialisation: nothing is merged
    assert _kinds(late)[0] == "warmup_collapse" and late.phases[0].note is None


@pytest.mark.parametrize("seed", range(6))
def test_noisy_pythia_schedule_boundaries_recovered(seed):
    rng = np.random.default_rng(seed)
    b1, b2 = 256, 20000
    rk = _piecewise(PYTHIA_STEPS, [0, b1, b2, 143000], [30.0, 10.0, 60.0, 45.0])
    al = _piecewise(PYTHIA_STEPS, [0, b1, b2, 143000], [0.8, 1.6, 0.6, 0.9])
    noisy = rk + rng.normal(0, 1.0, rk.size)  # noise ~2% of the range
    res = detect_phases(PYTHIA_STEPS, noisy, al + rng.normal(0, 0.02, al.size))
    assert _kinds(res) == list(PHASES)
    got = [b["step"] for b in res.boundaries]
    assert _logerr(got[0], b1) <= 0.75, got  # within about one power-of-two checkpoint
    assert _logerr(got[1], b2) <= 0.35, got  # within a factor ~1.4 in steps
    assert all(p.alpha_agrees for p in res.phases)


def test_single_noisy_checkpoint_does_not_split_a_phase():
    rk = list(DEMO_RANKME)
    steps = list(DEMO_STEPS)
    # a dense stretch of the rise with one wild checkpoint in it
    steps = steps[:5] + [300, 350, 400, 450] + steps[5:]
    rk = rk[:5] + [20.5, 2.0, 25.0, 27.0] + rk[5:]  # 2.0 at step 350 is the outlier
    res = detect_phases(steps, rk)
    assert _kinds(res) == list(PHASES)
    # and a single spike in a long noisy plateau on the Pythia schedule
    rng = np.random.default_rng(7)
    y = _piecewise(PYTHIA_STEPS, [0, 256, 143000], [30.0, 10.0, 60.0]) + rng.normal(0, 0.5, PYTHIA_STEPS.size)
    y[80] += 25.0
    res = detect_phases(PYTHIA_STEPS, y)
    assert _kinds(res) == ["warmup_collapse", "entropy_seeking"]
    assert res.absent == ["compression_seeking"]


@pytest.mark.parametrize("seed", [460, 954, 2943])
@pytest.mark.parametrize("min_points", [2, 3])
def test_refined_boundaries_keep_every_phase_min_points_long(seed, min_points):
    # random walks on irregular schedules where moving a boundary to its extreme checkpoint used
    # to leave the first phase one interval long despite min_points = 2
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 14))
    steps = np.unique(np.concatenate([[0], np.sort(rng.integers(1, 5000, n))]))
    y = np.cumsum(rng.standard_normal(len(steps))) * 3 + 30
    res = detect_phases(steps, y, min_points=min_points)
    assert res.phases, "the walks change by far more than the threshold"
    for p in res.phases:
        # the one documented exception: a significant warm-up collapse from step 0 may span a
        # single interval (the walk of seed 954 falls 34.4 -> 31.7 in its first interval)
        least = 1 if (p.kind == "warmup_collapse" and p.start_step == 0) else min_points
        assert p.end_index - p.start_index >= least, (p.kind, p.start_index, p.end_index)
    for p, q in zip(res.phases[:-1], res.phases[1:]):
        assert p.end_index == q.start_index


def test_missing_warmup_starts_later():
    steps = np.arange(1000, 143001, 1000)
    rk = _piecewise(steps, [1000, 30000, 143000], [20.0, 50.0, 35.0])
    res = detect_phases(steps, rk + np.random.default_rng(1).normal(0, 0.5, steps.size))
    assert _kinds(res) == ["entropy_seeking", "compression_seeking"]
    assert res.absent == ["warmup_collapse"]
    assert _logerr(res.boundaries[0]["step"], 30000) <= 0.35


def test_monotone_trajectories():
    rng = np.random.default_rng(2)
    up = _piecewise(PYTHIA_STEPS, [0, 143000], [5.0, 50.0]) + rng.normal(0, 0.5, PYTHIA_STEPS.size)
    res = detect_phases(PYTHIA_STEPS, up)
    assert _kinds(res) == ["entropy_seeking"]
    assert res.absent == ["warmup_collapse", "compression_seeking"]
    assert (res.phases[0].start_step, res.phases[0].end_step) == (0, 143000)
    down = 55.0 - up
    res = detect_phases(PYTHIA_STEPS, down)
    assert _kinds(res) == ["warmup_collapse"] and "initialisation" in res.phases[0].note
    late = PYTHIA_STEPS >= 5000
    res = detect_phases(PYTHIA_STEPS[late], down[late])
    assert _kinds(res) == ["compression_seeking"] and "no rise" in res.phases[0].note


def test_flat_noise_has_no_phase():
    rng = np.random.default_rng(3)
    res = detect_phases(PYTHIA_STEPS, 40.0 + rng.normal(0, 0.3, PYTHIA_STEPS.size))
    assert res.phases == [] and res.absent == list(PHASES)
    assert any("no phase" in n for n in res.notes)
    res = detect_phases(PYTHIA_STEPS, np.full(PYTHIA_STEPS.size, 12.0))
    assert res.phases == []


def test_too_few_points_and_bad_input():
    res = detect_phases([0, 100], [20.0, 10.0])
    assert res.phases == [] and any("too few" in n for n in res.notes)
    assert detect_phases([], []).phases == []
    # NaN rows dropped (with a note), duplicate steps averaged
    res = detect_phases(DEMO_STEPS + [64], DEMO_RANKME[:-1] + [None, 5.2], DEMO_ALPHA + [2.48])
    assert any("left out" in n for n in res.notes) and any("duplicate" in n for n in res.notes)
    assert _kinds(res) == list(PHASES)
    with pytest.raises(ValueError, match="expected"):
        detect_phases([0, 1, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        detect_phases([-1, 1, 2], [1.0, 2.0, 3.0])


def test_tokens_reported_at_boundaries():
    tokens = [s * 2_097_152 for s in DEMO_STEPS]  # Pythia: 2M tokens per step
    res = detect_phases(DEMO_STEPS, DEMO_RANKME, DEMO_ALPHA, tokens=tokens)
    assert [b["tokens"] for b in res.boundaries] == [64 * 2_097_152, 600 * 2_097_152]
    assert res.phases[0].start_tokens == 0


def test_post_training_transitions():
    res = detect_transitions([100.0, 120.0, 131.0, 110.0], [1.00, 0.90, 0.85, 0.95],
                             labels=["base", "sft", "dpo", "rlvr"])
    assert [t.kind for t in res.transitions] == ["entropy_seeking", "entropy_seeking", "compression_seeking"]
    assert [t.alpha_agrees for t in res.transitions] == [True, True, True]
    assert res.transitions[2].start == "dpo" and res.transitions[2].end == "rlvr"
    assert res.absent == ["warmup_collapse"]
    # RankMe flat: α decides; both flat: unchanged; α against the paper's direction is flagged
    res = detect_transitions([100.0, 100.2, 100.3, 90.0], [1.0, 0.9, 0.9, 0.8])
    assert [t.kind for t in res.transitions] == ["entropy_seeking", "unchanged", "compression_seeking"]
    assert res.transitions[2].alpha_agrees is False
    assert detect_transitions([5.0]).transitions == []
    # steps=None routes detect_phases to the series labelling
    assert detect_phases(None, [1.0, 2.0]).mode == "post_training"


# ----------------------------------------------------------------------------- stores

def _write(store, model, revision, layer, rankme, alpha, *, step=None, tokens=None, order=0):
    from geomfast.store import ResultStore  # noqa: F401

    store.write_result({"model": model, "revision": revision, "step": step, "tokens": tokens, "order": order},
                       layer, "last", options={"demo": 1},
                       metrics={"rankme": rankme, "alpha": alpha, "n": 512, "dim": 64})


@pytest.fixture
def demo_db(tmp_path):
    """A tiny results database shaped like the demo's: two layers over the demo steps, plus a
    post-training series."""
    from geomfast.store import ResultStore

    path = tmp_path / "results.db"
    with ResultStore(path) as store:
        for i, (s, r, a) in enumerate(zip(DEMO_STEPS, DEMO_RANKME, DEMO_ALPHA)):
            _write(store, "tiny", f"step{s}", "last", r, a, step=s, tokens=s * 2048, order=i)
            _write(store, "tiny", f"step{s}", "embed", 30.0 + 0.01 * i, 1.0, step=s, tokens=s * 2048, order=i)
        for i, (name, r, a) in enumerate(zip(["base", "sft", "dpo", "rlvr"], [100.0, 120.0, 131.0, 110.0],
                                             [1.0, 0.9, 0.85, 0.95])):
            _write(store, "olmo2 series", name, "last", r, a, order=i)
    return path


def test_phases_from_store(demo_db):
    results = phases_from_store(demo_db)
    by = {(r.model, r.layer): r for r in results}
    assert set(by) == {("tiny", "last"), ("tiny", "embed"), ("olmo2 series", "last")}
    last = by[("tiny", "last")]
    assert _kinds(last) == list(PHASES)
    assert [b["step"] for b in last.boundaries] == [64, 600]
    assert [b["tokens"] for b in last.boundaries] == [64 * 2048, 600 * 2048]
    assert by[("tiny", "embed")].phases == []  # a flat layer: nothing invented
    series = by[("olmo2 series", "last")]
    assert series.mode == "post_training"
    assert [(t.start, t.end, t.kind) for t in series.transitions] == [
        ("base", "sft", "entropy_seeking"), ("sft", "dpo", "entropy_seeking"), ("dpo", "rlvr", "compression_seeking")]
    only = phases_from_store(demo_db, model="tiny", layer="last")
    assert len(only) == 1
    text = format_phases(results)
    assert "warmup_collapse" in text and "absent: none" in text and "dpo -> rlvr" in text


def test_cli_table_and_json(demo_db, tmp_path, capsys):
    from geomfast.cli import main

    assert main(["phases", str(demo_db), "--layer", "last"]) == 0
    out = capsys.readouterr().out
    assert "entropy_seeking" in out and "compression_seeking" in out
    js = tmp_path / "phases.json"
    assert main(["phases", str(demo_db), "--json", str(js)]) == 0
    assert "JSON written" in capsys.readouterr().out
    data = json.loads(js.read_text())
    tiny = next(d for d in data if d["model"] == "tiny" and d["layer"] == "last")
    assert [p["kind"] for p in tiny["phases"]] == list(PHASES)
    assert tiny["present"] == {k: True for k in PHASES}
    assert main(["phases", str(demo_db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)


def test_plot_shades_phases(demo_db, tmp_path):
    pytest.importorskip("matplotlib")
    from geomfast.plot import plot_results

    out = plot_results(demo_db, tmp_path / "p.png", model="tiny")
    assert os.path.getsize(out) > 1000
    out = plot_results(demo_db, tmp_path / "s.png", model="olmo2 series")
    assert os.path.getsize(out) > 1000
    out = plot_results(demo_db, tmp_path / "n.png", model="tiny", phases=False)
    assert os.path.getsize(out) > 1000


def test_plot_shades_the_papers_series_and_says_so(tmp_path, monkeypatch):
    """With several poolings the shading came from the final layer's first pooling in
    alphabetical order ('all'), not the paper's last-token series that `geomfast phases --layer
    last --pooling last` reports, and nothing said which series it was."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    import geomfast.phases as phases_mod
    from geomfast.plot import plot_results
    from geomfast.store import ResultStore

    db = tmp_path / "pooled.db"
    with ResultStore(db) as store:
        for i, (s, r, a) in enumerate(zip(DEMO_STEPS, DEMO_RANKME, DEMO_ALPHA)):
            ck = {"model": "tiny", "revision": f"step{s}", "step": s, "order": i}
            for pooling, rankme in (("all", 40.0 - 10 * (i >= 5)), ("last", r), ("mean", 20.0 + 0.01 * i)):
                store.write_result(ck, "last", pooling, options={"demo": 1},
                                   metrics={"rankme": rankme, "alpha": a, "n": 512, "dim": 64})
            store.write_result(ck, "embed", "last", options={"demo": 1},
                               metrics={"rankme": 30.0, "alpha": 1.0, "n": 512, "dim": 64})
    shaded, titles = [], []
    real_shade = phases_mod.shade_phases

    def spy(axes, result, **kw):
        shaded.append((result.layer, result.pooling, [p.kind for p in result.phases]))
        real_shade(axes, result, **kw)

    real_savefig = plt.Figure.savefig

    def savefig(fig, *a, **kw):
        titles.append(fig.axes[0].get_title(loc="left"))
        return real_savefig(fig, *a, **kw)

    monkeypatch.setattr(phases_mod, "shade_phases", spy)
    monkeypatch.setattr(plt.Figure, "savefig", savefig)
    plot_results(db, tmp_path / "p.png")
    (expected,) = [(r.layer, r.pooling, [p.kind for p in r.phases])
                   for r in phases_from_store(db, layer="last", pooling="last")]
    assert shaded == [expected] and expected[2] == list(PHASES)
    assert titles == ["shaded: phases of final layer (after norm), last pooling"]
    # --layer / --pooling choose the series plotted, and so the one shaded
    from geomfast.cli import main

    shaded.clear(), titles.clear()
    assert main(["plot", str(db), "-o", str(tmp_path / "all.png"), "--layer", "last", "--pooling", "all"]) == 0
    (expected,) = [(r.layer, r.pooling, [p.kind for p in r.phases])
                   for r in phases_from_store(db, layer="last", pooling="all")]
    assert shaded == [expected] and titles == ["shaded: phases of final layer (after norm), all pooling"], titles
    shaded.clear(), titles.clear()
    assert main(["plot", str(db), "-o", str(tmp_path / "none.png"), "--no-phases"]) == 0
    assert shaded == [] and titles == [""]
    with pytest.raises(ValueError, match=r"no results for layer 'block7'.*layers: embed, last"):
        plot_results(db, tmp_path / "x.png", layer="block7")
    # the series the plot shows, when it shows one; the final layer before any other layer
    from geomfast.plot import reference_series

    keys = [("m", "block3", "mean", "h"), ("m", "last", "mean", "h"), ("m", "last", "all", "h")]
    assert reference_series(keys) == ("m", "last", "mean", "h")
    assert reference_series(keys[:1]) == keys[0]
    assert reference_series([("b", "last", "last", "h"), ("a", "embed", "last", "h")]) == ("a", "embed", "last", "h")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GEOMFAST_SLOW"), reason="trains the demo model (~1-3 min); GEOMFAST_SLOW=1")
def test_demo_database(tmp_path):
    """The real demo database (geomfast demo): the final layer shows all three phases."""
    from geomfast.demo import run_demo

    db = run_demo(str(tmp_path / "demo"), progress=False)["db"]
    res = next(r for r in phases_from_store(db, layer="last"))
    # measured here (seed 1234, 2000 steps): collapse to step 64, rise to 512, compression after
    assert res.absent == []
    assert res.phase("warmup_collapse").end_step <= 256


def test_demo_summary_uses_the_detector():
    """The demo's text summary says SEEN only for phases the detector finds (never for noise)."""
    from geomfast.demo import describe_phases

    rows = [{"status": "ok", "pooling": "last", "layer": "last", "step": s, "rankme": r, "alpha": a}
            for s, r, a in zip(DEMO_STEPS, DEMO_RANKME, DEMO_ALPHA)]
    text = "\n".join(describe_phases(rows))
    for label in ("warm-up collapse", "entropy-seeking", "compression-seeking"):
        assert f"- {label}: SEEN" in text, text
    rng = np.random.default_rng()
    flat = [{**r, "rankme": 20.0 + 0.05 * rng.standard_normal()} for r in rows]
    text = "\n".join(describe_phases(flat))
    assert "SEEN" not in text, text


@pytest.mark.parametrize("opt", [{"bandwidth": 0.0}, {"bandwidth": -1.0}, {"noise_k": float("nan")},
                                 {"rel_range": -0.1}, {"min_points": 0}])
def test_bad_options_are_refused(opt):
    from geomfast.phases import detect_phases

    with pytest.raises(ValueError, match=next(iter(opt))):
        detect_phases([0, 1, 2, 4, 8], [5.0, 4.0, 3.0, 4.0, 5.0], **opt)


# ----------------------------------------------------------------------------- audit fixes

# The paper's Pythia subset: step 0, then 8, 16, ..., 512 (powers of two), then every 1000.
PAPER_STEPS = np.array([0, 8, 16, 32, 64, 128, 256, 512] + list(range(1000, 143001, 1000)))


def _fresh_seed():
    return int(np.random.SeedSequence().entropy % 2 ** 32)


def test_one_interval_warmup_collapse_is_kept():
    """A warm-up collapse within the first checkpoint interval was merged as a 'short run', the
    merged run turned into a net fall and joined the final fall: a rise ~7x the threshold vanished
    (one warmup_collapse 0 -> 143000, entropy- and compression-seeking absent)."""
    steps = [0, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 143000]
    r = [400, 100, 110, 130, 150, 170, 190, 210, 230, 250, 270, 290, 250, 200, 150]
    res = detect_phases(steps, r)
    assert _kinds(res) == list(PHASES), [(p.kind, p.start_step, p.end_step) for p in res.phases]
    w, e, c = res.phases
    assert (w.start_step, w.end_step, e.end_step, c.end_step) == (0, 16, 16000, 143000)
    assert e.rankme_change > 5 * res.threshold  # the rise that used to disappear
    # the exemption is the warm-up's alone: min_points = 3 still leaves it one interval long
    res3 = detect_phases(steps, r, min_points=3)
    assert _kinds(res3) == list(PHASES) and res3.phases[0].end_step == 16
    assert all(p.end_index - p.start_index >= 3 for p in res3.phases[1:])


@pytest.mark.parametrize("noise", [0.0, 5.0])
def test_collapse_to_step_8_on_the_paper_schedule(noise):
    seed = _fresh_seed()
    rng = np.random.default_rng(seed)
    r = _piecewise(PAPER_STEPS, [0, 8, 16000, 143000], [400.0, 100.0, 290.0, 150.0])
    res = detect_phases(PAPER_STEPS, r + rng.normal(0, noise, r.size))
    got = [(p.kind, p.start_step, p.end_step) for p in res.phases]
    assert _kinds(res) == list(PHASES), (seed, got)
    assert res.phases[0].end_step in (8, 16), (seed, got)  # the minimum, or its neighbour in noise
    if noise == 0:
        assert [b["step"] for b in res.boundaries] == [8, 16000], got
    assert _logerr(res.boundaries[1]["step"], 16000) <= 0.6, (seed, got)


def test_one_interval_collapse_then_long_rise_and_fall():
    # Pythia's schedule: RankMe collapses between step 0 and step 1, rises to 2000, falls after
    r = _piecewise(PYTHIA_STEPS, [0, 1, 2000, 143000], [60.0, 20.0, 50.0, 30.0])
    res = detect_phases(PYTHIA_STEPS, r)
    assert _kinds(res) == list(PHASES)
    assert [b["step"] for b in res.boundaries] == [1, 2000]  # was [2, 2000]: min_points moved it
    seed = _fresh_seed()
    rng = np.random.default_rng(seed)
    res = detect_phases(PYTHIA_STEPS, r + rng.normal(0, 0.6, r.size))  # noise 2% of the range
    got = [b["step"] for b in res.boundaries]
    assert _kinds(res) == list(PHASES), (seed, got)
    assert got[0] <= 4 and _logerr(got[1], 2000) <= 0.5, (seed, got)


def test_single_interval_fall_at_init_kept_only_when_significant():
    rise = _piecewise(PYTHIA_STEPS, [0, 143000], [5.0, 50.0])
    thr = detect_phases(PYTHIA_STEPS, rise).threshold
    wiggle = rise.copy()
    wiggle[0] = rise[1] + 0.5 * thr  # an insignificant first-interval dip: merged, as before
    res = detect_phases(PYTHIA_STEPS, wiggle)
    assert _kinds(res) == ["entropy_seeking"] and res.phases[0].start_step == 0
    fall = rise.copy()
    fall[0] = rise[1] + 3 * thr  # a significant one: the warm-up collapse, one interval long
    res = detect_phases(PYTHIA_STEPS, fall)
    assert _kinds(res) == ["warmup_collapse", "entropy_seeking"]
    assert res.phases[0].end_step == 1, [(p.kind, p.start_step, p.end_step) for p in res.phases]
    # not from initialisation, the same first interval is no phase of its own
    late = detect_phases(PYTHIA_STEPS[1:], fall[1:])
    assert _kinds(late) == ["entropy_seeking"]


def test_short_end_run_never_erases_a_significant_phase():
    """A short end run that changes more than its neighbour is left out (with a note) instead of
    being merged, which reversed the neighbour and erased it (a late-starting series)."""
    steps = np.arange(1000, 143001, 1000)
    r = _piecewise(steps, [1000, 2000, 16000, 143000], [400.0, 100.0, 290.0, 150.0])
    res = detect_phases(steps, r)
    assert _kinds(res) == ["entropy_seeking", "compression_seeking"], res.notes  # was compression only
    assert res.phases[0].start_step == 2000 and res.boundaries[0]["step"] == 16000
    assert any("left out of the phases" in n and "1000 and 2000" in n for n in res.notes), res.notes
    # the same at the end (the simplification itself): a last-interval jump larger than the
    # final fall used to turn that fall into a rise, which then joined the first rise
    from geomfast.phases import _monotone_runs, _simplify

    s = np.array([0.0, 10, 20, 30, 40, 50, 40, 30, 20, 10, 60])
    runs, left_out = _simplify(_monotone_runs(s), s, 5.0, 2)
    assert runs == [[0, 5, 1], [5, 9, -1]] and left_out == [[9, 10, 1]]
    # an end run smaller than its neighbour still joins it, as before
    s[-1] = 15.0
    assert _simplify(_monotone_runs(s), s, 5.0, 2) == ([[0, 5, 1], [5, 10, -1]], [])


@pytest.mark.parametrize("b2", [30000, 60000, 90000, 130000])
def test_last_boundary_at_the_extreme_checkpoint(b2):
    """The last boundary was biased early (30000/60000/90000/130000 came out as 29000/51000/
    70000/99000): the refine window around the smoothed extremum did not reach the raw one."""
    r = _piecewise(PYTHIA_STEPS, [0, 64, b2, 143000], [400.0, 100.0, 300.0, 150.0])
    res = detect_phases(PYTHIA_STEPS, r)
    assert _kinds(res) == list(PHASES)
    assert [b["step"] for b in res.boundaries] == [64, b2]


@pytest.mark.parametrize("b2", [60000, 90000, 130000])
def test_last_boundary_unbiased_with_noise(b2):
    seed = _fresh_seed()
    rng = np.random.default_rng(seed)
    clean = _piecewise(PYTHIA_STEPS, [0, 64, b2, 143000], [400.0, 100.0, 300.0, 150.0])
    errs = []
    for _ in range(5):
        res = detect_phases(PYTHIA_STEPS, clean + rng.normal(0, 2.0, clean.size))  # 0.7% of the range
        assert _kinds(res) == list(PHASES), seed
        errs.append(_logerr(res.boundaries[1]["step"], b2))
    # before the fix: a mean error of at least 0.15 (0.25 for b2 >= 90000) in log-step
    assert np.mean(errs) <= 0.12 and max(errs) <= 0.3, (seed, errs)


def test_outlier_spike_does_not_become_a_boundary():
    seed = _fresh_seed()
    rng = np.random.default_rng(seed)
    clean = _piecewise(PYTHIA_STEPS, [0, 64, 60000, 143000], [400.0, 100.0, 300.0, 150.0])
    i_peak, i_min = int(np.flatnonzero(PYTHIA_STEPS == 60000)[0]), int(np.flatnonzero(PYTHIA_STEPS == 64)[0])
    for i_spike, jump in ((i_peak - 10, 120.0), (i_peak - 3, 120.0), (i_peak + 5, 120.0),
                          (i_min - 2, -150.0), (i_min + 2, -150.0)):
        y = clean + rng.normal(0, 2.0, clean.size)
        y[i_spike] += jump  # a single wild checkpoint, more extreme than the true extremum
        res = detect_phases(PYTHIA_STEPS, y)
        got = [b["step"] for b in res.boundaries]
        assert _kinds(res) == list(PHASES), (seed, i_spike, got)
        assert int(PYTHIA_STEPS[i_spike]) not in got, (seed, i_spike, got)
        assert got[0] in (32, 64, 128) and _logerr(got[1], 60000) <= 0.3, (seed, i_spike, got)


def test_post_training_default_is_the_same_for_every_entry_point(tmp_path):
    """detect_phases(None, r) used rel_level 0.02 while detect_transitions, phases_from_store and
    `geomfast phases` used 0.01, so the labels depended on the entry point."""
    from geomfast.cli import main
    from geomfast.phases import phases_from_rows
    from geomfast.store import ResultStore

    r = [100.0, 101.5, 99.0, 97.9]
    direct = [t.kind for t in detect_transitions(r).transitions]
    assert direct == ["entropy_seeking", "compression_seeking", "compression_seeking"]
    assert [t.kind for t in detect_phases(None, r).transitions] == direct
    rows = [{"model": "m", "layer": "last", "pooling": "last", "ord": i, "revision": f"c{i}", "rankme": v}
            for i, v in enumerate(r)]
    assert [t.kind for t in phases_from_rows(rows)[0].transitions] == direct
    db = tmp_path / "series.db"
    with ResultStore(db) as store:
        for i, v in enumerate(r):
            _write(store, "series", f"c{i}", "last", v, 1.0, order=i)
    assert [t.kind for t in phases_from_store(db)[0].transitions] == direct
    js = tmp_path / "series.json"
    assert main(["phases", str(db), "--json", str(js)]) == 0
    assert [t["kind"] for t in json.loads(js.read_text())[0]["transitions"]] == direct
    # one constant: an explicit rel_level still reaches the series labelling from detect_phases
    from geomfast.phases import TRANSITION_REL_LEVEL

    assert TRANSITION_REL_LEVEL == 0.01
    for lvl in (0.005, 0.02, 0.05):
        assert ([t.kind for t in detect_phases(None, r, rel_level=lvl).transitions]
                == [t.kind for t in detect_transitions(r, rel_level=lvl).transitions])
    with pytest.raises(ValueError, match="rel_level"):
        detect_transitions(r, rel_level=-0.1)


# ----------------------------------------------------------------------------- heavy-tailed noise

def _collapse_rise_fall(b2):
    """Warm-up collapse 300 -> 100 at step 64, a rise of 150 to step b2, a fall of 80 to the end."""
    return _piecewise(PYTHIA_STEPS, [0, 64, b2, 143000], [300.0, 100.0, 250.0, 170.0])


@pytest.mark.parametrize("b2", [20000, 60000])
def test_cauchy_noise_three_phases_with_their_boundaries(b2):
    """Cauchy noise of scale 15: a pair of adjacent outlying checkpoints survives the median of 3,
    and the kernel's mean is not bounded, so such pairs (and an outlying last checkpoint) bent
    the curve; and the boundary, the extreme median of 3 over the whole region, was almost
    always such a pair in the dense tail, far from the peak. The old code found the three
    phases with both boundaries in place in 18 / 17 of these 40 seeds (36 % / 39 % of 200)."""
    clean = _collapse_rise_fall(b2)
    good = []
    for seed in range(40):
        y = clean + 15.0 * np.random.default_rng(seed).standard_cauchy(clean.size)
        res = detect_phases(PYTHIA_STEPS, y)
        got = [b["step"] for b in res.boundaries]
        if _kinds(res) == list(PHASES) and 8 <= got[0] <= 512 and _logerr(got[1], b2) <= 0.7:
            good.append(seed)
    assert len(good) >= 25, good  # 28 of 40 for both; what is still missed is mostly the fall of
    # 80, only 1.2 thresholds (3 sigma = 67) deep, as with Gaussian noise of the same sigma


def test_outlying_pair_far_from_the_peak_is_no_boundary():
    clean = _collapse_rise_fall(20000)
    i = int(np.flatnonzero(PYTHIA_STEPS == 80000)[0])
    for seed in range(3):
        y = clean + np.random.default_rng(seed).normal(0, 2.0, clean.size)
        y[i: i + 2] += 100.0  # two adjacent checkpoints 44 above the peak, on the fall
        res = detect_phases(PYTHIA_STEPS, y)
        got = [b["step"] for b in res.boundaries]
        assert _kinds(res) == list(PHASES), (seed, got)
        assert got[0] == 64 and _logerr(got[1], 20000) <= 0.15, (seed, got)  # was 80000 / 81000


def test_outlying_last_checkpoint_of_a_dense_schedule():
    """One last checkpoint of 1e5 bent the end of the smoothed curve by thousands: the noise
    estimate grew thirty-fold and only one entropy-seeking phase was left."""
    clean = _collapse_rise_fall(20000)
    for seed in range(3):
        y = clean + np.random.default_rng(seed).normal(0, 2.0, clean.size)
        y[-1] = 1e5
        res = detect_phases(PYTHIA_STEPS, y)
        got = [b["step"] for b in res.boundaries]
        assert _kinds(res) == list(PHASES), (seed, got, res.threshold)
        assert got[0] == 64 and _logerr(got[1], 20000) <= 0.15, (seed, got)
        assert res.threshold < 25 and res.phases[-1].end_step == 143000  # 0.1 x the range of 250


def test_heavy_tailed_noise_on_a_flat_curve_makes_few_phases():
    """No real change, heavy-tailed noise (40 seeds each of Cauchy scale 15 and Student-t3 scale
    10): the old code reported phases in 14 + 3 of them."""
    flat = np.full(PYTHIA_STEPS.size, 200.0)
    found = []
    for name, draw in (("cauchy", lambda g: 15.0 * g.standard_cauchy(flat.size)),
                       ("t3", lambda g: 10.0 * g.standard_t(3, flat.size))):
        for seed in range(40):
            res = detect_phases(PYTHIA_STEPS, flat + draw(np.random.default_rng(seed)))
            if res.phases:
                found.append((name, seed, _kinds(res)))
    assert len(found) <= 12, found  # 9 + 1; the rest come from sparse early checkpoints, which
    # nothing averages, and from an outlying first checkpoint at initialisation (a warm-up collapse)


def test_first_checkpoint_alone_makes_no_phase():
    """A jump in the first interval followed by a flat curve is what one outlying first checkpoint
    looks like; the old code made a phase of the whole series out of it. A fall from
    initialisation is still the warm-up collapse."""
    flat = 40.0 + np.random.default_rng(3).normal(0, 0.3, PYTHIA_STEPS.size)
    y = flat.copy()
    y[0] = 10.0
    res = detect_phases(PYTHIA_STEPS, y)
    assert res.phases == [], _kinds(res)  # was entropy_seeking 0 -> 143000
    assert any("only at the first checkpoint" in n and n.endswith("no phase") for n in res.notes), res.notes
    late = flat[1:].copy()
    late[0] += 30.0  # a series from step 1: its first interval is as unchecked
    assert detect_phases(PYTHIA_STEPS[1:], late).phases == []  # was compression_seeking
    y[0] = 70.0
    res = detect_phases(PYTHIA_STEPS, y)
    assert _kinds(res) == ["warmup_collapse"] and res.phases[0].start_step == 0


def test_a_series_traced_under_two_option_sets_is_told_apart_and_selectable(tmp_path, capsys):
    """The same model × layer × pooling under two option sets (another fit range): two tables,
    each header saying which options set it apart and its hash, and `--options HASH` (a prefix
    is enough) keeps one. A hash that matches nothing says which hashes the database holds."""
    from geomfast.cli import main
    from geomfast.store import ResultStore, options_hash

    db = tmp_path / "two.db"
    sets = [{"dataset": "d", "fit_range": [11, 100]}, {"dataset": "d", "fit_range": [3, 30]}]
    with ResultStore(db) as store:
        for opts, shift in zip(sets, (0.0, 0.5)):
            for i, (s, r, a) in enumerate(zip(DEMO_STEPS, DEMO_RANKME, DEMO_ALPHA)):
                store.write_result({"model": "tiny", "revision": f"step{s}", "step": s, "order": i}, "last",
                                   "last", options=opts, metrics={"rankme": r, "alpha": a + shift, "n": 512,
                                                                  "dim": 64})
    hashes = [options_hash(o) for o in sets]
    results = phases_from_store(db)
    assert sorted(r.options_hash for r in results) == sorted(hashes)
    by = {r.options_hash: r for r in results}
    for h, o in zip(hashes, sets):
        assert by[h].options_differ == f"options {h[:8]}: fit_range={json.dumps(o['fit_range'])}"
    text = format_phases(results)
    assert f"[options {hashes[1][:8]}: fit_range=[3, 30]]" in text
    (one,) = phases_from_store(db, options_hash=hashes[1][:6])
    assert one.options_hash == hashes[1] and one.options_differ is None
    assert main(["phases", str(db), "--options", hashes[0][:8]]) == 0
    out = capsys.readouterr().out
    assert out.count("tiny layer last last pooling") == 1 and "[options" not in out
    with pytest.raises(ValueError, match="options hashes: " + ", ".join(sorted(hashes))):
        phases_from_store(db, options_hash="ffffffff")


def test_plot_keeps_one_option_set(tmp_path):
    """`geomfast plot --options HASH` draws only that option set's line (one line, not two)."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from geomfast.cli import main
    from geomfast.store import ResultStore, options_hash

    db = tmp_path / "two.db"
    sets = [{"dataset": "d", "fit_range": [11, 100]}, {"dataset": "d", "fit_range": [3, 30]}]
    with ResultStore(db) as store:
        for opts in sets:
            for i, (s, r, a) in enumerate(zip(DEMO_STEPS, DEMO_RANKME, DEMO_ALPHA)):
                store.write_result({"model": "tiny", "revision": f"step{s}", "step": s, "order": i}, "last",
                                   "last", options=opts, metrics={"rankme": r, "alpha": a, "n": 512, "dim": 64})
    lines = []
    real = plt.Figure.savefig

    def spy(fig, *a, **kw):
        lines.append(len(fig.axes[0].get_lines()))
        return real(fig, *a, **kw)

    plt.Figure.savefig = spy
    try:
        assert main(["plot", str(db), "-o", str(tmp_path / "both.png"), "--no-phases"]) == 0
        assert main(["plot", str(db), "-o", str(tmp_path / "one.png"), "--no-phases",
                     "--options", options_hash(sets[1])[:8]]) == 0
    finally:
        plt.Figure.savefig = real
    assert lines == [2, 1]
