"""torchao's int8 activation x int8 weight quantization: dynamic, and static with calibration.

``torchao.quantization.quantize_`` replaces each selected Linear's weight by an ``Int8Tensor``
(int8 codes, one scale per output row). Its ``F.linear`` then quantizes the activation to int8
(symmetric, one scale per token for the dynamic config, or one calibrated scale per tensor for
the static one) and runs an int8 matmul. Unlike the eager ``torch.ao`` modules this is plain
PyTorch code, so it runs on CPU and GPU alike; on the CPU without ``torch.compile`` it runs as
separate, unfused operations, slower than the eager kernels and, depending on the machine and the
shapes, slower or faster than float (chapters 04 to 06 measure it).

torchao is imported lazily, after :func:`quantbook.quiet.silence_known_noise`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from quantbook.methods.base import MethodConfig, QuantReport, finish, run_hooked, select
from quantbook.methods.static import forward_batch
from quantbook.quiet import quiet_torch_ao
from quantbook.validate import check_batches, check_model


@dataclass(frozen=True)
class TorchaoDynamicConfig(MethodConfig):
    """torchao's ``Int8DynamicActivationInt8WeightConfig`` on the selected Linears."""

    family: ClassVar[str] = "dynamic (torchao)"

    @property
    def label(self) -> str:
        return "torchao int8 dynamic"


@dataclass(frozen=True)
class TorchaoStaticConfig(MethodConfig):
    """torchao's ``Int8StaticActivationInt8WeightConfig``, one calibrated scale per Linear."""

    family: ClassVar[str] = "static (torchao)"

    @property
    def label(self) -> str:
        return "torchao int8 static"


def _is_int8(module: nn.Module) -> bool:
    from torchao.quantization import Int8Tensor

    return isinstance(module.weight, Int8Tensor)


def quantize_torchao_dynamic(model: nn.Module,
                             config: TorchaoDynamicConfig = TorchaoDynamicConfig()
                             ) -> tuple[nn.Module, QuantReport]:
    """Return a copy with torchao's ``Int8DynamicActivationInt8WeightConfig`` applied by name.

    Activations get one symmetric int8 scale per token, computed at every call; weights one
    per output row. ``model`` (on the CPU or a GPU) is not modified.
    """
    if not isinstance(config, TorchaoDynamicConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a TorchaoDynamicConfig")
    check_model(model, config.label, devices=("cpu", "cuda"))
    selection = select(model, config)
    quantized = copy.deepcopy(model).eval()
    wanted = set(selection.chosen)
    with quiet_torch_ao():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        # set_inductor_config=False: do not change torch._inductor's global settings
        ao_config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
        quantize_(quantized, ao_config, filter_fn=lambda _module, fqn: fqn in wanted)
    return finish(quantized, config, selection, _is_int8)


def calibrate_input_absmax(model: nn.Module, names: Sequence[str], batches: Sequence,
                           run_fn: Callable[[nn.Module, object], None] = forward_batch
                           ) -> dict[str, tuple[float, int]]:
    """Largest absolute input value of each named module over the batches, and the input rank.

    Returns:
        name -> ``(absmax, ndim)``; ``ndim`` is the number of dimensions of its inputs.
    """
    seen: dict[str, tuple[float, int]] = {}

    def observe(name):
        def hook(_module, args):
            x = args[0]
            previous = seen.get(name, (0.0, x.ndim))[0]
            seen[name] = (max(previous, float(x.detach().abs().max())), x.ndim)
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(observe(n)) for n in names]
    run_hooked(model, batches, run_fn, handles)
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"modules {missing[:3]} never ran during calibration: their scale "
                         "would be a guess; pass batches (and a run_fn) that reach them")
    return seen


def quantize_torchao_static(model: nn.Module, config: TorchaoStaticConfig, batches: Sequence,
                            run_fn: Callable[[nn.Module, object], None] = forward_batch
                            ) -> tuple[nn.Module, QuantReport]:
    """Static int8 with torchao: one calibrated symmetric activation scale per Linear.

    Each Linear's input abs-max over ``batches`` gives ``scale = absmax / 127``; torchao's
    ``Int8StaticActivationInt8WeightConfig`` then quantizes activations with that fixed scale
    and weights per output row. torchao needs the scale to have as many dimensions as the
    activation (``(1, 1, 1)`` for a ``(B, T, C)`` input), so inputs at inference must have the
    rank seen in calibration.

    Returns:
        ``(quantized_copy, report)``.
    """
    if not isinstance(config, TorchaoStaticConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a TorchaoStaticConfig")
    check_model(model, config.label, devices=("cpu", "cuda"))
    batches = check_batches(model, batches)
    selection = select(model, config)
    quantized = copy.deepcopy(model).eval()
    stats = calibrate_input_absmax(quantized, selection.chosen, batches, run_fn)
    with quiet_torch_ao():
        from torchao.quantization import (
            Int8StaticActivationInt8WeightConfig,
            PerRow,
            PerTensor,
            quantize_,
        )

        for name in selection.chosen:
            absmax, ndim = stats[name]
            device = quantized.get_submodule(name).weight.device
            scale = torch.full((1,) * ndim, max(absmax, 1e-12) / 127.0, device=device)
            ao_config = Int8StaticActivationInt8WeightConfig(
                act_quant_scale=scale, granularity=[PerTensor(), PerRow()],
                set_inductor_config=False)
            quantize_(quantized, ao_config, filter_fn=lambda _m, fqn, name=name: fqn == name)
    return finish(quantized, config, selection, _is_int8)
