"""Affine (uniform) quantization: choose scale and zero_point, quantize, dequantize.

A real value ``x`` is stored as an integer code ``q`` in ``[qmin, qmax]``::

    q = clamp(round_half_even(x * (1 / scale)) + zero_point, qmin, qmax)
    x_hat = (q - zero_point) * scale

This is the op order of ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine``
(bit-exact, ties included). ``torch.quantize_per_tensor`` (fused multiply-add) and
``torch.quantize_per_channel`` (``round(x * inv + zero_point)``) differ from it, and from each
other, only for values within about one float ulp of a rounding tie, and only when
``zero_point != 0``.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch

from quantbook import ranges
from quantbook.grid import (  # noqa: F401  (re-exported: the grid is part of affine's API)
    EPS,
    SCHEMES,
    TINY,
    check_bits,
    check_choice,
    check_float_tensor,
    check_group_size,
    qrange,
    scale_zero_point,
)

Scheme = Literal["symmetric", "asymmetric"]
Granularity = Literal["tensor", "channel", "group"]
GRANULARITIES = ("tensor", "channel", "group")
RANGE_METHODS = ("minmax", "percentile", "mse")


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a tensor."""

    bits: int = 8
    scheme: str = "asymmetric"
    granularity: str = "tensor"
    axis: int = 0  # channel axis for "channel": 0 = output channels of a Linear weight
    group_size: int | None = None  # "group": contiguous groups along the last (input) dim
    range_method: str = "minmax"  # "minmax" | "percentile" | "mse"
    percentile: float = 99.9  # "percentile": clip to the (100-p)th..p-th percentiles

    def __post_init__(self) -> None:
        check_bits(self.bits)
        check_choice("scheme", self.scheme, SCHEMES)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("range_method", self.range_method, RANGE_METHODS)
        if not isinstance(self.axis, int) or isinstance(self.axis, bool):
            raise TypeError(f"axis={self.axis!r} must be an int (the channel dimension)")
        if self.granularity == "group":
            gs = self.group_size
            if not isinstance(gs, int) or isinstance(gs, bool) or gs <= 0:
                raise ValueError(
                    f"group_size={gs!r} is invalid for granularity='group': "
                    "pass a positive int such as group_size=32"
                )
        elif self.group_size is not None:
            raise ValueError(
                f"group_size={self.group_size!r} is only used with granularity='group', "
                f"not {self.granularity!r}: drop it or set granularity='group'"
            )
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, int | float) or not 50 < p <= 100:
            raise ValueError(
                f"percentile={p!r} must be in (50, 100]: values outside the (100-p)th..p-th "
                "percentiles are clipped (99.9 is typical, 100 is min-max)"
            )


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single-bool equality
class QParams:
    """Scale and zero_point of a quantized tensor.

    ``scale`` (float32) and ``zero_point`` (int32) have shape ``()`` for granularity "tensor",
    ``(C,)`` for "channel" and ``(rows, n_groups)`` for "group", where rows is the product of
    all but the last dimension.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    spec: QuantSpec
    qmin: int
    qmax: int

    def __post_init__(self) -> None:
        s, z = self.scale, self.zero_point
        if not isinstance(s, torch.Tensor) or s.dtype != torch.float32:
            raise TypeError(f"scale must be a float32 tensor, got {getattr(s, 'dtype', s)!r}")
        if not isinstance(z, torch.Tensor) or z.dtype != torch.int32:
            raise TypeError(f"zero_point must be an int32 tensor, got {getattr(z, 'dtype', z)!r}")
        if s.shape != z.shape:
            raise ValueError(f"scale shape {tuple(s.shape)} != zero_point shape {tuple(z.shape)}")
        ndim = {"tensor": 0, "channel": 1, "group": 2}[self.spec.granularity]
        if s.ndim != ndim:
            raise ValueError(
                f"scale has {s.ndim} dims but granularity={self.spec.granularity!r} needs {ndim}"
            )
        if not self.qmin < self.qmax:
            raise ValueError(f"qmin={self.qmin} must be below qmax={self.qmax}")
        if not bool(torch.all(s > 0)) or not bool(torch.all(torch.isfinite(s))):
            raise ValueError("scale must be positive and finite everywhere")


def quantize_affine(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """int32 codes ``clamp(round(x * (1/scale)) + zero_point, qmin, qmax)``; args broadcast."""
    q = torch.round(x.float() * (1.0 / scale)) + zero_point
    return q.clamp_(qmin, qmax).to(torch.int32)


def dequantize_affine(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
) -> torch.Tensor:
    """float32 values ``(codes - zero_point) * scale``; args broadcast."""
    return (codes.float() - zero_point.float()) * scale


def _slices(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """View ``x`` as ``(n_slices, slice_len)``, one row per scale (channel-first for "channel")."""
    if spec.granularity == "tensor":
        return x.reshape(1, -1)  # (1, numel)
    if spec.granularity == "channel":
        if not -x.ndim <= spec.axis < x.ndim:
            raise ValueError(
                f"axis={spec.axis} is out of range for a tensor with {x.ndim} dims "
                f"(shape {tuple(x.shape)}): choose -{x.ndim}..{x.ndim - 1}"
            )
        return x.movedim(spec.axis, 0).reshape(x.shape[spec.axis], -1)  # (C, numel / C)
    gs = spec.group_size
    if x.ndim == 0:
        raise ValueError("a 0-dim tensor has no last dim to split into groups: use "
                         "granularity='tensor'")
    check_group_size(gs, x.shape[-1], f"the last dim of shape {tuple(x.shape)}")
    return x.reshape(-1, gs)  # (rows * n_groups, group_size)


def _qparams_shape(x: torch.Tensor, spec: QuantSpec) -> tuple[int, ...]:
    if spec.granularity == "tensor":
        return ()
    if spec.granularity == "channel":
        return (x.shape[spec.axis],)
    return (x.numel() // x.shape[-1], x.shape[-1] // spec.group_size)


def choose_qparams(x: torch.Tensor, spec: QuantSpec) -> QParams:
    """Scale and zero_point for ``x`` following ``spec`` (range method, scheme, granularity).

    A constant slice ``c != 0`` gets ``scale = |c|`` (code ``zero_point ± 1``) so that it
    round-trips exactly; torch's observers use ``|c| / 255`` or ``|c| / 127.5`` there, which
    does not reproduce ``c``. Everything else matches ``MinMaxObserver`` for "minmax".
    """
    check_float_tensor(x)
    rows = _slices(x.float(), spec)  # (n_slices, slice_len)
    qmin, qmax = qrange(spec.bits, spec.scheme)
    x_min, x_max = ranges.minmax_range(rows, dim=1)
    if spec.range_method == "minmax":
        lo, hi = x_min, x_max
    elif spec.range_method == "percentile":
        lo, hi = ranges.percentile_range(rows, dim=1, percentile=spec.percentile)
    else:
        lo, hi = ranges.mse_range(rows, dim=1, bits=spec.bits, scheme=spec.scheme)
    scale, zero_point = scale_zero_point(lo, hi, qmin, qmax, spec.scheme)
    const = (x_min == x_max) & (x_min.abs() >= TINY)  # constant slices, not subnormal
    scale = torch.where(const, x_min.abs(), scale)
    if spec.scheme == "asymmetric":  # qmin - round(min(c, 0) / |c|) for the new scale
        zero_point = torch.where(const, qmin + (x_min < 0).to(torch.int32), zero_point)
    shape = _qparams_shape(x, spec)
    return QParams(scale.reshape(shape), zero_point.reshape(shape), spec, qmin, qmax)


def _broadcast(x: torch.Tensor, qp: QParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_view, scale, zero_point)`` that broadcast together; ``x_view`` reshapes back."""
    spec, expected = qp.spec, tuple(qp.scale.shape)
    if spec.granularity == "tensor":
        return x, qp.scale, qp.zero_point
    _slices(x, spec)  # validates axis / group_size against x
    found = _qparams_shape(x, spec)
    if found != expected:
        raise ValueError(
            f"tensor of shape {tuple(x.shape)} needs qparams of shape {found} for "
            f"granularity={spec.granularity!r}, got {expected}: choose_qparams on this tensor"
        )
    if spec.granularity == "channel":
        view = [1] * x.ndim
        view[spec.axis] = -1
        return x, qp.scale.reshape(view), qp.zero_point.reshape(view)
    xg = x.reshape(*expected, spec.group_size)  # (rows, n_groups, group_size)
    return xg, qp.scale[..., None], qp.zero_point[..., None]


