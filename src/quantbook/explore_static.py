"""Chapter 05 helpers: activations and observer ranges, a calibration grid, timings, explorer.

The quantization itself is :mod:`quantbook.methods.static`; this module looks inside it.

* :func:`capture` records what a few Linears receive and return while a model runs (during
  calibration, say), and :func:`observe_range` feeds those tensors to fresh PyTorch observers.
* :func:`observe_linears` runs calibration *once* for several observers: forward hooks on the
  float model feed every observer the tensors it would see in a prepared model, and copies are
  kept after chosen batch counts. :func:`convert_observed` turns one copy into the same int8
  model that ``prepare_static -> calibrate -> convert_static`` gives (the tests check this).
* :func:`time_breakdown` splits a forward pass into int8 Linears, quantize, dequantize and the
  float ops in between.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter_ns

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from quantbook.affine import sqnr_db
from quantbook.methods.dynamic import dynamic_activation_qparams, quiet_torch_ao
from quantbook.methods.report import QuantReport
from quantbook.methods.static import (
    OBSERVERS,
    StaticConfig,
    convert_static,
    forward_batch,
    prepare_static,
    qconfig,
)
from quantbook.targets import list_targets
from quantbook.widgets import figure_png, image_view, linked_views

OBSERVER_COLORS = {"minmax": "C0", "moving_average": "C1", "histogram": "C3"}
TARGET_STYLES = {"attention": "--", "attention + FFN": "-"}


def _linear(model: nn.Module, name: str) -> nn.Linear:
    """The float Linear at ``name``, looking inside a prepared ``QuantWrapper``."""
    module = model.get_submodule(name)
    module = getattr(module, "module", module)  # QuantWrapper(quant, module, dequant)
    if type(module) is not nn.Linear:
        raise ValueError(f"{name!r} is a {type(module).__name__}: capture and observe float "
                         "nn.Linear layers (before convert), e.g. from list_targets(model)")
    return module


def target_choices(model: nn.Module) -> dict[str, list[str]]:
    """The Linear sets the chapter compares: attention only, all, all but the FFN output.

    Returns:
        ``{"attention": [...], "attention + FFN": [...], "attention + FFN input": [...]}``;
        the last keeps each FFN's output projection (``output.dense``, ``fc_out``) in float.
    """
    groups = list_targets(model)
    ffn_out = [n for n in groups["ffn"] if n.endswith((".output.dense", ".fc_out"))]
    return {"attention": groups["attention"],
            "attention + FFN": groups["attention"] + groups["ffn"],
            "attention + FFN input": groups["attention"]
            + [n for n in groups["ffn"] if n not in ffn_out]}


@contextlib.contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, dict[str, list]]]:
    """Record the input and output of each named Linear on every call inside the block.

    Works on float and prepared models. Yields ``{name: {"input": [...], "output": [...]}}``,
    one detached copy per call, filled while the block runs.
    """
    store = {name: {"input": [], "output": []} for name in names}
    handles = []
    for name in names:
        def hook(_module, args, output, name=name):
            store[name]["input"].append(args[0].detach().clone())
            store[name]["output"].append(output.detach().clone())
        handles.append(_linear(model, name).register_forward_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class ObservedRange:
    """The interval an observer's ``scale`` and ``zero_point`` make representable."""

    low: float
    high: float
    scale: float
    zero_point: int
    qmin: int
    qmax: int


def range_of(observer: nn.Module) -> ObservedRange:
    """Read ``calculate_qparams()`` of a PyTorch observer as a range ``[low, high]``."""
    scale, zero_point = observer.calculate_qparams()
    scale, zero_point = float(scale), int(zero_point)
    qmin, qmax = int(observer.quant_min), int(observer.quant_max)
    return ObservedRange(scale * (qmin - zero_point), scale * (qmax - zero_point), scale,
                         zero_point, qmin, qmax)


def make_observer(observer: str) -> nn.Module:
    """A fresh activation observer exactly as :func:`quantbook.methods.static.qconfig` builds it."""
    if observer not in OBSERVERS:
        raise ValueError(f"observer={observer!r} is not supported: choose one of {OBSERVERS}")
    with quiet_torch_ao():
        return qconfig(StaticConfig(observer=observer)).activation()


