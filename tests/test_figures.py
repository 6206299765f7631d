"""Every figure the package draws reads on the site's column (the rule in quantbook.kit).

Each figure function is drawn with small synthetic inputs in the book's style, then measured:
its saved width is at most ``kit.MAX_FIGURE_WIDTH_IN``, no text is smaller than
``kit.SMALLEST_FONT_PT``, panels are stacked (never side by side) and no legend covers plotted
data. Each explorer's images carry alt text and are PNGs at the 2x density.
"""

import functools
import struct

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import make_gpt  # noqa: E402
from matplotlib.collections import Collection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
from test_explore_choice import RECORDS as CHOICE_RECORDS  # noqa: E402
from test_explore_lowbit import fake_results  # noqa: E402
from test_explore_static_figures import LATENCY, REFS, grid_points  # noqa: E402

from quantbook import (  # noqa: E402
    explore_choice,
    explore_costs,
    explore_dynamic,
    explore_lowbit,
    explore_math,
    explore_outliers,
    explore_static_figures,
    explore_weights,
    kit,
)
from quantbook.accounting import group_accounting  # noqa: E402
from quantbook.explore_static import observe_range  # noqa: E402
from quantbook.methods.sensitivity import Sensitivity  # noqa: E402
from quantbook.methods.static import OBSERVERS  # noqa: E402
from quantbook.records import FLOAT_FAMILY, BenchRecord  # noqa: E402


@pytest.fixture(autouse=True)
def book_style():
    """Draw as a chapter does: after kit.setup_chapter() has set the book's style."""
    with matplotlib.rc_context(kit.FIGURE_STYLE):
        yield
    plt.close("all")


# ----------------------------------------------------------------------------- synthetic inputs


def combo_records() -> list[BenchRecord]:
    """A float32 record and one per recipe of chapter 04's explorer, timed."""
    labels = ["float32", *explore_dynamic.combo_configs()]
    return [BenchRecord(model="minilm", method=label, family=FLOAT_FAMILY if k == 0 else "d",
                        metric="lee_pearson", value=0.66 - 0.002 * k, float_value=0.66,
                        size_bytes=90_000_000, size_ratio=1.0 - 0.05 * k,
                        secondary={"cosine_mean": 1.0 - 0.01 * k}, latency_ms=40.0 - k,
                        speedup=1.0 + 0.01 * k) for k, label in enumerate(labels)]


def latency_points() -> list[explore_dynamic.LatencyPoint]:
    return [explore_dynamic.LatencyPoint(label, b, t, 40.0 * b / t * (0.9 if k else 1.0),
                                         1.1 if k else 1.0)
            for t in (1, 2) for b in (1, 2, 8)
            for k, label in enumerate(("float32", "int8 per channel"))]


def sensitivity_scan() -> list[Sensitivity]:
    names = [f"encoder.layer.{i}.{part}.dense" for i in range(6)
             for part in ("intermediate", "output")]
    return [Sensitivity(name, 0.99, 10.0 ** -(1 + k / 4)) for k, name in enumerate(names)]


def activations() -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    values = {f"layer 0 {name}": torch.randn(4000, generator=g) * (k + 1)
              for k, name in enumerate(("query input", "FFN input", "GELU output", "FFN output"))}
    ranges = {label: {o: observe_range(o, [x]) for o in OBSERVERS} for label, x in values.items()}
    return values, ranges


def plan_results() -> dict:
    results = fake_results()
    names = [f"blocks.{b}.{kind}" for b in range(4)
             for kind in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.c_proj",
                          "mlp.fc_in", "mlp.fc_out")] + ["lm_head"]
    results["mixed"]["plans"]["3"]["plan"] = [[n, (2, 3, 4, 8)[k % 4]] for k, n in
                                              enumerate(names)]
    return results


MATRIX_NAMES = ["encoder.layer.0.intermediate.dense.weight",
                "encoder.layer.0.attention.self.query.weight",
                "encoder.layer.5.intermediate.dense.weight"]


def weights() -> torch.Tensor:
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(1)) * 0.05
    w[3, 7] = 1.5  # an outlier
    return w


