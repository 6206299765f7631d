"""Eager dynamic quantization with ``torch.ao.quantization.quantize_dynamic``, checked.

Dynamic quantization stores each targeted ``nn.Linear`` weight in int8 (or float16) and quantizes
the *activations* on the fly: every call measures the input's range and picks a fresh scale and
zero point (see :func:`dynamic_activation_qparams`). No calibration data is needed.

``quantize_dynamic`` fails silently in two ways, and :func:`quantize_dynamic` guards both:

* a module that is not named in ``qconfig_spec`` (or whose *type* is not, e.g.
  ``nn.MultiheadAttention``'s ``out_proj``, a ``NonDynamicallyQuantizableLinear``) is left in
  float without a word. We key the spec by module *name* and then check what each targeted module
  really became.
* ``nn.MultiheadAttention`` reads ``out_proj.weight`` directly inside its functional forward and
  keeps its input projection as a bare ``nn.Parameter``, so nothing in it can be swapped; naming
  ``out_proj`` converts it and then breaks the forward. We skip such modules, with the reason.

Two bugs of the pinned torch 2.13 are worked around here: the x86 kernels are CPU-only (a CUDA
model fails deep inside with "Could not run 'quantized::linear_dynamic' ... 'CUDA' backend", so
:func:`quantbook.validate.check_model` refuses it up front), and ``nnq.Embedding.from_float``
forgets the 4-bit dtype of its packed weight, so the converted module would read 4-bit rows as
8-bit ones and return vectors of the wrong width (28 values instead of 64, say); we set the
dtype it forgot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from quantbook.machine import fbgemm_engine
from quantbook.methods.base import MethodConfig, QuantReport, finish, select
from quantbook.quiet import quiet_torch_ao
from quantbook.validate import check_model

GRANULARITIES = ("tensor", "channel")
DTYPES = ("int8", "float16")
EMBEDDING_BITS = (None, 8, 4)
_SMALL_SCALE = float(np.float32(6.1e-5))  # ATen's SMALL_SCALE_THRESHOLD


@dataclass(frozen=True)
class DynamicConfig(MethodConfig):
    """What to quantize dynamically, and how.

    Attributes:
        targets: Linear groups of :data:`quantbook.targets.GROUPS` (embeddings are controlled by
            ``embeddings_bits``). ``"head"`` exists for the GPT only (MiniLM has none), so the
            default leaves it out to work on both.
        granularity: ``"tensor"`` (one weight scale per matrix, ``default_dynamic_qconfig``) or
            ``"channel"`` (one per output row, ``per_channel_dynamic_qconfig``); int8 only.
        dtype: ``"int8"`` (int8 weights, int8 activations chosen per call) or ``"float16"``
            (weights stored in half precision, ``float16_dynamic_qconfig``).
        embeddings_bits: ``None`` keeps ``nn.Embedding`` tables float; 8 or 4 stores them with
            one float scale and zero point per row (``float_qparams_weight_only_qconfig`` and
            its ``_4bit`` variant). Embeddings are looked up, not multiplied, so this is
            weight-only quantization.
    """

    granularity: str = "tensor"
    dtype: str = "int8"
    embeddings_bits: int | None = None

    family: ClassVar[str] = "dynamic (eager)"

    def __post_init__(self) -> None:
        super().__post_init__()
        if "embeddings" in self.targets:
            raise ValueError(
                f"targets={self.targets!r} names 'embeddings': embedding tables are not "
                "dynamically quantized like Linear layers; set embeddings_bits=8 or 4 instead")
        for name, value, choices in (("granularity", self.granularity, GRANULARITIES),
                                     ("dtype", self.dtype, DTYPES)):
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not supported: choose one of {choices}")
        if self.dtype == "float16" and self.granularity != "tensor":
            raise ValueError(
                f"granularity={self.granularity!r} needs dtype='int8': float16 weights have no "
                "scale to share; use granularity='tensor' with dtype='float16'")
        if isinstance(self.embeddings_bits, bool) or self.embeddings_bits not in EMBEDDING_BITS:
            raise ValueError(
                f"embeddings_bits={self.embeddings_bits!r} is not supported: choose None, 8 or 4")
        kinds = (nn.Linear,) if self.embeddings_bits is None else (nn.Linear, nn.Embedding)
        object.__setattr__(self, "kinds", kinds)

    def groups(self) -> tuple[str, ...]:
        return self.targets + (("embeddings",) if self.embeddings_bits is not None else ())

    def kind_hint(self, module: nn.Module) -> str:
        if isinstance(module, nn.Embedding) and self.embeddings_bits is None:
            return "; set embeddings_bits=8 or 4 to quantize embedding tables"
        return ""

    @property
    def label(self) -> str:
        """E.g. ``"dynamic int8 per-channel, embeddings 4-bit"``."""
        name = f"dynamic {self.dtype}"
        if self.dtype == "int8":
            name += f" per-{self.granularity}"
        if self.embeddings_bits is not None:
            name += f", embeddings {self.embeddings_bits}-bit"
        return name


def _qconfigs(config: DynamicConfig) -> dict[type[nn.Module], object]:
    from torch.ao import quantization as tq

    if config.dtype == "float16":
        linear = tq.float16_dynamic_qconfig
    elif config.granularity == "channel":
        linear = tq.per_channel_dynamic_qconfig
    else:
        linear = tq.default_dynamic_qconfig
    embedding = {8: tq.float_qparams_weight_only_qconfig,
                 4: tq.float_qparams_weight_only_qconfig_4bit}.get(config.embeddings_bits)
    return {nn.Linear: linear, nn.Embedding: embedding}


def _fix_4bit_embeddings(model: nn.Module, names: list[str]) -> None:
    """Set the 4-bit dtype that ``nnq.Embedding.from_float`` forgets (torch 2.13)."""
    for name in names:
        module = model.get_submodule(name)
        module.dtype = torch.quint4x2
        module._packed_params.dtype = torch.quint4x2


def quantize_dynamic(model: nn.Module, config: DynamicConfig = DynamicConfig()
                     ) -> tuple[nn.Module, QuantReport]:
    """Return a dynamically quantized copy of ``model`` and a report of what really changed.

    Args:
        model: a float32 model on the CPU (quantbook's GPT or MiniLM for group ``targets``;
            any model when ``config.modules`` names the layers). It is not modified.
        config: the recipe.

    Returns:
        ``(quantized_copy, report)``; ``report.converted`` lists the modules that were really
        swapped (``DynamicQuantizedLinear`` / ``QuantizedEmbedding``), ``report.skipped`` the
        selected ones left float with the reason.
    """
    from torch.ao.nn import quantized as nnq
    from torch.ao.nn.quantized import dynamic as nnqd

    if not isinstance(config, DynamicConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a DynamicConfig")
    check_model(model, config.label)
    engine = torch.backends.quantized.engine
    if config.dtype == "float16" and not fbgemm_engine():
        raise ValueError(f"dtype='float16' needs the x86 or fbgemm engine, and the engine in use "
                         f"is {engine!r} (torch.backends.quantized.engine): {engine} has no "
                         "float16 dynamic Linear. Use dtype='int8' on this engine")
    selection = select(model, config)
    qconfigs = _qconfigs(config)
    spec = {name: qconfigs[type(model.get_submodule(name))] for name in selection.chosen}
    with quiet_torch_ao():
        from torch.ao.quantization import quantize_dynamic as torch_quantize_dynamic

        quantized = torch_quantize_dynamic(model, spec, inplace=False)
    if config.embeddings_bits == 4:
        _fix_4bit_embeddings(quantized, [n for n in spec
                                         if isinstance(model.get_submodule(n), nn.Embedding)])
    return finish(quantized, config, selection,
                  lambda m: type(m) in (nnqd.Linear, nnq.Embedding))


def engine_reduces_range(engine: str | None = None) -> bool:
    """Whether the quantized engine's dynamic int8 Linear quantizes activations to 7 bits.

    ``x86``, ``fbgemm`` and ``onednn`` honour ``reduce_range`` (codes ``[0, 127]``, so that the
    16-bit intermediate sums of int8 multiplies without VNNI cannot saturate); ``qnnpack``, the
    engine of ARM builds, ignores it and uses all of ``[0, 255]``, with the warning "qnnpack
    incorrectly ignores reduce_range".

    Args:
        engine: a name from ``torch.backends.quantized.supported_engines``; ``None`` (default)
            means the engine in use, ``torch.backends.quantized.engine``.
    """
    engines = torch.backends.quantized.supported_engines
    engine = torch.backends.quantized.engine if engine is None else engine
    if engine not in engines or engine == "none":
        raise ValueError(f"engine={engine!r} is not supported here: choose from "
                         f"{[e for e in engines if e != 'none']}")
    return engine != "qnnpack"


def dynamic_activation_qparams(x: torch.Tensor,
                               reduce_range: bool | None = None) -> tuple[float, int]:
    """The activation ``scale`` and ``zero_point`` a dynamic int8 Linear picks for input ``x``.

    The range is widened to contain 0 (so that 0 is exact), mapped onto quint8 ``[0, 255]``, or
    ``[0, 127]`` with ``reduce_range`` (what the x86/fbgemm kernels use, to keep their 16-bit
    intermediate sums from overflowing), and the zero point is rounded from whichever end gives
    the smaller error. This reproduces ``torch._choose_qparams_per_tensor`` bit for bit.

    Example: ``x`` in ``[-1.0, 3.0]`` with ``reduce_range=True``: scale = 4 / 127 = 0.0315,
    zero_point = round(0 + 1 / 0.0315) = 32.

    Args:
        x: the float input of one call (any shape).
        reduce_range: use 7 bits; ``None`` (default) does what the engine in use does
            (:func:`engine_reduces_range`: 7 bits on x86, 8 under qnnpack).

    Returns:
        ``(scale, zero_point)`` as a Python float and int.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
        raise TypeError(f"x must be a non-empty floating-point tensor, got {type(x).__name__}")
    if reduce_range is None:
        reduce_range = engine_reduces_range()
    qmin, qmax = (0, 127) if reduce_range else (0, 255)
    low = min(float(x.min()), 0.0)
    high = max(float(x.max()), 0.0)
    scale = (high - low) / (qmax - qmin)  # in double precision, as ATen does
    with np.errstate(over="ignore", divide="ignore"):
        reciprocal = np.float32(1.0) / np.float32(scale)
    if np.float32(scale) == 0 or np.isinf(reciprocal):
        scale = 0.1  # an all-zero input: any scale is exact; ATen uses 0.1
    if scale < _SMALL_SCALE:  # ATen widens tiny ranges so that 1 / scale stays moderate
        f32 = np.float32  # ATen keeps min, max and this adjustment in single precision
        amplifier = f32(_SMALL_SCALE) / f32(scale)
        if low == 0.0:
            high = float(f32(_SMALL_SCALE) * f32(qmax - qmin))
        elif high == 0.0:
            low = float(-f32(_SMALL_SCALE) * f32(qmax - qmin))
        else:
            low, high = float(f32(low) * amplifier), float(f32(high) * amplifier)
        scale = _SMALL_SCALE
    from_min, from_max = qmin - low / scale, qmax - high / scale
    error_min = abs(qmin) - abs(low / scale)
    error_max = abs(qmax) - abs(high / scale)
    zero_point = from_min if error_min < error_max else from_max
    if zero_point < qmin:
        return scale, qmin
    if zero_point > qmax:
        return scale, qmax
    return scale, int(round(zero_point))  # round half to even, as nearbyint
