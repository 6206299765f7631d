"""The LLM.int8() decomposition: outlier input columns in float, the rest in int8.

Dettmers et al. (2022) split ``x W^T`` by input column: the few columns where ``|x|`` exceeds a
threshold (6 in the paper) are multiplied in float16, all others in int8, and the two products
are added. The paper finds the columns per token at run time; here they are found once, in
calibration (the same channels carry the outliers on every input, as MiniLM's channel 99 does),
which keeps the int8 part a plain static Linear:

* the int8 Linear's weight has the outlier columns set to zero, so its input needs no gather -
  an outlier value clamps to code 0 or 255 and meets a zero weight;
* its input scale is calibrated on the other columns only, so the outliers no longer stretch it;
* the outlier columns go through one small float ``addmm`` (``k`` columns, ``k`` a few).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from quantbook.methods.base import QuantReport, select
from quantbook.methods.float_output import (
    ChannelRange,
    FloatOutputConfig,
    StaticInt8Linear,
    build,
    channel_ranges,
    check_config,
    input_qparams,
)
from quantbook.methods.static import forward_batch
from quantbook.validate import check_batches, check_model


def outlier_columns(absmax: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the input channels whose calibrated max |x| exceeds ``threshold``."""
    return torch.nonzero(absmax > threshold).flatten()


class DecomposedLinear(nn.Module):
    """``int8(x, W with outlier columns zeroed) + x[:, outliers] @ W[:, outliers]^T`` in float.

    Args:
        linear: the float Linear to replace.
        outliers: indices of the input columns kept in float.
        scale, zero_point: the input's quint8 parameters, calibrated without those columns.
        granularity: weight scales of the int8 part.
    """

    def __init__(self, linear: nn.Linear, outliers: torch.Tensor, scale: float,
                 zero_point: int, granularity: str = "channel") -> None:
        super().__init__()
        weight = linear.weight.detach().clone()
        self.register_buffer("outliers", outliers.long())
        self.register_buffer("outlier_weight_t", weight[:, self.outliers].t().contiguous())
        weight[:, self.outliers] = 0  # (out, in): the int8 part ignores those columns
        rest = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            rest.weight.copy_(weight)
            if linear.bias is not None:
                rest.bias.copy_(linear.bias.detach())
        self.int8 = StaticInt8Linear(rest, scale, zero_point, granularity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.int8(x)
        columns = x.index_select(-1, self.outliers)  # (..., k)
        flat = y.view(-1, y.shape[-1])  # (tokens, out)
        flat.addmm_(columns.reshape(flat.shape[0], -1), self.outlier_weight_t)
        return y

    def extra_repr(self) -> str:
        return f"float columns={self.outliers.tolist()}"


@dataclass(frozen=True)
class DecompositionConfig(FloatOutputConfig):
    """Static W8A8 with float outputs, plus float columns for inputs above ``threshold``.

    Attributes:
        threshold: an input channel whose calibrated max |x| exceeds it stays float (6.0 is
            the paper's value; MiniLM then keeps about 100 of its 14,000 input columns).
    """

    threshold: float = 6.0

    family: ClassVar[str] = "LLM.int8() decomposition (static)"

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.threshold
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value > 0):
            raise ValueError(f"threshold={value!r} is not supported: choose a positive finite "
                             "magnitude, e.g. 6.0 (the LLM.int8() paper's)")

    @property
    def label(self) -> str:
        """E.g. ``"LLM.int8() decomposition (|x| > 6), static int8"``."""
        return f"LLM.int8() decomposition (|x| > {self.threshold:g}), static int8"


def quantize_decomposed(model: nn.Module, config: DecompositionConfig, batches: Sequence,
                        run_fn: Callable[[nn.Module, object], None] = forward_batch
                        ) -> tuple[nn.Module, QuantReport]:
    """Static W8A8 with float outputs, outlier input columns kept in float.

    A Linear without outlier columns becomes a plain
    :class:`~quantbook.methods.float_output.StaticInt8Linear`.

    Returns:
        ``(quantized_copy, report)``.

    Raises:
        ValueError: every input column of a Linear exceeds ``config.threshold``.
    """
    check_config(config, DecompositionConfig)
    check_model(model, config.label)
    batches = check_batches(model, batches)
    selection = select(model, config)
    ranges = channel_ranges(model, selection.chosen, batches, run_fn)

    def make(name: str, linear: nn.Linear) -> nn.Module:
        found: ChannelRange = ranges[name]
        columns = outlier_columns(found.absmax, config.threshold)
        keep = torch.ones_like(found.min, dtype=torch.bool)
        keep[columns] = False
        if not bool(keep.any()):
            raise ValueError(f"threshold={config.threshold:g} marks every input column of "
                             f"{name!r} as an outlier (its smallest max |x| is "
                             f"{float(found.absmax.min()):.3g}): raise the threshold")
        scale, zero_point = input_qparams(found.min[keep].min(), found.max[keep].max())
        if len(columns) == 0:
            return StaticInt8Linear(linear, scale, zero_point, config.granularity)
        return DecomposedLinear(linear, columns, scale, zero_point, config.granularity)

    return build(model, config, selection, ranges, make)
