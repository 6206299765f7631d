"""Tests for quantbook.explore_static_figures: what each figure draws, read back from its artists,
and what the explorers show."""

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from quantbook import explore_static_figures as ef  # noqa: E402
from quantbook.explore_calibration import GridPoint  # noqa: E402
from quantbook.explore_static import observe_range  # noqa: E402
from quantbook.methods.static import OBSERVERS  # noqa: E402
from quantbook.records import BenchRecord  # noqa: E402

pytestmark = pytest.mark.usefixtures("draft_figures")  # structure, not pixels


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(method, pearson, cosine_mean, latency_ms=None):
    return BenchRecord(model="minilm", method=method, family="static (eager)",
                       metric="lee_pearson", value=pearson, float_value=0.65, size_bytes=1,
                       size_ratio=1.0,
                       secondary={"cosine_mean": cosine_mean, "cosine_min": cosine_mean - 0.05},
                       latency_ms=latency_ms)


def grid_points(observers=OBSERVERS, batches=(1, 4, 8)):
    return [GridPoint(o, n, s, record(f"{o} {n} {s}", 0.6 + 0.01 * n,
                                      0.99 - 0.1 * (s == "attention + FFN") - 0.001 * n))
            for o in observers for n in batches for s in ("attention", "attention + FFN")]


LATENCY = {"attention": 30.0, "attention + FFN": 20.0}
REFS = {"float32": record("float32", 0.65, 1.0, 40.0),
        "dynamic int8": record("dynamic int8", 0.64, 0.95, 18.0)}


def test_quality_table_shows_each_record_and_marks_the_best_cosine():
    table = ef.quality_table(REFS, mark_best=True)
    assert table.headers == ("model", "Lee Pearson r", "cosine to float", "worst cosine")
    assert table.cells == (("float32", "0.6500", "1.0000", "0.9500"),
                           ("dynamic int8", "0.6400", "0.9500", "0.9000"))
    assert table.marked == (True, False)
    assert ef.quality_table(REFS).marked == (False, False)
    with pytest.raises(KeyError, match="'cosine_min' is not recorded"):
        ef.quality_table({"x": BenchRecord(model="m", method="x", family="f", metric="r",
                                           value=0.5, float_value=0.5, size_bytes=1,
                                           size_ratio=1.0, secondary={"cosine_mean": 1.0})})


def test_plot_activation_ranges_draws_each_observers_range():
    x = torch.linspace(-1, 3, 101)
    ranges = {kind: observe_range(kind, [x]) for kind in OBSERVERS}
    fig = ef.plot_activation_ranges({"a": x, "b": x, "c": x}, dict.fromkeys("abc", ranges), "t")
    assert len(fig.axes) == 3  # one panel per tensor, stacked
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "c"]
    ax = fig.axes[0]
    drawn = sorted(float(ln.get_xdata()[0]) for ln in ax.lines)
    assert np.allclose(drawn, sorted(v for r in ranges.values() for v in (r.low, r.high)))
    assert ax.get_yscale() == "log"
    plt.close(fig)


def test_plot_time_breakdown_stacks_the_milliseconds():
    parts = {"float": {"float Linear": 3.0, "float ops": 2.0, "total": 5.0},
             "static": {"int8 Linear": 1.0, "quantize": 0.5, "dequantize": 0.5,
                        "float ops": 2.0, "total": 4.0}}
    fig = ef.plot_time_breakdown(parts, "t")
    bars = fig.axes[0].patches
    assert [round(b.get_width(), 6) for b in bars] == [3.0, 2.0, 1.0, 0.5, 0.5, 2.0]
    assert bars[-1].get_x() + bars[-1].get_width() == pytest.approx(4.0)  # stacked to the total
    plt.close(fig)


def test_plot_calibration_sweep_draws_each_configuration():
    points = grid_points()
    fig = ef.plot_calibration_sweep(points, {"float32": REFS["float32"]}, "title")
    cos_ax, r_ax = fig.axes
    line = next(ln for ln in cos_ax.lines if ln.get_label() == "histogram, attention + FFN")
    assert list(line.get_xdata()) == [1, 4, 8]
    expected = [p.cosine_mean for p in points
                if (p.observer, p.linear_set) == ("histogram", "attention + FFN")]
    assert np.allclose(line.get_ydata(), expected)
    assert len(cos_ax.lines) == 6 and len(r_ax.lines) == 7  # + the float reference line
    assert list(r_ax.lines[-1].get_ydata()) == [0.65, 0.65]
    assert r_ax.get_ylabel() == "Lee Pearson r"
    plt.close(fig)


def test_point_figure_shows_the_point_beside_the_references():
    point = grid_points()[1]  # minmax, 1 batch, attention + FFN
    fig = ef.point_figure(point, LATENCY, REFS)
    widths = [[round(b.get_width(), 6) for b in ax.patches] for ax in fig.axes]
    assert widths == [[0.65, 0.64, round(point.value, 6)],
                      [1.0, 0.95, round(point.cosine_mean, 6)], [40.0, 18.0, 20.0]]
    plt.close(fig)


def test_live_explorer_switches_to_the_chosen_point():
    box = ef.explorer(grid_points(), LATENCY, REFS)
    observer, n_batches, linears = box.children[:3]
    assert (observer.value, n_batches.value, linears.value) == ("histogram", 8, "attention + FFN")
    first = bytes(box.image.value)
    assert first.startswith(PNG_MAGIC)
    n_batches.value = 1
    second = bytes(box.image.value)
    assert second != first
    n_batches.value = 8
    assert bytes(box.image.value) == first  # cached
    plt.close("all")


def test_static_explorer_has_one_view_per_point():
    box = ef.static_explorer(grid_points(("minmax", "histogram"), (1, 8)), LATENCY, REFS)
    slider, stack = box.children
    assert len(slider.options) == len(stack.children) == 8
    assert slider.options[:3] == ("attention, histogram, 1 batch",
                                  "attention, histogram, 8 batches", "attention, minmax, 1 batch")
    assert all(isinstance(v, widgets.Image) for v in stack.children)
    assert type(box.link).__name__ == "Link"
    assert stack.children[0].tooltip.startswith("Three bar charts, Lee Pearson r, cosine to")
    assert "histogram observer, 1 calibration batch(es) and attention in int8" in \
        stack.children[0].tooltip


def test_explorers_start_where_asked():
    points = grid_points(("minmax", "histogram"), (1, 8))
    box = ef.static_explorer(points, LATENCY, REFS, start=("minmax", 8, "attention"))
    slider, stack = box.children
    assert slider.value == "attention, minmax, 8 batches" and stack.selected_index == 3
    live = ef.explorer(points, LATENCY, REFS, start=("minmax", 1, "attention"))
    assert [c.value for c in live.children[:3]] == ["minmax", 1, "attention"]
    assert "minmax observer, 1 calibration batch(es) and attention in int8" in live.image.tooltip
    with pytest.raises(ValueError, match=r"start=\('kl', 1, 'attention'\) is not a point of the "
                                         r"grid: choose an \(observer, n_batches, linear_set\)"):
        ef.static_explorer(points, LATENCY, REFS, start=("kl", 1, "attention"))


def test_explorers_need_points_and_timed_references():
    with pytest.raises(ValueError, match="points is empty"):
        ef.explorer([], LATENCY, REFS)
    untimed = {**REFS, "float32": record("float32", 0.65, 1.0)}
    with pytest.raises(ValueError, match=r"references \['float32'\] have no latency_ms"):
        ef.static_explorer(grid_points(), LATENCY, untimed)
