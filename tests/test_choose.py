"""Tests for quantbook.choose: quality loss, Pareto fronts against brute force, budgeted picks."""

import itertools

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from quantbook import bench, choose  # noqa: E402


def record(method, size_ratio, speedup, value, metric="perplexity", float_value=4.0,
           model="gpt"):
    return {"model": model, "method": method, "size_ratio": size_ratio, "speedup": speedup,
            "metric": metric, "value": value, "float_value": float_value}


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


@pytest.mark.parametrize("method, expected", [
    ("float32", "float32"),
    ("weight-only int4 group32", "weight-only (quantbook)"),
    ("torchao int4 weight-only group32", "weight-only (torchao)"),
    ("dynamic float16", "dynamic (eager)"),
    ("torchao int8 dynamic", "dynamic (torchao)"),
    ("static int8 (histogram)", "static (eager)"),
])
def test_family(method, expected):
    assert choose.family(method) == expected


def test_every_bench_method_has_a_family():
    workload = bench.Workload("gpt", None, "perplexity", None, None, [], ("attention",))
    assert {choose.family(m) for m in bench.methods(workload)} == set(choose.FAMILIES) - {
        "float32"}
    with pytest.raises(ValueError, match="method='pruned'"):
        choose.family("pruned")


def test_pareto_front_on_a_known_case():
    gpt = choose.model_records(RECORDS, "gpt")
    size = [r["method"] for r in choose.pareto_front(gpt, "size")]
    speed = [r["method"] for r in choose.pareto_front(gpt, "speed")]
    assert size == ["weight-only int4", "weight-only int8", "float32"]
    assert speed == ["dynamic int8 per-tensor", "float32"]


def brute_force_front(records, key, smaller_is_better):
    def dominates(a, b):
        la, lb = choose.quality_loss_pct(a), choose.quality_loss_pct(b)
        ca, cb = (a[key], b[key]) if smaller_is_better else (-a[key], -b[key])
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
        values = [r[key] for r in allowed]
        assert best[key] == (min(values) if key == "size_ratio" else max(values))
        assert choose.quality_loss_pct(best) <= budget
        assert best in choose.pareto_front(records, cost, resolution_pct=0)


def test_losses_closer_than_the_resolution_are_ties():
    records = [record("float32", 1.0, 1.0, 4.0), record("weight-only int8", 0.30, 1.0, 4.0001),
               record("torchao int8 weight-only", 0.31, 1.0, 4.00005)]
    exact = [r["method"] for r in choose.pareto_front(records, "size", resolution_pct=0)]
    assert exact == ["weight-only int8", "torchao int8 weight-only", "float32"]
    assert [r["method"] for r in choose.pareto_front(records, "size")] == ["weight-only int8"]
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
    assert choose.pick(gpt, 0.2, "size")["method"] == "weight-only int8"
    assert choose.pick(gpt, 6.0, "size")["method"] == "weight-only int4"
    assert choose.pick(gpt, 0.2, "speed")["method"] == "float32"
    assert choose.pick(gpt, 1.0, "speed")["method"] == "dynamic int8 per-tensor"


def test_budget_figure_has_a_panel_per_model_and_cost_and_rings_the_pick():
    fig = choose.budget_figure(RECORDS, 1.0)
    assert len(fig.axes) == 4
    # the ringed pick is the last scatter of each panel, at the pick's coordinates
    ring = fig.axes[1].collections[-1].get_offsets()[0]
    assert tuple(ring) == pytest.approx((2.0, 0.5))
    plt.close(fig)


def test_picks_html_names_the_picks():
    html = choose.picks_html(RECORDS, 1.0)
    assert "weight-only int8 (30.0%" in html and "dynamic int8 per-tensor (2.00x" in html


def test_static_explorer_has_one_view_per_budget_linked_to_the_slider():
    budgets = (0.5, 6.0)
    box = choose.static_explorer(RECORDS, budgets)
    slider, stack = box.children
    assert list(slider.options) == ["0.5 %", "6 %"]
    assert len(stack.children) == 2 and box.link.source == (slider, "index")
    html = [view.children[0].value for view in stack.children]
    assert "weight-only int8" in html[0] and "weight-only int4" in html[1]


def test_live_explorer_updates_on_a_budget_change():
    box = choose.explorer(RECORDS, (0.2, 6.0), start_pct=0.2)
    slider, table, image = box.children
    first_table, first_image = table.value, image.value
    slider.value = 6.0
    assert table.value != first_table and image.value != first_image
    assert isinstance(image, widgets.Image) and bytes(image.value).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="start_pct=3"):
        choose.explorer(RECORDS, (0.2, 6.0), start_pct=3)


def test_committed_results_are_complete():
    meta, records = bench.load_results()
    assert {"machine", "created", "repeats"} <= set(meta)
    workload = bench.Workload("gpt", None, "perplexity", None, None, [], ("attention",))
    methods = ["float32", *bench.methods(workload)]
    for model in bench.MODELS:
        assert [r["method"] for r in choose.model_records(records, model)] == methods
    for a, b in itertools.combinations(records, 2):
        assert (a["model"], a["method"]) != (b["model"], b["method"])


def test_load_results_names_the_fix_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="make bench"):
        bench.load_results(tmp_path / "none.json")
