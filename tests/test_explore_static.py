"""Tests for quantbook.explore_static against PyTorch's own static flow and kernels, and
hand-computed ranges."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from quantbook import explore_static as es
from quantbook.methods import static
from quantbook.quiet import silence_known_noise

pytestmark = pytest.mark.usefixtures("draft_figures")  # structure, not pixels


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


# ------------------------------------------------------------------ torch's quantize, capture


def test_torch_quantize_on_wrap_linears_equals_quantize_static(gpt, batches, ids):
    names = ("blocks.0.attn.q_proj", "blocks.1.mlp.fc_out")
    config = static.StaticConfig(observer="minmax", modules=names)
    wrapped = es.wrap_linears(gpt, names, static.qconfig(config))
    assert type(wrapped.blocks[0].attn.q_proj).__name__ == "QuantWrapper"
    assert type(gpt.blocks[0].attn.q_proj) is torch.nn.Linear  # the float model is untouched

    def run_fn(prepared, data):  # torch's quantize calls run_fn(prepared, *run_args)
        with torch.no_grad():
            for x in data:
                prepared(x)

    with warnings.catch_warnings():
        silence_known_noise()
        from torch.ao import quantization as tq

        by_torch = tq.quantize(wrapped, run_fn, [batches[:2]])
    ours, report = static.quantize_static(gpt, config, batches[:2])
    assert report.converted == names
    with torch.no_grad():
        assert torch.equal(by_torch(ids)[0], ours(ids)[0])
    one_batch, _ = static.quantize_static(gpt, config, batches[:1])
    with torch.no_grad():  # calibration data matters, so the equality above is not vacuous
        assert not torch.equal(one_batch(ids)[0], ours(ids)[0])


def test_wrap_linears_refuses_modules_that_are_not_linear(gpt):
    qconfig = static.qconfig(static.StaticConfig())
    with pytest.raises(ValueError, match=r"'blocks.0.ln_1' is a LayerNorm: capture and observe"):
        es.wrap_linears(gpt, ["blocks.0.ln_1"], qconfig)


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