def observe_range(observer: str, batches: Sequence[torch.Tensor]) -> ObservedRange:
    """Feed the tensors to a fresh observer, one call per batch, and return its range."""
    if not batches:
        raise ValueError("batches is empty: pass the tensors of at least one calibration batch")
    obs = make_observer(observer)
    with torch.no_grad():
        for x in batches:
            obs(x)
    return range_of(obs)


def requant_sqnr_db(batches: Sequence[torch.Tensor], scale: float, zero_point: int,
                    qmin: int = 0, qmax: int = 127) -> float:
    """SQNR in dB of fake-quantizing all ``batches`` with one fixed scale and zero point."""
    x = torch.cat([b.flatten() for b in batches])
    approx = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
    return sqnr_db(x, approx)


def dynamic_sqnr_db(batches: Sequence[torch.Tensor]) -> float:
    """SQNR in dB when each batch is quantized with its own range, as dynamic quantization does."""
    xs, approx = [], []
    for b in batches:
        scale, zero_point = dynamic_activation_qparams(b)
        xs.append(b.flatten())
        approx.append(torch.fake_quantize_per_tensor_affine(b.flatten(), scale, zero_point, 0, 127))
    return sqnr_db(torch.cat(xs), torch.cat(approx))


def requant_damage(batches: Sequence[torch.Tensor], observed: ObservedRange) -> dict:
    """What one fixed per-tensor grid does to a (tokens, channels) activation, channel by channel.

    Returns:
        ``{"top_channel", "top_absmax", "median_abs", "zero_fraction", "sqnr_db",
        "rest_sqnr_db"}``: the channel with the largest ``|x|`` and that value, the median
        ``|x|``, the share of values that come back as exactly 0, and the SQNR over all
        channels and over all channels but the top one.
    """
    x = torch.cat([b.reshape(-1, b.shape[-1]) for b in batches])  # (tokens, channels)
    approx = torch.fake_quantize_per_tensor_affine(x, observed.scale, observed.zero_point,
                                                   observed.qmin, observed.qmax)
    absmax = x.abs().amax(dim=0)  # (channels,)
    top = int(absmax.argmax())
    rest = torch.arange(x.shape[1]) != top
    return {"top_channel": top, "top_absmax": float(absmax[top]),
            "median_abs": float(x.abs().median()),
            "zero_fraction": float((approx == 0).float().mean()),
            "sqnr_db": sqnr_db(x, approx), "rest_sqnr_db": sqnr_db(x[:, rest], approx[:, rest])}


