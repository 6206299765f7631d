"""Chapter 03 helpers: weight-only sweeps over bits, groups and granularity, figures, explorer.

The quantization itself is :func:`quantbook.methods.weight_only.quantize_weights`. A sweep
quantizes the same model many times, so :class:`WeightSweep` keeps every packed module it builds,
keyed by ``(module name, QuantSpec)``, and assembles each quantized model from them: the
attention layers packed at 4 bits for "attention + ffn" are reused for "attention" alone. Each
:class:`Measurement` is cached too, keyed by its :class:`WeightOnlyConfig`, so a setting is
measured once per sweep.
"""

import copy
import html
import itertools
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
from torch import nn

from quantbook import gpt
from quantbook.explore_math import storage_bytes
from quantbook.measure import size_bytes
from quantbook.methods.weight_only import (
    DEFAULT_TARGETS,
    PackedEmbedding,
    PackedLinear,
    WeightOnlyConfig,
    select_modules,
)
from quantbook.targets import GROUPS
from quantbook.widgets import linked_views

BITS = (8, 6, 4, 3, 2)
# (label, granularity, group_size) choices of the explorer
GRANULARITIES = (("per channel", "channel", None), ("group 64", "group", 64),
                 ("group 32", "group", 32))
MB = 1e6  # sizes are shown in megabytes (10^6 bytes)


def make_config(bits: int, targets: Sequence[str] = DEFAULT_TARGETS,
                granularity: str = "channel", group_size: int | None = None) -> WeightOnlyConfig:
    """A symmetric, min-max :class:`WeightOnlyConfig`; ``group_size`` only for "group"."""
    return WeightOnlyConfig(bits=bits, granularity=granularity, targets=tuple(targets),
                            group_size=group_size if granularity == "group" else None)


def describe(config: WeightOnlyConfig) -> str:
    """Short label, e.g. ``"int4 group32, attention + ffn"``."""
    how = "per channel" if config.granularity == "channel" else config.granularity
    if config.granularity == "group":
        how = f"group{config.group_size}"
    return f"int{config.bits} {how}, {' + '.join(config.targets)}"


