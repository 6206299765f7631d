"""Which layers suffer most from quantization? Quantize one at a time, measure, rank.

A sensitivity scan quantizes a single module with a method's config, evaluates the model, and
moves on; the float model is never modified. The modules whose quantization costs the most are
the candidates to keep in float: a *mixed-precision plan*, applied as
``quantize_dynamic(model, replace(config, exclude=plan))``. A module whose quantized model
evaluates to NaN is ranked the most harmful, never harmless.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from torch import nn

from quantbook.methods.base import MethodConfig
from quantbook.methods.dynamic import DynamicConfig


@dataclass(frozen=True)
class Sensitivity:
    """The cost of quantizing one module alone.

    Attributes:
        module: the module's name.
        metric: the metric with only this module quantized.
        drop: how much worse than float (positive = worse), e.g. float Pearson 0.60, with one
            layer quantized 0.58: drop 0.02. ``inf`` when the metric is NaN.
    """

    module: str
    metric: float
    drop: float


def sensitivity_scan(model: nn.Module, evaluate_fn: Callable[[nn.Module], float],
                     modules: Sequence[str], config: MethodConfig | None = None,
                     batches: Sequence | None = None, *, higher_is_better: bool = True,
                     progress: Callable[[int, int], None] | None = None) -> list[Sensitivity]:
    """Quantize each module alone, evaluate, and rank the modules by the metric they cost.

    Args:
        model: the float model; never modified.
        evaluate_fn: ``evaluate_fn(model) -> float``, e.g. Lee Pearson, or the mean cosine
            between the model's embeddings and the float ones (cheaper, no labels needed).
        modules: names of the modules to try, e.g. ``list_targets(model)["ffn"]``.
        config: the method's config (``DynamicConfig()`` when None); each module is quantized
            by that config's method with ``replace(config, modules=(name,), exclude=())``.
        batches: calibration batches, for methods that calibrate (static ones).
        higher_is_better: ``False`` for metrics such as perplexity.
        progress: optional ``progress(done, total)`` called after each module.

    Returns:
        One :class:`Sensitivity` per module, most harmful first.
    """
    modules = [modules] if isinstance(modules, str) else list(modules)
    if not modules:
        raise ValueError("modules is empty: pass the names of the modules to scan, e.g. "
                         "quantbook.targets.list_targets(model)['ffn']")
    config = DynamicConfig() if config is None else config
    if not isinstance(config, MethodConfig):
        raise TypeError(f"config is a {type(config).__name__}: expected a method's config "
                        "such as DynamicConfig()")
    from quantbook.methods import quantize  # the dispatcher, which imports this module

    baseline = _metric(evaluate_fn, model)
    if math.isnan(baseline):
        raise ValueError("evaluate_fn(model) is NaN for the float model: fix the evaluation "
                         "before ranking layers by it")
    sign = 1.0 if higher_is_better else -1.0
    rows = []
    for done, name in enumerate(modules, start=1):
        quantized, _ = quantize(model, replace(config, modules=(name,), exclude=()), batches)
        metric = _metric(evaluate_fn, quantized)
        drop = math.inf if math.isnan(metric) else sign * (baseline - metric)
        rows.append(Sensitivity(name, metric, drop))
        if progress is not None:
            progress(done, len(modules))
    return sorted(rows, key=lambda row: row.drop, reverse=True)


def _metric(evaluate_fn: Callable[[nn.Module], float], model: nn.Module) -> float:
    value = evaluate_fn(model)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"evaluate_fn(model) returned a {type(value).__name__}: return one "
                        "number, e.g. lambda m: evaluate(m)['perplexity']")
    return float(value)


def mixed_precision_plan(scan: Iterable[Sensitivity], keep_float: int | float) -> tuple[str, ...]:
    """Names of the most sensitive modules to keep in float.

    Args:
        scan: the output of :func:`sensitivity_scan` (any order).
        keep_float: an ``int`` keeps that many modules float (0 keeps none); a ``float`` in
            ``(0, 1]`` keeps that fraction of the scanned modules, rounded up (0.1 of 36 -> 4).

    Returns:
        Module names, most sensitive first; pass them as the config's ``exclude``.
    """
    rows = list(scan)
    bad = [type(row).__name__ for row in rows if not isinstance(row, Sensitivity)]
    if bad:
        raise TypeError(f"scan holds {bad[0]} rows: expected the Sensitivity rows that "
                        "sensitivity_scan returns")
    rows = sorted(rows, key=lambda row: row.drop, reverse=True)
    if isinstance(keep_float, bool) or not isinstance(keep_float, int | float):
        raise TypeError(f"keep_float={keep_float!r} is not supported: pass an int (a count) "
                        "or a float in (0, 1] (a fraction)")
    if isinstance(keep_float, int):
        if not 0 <= keep_float <= len(rows):
            raise ValueError(f"keep_float={keep_float} is out of range: choose 0..{len(rows)} "
                             "(the number of scanned modules)")
        count = keep_float
    else:
        if not 0.0 < keep_float <= 1.0:
            raise ValueError(f"keep_float={keep_float} is out of range: a fraction must be in "
                             "(0, 1]; pass an int to keep a number of modules")
        count = math.ceil(round(keep_float * len(rows), 9))  # 0.3 * 10 is 3.0000000000000004
    return tuple(row.module for row in rows[:count])
