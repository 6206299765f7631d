"""Chapter 04 helpers: what a dynamic int8 layer computes, latency over batch sizes and threads,
and the figures and explorers drawn from the records of the chapter's :class:`Sweep`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.ticker import FuncFormatter
from torch import nn

from quantbook import measure
from quantbook.kit import FIGURE_WIDTH_IN
from quantbook.methods.dynamic import (
    DynamicConfig,
    dynamic_activation_qparams,
    engine_reduces_range,
)
from quantbook.methods.sensitivity import Sensitivity
from quantbook.records import FLOAT_FAMILY, BenchRecord
from quantbook.sweep import Sweep
from quantbook.widgets import figure_png, linked_views, png_view, row_layout, show_png

# the explorer's choices: (label, targets) and (label, granularity)
TARGET_CHOICES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("attention",)), ("ffn", ("ffn",)), ("both", ("attention", "ffn")))
GRANULARITY_CHOICES: tuple[tuple[str, str], ...] = (
    ("per tensor", "tensor"), ("per channel", "channel"))


def combo_label(targets: Sequence[str], granularity: str) -> str:
    """The explorer's label for a recipe: ``(("ffn",), "channel")`` -> ``"ffn, per channel"``."""
    target_labels = {t: label for label, t in TARGET_CHOICES}
    granularity_labels = {g: label for label, g in GRANULARITY_CHOICES}
    key = tuple(targets)
    if key not in target_labels or granularity not in granularity_labels:
        raise ValueError(f"targets={key!r}, granularity={granularity!r} is not a recipe of the "
                         f"explorer: choose targets from {list(target_labels)} and granularity "
                         f"from {list(granularity_labels)}")
    return f"{target_labels[key]}, {granularity_labels[granularity]}"


def combo_configs() -> dict[str, DynamicConfig]:
    """label -> config of every recipe, targets x granularity, in the explorer's order."""
    return {combo_label(t, g): DynamicConfig(targets=t, granularity=g)
            for _, t in TARGET_CHOICES for _, g in GRANULARITY_CHOICES}


def capture_inputs(model: nn.Module, name: str, run: Callable[[], object]) -> list[torch.Tensor]:
    """The first positional input of module ``name`` at each of its calls while ``run()`` runs."""
    seen: list[torch.Tensor] = []
    module = model.get_submodule(name)
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.inference_mode():
            run()
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"module {name!r} never ran during run(): pass a call that reaches it")
    return seen


def simulate_dynamic_linear(layer: nn.Module, x: torch.Tensor, reduce_range: bool | None = None,
                            qparams: tuple[float, int] | None = None) -> torch.Tensor:
    """Recompute a dynamically quantized Linear by hand, from its stored weight and ``x``.

    The activation gets the scale and zero point of :func:`dynamic_activation_qparams` (or the
    given ``qparams``), is rounded onto that grid and dequantized; the stored int8 weight is
    dequantized; then a float ``F.linear``. The real kernel multiplies the integer codes and
    rescales once, which is the same sum, so the two agree to float32 rounding exactly when the
    qparams are the ones the kernel chose for this ``x``.

    Args:
        layer: a ``torch.ao.nn.quantized.dynamic.Linear`` with int8 weights.
        x: its float input, shape ``(..., in_features)``.
        reduce_range: 7-bit activations (codes 0..127), as the x86 kernels use; ``None``
            (default) follows the engine in use
            (:func:`~quantbook.methods.dynamic.engine_reduces_range`).
        qparams: ``(scale, zero_point)`` to use instead of the ones ``x`` would get.
    """
    if not callable(getattr(layer, "weight", None)) or not hasattr(layer, "bias"):
        raise TypeError(f"layer is a {type(layer).__name__}: expected a dynamically quantized "
                        "Linear (torch.ao.nn.quantized.dynamic.Linear)")
    if reduce_range is None:
        reduce_range = engine_reduces_range()
    scale, zero_point = qparams or dynamic_activation_qparams(x, reduce_range)
    qmax = 127 if reduce_range else 255
    # FBGEMM computes zero_point + x * (1 / scale) with one fused multiply-add in float32 and
    # rounds that; x / scale + zero_point, rounded twice, picks the neighbouring code for a few
    # values in a million that sit next to a tie. Float64 holds the product exactly, so one
    # rounding to float32 reproduces the fused result.
    inverse = float(np.float32(1.0) / np.float32(scale))
    transformed = (x.detach().double() * inverse + zero_point).float()
    codes = torch.clamp(torch.round(transformed), 0, qmax)
    x_hat = (codes - zero_point) * scale
    bias = layer.bias()
    with torch.no_grad():
        return F.linear(x_hat, layer.weight().dequantize(), None if bias is None else bias.detach())


