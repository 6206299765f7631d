"""SmoothQuant: the formula, exact folds on both model families, torchao's factors, bad inputs."""

import math

import pytest
import torch
from conftest import make_gpt
from torch import nn

from quantbook.methods.float_output import FloatOutputConfig, channel_ranges, quantize_float_output
from quantbook.methods.smoothquant import (
    SmoothedBertResidual,
    SmoothQuantConfig,
    fold_plan,
    quantize_smoothquant,
    smooth,
    smooth_scales,
    weight_col_absmax,
)


def make_bert2():
    """A tiny two-layer BERT, so that a layer's q/k/v fold into the previous layer's LayerNorm."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    return BertModel(config, add_pooling_layer=False).eval()


def bert_batches():
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(1, 100, (2, 12), generator=g) for _ in range(2)]
    return [{"input_ids": i, "attention_mask": torch.ones_like(i)} for i in ids]


def absmax_of(model, batches):
    names = [n for fold in fold_plan(model) for n in fold.linears]
    return {n: r.absmax for n, r in channel_ranges(model, names, batches).items()}


def test_smooth_scales_match_the_hand_computed_case():
    s = smooth_scales(torch.tensor([100.0, 1.0]), torch.tensor([1.0, 1.0]), alpha=0.5)
    torch.testing.assert_close(s, torch.tensor([10.0, 1.0]))
    s = smooth_scales(torch.tensor([8.0]), torch.tensor([2.0]), alpha=1.0)
    torch.testing.assert_close(s, torch.tensor([8.0]))  # all of the range into the weights


def test_weight_col_absmax_takes_the_max_over_every_reader():
    a, b = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, -5.0], [2.0, 0.0]]))
        b.weight.copy_(torch.tensor([[-3.0, 1.0]]))
    torch.testing.assert_close(weight_col_absmax([a, b]), torch.tensor([3.0, 5.0]))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
def test_smoothed_gpt_equals_the_float_gpt(alpha, batches):
    model = make_gpt()
    smoothed, scales = smooth(model, absmax_of(model, batches), alpha)
    assert len(scales) == 2 * 5 + 1  # q, k, v, out_proj, fc_in per block, and lm_head
    with torch.no_grad():
        torch.testing.assert_close(smoothed(batches[0])[0], model(batches[0])[0],
                                   atol=1e-4, rtol=1e-4)


def test_smoothed_bert_equals_the_float_bert():
    model, batches = make_bert2(), bert_batches()
    smoothed, _ = smooth(model, absmax_of(model, batches), 0.9)
    assert type(smoothed.encoder.layer[1].output) is SmoothedBertResidual
    assert type(smoothed.encoder.layer[1].attention.output) is SmoothedBertResidual
    with torch.no_grad():
        torch.testing.assert_close(smoothed(**batches[0]).last_hidden_state,
                                   model(**batches[0]).last_hidden_state, atol=1e-4, rtol=1e-4)


def test_scales_match_torchao_smoothquant_observer(batches):
    from torchao.prototype.smoothquant.core import SmoothQuantObserver

    model = make_gpt()
    name = "blocks.1.mlp.fc_in"
    linear = model.get_submodule(name)
    observer = SmoothQuantObserver(linear.weight.detach(), alpha=0.8)
    handle = linear.register_forward_pre_hook(lambda _m, args: observer(args[0]))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    handle.remove()
    theirs, _, _ = observer.calculate_qparams()
    ours = smooth_scales(absmax_of(model, batches)[name], weight_col_absmax([linear]), 0.8)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)


def test_smoothquant_shrinks_a_planted_outlier_and_beats_plain_static(batches):
    model = make_gpt()
    with torch.no_grad():
        model.blocks[0].ln_2.weight[5] = 60.0  # one channel of fc_in's input 60x the others
    ranges = channel_ranges(model, ["blocks.0.mlp.fc_in"], batches)["blocks.0.mlp.fc_in"]
    before = ranges.absmax.max() / ranges.absmax.median()
    smoothed, _ = smooth(model, absmax_of(model, batches), 0.9)
    after_ranges = channel_ranges(smoothed, ["blocks.0.mlp.fc_in"], batches)["blocks.0.mlp.fc_in"]
    after = after_ranges.absmax.max() / after_ranges.absmax.median()
    assert after < before / 5
    plain, _ = quantize_float_output(model, FloatOutputConfig(), batches)
    smoothquant, report = quantize_smoothquant(model, SmoothQuantConfig(alpha=0.9), batches)
    assert len(report.converted) == 12 and report.label == "SmoothQuant a=0.9, static int8"
    with torch.no_grad():
        ref = model(batches[0])[0]
        errors = [float((m(batches[0])[0] - ref).pow(2).mean()) for m in (plain, smoothquant)]
    assert errors[1] < errors[0]


def test_quantize_smoothquant_on_bert_converts_every_linear():
    model, batches = make_bert2(), bert_batches()
    quantized, report = quantize_smoothquant(model, SmoothQuantConfig(), batches)
    assert len(report.converted) == 12
    with torch.no_grad():
        ref = model(**batches[0]).last_hidden_state
        got = quantized(**batches[0]).last_hidden_state
    assert float(nn.functional.cosine_similarity(ref, got, dim=-1).min()) > 0.98


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, True, "0.5"])
def test_alpha_outside_zero_one_is_refused(alpha):
    with pytest.raises(ValueError, match=r"alpha=.* is not supported: choose a number in \[0, 1\]"):
        SmoothQuantConfig(alpha=alpha)
    with pytest.raises(ValueError, match="alpha="):
        smooth_scales(torch.ones(2), torch.ones(2), alpha)


def test_a_model_without_the_layernorm_linear_pattern_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no LayerNorm -> Linear pattern"):
        fold_plan(model)
    config = SmoothQuantConfig(modules=("0",))
    with pytest.raises(ValueError, match="no LayerNorm -> Linear pattern"):
        quantize_smoothquant(model, config, [torch.randn(2, 4)])


def test_bad_calls_are_refused(batches):
    model = make_gpt()
    with pytest.raises(ValueError, match="batches is empty"):
        quantize_smoothquant(model, SmoothQuantConfig(), [])
    with pytest.raises(TypeError, match="expected a SmoothQuantConfig"):
        quantize_smoothquant(model, FloatOutputConfig(), batches)
    with torch.no_grad():
        model.ln_f.weight[0] = math.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_smoothquant(model, SmoothQuantConfig(), batches)
