"""Tests for quantbook.explore_choice: chapter 06's Pareto charts, pick tables and explorers."""

import math
import warnings

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from quantbook import bench, choose  # noqa: E402
from quantbook import explore_choice as ec  # noqa: E402
from quantbook.records import FLOAT_FAMILY, BenchRecord  # noqa: E402
from quantbook.sweep import Workload  # noqa: E402

pytestmark = pytest.mark.usefixtures("draft_figures")  # structure, not pixels


def record(method, family, size_ratio, speedup, value, metric="perplexity", float_value=4.0,
           model="gpt"):
    return BenchRecord(model=model, method=method, family=family, metric=metric, value=value,
                       float_value=float_value, size_bytes=1000, size_ratio=size_ratio,
                       speedup=speedup)


WEIGHT, DYNAMIC, STATIC = "weight-only (quantbook)", "dynamic (eager)", "static (eager)"
RECORDS = [
    record("float32", FLOAT_FAMILY, 1.0, 1.0, 4.0),
    record("weight-only int8", WEIGHT, 0.30, 0.9, 4.004),  # +0.1 %
    record("weight-only int4", WEIGHT, 0.16, 0.8, 4.2),  # +5 %
    record("dynamic int8 per-tensor", DYNAMIC, 0.35, 2.0, 4.02),  # +0.5 %
    record("static int8 (min-max)", STATIC, 0.35, 1.5, 4.4),  # +10 %: dominated by dynamic
    record("float32", FLOAT_FAMILY, 1.0, 1.0, 0.65, "lee_pearson", 0.65, "minilm"),
    record("dynamic int8 per-tensor", DYNAMIC, 0.55, 2.2, 0.64, "lee_pearson", 0.65, "minilm"),
]


def test_family_colors_are_fixed_and_unknown_families_still_get_one():
    assert ec.family_color(FLOAT_FAMILY) == "black"
    assert ec.family_color(DYNAMIC) == "tab:orange"
    for family in ("weight-only (torchao)", "dynamic (torchao)", "static (torchao)"):
        assert ec.family_color(family) in ec.FAMILY_COLORS.values()
    other = ec.family_color("pruning (magnitude)")
    assert other in ec._EXTRA_COLORS and other == ec.family_color("pruning (magnitude)")
    handles = ec.legend_handles([FLOAT_FAMILY, WEIGHT])
    assert [h.get_label() for h in handles] == [FLOAT_FAMILY, WEIGHT]
    assert [h.get_marker() for h in handles] == ["*", "o"]
    handles = ec.legend_handles([ec.COMPILED_FLOAT, WEIGHT], compiled=True)
    assert [h.get_marker() for h in handles] == ["*", "o", ec.COMPILED_MARKER]
    assert "torch.compile" in handles[-1].get_label()
    # every family make bench records has a colour of its own
    families = {FLOAT_FAMILY, ec.COMPILED_FLOAT} | {
        config.family for model in bench.MODELS
        for rows in bench.bench_chapters(Workload(model, None, "", None)).values()
        for config in rows.values()}
    assert families <= set(ec.FAMILY_COLORS)
    colors = [ec.family_color(f) for f in families]
    assert len(set(colors)) == len(colors)


def test_budget_figure_has_a_panel_per_model_and_cost_and_rings_the_pick():
    fig = ec.budget_figure(RECORDS, 1.0)
    assert len(fig.axes) == 4
    # the ringed pick is the last scatter of each panel, at the pick's coordinates
    ring = fig.axes[1].collections[-1].get_offsets()[0]
    assert tuple(ring) == pytest.approx((2.0, 0.5))
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    front = choose.pareto_front(choose.model_records(RECORDS, "gpt"), "size")
    assert legend == [f"{i}  {r.method}" for i, r in enumerate(front, 1)]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [FLOAT_FAMILY, WEIGHT,
                                                                  DYNAMIC, STATIC]
    plt.close(fig)


def test_plot_pareto_leaves_out_a_nan_model_without_warnings():
    broken = record("dynamic broken", DYNAMIC, 0.5, 3.0, math.nan)
    gpt = [*choose.model_records(RECORDS, "gpt"), broken]
    fig, ax = plt.subplots()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ec.plot_pareto(gpt, "size", ax, max_loss_pct=1.0, title="t")
        fig.canvas.draw()
    points = [tuple(p) for c in ax.collections for p in c.get_offsets()]
    assert (0.5, math.inf) not in points and len(points) == 5 + 1  # 5 records + the ring
    assert ax.get_title() == "t" and ax.get_yscale() == "symlog"
    plt.close(fig)