@dataclass(frozen=True)
class LatencyPoint:
    """One model's median latency at one batch size and thread count; ``speedup`` is over the
    grid's first model, timed in the same alternating rounds (1.0 for that model itself)."""

    label: str
    batch_size: int
    threads: int
    latency_ms: float
    speedup: float


def latency_grid(models: Mapping[str, nn.Module], make_batch: Callable[[int], object],
                 batch_sizes: Sequence[int], threads: Sequence[int], *, warmup: int = 1,
                 repeats: int = 5) -> list[LatencyPoint]:
    """Median latency of each model at each batch size and thread count, timed alternately
    (:func:`measure.compare_latency`) on ``make_batch(batch_size)``, a tensor or a mapping of
    keyword arguments; the thread setting is restored afterwards."""
    if not models:
        raise ValueError("models is empty: pass {label: model}, the float baseline first")
    for name, values in (("batch_sizes", batch_sizes), ("threads", threads)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                             for v in values):
            raise ValueError(f"{name}={list(values)!r} is not supported: pass positive integers")
    baseline = next(iter(models))
    points = []
    for n_threads in threads:
        for batch_size in batch_sizes:
            batch = make_batch(batch_size)
            with measure.num_threads(n_threads):
                timings = measure.compare_latency(
                    {label: (lambda m=m, b=batch: m(**b) if isinstance(b, Mapping) else m(b))
                     for label, m in models.items()},
                    warmup=warmup, repeats=repeats)
            points += [LatencyPoint(label, batch_size, n_threads, timing.median_ms,
                                    measure.speedup(timings[baseline], timing))
                       for label, timing in timings.items()]
    return points


def plot_latency_grid(points: Sequence[LatencyPoint], title: str) -> plt.Figure:
    """Top: milliseconds per sequence against batch size; below it: speed-up over the baseline.

    The panels share the batch-size axis and one legend, under them.
    """
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(FIGURE_WIDTH_IN, 7.0), sharex=True,
                                      layout="constrained")
    labels = list(dict.fromkeys(p.label for p in points))
    for k, n_threads in enumerate(sorted({p.threads for p in points}, reverse=True)):
        style = ("-", "--", ":", "-.")[k % 4]
        for i, name in enumerate(labels):
            mine = sorted((p for p in points if p.label == name and p.threads == n_threads),
                          key=lambda p: p.batch_size)
            sizes = [p.batch_size for p in mine]
            label = f"{name}, {n_threads} thread{'s' if n_threads > 1 else ''}"
            top.plot(sizes, [p.latency_ms / p.batch_size for p in mine], style, marker="o",
                     color=f"C{i}", label=label)
            if i > 0:
                bottom.plot(sizes, [p.speedup for p in mine], style, marker="o", color=f"C{i}")
    bottom.axhline(1.0, color="0.5", lw=0.8)
    sizes = sorted({p.batch_size for p in points})
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(sizes, [str(s) for s in sizes])
    bottom.minorticks_off()
    bottom.set_xlabel("batch size (sequences)")
    top.set_yscale("log")
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")  # 20, not 2 x 10^1
    top.yaxis.set_major_formatter(plain)
    top.yaxis.set_minor_formatter(plain)
    top.set_ylabel("latency per sequence\n(ms, log scale)")
    bottom.set_ylabel(f"speed-up over\n{labels[0]} (x)")
    fig.legend(handles=top.get_legend_handles_labels()[0], loc="outside lower center", ncols=2)
    fig.suptitle(title)
    return fig


