"""Chapter 02 helpers: SQNR sweeps, the uniform-noise model, figures and the explorer.

The quantization itself lives in :mod:`quantbook.affine` and what its codes and scales take to
store in :func:`quantbook.packing.storage_bytes`; this module measures the error on real weight
matrices and draws what quantization does. Every quantizer here uses min-max ranges unless a
:class:`~quantbook.affine.QuantSpec` says otherwise.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from quantbook import affine, kit
from quantbook.kit import FIGURE_WIDTH_IN
from quantbook.widgets import (
    control_layout,
    figure_png,
    linked_views,
    png_view,
    row_layout,
    show_png,
)

BITS = tuple(range(2, 9))
DEFAULT_GROUP_SIZE = 32  # a common choice for 4-bit weights; divides every MiniLM width
DB_PER_BIT = 20 * math.log10(2)  # 6.02 dB: one more bit halves the step, quarters the noise
# MiniLM weight matrices the chapter studies: two tame ones, a heavy-tailed one, one with an outlier
MATRICES = (
    "encoder.layer.0.intermediate.dense.weight",
    "encoder.layer.0.attention.self.query.weight",
    "encoder.layer.5.intermediate.dense.weight",
    "encoder.layer.0.output.dense.weight",
)
# granularity -> its label in tables, legends and controls
GRANULARITY_LABELS = {"tensor": "per tensor", "channel": "per channel", "group": "per group"}


def weight_matrices(model: nn.Module, names: Sequence[str] = MATRICES) -> dict[str, torch.Tensor]:
    """Detached float32 copies of the named 2-D parameters of ``model``, in the order given."""
    params = dict(model.named_parameters())
    missing = [name for name in names if name not in params]
    if missing:
        raise ValueError(
            f"names={missing} are not parameters of the model: choose from its "
            f"named_parameters(), e.g. {next(iter(params), '<none>')!r}"
        )
    return {name: params[name].detach().float().clone() for name in names}


def make_spec(
    bits: int,
    scheme: str,
    granularity: str,
    group_size: int = DEFAULT_GROUP_SIZE,
    range_method: str = "minmax",
) -> affine.QuantSpec:
    """A :class:`QuantSpec` that passes ``group_size`` only where granularity is ``"group"``."""
    size = group_size if granularity == "group" else None
    return affine.QuantSpec(bits, scheme, granularity, group_size=size, range_method=range_method)


@dataclass(frozen=True)
class QuantError:
    """How far a fake-quantized tensor is from the original."""

    sqnr_db: float
    max_abs_error: float
    predicted_sqnr_db: float  # uniform-noise model; meaningful when the step is below the std


def predicted_sqnr_db(x: torch.Tensor, qparams: affine.QParams) -> float:
    """SQNR if every rounding error were uniform on ``±scale/2`` (variance ``scale² / 12``).

    Every slice has the same size, so the noise power is ``mean(scale²) / 12``. Clipped values
    add error this model ignores, so only min-max ranges are accepted. Example: a step of 0.1
    on data with mean square 1 predicts ``10 log10(1 / (0.01 / 12)) = 30.8`` dB.
    """
    if qparams.spec.range_method != "minmax":
        raise ValueError(
            f"range_method={qparams.spec.range_method!r} clips values, which the uniform-noise "
            "model ignores: use range_method='minmax'"
        )
    noise = float(qparams.scale.double().pow(2).mean()) / 12
    return 10 * math.log10(float(x.double().pow(2).mean()) / noise)


def measure(x: torch.Tensor, qparams: affine.QParams) -> QuantError:
    """Fake-quantize ``x`` with ``qparams`` and measure the error (max is over all elements)."""
    approx = affine.fake_quantize(x, qparams)
    minmax = qparams.spec.range_method == "minmax"
    predicted = predicted_sqnr_db(x, qparams) if minmax else math.nan
    max_abs = float((x.float() - approx).abs().max())
    return QuantError(affine.sqnr_db(x, approx), max_abs, predicted)


def quant_error(x: torch.Tensor, spec: affine.QuantSpec) -> QuantError:
    """Choose qparams for ``x`` following ``spec``, then :func:`measure` the error."""
    return measure(x, affine.choose_qparams(x, spec))


def error_sweep(x: torch.Tensor, scheme: str, granularity: str, bits: Sequence[int] = BITS,
                group_size: int = DEFAULT_GROUP_SIZE, range_method: str = "minmax",
                ) -> list[QuantError]:
    """:func:`quant_error` of ``x`` at each bit width in ``bits``."""
    return [quant_error(x, make_spec(b, scheme, granularity, group_size, range_method))
            for b in bits]


def fit_db_per_bit(bits: Sequence[int], sqnr_db: Sequence[float]) -> tuple[float, float]:
    """Least-squares line ``sqnr_db ≈ slope * bits + intercept``: returns ``(slope, intercept)``.

    Example: ``fit_db_per_bit([4, 8], [20.0, 44.0]) == (6.0, -4.0)``.
    """
    if len(bits) != len(sqnr_db) or len(set(bits)) < 2:
        raise ValueError(
            f"need at least two distinct bit widths and one SQNR per bit width, got "
            f"bits={list(bits)} and {len(sqnr_db)} SQNR values"
        )
    slope, intercept = np.polyfit(np.asarray(bits, float), np.asarray(sqnr_db, float), 1)
    return float(slope), float(intercept)


def offset_db(peak_to_rms: float, bits: int) -> float:
    """``SQNR - 6.02 * bits`` predicted for symmetric min-max quantization, in dB.

    With step ``2 * peak / (2**bits - 1)`` and noise ``step² / 12``, the SQNR is
    ``20 log10(2**bits - 1) + 10 log10(3) - 20 log10(peak / rms)``. Uniform data
    (``peak/rms = √3``) gives about 0, a full-scale sine (``√2``) the textbook +1.76 dB.
    """
    affine.check_bits(bits)
    if not peak_to_rms >= 1:
        raise ValueError(f"peak_to_rms={peak_to_rms!r} must be >= 1: the peak is at least the rms")
    levels_db = 20 * math.log10(2**bits - 1) - bits * DB_PER_BIT
    return levels_db + 10 * math.log10(3) - 20 * math.log10(peak_to_rms)


def plot_sqnr_vs_bits(curves: Mapping[str, Sequence[float]], title: str,
                      predicted: Mapping[str, Sequence[float]] | None = None,
                      bits: Sequence[int] = BITS) -> plt.Figure:
    """Measured SQNR per bit width (markers) and optional predictions (dashed, same colour)."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN, 4.2))
    for i, (label, values) in enumerate(curves.items()):
        ax.plot(bits, values, "o-", color=f"C{i}", label=label)
        if predicted and label in predicted:
            ax.plot(bits, predicted[label], "--", color=f"C{i}", alpha=0.7)
    if predicted:
        ax.plot([], [], "k--", alpha=0.7, label="uniform-noise model")
    ax.set(xlabel="bit width (bits)", ylabel="SQNR (dB)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_ranges(x: torch.Tensor, ranges: Mapping[str, tuple[float, float]], title: str,
                unit: str = "weight value") -> plt.Figure:
    """Histogram of ``x`` (log counts) with each range's ends as a pair of vertical lines; the
    legend sits under the axes."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN, 4.4), layout="constrained")
    ax.hist(x.flatten().numpy(), bins=400, color="0.6", log=True)
    for i, (label, (lo, hi)) in enumerate(ranges.items()):
        ax.axvline(lo, color=f"C{i}", ls="--", label=label)
        ax.axvline(hi, color=f"C{i}", ls="--")
    ax.set(xlabel=unit, ylabel="count (log scale)", title=title)
    # under the axes: inside, it hid the histogram's peak and the ranges' ends
    fig.legend(loc="outside lower center", ncols=1 if len(ranges) > 2 else len(ranges),
               frameon=False)
    return fig


def grid_slice(
    x: torch.Tensor, qparams: affine.QParams
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The slice of 2-D ``x`` whose grid the explorer draws, and that grid's levels.

    The slice holds the largest ``|x|``: the whole tensor, its row (channel), or its group.
    ``qparams`` come from ``affine.choose_qparams(x, spec)``.

    Returns:
        ``(values, levels, label)``: the slice's values (1-D), the dequantized value of every
        code (``2**bits`` levels, ascending) and a label such as ``"row 99"``.
    """
    spec = qparams.spec
    if x.ndim != 2 or (spec.granularity == "channel" and spec.axis not in (0, -2)):
        raise ValueError(
            f"x has shape {tuple(x.shape)}: the grid view needs a 2-D weight with channels "
            f"on axis 0, got axis={spec.axis}"
        )
    row, col = divmod(int(x.abs().argmax()), x.shape[1])
    codes = torch.arange(qparams.qmin, qparams.qmax + 1)
    if spec.granularity == "tensor":
        values, index, label = x.flatten(), (), "whole matrix"
    elif spec.granularity == "channel":
        values, index, label = x[row], (row,), f"row {row}"
    else:
        group = col // spec.group_size
        start = group * spec.group_size
        values, index = x[row, start : start + spec.group_size], (row, group)
        label = f"row {row}, columns {start}..{start + spec.group_size - 1}"
    levels = affine.dequantize_affine(codes, qparams.scale[index], qparams.zero_point[index])
    return values, levels, label


