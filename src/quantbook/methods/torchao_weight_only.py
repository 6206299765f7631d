"""The settings of :mod:`quantbook.methods.weight_only`, applied through torchao for comparison.

``torchao.quantization.quantize_`` swaps each targeted weight for a tensor subclass:
``Int8Tensor`` (``Int8WeightOnlyConfig``, 8-bit symmetric) or ``IntxUnpackedToInt8Tensor``
(``IntxWeightOnlyConfig``, 2..8 bits). Both hold ``qdata`` as **int8, one byte per code**
whatever the bit width, plus a float32 ``scale`` and an int8 ``zero_point`` (stored even when
symmetric) per channel or group. So a 4-bit torchao model on the CPU is no smaller than an 8-bit
one; ``weight_only.PackedLinear`` packs the codes densely. The dequantized weights are the same:
torchao's min-max ``choose_qparams_affine`` and ours agree bit for bit.

torchao is imported inside the function, after :func:`quantbook.quiet.silence_known_noise`,
so that ``import quantbook.methods`` stays fast and writes nothing to stderr.
"""

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from quantbook import quiet
from quantbook.methods.base import QuantReport, finish, select
from quantbook.methods.weight_only import WeightOnlyConfig, weight_rule
from quantbook.validate import check_model


@dataclass(frozen=True)
class TorchaoWeightOnlyConfig(WeightOnlyConfig):
    """:class:`WeightOnlyConfig`'s settings, applied by torchao (min-max ranges only)."""

    bits: int = 8

    family: ClassVar[str] = "weight-only (torchao)"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.range_method != "minmax":
            raise ValueError(
                f"range_method={self.range_method!r} has no torchao weight-only equivalent: "
                "use range_method='minmax' to compare with torchao")
        if self.granularity == "tensor" and (self.bits, self.scheme) != (8, "symmetric"):
            raise ValueError(
                f"granularity='tensor' with bits={self.bits}, scheme={self.scheme!r} is not "
                "supported by torchao's IntxWeightOnlyConfig: use granularity='channel' or "
                "'group' (or bits=8, scheme='symmetric')")

    @property
    def label(self) -> str:
        """E.g. ``"torchao weight-only int4 group32"``."""
        return f"torchao {super().label}"


def torchao_config(config: TorchaoWeightOnlyConfig):
    """The torchao config equivalent to ``config`` (min-max ranges only).

    8-bit symmetric uses ``Int8WeightOnlyConfig`` (the only one that allows per-tensor);
    everything else ``IntxWeightOnlyConfig(weight_dtype=torch.int<bits>)`` with ``PerAxis(0)``
    for "channel" or ``PerGroup(group_size)``.

    """
    if not isinstance(config, TorchaoWeightOnlyConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a "
                        "TorchaoWeightOnlyConfig (it refuses settings torchao cannot express)")
    quiet.silence_known_noise()
    from torchao.quantization import (
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        MappingType,
        PerAxis,
        PerGroup,
        PerRow,
        PerTensor,
    )

    if config.bits == 8 and config.scheme == "symmetric":
        granularity = {"tensor": PerTensor(), "channel": PerRow()}.get(
            config.granularity, PerGroup(config.group_size)
        )
        # set_inductor_config=False: True would change torch._inductor's global config
        return Int8WeightOnlyConfig(granularity=granularity, set_inductor_config=False)
    granularity = PerAxis(0) if config.granularity == "channel" else PerGroup(config.group_size)
    mapping = MappingType.SYMMETRIC if config.scheme == "symmetric" else MappingType.ASYMMETRIC
    return IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{config.bits}"),
        granularity=granularity,
        mapping_type=mapping,
    )


def quantize_torchao_weight_only(model: nn.Module,
                                 config: TorchaoWeightOnlyConfig = TorchaoWeightOnlyConfig()
                                 ) -> tuple[nn.Module, QuantReport]:
    """Return a copy of ``model`` with torchao weight-only quantization, and a report.

    The selected modules are passed to ``quantize_`` through its ``filter_fn`` by qualified
    name; ``model`` is not modified.
    """
    if not isinstance(config, TorchaoWeightOnlyConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a "
                        "TorchaoWeightOnlyConfig")
    check_model(model, config.label, devices=("cpu", "cuda"))
    selection = select(model, config, weight_rule(config))
    ao_config = torchao_config(config)
    from torchao.quantization import quantize_  # after torchao_config silenced the import

    wanted = set(selection.chosen)
    quantized = copy.deepcopy(model)
    with quiet.quiet_torch_ao():
        quantize_(quantized, ao_config, filter_fn=lambda module, name: name in wanted)
    return finish(quantized, config, selection,
                  lambda m: type(m.weight) not in (torch.Tensor, nn.Parameter))