def observe_linears(model: nn.Module, names: Sequence[str], batches: Sequence,
                    observers: Sequence[str] = OBSERVERS, checkpoints: Sequence[int] = (1, 4, 8),
                    run_fn: Callable[[nn.Module, object], None] = forward_batch,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Calibrate every observer kind in one pass, keeping copies after ``checkpoints`` batches.

    A prepared Linear's input observer sees the Linear's input and its output observer the
    output, both float (observers watch, they do not quantize). So hooks on the float model
    feed the same tensors to one pair of observers per Linear and kind.

    Returns:
        ``{(observer, n_batches): {name: (input_observer, output_observer)}}``.
    """
    checkpoints = sorted(set(checkpoints))
    if not checkpoints or checkpoints[0] < 1 or checkpoints[-1] > len(batches):
        raise ValueError(f"checkpoints={checkpoints} must lie in 1..{len(batches)} (the number "
                         "of batches): pass fewer checkpoints or more batches")
    live = {kind: {n: (make_observer(kind), make_observer(kind)) for n in names}
            for kind in observers}

    def hook(name):
        def feed(_module, args, output):
            for kind in live:
                live[kind][name][0](args[0].detach())
                live[kind][name][1](output.detach())
        return feed

    handles = [_linear(model, n).register_forward_hook(hook(n)) for n in names]
    snapshots = {}
    try:
        with torch.no_grad(), quiet_torch_ao():
            for done, batch in enumerate(batches[: checkpoints[-1]], start=1):
                run_fn(model, batch)
                if done in checkpoints:
                    snapshots.update({(kind, done): copy.deepcopy(live[kind]) for kind in live})
                if progress is not None:
                    progress(done, checkpoints[-1])
    finally:
        for handle in handles:
            handle.remove()
    return snapshots


def convert_observed(model: nn.Module, observed: Mapping[str, tuple], config: StaticConfig,
                     modules: Sequence[str]) -> tuple[nn.Module, QuantReport]:
    """``prepare_static`` the named Linears, load the given observers, ``convert_static``."""
    prepared = prepare_static(model, config, modules=modules)
    kind = type(make_observer(config.observer))
    for name in modules:
        if name not in observed:
            raise ValueError(f"no observers for {name!r}: observe_linears(...) must watch every "
                             "module in modules")
        if type(observed[name][0]) is not kind:
            raise ValueError(f"observers for {name!r} are {type(observed[name][0]).__name__}, "
                             f"but config.observer={config.observer!r} needs {kind.__name__}")
        wrapper = prepared.get_submodule(name)
        wrapper.quant.activation_post_process = copy.deepcopy(observed[name][0])
        wrapper.module.activation_post_process = copy.deepcopy(observed[name][1])
    return convert_static(prepared)


@dataclass(frozen=True)
class GridPoint:
    """Quality of one static int8 model of the calibration grid."""

    observer: str
    n_batches: int
    targets: str
    pearson: float
    cosine_mean: float  # mean cosine between this model's embeddings and the float ones
    cosine_min: float


def quality_grid(model: nn.Module, snapshots: Mapping, choices: Mapping[str, Sequence[str]],
                 evaluate: Callable[[nn.Module], Mapping], keep: Sequence[tuple] = ()
                 ) -> tuple[list[GridPoint], dict[tuple, nn.Module]]:
    """Convert and score every (observer, batches) snapshot for every target choice.

    Args:
        snapshots: the output of :func:`observe_linears`.
        choices: target label -> Linear names, e.g. from :func:`target_choices`.
        evaluate: model -> ``{"pearson", "cosine_mean", "cosine_min"}``.
        keep: ``(observer, n_batches, target label)`` keys whose models to return too.

    Returns:
        ``(points, kept)``: one :class:`GridPoint` per combination, and the kept models.
    """
    points, kept = [], {}
    for (observer, n), observed in snapshots.items():
        for label, names in choices.items():
            quantized, _ = convert_observed(model, observed, StaticConfig(observer=observer),
                                            names)
            scores = evaluate(quantized)
            points.append(GridPoint(observer, n, label, float(scores["pearson"]),
                                    float(scores["cosine_mean"]), float(scores["cosine_min"])))
            if (observer, n, label) in keep:
                kept[observer, n, label] = quantized
    return points, kept


def plot_calibration_sweep(points: Sequence[GridPoint], references: Mapping[str, float],
                           title: str) -> plt.Figure:
    """Cosine to float and Lee Pearson against calibration batches, one line per configuration.

    ``references`` maps a label (``"float"``, ``"dynamic int8"``) to a Pearson drawn as a line.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for observer in dict.fromkeys(p.observer for p in points):
        for targets in dict.fromkeys(p.targets for p in points):
            line = sorted((p for p in points if (p.observer, p.targets) == (observer, targets)),
                          key=lambda p: p.n_batches)
            style = dict(color=OBSERVER_COLORS.get(observer), marker="o",
                         ls=TARGET_STYLES.get(targets, ":"), label=f"{observer}, {targets}")
            x = [p.n_batches for p in line]
            axes[0].plot(x, [p.cosine_mean for p in line], **style)
            axes[1].plot(x, [p.pearson for p in line], **style)
    for (label, value), ls in zip(references.items(), (":", "-."), strict=False):
        axes[1].axhline(value, color="k", ls=ls, lw=1, label=label)
    for ax, ylabel in zip(axes, ("mean cosine to float embeddings", "Lee Pearson r"),
                          strict=True):
        ax.set_xlabel("calibration batches (4 articles each)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted({p.n_batches for p in points}))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=4, fontsize=8, frameon=False)
    return fig


def plot_activation_ranges(values: Mapping[str, torch.Tensor],
                           ranges: Mapping[str, Mapping[str, ObservedRange]],
                           title: str) -> plt.Figure:
    """Log-count histograms of activations with each observer's range drawn as two lines."""
    rows = (len(values) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(10, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(values):]:
        ax.set_visible(False)
    for ax, (label, x) in zip(axes.flat, values.items(), strict=False):
        ax.hist(x.flatten().numpy(), bins=200, color="0.6", log=True)
        for observer, r in ranges[label].items():
            ax.axvline(r.low, color=OBSERVER_COLORS.get(observer), lw=1.2)
            ax.axvline(r.high, color=OBSERVER_COLORS.get(observer), lw=1.2,
                       label=f"{observer}: step {r.scale:.3g}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("activation value")
        ax.set_ylabel("count (log scale)")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _timed_kinds() -> dict[type, str]:
    from torch.ao.nn import quantized as nnq
    from torch.ao.nn.quantized import dynamic as nnqd

    return {nn.Linear: "float Linear", nnq.Linear: "int8 Linear",
            nnqd.Linear: "dynamic int8 Linear", nnq.Quantize: "quantize",
            nnq.DeQuantize: "dequantize"}


def time_breakdown(calls: Mapping[str, tuple[nn.Module, Callable[[], object]]],
                   repeats: int = 5, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Milliseconds per call spent in each kind of module, and in everything else.

    Module hooks time every float, int8 and dynamic Linear and every quantize and dequantize
    step; ``"float ops"`` is the rest of the call (LayerNorm, GELU, softmax, attention
    matmuls, residual adds, embeddings), ``"total"`` the whole call. Each round calls every
    entry once, in order (as :func:`quantbook.measure.compare_latency` does), and each number
    is the median over ``repeats`` rounds.

    Args:
        calls: label -> ``(model, fn)``: ``fn()`` runs ``model`` once.

    Returns:
        label -> {kind: ms}, kinds that never ran left out.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}: need repeats >= 1, warmup >= 0")
    kinds = _timed_kinds()
    spent = {label: dict.fromkeys(kinds.values(), 0) for label in calls}
    starts: dict[int, int] = {}
    handles = []

    def start(module, _args):
        starts[id(module)] = perf_counter_ns()

    def stopper(parts: dict[str, int]) -> Callable:
        def stop(module, _args, _output):
            parts[kinds[type(module)]] += perf_counter_ns() - starts[id(module)]
        return stop

    for label, (model, _) in calls.items():
        stop = stopper(spent[label])
        for module in model.modules():
            if type(module) in kinds:
                handles += [module.register_forward_pre_hook(start),
                            module.register_forward_hook(stop)]
    rounds = {label: [] for label in calls}
    try:
        with torch.inference_mode(), quiet_torch_ao():
            for round_ in range(warmup + repeats):
                for label, (_, fn) in calls.items():
                    spent[label].update(dict.fromkeys(spent[label], 0))
                    begin = perf_counter_ns()
                    fn()
                    total = perf_counter_ns() - begin
                    if round_ >= warmup:
                        parts = {k: ns for k, ns in spent[label].items() if ns}
                        rounds[label].append({**parts, "float ops": total - sum(parts.values()),
                                              "total": total})
    finally:
        for handle in handles:
            handle.remove()
    return {label: {k: float(np.median([r[k] for r in rs])) / 1e6 for k in rs[0]}
            for label, rs in rounds.items()}


BREAKDOWN_COLORS = {"float Linear": "C0", "dynamic int8 Linear": "#98df8a", "int8 Linear": "C2",
                    "quantize": "C3", "dequantize": "C1", "float ops": "0.7"}


def plot_time_breakdown(breakdowns: Mapping[str, Mapping[str, float]], title: str) -> plt.Figure:
    """One horizontal stacked bar per model: where the milliseconds of a forward pass go."""
    fig, ax = plt.subplots(figsize=(8, 0.7 * len(breakdowns) + 1.6))
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
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(loc="lower center", ncols=6, fontsize=8, frameon=False)
    return fig


def point_figure(point: GridPoint, latency_ms: Mapping[str, float],
                 references: Mapping[str, Mapping[str, float]]) -> plt.Figure:
    """Quality and latency of one grid point beside the reference models.

    Args:
        point: the static configuration to show.
        latency_ms: target label -> median latency of static models with those targets.
        references: label -> ``{"pearson", "cosine_mean", "latency_ms"}``, e.g. float, dynamic.
    """
    rows = {**references, "this static": {"pearson": point.pearson,
                                          "cosine_mean": point.cosine_mean,
                                          "latency_ms": latency_ms[point.targets]}}
    colors = [*(["0.6"] * len(references)), "C3"]
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.6))
    for ax, key, label in zip(axes, ("pearson", "cosine_mean", "latency_ms"),
                              ("Lee Pearson r", "cosine to float", "latency (ms)"), strict=True):
        values = [r[key] for r in rows.values()]
        ax.barh(range(len(rows)), values, color=colors)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.3f}" if key != "latency_ms" else f" {v:.0f}", va="center",
                    fontsize=8)
        ax.set_yticks(range(len(rows)), list(rows) if key == "pearson" else [])
        ax.invert_yaxis()
        ax.set_xlim(min(0.5, min(values) - 0.05) if key != "latency_ms" else 0,
                    max(values) * (1.25 if key == "latency_ms" else 1.08))
        ax.set_xlabel(label)
    fig.suptitle(f"{point.observer} observer, {point.n_batches} batch(es), {point.targets}: "
                 f"cosine {point.cosine_mean:.3f}", fontsize=10)
    fig.tight_layout()
    return fig


