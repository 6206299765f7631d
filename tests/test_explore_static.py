"""Tests for quantbook.explore_static against PyTorch's own static flow and kernels, hand-computed
ranges, and wall-clock sleeps of known length."""

import math
import time
import warnings

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from quantbook import explore_static as es  # noqa: E402
from quantbook.methods import static  # noqa: E402
from quantbook.quiet import silence_known_noise  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        silence_known_noise()
        yield


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(4))


def sqnr_by_hand(x: torch.Tensor, approx: torch.Tensor) -> float:
    x, approx = x.double().numpy(), approx.double().numpy()
    return 10 * math.log10((x**2).sum() / ((x - approx) ** 2).sum())


# ----------------------------------------------------------------------------- targets, capture


def test_target_choices_keep_the_ffn_output_out_of_the_last_choice(gpt):
    choices = es.target_choices(gpt)
    attention = [f"blocks.{i}.attn.{p}_proj" for i in range(2) for p in ("q", "k", "v", "out")]
    assert choices["attention"] == attention
    assert sorted(choices["attention + FFN"]) == sorted(
        attention + [f"blocks.{i}.mlp.fc_{s}" for i in range(2) for s in ("in", "out")])
    assert sorted(choices["attention + FFN input"]) == sorted(
        attention + ["blocks.0.mlp.fc_in", "blocks.1.mlp.fc_in"])


def test_capture_records_what_the_linear_computes(gpt, ids):
    name = "blocks.1.mlp.fc_in"
    with es.capture(gpt, [name]) as seen, torch.no_grad():
        gpt(ids)
        gpt(ids[:1])
    layer = gpt.get_submodule(name)
    assert len(seen[name]["input"]) == 2
    for x, y in zip(seen[name]["input"], seen[name]["output"], strict=True):
        torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias))
    assert seen[name]["input"][1].shape == (1, 16, 32)
    assert not layer._forward_hooks  # removed on exit


def test_capture_sees_inside_a_prepared_wrapper(gpt, ids):
    prepared = static.prepare_static(gpt, static.StaticConfig(observer="minmax"))
    name = "blocks.0.attn.q_proj"
    with es.capture(prepared, [name]) as seen, torch.no_grad():
        prepared(ids)
    with torch.no_grad():
        x = gpt.blocks[0].ln_1(gpt.tok_emb(ids) + gpt.pos_emb(torch.arange(16)))
    torch.testing.assert_close(seen[name]["input"][0], x)


def test_capture_rejects_modules_that_are_not_linear(gpt):
    with pytest.raises(ValueError, match=r"'blocks.0.ln_1' is a LayerNorm: capture and observe"):
        with es.capture(gpt, ["blocks.0.ln_1"]):
            pass


# ----------------------------------------------------------------------------- ranges and errors


def test_observe_range_min_max_hand_computed():
    r = es.observe_range("minmax", [torch.tensor([-1.0, 0.5]), torch.tensor([3.0, 0.0])])
    scale = 4.0 / 127  # quint8 codes 0..127 over [-1, 3]
    zero_point = round(1.0 / scale)  # 31.75 -> 32
    assert math.isclose(r.scale, scale, rel_tol=1e-6)
    assert r.zero_point == zero_point == 32
    assert (r.qmin, r.qmax) == (0, 127)
    assert math.isclose(r.low, -32 * scale, rel_tol=1e-6)
    assert math.isclose(r.high, 95 * scale, rel_tol=1e-6)


def test_moving_average_moves_one_percent_per_batch():
    r = es.observe_range("moving_average", [torch.tensor([0.0, 1.0]), torch.tensor([0.0, 101.0])])
    assert math.isclose(r.scale * (r.qmax - r.zero_point), 1.0 + 0.01 * 100, rel_tol=1e-2)


def test_make_observer_and_observe_range_errors():
    with pytest.raises(ValueError, match=r"observer='mse' is not supported: choose one of"):
        es.make_observer("mse")
    with pytest.raises(ValueError, match="batches is empty"):
        es.observe_range("minmax", [])


