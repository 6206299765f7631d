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

from torch import nn

from quantbook import quiet
from quantbook.methods.report import QuantReport, float_leaf_modules
from quantbook.methods.weight_only import DEFAULT_TARGETS, WeightOnlyConfig, select_modules


def torchao_config(config: WeightOnlyConfig):
    """The torchao config equivalent to ``config`` (min-max ranges only).

    8-bit symmetric uses ``Int8WeightOnlyConfig`` (the only one that allows per-tensor);
    everything else ``IntxWeightOnlyConfig(weight_dtype=torch.int<bits>)`` with ``PerAxis(0)``
    for "channel" or ``PerGroup(group_size)``.

    Raises:
        ValueError: a setting torchao cannot express (``range_method`` other than "minmax",
            per-tensor below 8 bits).
    """
    quiet.silence_known_noise()
    import torch
    from torchao.quantization import (
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        MappingType,
        PerAxis,
        PerGroup,
        PerRow,
        PerTensor,
    )

    if config.range_method != "minmax":
        raise ValueError(
            f"range_method={config.range_method!r} has no torchao weight-only equivalent: "
            "use range_method='minmax' to compare with torchao"
        )
    if config.bits == 8 and config.scheme == "symmetric":
        granularity = {"tensor": PerTensor(), "channel": PerRow()}.get(
            config.granularity, PerGroup(config.group_size)
        )
        # set_inductor_config=False: True would change torch._inductor's global config
        return Int8WeightOnlyConfig(granularity=granularity, set_inductor_config=False)
    if config.granularity == "tensor":
        raise ValueError(
            f"granularity='tensor' with bits={config.bits}, scheme={config.scheme!r} is not "
            "supported by torchao's IntxWeightOnlyConfig: use granularity='channel' or 'group' "
            "(or bits=8, scheme='symmetric')"
        )
    granularity = PerAxis(0) if config.granularity == "channel" else PerGroup(config.group_size)
    mapping = MappingType.SYMMETRIC if config.scheme == "symmetric" else MappingType.ASYMMETRIC
    return IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{config.bits}"),
        granularity=granularity,
        mapping_type=mapping,
    )


def torchao_weight_only(
    model: nn.Module,
    bits: int = 8,
    granularity: str = "channel",
    group_size: int | None = None,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    scheme: str = "symmetric",
) -> tuple[nn.Module, QuantReport]:
    """Return a copy of ``model`` with torchao weight-only quantization, and a report.

    The targeted modules (nn.Linear and nn.Embedding of ``targets``, as in
    :func:`~quantbook.methods.weight_only.quantize_weights`) are passed to ``quantize_`` through
    its ``filter_fn`` by qualified name; ``model`` is not modified.

    Raises:
        ValueError: for the same bad settings as ``WeightOnlyConfig`` and
            ``quantize_weights``, and for settings torchao cannot express (see
            :func:`torchao_config`).
    """
    config = WeightOnlyConfig(bits=bits, scheme=scheme, granularity=granularity,
                              group_size=group_size, targets=targets)
    converted, skipped = select_modules(model, config)
    ao_config = torchao_config(config)
    from torchao.quantization import quantize_  # after torchao_config silenced the import

    wanted = set(converted)
    quantized = copy.deepcopy(model)
    quantize_(quantized, ao_config, filter_fn=lambda module, name: name in wanted)
    report = QuantReport(
        method=f"torchao {config.method}",
        converted=tuple(converted),
        skipped=tuple(skipped),
        float_modules=float_leaf_modules(quantized, exclude=converted),
    )
    return quantized, report