def plot_sensitivity(scan: Sequence[Sensitivity], title: str,
                     metric: str = "cosine drop") -> plt.Figure:
    """Horizontal bars: what quantizing each module alone costs, most harmful on top; a NaN
    metric (``drop`` is ``inf``) gets a hatched bar ten times the largest finite drop."""
    rows = sorted(scan, key=lambda r: r.drop if isinstance(r, Sensitivity) else 0)
    if not rows or not all(isinstance(r, Sensitivity) for r in rows):
        raise TypeError(f"scan={rows[:1]!r}...: pass the Sensitivity rows that "
                        "quantbook.methods.sensitivity_scan returns")
    cap = 10 * max((r.drop for r in rows if math.isfinite(r.drop)), default=1.0)
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN, 0.32 * len(rows) + 1.4))
    bars = ax.barh([r.module for r in rows], [min(r.drop, cap) for r in rows], color="C3")
    for bar in (b for b, r in zip(bars, rows, strict=True) if not math.isfinite(r.drop)):
        bar.set_hatch("//")
    ax.set_xscale("log")
    ax.set(xlabel=f"{metric} when only this module is int8 (log scale)", title=title)
    fig.tight_layout()
    return fig


def explorer_grid(sweep: Sweep, *, threads: int | None = None, warmup: int = 1,
                  repeats: int = 5) -> list[BenchRecord]:
    """The float32 record, then a timed record per recipe of :func:`combo_configs`.

    Quality and size are measured with the current thread setting, then each recipe is timed
    alternately with the float model on ``threads`` threads (the current setting if ``None``)
    by :meth:`Sweep.run`. What the sweep already built or measured is reused.
    """
    if not isinstance(sweep, Sweep):
        raise TypeError(f"sweep is a {type(sweep).__name__}: expected a quantbook.sweep.Sweep")
    configs = combo_configs()
    sweep.run(configs)
    with measure.num_threads(threads or torch.get_num_threads()):
        return sweep.run(configs, timed=True, warmup=warmup, repeats=repeats)


def _figure(record: BenchRecord, key: str) -> float:
    """A record's field (``"size_ratio"``, ``"speedup"``) or quality (``"cosine_mean"``)."""
    value = getattr(record, key) if hasattr(record, key) else record.quality(key)
    if value is None:
        raise ValueError(f"{record.method!r} has no {key}: pass timed records (explorer_grid)")
    return value


_PANELS = (("size_ratio", "size (fraction of float32)"), ("speedup", "speed-up over float32 (x)"),
           ("cosine_mean", "cosine to float32 embeddings"))


def plot_combos(records: Sequence[BenchRecord], title: str, selected: str | None = None,
                panels: Sequence[tuple[str, str]] = _PANELS) -> plt.Figure:
    """One panel per figure of merit, stacked, one bar per recipe; ``selected`` is outlined in
    black. The legend sits under the panels, off the bars."""
    panels = list(panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(FIGURE_WIDTH_IN, 2.2 * len(panels) + 1.3),
                             sharex=True, layout="constrained", squeeze=False)
    by_label = {r.method: r for r in records}
    reference = next(r for r in records if r.family == FLOAT_FAMILY)
    positions = np.arange(len(TARGET_CHOICES))
    for ax, (key, ylabel) in zip(axes[:, 0], panels, strict=True):
        for k, (granularity_label, granularity) in enumerate(GRANULARITY_CHOICES):
            labels = [combo_label(targets, granularity) for _, targets in TARGET_CHOICES]
            bars = ax.bar(positions + 0.38 * k - 0.19,
                          [_figure(by_label[label], key) for label in labels], width=0.38,
                          color=f"C{k}", label=granularity_label)
            if selected in labels:
                bars[labels.index(selected)].set(edgecolor="black", linewidth=2.5)
        ax.axhline(_figure(reference, key), color="0.3", ls="--", lw=1, label=reference.method)
        values = [_figure(r, key) for r in records]
        low, high = min(values), max(values)
        ax.set_ylim(max(0.0, low - 0.15 * (high - low + 1e-9)), high + 0.1 * (high - low + 1e-9))
        ax.set_ylabel(ylabel)
    bottom = axes[-1, 0]
    bottom.set_xticks(positions, [label for label, _ in TARGET_CHOICES])
    bottom.set_xlabel("quantized Linear groups")
    fig.legend(handles=axes[0, 0].get_legend_handles_labels()[0], loc="outside lower center",
               ncols=3)
    fig.suptitle(title)
    return fig