def test_requant_sqnr_matches_torch_quantize_per_tensor():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    scale, zero_point = 0.05, 64  # covers [-3.2, 3.15]: some values are clipped
    codes = torch.quantize_per_tensor(x.clamp(-64 * scale, 63 * scale), scale, zero_point,
                                      torch.quint8)
    approx = codes.dequantize()
    got = es.requant_sqnr_db([x[:400], x[400:]], scale, zero_point)
    assert math.isclose(got, sqnr_by_hand(x, approx), rel_tol=1e-6)


def test_dynamic_sqnr_matches_torch_dynamic_quantization():
    g = torch.Generator().manual_seed(1)
    small, large = torch.randn(500, generator=g) * 0.1, torch.randn(500, generator=g) * 50
    approx = [torch.quantize_per_tensor_dynamic(b, torch.quint8, True).dequantize()
              for b in (small, large)]
    expected = sqnr_by_hand(torch.cat([small, large]), torch.cat(approx))
    assert math.isclose(es.dynamic_sqnr_db([small, large]), expected, rel_tol=1e-4)
    joint = es.observe_range("minmax", [small, large])  # one fixed range for both batches
    fixed = es.requant_sqnr_db([small, large], joint.scale, joint.zero_point)
    assert math.isclose(fixed, es.dynamic_sqnr_db([small, large]), abs_tol=0.5)


def test_requant_damage_on_an_outlier_channel():
    x = torch.full((10, 4), 0.2)
    x[3, 2] = 127.0  # one outlier in channel 2
    r = es.observe_range("minmax", [x])  # range [0, 127], step 1: every 0.2 rounds to 0
    damage = es.requant_damage([x[:5], x[5:]], r)
    assert damage["top_channel"] == 2 and damage["top_absmax"] == 127.0
    assert math.isclose(damage["median_abs"], 0.2, rel_tol=1e-6)
    assert math.isclose(damage["zero_fraction"], 39 / 40, rel_tol=1e-6)
    assert damage["rest_sqnr_db"] == float("-inf") or damage["rest_sqnr_db"] < 0.1
    assert damage["sqnr_db"] > 20  # the outlier itself is exact


# ----------------------------------------------------------------------------- one-pass calibration


@pytest.mark.parametrize("observer", static.OBSERVERS)
def test_observe_then_convert_equals_prepare_calibrate_convert(gpt, batches, ids, observer):
    choices = es.target_choices(gpt)
    snapshots = es.observe_linears(gpt, choices["attention + FFN"], batches, [observer], (1, 3))
    assert set(snapshots) == {(observer, 1), (observer, 3)}
    config = static.StaticConfig(observer=observer)
    for (_, n), observed in snapshots.items():
        for names in (choices["attention"], choices["attention + FFN"]):
            ours, report = es.convert_observed(gpt, observed, config, names)
            prepared = static.calibrate(static.prepare_static(gpt, config, modules=names),
                                        batches[:n])
            reference, _ = static.convert_static(prepared)
            with torch.no_grad():
                assert torch.equal(ours(ids)[0], reference(ids)[0])
            assert sorted(report.converted) == sorted(names)


def test_observe_linears_reports_progress_and_leaves_no_hooks(gpt, batches):
    calls = []
    es.observe_linears(gpt, ["blocks.0.attn.q_proj"], batches, ["minmax"], (2,),
                       progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]  # stops after the last checkpoint
    assert not gpt.blocks[0].attn.q_proj._forward_hooks


def test_observe_linears_and_convert_observed_errors(gpt, batches):
    with pytest.raises(ValueError, match=r"checkpoints=\[1, 5\] must lie in 1..3"):
        es.observe_linears(gpt, ["blocks.0.attn.q_proj"], batches, checkpoints=(1, 5))
    snapshots = es.observe_linears(gpt, ["blocks.0.attn.q_proj"], batches[:1], ["minmax"], (1,))
    observed = snapshots["minmax", 1]
    with pytest.raises(ValueError, match=r"no observers for 'blocks.0.attn.k_proj'"):
        es.convert_observed(gpt, observed, static.StaticConfig(observer="minmax"),
                            ["blocks.0.attn.q_proj", "blocks.0.attn.k_proj"])
    with pytest.raises(ValueError, match=r"are MinMaxObserver, but config.observer='histogram'"):
        es.convert_observed(gpt, observed, static.StaticConfig(), ["blocks.0.attn.q_proj"])