def plot_grid(x: torch.Tensor, spec: affine.QuantSpec, name: str) -> tuple[plt.Figure, QuantError]:
    """Histogram of one slice of ``x`` with its quantization grid drawn over it.

    Vertical lines mark the dequantized levels of the slice that holds the largest ``|x|``
    (see :func:`grid_slice`). The title counts the levels within two standard deviations of
    the matrix's mean (both over the whole matrix) and gives the error over the whole matrix.

    Returns:
        ``(figure, error)``, where ``error`` is the :class:`QuantError` of the whole matrix.
    """
    qparams = affine.choose_qparams(x, spec)
    error = measure(x, qparams)
    values, levels, label = grid_slice(x, qparams)
    mean, std = float(x.mean()), float(x.std())
    inside = int(((levels - mean).abs() <= 2 * std).sum())
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN, 3.8))
    many = values.numel() > 1000  # log counts show a large slice's tails; a group has few values
    ax.hist(values.numpy(), bins=min(200, values.numel()), color="0.5", log=many)
    ax.vlines(levels.numpy(), 0, 1, transform=ax.get_xaxis_transform(), color="C3",
              lw=0.6, alpha=0.6)
    ax.set_xlabel(f"weight value: {name}, {label}")
    ax.set_ylabel("count (log scale)" if many else "count")
    ax.set_title(f"{spec.bits}-bit {spec.scheme} {GRANULARITY_LABELS[spec.granularity]}: "
                 f"{inside} of {2**spec.bits} levels within ±2σ of the mean\n"
                 f"whole matrix: SQNR {error.sqnr_db:.1f} dB, max |error| "
                 f"{error.max_abs_error:.4f}", fontsize=10)
    return fig, error