def ledgers() -> dict:
    return {"GPT": group_accounting(make_gpt(), 16),
            "MiniLM-like": group_accounting(make_gpt(n_layer=3), 16)}


FIGURES = {
    "explore_costs.plot_cost_shares": lambda: explore_costs.plot_cost_shares(ledgers()),
    "explore_costs._mac_figure": lambda: explore_costs._mac_figure(
        {k: v for k, v in ledgers().items()}, 16),
    "explore_costs.plot_matmul_share_sweep": lambda: explore_costs.plot_matmul_share_sweep(
        {"GPT": make_gpt(), "MiniLM": make_gpt(n_layer=1)}, [4, 16, 64, 256],
        {"GPT": 16, "MiniLM": 64}),
    "explore_math.plot_sqnr_vs_bits": lambda: explore_math.plot_sqnr_vs_bits(
        {name: [6.0 * b - 8 + k for b in explore_math.BITS] for k, name in
         enumerate(MATRIX_NAMES)}, "About 6 dB per bit",
        predicted={MATRIX_NAMES[0]: [6.0 * b - 10 for b in explore_math.BITS]}),
    "explore_math.plot_ranges": lambda: explore_math.plot_ranges(
        weights(), {"min-max (2.9 dB at 4 bits)": (-1.1, 1.5),
                    "percentile 99.9 (16.5 dB at 4 bits)": (-0.2, 0.2),
                    "MSE-optimal (16.5 dB at 4 bits)": (-0.15, 0.22)},
        "At 4 bits, clipping the thin tails gains 14 dB"),
    "explore_math.plot_grid": lambda: explore_math.plot_grid(
        weights(), explore_math.make_spec(4, "symmetric", "group"), MATRIX_NAMES[0])[0],
    "explore_weights.plot_vs_bits": lambda: explore_weights.plot_vs_bits(
        {"attention + ffn": [4.5, 4.5, 4.6, 5.2, 9.5], "all four groups": [4.5, 4.5, 4.7, 7.2,
                                                                           22.0]},
        "validation perplexity (log scale)", "GPT: 2 bits breaks the model", reference=4.4,
        logy=True),
    "explore_weights.plot_group_bars": lambda: explore_weights.plot_group_bars(
        {g: {b: 4.5 + 10 / b ** 2 for b in (8, 6, 4, 3, 2)}
         for g in ("embeddings", "attention", "ffn", "head")},
        "validation perplexity (log scale)", "GPT", reference=4.4, logy=True),
    "explore_dynamic.plot_latency_grid": lambda: explore_dynamic.plot_latency_grid(
        latency_points(), "On one thread, int8 runs at 1.0-1.1x float32's speed"),
    "explore_dynamic.plot_sensitivity": lambda: explore_dynamic.plot_sensitivity(
        sensitivity_scan(), "encoder.layer.0.output.dense alone costs 2.8x more than any other"),
    "explore_dynamic.plot_combos": lambda: explore_dynamic.plot_combos(
        combo_records(), "Per-tensor damage comes from the feed-forward layers",
        selected="ffn, per tensor"),
    "explore_static_figures.plot_activation_ranges":
        lambda: explore_static_figures.plot_activation_ranges(
            *activations(), "One rare value sets the range of the FFN output"),
    "explore_static_figures.plot_time_breakdown":
        lambda: explore_static_figures.plot_time_breakdown(
            {"float": {"float Linear": 850, "float ops": 360},
             "dynamic int8": {"dynamic int8 Linear": 620, "float ops": 330},
             "static int8": {"int8 Linear": 610, "quantize": 140, "dequantize": 200,
                             "float ops": 280}},
            "int8 Linears save 241 ms, quantize and dequantize cost 338 ms"),
    "explore_static_figures.plot_calibration_sweep":
        lambda: explore_static_figures.plot_calibration_sweep(
            grid_points(), REFS, "Neither more data nor another observer repairs the FFN"),
    "explore_static_figures.point_figure": lambda: explore_static_figures.point_figure(
        grid_points()[1], LATENCY, REFS),
    "explore_choice.budget_figure": lambda: explore_choice.budget_figure(CHOICE_RECORDS, 1.0),
    "explore_choice.budget_figure (no budget)": lambda: explore_choice.budget_figure(
        CHOICE_RECORDS),
    "explore_outliers.ratio_figure": lambda: explore_outliers.ratio_figure(
        [{"role": role, "layer": layer, "ratio": 5.0 * (k + 1) * (layer + 1)}
         for k, role in enumerate(("q/k/v input", "attention output input", "FFN input",
                                   "FFN output.dense output", "residual sum"))
         for layer in range(6)], "MiniLM: the outliers sit in the FFN output"),
    "explore_lowbit.sweep_figure": lambda: explore_lowbit.sweep_figure(fake_results()),
    "explore_lowbit.bits_figure": lambda: explore_lowbit.bits_figure(fake_results(), 2),
    "explore_lowbit.calibration_figure": lambda: explore_lowbit.calibration_figure(
        fake_results()),
    "explore_lowbit.plan_figure": lambda: explore_lowbit.plan_figure(plan_results()),
    "explore_lowbit.qat_figure": lambda: explore_lowbit.qat_figure(
        {"eval_step": [30, 60, 90, 120], "eval_ppl_8k": [7.0, 6.2, 5.8, 5.6],
         "ppl_rtn_8k": 8.7}),
}