def describe(record: BenchRecord) -> str:
    """One line of HTML with a recipe's numbers."""
    figures = {record.metric: record.value, **record.secondary}
    quality = ", ".join(f"{name.replace('_', ' ')} {value:.4f}" for name, value in figures.items())
    timing = ("" if record.latency_ms is None
              else f", {record.latency_ms:.0f} ms ({record.speedup:.2f}x)")
    return (f"<b>{record.method}</b>: {record.size_bytes / 1e6:.1f} MB "
            f"({record.size_ratio:.1%} of float32){timing}, {quality}")


def combo_pictures(records: Sequence[BenchRecord], title: str) -> dict[str, bytes]:
    """PNG bytes of :func:`plot_combos` with each recipe selected in turn: the explorers' views."""
    return {label: figure_png(plot_combos(records, title, selected=label))
            for label in combo_configs()}


def combo_alt(record: BenchRecord) -> str:
    """Alt text of a :func:`combo_pictures` view: what the bars show, the recipe's numbers."""
    figures = {record.metric: record.value, **record.secondary}
    quality = ", ".join(f"{name.replace('_', ' ')} {value:.4f}" for name, value in figures.items())
    timing = "" if record.speedup is None else f", {record.speedup:.2f}x float32's speed"
    return (f"Three stacked bar charts, size, speed-up and cosine to float32, one pair of bars "
            f"(per tensor, per channel) per quantized group; {record.method} is outlined: "
            f"{record.size_ratio:.1%} of float32's size{timing}, {quality}.")


def _check_start(start: str, name: str = "start") -> str:
    labels = list(combo_configs())
    if start not in labels:
        raise ValueError(f"{name}={start!r} is not a recipe of the explorer: choose one of "
                         f"{labels}")
    return start


def explorer(records: Sequence[BenchRecord], pictures: Mapping[str, bytes],
             start: str = "both, per tensor") -> widgets.VBox:
    """Live explorer (needs a kernel): buttons select a recipe's precomputed picture and numbers,
    so a change answers at once. It starts at ``start``, a label of :func:`combo_configs`
    (by default ``"both, per tensor"``, the chapter's first recipe).
    """
    config = combo_configs()[_check_start(start)]
    by_label = {r.method: r for r in records}
    targets = widgets.ToggleButtons(options=list(TARGET_CHOICES), value=config.targets,
                                    description="quantize", layout=row_layout())
    granularity = widgets.ToggleButtons(options=list(GRANULARITY_CHOICES),
                                        value=config.granularity, description="weights",
                                        layout=row_layout())
    image = png_view(pictures[start], combo_alt(by_label[start]))
    text = widgets.HTML()

    def show(_change: object = None) -> None:
        label = combo_label(targets.value, granularity.value)
        show_png(image, pictures[label], combo_alt(by_label[label]))
        text.value = describe(by_label[label])

    targets.observe(show, names="value")
    granularity.observe(show, names="value")
    show()
    return widgets.VBox([targets, granularity, text, image])


def static_explorer(records: Sequence[BenchRecord], pictures: Mapping[str, bytes],
                    start: str = "attention, per tensor") -> widgets.VBox:
    """Kernel-free explorer: a slider over the recipes, each a precomputed figure and line;
    it starts at ``start`` (a label of :func:`combo_configs`, by default the first)."""
    by_label = {r.method: r for r in records}
    labels = list(combo_configs())
    views = [widgets.VBox([widgets.HTML(describe(by_label[label])),
                           png_view(pictures[label], combo_alt(by_label[label]))])
             for label in labels]
    return linked_views(labels, views, "recipe", start=labels.index(_check_start(start)))