def test_picks_html_names_the_picks():
    html = ec.picks_html(RECORDS, 1.0)
    assert "weight-only int8 (30.0%" in html and "dynamic int8 per-tensor (2.00x" in html
    assert html.count("<tr>") == 3  # a header and one row per model


def test_static_explorer_has_one_view_per_budget_linked_to_the_slider():
    budgets = (0.5, 6.0)
    box = ec.static_explorer(RECORDS, budgets)
    slider, stack = box.children
    assert list(slider.options) == ["0.5 %", "6 %"]
    assert len(stack.children) == 2 and box.link.source == (slider, "index")
    html = [view.children[0].value for view in stack.children]
    assert "weight-only int8" in html[0] and "weight-only int4" in html[1]
    assert (slider.value, stack.selected_index) == ("0.5 %", 0)  # the first budget by default
    alt = [view.children[1].tooltip for view in stack.children]
    assert alt[0] == ec.budget_alt(RECORDS, 0.5) and "over the 0.5 % budget faded" in alt[0]
    assert "gpt by speed: dynamic int8 per-tensor" in alt[0]
    started = ec.static_explorer(RECORDS, budgets, start_pct=6.0).children
    assert (started[0].value, started[1].selected_index) == ("6 %", 1)
    with pytest.raises(ValueError, match=r"start_pct=1 is not one of budgets=\[0\.5, 6\.0\]"):
        ec.static_explorer(RECORDS, budgets, start_pct=1)


def test_budget_figure_draws_the_charts_asked_for_one_under_the_other():
    fig = ec.budget_figure(RECORDS, 1.0, models=("gpt",), costs=("speed",))
    assert [ax.get_title() for ax in fig.axes] == ["GPT (perplexity): speed"]
    fig = ec.budget_figure(RECORDS, costs=("size",))
    assert [ax.get_title() for ax in fig.axes] == ["GPT (perplexity): size",
                                                   "MiniLM (Lee Pearson): size"]
    top, bottom = (ax.get_position() for ax in fig.axes)
    assert bottom.y1 < top.y0  # stacked, never side by side
    with pytest.raises(ValueError, match=r"models=\['gpt'\], costs=\[\] leave no chart"):
        ec.budget_figure(RECORDS, models=("gpt",), costs=())
    plt.close("all")


def test_live_explorer_updates_on_a_budget_change():
    box = ec.explorer(RECORDS, (0.2, 6.0), start_pct=0.2)
    slider, table, image = box.children
    first_table, first_image = table.value, image.value
    slider.value = 6.0
    assert table.value != first_table and image.value != first_image
    assert isinstance(image, widgets.Image) and bytes(image.value).startswith(b"\x89PNG")
    assert image.tooltip == ec.budget_alt(RECORDS, 6.0)
    one = ec.explorer(RECORDS, (0.2, 6.0), costs=("size",)).children[2].tooltip
    assert "gpt by size" in one and "by speed" not in one
    middle = ec.explorer(RECORDS, (0.2, 1.0, 6.0)).children[0]
    assert middle.value == 1.0  # the middle budget when none is given
    with pytest.raises(ValueError, match=r"start_pct=3 is not one of budgets=\[0\.2, 6\.0\]: "
                                         r"pick one of them"):
        ec.explorer(RECORDS, (0.2, 6.0), start_pct=3)


def test_picks_keep_the_embedding_cosine_floor():
    from dataclasses import replace

    moved = replace(record("weight-only int4", WEIGHT, 0.2, 0.9, 0.648, "lee_pearson", 0.65,
                           "minilm"), secondary={"cosine_mean": 0.95})  # small, Pearson -0.3 %
    records = [*RECORDS, moved]
    assert "weight-only int4 (20.0%" in ec.picks_html(records, 2.0, min_cosine=None)
    html = ec.picks_html(records, 2.0)  # the floor: choose.MIN_COSINE
    assert choose.MIN_COSINE > 0.95 and "weight-only int4 (20.0%" not in html
    assert "dynamic int8 per-tensor (55.0%" in html
