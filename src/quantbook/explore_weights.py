"""Chapter 03 helpers: weight-only settings, their sizes, figures and explorers.

The quantization is :func:`quantbook.methods.weight_only.quantize_weight_only`, run through the
one sweep engine, :class:`quantbook.sweep.Sweep`, which shares packed modules between settings
(the attention layers packed at 4 bits for "attention + ffn" serve "attention" alone too) and
keeps one :class:`~quantbook.records.BenchRecord` per setting. This module names the settings,
builds the chapter's sweeps and turns their records into tables, figures and explorers.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
from torch import nn

from quantbook import gpt, kit, measure
from quantbook.kit import FIGURE_WIDTH_IN
from quantbook.methods import WeightOnlyConfig
from quantbook.methods.weight_only import predicted_size_bytes
from quantbook.records import BenchRecord
from quantbook.sweep import Sweep, Workload
from quantbook.targets import GROUPS
from quantbook.widgets import linked_views, row_layout

BITS = (8, 6, 4, 3, 2)
DEFAULT_TARGETS = WeightOnlyConfig().targets  # attention + ffn
# (label, granularity, group_size) choices of the explorer and of the granularity section
GRANULARITY_CHOICES = (("per channel", "channel", None), ("group 64", "group", 64),
                       ("group 32", "group", 32))
MB = 1e6  # sizes are shown in megabytes (10^6 bytes)


def make_config(bits: int, targets: Sequence[str] = DEFAULT_TARGETS,
                granularity: str = "channel", group_size: int | None = None) -> WeightOnlyConfig:
    """A symmetric, min-max :class:`WeightOnlyConfig`; ``group_size`` only for "group"."""
    return WeightOnlyConfig(bits=bits, granularity=granularity, targets=tuple(targets),
                            group_size=group_size if granularity == "group" else None)


def config_label(config: WeightOnlyConfig) -> str:
    """The chapter's label of a setting, e.g. ``"int4 group32, attention + ffn"``."""
    how = {"tensor": "per tensor", "channel": "per channel"}.get(
        config.granularity, f"group{config.group_size}")
    scheme = " asymmetric" if config.scheme == "asymmetric" else ""
    return f"int{config.bits} {how}{scheme}, {' + '.join(config.targets)}"


def weight_sweep(workload: Workload, share: Sweep | None = None) -> Sweep:
    """A :class:`Sweep` over ``workload`` whose packed Linear layers dequantize only once.

    A ``PackedLinear`` unpacks its codes at every call; a sweep makes many calls with the same
    weights (one per sampled character), so its layers keep the dequantized weight (a float
    copy in memory, not in the ``state_dict``; ``Sweep(..., cache_weights=True)``).

    Args:
        workload: the float model, its metric and its evaluation.
        share: a sweep of the same model whose packed modules this one reuses (and adds to).
    """
    if share is not None and share.workload.model is not workload.model:
        raise ValueError("share sweeps another model: packed modules can only be shared "
                         "between sweeps of the same float model")
    return Sweep(workload, packed=None if share is None else share.packed, cache_weights=True)


def record(sweep: Sweep, config: WeightOnlyConfig) -> BenchRecord:
    """``sweep``'s record of ``config`` labelled :func:`config_label` (measured once)."""
    return sweep.record(config, config_label(config))


def size_rows(sweep: Sweep, target_sets: Mapping[str, Sequence[str]],
              bits: Sequence[int] = BITS) -> list[dict]:
    """Measured and calculated bytes, float32 first, then per set of groups and bit width.

    Each row holds ``label`` (the set's name), ``bits``, ``config`` (``None`` for float32),
    ``size_bytes`` (measured by :func:`quantbook.measure.size_bytes` on the sweep's model, as
    its records are, but without evaluating it), ``predicted_size_bytes`` (calculated from
    shapes, tensor data only), ``header_bytes`` (the difference) and ``smaller`` (float32 bytes
    over measured bytes). Settings are per channel.
    """
    model = sweep.workload.model
    float_bytes = measure.size_bytes(model)

    def row(label: str, b: int, config: WeightOnlyConfig | None, size: int, predicted: int):
        return {"label": label, "bits": b, "config": config, "size_bytes": size,
                "predicted_size_bytes": predicted, "header_bytes": size - predicted,
                "smaller": float_bytes / size}

    rows = [row("none (float32)", 32, None, float_bytes, measure.tensor_bytes(model))]
    for label, targets in target_sets.items():
        for b in bits:
            config = make_config(b, targets)
            rows.append(row(label, b, config, sweep.size_bytes(config),
                            predicted_size_bytes(model, config)))
    return rows