def _grid_index(points: Sequence[GridPoint]) -> dict[tuple, GridPoint]:
    if not points:
        raise ValueError("points is empty: compute them with quality_grid(...)")
    return {(p.observer, p.n_batches, p.targets): p for p in points}


def explorer(points: Sequence[GridPoint], latency_ms: Mapping[str, float],
             references: Mapping[str, Mapping[str, float]]) -> widgets.VBox:
    """Live explorer: observer, calibration batches and targets -> quality and latency.

    Every point was computed beforehand by :func:`quality_grid`; a change only draws (then
    caches) one figure. The box's ``image`` attribute is the ``Image`` on show.
    """
    index = _grid_index(points)
    observers, batches, targets = (list(dict.fromkeys(k[i] for k in index)) for i in range(3))
    cache: dict[tuple, bytes] = {}
    style = {"description_width": "initial"}
    pick_observer = widgets.ToggleButtons(options=observers, value=observers[-1],
                                          description="observer", style=style)
    pick_batches = widgets.SelectionSlider(options=sorted(batches), value=max(batches),
                                           description="calibration batches", style=style)
    pick_targets = widgets.ToggleButtons(options=targets, value=targets[-1],
                                         description="targets", style=style)
    controls = (pick_observer, pick_batches, pick_targets)

    def png() -> bytes:
        key = tuple(c.value for c in controls)
        if key not in cache:
            cache[key] = figure_png(point_figure(index[key], latency_ms, references))
        return cache[key]

    image = widgets.Image(value=png(), format="png", layout=widgets.Layout(width="720px"))

    def update(_change=None) -> None:
        image.value = png()

    for control in controls:
        control.observe(update, names="value")
    box = widgets.VBox([*controls, image])
    box.image = image
    return box


def static_explorer(points: Sequence[GridPoint], latency_ms: Mapping[str, float],
                    references: Mapping[str, Mapping[str, float]]) -> widgets.VBox:
    """Kernel-free explorer: one slider over every grid point, precomputed images."""
    index = _grid_index(points)
    keys = sorted(index, key=lambda k: (k[2], k[0], k[1]))
    views = [image_view(point_figure(index[k], latency_ms, references), width_px=720)
             for k in keys]
    labels = [f"{t}, {o}, {n} batch{'es' if n > 1 else ''}" for o, n, t in keys]
    return linked_views(labels, views, "configuration")
