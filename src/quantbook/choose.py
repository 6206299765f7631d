"""Choosing a method from one bench run: quality loss, Pareto fronts and a budgeted pick.

The records are :class:`~quantbook.records.BenchRecord` s of one ``make bench`` run: one per model
and method, with ``size_ratio``, ``speedup``, ``metric``, ``value`` and ``float_value``. Quality
is compared across metrics as a relative *loss* in percent, positive when the quantized model is
worse: perplexity that rises, or a Lee correlation that falls. A NaN metric is the worst loss
there is. The figures and explorers of chapter 09 are in :mod:`quantbook.explore_choice`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from quantbook.records import FLOAT_FAMILY, BenchRecord

LOWER_IS_BETTER = {"perplexity": True, "lee_pearson": False}
COSTS = {"size": ("size_ratio", "size (fraction of float32)"),
         "speed": ("speedup", "speed-up over float32 (x)")}
BUDGETS_PCT = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0)
# the embedding cosine to float32 a budgeted pick must keep, where a workload measures one: the
# Lee Pearson cannot resolve losses below a few hundredths (evaluate.pearson_interval), so a
# budget on it alone would accept embeddings that moved far; the cosine compares each text
# with itself
MIN_COSINE = 0.99
RESOLUTION_PCT = 0.01  # quality losses closer than this count as equal on a Pareto front


def quality_loss_pct(record: BenchRecord) -> float:
    """Relative quality loss of ``record`` against its float32 model, in percent (worse > 0).

    A NaN metric (a model that produced NaN) is an infinite loss, never a harmless one.
    """
    if not isinstance(record, BenchRecord):
        raise TypeError(f"record is a {type(record).__name__}: expected a BenchRecord "
                        "(quantbook.records.load_records reads a bench run)")
    if record.metric not in LOWER_IS_BETTER:
        raise ValueError(f"metric={record.metric!r} is unknown: use one of "
                         f"{list(LOWER_IS_BETTER)} or add it to quantbook.choose.LOWER_IS_BETTER")
    if not record.float_value or math.isnan(record.float_value):
        raise ValueError(f"record {record.key} has float_value={record.float_value}: a loss "
                         "relative to it is undefined; re-run the bench")
    if math.isnan(record.value):
        return math.inf
    change = (record.value - record.float_value) / abs(record.float_value)
    return 100 * (change if LOWER_IS_BETTER[record.metric] else -change) + 0.0  # no "-0.00 %"


def _check_cost(cost: str) -> str:
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r} is unknown: use one of {list(COSTS)}")
    return COSTS[cost][0]


def _better_cost(key: str, a: float, b: float) -> bool:
    """Is cost value ``a`` at least as good as ``b``? Smaller size, larger speed-up."""
    return a <= b if key == "size_ratio" else a >= b


def model_records(records: Iterable[BenchRecord], model: str) -> list[BenchRecord]:
    """The records of one model; raises when there are none."""
    records = list(records)
    chosen = [r for r in records if r.model == model]
    if not chosen:
        models = sorted({r.model for r in records})
        raise ValueError(f"model={model!r} has no records: choose from {models}")
    return chosen


def pareto_front(records: Sequence[BenchRecord], cost: str,
                 resolution_pct: float = RESOLUTION_PCT) -> list[BenchRecord]:
    """The records no other record dominates on (quality loss, cost), sorted by cost.

    A record is dominated when another is at least as good on both and strictly better on one.

    Args:
        records: the records of one model.
        cost: ``"size"`` (smaller ``size_ratio`` is better) or ``"speed"`` (larger ``speedup``).
        resolution_pct: losses are rounded to this step before comparing, so that a difference
            in the fifth digit of a perplexity does not put a larger model on the front
            (``0`` compares exact values).
    """
    key = _check_cost(cost)
    if not resolution_pct >= 0:
        raise ValueError(f"resolution_pct={resolution_pct} must be >= 0 (0 compares exactly)")

    def rounded(loss: float) -> float:
        if not resolution_pct or math.isinf(loss):
            return loss
        return round(loss / resolution_pct) * resolution_pct

    # a model that produced NaN (an infinite loss) or was not timed has no place on a front
    points = [(rounded(quality_loss_pct(r)), getattr(r, key), r) for r in records
              if getattr(r, key) is not None and not math.isinf(quality_loss_pct(r))]
    front = []
    for loss, c, record in points:
        dominated = any(
            other_loss <= loss and _better_cost(key, other_c, c)
            and (other_loss < loss or other_c != c)
            for other_loss, other_c, _ in points)
        if not dominated:
            front.append(record)
    return sorted(front, key=lambda r: getattr(r, key), reverse=key == "speedup")


def _cosine(record: BenchRecord) -> float:
    """The record's embedding cosine to float; 1 when it has none, -1 when it is NaN."""
    cosine = record.secondary.get("cosine_mean", 1.0)
    return -1.0 if cosine is None or math.isnan(cosine) else cosine


def pick(records: Sequence[BenchRecord], max_loss_pct: float, cost: str, *,
         min_cosine: float | None = None) -> BenchRecord:
    """The best record on ``cost`` among those that lose at most ``max_loss_pct`` % of quality.

    Args:
        records: the records of one model, float32 among them.
        max_loss_pct: the quality budget in percent of the float metric.
        cost: ``"size"`` or ``"speed"``.
        min_cosine: also require an embedding cosine to float of at least this much, for
            records that measure one (``secondary["cosine_mean"]``; others are unconstrained).

    float32 loses nothing, so there is always an answer; ties go to the smaller loss.
    """
    key = _check_cost(cost)
    for name, value in (("max_loss_pct", max_loss_pct), ("min_cosine", min_cosine)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TypeError(f"{name}={value!r} must be a number")
    if not max_loss_pct >= 0:
        raise ValueError(f"max_loss_pct={max_loss_pct} must be >= 0 (percent of quality lost)")
    if min_cosine is not None and not -1 <= min_cosine <= 1:
        raise ValueError(f"min_cosine={min_cosine} must lie in [-1, 1] (a cosine), or be None")
    if not any(getattr(r, key) is not None for r in records if r.family != FLOAT_FAMILY):
        raise ValueError(f"no record has a {key}: these records were not timed (run the bench "
                         "with timed=True to choose by speed)")
    allowed = [r for r in records if quality_loss_pct(r) <= max_loss_pct
               and getattr(r, key) is not None
               and (min_cosine is None or _cosine(r) >= min_cosine)]
    if not allowed:
        raise ValueError("no record is within the budget: records must include the float32 row")
    sign = 1 if key == "size_ratio" else -1
    return min(allowed, key=lambda r: (sign * getattr(r, key), quality_loss_pct(r)))