def state_dict_nbytes(model: nn.Module) -> int:
    """Bytes of tensor data in ``model.state_dict()``: what ``size_bytes`` saves, minus headers."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def predicted_size_bytes(model: nn.Module, config: WeightOnlyConfig) -> int:
    """Calculate, from the float model's shapes alone, the tensor bytes of its quantized copy.

    Every weight that ``config`` converts costs its packed codes plus one float32 scale per
    slice (and a one-byte zero point when asymmetric, see
    :func:`quantbook.explore_math.storage_bytes`); every other entry of the ``state_dict``
    keeps its size. Example: the book's GPT holds 786,432 attention and FFN weights in 24
    matrices with 4,608 rows in all; at 4 bits per channel they take
    ``786,432 / 2 + 4,608 * 4 = 411,648`` bytes instead of ``786,432 * 4``.
    """
    converted = set(select_modules(model, config)[0])
    spec = config.spec()
    total = 0
    for key, tensor in model.state_dict().items():
        module_name, _, attr = key.rpartition(".")
        if module_name in converted and attr == "weight":
            total += storage_bytes(tuple(tensor.shape), spec)
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def converted_weight_bytes(model: nn.Module, config: WeightOnlyConfig) -> tuple[int, int]:
    """``(float32 bytes, quantized bytes)`` of just the weights that ``config`` converts.

    Their ratio is the compression of the quantized layers alone, e.g. about 3.98 for int8 per
    channel on 128-wide rows: 512 bytes become 128 codes plus a 4-byte scale.
    """
    spec = config.spec()
    weights = [model.get_submodule(name).weight for name in select_modules(model, config)[0]]
    return (sum(4 * w.numel() for w in weights),
            sum(storage_bytes(tuple(w.shape), spec) for w in weights))


@dataclass(frozen=True)
class Measurement:
    """Size and quality of one model (``config`` is ``None`` for the float model)."""

    config: WeightOnlyConfig | None
    size_bytes: int  # measured: the length of torch.save(model.state_dict())
    predicted_size_bytes: int  # calculated from shapes: tensor data only, no file headers
    quality: Mapping[str, float | str]  # whatever the sweep's evaluate returned


class WeightSweep:
    """Quantize one model under many configs, sharing packed modules and caching measurements.

    Args:
        model: the float model (quantbook's GPT or MiniLM); it is never modified.
        evaluate: ``model -> {name: value}``, e.g. :func:`gpt_quality`.
        packed: a dict of packed modules to share with another sweep of the same model
            (``other.packed``); ``None`` starts an empty one.
        cache_weights: packed Linear layers keep their dequantized weight after the first call
            (faster generation; a float copy in memory, never in the ``state_dict``).
    """

    def __init__(self, model: nn.Module, evaluate: Callable[[nn.Module], Mapping],
                 packed: dict | None = None, cache_weights: bool = False) -> None:
        if not callable(evaluate):
            raise TypeError(f"evaluate is a {type(evaluate).__name__}: expected a callable "
                            "model -> dict, such as gpt_quality(val_ids, block_size)")
        self.model, self.evaluate, self.cache_weights = model, evaluate, cache_weights
        self.packed = {} if packed is None else packed  # (name, QuantSpec) -> packed module
        self.results: dict[Hashable, Measurement] = {}  # config (None: float) -> Measurement
        self._sizes: dict[WeightOnlyConfig, tuple[int, int]] = {}

    def quantized(self, config: WeightOnlyConfig) -> nn.Module:
        """A quantized copy of the model, equal to ``quantize_weights(model, config)[0]``.

        Float tensors are shared with the float model (not copied); converted modules come from
        :attr:`packed`, built on first use.
        """
        if not isinstance(config, WeightOnlyConfig):
            raise TypeError(f"config is a {type(config).__name__}: expected a WeightOnlyConfig, "
                            "e.g. make_config(4)")
        converted, _ = select_modules(self.model, config)
        spec = config.spec()
        tensors = itertools.chain(self.model.parameters(), self.model.buffers())
        copied = copy.deepcopy(self.model, memo={id(t): t for t in tensors})
        for name in converted:
            key = (name, spec)
            if key not in self.packed:
                module = self.model.get_submodule(name)
                self.packed[key] = (
                    PackedLinear.from_linear(module, spec, cache_weight=self.cache_weights)
                    if isinstance(module, nn.Linear)
                    else PackedEmbedding.from_embedding(module, spec))
            parent, _, child = name.rpartition(".")
            setattr(copied.get_submodule(parent), child, self.packed[key])
        return copied

    def reference(self) -> Measurement:
        """The float model's measurement (cached)."""
        if None not in self.results:
            self.results[None] = Measurement(None, size_bytes(self.model),
                                             state_dict_nbytes(self.model),
                                             dict(self.evaluate(self.model)))
        return self.results[None]

    def size(self, config: WeightOnlyConfig) -> tuple[int, int]:
        """``(measured, predicted)`` bytes of the quantized model, without evaluating it."""
        if config in self.results:
            m = self.results[config]
            return m.size_bytes, m.predicted_size_bytes
        if config not in self._sizes:
            measured = size_bytes(self.quantized(config))
            self._sizes[config] = measured, predicted_size_bytes(self.model, config)
        return self._sizes[config]

    def measure(self, config: WeightOnlyConfig) -> Measurement:
        """Quantize with ``config``, measure size and quality (cached by config)."""
        if config not in self.results:
            measured, predicted = self.size(config)
            quality = dict(self.evaluate(self.quantized(config)))
            self.results[config] = Measurement(config, measured, predicted, quality)
        return self.results[config]

    def run(self, configs: Sequence[WeightOnlyConfig]) -> list[Measurement]:
        """:meth:`measure` each config, in order."""
        return [self.measure(config) for config in configs]


def size_table(sweep: WeightSweep, target_sets: Mapping[str, Sequence[str]],
               bits: Sequence[int] = BITS) -> str:
    """Measured and calculated bytes per target set and bit width (per channel), as text."""
    float_bytes = size_bytes(sweep.model)
    lines = [f"{'targets':20s} {'bits':>4s} {'measured B':>12s} {'calculated B':>12s} "
             f"{'headers B':>9s} {'smaller':>7s}",
             f"{'none (float32)':20s} {32:4d} {float_bytes:12,} "
             f"{state_dict_nbytes(sweep.model):12,} "
             f"{float_bytes - state_dict_nbytes(sweep.model):9,} {1:6.2f}x"]
    for label, targets in target_sets.items():
        for b in bits:
            measured, calculated = sweep.size(make_config(b, targets))
            lines.append(f"{label:20s} {b:4d} {measured:12,} {calculated:12,} "
                         f"{measured - calculated:9,} {float_bytes / measured:6.2f}x")
    return "\n".join(lines)


def gpt_quality(val_ids: Sequence[int], block_size: int,
                n_windows: int | None = None) -> Callable[[nn.Module], dict]:
    """``model -> {"perplexity": float}`` on the validation ids (the first ``n_windows`` only)."""
    if n_windows is not None:
        if not isinstance(n_windows, int) or n_windows < 1:
            raise ValueError(f"n_windows={n_windows!r}: expected a positive integer, or None "
                             "for the whole validation split")
        val_ids = val_ids[: n_windows * block_size + 1]  # n_windows full windows
    return lambda model: {"perplexity": gpt.perplexity(model, val_ids, block_size)["perplexity"]}


def minilm_quality(tokenizer, reference: torch.Tensor) -> Callable[[nn.Module], dict]:
    """``model -> {"pearson", "spearman", "cosine_mean", "cosine_min"}`` on the 50 Lee articles.

    ``reference`` holds the float model's (50, 384) embeddings.
    """
    from quantbook.evaluate import evaluate_minilm

    keys = ("pearson", "spearman", "cosine_mean", "cosine_min")

    def evaluate(model: nn.Module) -> dict:
        result = evaluate_minilm(model, tokenizer, reference=reference)
        return {key: result[key] for key in keys}

    return evaluate


def _log_y(ax: plt.Axes) -> None:
    """Log-scaled y axis labelled with plain numbers at 1, 2 and 5 times powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_vs_bits(curves: Mapping[str, Sequence[float]], ylabel: str, title: str,
                 reference: float | None = None, bits: Sequence[int] = BITS,
                 logy: bool = False, ax: plt.Axes | None = None) -> plt.Figure:
    """One line per curve over the bit widths; an optional dashed float reference."""
    fig, ax = plt.subplots(figsize=(7, 4)) if ax is None else (ax.figure, ax)
    for i, (label, values) in enumerate(curves.items()):
        ax.plot(bits, values, "o-", color=f"C{i}", label=label)
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label="float")
    ax.set(xlabel="bit width (bits)", ylabel=ylabel, title=title, xticks=sorted(bits))
    if logy:
        _log_y(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_group_bars(values: Mapping[str, Mapping[int, float]], ylabel: str, title: str,
                    reference: float | None = None, logy: bool = False,
                    ax: plt.Axes | None = None) -> plt.Figure:
    """Grouped bars: one group of bars per module group, one bar per bit width."""
    fig, ax = plt.subplots(figsize=(7, 4)) if ax is None else (ax.figure, ax)
    groups = list(values)
    bits = sorted({b for row in values.values() for b in row}, reverse=True)
    width = 0.8 / len(bits)
    for k, b in enumerate(bits):
        xs = [i + (k - (len(bits) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [values[g].get(b, float("nan")) for g in groups], width, label=f"{b} bits",
               color=f"C{k}")
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label="float")
    ax.set_xticks(range(len(groups)), groups)
    ax.set(xlabel="the one module group quantized", ylabel=ylabel, title=title)
    if logy:
        _log_y(ax)
    ax.legend(fontsize=8)
    return fig


def view_html(measurement: Measurement, reference: Measurement, sample: str,
              quality_label: str) -> str:
    """HTML for one setting: size against float, perplexity against float, a text sample."""
    ratio = reference.size_bytes / measurement.size_bytes
    title = "float32" if measurement.config is None else describe(measurement.config)
    return (
        f"<b>{html.escape(title)}</b><br>"
        f"size {measurement.size_bytes / MB:.3f} MB, {ratio:.2f}x smaller than float "
        f"({reference.size_bytes / MB:.3f} MB)<br>"
        f"{html.escape(quality_label)} {measurement.quality['perplexity']:.3f} "
        f"(float {reference.quality['perplexity']:.3f})<br>"
        f"<pre style='white-space: pre-wrap'>{html.escape(sample)}</pre>"
    )


def _sample(sweep: WeightSweep, config: WeightOnlyConfig, tokenizer, prompt: str,
            n_chars: int, seed: int) -> str:
    return gpt.sample(sweep.quantized(config), tokenizer, prompt, n_chars, seed=seed)


def explorer(sweep: WeightSweep, tokenizer, quality_label: str, prompt: str = "The ",
             n_chars: int = 80, seed: int = 0, bits: int = 4,
             targets: Sequence[str] = DEFAULT_TARGETS, granularity: int = 0) -> widgets.VBox:
    """Live explorer for a GPT sweep: bit width, module groups and granularity controls.

    Each change measures the setting with ``sweep`` (cached) and samples ``n_chars`` characters
    from the quantized GPT with a fixed seed (cached in the box's ``samples`` dict). The box's
    ``measurement`` attribute holds the :class:`Measurement` on show. ``granularity`` indexes
    :data:`GRANULARITIES`. Needs a running kernel.
    """
    bits_buttons = widgets.ToggleButtons(options=[(str(b), b) for b in BITS], value=bits,
                                         description="bits", style={"button_width": "48px"})
    group_buttons = [widgets.ToggleButton(value=g in targets, description=g) for g in GROUPS]
    gran_buttons = widgets.ToggleButtons(
        options=[(label, k) for k, (label, _, _) in enumerate(GRANULARITIES)],
        value=granularity, description="granularity")
    view = widgets.HTML()
    groups_label = widgets.Label("groups", layout=widgets.Layout(width="90px"))
    box = widgets.VBox([bits_buttons, widgets.HBox([groups_label, *group_buttons]),
                        gran_buttons, view])
    box.samples, box.measurement = {}, None

    def render(_change: object = None) -> None:
        chosen = [button.description for button in group_buttons if button.value]
        if not chosen:
            view.value = "<i>Choose at least one module group.</i>"
            return
        _, how, group_size = GRANULARITIES[gran_buttons.value]
        config = make_config(bits_buttons.value, chosen, how, group_size)
        box.measurement = sweep.measure(config)
        if config not in box.samples:
            box.samples[config] = _sample(sweep, config, tokenizer, prompt, n_chars, seed)
        view.value = view_html(box.measurement, sweep.reference(), box.samples[config],
                               quality_label)

    for control in (bits_buttons, gran_buttons, *group_buttons):
        control.observe(render, names="value")
    render()
    return box


def static_explorer(sweep: WeightSweep, tokenizer, quality_label: str, prompt: str = "The ",
                    n_chars: int = 80, seed: int = 0, bits: Sequence[int] = BITS,
                    targets: Sequence[str] = DEFAULT_TARGETS, granularity: str = "channel",
                    group_size: int | None = None) -> widgets.VBox:
    """Kernel-free explorer: a bit-width slider over precomputed HTML views (one setting each)."""
    views = []
    for b in bits:
        config = make_config(b, targets, granularity, group_size)
        text = _sample(sweep, config, tokenizer, prompt, n_chars, seed)
        views.append(widgets.HTML(view_html(sweep.measure(config), sweep.reference(), text,
                                            quality_label)))
    return linked_views([f"{b} bits" for b in bits], views, "bit width")
