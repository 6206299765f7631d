"""What a quantization method did to a model: the shared report type and the no-op guard.

Every method in ``quantbook.methods`` returns ``(quantized_model, QuantReport)``. The report
lists which modules were converted, which modules of the targeted groups were left in float
(and why), and which other parameterised leaf modules stay float, so that a notebook can show
at a glance what "quantized" means for this model.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class QuantReport:
    """Outcome of applying one quantization method to a model.

    Attributes:
        method: human-readable method name, e.g. ``"weight-only int4 group32"``.
        converted: qualified names of the modules that were replaced or quantized.
        skipped: ``(module name, reason)`` for modules of the targeted groups left in float.
        float_modules: every other leaf module with parameters that stays float
            (LayerNorm, untargeted Linear layers, ...).
    """

    method: str
    converted: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    float_modules: tuple[str, ...] = ()

    def summary(self, max_names: int = 4) -> str:
        """A few lines for a notebook: counts, and the first ``max_names`` names of each list."""
        lines = [f"{self.method}: {len(self.converted)} modules converted"]
        if self.converted:
            lines.append(f"  converted: {_abbreviate(self.converted, max_names)}")
        if self.skipped:
            reasons = [f"{name} ({reason})" for name, reason in self.skipped]
            lines.append(f"  skipped ({len(self.skipped)}): {_abbreviate(reasons, max_names)}")
        if self.float_modules:
            lines.append(
                f"  float ({len(self.float_modules)}): "
                f"{_abbreviate(self.float_modules, max_names)}"
            )
        return "\n".join(lines)


def _abbreviate(names: Sequence[str], max_names: int) -> str:
    shown = ", ".join(names[:max_names])
    rest = len(names) - max_names
    return shown + (f", ... (+{rest} more)" if rest > 0 else "")


def require_converted(converted: Iterable[str], *, method: str, targets: Iterable[str]) -> None:
    """Raise ``ValueError`` when a method converted nothing.

    "Quantized nothing" is the classic silent failure: the model runs, the accuracy is
    unchanged, and the size is the same, because no module matched.

    Args:
        converted: names of the converted modules.
        method: method name for the message.
        targets: the requested target groups (or module names).
    """
    if not list(converted):
        raise ValueError(
            f"{method} converted no module for targets={tuple(targets)!r}: the targeted groups "
            "hold no supported module (nn.Linear / nn.Embedding); check "
            "quantbook.targets.list_targets(model) and choose groups that list such modules"
        )


def float_leaf_modules(model: nn.Module, exclude: Iterable[str]) -> tuple[str, ...]:
    """Qualified names of modules that own parameters directly, except those in ``exclude``.

    These are the leaf layers (LayerNorm, Linear, ...) plus any container holding a bare
    ``nn.Parameter`` (a learned position table, say). ``""`` stands for the model itself.
    """
    excluded = set(exclude)
    return tuple(
        name
        for name, module in model.named_modules()
        if name not in excluded and any(True for _ in module.parameters(recurse=False))
    )
