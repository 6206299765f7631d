"""AWQ against RTN (alpha = 0), against float (folding is exact) and against torchao's search."""

import copy

import pytest
import torch
from conftest import make_gpt
from torch import nn

from quantbook import affine
from quantbook.methods.awq import (
    AWQConfig,
    ScaledPackedLinear,
    fold_scale,
    fold_target,
    quantize_awq,
    search_clip,
    search_scale,
)
from quantbook.methods.packed import PackedLinear
from quantbook.methods.weight_only import WeightOnlyConfig, quantize_weight_only

TARGETS = ("attention", "ffn", "head")


def spec(bits=3, group_size=32):
    return affine.QuantSpec(bits=bits, scheme="symmetric", granularity="group",
                            group_size=group_size)


@pytest.fixture(scope="module")
def tiny():
    model = make_gpt()
    torch.manual_seed(0)
    return model, [torch.randint(0, 64, (4, 16)) for _ in range(4)]


def outlier_inputs(seed=0, n=256, cols=64):
    torch.manual_seed(seed)
    return torch.randn(n, cols) * torch.linspace(0.1, 10, cols)  # a few large channels


def test_alpha_zero_without_clip_is_rtn(tiny):
    model, batches = tiny
    config = AWQConfig(bits=4, group_size=16, n_grid=1, clip=False, targets=TARGETS)
    awq, report = quantize_awq(model, config, batches)
    rtn, _ = quantize_weight_only(model, WeightOnlyConfig(
        bits=4, granularity="group", group_size=16, targets=TARGETS))
    x = batches[0]
    with torch.no_grad():
        assert torch.allclose(awq(x)[0], rtn(x)[0], atol=1e-5)
    assert report.label == "AWQ int4 group16 no-clip"


@pytest.mark.parametrize("seed", range(4))
def test_search_never_loses_to_rtn_and_helps_with_outlier_channels(seed):
    torch.manual_seed(seed)
    X = torch.randn(256, 64)
    X[:, [3, 40]] *= 20  # two salient input channels, as in the AWQ paper's Figure 2
    W = torch.randn(8, 64)
    s, alpha, losses = search_scale(X, [W], spec(), n_grid=10)
    rtn = float((X @ W.T - X @ affine.fake_quantize(W, affine.choose_qparams(W, spec())).T)
                .pow(2).mean())
    assert losses[0] == pytest.approx(rtn, rel=1e-5)  # alpha = 0 is RTN
    assert min(losses) < 0.7 * losses[0] and alpha > 0
    assert s.shape == (64,) and bool((s > 0).all())


def test_clip_ratios_lie_in_range_and_lower_the_group_error():
    X = outlier_inputs()
    W = torch.randn(8, 64)
    W[0, 0] = 8.0  # one outlier weight stretches its group's range
    ratio = search_clip(X, W, spec(), n_grid=10)
    assert ratio.shape == (8, 2) and float(ratio.min()) >= 0.5 and float(ratio.max()) <= 1.0


def test_folding_keeps_the_float_model_exact(tiny):
    model, batches = tiny
    folded = copy.deepcopy(model)
    names = ["blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj"]
    s = torch.rand(32) + 0.5
    fold_scale(fold_target(folded, names), s)
    for name in names:
        with torch.no_grad():
            folded.get_submodule(name).weight.mul_(s)
    x = batches[0]
    with torch.no_grad():
        assert torch.allclose(folded(x)[0], model(x)[0], atol=1e-5)
    assert fold_target(model, ["blocks.1.mlp.fc_out"]) is None  # after GELU
    assert fold_target(model, ["lm_head"]) is model.ln_f
    assert fold_target(model, ["blocks.1.attn.out_proj"]) is model.blocks[1].attn.v_proj


