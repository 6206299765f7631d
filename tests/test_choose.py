"""Tests for quantbook.choose: quality loss, Pareto fronts against brute force, budgeted picks."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantbook import choose
from quantbook.records import BenchRecord

FAMILIES = {"float32": "float32", "weight": "weight-only (quantbook)",
            "dynamic": "dynamic (eager)", "static": "static (eager)"}


def record(method, size_ratio, speedup, value, metric="perplexity", float_value=4.0,
           model="gpt", secondary=None):
    family = FAMILIES.get(method.split("-")[0].split(" ")[0], "dynamic (eager)")
    return BenchRecord(model=model, method=method, family=family, metric=metric, value=value,
                       float_value=float_value, size_bytes=1000, size_ratio=size_ratio,
                       speedup=speedup, secondary=secondary or {})


RECORDS = [
    record("float32", 1.0, 1.0, 4.0),
    record("weight-only int8", 0.30, 0.9, 4.004),  # +0.1 %
    record("weight-only int4", 0.16, 0.8, 4.2),  # +5 %
    record("dynamic int8 per-tensor", 0.35, 2.0, 4.02),  # +0.5 %
    record("static int8 (min-max)", 0.35, 1.5, 4.4),  # +10 %: dominated by dynamic
    record("float32", 1.0, 1.0, 0.65, "lee_pearson", 0.65, "minilm"),
    record("dynamic int8 per-tensor", 0.55, 2.2, 0.64, "lee_pearson", 0.65, "minilm"),
]


def test_quality_loss_is_positive_when_worse_for_both_directions():
    assert choose.quality_loss_pct(RECORDS[2]) == pytest.approx(5.0)
    assert choose.quality_loss_pct(RECORDS[6]) == pytest.approx(100 * 0.01 / 0.65)
    better = record("x", 1, 1, 0.70, "lee_pearson", 0.65)
    assert choose.quality_loss_pct(better) < 0


def test_unknown_metric_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="metric='bleu'.*perplexity"):
        choose.quality_loss_pct(record("x", 1, 1, 1.0, metric="bleu"))


def test_pareto_front_on_a_known_case():
    gpt = choose.model_records(RECORDS, "gpt")
    size = [r.method for r in choose.pareto_front(gpt, "size")]
    speed = [r.method for r in choose.pareto_front(gpt, "speed")]
    assert size == ["weight-only int4", "weight-only int8", "float32"]
    assert speed == ["dynamic int8 per-tensor", "float32"]


def brute_force_front(records, key, smaller_is_better):
    def dominates(a, b):
        la, lb = choose.quality_loss_pct(a), choose.quality_loss_pct(b)
        ca, cb = getattr(a, key), getattr(b, key)
        ca, cb = (ca, cb) if smaller_is_better else (-ca, -cb)
        return la <= lb and ca <= cb and (la < lb or ca < cb)

    return {id(b) for b in records if not any(dominates(a, b) for a in records)}


points = st.lists(st.tuples(st.floats(0.05, 1.0), st.floats(0.2, 4.0), st.floats(3.0, 30.0)),
                  min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(points)
def test_pareto_front_matches_brute_force(ps):
    records = [record(f"dynamic {i}", s, v, q) for i, (s, v, q) in enumerate(ps)]
    size = {id(r) for r in choose.pareto_front(records, "size", resolution_pct=0)}
    speed = {id(r) for r in choose.pareto_front(records, "speed", resolution_pct=0)}
    assert size == brute_force_front(records, "size_ratio", smaller_is_better=True)
    assert speed == brute_force_front(records, "speedup", smaller_is_better=False)


@settings(max_examples=150, deadline=None)
@given(points, st.sampled_from(choose.BUDGETS_PCT))
def test_pick_is_the_best_within_budget_and_on_the_front(ps, budget):
    records = [record("float32", 1.0, 1.0, 4.0)] + [
        record(f"dynamic {i}", s, v, q) for i, (s, v, q) in enumerate(ps)]
    for cost, key in (("size", "size_ratio"), ("speed", "speedup")):
        best = choose.pick(records, budget, cost)
        allowed = [r for r in records if choose.quality_loss_pct(r) <= budget]
        values = [getattr(r, key) for r in allowed]
        assert getattr(best, key) == (min(values) if key == "size_ratio" else max(values))
        assert choose.quality_loss_pct(best) <= budget
        assert best in choose.pareto_front(records, cost, resolution_pct=0)


def test_losses_closer_than_the_resolution_are_ties():
    records = [record("float32", 1.0, 1.0, 4.0), record("weight-only int8", 0.30, 1.0, 4.0001),
               record("torchao int8 weight-only", 0.31, 1.0, 4.00005)]
    exact = [r.method for r in choose.pareto_front(records, "size", resolution_pct=0)]
    assert exact == ["weight-only int8", "torchao int8 weight-only", "float32"]
    assert [r.method for r in choose.pareto_front(records, "size")] == ["weight-only int8"]
    with pytest.raises(ValueError, match="resolution_pct=-1"):
        choose.pareto_front(records, "size", resolution_pct=-1)


def test_pick_and_front_refuse_bad_arguments():
    with pytest.raises(ValueError, match="cost='latency'.*size"):
        choose.pareto_front(RECORDS, "latency")
    with pytest.raises(ValueError, match="max_loss_pct=-1"):
        choose.pick(RECORDS, -1, "size")
    with pytest.raises(ValueError, match="float32 row"):
        choose.pick(RECORDS[2:3], 1.0, "size")
    with pytest.raises(ValueError, match="model='bert'.*gpt"):
        choose.model_records(RECORDS, "bert")


def test_pick_within_budget_on_the_known_case():
    gpt = choose.model_records(RECORDS, "gpt")
    assert choose.pick(gpt, 0.2, "size").method == "weight-only int8"
    assert choose.pick(gpt, 6.0, "size").method == "weight-only int4"
    assert choose.pick(gpt, 0.2, "speed").method == "float32"
    assert choose.pick(gpt, 1.0, "speed").method == "dynamic int8 per-tensor"


# ------------------------------------------------------------------ NaN is the worst


def test_a_nan_metric_is_an_infinite_loss():
    broken = record("dynamic int8 per-tensor", 0.3, 2.0, math.nan)
    assert choose.quality_loss_pct(broken) == math.inf
    lee = record("dynamic int8 per-tensor", 0.3, 2.0, math.nan, "lee_pearson", 0.65, "minilm")
    assert choose.quality_loss_pct(lee) == math.inf
    assert choose.quality_loss_pct(RECORDS[0]) == 0.0
    assert str(choose.quality_loss_pct(record("x", 1, 1, 4.0))) == "0.0"  # never "-0.0"


def test_a_nan_model_is_never_picked_and_never_dominates():
    broken = record("dynamic broken", 0.05, 9.0, math.nan)  # the smallest and the fastest
    gpt = [*choose.model_records(RECORDS, "gpt"), broken]
    for budget in (0.2, 6.0, 100.0, 1e9):
        assert choose.pick(gpt, budget, "size").method != "dynamic broken"
        assert choose.pick(gpt, budget, "speed").method != "dynamic broken"
    assert choose.pick(gpt, 6.0, "size").method == "weight-only int4"
    # it dominates nothing: every record of the front without it is still on the front
    honest = {r.method for r in choose.pareto_front(gpt[:-1], "size")}
    assert honest <= {r.method for r in choose.pareto_front(gpt, "size")}


def test_a_nan_model_is_not_on_the_front():
    gpt = [*choose.model_records(RECORDS, "gpt"), record("dynamic broken", 0.05, 9.0, math.nan)]
    for cost in ("size", "speed"):
        assert "dynamic broken" not in [r.method for r in choose.pareto_front(gpt, cost)]


def test_pick_respects_min_cosine_where_one_is_measured():
    minilm = [record("float32", 1.0, 1.0, 0.65, "lee_pearson", 0.65, "minilm"),
              record("dynamic a", 0.3, 2.0, 0.65, "lee_pearson", 0.65, "minilm",
                     {"cosine_mean": 0.95}),
              record("dynamic b", 0.5, 1.5, 0.65, "lee_pearson", 0.65, "minilm",
                     {"cosine_mean": 0.999}),
              record("dynamic c", 0.4, 1.2, 0.65, "lee_pearson", 0.65, "minilm",
                     {"cosine_mean": math.nan})]
    assert choose.pick(minilm, 1.0, "size").method == "dynamic a"
    assert choose.pick(minilm, 1.0, "size", min_cosine=0.99).method == "dynamic b"
    assert choose.pick(minilm, 1.0, "speed", min_cosine=1.0).method == "float32"
    with pytest.raises(ValueError, match=r"min_cosine=2 must lie in \[-1, 1\] \(a cosine\), or "
                                         r"be None"):
        choose.pick(minilm, 1.0, "size", min_cosine=2)


def test_untimed_records_have_no_speed_but_a_size():
    untimed = [record("float32", 1.0, None, 4.0), record("weight-only int8", 0.3, None, 4.0)]
    assert choose.pick(untimed, 1.0, "size").method == "weight-only int8"
    assert choose.pareto_front(untimed, "speed") == []


def test_picking_by_speed_among_untimed_records_says_so():
    untimed = [record("float32", 1.0, None, 4.0), record("weight-only int8", 0.3, None, 4.0)]
    with pytest.raises(ValueError, match=r"speedup.*timed"):
        choose.pick(untimed, 1.0, "speed")


def test_dict_records_are_refused_with_the_type():
    with pytest.raises(TypeError, match=r"record is a dict: expected a BenchRecord"):
        choose.quality_loss_pct({"metric": "perplexity", "value": 4.1, "float_value": 4.0})


def test_a_budget_that_is_not_a_number_is_refused():
    with pytest.raises(TypeError, match=r"max_loss_pct='1' must be a number"):
        choose.pick(RECORDS, "1", "size")
