"""Chapter 04 helpers: dynamic quantization taken apart, timed, and explored.

The quantization itself is :mod:`quantbook.methods.dynamic`; this module checks what a converted
layer computes, sweeps latency over batch sizes and threads, lists the operators a layer runs,
and builds the chapter's figures and explorers from precomputed results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.ticker import FuncFormatter
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from quantbook import measure
from quantbook.methods.dynamic import (
    GRANULARITIES,
    DynamicConfig,
    dynamic_activation_qparams,
    quantize_dynamic_model,
)
from quantbook.widgets import figure_png, linked_views

# explorer choice -> the module groups it quantizes
GROUP_CHOICES: dict[str, tuple[str, ...]] = {
    "attention": ("attention",), "ffn": ("ffn",), "both": ("attention", "ffn")}
GRANULARITY_LABELS = {"tensor": "per tensor", "channel": "per channel"}
FLOAT_LABEL = "float32"


def combo_label(groups: str, granularity: str) -> str:
    """The explorer's name for a recipe, e.g. ``"ffn, per channel"``."""
    if groups not in GROUP_CHOICES or granularity not in GRANULARITIES:
        raise ValueError(f"groups={groups!r}, granularity={granularity!r} is not a recipe: "
                         f"choose groups from {list(GROUP_CHOICES)} and granularity from "
                         f"{list(GRANULARITIES)}")
    return f"{groups}, {GRANULARITY_LABELS[granularity]}"


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