# ----------------------------------------------------------------------------- what is measured


def drawn_data(fig) -> list[tuple[str, np.ndarray]]:
    """What each visible axes plots, in display coordinates, as drawn (clipped to its axes):
    ``("points", (n, 2))`` for lines (sampled along each segment) and scatter points,
    ``("boxes", (n, 4))`` for bars (x0, y0, x1, y1)."""
    renderer = fig.canvas.get_renderer()
    drawn = []
    for ax in (a for a in fig.axes if a.get_visible()):
        clip = ax.bbox
        points, boxes = [], []
        for artist in ax.get_children():
            if not artist.get_visible():
                continue
            if isinstance(artist, Line2D) and len(artist.get_xydata()):
                xy = artist.get_transform().transform(artist.get_xydata())
                points.append(np.concatenate([np.linspace(a, b, 50) for a, b in
                                              zip(xy[:-1], xy[1:], strict=True)])
                              if len(xy) > 1 else xy)
            elif isinstance(artist, Rectangle) and artist is not ax.patch:
                box = Bbox.intersection(artist.get_window_extent(renderer), clip)
                if box is not None and box.width > 0 and box.height > 0:
                    boxes.append(box.extents)
            elif isinstance(artist, Collection) and len(artist.get_offsets()):
                points.append(artist.get_offset_transform().transform(artist.get_offsets()))
        if points:
            xy = np.concatenate(points)
            inside = np.isfinite(xy).all(1) & (xy[:, 0] >= clip.x0) & (xy[:, 0] <= clip.x1) \
                & (xy[:, 1] >= clip.y0) & (xy[:, 1] <= clip.y1)
            drawn.append((f"points of {ax.get_title()!r}", xy[inside]))
        if boxes:
            drawn.append((f"bars of {ax.get_title()!r}", np.array(boxes)))
    return drawn


def data_covered_by(legend, fig, drawn=None) -> list[str]:
    """Which of the figure's plotted data ``legend``'s box overlaps."""
    box = legend.get_window_extent(fig.canvas.get_renderer())
    covered = []
    for name, data in drawn if drawn is not None else drawn_data(fig):
        if data.shape[1] == 2:
            hit = ((data[:, 0] > box.x0) & (data[:, 0] < box.x1) & (data[:, 1] > box.y0)
                   & (data[:, 1] < box.y1)).any()
        else:
            hit = ((data[:, 0] < box.x1) & (data[:, 2] > box.x0) & (data[:, 1] < box.y1)
                   & (data[:, 3] > box.y0)).any()
        if hit:
            covered.append(name)
    return covered


