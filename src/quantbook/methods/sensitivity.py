"""Which layers suffer most from quantization? Quantize one at a time, measure, rank.

A sensitivity scan quantizes a single module, evaluates the model, restores float, and moves on.
The modules whose quantization costs the most are the candidates to keep in float: a
*mixed-precision plan*. Apply it with ``quantize_dynamic_model(model, config, exclude=plan)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from torch import nn

from quantbook.methods.dynamic import DynamicConfig, quantize_dynamic_model


def quantize_one_dynamic(model: nn.Module, name: str,
                         config: DynamicConfig | None = None) -> nn.Module:
    """Default ``quantize_one_fn``: a copy of ``model`` with only module ``name`` quantized."""
    quantized, _ = quantize_dynamic_model(model, config, modules=[name])
    return quantized


def sensitivity_scan(model: nn.Module, evaluate_fn: Callable[[nn.Module], float],
                     modules: Sequence[str],
                     quantize_one_fn: Callable[[nn.Module, str], object] = quantize_one_dynamic,
                     *, higher_is_better: bool = True,
                     progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Quantize each module alone, evaluate, and rank the modules by the metric they cost.

    Args:
        model: the float model; never modified.
        evaluate_fn: ``evaluate_fn(model) -> float``, e.g. Lee pearson, or the mean cosine
            between the model's embeddings and the float ones (cheaper, no labels needed).
        modules: names of the modules to try, e.g. ``list_targets(model)["ffn"]``.
        quantize_one_fn: ``quantize_one_fn(model, name)`` returns a copy with only ``name``
            quantized (a model, or a ``(model, report)`` pair); dynamic int8 by default.
        higher_is_better: ``False`` for metrics such as perplexity.
        progress: optional ``progress(done, total)`` called after each module.

    Returns:
        One dict per module, ``{"module", "metric", "drop"}``, most harmful first. ``drop`` is
        how much worse than float the metric got (positive = worse), e.g. float pearson 0.60,
        with one layer quantized 0.58 -> drop 0.02.
    """
    modules = [modules] if isinstance(modules, str) else list(modules)
    if not modules:
        raise ValueError("modules is empty: pass the names of the modules to scan, e.g. "
                         "quantbook.targets.list_targets(model)['ffn']")
    baseline = float(evaluate_fn(model))
    sign = 1.0 if higher_is_better else -1.0
    rows = []
    for done, name in enumerate(modules, start=1):
        quantized = quantize_one_fn(model, name)
        if isinstance(quantized, tuple):
            quantized = quantized[0]
        metric = float(evaluate_fn(quantized))
        rows.append({"module": name, "metric": metric, "drop": sign * (baseline - metric)})
        if progress is not None:
            progress(done, len(modules))
    return sorted(rows, key=lambda row: row["drop"], reverse=True)


def mixed_precision_plan(scan: Iterable[dict], keep_float: int | float) -> tuple[str, ...]:
    """Names of the most sensitive modules to keep in float.

    Args:
        scan: the output of :func:`sensitivity_scan` (any order).
        keep_float: an ``int`` keeps that many modules float (0 keeps none); a ``float`` in
            ``(0, 1]`` keeps that fraction of the scanned modules, rounded up (0.1 of 36 -> 4).

    Returns:
        Module names, most sensitive first; pass them as ``exclude=``.
    """
    rows = sorted(scan, key=lambda row: row["drop"], reverse=True)
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
    return tuple(row["module"] for row in rows[:count])