def test_quality_grid_scores_every_combination_and_keeps_models(gpt, batches, ids):
    choices = {k: v for k, v in es.target_choices(gpt).items() if k != "attention + FFN input"}
    snapshots = es.observe_linears(gpt, choices["attention + FFN"], batches, ("minmax",), (1, 3))
    with torch.no_grad():
        reference = gpt(ids)[0]

    def evaluate(model):
        with torch.no_grad():
            out = model(ids)[0]
        cosine = F.cosine_similarity(out.flatten(1), reference.flatten(1))
        return {"pearson": 0.5, "cosine_mean": float(cosine.mean()),
                "cosine_min": float(cosine.min())}

    points, kept = es.quality_grid(gpt, snapshots, choices, evaluate,
                                   keep=[("minmax", 3, "attention")])
    assert {(p.observer, p.n_batches, p.targets) for p in points} == {
        ("minmax", n, t) for n in (1, 3) for t in choices}
    assert all(0.9 < p.cosine_min <= p.cosine_mean <= 1.0 + 1e-6 for p in points)
    expected, _ = es.convert_observed(gpt, snapshots["minmax", 3],
                                      static.StaticConfig(observer="minmax"),
                                      choices["attention"])
    with torch.no_grad():
        assert torch.equal(kept["minmax", 3, "attention"](ids)[0], expected(ids)[0])


# ----------------------------------------------------------------------------- timing


def test_time_breakdown_attributes_known_sleeps():
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    linear = model[0]

    def slow_forward(x):
        time.sleep(0.06)
        return F.linear(x, linear.weight, linear.bias)

    linear.forward = slow_forward  # hooks still run around the instance's forward
    x = torch.randn(2, 4)

    def call():
        time.sleep(0.01)  # outside any module: counted as float ops
        model(x)

    # two rounds: their median is their mean, so the parts add up to the total exactly
    parts = es.time_breakdown({"slow": (model, call)}, repeats=2, warmup=1)["slow"]
    assert set(parts) == {"float Linear", "float ops", "total"}
    # sleeps give lower bounds; a busy machine only adds, so no upper bounds in milliseconds
    assert parts["float Linear"] >= 60 and parts["float ops"] >= 10
    assert parts["float ops"] < parts["float Linear"]  # the Linear's 60 ms were not leaked
    assert math.isclose(parts["total"], parts["float Linear"] + parts["float ops"])
    assert not linear._forward_hooks and not linear._forward_pre_hooks


def test_time_breakdown_of_a_static_model_has_every_part(gpt, batches, ids):
    quantized, _ = static.convert_static(static.calibrate(
        static.prepare_static(gpt, static.StaticConfig(observer="minmax")), batches[:1]))
    both = es.time_breakdown({"float": (gpt, lambda: gpt(ids)),
                              "static": (quantized, lambda: quantized(ids))}, repeats=1)
    assert set(both["float"]) == {"float Linear", "float ops", "total"}
    assert {"int8 Linear", "quantize", "dequantize", "float ops", "total"} <= set(both["static"])
    assert both["static"]["float Linear"] > 0  # lm_head is not among the default targets
    with pytest.raises(ValueError, match="repeats=0, warmup=1: need repeats >= 1"):
        es.time_breakdown({"static": (quantized, lambda: None)}, repeats=0)


# ----------------------------------------------------------------------------- figures, explorer


def grid_points(observers=static.OBSERVERS, batches=(1, 4, 8)):
    return [es.GridPoint(o, n, t, 0.6 + 0.01 * n, 0.99 - 0.1 * (t == "attention + FFN") - 0.001 * n,
                         0.9) for o in observers for n in batches
            for t in ("attention", "attention + FFN")]


