"""Weight-only quantization to 2..8 bits with packed storage (round to nearest, RTN).

Each targeted ``nn.Linear`` / ``nn.Embedding`` becomes a :class:`~quantbook.methods.packed.
PackedLinear` / ``PackedEmbedding``: its weight is stored as packed codes plus scales and
dequantized at every call, so activations and arithmetic stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from quantbook import affine, packing
from quantbook.grid import check_group_size
from quantbook.methods.base import MethodConfig, QuantReport, finish, select, swap_modules
from quantbook.methods.packed import PackedEmbedding, PackedLinear
from quantbook.validate import check_model


@dataclass(frozen=True)
class WeightOnlyConfig(MethodConfig):
    """Settings for :func:`quantize_weight_only`; validated by :class:`affine.QuantSpec`."""

    bits: int = 4
    scheme: str = "symmetric"  # zero_point is 0, so nothing but the scale is stored per channel
    granularity: str = "channel"  # one scale per output channel (Linear) or per row (Embedding)
    group_size: int | None = None  # "group" only: inputs per scale, contiguous along each row
    range_method: str = "minmax"  # "minmax" | "percentile" | "mse", as in QuantSpec

    family: ClassVar[str] = "weight-only (quantbook)"
    kinds: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Embedding)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.spec()  # raises for bad bits / scheme / granularity / group_size / range_method

    def spec(self) -> affine.QuantSpec:
        """The :class:`affine.QuantSpec` applied to every weight (axis 0 = output channel)."""
        return affine.QuantSpec(bits=self.bits, scheme=self.scheme, granularity=self.granularity,
                                axis=0, group_size=self.group_size,
                                range_method=self.range_method)

    @property
    def label(self) -> str:
        """E.g. ``"weight-only int4 group32"``."""
        how = {"tensor": "per-tensor", "channel": "per-channel"}.get(
            self.granularity, f"group{self.group_size}")
        suffix = " asymmetric" if self.scheme == "asymmetric" else ""
        return f"weight-only int{self.bits} {how}{suffix}"


def weight_rule(config: WeightOnlyConfig):
    """The weight-only rule: groups must divide the rows; renormalizing tables stay float."""
    def accept(name: str, module: nn.Module) -> str | None:
        if isinstance(module, nn.Embedding) and module.max_norm is not None:
            return f"max_norm={module.max_norm} renormalizes the table at lookup"
        if config.granularity == "group":
            n_inputs = (module.in_features if isinstance(module, nn.Linear)
                        else module.embedding_dim)
            check_group_size(config.group_size, n_inputs, f"the row length of module {name!r}")
        return None
    return accept


def _check_config(config: object) -> None:
    if not isinstance(config, WeightOnlyConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a WeightOnlyConfig")


def pack_module(module: nn.Module, spec: affine.QuantSpec,
                cache_weight: bool = False) -> nn.Module:
    """The packed counterpart of one float ``nn.Linear`` or ``nn.Embedding``."""
    if isinstance(module, nn.Linear):
        return PackedLinear.from_linear(module, spec, cache_weight=cache_weight)
    return PackedEmbedding.from_embedding(module, spec)


def quantize_weight_only(model: nn.Module, config: WeightOnlyConfig = WeightOnlyConfig(), *,
                         cache: dict | None = None,
                         cache_weight: bool = False) -> tuple[nn.Module, QuantReport]:
    """Return a copy of ``model`` with packed weights in the selected modules, and a report.

    Args:
        model: a float32 CPU model (quantbook's GPT or MiniLM for group ``targets``).
        config: the recipe.
        cache: a dict shared across calls: packed modules are kept under
            ``(float module, spec, cache_weight)`` and reused, and float tensors are shared
            with ``model`` instead of copied (what a sweep over many configs wants). ``None``
            builds everything anew.
        cache_weight: packed Linears keep their weight once dequantized (a float copy in
            memory, never in the ``state_dict``): faster repeated calls, none of the memory
            saving. It changes speed and memory, not a single output value.
    """
    _check_config(config)
    if cache is not None and not isinstance(cache, dict):
        raise TypeError(f"cache is a {type(cache).__name__}: pass a dict (or None)")
    check_model(model, config.label)
    selection = select(model, config, weight_rule(config))
    spec = config.spec()

    def build(name: str, module: nn.Module) -> nn.Module:
        if cache is None:
            return pack_module(module, spec, cache_weight)
        key = (module, spec, cache_weight)  # the float module itself: no other model's entry
        if key not in cache:
            cache[key] = pack_module(module, spec, cache_weight)
        return cache[key]

    quantized = swap_modules(model, selection.chosen, build, share=cache is not None)
    return finish(quantized, config, selection,
                  lambda m: isinstance(m, PackedLinear | PackedEmbedding))


def predicted_size_bytes(model: nn.Module, config: WeightOnlyConfig) -> int:
    """Calculate, from the float model's shapes alone, the tensor bytes of its quantized copy.

    Every weight that ``config`` converts costs its packed codes plus its scales (and zero
    points, see :func:`quantbook.packing.storage_bytes`); every other entry of the
    ``state_dict`` keeps its size. Example: the book's GPT holds 786,432 attention and FFN
    weights in 24 matrices with 4,608 rows in all; at 4 bits per channel they take
    ``786,432 / 2 + 4,608 * 4 = 411,648`` bytes instead of ``786,432 * 4``.
    """
    _check_config(config)
    converted = set(select(model, config, weight_rule(config)).chosen)
    spec = config.spec()
    total = 0
    for key, tensor in model.state_dict().items():
        module_name, _, attr = key.rpartition(".")
        if module_name in converted and attr == "weight":
            total += packing.storage_bytes(tuple(tensor.shape), spec)
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def converted_weight_bytes(model: nn.Module, config: WeightOnlyConfig) -> tuple[int, int]:
    """``(float32 bytes, quantized bytes)`` of just the weights that ``config`` converts.

    Their ratio is the compression of the quantized layers alone, e.g. 512 / 132 = 3.88 for
    int8 per channel on 128-wide rows: 512 bytes become 128 codes plus a 4-byte scale.
    """
    _check_config(config)
    spec = config.spec()
    names = select(model, config, weight_rule(config)).chosen
    weights = [model.get_submodule(name).weight for name in names]
    return (sum(4 * w.numel() for w in weights),
            sum(packing.storage_bytes(tuple(w.shape), spec) for w in weights))
