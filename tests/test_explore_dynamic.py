"""Tests for quantbook.explore_dynamic against PyTorch's own kernels and the sweep's records."""

import dataclasses
import math
import warnings

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from quantbook import explore_dynamic as ed  # noqa: E402
from quantbook import measure  # noqa: E402
from quantbook.methods import DynamicConfig, Sensitivity, quantize_dynamic  # noqa: E402
from quantbook.methods.dynamic import (  # noqa: E402
    dynamic_activation_qparams,
    engine_reduces_range,
)
from quantbook.sweep import Sweep, Workload  # noqa: E402
from quantbook.targets import list_targets  # noqa: E402
from quantbook.widgets import figure_png  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))


def quantized_linear(granularity: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(24, 16)).eval()
    quantized, _ = quantize_dynamic(model, DynamicConfig(granularity=granularity, modules=("0",)))
    return quantized[0]


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10_000), low=st.floats(-50, 0), high=st.floats(0.01, 50),
       granularity=st.sampled_from(["tensor", "channel"]))
# a value next to a rounding tie: x / scale + zero_point picked the neighbouring code here
@example(seed=568, low=-1.009917243031552, high=25.566958988497603, granularity="tensor")
def test_simulation_matches_the_kernel(seed, low, high, granularity):
    layer = quantized_linear(granularity)
    g = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(3, 5, 24, generator=g)
    with torch.inference_mode():
        reference = layer(x)
    simulated = ed.simulate_dynamic_linear(layer, x)
    assert not simulated.requires_grad
    tolerance = 1e-5 * float(reference.abs().max()) + 1e-6
    assert torch.allclose(simulated, reference, atol=tolerance, rtol=0)


def test_simulation_with_other_qparams_is_further_from_the_kernel():
    layer = quantized_linear("tensor")
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(0)) * 3
    with torch.inference_mode():
        reference = layer(x)
    right = (ed.simulate_dynamic_linear(layer, x, reduce_range=True) - reference).abs().max()
    wrong = (ed.simulate_dynamic_linear(layer, x, reduce_range=False) - reference).abs().max()
    assert right < 1e-4 < wrong
    scale, zero_point = dynamic_activation_qparams(x)
    other = ed.simulate_dynamic_linear(layer, x, qparams=(2 * scale, zero_point // 2))
    assert (other - reference).abs().max() > 1e-3
    assert torch.equal(ed.simulate_dynamic_linear(layer, x, qparams=(scale, zero_point)),
                       ed.simulate_dynamic_linear(layer, x))


ENGINES = [e for e in ("x86", "fbgemm", "onednn", "qnnpack")
           if e in torch.backends.quantized.supported_engines]


@pytest.fixture
def engine(request):
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = request.param
    yield request.param
    torch.backends.quantized.engine = before


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_the_default_range_follows_the_engine(engine):
    # qnnpack ignores reduce_range and quantizes activations to 8 bits; the others use 7
    layer = quantized_linear("tensor")
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(0)) * 3
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = layer(x)
    seven_bits = engine != "qnnpack"
    assert engine_reduces_range() is seven_bits and engine_reduces_range(engine) is seven_bits
    right = (ed.simulate_dynamic_linear(layer, x) - reference).abs().max()
    wrong = (ed.simulate_dynamic_linear(layer, x, reduce_range=not seven_bits)
             - reference).abs().max()
    assert right < 1e-4 < wrong
    assert dynamic_activation_qparams(x) == dynamic_activation_qparams(x, seven_bits)


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match=r"engine='arm' is not supported here: choose from"):
        engine_reduces_range("arm")


def test_simulation_rejects_a_float_linear():
    with pytest.raises(TypeError, match="expected a dynamically quantized Linear"):
        ed.simulate_dynamic_linear(nn.Linear(4, 4), torch.randn(2, 4))


def test_capture_inputs_returns_what_the_module_received():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    xs = [torch.randn(3, 4), torch.randn(5, 4)]
    seen = ed.capture_inputs(model, "2", lambda: [model(x) for x in xs])
    assert len(seen) == 2
    with torch.no_grad():
        for x, captured in zip(xs, seen, strict=True):
            assert torch.equal(captured, torch.relu(model[0](x)))
    assert not model[2]._forward_pre_hooks  # the hook is removed
    with pytest.raises(ValueError, match="never ran"):
        ed.capture_inputs(model, "2", lambda: None)