LATENCY = {"attention": 30.0, "attention + FFN": 20.0}
REFS = {"float": {"pearson": 0.65, "cosine_mean": 1.0, "latency_ms": 40.0},
        "dynamic int8": {"pearson": 0.64, "cosine_mean": 0.95, "latency_ms": 18.0}}


def test_plot_calibration_sweep_draws_each_configuration():
    points = grid_points()
    fig = es.plot_calibration_sweep(points, {"float": 0.65}, "title")
    cos_ax, r_ax = fig.axes
    line = next(ln for ln in cos_ax.lines if ln.get_label() == "histogram, attention + FFN")
    assert list(line.get_xdata()) == [1, 4, 8]
    expected = [p.cosine_mean for p in points
                if (p.observer, p.targets) == ("histogram", "attention + FFN")]
    assert np.allclose(line.get_ydata(), expected)
    assert len(cos_ax.lines) == 6 and len(r_ax.lines) == 7  # + the float reference line
    plt.close(fig)


def test_plot_activation_ranges_draws_each_observers_range():
    x = torch.linspace(-1, 3, 101)
    ranges = {kind: es.observe_range(kind, [x]) for kind in static.OBSERVERS}
    fig = es.plot_activation_ranges({"a": x, "b": x, "c": x}, dict.fromkeys("abc", ranges), "t")
    assert sum(ax.get_visible() for ax in fig.axes) == 3  # 2 x 2 grid, one panel hidden
    ax = fig.axes[0]
    drawn = sorted(float(ln.get_xdata()[0]) for ln in ax.lines)
    assert np.allclose(drawn, sorted(v for r in ranges.values() for v in (r.low, r.high)))
    assert ax.get_yscale() == "log"
    plt.close(fig)


def test_plot_time_breakdown_stacks_the_milliseconds():
    parts = {"float": {"float Linear": 3.0, "float ops": 2.0, "total": 5.0},
             "static": {"int8 Linear": 1.0, "quantize": 0.5, "dequantize": 0.5,
                        "float ops": 2.0, "total": 4.0}}
    fig = es.plot_time_breakdown(parts, "t")
    bars = fig.axes[0].patches
    assert [round(b.get_width(), 6) for b in bars] == [3.0, 2.0, 1.0, 0.5, 0.5, 2.0]
    assert bars[-1].get_x() + bars[-1].get_width() == pytest.approx(4.0)  # stacked to the total
    plt.close(fig)


def test_point_figure_shows_the_point_beside_the_references():
    point = grid_points()[1]  # minmax, 1 batch, attention + FFN
    fig = es.point_figure(point, LATENCY, REFS)
    widths = [[round(b.get_width(), 6) for b in ax.patches] for ax in fig.axes]
    assert widths == [[0.65, 0.64, round(point.pearson, 6)],
                      [1.0, 0.95, round(point.cosine_mean, 6)], [40.0, 18.0, 20.0]]
    plt.close(fig)


def test_live_explorer_switches_to_the_chosen_point():
    box = es.explorer(grid_points(), LATENCY, REFS)
    observer, n_batches, targets = box.children[:3]
    assert (observer.value, n_batches.value, targets.value) == ("histogram", 8, "attention + FFN")
    first = bytes(box.image.value)
    assert first.startswith(PNG_MAGIC)
    n_batches.value = 1
    second = bytes(box.image.value)
    assert second != first
    n_batches.value = 8
    assert bytes(box.image.value) == first  # cached
    plt.close("all")


def test_static_explorer_has_one_view_per_point():
    box = es.static_explorer(grid_points(("minmax", "histogram"), (1, 8)), LATENCY, REFS)
    slider, stack = box.children
    assert len(slider.options) == len(stack.children) == 8
    assert slider.options[:3] == ("attention, histogram, 1 batch",
                                  "attention, histogram, 8 batches", "attention, minmax, 1 batch")
    assert all(isinstance(v, widgets.Image) for v in stack.children)
    assert type(box.link).__name__ == "Link"


def test_explorers_need_points():
    with pytest.raises(ValueError, match="points is empty"):
        es.explorer([], LATENCY, REFS)
