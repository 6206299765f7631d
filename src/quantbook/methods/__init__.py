"""Quantization methods: one frozen config and one function each.

Each function returns a quantized *copy* of the model and a :class:`QuantReport`. The torchao
variants import torchao only when called, so ``import quantbook.methods`` stays fast and quiet.
The torch.ao-based methods (dynamic, static, sensitivity) load on first access.
"""

import importlib

from quantbook.methods.report import QuantReport, float_leaf_modules, require_converted
from quantbook.methods.torchao_weight_only import torchao_config, torchao_weight_only
from quantbook.methods.weight_only import (
    PackedEmbedding,
    PackedLinear,
    WeightOnlyConfig,
    quantize_weights,
)

# name -> submodule, imported on first access (``quantbook.methods.DynamicConfig``)
_LAZY = {
    "DynamicConfig": "dynamic",
    "quantize_dynamic_model": "dynamic",
    "StaticConfig": "static",
    "prepare_static": "static",
    "calibrate": "static",
    "convert_static": "static",
    "quantize_static": "static",
    "torchao_dynamic": "torchao_activation",
    "torchao_static": "torchao_activation",
    "sensitivity_scan": "sensitivity",
    "mixed_precision_plan": "sensitivity",
}

__all__ = [
    "PackedEmbedding",
    "PackedLinear",
    "QuantReport",
    "WeightOnlyConfig",
    "float_leaf_modules",
    "quantize_weights",
    "require_converted",
    "torchao_config",
    "torchao_weight_only",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"quantbook.methods.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'quantbook.methods' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