def simulate_dynamic_linear(layer: nn.Module, x: torch.Tensor, reduce_range: bool = True,
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
        reduce_range: 7-bit activations (codes 0..127), as the x86 kernels use.
        qparams: ``(scale, zero_point)`` to use instead of the ones ``x`` would get.
    """
    if not callable(getattr(layer, "weight", None)) or not hasattr(layer, "bias"):
        raise TypeError(f"layer is a {type(layer).__name__}: expected a dynamically quantized "
                        "Linear (torch.ao.nn.quantized.dynamic.Linear)")
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


def call(model: nn.Module, batch) -> object:
    """Run ``model`` on a batch: ``model(**batch)`` for a mapping, else ``model(batch)``."""
    return model(**batch) if isinstance(batch, Mapping) else model(batch)


def latency_grid(models: Mapping[str, nn.Module], make_batch: Callable[[int], object],
                 batch_sizes: Sequence[int], threads: Sequence[int], *, warmup: int = 1,
                 repeats: int = 5) -> list[dict]:
    """Median latency of each model at each batch size and thread count, measured side by side.

    For every ``(threads, batch_size)`` the models run alternately
    (:func:`quantbook.measure.compare_latency`); the thread setting is restored afterwards.

    Returns:
        One row per measurement: ``{"model", "batch_size", "threads", "median_ms",
        "ms_per_item", "speedup"}``; ``speedup`` is against the first model of ``models``.
    """
    if not models:
        raise ValueError("models is empty: pass {name: model}, the float baseline first")
    for name, values in (("batch_sizes", batch_sizes), ("threads", threads)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                             for v in values):
            raise ValueError(f"{name}={list(values)!r} is not supported: pass positive integers")
    baseline = next(iter(models))
    rows = []
    for n_threads in threads:
        for batch_size in batch_sizes:
            batch = make_batch(batch_size)
            with measure.num_threads(n_threads):
                timings = measure.compare_latency(
                    {name: (lambda m=m, b=batch: call(m, b)) for name, m in models.items()},
                    warmup=warmup, repeats=repeats)
            for name, timing in timings.items():
                rows.append({"model": name, "batch_size": batch_size, "threads": n_threads,
                             "median_ms": timing.median_ms,
                             "ms_per_item": timing.median_ms / batch_size,
                             "speedup": measure.speedup(timings[baseline], timing)})
    return rows


def plot_latency_grid(rows: Sequence[dict], title: str) -> plt.Figure:
    """Left: milliseconds per item against batch size; right: speed-up over the baseline."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for k, n_threads in enumerate(sorted({r["threads"] for r in rows}, reverse=True)):
        style = ("-", "--", ":", "-.")[k % 4]
        for i, name in enumerate(models):
            mine = sorted((r for r in rows if r["model"] == name and r["threads"] == n_threads),
                          key=lambda r: r["batch_size"])
            sizes = [r["batch_size"] for r in mine]
            label = f"{name}, {n_threads} thread{'s' if n_threads > 1 else ''}"
            left.plot(sizes, [r["ms_per_item"] for r in mine], style, marker="o",
                      color=f"C{i}", label=label)
            if i > 0:
                right.plot(sizes, [r["speedup"] for r in mine], style, marker="o",
                           color=f"C{i}", label=label)
    right.axhline(1.0, color="0.5", lw=0.8)
    sizes = sorted({r["batch_size"] for r in rows})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size (sequences)")
        ax.legend(fontsize=8)
    left.set_yscale("log")
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")  # 20, not 2 x 10^1
    left.yaxis.set_major_formatter(plain)
    left.yaxis.set_minor_formatter(plain)
    left.set_ylabel("latency per sequence (ms, log scale)")
    right.set_ylabel(f"speed-up over {models[0]} (x)")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_sensitivity(scan: Sequence[dict], title: str, metric: str = "cosine drop") -> plt.Figure:
    """Horizontal bars: how much quantizing each module alone costs, most harmful on top."""
    rows = sorted(scan, key=lambda r: r["drop"])
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.4))
    ax.barh([r["module"] for r in rows], [r["drop"] for r in rows], color="C3")
    ax.set_xscale("log")
    ax.set(xlabel=f"{metric} when only this module is int8 (log scale)", title=title)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def explorer_grid(model: nn.Module, evaluate_fn: Callable[[nn.Module], dict],
                  run_fn: Callable[[nn.Module], object], *,
                  reuse: Mapping[str, tuple[nn.Module, dict]] | None = None,
                  warmup: int = 1, repeats: int = 5, threads: int | None = None) -> list[dict]:
    """Quantize, evaluate and time every recipe of groups x granularity, plus float.

    Args:
        model: the float model (quantbook's GPT or MiniLM).
        evaluate_fn: model -> dict of quality figures, e.g. ``{"cosine": ..., "pearson": ...}``.
        run_fn: model -> anything; the call that is timed (all recipes side by side).
        reuse: label -> ``(quantized model, its evaluate_fn result)`` already computed, to skip
            (``combo_label`` labels; ``"float32"`` for the float model).
        warmup: untimed rounds.
        repeats: timed rounds.
        threads: time with this many threads (the current setting if ``None``).

    Returns:
        Rows ``{"label", "groups", "granularity", "size_bytes", "size_ratio", "latency_ms",
        "speedup", **quality}``, float first, then groups x granularity in order.
    """
    reuse = dict(reuse or {})
    recipes = [(FLOAT_LABEL, None, None)] + [
        (combo_label(g, gran), g, gran) for g in GROUP_CHOICES for gran in GRANULARITIES]
    models, rows = {}, []
    for label, groups, granularity in recipes:
        if label in reuse:
            quantized, quality = reuse[label]
        else:
            quantized = model if groups is None else quantize_dynamic_model(
                model, DynamicConfig(targets=GROUP_CHOICES[groups], granularity=granularity))[0]
            quality = evaluate_fn(quantized)
        models[label] = quantized
        rows.append({"label": label, "groups": groups, "granularity": granularity,
                     "size_bytes": measure.size_bytes(quantized), **quality})
    with measure.num_threads(threads or torch.get_num_threads()):
        timings = measure.compare_latency(
            {k: (lambda m=m: run_fn(m)) for k, m in models.items()}, warmup=warmup, repeats=repeats)
    for row in rows:
        row["size_ratio"] = row["size_bytes"] / rows[0]["size_bytes"]
        row["latency_ms"] = timings[row["label"]].median_ms
        row["speedup"] = measure.speedup(timings[FLOAT_LABEL], timings[row["label"]])
    return rows


_PANELS = (("size_ratio", "size (fraction of float32)"), ("speedup", "speed-up over float32 (x)"),
           ("cosine", "cosine to float32 embeddings"))