def side_by_side(fig) -> list[tuple[int, int]]:
    """Pairs of visible axes that share a row (their vertical extents overlap)."""
    boxes = [ax.get_position() for ax in fig.axes if ax.get_visible()]
    return [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[i + 1:], i + 1)
            if min(a.y1, b.y1) - max(a.y0, b.y0) > 1e-3]


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_figure_reads_on_the_column(name):
    fig = FIGURES[name]()
    reading = kit.legibility(fig)
    assert reading.width_in <= kit.MAX_FIGURE_WIDTH_IN, f"{name} is {reading.width_in:.2f} in wide"
    assert reading.smallest_font_pt >= kit.SMALLEST_FONT_PT, f"{name} has {reading}"
    assert reading.smallest_text_px >= kit.MIN_TEXT_PX * kit.TEXT_MARGIN - 1e-9
    assert reading.ok
    assert side_by_side(fig) == [], f"{name} puts panels side by side: stack them"
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    drawn = drawn_data(fig)
    for legend in legends:
        assert data_covered_by(legend, fig, drawn) == [], f"a legend of {name} covers data"
    assert kit.alt_text(fig).endswith(".")


# ----------------------------------------------------------------------------- explorers


@functools.cache
def pictures() -> dict[str, bytes]:
    """Chapter 04's explorer pictures, drawn once for both of its explorers."""
    return explore_dynamic.combo_pictures(combo_records(), "recipes")


def images(widget) -> list[widgets.Image]:
    """Every Image in a widget tree."""
    if isinstance(widget, widgets.Image):
        return [widget]
    return [image for child in getattr(widget, "children", ()) for image in images(child)]


def png_dpi(png: bytes) -> float:
    at = png.find(b"pHYs")
    assert at > 0 and png[at + 12] == 1, "the PNG has no pHYs chunk in pixels per metre"
    return round(struct.unpack(">I", png[at + 4: at + 8])[0] * 0.0254)  # stored per metre


EXPLORERS = {
    "explore_costs.mac_share_explorer": lambda: explore_costs.mac_share_explorer(
        {"GPT": make_gpt(), "other": make_gpt(n_layer=1)}, [4, 16]),
    "explore_costs.static_mac_share_explorer": lambda: explore_costs.static_mac_share_explorer(
        {"GPT": make_gpt()}, [4, 16]),
    "explore_math.explorer": lambda: explore_math.explorer({"w": weights()}),
    "explore_math.static_explorer": lambda: explore_math.static_explorer(
        weights(), "w", "symmetric", "tensor", bits=[8, 2, 4]),
    "explore_dynamic.explorer": lambda: explore_dynamic.explorer(
        combo_records(), pictures()),
    "explore_dynamic.static_explorer": lambda: explore_dynamic.static_explorer(
        combo_records(), pictures()),
    "explore_static_figures.explorer": lambda: explore_static_figures.explorer(
        grid_points(batches=(1, 8)), LATENCY, REFS),
    "explore_static_figures.static_explorer": lambda: explore_static_figures.static_explorer(
        grid_points(("minmax",), (1, 8)), LATENCY, REFS),
    "explore_choice.explorer": lambda: explore_choice.explorer(CHOICE_RECORDS, (0.5, 6.0)),
    "explore_choice.static_explorer": lambda: explore_choice.static_explorer(
        CHOICE_RECORDS, (0.5, 6.0)),
    "explore_lowbit.static_explorer": lambda: explore_lowbit.static_explorer(fake_results()),
}


@pytest.mark.parametrize("name", list(EXPLORERS))
def test_explorer_images_have_alt_text_and_fit_the_column(name):
    box = EXPLORERS[name]()
    shown = images(box)
    assert shown, f"{name} shows no image"
    for image in shown:
        png = bytes(image.value)
        dpi = png_dpi(png)
        width_in = struct.unpack(">I", png[16:20])[0] / dpi
        assert dpi >= kit.RETINA_DPI and width_in <= kit.MAX_FIGURE_WIDTH_IN
        assert len(image.tooltip.split()) >= 8, f"{name}: alt text {image.tooltip!r} says little"
        assert image.layout.width == "100%"
        assert image.layout.max_width == f"{round(width_in * kit.FIGURE_DPI)}px"
    assert len({image.tooltip for image in shown}) == len(shown)  # one alt text per view
    assert not plt.get_fignums()

