"""Training phases of representation geometry, detected from RankMe and α-ReQ trajectories.

Li et al. (2025) report three phases of pretraining, read off RankMe (and mirrored by α):

1. ``warmup_collapse``     — RankMe falls quickly from its value at initialisation;
2. ``entropy_seeking``     — RankMe rises (dimensionality expands), α falls;
3. ``compression_seeking`` — RankMe falls again, α rises (anisotropic consolidation).

and, for post-training series (base → SFT → DPO → RLVR), that SFT and DPO act entropy-seeking and
RLVR compression-seeking.

Algorithm (pretraining series, :func:`detect_phases`)
-----------------------------------------------------
Everything happens in log-step, ``x = log(step + 1)``, where checkpoint schedules are roughly even
and where the paper draws its curves.

1. **Robust smoothing.** A running median of 3 consecutive checkpoints (end points kept) removes
   any single outlying checkpoint entirely; then a local-linear Gaussian kernel smoother in ``x``
   (bandwidth ``bandwidth``, default 0.3 ≈ a factor 1.35 in steps) averages where checkpoints are
   dense (Pythia's every-1000-steps tail) and leaves sparse early checkpoints (powers of two,
   0.69 apart in ``x``) almost untouched.

   Heavy-tailed noise also puts *pairs* of outlying checkpoints next to each other, which the
   median of 3 keeps, and an outlying last checkpoint; the kernel's mean does not bound them
   (one value of 10⁵ moved the end of the curve by thousands). So the smoother averages the
   median of 3 except where it departs from a wide running median — over the checkpoints within
   ``bandwidth / 2``, as many on either side, so a median of 3 where checkpoints are sparse —
   by more than 6 median departures (and by more than the smallest significant change,
   ``max(rel_range · range, rel_level · median)``, so that on a clean curve, where the median
   departure is ~0, only a departure that could matter is replaced): there the wide running
   median replaces it. The last (first) checkpoint, where the two next to it lie within
   ``bandwidth / 2``, is compared with Tukey's end-point rule, the median of itself, its
   neighbour and the line through the next two. A running median keeps a monotone stretch
   exactly and a sharp extreme nearly, and every other checkpoint is averaged as before, so that
   Gaussian noise is averaged as efficiently as without this step (and clean curves, in practice,
   give the same phases).
2. **Noise and significance.** The noise ``σ`` is the robust spread (1.4826 · median absolute
   deviation) of the raw values around the smoothed curve. A change of RankMe is significant
   when it exceeds ``threshold = max(rel_range · range(smoothed), noise_k · σ,
   rel_level · median|smoothed|)`` (defaults 0.1, 3, :data:`PHASE_REL_LEVEL` = 0.02).
3. **Segmentation by the sign of dRankMe/dx.** The smoothed curve is cut into maximal monotone
   runs. Runs are then simplified by persistence: repeatedly, the weakest run — the one with the
   smallest net change among those whose change is below the threshold or that span fewer than
   ``min_points`` checkpoint intervals (default 2) — is merged into its neighbours (an interior run
   disappears with the extremum pair that delimits it; an end run joins the adjacent one). What
   remains alternates rise / fall, each run significant and long enough. A trajectory whose
   whole change is below the threshold has no phase at all; nor has one whose whole change is
   significant only thanks to its first checkpoint (unfiltered unless the two after it lie
   within ``bandwidth / 2``): recomputed with that value replaced by the median of 3 at the
   second checkpoint, it must still exceed the threshold, as a jump in the first interval
   followed by a flat curve is just what one outlying first checkpoint looks like. A fall from
   initialisation is exempt: it is the warm-up collapse (below).

   ``min_points`` exists because the running median removes a single outlying checkpoint only
   in the interior: at either end of the series one unusual checkpoint alone can make a short
   significant run, and a phase should be a trend that several checkpoints support.
   **The warm-up collapse is exempt**: when the series starts at initialisation
   (step ≤ ``init_max_step``), a *significant* fall from the first checkpoint (or right after a
   smaller first rise) is kept even if it spans a single interval. The paper's collapse is rapid,
   the first checkpoint is the measured initialisation, and sparse early schedules put the whole
   collapse in one interval (the paper's Pythia subset goes from step 0 straight to step 8). An
   insignificant first-interval wiggle is still merged, and every other phase spans at least
   ``min_points`` intervals.
   A short end run that changes *more* than the run next to it is not merged (merging would
   reverse that run's direction and so erase a significant phase): its checkpoints are left out
   of every phase, with a note.
4. **Boundaries.** Each boundary is the checkpoint with the extreme value anywhere between the
   two neighbouring boundaries (the whole region of the two runs it separates, which the
   smoothed curve chose), at least ``min_points`` intervals from them (one after the start for a
   warm-up collapse). Values are the running median of 3, so that a single outlying checkpoint
   never becomes a boundary, clipped to within ``k = max(σ, rel_range · range, rel_level ·
   median)`` of both the smoothed curve and the local running median of 5 (of 3 where sparse):
   a pair of outlying checkpoints far from the true extreme exceeds the curve by at most ``k``
   and cannot outbid it (with Cauchy noise the extreme median of 3 over a hundred dense
   checkpoints is almost always such a pair), while a sharp extreme that the smoother shaves is
   still within ``k`` of its local median and keeps its value. As the median ties a sharp
   extreme with its larger neighbour, ties go to the raw value, unless that raw value is a
   spike — beyond what straight lines through the two checkpoints on either side predict, by
   more than the threshold. (The smoothed extremum itself is biased towards the
   gentler side of a peak by up to a bandwidth: boundaries are not placed there.) Boundaries are
   reported in steps, and in tokens where the store knows them.
5. **Labels.** A rise is ``entropy_seeking``. When the series starts at initialisation, a brief
   rise undone by a larger fall that a rise then follows is merged into the warm-up collapse
   (with a note) — the tiny demo model does this in its first 16 steps. A fall after a rise is
   ``compression_seeking``. A fall at the start of the series followed by a rise is
   ``warmup_collapse``; a fall at the start with no rise after it is ``warmup_collapse`` only if
   the series starts at initialisation (step ≤ ``init_max_step``, default 0), else
   ``compression_seeking`` — both with a note, since RankMe alone cannot tell them apart. A phase
   that no run supports is reported absent (:attr:`PhaseResult.absent`), never invented.
6. **α as corroboration.** α is smoothed the same way; each phase reports α's change and
   ``alpha_agrees``: True when α moved significantly against RankMe (as the paper describes),
   False when it moved with it, None when α stayed within its own threshold or is unknown.

Post-training series (:func:`detect_transitions`): checkpoints in order (column ``ord``), no
steps. Each consecutive pair is a transition labelled ``entropy_seeking`` (RankMe up) or
``compression_seeking`` (RankMe down); when RankMe changes by less than ``rel_level`` of its
level (default :data:`TRANSITION_REL_LEVEL` = 0.01, the same from every entry point:
``detect_transitions``, ``detect_phases(None, …)``, ``phases_from_store``, ``geomfast phases``)
the sign of −Δα decides, and when neither moves the transition is ``unchanged``.
``alpha_agrees`` is reported as above.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["PHASES", "PHASE_REL_LEVEL", "TRANSITION_REL_LEVEL", "Phase", "Transition", "PhaseResult",
           "detect_phases", "detect_transitions", "phases_from_store", "format_phases", "shade_phases",
           "register_cli"]

PHASES = ("warmup_collapse", "entropy_seeking", "compression_seeking")
# Default ``rel_level`` of each mode, used by every entry point (detect_phases, detect_transitions,
# phases_from_store / phases_from_rows, `geomfast phases`, `geomfast plot`):
PHASE_REL_LEVEL = 0.02       # pretraining: significance floor, a fraction of the median RankMe
TRANSITION_REL_LEVEL = 0.01  # post-training: a transition moves when RankMe changes by this fraction
PHASE_COLORS = {"warmup_collapse": "#9e9e9e", "entropy_seeking": "#4c9be8",
                "compression_seeking": "#e8894c", "unchanged": "#ffffff"}


@dataclass
class Phase:
    """One phase: a significant monotone run of RankMe between two checkpoints (inclusive)."""

    kind: str
    start_step: int
    end_step: int
    start_tokens: int | None
    end_tokens: int | None
    start_index: int
    end_index: int
    rankme_start: float
    rankme_end: float
    alpha_start: float | None
    alpha_end: float | None
    alpha_agrees: bool | None
    note: str | None = None

    @property
    def rankme_change(self) -> float:
        return self.rankme_end - self.rankme_start

    @property
    def alpha_change(self) -> float | None:
        if self.alpha_start is None or self.alpha_end is None:
            return None
        return self.alpha_end - self.alpha_start


@dataclass
class Transition:
    """One step of a post-training series (checkpoint ``start`` → checkpoint ``end``)."""

    kind: str
    start: str
    end: str
    start_index: int
    end_index: int
    rankme_start: float
    rankme_end: float
    alpha_start: float | None
    alpha_end: float | None
    alpha_agrees: bool | None


@dataclass
class PhaseResult:
    """Phases of one trajectory (one model × layer × pooling).

    ``mode`` is ``'pretraining'`` (phases along steps) or ``'post_training'`` (transitions along
    an ordered series). ``phases`` / ``transitions`` hold the detected items in order;
    ``boundaries`` the steps where one phase ends and the next starts; ``notes`` explain anything
    unusual (too few points, dropped rows, ambiguous labels)."""

    mode: str
    phases: list[Phase] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    boundaries: list[dict] = field(default_factory=list)
    n_points: int = 0
    threshold: float | None = None
    noise: float | None = None
    notes: list[str] = field(default_factory=list)
    model: str | None = None
    layer: str | None = None
    pooling: str | None = None
    options_hash: str | None = None
    # when the same model × layer × pooling was traced under several option sets: what sets this
    # one apart (e.g. "fit_range=[3, 30]"), so that their tables can be told apart
    options_differ: str | None = None

    @property
    def present(self) -> dict[str, bool]:
        kinds = {p.kind for p in self.phases} | {t.kind for t in self.transitions}
        return {k: k in kinds for k in PHASES}

    @property
    def absent(self) -> list[str]:
        return [k for k, v in self.present.items() if not v]

    def phase(self, kind: str) -> Phase | None:
        """The first phase of this kind, or None when absent."""
        return next((p for p in self.phases if p.kind == kind), None)

    def to_dict(self) -> dict:
        d = asdict(self)
        for p, pd in zip(self.phases, d["phases"]):
            pd["rankme_change"] = p.rankme_change
            pd["alpha_change"] = p.alpha_change
        d["present"] = self.present
        d["absent"] = self.absent
        return d


# ----------------------------------------------------------------------------- smoothing

def _median3(y: np.ndarray) -> np.ndarray:
    out = y.copy()
    if y.size >= 3:
        out[1:-1] = np.median(np.stack([y[:-2], y[1:-1], y[2:]]), axis=0)
    return out


def _kernel_smooth(x: np.ndarray, y: np.ndarray, h: float) -> np.ndarray:
    """Local-linear Gaussian kernel regression of y on x, evaluated at x."""
    out = np.empty_like(y)
    for i, xi in enumerate(x):
        w = np.exp(-0.5 * ((x - xi) / h) ** 2)
        sw = w.sum()
        if sw / w.max() < 2.5:  # about one point in the window: keep it
            out[i] = (w * y).sum() / sw
            continue
        xm = (w * x).sum() / sw
        ym = (w * y).sum() / sw
        sxx = (w * (x - xm) ** 2).sum()
        slope = (w * (x - xm) * (y - ym)).sum() / sxx if sxx > 0 else 0.0
        out[i] = ym + slope * (xi - xm)
    return out


def _running_median(x: np.ndarray, y: np.ndarray, h: float, widest: int | None = None) -> np.ndarray:
    """Running median over the checkpoints within ``h / 2`` of each one in x, as many on either
    side (at least one: a median of 3; at most ``widest``).

    Sparse checkpoints get the median of 3; dense ones a wider median, which a pair or a cluster
    of outlying checkpoints does not move, as a single one does not move the median of 3, while
    a monotone stretch, however steep, is kept exactly (the median of a symmetric window of
    monotone values is its centre). An end checkpoint is kept, unless the two next to it lie
    within ``h / 2``: it is then the median of itself, its neighbour and the straight line
    through the next two (Tukey's end-point rule), so that one outlying last checkpoint of a
    dense schedule moves nothing while a trend into the end is kept."""
    out = _median3(y)
    n = y.size
    if n < 4:
        return out
    half = 0.5 * h
    lo = np.searchsorted(x, x - half, side="left")
    hi = np.searchsorted(x, x + half, side="right") - 1
    for i in range(2, n - 2):
        k = min(i - lo[i], hi[i] - i, i, n - 1 - i)
        if widest is not None:
            k = min(k, widest)
        if k > 1:
            out[i] = np.median(y[i - k: i + k + 1])
    if _end_filtered(x, h, 0):
        out[0] = np.median([y[0], out[1], 3 * out[1] - 2 * out[2]])
    if _end_filtered(x, h, -1):
        out[-1] = np.median([y[-1], out[-2], 3 * out[-2] - 2 * out[-3]])
    return out


def _end_filtered(x: np.ndarray, h: float, end: int) -> bool:
    """Whether :func:`_running_median` filters the first (``end`` 0) or the last (-1) checkpoint:
    the two checkpoints next to it lie within ``h / 2``."""
    if x.size < 4:
        return False
    return bool(x[2] - x[0] <= 0.5 * h) if end == 0 else bool(x[-1] - x[-3] <= 0.5 * h)


_OUTLIER_MADS = 6.0  # departure from the wide running median (in median departures) of an outlier


def _smooth(x, y, h, rel_range: float = 0.1, rel_level: float = PHASE_REL_LEVEL):
    """The running median of 3 ``m`` and the smoothed curve ``s``.

    ``s`` is the local-linear kernel smoother of ``m``, except at the checkpoints where ``m``
    departs from the wide running median of :func:`_running_median` by more than
    ``_OUTLIER_MADS`` (6) median departures (and by more than the smallest change that is
    significant whatever the noise: ``rel_range`` of the range, ``rel_level`` of the level):
    those hold a pair or cluster of outliers that the median of 3 keeps, or an outlying last
    checkpoint, and the wide running median replaces them. Every other checkpoint is averaged
    as before, so that the smoother loses nothing on Gaussian noise."""
    m = _median3(y)
    if y.size < 4:
        return m, _kernel_smooth(x, m, h)
    mw = _running_median(x, y, h)
    d = np.abs(m - mw)
    cut = max(_OUTLIER_MADS * float(np.median(d)), _floor(mw, rel_range, rel_level))
    return m, _kernel_smooth(x, np.where(d > cut, mw, m) if cut > 0 else m, h)


def _robust_values(x, y, m, s, h, k) -> np.ndarray:
    """The values boundaries are placed on: ``m`` clipped to within ``k`` of both the smoothed
    curve ``s`` and the local running median of 5 (of 3 where checkpoints are sparse).

    A pair of outlying checkpoints, which the median of 3 keeps, then exceeds the curve by at
    most ``k`` and cannot become the extreme of a whole phase far from the true one; a sharp
    extreme, which the smoother shaves (by more than ``k`` on a clean curve with a narrow peak),
    is still within ``k`` of the local median and keeps its value."""
    local = _running_median(x, y, h, widest=2)
    return np.clip(m, np.minimum(s, local) - k, np.maximum(s, local) + k)


def _noise(y, s) -> float:
    return float(1.4826 * np.median(np.abs(y - s))) if y.size else 0.0


def _floor(s, rel_range, rel_level) -> float:
    """The smallest change of curve ``s`` that is significant whatever the noise: ``rel_range``
    of its range, or ``rel_level`` of its level if larger."""
    rng = float(s.max() - s.min()) if s.size else 0.0
    return max(rel_range * rng, rel_level * float(np.median(np.abs(s))))


def _threshold(s, noise, rel_range, noise_k, rel_level) -> float:
    return max(_floor(s, rel_range, rel_level), noise_k * noise)


# ----------------------------------------------------------------------------- segmentation

def _monotone_runs(s: np.ndarray) -> list[list[int]]:
    """Maximal monotone runs [start, end, direction] of s (flat steps join the run they are in)."""
    d = np.diff(s)
    signs = np.sign(d)
    nz = np.flatnonzero(signs)
    if nz.size == 0:
        return [[0, s.size - 1, 0]]
    # flat steps take the direction of the previous non-flat step (the next one at the start)
    cur = signs[nz[0]]
    for i in range(signs.size):
        if signs[i] == 0:
            signs[i] = cur
        cur = signs[i]
    runs = [[0, 1, int(signs[0])]]
    for i in range(1, signs.size):
        if signs[i] == runs[-1][2]:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, int(signs[i])])
    return runs


def _change_without_first(x, y, r, h, rel_range, rel_level) -> float:
    """Run r's net change on the curve smoothed with the first checkpoint's value replaced by the
    median of 3 at the second: the change without what the first checkpoint alone says."""
    y = y.copy()
    y[0] = _median3(y)[1]
    s = _smooth(x, y, h, rel_range, rel_level)[1]
    return float(abs(s[r[1]] - s[r[0]]))


def _simplify(runs: list[list[int]], s: np.ndarray, thr: float, min_points: int,
              keep_first_fall: bool = False) -> tuple[list[list[int]], list[list[int]]]:
    """Persistence simplification: merge the weakest insignificant or short run until none is left.

    A run is weak when its net change is below ``thr`` or it spans fewer than ``min_points``
    intervals; with ``keep_first_fall`` (the series starts at initialisation) a significant fall
    at the start — the warm-up collapse — is not weak however short it is. A weak end run joins
    its neighbour, unless it changes more than the neighbour (joining would reverse the
    neighbour's direction and so erase a significant run): it is then left out of every phase.
    Returns the runs and the end runs left out."""
    runs = [list(r) for r in runs]
    left_out: list[list[int]] = []

    def change(r):
        return abs(s[r[1]] - s[r[0]])

    def warmup(i, r):  # the fall from initialisation, or right after a smaller first rise
        if not keep_first_fall or r[2] >= 0:
            return False
        if i == 0:
            return r[0] == 0
        return i == 1 and runs[0][0] == 0 and runs[0][2] > 0 and change(r) > change(runs[0])

    def weak(i, r):
        if change(r) < thr:
            return True
        return r[1] - r[0] < min_points and not warmup(i, r)

    while len(runs) > 1:
        cands = [(change(r), i) for i, r in enumerate(runs) if weak(i, r)]
        if not cands:
            break
        _, i = min(cands)
        if i == 0 or i == len(runs) - 1:
            end, nb = (runs[0], runs[1]) if i == 0 else (runs[-1], runs[-2])
            lo, hi = (end[0], nb[1]) if i == 0 else (nb[0], end[1])
            if int(np.sign(s[hi] - s[lo])) not in (nb[2], 0):
                left_out.append(list(end))
            elif i == 0:
                nb[0] = end[0]
            else:
                nb[1] = end[1]
            del runs[i]
        else:
            left, right = runs[i - 1], runs[i + 1]
            merged = [left[0], right[1], left[2]]
            runs[i - 1: i + 2] = [merged]
        # re-derive each run's direction from its net change (a merge may flip a run)
        for r in runs:
            r[2] = int(np.sign(s[r[1]] - s[r[0]])) or r[2]
        # neighbours with the same direction join
        joined = [runs[0]]
        for r in runs[1:]:
            if r[2] == joined[-1][2]:
                joined[-1][1] = r[1]
            else:
                joined.append(r)
        runs = joined
    return runs, left_out


def _spike(j: int, kind: str, x, y, tol: float) -> bool:
    """Whether checkpoint j's raw value is a spike rather than an extreme: more extreme, by more
    than ``tol``, than both straight lines through the two checkpoints on either side predict
    there. (A sharp extreme, like the warm-up minimum, lies within what its sides point to.)"""
    if j < 2 or j > y.size - 3:
        return False
    left = y[j - 1] + (y[j - 1] - y[j - 2]) / (x[j - 1] - x[j - 2]) * (x[j] - x[j - 1])
    right = y[j + 1] + (y[j + 1] - y[j + 2]) / (x[j + 2] - x[j + 1]) * (x[j + 1] - x[j])
    if kind == "max":
        return bool(y[j] > max(left, right) + tol)
    return bool(y[j] < min(left, right) - tol)


def _place(b: int, kind: str, x, m, y, lo: int, hi: int, gap_lo: int = 1, gap_hi: int = 1,
           tol: float = 0.0) -> int:
    """Boundary between the runs lo..b and b..hi: the checkpoint with the extreme value anywhere
    in lo..hi, at least ``gap_lo`` intervals after lo and ``gap_hi`` before hi (so that every
    phase stays as long as simplification made it).

    Values ``m`` are the running median of 3, clipped by :func:`_robust_values`, so that a
    single outlying checkpoint is no extreme, nor a pair far from the true one. The median ties
    a sharp extreme with its larger neighbour, and a spike with its own; ties go to a checkpoint
    that is no spike (:func:`_spike`, beyond ``tol``), then to the raw value ``y``, then to the
    checkpoint nearest the smoothed extremum b."""
    first, last = lo + gap_lo, hi - gap_hi
    if first > last:  # no room: keep the smoothed extremum
        return b
    sign = 1.0 if kind == "max" else -1.0
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    tol = max(tol, 1e-9 * scale)

    def key(j):
        return sign * m[j], not _spike(j, kind, x, y, tol), sign * y[j], -abs(j - b)

    return max(range(first, last + 1), key=key)


def _as_array(name, v, n=None, allow_none=False):
    if v is None:
        if allow_none:
            return None
        raise ValueError(f"[detect_phases] {name} is required")
    a = np.asarray([np.nan if e is None else e for e in v], dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"[detect_phases] {name} must be 1-D, got shape {a.shape}")
    if n is not None and a.size != n:
        raise ValueError(f"[detect_phases] {name} has {a.size} values, expected {n} (one per step)")
    return a


def _agrees(direction: int, d_alpha: float | None, thr_alpha: float | None) -> bool | None:
    if d_alpha is None or thr_alpha is None or not math.isfinite(d_alpha) or abs(d_alpha) < thr_alpha:
        return None
    return bool(np.sign(d_alpha) == -direction)


def detect_phases(steps, rankme, alpha=None, *, tokens=None, bandwidth: float = 0.3,
                  min_points: int = 2, rel_range: float = 0.1, noise_k: float = 3.0,
                  rel_level: float | None = None, init_max_step: int = 0) -> PhaseResult:
    """Label the paper's pretraining phases along one RankMe (and α) trajectory.

    Args:
        steps: [n] training steps (any order; duplicates are averaged). ``None`` means an
            ordered post-training series: see :func:`detect_transitions`.
        rankme: [n] RankMe per checkpoint (NaN/None rows are dropped with a note).
        alpha: optional [n] α-ReQ per checkpoint (corroboration only).
        tokens: optional [n] tokens seen per checkpoint (reported at the boundaries).
        bandwidth: kernel smoother bandwidth in log(step + 1).
        min_points: fewest checkpoint intervals a phase may span; a significant warm-up
            collapse from initialisation is exempt (it may span one interval).
        rel_range, noise_k, rel_level: significance threshold (see the module docstring);
            ``rel_level`` None means :data:`PHASE_REL_LEVEL` (0.02) here and
            :data:`TRANSITION_REL_LEVEL` (0.01) for a post-training series (``steps=None``), the
            defaults of :func:`detect_transitions` and of ``geomfast phases``.
        init_max_step: a lone fall at the start counts as warm-up collapse only when the
            series starts at or before this step (initialisation).

    Returns a :class:`PhaseResult` (mode 'pretraining').
    """
    if rel_level is None:
        rel_level = TRANSITION_REL_LEVEL if steps is None else PHASE_REL_LEVEL
    for name, v, least, strict in (("bandwidth", bandwidth, 0, True), ("rel_range", rel_range, 0, False),
                                   ("noise_k", noise_k, 0, False), ("min_points", min_points, 1, False),
                                   ("rel_level", rel_level, 0, False)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and (v > least if strict else v >= least)):
            raise ValueError(f"[detect_phases] {name} must be a finite number {'>' if strict else '>='} {least}, "
                             f"got {v!r}")
    if steps is None:
        return detect_transitions(rankme, alpha, rel_level=rel_level)
    steps_a = _as_array("steps", steps)
    n0 = steps_a.size
    r = _as_array("rankme", rankme, n0)
    a = _as_array("alpha", alpha, n0, allow_none=True)
    t = _as_array("tokens", tokens, n0, allow_none=True)
    notes: list[str] = []
    keep = np.isfinite(steps_a) & np.isfinite(r)
    if (~keep).any():
        notes.append(f"{int((~keep).sum())} checkpoint(s) without a step or RankMe were left out")
    if (steps_a[keep] < 0).any():
        raise ValueError("[detect_phases] steps must be >= 0")
    steps_a, r = steps_a[keep], r[keep]
    a = a[keep] if a is not None else None
    t = t[keep] if t is not None else None
    # sort and average duplicate steps
    uniq, inv = np.unique(steps_a, return_inverse=True)
    if uniq.size < steps_a.size:
        notes.append(f"{steps_a.size - uniq.size} duplicate step(s) averaged")

    def avg(v):
        if v is None:
            return None
        out = np.full(uniq.size, np.nan)
        for i in range(uniq.size):
            vals = v[inv == i]
            vals = vals[np.isfinite(vals)]
            out[i] = vals.mean() if vals.size else np.nan
        return out

    r, a, t = avg(r), avg(a), avg(t)
    steps_a = uniq
    n = steps_a.size
    res = PhaseResult(mode="pretraining", n_points=n, notes=notes)
    if n < min_points + 1 or n < 3:
        res.notes.append(f"too few checkpoints ({n}) to detect phases (need at least {max(3, min_points + 1)})")
        return res
    x = np.log1p(steps_a)
    m, s = _smooth(x, r, bandwidth, rel_range, rel_level)
    noise = _noise(r, s)
    thr = _threshold(s, noise, rel_range, noise_k, rel_level)
    res.noise, res.threshold = noise, thr
    at_init = bool(steps_a[0] <= init_max_step)
    runs, left_out = _simplify(_monotone_runs(s), s, thr, min_points, keep_first_fall=at_init)
    runs = [rr for rr in runs if rr[2] != 0]
    for lo_, hi_, _ in left_out:
        res.notes.append(
            f"RankMe {'rises' if s[hi_] > s[lo_] else 'falls'} from {r[lo_]:.3g} to {r[hi_]:.3g} between "
            f"steps {int(steps_a[lo_])} and {int(steps_a[hi_])} ({hi_ - lo_} checkpoint interval"
            f"{'' if hi_ - lo_ == 1 else 's'}, fewer than min_points = {min_points}) at the "
            f"{'start' if lo_ == 0 else 'end'} of the series: left out of the phases (merging it "
            "would reverse the next phase)")
    first_alone = False  # the first checkpoint alone makes the only run significant
    if len(runs) == 1 and abs(s[runs[0][1]] - s[runs[0][0]]) >= thr:
        # the only run must be significant without what an unfiltered first checkpoint alone
        # says, unless it is the warm-up collapse (a fall from initialisation)
        if (not _end_filtered(x, bandwidth, 0) and not (at_init and runs[0][2] < 0)
                and _change_without_first(x, r, runs[0], bandwidth, rel_range, rel_level) < thr):
            first_alone, runs = True, []
    elif len(runs) == 1:
        runs = []
    if not runs:
        if first_alone:
            res.notes.append(f"RankMe changes significantly only at the first checkpoint (step "
                             f"{int(steps_a[0])}, {r[0]:.3g}), which no filter can check against its "
                             "neighbours: no phase")
        else:
            res.notes.append(f"RankMe changes by less than the significance threshold ({thr:.3g}): no phase")
        return res

    # boundaries go on robust values: a checkpoint may exceed the smoothed curve and its local
    # median by one noise sigma, or by the smallest change that is significant whatever the
    # noise if that is larger (on a clean curve, sigma ~ 0, that floor alone decides)
    k = max(noise, _floor(s, rel_range, rel_level))
    v = _robust_values(x, r, m, s, bandwidth, k) if k > 0 else m

    # A brief rise right after initialisation, undone by a larger fall that a rise follows, is
    # part of the warm-up period: merge it into the collapse (noted below).
    early_rise = None
    if (len(runs) >= 3 and at_init and runs[0][0] == 0 and runs[0][2] > 0 and runs[1][2] < 0
            and abs(s[runs[1][1]] - s[runs[1][0]]) > abs(s[runs[0][1]] - s[runs[0][0]])):
        peak = _place(runs[0][1], "max", x, v, r, runs[0][0], runs[1][1], tol=thr)
        early_rise = (int(steps_a[peak]), float(r[peak]))
        runs = [[runs[0][0], runs[1][1], -1]] + runs[2:]

    # boundaries: the extreme checkpoint (median-filtered, then raw value) between the
    # neighbouring boundaries; the warm-up collapse may keep a single interval
    cut = [runs[0][0]] + [rr[1] for rr in runs[:-1]] + [runs[-1][1]]
    warmup_first = at_init and cut[0] == 0 and runs[0][2] < 0
    for i in range(1, len(cut) - 1):
        kind = "max" if runs[i - 1][2] > 0 else "min"
        gap_lo = 1 if (i == 1 and warmup_first) else min_points
        cut[i] = _place(cut[i], kind, x, v, r, cut[i - 1], cut[i + 1], gap_lo, min_points,
                        tol=thr)

    a_ok = a is not None and np.isfinite(a).sum() >= 3
    if a_ok:
        fin = np.isfinite(a)
        a_f = np.interp(x, x[fin], a[fin])
        am, a_s = _smooth(x, a_f, bandwidth, rel_range, rel_level)
        thr_a = _threshold(a_s, _noise(a_f, a_s), rel_range, noise_k, rel_level)
    elif a is not None:
        res.notes.append("fewer than 3 α values: α not used")

    def tok(i):
        return None if t is None or not np.isfinite(t[i]) else int(t[i])

    for i, rr in enumerate(runs):
        i0, i1, direction = cut[i], cut[i + 1], rr[2]
        note = None
        if direction > 0:
            kind = "entropy_seeking"
            if any(p.kind == "entropy_seeking" for p in res.phases):
                note = "a second rise of RankMe"
        elif i == 0:
            if len(runs) > 1:
                kind = "warmup_collapse"
                if early_rise is not None:
                    note = (f"RankMe first rose briefly (to {early_rise[1]:.3g} at step {early_rise[0]}) "
                            "before collapsing; counted in the warm-up period")
            elif steps_a[0] <= init_max_step:
                kind = "warmup_collapse"
                note = "RankMe only falls; labelled warm-up collapse as the series starts at initialisation"
            else:
                kind = "compression_seeking"
                note = (f"RankMe only falls and the series starts at step {int(steps_a[0])}: "
                        "labelled compression-seeking (no rise was observed before it)")
        else:
            kind = "compression_seeking"
        # reported: the (interpolated) raw α at the boundaries; judged: the smoothed change
        a0 = float(a_f[i0]) if a_ok else None
        a1 = float(a_f[i1]) if a_ok else None
        agrees = _agrees(direction, float(a_s[i1] - a_s[i0]) if a_ok else None, thr_a if a_ok else None)
        res.phases.append(Phase(
            kind=kind, start_step=int(steps_a[i0]), end_step=int(steps_a[i1]),
            start_tokens=tok(i0), end_tokens=tok(i1), start_index=int(i0), end_index=int(i1),
            rankme_start=float(r[i0]), rankme_end=float(r[i1]), alpha_start=a0, alpha_end=a1,
            alpha_agrees=agrees, note=note))
    for p, q in zip(res.phases[:-1], res.phases[1:]):
        res.boundaries.append({"step": p.end_step, "tokens": p.end_tokens, "from": p.kind, "to": q.kind})
    return res


def detect_transitions(rankme, alpha=None, *, labels: Sequence[str] | None = None,
                       rel_level: float | None = None) -> PhaseResult:
    """Label each transition of an ordered post-training series (base → SFT → DPO → RLVR …).

    ``rankme`` / ``alpha``: one value per checkpoint, in series order; ``labels``: checkpoint names.
    A transition is ``entropy_seeking`` when RankMe rises, ``compression_seeking`` when it falls;
    when RankMe moves by less than ``rel_level`` of its level, α decides (α down = entropy-seeking);
    when neither moves, ``unchanged``. ``rel_level`` None means :data:`TRANSITION_REL_LEVEL`
    (0.01), the default of every entry point (``detect_phases(None, …)``, ``geomfast phases``)."""
    if rel_level is None:
        rel_level = TRANSITION_REL_LEVEL
    if not (isinstance(rel_level, (int, float)) and math.isfinite(rel_level) and rel_level >= 0):
        raise ValueError(f"[detect_transitions] rel_level must be a finite number >= 0, got {rel_level!r}")
    r = _as_array("rankme", rankme)
    n = r.size
    a = _as_array("alpha", alpha, n, allow_none=True)
    labels = [str(v) for v in labels] if labels is not None else [str(i) for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"[detect_transitions] {len(labels)} labels for {n} checkpoints")
    res = PhaseResult(mode="post_training", n_points=n)
    if n < 2:
        res.notes.append(f"a series needs at least 2 checkpoints, got {n}")
        return res
    for i in range(n - 1):
        r0, r1 = r[i], r[i + 1]
        a0 = None if a is None or not np.isfinite(a[i]) else float(a[i])
        a1 = None if a is None or not np.isfinite(a[i + 1]) else float(a[i + 1])
        if not (np.isfinite(r0) and np.isfinite(r1)):
            res.notes.append(f"transition {labels[i]} -> {labels[i + 1]}: RankMe missing, skipped")
            continue
        dr = r1 - r0
        da = None if a0 is None or a1 is None else a1 - a0
        thr_a = None if da is None else rel_level * max(abs(a0), abs(a1), 1e-12)
        if abs(dr) >= rel_level * max(abs(r0), abs(r1), 1e-12):
            direction = int(np.sign(dr))
        elif da is not None and abs(da) >= thr_a:
            direction = -int(np.sign(da))
        else:
            direction = 0
        kind = {1: "entropy_seeking", -1: "compression_seeking", 0: "unchanged"}[direction]
        agrees = _agrees(direction, da, thr_a) if direction else None
        res.transitions.append(Transition(kind=kind, start=labels[i], end=labels[i + 1], start_index=i,
                                          end_index=i + 1, rankme_start=float(r0), rankme_end=float(r1),
                                          alpha_start=a0, alpha_end=a1, alpha_agrees=agrees))
    return res


# ----------------------------------------------------------------------------- store

def _groups(rows: Sequence[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("status", "ok") != "ok":
            continue
        key = (row["model"], row["layer"], row["pooling"], row.get("options_hash"))
        groups.setdefault(key, []).append(row)
    return groups


def phases_from_rows(rows: Sequence[dict], *, metric: str = "rankme", **options) -> list[PhaseResult]:
    """:func:`detect_phases` (or :func:`detect_transitions`) for every model × layer × pooling
    (× options hash) group of result rows (dicts with model, layer, pooling, step, tokens, ord,
    revision and the metric columns)."""
    out = []
    for (model, layer, pooling, h), g in sorted(_groups(rows).items(), key=lambda kv: tuple(map(str, kv[0]))):
        with_step = [row for row in g if row.get("step") is not None]
        if with_step:
            res = detect_phases([row["step"] for row in with_step], [row.get(metric) for row in with_step],
                                [row.get("alpha") for row in with_step],
                                tokens=[row.get("tokens") for row in with_step], **options)
            if len(with_step) < len(g):
                res.notes.append(f"{len(g) - len(with_step)} checkpoint(s) without a step left out")
        else:
            g = sorted(g, key=lambda row: (row.get("ord") is None, row.get("ord") or 0))
            keep = {k: v for k, v in options.items() if k == "rel_level"}
            res = detect_transitions([row.get(metric) for row in g], [row.get("alpha") for row in g],
                                     labels=[row.get("revision") or str(row.get("ord")) for row in g], **keep)
        res.model, res.layer, res.pooling, res.options_hash = model, layer, pooling, h
        out.append(res)
    _describe_option_sets(out, rows)
    return out


def _describe_option_sets(results: list[PhaseResult], rows: Sequence[dict]) -> None:
    """Fill ``options_differ`` of results whose series was traced under several option sets: the
    options whose values differ between those sets (from the rows' stored options), and the hash."""
    import json

    opts: dict = {}
    for row in rows:
        h = row.get("options_hash")
        if h not in opts and row.get("options"):
            try:
                opts[h] = json.loads(row["options"])
            except ValueError:
                opts[h] = {}
    by_series: dict[tuple, list[PhaseResult]] = {}
    for res in results:
        by_series.setdefault((res.model, res.layer, res.pooling), []).append(res)
    for group in by_series.values():
        if len(group) < 2:
            continue
        sets = [opts.get(res.options_hash) or {} for res in group]
        keys = sorted({k for o in sets for k in o})
        differ = [k for k in keys if len({json.dumps(o.get(k), sort_keys=True) for o in sets}) > 1]
        for res, o in zip(group, sets):
            what = ", ".join(f"{k}={json.dumps(o.get(k))}" for k in differ)
            res.options_differ = f"options {str(res.options_hash)[:8]}" + (f": {what}" if what else "")


def phases_from_store(db, *, model: str | None = None, layer: str | None = None,
                      pooling: str | None = None, options_hash: str | None = None,
                      metric: str = "rankme", **options) -> list[PhaseResult]:
    """Phases of every model × layer × pooling (× option set) in a results database (path or
    ResultStore). ``options_hash``: only the rows of this option set (a prefix of its hash is
    enough). ``metric`` picks the RankMe column (rankme, rankme_full, rankme_garrido2023);
    ``options`` go to :func:`detect_phases`."""
    from .store import ResultStore, filter_rows, model_key

    store = db if isinstance(db, ResultStore) else ResultStore(db, readonly=True)
    try:
        rows = store.rows(status="ok")
    finally:
        if store is not db:
            store.close()
    rows = filter_rows(rows, model=model_key(model), layer=layer, pooling=pooling,
                       options_hash=options_hash, func="phases")
    return phases_from_rows(rows, metric=metric, **options)


# ----------------------------------------------------------------------------- output

def _num(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def format_phases(results: Sequence[PhaseResult]) -> str:
    """A terminal table per trajectory, with absent phases and notes."""
    from .cli import format_table

    blocks = []
    for res in results:
        head = " ".join(v for v in (res.model, res.layer and f"layer {res.layer}",
                                     res.pooling and f"{res.pooling} pooling") if v) or "trajectory"
        if res.options_differ:
            head += f"  [{res.options_differ}]"
        if res.mode == "pretraining":
            head += f"  ({res.n_points} checkpoint{'' if res.n_points == 1 else 's'}"
            head += f", threshold {res.threshold:.3g})" if res.threshold is not None else ")"
            rows = [{"phase": p.kind, "from step": p.start_step, "to step": p.end_step,
                     "from tokens": p.start_tokens, "to tokens": p.end_tokens,
                     "RankMe": f"{p.rankme_start:.2f} -> {p.rankme_end:.2f}",
                     "alpha": (f"{p.alpha_start:.2f} -> {p.alpha_end:.2f}"
                               if p.alpha_start is not None else "-"),
                     "alpha agrees": {True: "yes", False: "NO", None: "-"}[p.alpha_agrees]}
                    for p in res.phases]
            cols = ["phase", "from step", "to step"]
            if any(p.start_tokens is not None for p in res.phases):
                cols += ["from tokens", "to tokens"]
            cols += ["RankMe", "alpha", "alpha agrees"]
            lines = [head]
            if rows:
                lines.append(format_table(rows, cols))
            absent = res.absent
            lines.append("absent: " + (", ".join(absent) if absent else "none"))
            lines += [f"note: {p.kind}: {p.note}" for p in res.phases if p.note]
        else:
            head += f"  (post-training series, {res.n_points} checkpoint{'' if res.n_points == 1 else 's'})"
            rows = [{"transition": f"{tr.start} -> {tr.end}", "label": tr.kind,
                     "RankMe": f"{tr.rankme_start:.2f} -> {tr.rankme_end:.2f}",
                     "alpha": (f"{tr.alpha_start:.2f} -> {tr.alpha_end:.2f}"
                               if tr.alpha_start is not None and tr.alpha_end is not None else "-"),
                     "alpha agrees": {True: "yes", False: "NO", None: "-"}[tr.alpha_agrees]}
                    for tr in res.transitions]
            lines = [head]
            if rows:
                lines.append(format_table(rows, ["transition", "label", "RankMe", "alpha", "alpha agrees"]))
        lines += [f"note: {n}" for n in res.notes]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def shade_phases(axes, result: PhaseResult, *, x_of=None, label_prefix: str = "") -> None:
    """Shade each phase (or post-training transition) of ``result`` as a vertical band on every
    matplotlib axis in ``axes``. ``x_of(index)`` maps a checkpoint index to the plot's x (default:
    the phase's steps, or the series position for transitions)."""
    spans = []
    if result.mode == "pretraining":
        for p in result.phases:
            spans.append((p.start_step, p.end_step, p.kind))
    else:
        for tr in result.transitions:
            lo, hi = (tr.start_index, tr.end_index) if x_of is None else (x_of(tr.start_index), x_of(tr.end_index))
            spans.append((lo, hi, tr.kind))
    labelled = set()
    for ax in axes:
        for lo, hi, kind in spans:
            if kind == "unchanged":
                continue
            name = label_prefix + kind.replace("_", " ")
            ax.axvspan(lo, hi, color=PHASE_COLORS.get(kind, "#dddddd"), alpha=0.15, linewidth=0,
                       zorder=0, label=None if (ax is not axes[0] or kind in labelled) else name)
            if ax is axes[0]:
                labelled.add(kind)


# ----------------------------------------------------------------------------- CLI

# The database first: typed in this order, nothing is ambiguous (argparse lists it last).
_USAGE = "%(prog)s [-h] RESULTS.db [--json [FILE]] [--model M] [--layer L] [--pooling P] [options]"


def _add_arguments(p) -> None:
    p.usage = _USAGE
    # nargs='?': '--json' takes an optional FILE, so that `phases --json RESULTS.db` reads the
    # database as that FILE; _prepare gives it back to RESULTS.db
    p.add_argument("db", metavar="RESULTS.db", nargs="?", help="the results database")
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--layer", default=None, help="only this layer (e.g. last)")
    p.add_argument("--pooling", default=None, help="only this pooling")
    p.add_argument("--options", dest="options_hash", default=None, metavar="HASH",
                   help="only the rows of this option set (its options hash, or a prefix of it; "
                        "shown in the header when a series was traced under several)")
    p.add_argument("--metric", default="rankme", choices=["rankme", "rankme_full", "rankme_garrido2023"],
                   help="which RankMe column drives the segmentation (default rankme, li2025)")
    p.add_argument("--bandwidth", type=float, default=0.3, help="smoother bandwidth in log(step+1)")
    p.add_argument("--min-points", type=int, default=2,
                   help="fewest checkpoint intervals per phase (a warm-up collapse from step 0 may span one)")
    p.add_argument("--rel-range", type=float, default=0.1,
                   help="significant change as a fraction of the trajectory's range")
    p.add_argument("--noise-k", type=float, default=3.0, help="significant change in noise sigmas")
    p.add_argument("--json", dest="json_out", nargs="?", const="-", default=None, metavar="FILE",
                   help="JSON on stdout, or written to FILE (the table then goes to stdout). "
                        "`--json RESULTS.db` with no other database prints that database's JSON; "
                        "an SQLite database is never overwritten as FILE")


def _prepare(parser, args) -> None:
    """`geomfast phases --json RESULTS.db`: the one path given is the database (JSON on stdout),
    not a JSON file for a database never named. A FILE that is an SQLite database is refused:
    it was meant as the database (`--json a.db b.db`), and JSON written there destroys it."""
    from ._paths import is_sqlite_file, same_file

    if args.db is None:
        if args.json_out in (None, "-"):
            parser.error("the following arguments are required: RESULTS.db")
        if not is_sqlite_file(args.json_out):  # `--json=out.json` alone: a FILE, no database
            parser.error(f"the following arguments are required: RESULTS.db (--json {args.json_out} "
                         f"is not an SQLite database to read; it names where the JSON goes)")
        args.db, args.json_out = args.json_out, "-"
    elif (args.json_out not in (None, "-") and not same_file(args.json_out, args.db)
          and is_sqlite_file(args.json_out)):  # (the database itself: cli.check_paths says so)
        parser.error(f"--json {args.json_out}: this is an SQLite database, not a JSON file to write; "
                     f"refusing to overwrite it. geomfast phases reads one database: "
                     f"`geomfast phases {args.db} --json` prints its JSON, "
                     f"`geomfast phases {args.db} --json=FILE` writes it to FILE")


def _run(args) -> int:
    results = phases_from_store(args.db, model=args.model, layer=args.layer, pooling=args.pooling,
                                options_hash=args.options_hash, metric=args.metric, bandwidth=args.bandwidth, min_points=args.min_points,
                                rel_range=args.rel_range, noise_k=args.noise_k)
    if not results:
        if args.json_out == "-":
            print("[]")
        else:
            print(f"{args.db}: no successful results")
        return 0
    if args.json_out is not None:
        text = json.dumps([r.to_dict() for r in results], indent=1)
        if args.json_out == "-":
            print(text)
            return 0
        from ._paths import write_file

        write_file(args.json_out, (text + "\n").encode())
    print(format_phases(results))
    if args.json_out not in (None, "-"):
        print(f"\nJSON written to {args.json_out}")
    return 0


def register_cli(register) -> None:
    from .cli import PathArg

    register("phases", "label warm-up collapse, entropy- and compression-seeking phases in a results "
             "database", _add_arguments, _run, prepare=_prepare,
             paths=(PathArg("db", "RESULTS.db", "input"), PathArg("json_out", "--json", "file")))

