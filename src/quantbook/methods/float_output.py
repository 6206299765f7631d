"""Static int8 Linears whose output stays float: the input's scale fixed, nothing requantized.

The eager static path (:mod:`quantbook.methods.static`) wraps each Linear as quantize -> int8
Linear -> dequantize, and the int8 Linear *requantizes its output* to 8 bits with one scale per
tensor. On MiniLM that output requantization is what hurts: the FFN's ``output.dense`` writes a
[CLS] spike of about 190 into one channel, and one 7-bit grid over that range rounds every
other token's FFN contribution to zero. :class:`StaticInt8Linear` keeps everything else the
same - the input quantized with a calibrated per-tensor scale (codes 0..127, as the x86 kernel
needs), int8 weights per output row - and returns the int32 accumulator dequantized to float32,
in one fbgemm call (``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``). This is also
what the PT2E x86 path does: it quantizes Linear inputs, not outputs. Engines without that
kernel (``qnnpack`` on ARM, ``onednn``) get the same arithmetic through float kernels: the
input rounded to its codes, the dequantized int8 weight, a float Linear (same values to
float32 rounding, none of the int8 speed).

Calibration is one pass of forward pre-hooks that keep each input channel's min and max
(:func:`channel_ranges`); the per-tensor min-max range is their envelope, and the same
statistics serve SmoothQuant (per-channel max |x|) and the LLM.int8() decomposition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from quantbook.machine import fbgemm_engine
from quantbook.methods.base import (
    MethodConfig,
    QuantReport,
    Selection,
    finish,
    run_hooked,
    select,
    swap_modules,
)
from quantbook.methods.static import FLOAT_OPS, GRANULARITIES, forward_batch
from quantbook.quiet import quiet_torch_ao
from quantbook.validate import check_batches, check_model

QMIN, QMAX = 0, 127  # quint8 input codes on 7 bits: the x86 kernel adds u8 x s8 pairs in int16


@dataclass(frozen=True)
class ChannelRange:
    """Per-channel minimum and maximum of one tensor over the calibration batches."""

    min: torch.Tensor  # (C,)
    max: torch.Tensor  # (C,)

    @property
    def absmax(self) -> torch.Tensor:
        """Per-channel max |x|, shape (C,)."""
        return torch.maximum(self.min.abs(), self.max.abs())

    def scaled(self, factor: torch.Tensor) -> ChannelRange:
        """The range of ``x * factor`` for a positive per-channel ``factor``."""
        return ChannelRange(self.min * factor, self.max * factor)


def channel_ranges(model: nn.Module, names: Sequence[str], batches: Sequence,
                   run_fn: Callable[[nn.Module, object], None] = forward_batch
                   ) -> dict[str, ChannelRange]:
    """Per-channel min and max of each named module's input, in one pass over ``batches``.

    Returns:
        ``{name: ChannelRange}``; the hooks are removed afterwards, even on an error.
    """
    lows: dict[str, torch.Tensor] = {}
    highs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])  # (tokens, C)
            low, high = x.amin(0), x.amax(0)
            lows[name] = torch.minimum(lows[name], low) if name in lows else low
            highs[name] = torch.maximum(highs[name], high) if name in highs else high
        return record

    run_hooked(model, batches, run_fn,
               [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names])
    missing = [n for n in names if n not in lows]
    if missing:
        raise ValueError(f"{len(missing)} modules saw no input during calibration (e.g. "
                         f"{missing[0]!r}): pass batches that run through every selected Linear")
    return {n: ChannelRange(lows[n], highs[n]) for n in names}


def input_qparams(low: float, high: float) -> tuple[float, int]:
    """``(scale, zero_point)`` of torch.ao's min-max observer (quint8, codes 0..127).

    Example: ``input_qparams(-1.0, 3.0)`` gives ``(4 / 127, 32)``.
    """
    from torch.ao.quantization import MinMaxObserver

    observer = MinMaxObserver(dtype=torch.quint8, quant_min=QMIN, quant_max=QMAX)
    observer(torch.tensor([float(low), float(high)]))
    scale, zero_point = observer.calculate_qparams()
    return float(scale), int(zero_point)


def quantize_weight(weight: torch.Tensor, granularity: str = "channel") -> torch.Tensor:
    """A symmetric qint8 copy of ``weight``: one scale per output row, or one per tensor."""
    from torch.ao import quantization as tq

    observer = (tq.default_per_channel_weight_observer if granularity == "channel"
                else tq.default_weight_observer)()
    weight = weight.detach().float()
    observer(weight)
    scale, zero_point = observer.calculate_qparams()
    with quiet_torch_ao():
        if granularity == "channel":
            return torch.quantize_per_channel(weight, scale.float(), zero_point.long(), 0,
                                              torch.qint8)
        return torch.quantize_per_tensor(weight, float(scale), int(zero_point), torch.qint8)


class StaticInt8Linear(nn.Module):
    """int8 Linear with a fixed input scale and a float32 output (no output requantization).

    Args:
        linear: the float Linear to replace.
        scale, zero_point: the input's quint8 parameters (codes 0..127), from calibration.
        granularity: weight scales, ``"channel"`` (one per output row) or ``"tensor"``.
    """

    def __init__(self, linear: nn.Linear, scale: float, zero_point: int,
                 granularity: str = "channel") -> None:
        super().__init__()
        if not (scale > 0 and torch.isfinite(torch.tensor(scale))):
            raise ValueError(f"scale={scale!r} must be a positive finite number: calibrate on "
                             "batches with finite activations")
        bias = None if linear.bias is None else linear.bias.detach().float()
        self._pack(quantize_weight(linear.weight, granularity), bias, scale, zero_point)

    @classmethod
    def from_qweight(cls, qweight: torch.Tensor, bias: torch.Tensor | None, scale: float,
                     zero_point: int) -> StaticInt8Linear:
        """One over given qint8 weight codes, packed as they are (no second quantization)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._pack(qweight, bias, scale, zero_point)
        return module

    def _pack(self, qweight: torch.Tensor, bias: torch.Tensor | None, scale: float,
              zero_point: int) -> None:
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.out_features, self.in_features = qweight.shape
        # qnnpack (ARM) and onednn have no fused kernel for this: the same arithmetic in float
        self._reference = None if fbgemm_engine() else (qweight.dequantize(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._reference is not None:
            x = torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, QMIN, QMAX)
            return nn.functional.linear(x, *self._reference)
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            x, self.scale, self.zero_point, self._packed)

    def weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The quantized weight (qint8) and the float bias, unpacked."""
        return torch.ops.quantized.linear_unpack(self._packed)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"scale={self.scale:.4g}, zero_point={self.zero_point}")

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        weight, bias = self.weight_bias()
        destination[prefix + "weight"] = weight  # int8 codes + scales: what the model stores
        destination[prefix + "bias"] = bias
        destination[prefix + "scale"] = torch.tensor(self.scale)
        destination[prefix + "zero_point"] = torch.tensor(self.zero_point)


@dataclass(frozen=True)
class FloatOutputConfig(MethodConfig):
    """Static W8A8 Linears with float outputs; input ranges from min-max calibration.

    Attributes:
        targets: Linear groups of :data:`quantbook.targets.GROUPS`.
        granularity: weight scales, ``"channel"`` (one per output row) or ``"tensor"``.
    """

    granularity: str = "channel"

    family: ClassVar[str] = "static (float outputs)"

    def __post_init__(self) -> None:
        super().__post_init__()
        if "embeddings" in self.targets:
            raise ValueError(f"targets={self.targets!r} names 'embeddings': static int8 "
                             "applies to Linear layers; choose from 'attention', 'ffn', 'head'")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r} is not supported: choose one "
                             f"of {GRANULARITIES}")

    @property
    def label(self) -> str:
        """E.g. ``"static int8, float outputs"``."""
        suffix = "" if self.granularity == "channel" else " (per-tensor weights)"
        return f"static int8, float outputs{suffix}"


def check_config(config: object, expected: type[MethodConfig]) -> None:
    """Refuse a config of the wrong type (a method's first check)."""
    if type(config) is not expected:
        raise TypeError(f"config is a {type(config).__name__}: expected a {expected.__name__}")


def build(model: nn.Module, config: FloatOutputConfig, selection: Selection,
          ranges: dict[str, ChannelRange],
          make: Callable[[str, nn.Linear], nn.Module] | None = None
          ) -> tuple[nn.Module, QuantReport]:
    """Swap the selected Linears of a copy of ``model`` for int8 ones, and report.

    Args:
        ranges: each selected Linear's input range.
        make: ``make(name, linear)`` builds one replacement (default: a
            :class:`StaticInt8Linear` over the whole min-max range).
    """
    def default(name: str, linear: nn.Linear) -> nn.Module:
        scale, zero_point = input_qparams(ranges[name].min.min(), ranges[name].max.max())
        return StaticInt8Linear(linear, scale, zero_point, config.granularity)

    quantized = swap_modules(model, selection.chosen, make or default)
    return finish(quantized, config, selection, lambda m: type(m) is not nn.Linear,
                  float_ops=FLOAT_OPS)


def quantize_float_output(model: nn.Module, config: FloatOutputConfig, batches: Sequence,
                          run_fn: Callable[[nn.Module, object], None] = forward_batch
                          ) -> tuple[nn.Module, QuantReport]:
    """Static W8A8 with float outputs: calibrate input ranges, swap in int8 Linears.

    The arguments and the result are those of :func:`quantbook.methods.static.quantize_static`
    (``batches`` are calibration inputs: training text, never evaluation text).
    """
    check_config(config, FloatOutputConfig)
    check_model(model, config.label)
    batches = check_batches(model, batches)
    selection = select(model, config)
    return build(model, config, selection,
                 channel_ranges(model, selection.chosen, batches, run_fn))
