"""Quantization methods: one frozen config and one function each, all of one shape.

::

    quantized, report = quantize_<method>(model, config)            # weight-only, dynamic
    quantized, report = quantize_<method>(model, config, batches)   # methods that calibrate

or, for any config, ``quantize(model, config, batches)``. Each function returns a quantized
*copy* in eval mode (the model passed in is never modified) and a :class:`QuantReport` of what
was converted, what was skipped and why. Configs share the selection fields of
:class:`MethodConfig` (``targets``, ``exclude``, ``modules``); the selection rules, the checks
of the model and of the batches, and the refusal to convert nothing live in one place
(:mod:`quantbook.methods.base`, :mod:`quantbook.validate`).

torch.ao and torchao are imported inside the functions, so ``import quantbook.methods`` stays
fast and writes nothing to stderr.
"""

from collections.abc import Callable, Sequence

from torch import nn

from quantbook.methods.awq import AWQConfig, quantize_awq
from quantbook.methods.base import MethodConfig, QuantReport, Selection, select
from quantbook.methods.compiled import PT2EConfig, quantize_pt2e
from quantbook.methods.decomposed import DecompositionConfig, quantize_decomposed
from quantbook.methods.dynamic import DynamicConfig, quantize_dynamic
from quantbook.methods.float_output import FloatOutputConfig, quantize_float_output
from quantbook.methods.gptq import GPTQConfig, quantize_gptq
from quantbook.methods.packed import PackedEmbedding, PackedLinear
from quantbook.methods.peg import PEGConfig, quantize_peg
from quantbook.methods.sensitivity import Sensitivity, mixed_precision_plan, sensitivity_scan
from quantbook.methods.smoothquant import SmoothQuantConfig, quantize_smoothquant
from quantbook.methods.static import (
    StaticConfig,
    calibrate,
    convert_static,
    prepare_static,
    quantize_static,
)
from quantbook.methods.torchao_activation import (
    TorchaoDynamicConfig,
    TorchaoStaticConfig,
    quantize_torchao_dynamic,
    quantize_torchao_static,
)
from quantbook.methods.torchao_weight_only import (
    TorchaoWeightOnlyConfig,
    quantize_torchao_weight_only,
)
from quantbook.methods.weight_only import WeightOnlyConfig, quantize_weight_only

# config type -> (method function, whether it takes calibration batches); a new method adds a
# config, a function and a line here
METHODS: dict[type[MethodConfig], tuple[Callable, bool]] = {
    WeightOnlyConfig: (quantize_weight_only, False),
    TorchaoWeightOnlyConfig: (quantize_torchao_weight_only, False),
    DynamicConfig: (quantize_dynamic, False),
    TorchaoDynamicConfig: (quantize_torchao_dynamic, False),
    StaticConfig: (quantize_static, True),
    TorchaoStaticConfig: (quantize_torchao_static, True),
    FloatOutputConfig: (quantize_float_output, True),
    SmoothQuantConfig: (quantize_smoothquant, True),
    DecompositionConfig: (quantize_decomposed, True),
    PEGConfig: (quantize_peg, True),
    PT2EConfig: (quantize_pt2e, True),
    GPTQConfig: (quantize_gptq, True),
    AWQConfig: (quantize_awq, True),
}


def quantize(model: nn.Module, config: MethodConfig, batches: Sequence | None = None
             ) -> tuple[nn.Module, QuantReport]:
    """Apply the method that ``config`` belongs to: one entry point for every method.

    Args:
        model: the float model; not modified.
        config: any config of :data:`METHODS`.
        batches: calibration batches, for the methods that calibrate (ignored by the others).

    Returns:
        ``(quantized_copy, report)``.
    """
    if type(config) not in METHODS:
        known = ", ".join(k.__name__ for k in METHODS)
        raise TypeError(f"config is a {type(config).__name__}: expected one of {known}")
    function, calibrates = METHODS[type(config)]
    if not calibrates:
        return function(model, config)
    if batches is None:
        raise ValueError(f"{config.label} calibrates on data: pass batches, e.g. "
                         "quantbook.data.minilm_calibration_batches(tokenizer)")
    return function(model, config, batches)


__all__ = [
    "METHODS", "DecompositionConfig", "DynamicConfig", "FloatOutputConfig", "SmoothQuantConfig",
    "quantize_decomposed", "quantize_float_output", "quantize_smoothquant", "MethodConfig",
    "AWQConfig", "GPTQConfig", "PT2EConfig", "quantize_awq", "quantize_gptq", "quantize_pt2e",
    "PackedEmbedding", "PackedLinear", "PEGConfig", "quantize_peg",
    "QuantReport", "Selection", "Sensitivity", "StaticConfig", "TorchaoDynamicConfig",
    "TorchaoStaticConfig", "TorchaoWeightOnlyConfig", "WeightOnlyConfig", "calibrate",
    "convert_static", "mixed_precision_plan", "prepare_static", "quantize", "quantize_dynamic",
    "quantize_static", "quantize_torchao_dynamic", "quantize_torchao_static",
    "quantize_torchao_weight_only", "quantize_weight_only", "select", "sensitivity_scan",
]