def test_eight_bit_awq_is_close_to_float_and_stores_unfoldable_scales(tiny):
    model, batches = tiny
    quantized, report = quantize_awq(model, AWQConfig(bits=8, group_size=16,
                                                      targets=TARGETS), batches)
    x = batches[0]
    with torch.no_grad():
        assert torch.allclose(quantized(x)[0], model(x)[0], atol=0.02)
    assert isinstance(quantized.blocks[0].mlp.fc_out, ScaledPackedLinear)
    assert type(quantized.blocks[0].mlp.fc_in) is PackedLinear
    assert len(report.converted) == 13
    assert model.ln_f.weight.equal(torch.ones(32))  # the float model is untouched


def test_matches_torchao_awq_scales_on_int8_per_row():
    awq_api = pytest.importorskip("torchao.prototype.awq")
    from torchao.quantization import Int8WeightOnlyConfig, PerRow, quantize_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64)).eval()
    X = outlier_inputs(n=512, cols=128)
    base = Int8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(model, awq_api.AWQConfig(base, step="prepare"))
    with torch.no_grad():
        model(X)
    quantize_(model, awq_api.AWQConfig(base, step="convert"))
    theirs = 1.0 / model[0].weight.act_pre_scale.float().flatten()
    torch.manual_seed(0)
    W = nn.Linear(128, 64).weight.detach()
    channel = affine.QuantSpec(bits=8, scheme="symmetric", granularity="channel", axis=0)
    ours, alpha, _ = search_scale(X, [W], channel, n_grid=20)
    assert torch.allclose(ours, theirs, rtol=1e-5)


def test_no_calibration_batches(tiny):
    with pytest.raises(ValueError, match="batches is empty"):
        quantize_awq(tiny[0], AWQConfig(targets=TARGETS), [])


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_outside_2_to_8(bits):
    with pytest.raises(ValueError, match=f"bits={bits} is not supported: choose 2..8"):
        AWQConfig(bits=bits)


def test_group_size_must_divide_the_rows(tiny):
    with pytest.raises(ValueError, match="group_size=24 does not divide"):
        quantize_awq(tiny[0], AWQConfig(group_size=24, targets=TARGETS), tiny[1])


def test_nan_weights(tiny):
    model = make_gpt()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_awq(model, AWQConfig(targets=TARGETS), tiny[1])


def test_bad_settings():
    with pytest.raises(ValueError, match="n_grid=0 is not supported"):
        AWQConfig(n_grid=0)
    with pytest.raises(TypeError, match="expected an AWQConfig"):
        quantize_awq(make_gpt(), WeightOnlyConfig(), [])
    with pytest.raises(TypeError, match="cannot fold a scale into a GELU"):
        fold_scale(nn.GELU(), torch.ones(3))


def test_torchao_awq_int3_and_int4_paths_do_not_run_here():
    """What the chapter says about torchao's other AWQ paths on this CPU."""
    awq_api = pytest.importorskip("torchao.prototype.awq")
    from torchao.quantization import Int4WeightOnlyConfig, IntxWeightOnlyConfig, PerGroup, quantize_

    int3 = IntxWeightOnlyConfig(weight_dtype=torch.int3, granularity=PerGroup(32))
    model = nn.Sequential(nn.Linear(64, 16)).eval()
    quantize_(model, awq_api.AWQConfig(int3, step="prepare"))
    with torch.no_grad():
        model(torch.randn(8, 64))
    with pytest.raises(AssertionError, match="SupportsActivationPreScaling"):
        quantize_(model, awq_api.AWQConfig(int3, step="convert"))
    model = nn.Sequential(nn.Linear(64, 16)).eval()
    with pytest.raises((ImportError, ValueError), match="mslk"):
        quantize_(model, awq_api.AWQConfig(Int4WeightOnlyConfig(group_size=32), step="prepare"))
        with torch.no_grad():
            model(torch.randn(8, 64))
        quantize_(model, awq_api.AWQConfig(Int4WeightOnlyConfig(group_size=32), step="convert"))