def test_latency_grid_points_and_thread_restore(gpt):
    quantized, _ = quantize_dynamic(gpt, DynamicConfig())
    before = torch.get_num_threads()
    points = ed.latency_grid({"float": gpt, "int8": quantized},
                             lambda b: torch.zeros(b, 8, dtype=torch.long), [1, 2], [1],
                             warmup=0, repeats=2)
    assert torch.get_num_threads() == before
    assert [(p.label, p.batch_size, p.threads) for p in points] == [
        ("float", 1, 1), ("int8", 1, 1), ("float", 2, 1), ("int8", 2, 1)]
    for p in points:
        assert p.latency_ms > 0
        if p.label == "float":
            assert p.speedup == 1.0
    for small, large in ((points[0], points[2]), (points[1], points[3])):
        assert small.label == large.label
    int8 = points[1]
    assert int8.speedup == pytest.approx(points[0].latency_ms / int8.latency_ms)
    fig = ed.plot_latency_grid(points, "a title")
    assert fig._suptitle.get_text() == "a title"
    plt.close(fig)


def test_latency_grid_unpacks_keyword_batches():
    class Keywords(nn.Module):
        def forward(self, a, b):
            return a - b

    points = ed.latency_grid({"kw": Keywords()}, lambda n: {"a": torch.ones(n), "b": torch.ones(n)},
                             [3], [1], warmup=0, repeats=1)
    assert [(p.label, p.batch_size, p.speedup) for p in points] == [("kw", 3, 1.0)]


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_sizes": [0]}, r"batch_sizes=\[0\] is not supported"),
    ({"threads": []}, r"threads=\[\] is not supported"),
    ({"models": {}}, "models is empty"),
])
def test_latency_grid_errors(gpt, kwargs, match):
    args = {"models": {"float": gpt}, "batch_sizes": [1], "threads": [1]} | kwargs
    with pytest.raises(ValueError, match=match):
        ed.latency_grid(args["models"], lambda b: None, args["batch_sizes"], args["threads"])


def test_combo_label_and_configs():
    assert ed.combo_label(("ffn",), "channel") == "ffn, per channel"
    assert ed.combo_label(["attention", "ffn"], "tensor") == "both, per tensor"
    with pytest.raises(ValueError, match=r"targets=\('head',\), granularity='tensor' is not"):
        ed.combo_label(("head",), "tensor")
    with pytest.raises(ValueError, match=r"granularity='group' is not a recipe"):
        ed.combo_label(("ffn",), "group")
    configs = ed.combo_configs()
    assert list(configs) == ["attention, per tensor", "attention, per channel",
                             "ffn, per tensor", "ffn, per channel",
                             "both, per tensor", "both, per channel"]
    assert configs["both, per channel"] == DynamicConfig(targets=("attention", "ffn"),
                                                         granularity="channel")
    assert configs["attention, per tensor"] == DynamicConfig(targets=("attention",))


@pytest.fixture(scope="module")
def grid(gpt, ids):
    with torch.inference_mode():
        reference = gpt(ids)[0]
    evaluated, seen_threads = [], []

    def evaluate(model):
        evaluated.append(model)
        with torch.inference_mode():
            logits = model(ids)[0]
        cosine = torch.nn.functional.cosine_similarity(logits, reference, dim=-1).mean()
        return {"cosine_mean": float(cosine), "max_logit": float(logits.max())}

    def run(model):
        seen_threads.append(torch.get_num_threads())
        return model(ids)

    sweep = Sweep(Workload("tiny", gpt, metric="cosine_mean", evaluate=evaluate, run=run))
    measured = sweep.record(DynamicConfig(), "both, per tensor")  # measured before: reused
    requested, real = [], measure.num_threads

    def spy(n):  # two real threads on a busy 2-core machine take seconds per call
        requested.append(n)
        return real(n)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(measure, "num_threads", spy)
        records = ed.explorer_grid(sweep, threads=1, warmup=0, repeats=2)
    assert requested == [1] and set(seen_threads) == {1}
    return records, evaluated, measured, sweep


def test_explorer_grid_covers_every_recipe(grid, gpt):
    records, evaluated, measured, sweep = grid
    assert [r.method for r in records] == ["float32", *ed.combo_configs()]
    assert len(evaluated) == 7  # float + 6 recipes, each evaluated once
    by_label = {r.method: r for r in records}
    assert by_label["both, per tensor"].value == measured.value
    assert by_label["float32"].value == pytest.approx(1.0)
    assert by_label["float32"].size_ratio == 1.0 and by_label["float32"].speedup == 1.0
    assert all(r.latency_ms > 0 and r.float_latency_ms > 0 for r in records)
    groups = list_targets(gpt)
    for label, config in ed.combo_configs().items():
        expected = [n for g in config.targets for n in groups[g]]
        assert sorted(sweep.quantize(config)[1].converted) == sorted(expected)
        assert by_label[label].converted == len(expected)
    for gran in ("per tensor", "per channel"):
        both = by_label[f"both, {gran}"].size_bytes
        assert both < by_label[f"ffn, {gran}"].size_bytes < by_label["float32"].size_bytes
        assert both < by_label[f"attention, {gran}"].size_bytes
    # per channel stores one float scale and one zero point per row: a little larger
    assert by_label["ffn, per channel"].size_bytes > by_label["ffn, per tensor"].size_bytes