def plot_combos(rows: Sequence[dict], title: str, selected: str | None = None,
                panels: Sequence[tuple[str, str]] = _PANELS) -> plt.Figure:
    """One panel per figure of merit, one bar per recipe; ``selected`` is drawn in black."""
    recipes = [r for r in rows if r["groups"] is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.6))
    positions = np.arange(len(GROUP_CHOICES))
    for ax, (key, ylabel) in zip(np.atleast_1d(axes), panels, strict=True):
        for k, granularity in enumerate(GRANULARITIES):
            mine = [r for r in recipes if r["granularity"] == granularity]
            bars = ax.bar(positions + 0.38 * k - 0.19, [r[key] for r in mine], width=0.38,
                          color=f"C{k}", label=GRANULARITY_LABELS[granularity])
            for bar, r in zip(bars, mine, strict=True):
                if r["label"] == selected:
                    bar.set(edgecolor="black", linewidth=2.5)
        ax.axhline(rows[0][key], color="0.3", ls="--", lw=1, label=FLOAT_LABEL)
        values = [r[key] for r in rows]
        low, high = min(values), max(values)
        ax.set_ylim(max(0.0, low - 0.15 * (high - low + 1e-9)), high + 0.1 * (high - low + 1e-9))
        ax.set_xticks(positions, list(GROUP_CHOICES))
        ax.set(xlabel="quantized Linear groups", ylabel=ylabel)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def describe(row: dict) -> str:
    """One line of HTML with a recipe's numbers."""
    quality = ", ".join(f"{k} {row[k]:.4f}" for k in ("cosine", "pearson") if k in row)
    return (f"<b>{row['label']}</b>: {row['size_bytes'] / 1e6:.1f} MB "
            f"({row['size_ratio']:.1%} of float32), {row['latency_ms']:.0f} ms "
            f"({row['speedup']:.2f}x), {quality}")


def combo_pictures(rows: Sequence[dict], title: str) -> dict[str, bytes]:
    """PNG bytes of :func:`plot_combos` with each recipe selected in turn: the explorers' views."""
    return {r["label"]: figure_png(plot_combos(rows, title, selected=r["label"]))
            for r in rows if r["groups"] is not None}


def explorer(rows: Sequence[dict], pictures: Mapping[str, bytes]) -> widgets.VBox:
    """Live explorer: group and granularity buttons select a precomputed recipe.

    Every figure was drawn up front (:func:`combo_pictures`); a change only swaps the picture
    and the line of numbers, so it answers at once. Needs a running kernel.
    """
    by_label = {r["label"]: r for r in rows}
    groups = widgets.ToggleButtons(options=list(GROUP_CHOICES), value="both",
                                   description="quantize")
    granularity = widgets.ToggleButtons(
        options=[(GRANULARITY_LABELS[g], g) for g in GRANULARITIES], value="tensor",
        description="weights")
    image = widgets.Image(format="png", layout=widgets.Layout(width="820px"))
    text = widgets.HTML()

    def show(_change: object = None) -> None:
        label = combo_label(groups.value, granularity.value)
        image.value, text.value = pictures[label], describe(by_label[label])

    groups.observe(show, names="value")
    granularity.observe(show, names="value")
    show()
    return widgets.VBox([groups, granularity, text, image])


def static_explorer(rows: Sequence[dict], pictures: Mapping[str, bytes]) -> widgets.VBox:
    """Kernel-free explorer: a slider over the recipes, each a precomputed figure and line."""
    recipes = [r for r in rows if r["groups"] is not None]
    views = [widgets.VBox([widgets.HTML(describe(r)),
                           widgets.Image(value=pictures[r["label"]], format="png",
                                         layout=widgets.Layout(width="820px"))])
             for r in recipes]
    return linked_views([r["label"] for r in recipes], views, "recipe")


class _OperatorLog(TorchDispatchMode):
    """Record the name of every operator that reaches PyTorch's dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def operator_log(fn: Callable[[], object]) -> list[str]:
    """The operators ``fn()`` calls, in order, e.g. ``["aten::linear"]`` for a float Linear.

    Each entry is one call into PyTorch's dispatcher (``aten::`` for core ops, ``quantized::``
    for the eager quantized kernels, ``torchao::`` for torchao's own): eager PyTorch runs each
    as a separate kernel, reading its inputs from memory and writing its output back. Views
    (``aten::t``, ``aten::reshape``) are listed too, though they move no data.
    """
    with torch.inference_mode(), _OperatorLog() as log:
        fn()
    return log.names
