"""Per-embedding-group (PEG) activation scales: one input scale per group of input channels.

Bondarenko, Nagel and Blankevoort (2021) found BERT's activation outliers in a few fixed
dimensions of the hidden state, and gave those dimensions their own quantization scale: the
input's hidden dimension is split into ``K`` groups, each with its own per-tensor scale. A
permutation first sorts the channels by their calibrated range (``max - min``), so the few wide
channels share one group and leave the narrow ones a fine grid.

Here the groups are cut as in the paper: ``K`` groups of (nearly) equal size over the sorted
channels, the widest channels in the last group. ``x W^T`` splits by input column, so each group
is a real static int8 Linear over its own columns (:class:`StaticInt8Linear`: quint8 input with
its own calibrated scale, float32 output), and the ``K`` float outputs are added. The weight is
quantized once, per output row, and each group takes its columns of the same int8 codes, so only
the input scales differ from the plain static Linear; ``K = 1`` is that Linear.
"""

from __future__ import annotations

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
    quantize_weight,
)
from quantbook.methods.static import forward_batch
from quantbook.validate import check_batches, check_model


def peg_groups(found: ChannelRange, groups: int) -> list[torch.Tensor]:
    """Input columns of each group: channels sorted by range, cut into equal-size groups.

    Example: ranges ``[1, 9, 2, 3]`` and ``groups=2`` give ``[[0, 2], [1, 3]]``: the two
    narrowest channels, then the two widest (each group's columns in ascending order).
    """
    order = torch.argsort(found.max - found.min, stable=True)  # narrowest first
    return [part.sort().values for part in torch.tensor_split(order, groups)]


def requantize(weight: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (exact multiples of ``weight``'s scales) as qint8 with ``weight``'s scales."""
    if weight.qscheme() == torch.per_tensor_affine:
        return torch.quantize_per_tensor(values, weight.q_scale(), weight.q_zero_point(),
                                         torch.qint8)
    return torch.quantize_per_channel(values, weight.q_per_channel_scales(),
                                      weight.q_per_channel_zero_points(), 0, torch.qint8)


def int8_part(qweight: torch.Tensor, bias: torch.Tensor | None, scale: float,
              zero_point: int) -> StaticInt8Linear:
    """A :class:`StaticInt8Linear` over given int8 weight codes, packed once.

    Its constructor would observe and quantize a float weight again, with scales of its own.
    """
    return StaticInt8Linear.from_qweight(qweight, bias, scale, zero_point)


class PEGLinear(nn.Module):
    """``sum_g int8(x[:, cols_g]) @ int8(W[:, cols_g])^T + b``, one input scale per group.

    Args:
        linear: the float Linear to replace.
        columns: the input columns of each group (disjoint, covering every column).
        qparams: ``(scale, zero_point)`` of each group's quint8 input.
        granularity: weight scales of each int8 part.
    """

    def __init__(self, linear: nn.Linear, columns: Sequence[torch.Tensor],
                 qparams: Sequence[tuple[float, int]], granularity: str = "channel") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.whole = len(columns) == 1  # one group: no gather, the plain static Linear
        weight = quantize_weight(linear.weight, granularity)  # the groups share its scales
        values = weight.dequantize()  # (out, in): exact multiples of the scales
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.parts = nn.ModuleList()
        for g, (cols, (scale, zero_point)) in enumerate(zip(columns, qparams, strict=True)):
            self.register_buffer(f"columns_{g}", cols.long())
            # the whole Linear's int8 codes for these columns: only the input scales differ
            self.parts.append(int8_part(requantize(weight, values[:, cols]),
                                        bias if g == 0 else None,  # the bias added once
                                        scale, zero_point))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.whole:
            return self.parts[0](x)
        y = self.parts[0](x.index_select(-1, self.columns_0))  # (..., out)
        for g in range(1, len(self.parts)):
            y += self.parts[g](x.index_select(-1, getattr(self, f"columns_{g}")))
        return y

    def extra_repr(self) -> str:
        sizes = [len(getattr(self, f"columns_{g}")) for g in range(len(self.parts))]
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group sizes={sizes}")


@dataclass(frozen=True)
class PEGConfig(FloatOutputConfig):
    """Static W8A8 with float outputs and ``n_groups`` input scales per Linear.

    Attributes:
        n_groups: K, the number of input-channel groups, each with its own activation scale
            (1 is per-tensor; the paper uses a few, e.g. 3 or 6). At most a Linear's
            ``in_features``.
    """

    n_groups: int = 3

    family: ClassVar[str] = "per-embedding-group (static)"

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.n_groups
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"n_groups={value!r} is not supported: choose a whole number of "
                             "input-channel groups from 1 to the Linear's in_features, e.g. 3")

    @property
    def label(self) -> str:
        """E.g. ``"PEG (3 groups), static int8"``."""
        return f"PEG ({self.n_groups} group{'s' * (self.n_groups > 1)}), static int8"


def quantize_peg(model: nn.Module, config: PEGConfig, batches: Sequence,
                 run_fn: Callable[[nn.Module, object], None] = forward_batch
                 ) -> tuple[nn.Module, QuantReport]:
    """Static W8A8 with float outputs and per-embedding-group input scales.

    Calibration keeps each input channel's min and max; each Linear's channels are sorted by
    range and cut into ``config.n_groups`` groups, each with a min-max quint8 scale.

    Returns:
        ``(quantized_copy, report)``.

    Raises:
        ValueError: ``config.n_groups`` exceeds a selected Linear's ``in_features``.
    """
    check_config(config, PEGConfig)
    check_model(model, config.label)
    batches = check_batches(model, batches)
    selection = select(model, config)
    narrow = [n for n in selection.chosen
              if model.get_submodule(n).in_features < config.n_groups]
    if narrow:
        smallest = min(model.get_submodule(n).in_features for n in narrow)
        raise ValueError(f"n_groups={config.n_groups} exceeds the in_features of {narrow[0]!r} "
                         f"({model.get_submodule(narrow[0]).in_features}): choose n_groups of "
                         f"at most {smallest}, or exclude that Linear")
    ranges = channel_ranges(model, selection.chosen, batches, run_fn)

    def make(name: str, linear: nn.Linear) -> nn.Module:
        found: ChannelRange = ranges[name]
        columns = peg_groups(found, config.n_groups)
        qparams = [input_qparams(found.min[c].min(), found.max[c].max()) for c in columns]
        return PEGLinear(linear, columns, qparams, config.granularity)

    return build(model, config, selection, ranges, make)
