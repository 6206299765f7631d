"""The core every method shares: its config fields, module selection, the report.

Every method has one shape::

    quantized, report = quantize_<method>(model, config, ...)

* ``config`` is a frozen dataclass derived from :class:`MethodConfig`. It checks itself when
  built and carries the selection: ``targets`` (group names), ``exclude`` (module names kept
  float) or ``modules`` (explicit module names instead of groups).
* :func:`select` picks the modules, gives one reason per module it skips, refuses a module
  that is already quantized, and refuses a selection that would convert nothing.
* The method replaces the chosen modules in a deep copy (:func:`swap_modules`, or a torch /
  torchao call) and :func:`finish` checks what really changed and writes the
  :class:`QuantReport`. The returned copy is always in eval mode; the input model is untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from quantbook.targets import check_groups, resolve_targets

MHA_REASON = ("inside nn.MultiheadAttention, whose forward reads out_proj.weight directly and "
              "keeps the input projection as a bare Parameter: no part of it can be swapped")
EXCLUDED_REASON = "excluded: kept in float on request"


def _names(value: object, field_name: str) -> tuple[str, ...]:
    """A tuple of non-empty strings from a string or an iterable of strings."""
    values = (value,) if isinstance(value, str) else value
    try:
        values = tuple(values)
    except TypeError:
        raise TypeError(f"{field_name}={value!r} is not supported: pass a tuple of "
                        "module names") from None
    bad = [v for v in values if not isinstance(v, str) or not v]
    if bad:
        raise TypeError(f"{field_name}={value!r} holds {bad[:2]}: expected module names "
                        "(non-empty str), as in dict(model.named_modules())")
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Selection fields shared by every method's config.

    Attributes:
        targets: module groups of :data:`quantbook.targets.GROUPS` to quantize.
        exclude: module names to keep in float (e.g. a mixed-precision plan).
        modules: explicit module names to quantize instead of ``targets`` (any model).
    """

    targets: tuple[str, ...] = ("attention", "ffn")
    exclude: tuple[str, ...] = ()
    modules: tuple[str, ...] | None = None

    family: ClassVar[str] = ""  # e.g. "dynamic (eager)": the bench and chapter 09 group by it
    kinds: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear,)  # module types it converts

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(check_groups(self.targets, "targets")))
        object.__setattr__(self, "exclude", _names(self.exclude, "exclude"))
        if self.modules is not None:
            modules = _names(self.modules, "modules")
            if not modules:
                raise ValueError("modules=() is empty: name at least one module, or pass "
                                 "modules=None to use targets")
            object.__setattr__(self, "modules", modules)

    @property
    def label(self) -> str:
        """The method's display name in reports, tables and charts."""
        raise NotImplementedError

    def groups(self) -> tuple[str, ...]:
        """The groups to resolve when ``modules`` is None (a method may add its own)."""
        return self.targets

    def kind_hint(self, module: nn.Module) -> str:
        """What to change to convert a module of a type this config skips ("" for nothing)."""
        return ""


@dataclass(frozen=True)
class QuantReport:
    """What a method did to a model.

    Attributes:
        label: the method's label, e.g. ``"weight-only int4 group32"``.
        family: the method's family, e.g. ``"weight-only (quantbook)"``.
        converted: names of the modules that were really quantized.
        skipped: ``(name, reason)`` of selected modules left in float.
        float_modules: every other module with parameters that stays float (LayerNorm, ...).
        float_ops: operations that run in float between quantized modules (static methods).
    """

    label: str
    family: str
    converted: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    float_modules: tuple[str, ...] = ()
    float_ops: tuple[str, ...] = field(default=())

    def summary(self, max_names: int = 4) -> str:
        """A few lines for a notebook: counts, and the first ``max_names`` names of each list."""
        lines = [f"{self.label}: {len(self.converted)} modules converted"]
        if self.converted:
            lines.append(f"  converted: {_abbreviate(self.converted, max_names)}")
        if self.skipped:
            reasons = [f"{name} ({reason})" for name, reason in self.skipped]
            lines.append(f"  skipped ({len(self.skipped)}): {_abbreviate(reasons, max_names)}")
        if self.float_modules:
            lines.append(f"  float ({len(self.float_modules)}): "
                         f"{_abbreviate(self.float_modules, max_names)}")
        if self.float_ops:
            lines.append(f"  float operations between them: {', '.join(self.float_ops)}")
        return "\n".join(lines)


def _abbreviate(names: Sequence[str], max_names: int) -> str:
    shown = ", ".join(names[:max_names])
    rest = len(names) - max_names
    return shown + (f", ... (+{rest} more)" if rest > 0 else "")


def mha_members(model: nn.Module) -> set[str]:
    """Names of all modules that live inside an ``nn.MultiheadAttention``."""
    inside = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            prefix = f"{name}." if name else ""
            inside.update(prefix + child for child, _ in module.named_modules() if child)
    return inside


def quantized_kind(module: nn.Module) -> str | None:
    """What makes ``module`` already quantized (or prepared), or ``None`` for a float module."""
    if hasattr(module, "qconfig") and module.qconfig is not None:
        return "prepared for eager static quantization (it carries a qconfig)"
    kind = type(module)
    if kind.__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized",
                                   "quantbook.methods")):
        return f"a {module._get_name()}"  # torch.ao prints DynamicQuantizedLinear, not Linear
    if type(module).__name__ == "QuantWrapper":
        return "a QuantWrapper from eager static quantization"
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and type(weight) not in (torch.Tensor, nn.Parameter):
        return f"its weight is a {type(weight).__name__} (a torchao quantized tensor)"
    return None