def size_table(rows: Sequence[Mapping]) -> kit.Table:
    """:func:`size_rows` as a table: measured and calculated bytes, headers, compression."""
    return kit.table(rows, {"label": "groups quantized", "bits": "bits",
                            "size_bytes": "measured (bytes)",
                            "predicted_size_bytes": "calculated (bytes)",
                            "header_bytes": "headers (bytes)", "smaller": "smaller"},
                     formats={"smaller": lambda v: f"{v:.2f}x"})


def bits_table(values: Mapping[str, Sequence[float] | Mapping[int, float]],
               bits: Sequence[int] = BITS, digits: int = 3, header: str = "groups quantized",
               caption: str = "") -> kit.Table:
    """One row per label, one column per bit width: what :func:`plot_vs_bits` draws.

    Args:
        values: label -> values in ``bits`` order, or label -> {bits: value} (a missing bit
            width shows as an empty cell).
    """
    rows = []
    for label, row in values.items():
        if not isinstance(row, Mapping) and len(row) != len(bits):
            raise ValueError(f"values[{label!r}] holds {len(row)} values for bits={tuple(bits)}: "
                             "give one per bit width, or a dict bits -> value")
        cells = row if isinstance(row, Mapping) else dict(zip(bits, row, strict=True))
        rows.append({"label": label, **{f"{b} bits": cells.get(b) for b in bits}})
    return kit.table(rows, {"label": header, **{f"{b} bits": f"{b} bits" for b in bits}},
                     formats={f"{b} bits": f".{digits}f" for b in bits}, caption=caption)


def gpt_quality(val_ids: Sequence[int], block_size: int,
                n_windows: int | None = None) -> Callable[[nn.Module], float]:
    """``model -> perplexity`` on the validation ids (the first ``n_windows`` windows only)."""
    if n_windows is not None:
        if isinstance(n_windows, bool) or not isinstance(n_windows, int) or n_windows < 1:
            raise ValueError(f"n_windows={n_windows!r}: expected a positive integer, or None "
                             "for the whole validation split")
        val_ids = val_ids[: n_windows * block_size + 1]  # n_windows full windows
    return lambda model: gpt.perplexity(model, val_ids, block_size)["perplexity"]


def _finish(ax: plt.Axes, reference: float | None, logy: bool, outside: bool = False) -> None:
    """A dashed float reference, a log y axis labelled at 1, 2 and 5 x 10^n, the legend (beside
    the axes with ``outside``, where it cannot cover a bar)."""
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label="float")
    if logy:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    if outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.legend()


