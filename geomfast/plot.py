"""Plots of a results database: RankMe and α-ReQ against training step.

matplotlib runs on the Agg backend (no display needed). Steps are drawn on a symmetric-log
axis (linear between 0 and 1, logarithmic above), so step 0 — the initialisation — sits at
the left edge instead of disappearing from a log axis.
"""
from __future__ import annotations

import io
import os
from collections import defaultdict
from typing import Sequence

__all__ = ["plot_results", "plot_spectra", "reference_series", "series", "spread_checkpoints"]


def series(rows: Sequence[dict], *, x: str = "step") -> dict[tuple[str, str, str, str], list[dict]]:
    """Group ok rows by (model, layer, pooling, options hash): runs with other options (sample
    count, dataset, precision …) are other lines, not one zig-zag; each group sorted along ``x``
    (step, falling back to the checkpoint order where the step is unknown)."""
    groups: dict[tuple[str, str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("status", "ok") != "ok":
            continue
        groups[(r["model"], r["layer"], r["pooling"], str(r.get("options_hash") or ""))].append(r)
    for g in groups.values():
        g.sort(key=lambda r: (r.get(x) if r.get(x) is not None else float("inf"), r.get("ord") or 0))
    return dict(groups)


def _compact(v: float) -> str:
    """Tick label for a step: 0, 8, 512, 2k, 143k, 1.5M."""
    if v < 0:
        return ""
    v = int(round(v))
    if v < 1000:
        return str(v)
    if v < 1_000_000:
        return f"{v / 1000:g}k"
    return f"{v / 1_000_000:g}M"


def _layer_sort_key(layer: str):
    # embed first, then blocks in order (block0, block1, …), then 'last' and other names.
    if layer == "embed":
        return (0, 0, layer)
    digits = layer[5:] if layer.startswith("block") else layer
    try:
        return (1, int(digits), layer)
    except ValueError:
        return (2, 0, layer)


def _series_label(layer: str, pooling: str | None = None) -> str:
    label = ("final layer (after norm)" if layer == "last" else
             "embeddings" if layer == "embed" else f"{layer} output" if layer.startswith("block")
             else f"layer {layer}")
    return label if pooling is None else f"{label}, {pooling} pooling"


# The paper's representation (METRICS.md): the final layer after the final norm, last token —
# also what `geomfast trace` records by default. Other poolings of the final layer come next.
_REFERENCE_POOLINGS = ("last", "mean", "all")


def reference_series(keys: Sequence[tuple[str, str, str, str]]) -> tuple[str, str, str, str] | None:
    """The series (model, layer, pooling, options hash) of ``keys`` whose phases a plot shades:
    the only one when there is one; else the first model's final layer with last-token pooling,
    the paper's series (``geomfast phases --layer last --pooling last``); else that model's final
    layer with mean, then all-token, then any pooling; else its first series."""
    keys = sorted(keys, key=lambda k: (k[0], _layer_sort_key(k[1]), k[2], k[3]))
    if not keys:
        return None
    first = [k for k in keys if k[0] == keys[0][0]]
    rank = {p: i for i, p in enumerate(_REFERENCE_POOLINGS)}
    final = sorted((k for k in first if k[1] == "last"), key=lambda k: rank.get(k[2], len(rank)))
    return final[0] if final else first[0]


def plot_results(
    db,
    out: str | os.PathLike,
    *,
    metrics: Sequence[str] = ("rankme", "alpha"),
    model: str | None = None,
    layer: str | None = None,
    pooling: str | None = None,
    options_hash: str | None = None,
    title: str | None = None,
    dpi: int = 120,
    phases: bool = True,
) -> str:
    """Draw one panel per metric (default RankMe and α) against step, one line per
    model × layer × pooling, and save a PNG to ``out``. ``db`` is a path or a ResultStore.
    ``model``, ``layer``, ``pooling``, ``options_hash`` (or a prefix of it): plot only those rows
    (as ``geomfast phases`` selects them).
    ``phases``: shade the phases of one series (:func:`reference_series`: the only one plotted,
    else the paper's final layer, last token), named above the first panel."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from ._paths import check_output_file
    from .store import ResultStore

    check_output_file(out, "out", [("db", db.path if isinstance(db, ResultStore) else db)])
    ext = _image_format(out, "plot_results")
    store = db if isinstance(db, ResultStore) else ResultStore(db, readonly=True)
    try:
        rows = _selected_rows(store, "plot_results", model=model, layer=layer, pooling=pooling,
                              options_hash=options_hash)
    finally:
        if store is not db:
            store.close()
    from .store import METRIC_COLUMNS

    known = (*METRIC_COLUMNS, "n", "dim")
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise ValueError(f"[plot_results] unknown metric(s) {', '.join(map(repr, unknown))}: expected result "
                         f"columns among {', '.join(known)}")

    # With no steps at all (a post-training series of model ids) use the checkpoint order.
    use_step = any(r.get("step") is not None for r in rows)
    x_key = "step" if use_step else "ord"
    groups = series(rows, x=x_key)
    models = sorted({k[0] for k in groups})
    labels = {
        "rankme": "RankMe (li2025: top-2048 covariance, ε=1e-7)",
        "rankme_full": "RankMe (full covariance spectrum)",
        "rankme_garrido2023": "RankMe (garrido2023: raw singular values)",
        "alpha": "α-ReQ (power-law decay exponent)",
        "alpha_r2": "R² of the α fit",
    }

    fig, axes = plt.subplots(len(metrics), 1, figsize=(9, 3.6 * len(metrics)), sharex=True,
                             squeeze=False)
    axes = axes[:, 0]
    keys = sorted(groups, key=lambda k: (k[0], _layer_sort_key(k[1]), k[2], k[3]))
    poolings = {k[2] for k in keys}
    several_options = len({k[3] for k in keys}) > 1
    cmap = plt.get_cmap("tab10")
    styles = ("-", "--", ":", "-.")
    for i, key in enumerate(keys):
        m, layer, pooling, opts = key
        g = groups[key]
        xs = [r[x_key] if r[x_key] is not None else j for j, r in enumerate(g)]
        label = _series_label(layer, pooling if len(poolings) > 1 else None)
        if len(models) > 1:
            label = f"{m}: {label}"
        if several_options:
            label += f" [options {opts[:8]}]"
        for ax, metric in zip(axes, metrics):
            ys = [r.get(metric) for r in g]
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3.5,
                    linewidth=1.6, color=cmap(i % 10), linestyle=styles[(i // 10) % len(styles)], label=label)
    for ax, metric in zip(axes, metrics):
        ax.set_ylabel(labels.get(metric, metric), fontsize=9)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
    if use_step:
        from matplotlib.ticker import FixedLocator, FuncFormatter, SymmetricalLogLocator

        ax = axes[-1]
        ax.set_xscale("symlog", linthresh=1, linscale=0.5)
        steps = sorted({r["step"] for r in rows if r.get("step") is not None})
        ax.set_xlim(left=0, right=max(steps[-1] * 1.15, 1.5))
        if len(steps) <= 12:
            ax.xaxis.set_major_locator(FixedLocator(steps))
        else:
            subs = [1.0, 3.0] if steps[-1] > 1e4 else [1.0, 2.0, 5.0]
            ax.xaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=1, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _compact(v)))
        ax.set_xlabel("training step (log scale; step 0 at the left edge, linear between 0 and 1)")
    else:
        axes[-1].set_xlabel("checkpoint (order in the series)")
        names = {}
        for g in groups.values():
            for r in g:
                names[r["ord"]] = r["revision"] if r["revision"] not in ("main", "") else r["model"]
        ticks = sorted(k for k in names if k is not None)
        axes[-1].set_xticks(ticks)
        axes[-1].set_xticklabels([names[t].split("/")[-1] for t in ticks], rotation=20, fontsize=8)
    if phases:
        ref = reference_series(keys)
        shaded = _shade_phases(axes, groups, ref, x_key) if ref is not None else None
        if shaded is not None:  # say which series the bands belong to
            what = _series_label(ref[1], ref[2])
            if len(models) > 1:
                what = f"{ref[0]}: {what}"
            if several_options:
                what += f" [options {ref[3][:8]}]"
            axes[0].set_title(f"shaded: phases of {what}" if shaded else f"no phase found in {what}",
                              fontsize=9, loc="left")
    axes[0].legend(fontsize=8, loc="best", ncol=2 if len(keys) > 6 else 1)
    if title is None:
        title = ", ".join(models) if len(models) <= 3 else f"{len(models)} models"
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, out, ext, dpi)


def _selected_rows(store, func: str, **filters) -> list[dict]:
    """The ok rows of the open ``store`` that ``filters`` (model, layer, pooling, options_hash)
    keep, as ``geomfast phases`` selects them; ValueError when there are none at all."""
    from .store import filter_rows, model_key

    rows = store.rows(status="ok")
    if not rows:
        raise ValueError(f"[{func}] no successful results in {store.path!r}")
    return filter_rows(rows, **{**filters, "model": model_key(filters.get("model"))}, func=func)


def _image_format(out, func: str) -> str:
    """The image format of ``out``: its extension's, '' (PNG) without one; checked before anything
    is drawn. The file is written at ``out`` exactly (savefig(path) would add '.png' to a bare
    name)."""
    ext = os.path.splitext(os.fspath(out))[1][1:].lower()
    if ext:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        supported = FigureCanvasAgg.get_supported_filetypes()
        if ext not in supported:
            raise ValueError(f"[{func}] out {os.fspath(out)!r}: cannot write '.{ext}' files; expected "
                             f"one of {', '.join('.' + e for e in sorted(supported))} (or no extension: PNG)")
    return ext


def _save(fig, out, ext: str, dpi: int) -> str:
    import matplotlib.pyplot as plt

    out = os.fspath(out)
    try:
        # Render in memory, then write the file ourselves: savefig(path) lets a failed write
        # (a full disk: ENOSPC) pass silently, leaving a truncated file and a claim of success.
        buf = io.BytesIO()
        fig.savefig(buf, dpi=dpi, format=ext or "png")
    finally:
        plt.close(fig)
    from ._paths import write_file

    write_file(out, buf.getvalue())
    return out


# ----------------------------------------------------------------------------- eigenspectra

def spread_checkpoints(rows: Sequence[dict], k: int) -> list[dict]:
    """Up to ``k`` rows of one series (sorted along training), spread evenly over its positions:
    the first and the last always, the others between (on the usual log-spaced checkpoint
    schedules, evenly in log-step)."""
    import numpy as np

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"[plot_spectra] checkpoints must be a positive int, got {k!r}")
    if len(rows) <= k:
        return list(rows)
    if k == 1:
        return [rows[-1]]
    picks = np.unique(np.round(np.linspace(0, len(rows) - 1, k)).astype(int))
    return [rows[i] for i in picks]


def _fit_range_of(row: dict) -> tuple[int, int] | None:
    import json

    try:
        fr = json.loads(row.get("options") or "{}").get("fit_range")
        return (int(fr[0]), int(fr[1])) if fr else None
    except (ValueError, TypeError, AttributeError, IndexError):
        return None


def plot_spectra(
    db,
    out: str | os.PathLike,
    *,
    model: str | None = None,
    layer: str | None = None,
    pooling: str | None = None,
    options_hash: str | None = None,
    checkpoints: int = 8,
    title: str | None = None,
    dpi: int = 120,
) -> str:
    """The stored covariance eigenspectra of one series across training, log-log: each
    eigenvalue as a fraction of the total variance against its rank (1-based), one curve per
    checkpoint (up to ``checkpoints`` of them, spread over training, coloured from early to
    late), with the α-ReQ fit range shaded and each curve's α and RankMe in the legend — the
    picture behind α-ReQ (a steeper decay: a larger α). The series is the only one left by the
    filters, else the paper's (:func:`reference_series`: final layer, last token), named in the
    title. Saves to ``out`` (format from its extension, PNG without one)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    from ._paths import check_output_file
    from .store import ResultStore

    check_output_file(out, "out", [("db", db.path if isinstance(db, ResultStore) else db)])
    ext = _image_format(out, "plot_spectra")
    store = db if isinstance(db, ResultStore) else ResultStore(db, readonly=True)
    try:
        rows = _selected_rows(store, "plot_spectra", model=model, layer=layer, pooling=pooling,
                              options_hash=options_hash)
        use_step = any(r.get("step") is not None for r in rows)
        groups = series(rows, x="step" if use_step else "ord")
        ref = reference_series(list(groups))
        picked = spread_checkpoints(groups[ref], checkpoints)
        curves = [(r, store.spectrum(r["id"], "covariance")) for r in picked]
    finally:
        if store is not db:
            store.close()
    curves = [(r, np.asarray(s, dtype=np.float64)) for r, s in curves if s is not None and len(s)]
    if not curves:
        raise ValueError(f"[plot_spectra] no stored covariance spectrum for {ref[0]}, {ref[1]}, {ref[2]} pooling "
                         "(rows written before spectra were stored: re-trace them)")

    fig, ax = plt.subplots(figsize=(8, 5.5))
    cmap = plt.get_cmap("viridis")
    for j, (r, s) in enumerate(curves):
        keep = s > 0
        if not keep.any():
            continue
        total = float(np.sum(s[keep]))
        ranks = np.arange(1, len(s) + 1)[keep]
        when = f"step {r['step']:,}" if r.get("step") is not None else str(r["revision"])
        stats = ", ".join(f"{name} {r[key]:.{prec}f}" for name, key, prec in
                          (("α", "alpha", 2), ("RankMe", "rankme", 1)) if r.get(key) is not None)
        ax.loglog(ranks, s[keep] / total, color=cmap(j / max(len(curves) - 1, 1)), linewidth=1.4,
                  label=f"{when}" + (f" ({stats})" if stats else ""))
    fr = _fit_range_of(curves[-1][0])
    if fr is not None:
        ax.axvspan(fr[0] + 1, fr[1], color="0.5", alpha=0.12, label=f"α fit: ranks {fr[0] + 1}–{fr[1]}")
    ax.set_xlabel("eigenvalue rank (1 = largest)")
    ax.set_ylabel("fraction of the total variance")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(fontsize=8, loc="lower left")
    what = f"{ref[0]}: {_series_label(ref[1], ref[2])}"
    if len({k[3] for k in groups}) > 1:
        what += f" [options {ref[3][:8]}]"
    ax.set_title(title or f"covariance eigenspectra across training — {what}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, ext, dpi)


# ----------------------------------------------------------------------------- phase shading

def _shade_phases(axes, groups, ref, x_key: str) -> bool | None:
    """Shade the phases :mod:`geomfast.phases` finds in the series ``ref`` (see
    :func:`reference_series`). Returns whether it found any, None when the phases module is
    absent."""
    try:
        from .phases import phases_from_rows, shade_phases
    except ImportError:  # pragma: no cover
        return None
    rows = groups[ref]
    results = phases_from_rows(rows)
    if not results:
        return False
    xs = [r[x_key] if r.get(x_key) is not None else j for j, r in enumerate(rows)]
    shade_phases(list(axes), results[0], x_of=None if x_key == "step" else (lambda i: xs[i]),
                 label_prefix="phase: ")
    return bool(results[0].phases or any(t.kind != "unchanged" for t in results[0].transitions))