@dataclass(frozen=True)
class Selection:
    """The modules a method will convert, and those it leaves float with the reason."""

    chosen: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]


def select(model: nn.Module, config: MethodConfig,
           accept: Callable[[str, nn.Module], str | None] | None = None) -> Selection:
    """Choose the modules ``config`` asks for; refuse what cannot be right.

    Args:
        model: the float model.
        config: any method's config.
        accept: ``accept(name, module)`` returns why this method cannot convert a module of
            the right type (``None``: it can), or raises for a setting that is wrong for it.

    Raises:
        ValueError: an unknown module name, a module already quantized, or nothing to convert.
    """
    available = dict(model.named_modules())
    if config.modules is None:
        names = [n for members in resolve_targets(model, config.groups()).values()
                 for n in members]
    else:
        names = list(config.modules)
    for field_name, values in (("modules", names), ("exclude", config.exclude)):
        unknown = [n for n in values if n not in available]
        if unknown:
            raise ValueError(
                f"{field_name} names {unknown[:3]}, which are not submodules of this "
                f"{type(model).__name__}: use names from dict(model.named_modules()), e.g. "
                f"{[n for n in available if n][:2]}")
    inside_mha = mha_members(model)
    kinds = " or ".join(k.__name__ for k in config.kinds)
    excluded = tuple(config.exclude)
    inside_excluded = tuple(f"{e}." for e in excluded)  # excluding a block excludes its layers
    chosen, skipped = [], []
    for name in dict.fromkeys(names):
        module = available[name]
        done = quantized_kind(module)
        if done is not None:
            raise ValueError(
                f"module {name!r} is already quantized ({done}): quantize the float model, "
                "not a quantized copy (keep a reference to the float model, or reload it)")
        if name in excluded or name.startswith(inside_excluded):
            skipped.append((name, EXCLUDED_REASON))
        elif name in inside_mha:
            skipped.append((name, MHA_REASON))
        elif type(module) not in config.kinds:
            reason = f"a {type(module).__name__}: {config.label} converts {kinds}"
            skipped.append((name, reason + config.kind_hint(module)))
        elif accept is not None and (reason := accept(name, module)) is not None:
            skipped.append((name, reason))
        else:
            chosen.append(name)
    if not chosen:
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped[:3]) or "no module was selected"
        raise ValueError(
            f"{config.label} would convert no module ({reasons}). Quantizing nothing leaves "
            "the model float and unchanged: choose targets or modules that hold "
            f"{kinds} layers (see quantbook.targets.list_targets(model))")
    return Selection(tuple(chosen), tuple(skipped))


def swap_modules(model: nn.Module, names: Iterable[str],
                 build: Callable[[str, nn.Module], nn.Module], *,
                 share: bool = False) -> nn.Module:
    """A copy of ``model`` in which each named module is replaced by ``build(name, module)``.

    Args:
        share: share the float tensors of the untouched modules with ``model`` instead of
            copying them (a sweep builds many copies of one model; none is trained).
    """
    memo = {}
    if share:
        memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    copied = copy.deepcopy(model, memo)
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(copied.get_submodule(parent), child, build(name, model.get_submodule(name)))
    return copied


def float_leaf_modules(model: nn.Module, exclude: Iterable[str]) -> tuple[str, ...]:
    """Names of modules that own parameters directly, except ``exclude`` and their children.

    These are the leaf layers (LayerNorm, Linear, ...) plus any container holding a bare
    ``nn.Parameter`` (a learned position table, say). ``""`` stands for the model itself.
    """
    excluded = tuple(exclude)
    inside = tuple(f"{n}." for n in excluded)
    return tuple(
        name for name, module in model.named_modules()
        if name not in excluded and not name.startswith(inside)
        and any(True for _ in module.parameters(recurse=False)))


def finish(quantized: nn.Module, config: MethodConfig, selection: Selection,
           is_converted: Callable[[nn.Module], bool], *,
           float_ops: tuple[str, ...] = ()) -> tuple[nn.Module, QuantReport]:
    """Check what really changed, refuse "nothing converted", and report.

    Args:
        quantized: the copy the method built (set to eval mode here).
        is_converted: ``is_converted(module)`` for a chosen module of ``quantized``.
        float_ops: float operations between the quantized modules, for the report.
    """
    converted, skipped = [], list(selection.skipped)
    for name in selection.chosen:
        module = quantized.get_submodule(name)
        if is_converted(module):
            converted.append(name)
        else:
            skipped.append((name, f"the library left it as a {type(module).__name__}"))
    if not converted:
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped[:3])
        raise ValueError(f"{config.label} converted no module ({reasons}): the model would "
                         "stay float; report this model and config as a bug")
    quantized.eval()
    report = QuantReport(label=config.label, family=config.family, converted=tuple(converted),
                         skipped=tuple(skipped),
                         float_modules=float_leaf_modules(quantized, converted),
                         float_ops=float_ops)
    return quantized, report


def run_hooked(model: nn.Module, batches: Sequence, run_fn: Callable[[nn.Module, object], None],
               handles: Sequence) -> None:
    """Run ``batches`` through ``model`` without gradients, then remove the hook ``handles``
    (also when a batch fails), so no statistics hook outlives its pass."""
    try:
        with torch.no_grad():
            for batch in batches:
                run_fn(model, batch)
    finally:
        for handle in handles:
            handle.remove()