GRID_WHAT = ("Histogram of the weights of one slice of a matrix, with the levels of its "
             "quantization grid as red vertical lines")


def grid_view(x: torch.Tensor, spec: affine.QuantSpec, name: str) -> tuple[bytes, str, QuantError]:
    """PNG bytes and alt text of :func:`plot_grid`, and the error it reports."""
    fig, error = plot_grid(x, spec, name)
    alt = kit.alt_text(fig, GRID_WHAT)
    return figure_png(fig), alt, error


def explorer(matrices: Mapping[str, torch.Tensor], bits: int = 4, scheme: str = "symmetric",
             granularity: str = "tensor", group_size: int = DEFAULT_GROUP_SIZE,
             matrix: str | None = None) -> widgets.VBox:
    """Live explorer: matrix, bits (a slider from 2 up to 8), scheme and granularity controls
    redraw :func:`plot_grid`.

    Needs a running kernel. Each change quantizes one precomputed matrix and draws one figure
    (about a second for MiniLM's 590k-weight matrices on 2 cores). It starts at ``matrix`` (a
    key of ``matrices``, by default the first), ``bits``, ``scheme`` and ``granularity``. The
    box's ``error`` attribute holds the :class:`QuantError` of the view on show, its ``image``
    attribute the ``Image``.
    """
    if not matrices:
        raise ValueError("matrices is empty: pass {name: 2-D weight}, e.g. weight_matrices(model)")
    names = list(matrices)
    if matrix is not None and matrix not in names:
        raise ValueError(f"matrix={matrix!r} is not a key of matrices: choose one of {names}")
    style = {"description_width": "initial"}
    pick = widgets.Dropdown(options=names, value=matrix or names[0], description="matrix",
                            style=style, layout=control_layout())
    bits_slider = widgets.IntSlider(value=bits, min=2, max=8, description="bits",
                                    continuous_update=False, layout=control_layout())
    scheme_toggle = widgets.ToggleButtons(options=affine.SCHEMES, value=scheme,
                                          description="scheme", layout=row_layout())
    gran = widgets.Dropdown(options=[(GRANULARITY_LABELS[g] + (f" of {group_size}" if g ==
                            "group" else ""), g) for g in affine.GRANULARITIES],
                            value=granularity, description="granularity", style=style)
    controls = [pick, bits_slider, scheme_toggle, gran]

    def view() -> tuple[bytes, str, QuantError]:
        spec = make_spec(bits_slider.value, scheme_toggle.value, gran.value, group_size)
        return grid_view(matrices[pick.value], spec, pick.value)

    png, alt, error = view()
    image = png_view(png, alt)
    box = widgets.VBox([widgets.HBox(controls[:2], layout=row_layout()),
                        widgets.HBox(controls[2:], layout=row_layout()), image])
    box.error, box.image = error, image

    def render(_change: object = None) -> None:
        png, alt, box.error = view()
        show_png(image, png, alt)

    for control in controls:
        control.observe(render, names="value")
    return box


def static_explorer(
    x: torch.Tensor, name: str, scheme: str, granularity: str,
    bits: Sequence[int] = BITS, group_size: int = DEFAULT_GROUP_SIZE,
    start_bits: int | None = None,
) -> widgets.VBox:
    """Kernel-free explorer: a bits slider over precomputed :func:`plot_grid` figures.

    The slider runs over ``bits`` in ascending order (2 up to 8 in every chapter), whatever
    order they are given in; it starts at ``start_bits`` (one of them; by default the smallest).
    """
    bits = sorted(bits)
    if start_bits is not None and start_bits not in bits:
        raise ValueError(f"start_bits={start_bits!r} is not one of bits={bits}: start at a bit "
                         "width the slider offers")
    views = [png_view(*grid_view(x, make_spec(b, scheme, granularity, group_size), name)[:2])
             for b in bits]
    start = 0 if start_bits is None else bits.index(start_bits)
    return linked_views([f"{b} bits" for b in bits], views, "bit width", start)