def plot_vs_bits(curves: Mapping[str, Sequence[float]], ylabel: str, title: str,
                 reference: float | None = None, bits: Sequence[int] = BITS,
                 logy: bool = False, ax: plt.Axes | None = None) -> plt.Figure:
    """One line per curve over the bit widths; an optional dashed float reference."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN, 4)) if ax is None else (ax.figure, ax)
    for i, (label, values) in enumerate(curves.items()):
        ax.plot(bits, values, "o-", color=f"C{i}", label=label)
    ax.set(xlabel="bit width (bits)", ylabel=ylabel, title=title, xticks=sorted(bits))
    ax.grid(alpha=0.3)
    _finish(ax, reference, logy)
    return fig


def plot_group_bars(values: Mapping[str, Mapping[int, float]], ylabel: str, title: str,
                    reference: float | None = None, logy: bool = False,
                    ax: plt.Axes | None = None) -> plt.Figure:
    """Grouped bars: one group of bars per module group, one bar per bit width; the legend
    stands beside the axes."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN - 1.0, 4)) if ax is None else (ax.figure, ax)
    groups = list(values)
    bits = sorted({b for row in values.values() for b in row}, reverse=True)
    width = 0.8 / len(bits)
    for k, b in enumerate(bits):
        xs = [i + (k - (len(bits) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [values[g].get(b, float("nan")) for g in groups], width, label=f"{b} bits",
               color=f"C{k}")
    ax.set_xticks(range(len(groups)), groups)
    ax.set(xlabel="the one module group quantized", ylabel=ylabel, title=title)
    _finish(ax, reference, logy, outside=True)
    return fig


def view_html(record: BenchRecord, reference: BenchRecord, sample: str,
              quality_label: str) -> str:
    """HTML for one setting: size against float, quality against float, a text sample."""
    ratio = reference.size_bytes / record.size_bytes
    return (
        f"<b>{html.escape(record.method)}</b><br>"
        f"size {record.size_bytes / MB:.3f} MB, {ratio:.2f}x smaller than float "
        f"({reference.size_bytes / MB:.3f} MB)<br>"
        f"{html.escape(quality_label)} {record.value:.3f} (float {reference.value:.3f})<br>"
        f"<pre style='white-space: pre-wrap'>{html.escape(sample)}</pre>"
    )


def _view(sweep: Sweep, config: WeightOnlyConfig, samples: dict, tokenizer, quality_label: str,
          prompt: str, n_chars: int, seed: int) -> str:
    """The view of one setting; its sample (seeded) is kept in ``samples`` by config."""
    if config not in samples:
        samples[config] = gpt.sample(sweep.quantized(config), tokenizer, prompt, n_chars,
                                     seed=seed)
    return view_html(record(sweep, config), sweep.float_record(), samples[config],
                     quality_label)


def explorer(sweep: Sweep, tokenizer, quality_label: str, prompt: str = "The ",
             n_chars: int = 80, seed: int = 0, bits: int = 4,
             targets: Sequence[str] = DEFAULT_TARGETS, granularity: int = 0) -> widgets.VBox:
    """Live explorer for a GPT sweep: bit width (buttons from 2 up to 8), module groups and
    granularity controls.

    Each change shows the setting's record from ``sweep`` (as ``box.record``) and ``n_chars``
    characters sampled from the quantized GPT with a fixed seed (kept in ``box.samples``).
    ``granularity`` indexes :data:`GRANULARITY_CHOICES`. Needs a running kernel.
    """
    bits_buttons = widgets.ToggleButtons(options=[(str(b), b) for b in sorted(BITS)],
                                         value=bits, description="bits",
                                         style={"button_width": "48px"}, layout=row_layout())
    group_buttons = [widgets.ToggleButton(value=g in targets, description=g) for g in GROUPS]
    gran_buttons = widgets.ToggleButtons(
        options=[(label, k) for k, (label, _, _) in enumerate(GRANULARITY_CHOICES)],
        value=granularity, description="granularity", layout=row_layout())
    view = widgets.HTML()
    groups_label = widgets.Label("groups", layout=widgets.Layout(width="90px"))
    box = widgets.VBox([bits_buttons,
                        widgets.HBox([groups_label, *group_buttons], layout=row_layout()),
                        gran_buttons, view])
    box.samples, box.record = {}, None

    def render(_change: object = None) -> None:
        chosen = [button.description for button in group_buttons if button.value]
        if not chosen:
            view.value = "<i>Choose at least one module group.</i>"
            return
        _, how, group_size = GRANULARITY_CHOICES[gran_buttons.value]
        config = make_config(bits_buttons.value, chosen, how, group_size)
        view.value = _view(sweep, config, box.samples, tokenizer, quality_label, prompt,
                           n_chars, seed)
        box.record = record(sweep, config)

    for control in (bits_buttons, gran_buttons, *group_buttons):
        control.observe(render, names="value")
    render()
    return box


def static_explorer(sweep: Sweep, tokenizer, quality_label: str, prompt: str = "The ",
                    n_chars: int = 80, seed: int = 0, bits: Sequence[int] = BITS,
                    targets: Sequence[str] = DEFAULT_TARGETS, granularity: str = "channel",
                    group_size: int | None = None, start_bits: int = 8) -> widgets.VBox:
    """Kernel-free explorer: a bit-width slider over precomputed HTML views (one setting each).

    The slider runs over ``bits`` in ascending order (2 up to 8, as in every chapter) and starts
    at ``start_bits`` (one of them). The box's ``records`` attribute holds the record behind each
    view, in slider order.
    """
    bits = sorted(bits)
    if start_bits not in bits:
        raise ValueError(f"start_bits={start_bits!r} is not one of bits={bits}: start at a bit "
                         "width the slider offers")
    configs = [make_config(b, targets, granularity, group_size) for b in bits]
    views = [widgets.HTML(_view(sweep, config, {}, tokenizer, quality_label, prompt, n_chars,
                                seed)) for config in configs]
    box = linked_views([f"{b} bits" for b in bits], views, "bit width",
                       start=bits.index(start_bits))
    box.records = [record(sweep, config) for config in configs]
    return box
