"""Chapter 05's figures, tables and explorers: activation ranges, time, the calibration grid.

* :func:`plot_activation_ranges`: histograms of captured activations with each observer's range
  (:mod:`quantbook.explore_static` computes them).
* :func:`plot_time_breakdown`: where a forward pass spends its milliseconds
  (:func:`quantbook.profiling.time_breakdown` measures them).
* :func:`quality_table`: quality records side by side, as a result table.
* :func:`plot_calibration_sweep`, :func:`point_figure`, :func:`explorer` and
  :func:`static_explorer`: the calibration grid of :mod:`quantbook.explore_calibration`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from quantbook import kit
from quantbook.explore_calibration import GridPoint
from quantbook.explore_static import ObservedRange
from quantbook.kit import FIGURE_WIDTH_IN
from quantbook.records import BenchRecord
from quantbook.widgets import (
    control_layout,
    figure_png,
    image_view,
    linked_views,
    png_view,
    row_layout,
    show_png,
)

OBSERVER_COLORS = {"minmax": "C0", "moving_average": "C1", "histogram": "C3"}
LINEAR_SET_STYLES = {"attention": "--", "attention + FFN": "-"}
METRIC_LABELS = {"lee_pearson": "Lee Pearson r"}
BREAKDOWN_COLORS = {"float Linear": "C0", "dynamic int8 Linear": "#98df8a", "int8 Linear": "C2",
                    "quantize": "C3", "dequantize": "C1", "float ops": "0.7"}


def plot_activation_ranges(values: Mapping[str, torch.Tensor],
                           ranges: Mapping[str, Mapping[str, ObservedRange]],
                           title: str) -> plt.Figure:
    """Log-count histograms of activations, stacked, with each observer's range drawn as two
    lines; each panel's legend (the observers' steps) stands beside it, off the histogram."""
    fig, axes = plt.subplots(len(values), 1, figsize=(FIGURE_WIDTH_IN, 2.6 * len(values) + 0.6),
                             layout="constrained", squeeze=False)
    for ax, (label, x) in zip(axes[:, 0], values.items(), strict=True):
        ax.hist(x.flatten().numpy(), bins=200, color="0.6", log=True)
        for observer, r in ranges[label].items():
            ax.axvline(r.low, color=OBSERVER_COLORS.get(observer), lw=1.2)
            ax.axvline(r.high, color=OBSERVER_COLORS.get(observer), lw=1.2,
                       label=f"{observer}:\nstep {r.scale:.3g}")
        ax.set_title(label)
        ax.set_xlabel("activation value")
        ax.set_ylabel("count (log scale)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(title)
    return fig


def plot_time_breakdown(breakdowns: Mapping[str, Mapping[str, float]], title: str) -> plt.Figure:
    """One horizontal stacked bar per model: where the milliseconds of a forward pass go.

    Args:
        breakdowns: label -> {kind: ms}, as :func:`quantbook.profiling.time_breakdown` returns.
    """
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN, 0.7 * len(breakdowns) + 2.0),
                           layout="constrained")
    seen = set()
    for row, parts in enumerate(breakdowns.values()):
        left = 0.0
        for kind, color in BREAKDOWN_COLORS.items():
            ms = parts.get(kind, 0.0)
            if ms > 0:
                ax.barh(row, ms, left=left, color=color,
                        label=None if kind in seen else kind, edgecolor="white")
                seen.add(kind)
                left += ms
    ax.set_yticks(range(len(breakdowns)), list(breakdowns))
    ax.invert_yaxis()
    ax.set_xlabel("time per forward pass (ms)")
    ax.set_title(title)
    fig.legend(loc="outside lower center", ncols=3, frameon=False)
    return fig


def quality_table(records: Mapping[str, BenchRecord], mark_best: bool = False) -> kit.Table:
    """The metric, and the mean and worst cosine to float, of each record: one row each.

    Args:
        records: label -> a record whose secondary figures hold ``cosine_mean`` and
            ``cosine_min`` (MiniLM: the embeddings' cosine to the float ones).
        mark_best: set the row with the highest mean cosine in bold.
    """
    rows = [{"model": label, "value": r.value, "cosine_mean": r.quality("cosine_mean"),
             "cosine_min": r.quality("cosine_min")} for label, r in records.items()]
    metric = next(iter(records.values())).metric if records else ""
    best = max((r["cosine_mean"] for r in rows), default=None)
    return kit.table(
        rows, columns={"model": "model", "value": METRIC_LABELS.get(metric, metric),
                       "cosine_mean": "cosine to float", "cosine_min": "worst cosine"},
        formats=dict.fromkeys(("value", "cosine_mean", "cosine_min"), ".4f"),
        mark=(lambda r: r["cosine_mean"] == best) if mark_best else None)


def plot_calibration_sweep(points: Sequence[GridPoint], references: Mapping[str, BenchRecord],
                           title: str) -> plt.Figure:
    """Cosine to float (top) and the quality metric (below) against calibration batches, one
    line per setting; the legend sits under both panels.

    ``references`` maps a label (``"float32"``, ``"dynamic int8"``) to a record whose metric is
    drawn as a horizontal line.
    """
    fig, axes = plt.subplots(2, 1, figsize=(FIGURE_WIDTH_IN, 7.4), sharex=True,
                             layout="constrained")
    for observer in dict.fromkeys(p.observer for p in points):
        for name in dict.fromkeys(p.linear_set for p in points):
            line = sorted((p for p in points if (p.observer, p.linear_set) == (observer, name)),
                          key=lambda p: p.n_batches)
            style = dict(color=OBSERVER_COLORS.get(observer), marker="o",
                         ls=LINEAR_SET_STYLES.get(name, ":"), label=f"{observer}, {name}")
            x = [p.n_batches for p in line]
            axes[0].plot(x, [p.cosine_mean for p in line], **style)
            axes[1].plot(x, [p.value for p in line], **style)
    for (label, record), ls in zip(references.items(), (":", "-."), strict=False):
        axes[1].axhline(record.value, color="k", ls=ls, lw=1, label=label)
    metric = METRIC_LABELS.get(points[0].record.metric, points[0].record.metric)
    axes[0].set_ylabel("mean cosine to\nfloat embeddings")
    axes[1].set_ylabel(metric)
    axes[1].set_xlabel("calibration batches (4 articles each)")
    axes[1].set_xticks(sorted({p.n_batches for p in points}))
    fig.suptitle(title)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    return fig


def point_figure(point: GridPoint, latency_ms: Mapping[str, float],
                 references: Mapping[str, BenchRecord]) -> plt.Figure:
    """Quality and latency of one grid point beside the reference models: three stacked panels
    (the metric, the cosine to float, the latency), one bar per model.

    Args:
        point: the static configuration to show.
        latency_ms: Linear-set label -> median latency of static models of those Linears.
        references: label -> a record with ``latency_ms`` set, e.g. float32 and dynamic int8.
    """
    rows = {label: (r.value, r.quality("cosine_mean"), r.latency_ms)
            for label, r in references.items()}
    rows["this static"] = (point.value, point.cosine_mean, latency_ms[point.linear_set])
    colors = [*(["0.6"] * len(references)), "C3"]
    metric = METRIC_LABELS.get(point.record.metric, point.record.metric)
    fig, axes = plt.subplots(3, 1, figsize=(FIGURE_WIDTH_IN, 0.45 * 3 * len(rows) + 1.4),
                             layout="constrained")
    for column, (ax, label) in enumerate(zip(axes, (metric, "cosine to float", "latency (ms)"),
                                             strict=True)):
        values = [r[column] for r in rows.values()]
        ax.barh(range(len(rows)), values, color=colors)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.3f}" if column < 2 else f" {v:.0f}", va="center")
        ax.set_yticks(range(len(rows)), list(rows))
        ax.invert_yaxis()
        ax.set_xlim(min(0.5, min(values) - 0.05) if column < 2 else 0,
                    max(values) * (1.25 if column == 2 else 1.08))
        ax.set_xlabel(label)
    fig.suptitle(f"{point.observer} observer, {point.n_batches} batch(es), {point.linear_set}: "
                 f"cosine {point.cosine_mean:.3f}")
    return fig


def point_alt(point: GridPoint, latency_ms: Mapping[str, float],
              references: Mapping[str, BenchRecord]) -> str:
    """Alt text of a :func:`point_figure`: the point's numbers beside the references'."""
    metric = METRIC_LABELS.get(point.record.metric, point.record.metric)
    others = "; ".join(f"{label} {r.value:.3f}, cosine {r.quality('cosine_mean'):.3f}, "
                       f"{r.latency_ms:.0f} ms" for label, r in references.items())
    return (f"Three bar charts, {metric}, cosine to float and latency, of the static int8 model "
            f"with the {point.observer} observer, {point.n_batches} calibration batch(es) and "
            f"{point.linear_set} in int8: {point.value:.3f}, cosine {point.cosine_mean:.3f}, "
            f"{latency_ms[point.linear_set]:.0f} ms; beside it {others}.")


def _grid_index(points: Sequence[GridPoint], references: Mapping[str, BenchRecord]
                ) -> dict[tuple, GridPoint]:
    if not points:
        raise ValueError("points is empty: compute them with quality_grid(...)")
    untimed = [label for label, r in references.items() if r.latency_ms is None]
    if untimed:
        raise ValueError(f"references {untimed} have no latency_ms: time them, or set it with "
                         "dataclasses.replace(record, latency_ms=...)")
    return {(p.observer, p.n_batches, p.linear_set): p for p in points}


def _start_key(index: Mapping[tuple, GridPoint], start: tuple[str, int, str] | None,
               default: tuple) -> tuple:
    """The ``(observer, n_batches, linear_set)`` an explorer starts at."""
    if start is None:
        return default
    if tuple(start) not in index:
        raise ValueError(f"start={start!r} is not a point of the grid: choose an (observer, "
                         f"n_batches, linear_set) such as {next(iter(index))!r}")
    return tuple(start)


def explorer(points: Sequence[GridPoint], latency_ms: Mapping[str, float],
             references: Mapping[str, BenchRecord],
             start: tuple[str, int, str] | None = None) -> widgets.VBox:
    """Live explorer: observer, calibration batches and Linear set -> quality and latency.

    Every point was computed beforehand by :func:`quality_grid`; a change only draws (then
    caches) one figure. It starts at ``start``, an ``(observer, n_batches, linear_set)`` of the
    grid (by default the last observer, the most batches, the last Linear set). The box's
    ``image`` attribute is the ``Image`` on show.
    """
    index = _grid_index(points, references)
    observers, batches, sets = (list(dict.fromkeys(k[i] for k in index)) for i in range(3))
    first = _start_key(index, start, (observers[-1], max(batches), sets[-1]))
    cache: dict[tuple, tuple[bytes, str]] = {}
    style = {"description_width": "initial"}
    pick_observer = widgets.ToggleButtons(options=observers, value=first[0],
                                          description="observer", style=style,
                                          layout=row_layout())
    pick_batches = widgets.SelectionSlider(options=sorted(batches), value=first[1],
                                           description="calibration batches", style=style,
                                           layout=control_layout())
    pick_set = widgets.ToggleButtons(options=sets, value=first[2],
                                     description="int8 Linears", style=style, layout=row_layout())
    controls = (pick_observer, pick_batches, pick_set)

    def view() -> tuple[bytes, str]:
        key = tuple(c.value for c in controls)
        if key not in cache:
            cache[key] = (figure_png(point_figure(index[key], latency_ms, references)),
                          point_alt(index[key], latency_ms, references))
        return cache[key]

    image = png_view(*view())

    def update(_change=None) -> None:
        show_png(image, *view())

    for control in controls:
        control.observe(update, names="value")
    box = widgets.VBox([*controls, image])
    box.image = image
    return box


def static_explorer(points: Sequence[GridPoint], latency_ms: Mapping[str, float],
                    references: Mapping[str, BenchRecord],
                    start: tuple[str, int, str] | None = None) -> widgets.VBox:
    """Kernel-free explorer: one slider over every grid point, precomputed images; it starts at
    ``start``, an ``(observer, n_batches, linear_set)`` (by default the slider's first)."""
    index = _grid_index(points, references)
    keys = sorted(index, key=lambda k: (k[2], k[0], k[1]))
    first = _start_key(index, start, keys[0])
    views = [image_view(point_figure(index[k], latency_ms, references),
                        point_alt(index[k], latency_ms, references)) for k in keys]
    labels = [f"{s}, {o}, {n} batch{'es' if n > 1 else ''}" for o, n, s in keys]
    return linked_views(labels, views, "configuration", start=keys.index(first))