def test_explorer_grid_refuses_a_workload():
    with pytest.raises(TypeError, match="expected a quantbook.sweep.Sweep"):
        ed.explorer_grid(Workload("w", nn.Linear(2, 2), "m", evaluate=lambda m: 0.0))


def test_combo_figure_and_explorers(grid):
    records, *_ = grid
    fig = ed.plot_combos(records, "recipes", selected="ffn, per tensor",
                         panels=[("size_ratio", "size"), ("speedup", "x"),
                                 ("cosine_mean", "cosine")])
    assert len(fig.axes) == 3
    highlighted = [p for p in fig.axes[0].patches if p.get_linewidth() == 2.5]
    assert len(highlighted) == 1
    heights = sorted(round(p.get_height(), 9) for p in fig.axes[0].patches)
    assert heights == sorted(round(r.size_ratio, 9) for r in records[1:])
    plt.close(fig)
    pictures = ed.combo_pictures(records, "recipes")
    assert list(pictures) == [r.method for r in records[1:]]
    live = ed.explorer(records, pictures)
    targets, granularity, text, image = live.children
    assert "both, per tensor" in text.value and bytes(image.value).startswith(PNG_MAGIC)
    first = bytes(image.value)
    granularity.value = "channel"
    assert "both, per channel" in text.value and bytes(image.value) != first
    targets.value = ("ffn",)
    assert text.value == ed.describe(records[4]) and "ffn, per channel" in text.value
    static = ed.static_explorer(records, pictures)
    slider, stack = static.children
    assert list(slider.options) == [r.method for r in records[1:]]
    assert isinstance(stack, widgets.Stack) and len(stack.children) == 6
    assert type(static.link).__name__ == "Link"
    assert slider.value == "attention, per tensor"  # the default start
    alt = stack.children[0].children[1].tooltip
    assert alt == ed.combo_alt(records[1]) and "attention, per tensor is outlined" in alt
    assert image.tooltip == ed.combo_alt(records[4])  # follows the buttons


def test_explorers_start_at_the_recipe_asked_for(grid):
    records, *_ = grid
    pictures = dict.fromkeys(ed.combo_configs(), figure_png(plt.figure(figsize=(1, 1))))
    live = ed.explorer(records, pictures, start="ffn, per channel")
    targets, granularity, text, image = live.children
    assert (targets.value, granularity.value) == (("ffn",), "channel")
    assert "ffn, per channel" in text.value and "ffn, per channel" in image.tooltip
    slider, stack = ed.static_explorer(records, pictures, start="both, per channel").children
    assert slider.value == "both, per channel" and stack.selected_index == 5
    for explorer in (ed.explorer, ed.static_explorer):
        with pytest.raises(ValueError, match=r"start='all' is not a recipe of the explorer: "
                                             r"choose one of \['attention, per tensor'"):
            explorer(records, pictures, start="all")


def test_describe_and_untimed_records(grid):
    records, *_ = grid
    line = ed.describe(records[1])
    size_mb = records[1].size_bytes / 1e6
    assert line.startswith("<b>attention, per tensor</b>") and f"{size_mb:.1f} MB" in line
    assert f"({records[1].speedup:.2f}x)" in line and "max logit" in line
    untimed = [dataclasses.replace(r, latency_ms=None, speedup=None) for r in records]
    assert "ms" not in ed.describe(untimed[1]).split("MB")[1]
    message = "'attention, per tensor' has no speedup: pass timed records"
    with pytest.raises(ValueError, match=message):
        ed.plot_combos(untimed, "t")


def test_sensitivity_plot_orders_bars():
    scan = [Sensitivity("a", 0.9, 0.1), Sensitivity("b", 0.999, 0.001),
            Sensitivity("c", 0.99, 0.01), Sensitivity("d", math.nan, math.inf)]
    fig = ed.plot_sensitivity(scan, "t")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["b", "c", "a", "d"]  # barh draws bottom-up: the most harmful ends on top
    widths = [p.get_width() for p in ax.patches]
    assert widths[:3] == [0.001, 0.01, 0.1] and widths[3] == pytest.approx(1.0)
    assert [p.get_hatch() for p in ax.patches] == [None, None, None, "//"]
    plt.close(fig)
    with pytest.raises(TypeError, match="pass the Sensitivity rows"):
        ed.plot_sensitivity([{"module": "a", "drop": 0.1}], "t")