def quantize(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Integer codes (int32, shape of ``x``) in ``[qmin, qmax]``, rounding half to even."""
    check_float_tensor(x)
    xv, scale, zero_point = _broadcast(x, qparams)
    return quantize_affine(xv, scale, zero_point, qparams.qmin, qparams.qmax).reshape(x.shape)


def dequantize(codes: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """float32 values ``(codes - zero_point) * scale``, shape of ``codes``."""
    if (
        not isinstance(codes, torch.Tensor)
        or codes.is_floating_point()
        or codes.is_complex()
        or codes.dtype == torch.bool
    ):
        raise TypeError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', codes)!r}")
    cv, scale, zero_point = _broadcast(codes, qparams)
    return dequantize_affine(cv, scale, zero_point).reshape(codes.shape)


def fake_quantize(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """``dequantize(quantize(x))``: float32 values on the quantization grid."""
    return dequantize(quantize(x, qparams), qparams)


def quantize_tensor(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, QParams]:
    """Choose qparams for ``x`` and quantize it: returns ``(codes, qparams)``."""
    qparams = choose_qparams(x, spec)
    return quantize(x, qparams), qparams


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum(ref²) / sum((ref - approx)²))``.

    ``+inf`` when ``approx`` equals ``reference``. Uniform data at b bits gives about 6.02 b dB.
    """
    if reference.shape != approx.shape:
        raise ValueError(
            f"reference shape {tuple(reference.shape)} != approx shape {tuple(approx.shape)}"
        )
    ref = reference.double()
    noise = float((ref - approx.double()).pow(2).sum())
    if noise == 0.0:
        return float("inf")
    signal = float(ref.pow(2).sum())
    return float("-inf") if signal == 0.0 else 10.0 * math.log10(signal / noise)
