"""Tests for quantbook.explore_dynamic against PyTorch's and torchao's own kernels."""

import copy
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
from quantbook.methods.dynamic import (  # noqa: E402
    DynamicConfig,
    dynamic_activation_qparams,
    quantize_dynamic_model,
)
from quantbook.quiet import silence_known_noise  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))


def quantized_linear(granularity: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(24, 16)).eval()
    quantized, _ = quantize_dynamic_model(model, DynamicConfig(granularity=granularity),
                                          modules=["0"])
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


def test_call_unpacks_mappings():
    class Keywords(nn.Module):
        def forward(self, a, b):
            return a - b

    assert ed.call(Keywords(), {"a": 5, "b": 2}) == 3
    assert ed.call(nn.Identity(), 7) == 7


def test_latency_grid_rows_and_thread_restore(gpt):
    quantized, _ = quantize_dynamic_model(gpt, DynamicConfig())
    before = torch.get_num_threads()
    rows = ed.latency_grid({"float": gpt, "int8": quantized},
                           lambda b: torch.zeros(b, 8, dtype=torch.long), [1, 2], [1],
                           warmup=0, repeats=2)
    assert torch.get_num_threads() == before
    assert len(rows) == 2 * 2
    assert {(r["model"], r["batch_size"]) for r in rows} == {
        (m, b) for m in ("float", "int8") for b in (1, 2)}
    for r in rows:
        assert r["ms_per_item"] == pytest.approx(r["median_ms"] / r["batch_size"])
        if r["model"] == "float":
            assert r["speedup"] == 1.0
    fig = ed.plot_latency_grid(rows, "a title")
    assert fig._suptitle.get_text() == "a title"
    plt.close(fig)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_sizes": [0]}, r"batch_sizes=\[0\] is not supported"),
    ({"threads": []}, r"threads=\[\] is not supported"),
    ({"models": {}}, "models is empty"),
])
def test_latency_grid_errors(gpt, kwargs, match):
    args = {"models": {"float": gpt}, "batch_sizes": [1], "threads": [1]} | kwargs
    with pytest.raises(ValueError, match=match):
        ed.latency_grid(args["models"], lambda b: None, args["batch_sizes"], args["threads"])


def test_combo_label():
    assert ed.combo_label("ffn", "channel") == "ffn, per channel"
    with pytest.raises(ValueError, match=r"groups='head', granularity='tensor' is not a recipe"):
        ed.combo_label("head", "tensor")


@pytest.fixture(scope="module")
def grid(gpt, ids):
    with torch.inference_mode():
        reference = gpt(ids)[0]
    calls = []

    def evaluate(model):
        calls.append(model)
        with torch.inference_mode():
            logits = model(ids)[0]
        cosine = torch.nn.functional.cosine_similarity(logits, reference, dim=-1).mean()
        return {"cosine": float(cosine)}

    both, _ = quantize_dynamic_model(gpt, DynamicConfig())
    reuse = {"both, per tensor": (both, {"cosine": 0.5})}
    seen_threads = []

    def run(model):
        seen_threads.append(torch.get_num_threads())
        return model(ids)

    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    rows = ed.explorer_grid(gpt, evaluate, run, reuse=reuse, warmup=0, repeats=2, threads=other)
    assert set(seen_threads) == {other} and torch.get_num_threads() == before
    return rows, calls


def test_explorer_grid_covers_every_recipe(grid, gpt):
    rows, calls = grid
    labels = [r["label"] for r in rows]
    assert labels == ["float32"] + [ed.combo_label(g, gran) for g in ed.GROUP_CHOICES
                                    for gran in ("tensor", "channel")]
    assert len(calls) == 6  # float + 5 recipes; the reused one is not evaluated again
    by_label = {r["label"]: r for r in rows}
    assert by_label["both, per tensor"]["cosine"] == 0.5
    assert by_label["float32"]["cosine"] == pytest.approx(1.0)
    assert by_label["float32"]["size_ratio"] == 1.0 and by_label["float32"]["speedup"] == 1.0
    for gran in ("per tensor", "per channel"):
        both = by_label[f"both, {gran}"]["size_bytes"]
        assert both < by_label[f"ffn, {gran}"]["size_bytes"] < by_label["float32"]["size_bytes"]
        assert both < by_label[f"attention, {gran}"]["size_bytes"]
    # per channel stores one float scale and one zero point per row: a little larger
    assert by_label["ffn, per channel"]["size_bytes"] > by_label["ffn, per tensor"]["size_bytes"]


def test_combo_figure_and_explorers(grid):
    rows, _ = grid
    fig = ed.plot_combos(rows, "recipes", selected="ffn, per tensor")
    assert len(fig.axes) == 3
    highlighted = [p for p in fig.axes[0].patches if p.get_linewidth() == 2.5]
    assert len(highlighted) == 1
    plt.close(fig)
    pictures = ed.combo_pictures(rows, "recipes")
    assert list(pictures) == [r["label"] for r in rows[1:]]
    live = ed.explorer(rows, pictures)
    groups, granularity, text, image = live.children
    assert "both, per tensor" in text.value and bytes(image.value).startswith(PNG_MAGIC)
    first = bytes(image.value)
    granularity.value = "channel"
    assert "both, per channel" in text.value and bytes(image.value) != first
    static = ed.static_explorer(rows, pictures)
    slider, stack = static.children
    assert list(slider.options) == [r["label"] for r in rows[1:]]
    assert isinstance(stack, widgets.Stack) and len(stack.children) == 6
    assert type(static.link).__name__ == "Link"


def test_sensitivity_plot_orders_bars():
    scan = [{"module": "a", "drop": 0.1}, {"module": "b", "drop": 0.001},
            {"module": "c", "drop": 0.01}]
    fig = ed.plot_sensitivity(scan, "t")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["b", "c", "a"]  # barh draws bottom-up: the most harmful ends on top
    plt.close(fig)


def test_operator_log_sees_fused_and_unfused_kernels():
    with warnings.catch_warnings():
        silence_known_noise()
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(48, 40)).eval()
    eager, _ = quantize_dynamic_model(float_model, DynamicConfig(), modules=["0"])
    torchao_model = copy.deepcopy(float_model)
    quantize_(torchao_model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    x = torch.randn(2, 3, 48)
    assert ed.operator_log(lambda: float_model(x)) == ["aten::linear"]
    assert ed.operator_log(lambda: eager(x))[0] == "quantized::linear_dynamic"
    ops = ed.operator_log(lambda: torchao_model(x))
    assert "aten::_int_mm" in ops and "torchao::quantize_affine" in ops and len(ops) > 10
    assert ed.operator_log(lambda: None) == []
