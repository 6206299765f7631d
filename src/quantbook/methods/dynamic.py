"""Eager dynamic quantization with ``torch.ao.quantization.quantize_dynamic``, checked.

Dynamic quantization stores each targeted ``nn.Linear`` weight in int8 (or float16) and quantizes
the *activations* on the fly: every call measures the input's range and picks a fresh scale and
zero point (see :func:`dynamic_activation_qparams`). No calibration data is needed.

``quantize_dynamic`` fails silently in two ways, and :func:`quantize_dynamic_model` guards both:

* a module that is not named in ``qconfig_spec`` (or whose *type* is not, e.g.
  ``nn.MultiheadAttention``'s ``out_proj``, a ``NonDynamicallyQuantizableLinear``) is left in
  float without a word. We key the spec by module *name* and then check what each targeted module
  really became.
* ``nn.MultiheadAttention`` reads ``out_proj.weight`` directly inside its functional forward and
  keeps its input projection as a bare ``nn.Parameter``, so nothing in it can be swapped; naming
  ``out_proj`` converts it and then breaks the forward. We skip such modules, with the reason.

Two bugs of the pinned torch 2.13 are worked around here: the x86 kernels are CPU-only (a CUDA
model fails deep inside with "Could not run 'quantized::linear_dynamic' ... 'CUDA' backend", so
we refuse it up front), and ``nnq.Embedding.from_float`` forgets the 4-bit dtype of its packed
weight, so the converted module would read 4-bit rows as 8-bit ones and return vectors of the
wrong width (28 values instead of 64, say); we set the dtype it forgot.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from quantbook.methods.report import QuantReport, float_leaf_modules
from quantbook.quiet import silence_known_noise
from quantbook.targets import resolve_targets

GRANULARITIES = ("tensor", "channel")
DTYPES = ("int8", "float16")
EMBEDDING_BITS = (None, 8, 4)
_MHA_REASON = (
    "inside nn.MultiheadAttention, whose forward reads out_proj.weight directly and keeps the "
    "input projection as a bare Parameter, so no part of it can be swapped for a quantized module"
)
_SMALL_SCALE = float(np.float32(6.1e-5))  # ATen's SMALL_SCALE_THRESHOLD
_CUDA_ERROR = "Could not run 'quantized::linear_dynamic' with arguments from the 'CUDA' backend"


@dataclass(frozen=True)
class DynamicConfig:
    """What to quantize dynamically, and how.

    Attributes:
        targets: module groups from :data:`quantbook.targets.GROUPS` whose ``nn.Linear`` layers
            are quantized; embeddings are controlled by ``embeddings_bits``. ``"head"`` exists for
            the GPT only (MiniLM has none), so the default leaves it out to work on both.
        granularity: ``"tensor"`` (one weight scale per matrix, ``default_dynamic_qconfig``) or
            ``"channel"`` (one per output row, ``per_channel_dynamic_qconfig``); int8 only.
        dtype: ``"int8"`` (int8 weights, int8 activations chosen per call) or ``"float16"``
            (weights stored in half precision, ``float16_dynamic_qconfig``).
        embeddings_bits: ``None`` keeps ``nn.Embedding`` tables float; 8 or 4 stores them with
            one float scale and zero point per row (``float_qparams_weight_only_qconfig`` and
            its ``_4bit`` variant). Embeddings are looked up, not multiplied, so this is
            weight-only quantization.
    """

    targets: tuple[str, ...] = ("attention", "ffn")
    granularity: str = "tensor"
    dtype: str = "int8"
    embeddings_bits: int | None = None

    def __post_init__(self):
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        object.__setattr__(self, "targets", targets)
        if "embeddings" in targets:
            raise ValueError(
                f"targets={targets!r} names 'embeddings': embedding tables are not dynamically "
                "quantized like Linear layers; set embeddings_bits=8 or 4 instead"
            )
        for name, value, choices in (
            ("granularity", self.granularity, GRANULARITIES),
            ("dtype", self.dtype, DTYPES),
        ):
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not supported: choose one of {choices}")
        if self.dtype == "float16" and self.granularity != "tensor":
            raise ValueError(
                f"granularity={self.granularity!r} needs dtype='int8': float16 weights have no "
                "scale to share; use granularity='tensor' with dtype='float16'"
            )
        if isinstance(self.embeddings_bits, bool) or self.embeddings_bits not in EMBEDDING_BITS:
            raise ValueError(
                f"embeddings_bits={self.embeddings_bits!r} is not supported: choose None, 8 or 4"
            )

    @property
    def method(self) -> str:
        """A short name for reports, e.g. ``"dynamic int8 per-channel, embeddings 4-bit"``."""
        name = f"dynamic {self.dtype}"
        if self.dtype == "int8":
            name += f" per-{self.granularity}"
        if self.embeddings_bits is not None:
            name += f", embeddings {self.embeddings_bits}-bit"
        return name


@contextlib.contextmanager
def quiet_torch_ao() -> Iterator[None]:
    """Run torch.ao / torchao calls without letting their known warnings reach the caller."""
    with warnings.catch_warnings():
        silence_known_noise()
        yield


def check_cpu(model: nn.Module, method: str) -> None:
    """Raise ``ValueError`` if any parameter or buffer of ``model`` is not on the CPU."""
    devices = sorted({t.device.type for t in [*model.parameters(), *model.buffers()]} - {"cpu"})
    if devices:
        raise ValueError(
            f"{method}: the model has tensors on {', '.join(devices)}, but eager quantized "
            f"kernels run on the CPU only (PyTorch would fail later with \"{_CUDA_ERROR}\"): "
            "quantize model.cpu(), or on a GPU use torchao's Int8DynamicActivationInt8WeightConfig "
            "(quantbook.methods.torchao_dynamic)"
        )


def target_names(model: nn.Module, groups: Iterable[str], modules: Iterable[str] | None,
                 exclude: Iterable[str]) -> tuple[list[str], set[str]]:
    """Resolve the module names to quantize: explicit ``modules`` or the ``groups``' members.

    Returns:
        ``(names, excluded)``, names in model order without repeats; every name exists.
    """
    available = dict(model.named_modules())
    if modules is None:
        names = [n for members in resolve_targets(model, groups).values() for n in members]
    else:
        if isinstance(modules, str):
            raise TypeError(f"modules={modules!r} is a single string: pass a list of names")
        names = list(modules)
    excluded = set([exclude] if isinstance(exclude, str) else exclude)
    for label, values in (("modules", names), ("exclude", excluded)):
        unknown = [n for n in values if n not in available or n == ""]
        if unknown:
            raise ValueError(
                f"{label} names {unknown[:3]} that are not submodules of this "
                f"{type(model).__name__}: use names from dict(model.named_modules()), e.g. "
                f"{[n for n in available if n][:2]}"
            )
    return list(dict.fromkeys(names)), excluded


def mha_members(model: nn.Module) -> set[str]:
    """Names of all modules that live inside an ``nn.MultiheadAttention``."""
    inside = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            prefix = f"{name}." if name else ""
            inside.update(prefix + child for child, _ in module.named_modules() if child)
    return inside


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


def _plan(model: nn.Module, names: list[str], excluded: set[str],
          config: DynamicConfig) -> tuple[dict[str, object], list[tuple[str, str]]]:
    """Split the targeted names into ``{name: qconfig}`` and ``[(name, reason)]`` skipped."""
    qconfigs = _qconfigs(config)
    inside_mha = mha_members(model)
    spec, skipped = {}, []
    for name in names:
        module = model.get_submodule(name)
        kind = nn.Linear if isinstance(module, nn.Linear) else type(module)
        if name in excluded:
            skipped.append((name, "excluded: kept in float on request"))
        elif name in inside_mha:
            skipped.append((name, _MHA_REASON))
        elif kind not in qconfigs:
            skipped.append((name, f"a {type(module).__name__}: only nn.Linear and nn.Embedding "
                                  "have dynamic/weight-only quantized versions"))
        elif qconfigs[kind] is None:
            skipped.append((name, "an nn.Embedding and embeddings_bits=None"))
        else:
            spec[name] = qconfigs[kind]
    return spec, skipped


def _fix_4bit_embeddings(model: nn.Module, names: Iterable[str]) -> None:
    """Set the 4-bit dtype that ``nnq.Embedding.from_float`` forgets (torch 2.13)."""
    for name in names:
        module = model.get_submodule(name)
        module.dtype = torch.quint4x2
        module._packed_params.dtype = torch.quint4x2


def quantize_dynamic_model(model: nn.Module, config: DynamicConfig | None = None, *,
                           modules: Iterable[str] | None = None,
                           exclude: Iterable[str] = ()) -> tuple[nn.Module, QuantReport]:
    """Return a dynamically quantized copy of ``model`` and a report of what really changed.

    Args:
        model: a float model on the CPU (quantbook's GPT or MiniLM for group ``targets``; any
            model when ``modules`` names the layers). It is not modified.
        config: the recipe; ``DynamicConfig()`` by default.
        modules: explicit module names to quantize instead of ``config.targets`` (e.g. one
            layer for a sensitivity scan). Embeddings among them need ``embeddings_bits``.
        exclude: module names to keep in float (e.g. a mixed-precision plan).

    Returns:
        ``(quantized_copy, report)``; ``report.converted`` lists the modules that were really
        swapped (``DynamicQuantizedLinear`` / ``QuantizedEmbedding``), ``report.skipped`` the
        targeted ones left float with the reason.

    Raises:
        ValueError: a parameter is off the CPU, a name is unknown, or nothing was converted.
    """
    from torch.ao.nn import quantized as nnq
    from torch.ao.nn.quantized import dynamic as nnqd

    config = DynamicConfig() if config is None else config
    if not isinstance(config, DynamicConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a DynamicConfig")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}: expected a torch.nn.Module")
    check_cpu(model, config.method)
    groups = config.targets
    if modules is None and config.embeddings_bits is not None:
        groups = (*groups, "embeddings")
    names, excluded = target_names(model, groups, modules, exclude)
    spec, skipped = _plan(model, names, excluded, config)
    with quiet_torch_ao():
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(model, spec, inplace=False) if spec else copy.deepcopy(model)
    _fix_4bit_embeddings(quantized, [n for n in spec if config.embeddings_bits == 4
                                     and isinstance(model.get_submodule(n), nn.Embedding)])
    converted = []
    for name in spec:
        is_linear = isinstance(model.get_submodule(name), nn.Linear)
        expected = nnqd.Linear if is_linear else nnq.Embedding
        actual = type(quantized.get_submodule(name))
        if actual is expected:
            converted.append(name)
        else:
            skipped.append((name, f"PyTorch left it as {actual.__name__}"))
    if not converted:
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped[:3]) or "no module was targeted"
        raise ValueError(
            f"{config.method} converted no module for targets={groups!r}, "
            f"modules={None if modules is None else names!r}: {reasons}. Quantizing nothing "
            "leaves the model float and unchanged; target plain nn.Linear layers (check "
            "quantbook.targets.list_targets(model)) or, for nn.MultiheadAttention, rewrite the "
            "attention with separate nn.Linear projections"
        )
    quantized.eval()
    report = QuantReport(method=config.method, converted=tuple(converted),
                         skipped=tuple(skipped),
                         float_modules=float_leaf_modules(quantized, converted))
    return quantized, report


def dynamic_activation_qparams(x: torch.Tensor, reduce_range: bool = True) -> tuple[float, int]:
    """The activation ``scale`` and ``zero_point`` a dynamic int8 Linear picks for input ``x``.

    The range is widened to contain 0 (so that 0 is exact), mapped onto quint8 ``[0, 255]``, or
    ``[0, 127]`` with ``reduce_range`` (what the x86/fbgemm kernels use, to keep their 16-bit
    intermediate sums from overflowing), and the zero point is rounded from whichever end gives
    the smaller error. This reproduces ``torch._choose_qparams_per_tensor`` bit for bit.

    Example: ``x`` in ``[-1.0, 3.0]`` with ``reduce_range=True``: scale = 4 / 127 = 0.0315,
    zero_point = round(0 + 1 / 0.0315) = 32.

    Args:
        x: the float input of one call (any shape).
        reduce_range: use 7 bits; ``True`` matches ``DynamicQuantizedLinear`` on x86.

    Returns:
        ``(scale, zero_point)`` as a Python float and int.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
        raise TypeError(f"x must be a non-empty floating-point tensor, got {type(x).__name__}")
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
