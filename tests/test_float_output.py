"""Static int8 Linears with float outputs: against torch's fake-quantization, and bad inputs."""

import math

import pytest
import torch
from conftest import make_gpt
from torch import nn

from quantbook.measure import size_bytes
from quantbook.methods.float_output import (
    FloatOutputConfig,
    StaticInt8Linear,
    channel_ranges,
    input_qparams,
    quantize_float_output,
)


def test_input_qparams_match_the_hand_computed_case():
    scale, zero_point = input_qparams(-1.0, 3.0)
    assert scale == pytest.approx(4 / 127)
    assert zero_point == 32  # 0 - round(-1 / (4 / 127)) = round(31.75)


@pytest.mark.parametrize("engine", [e for e in ("qnnpack", "onednn")
                                    if e in torch.backends.quantized.supported_engines])
def test_engines_without_the_fused_kernel_compute_the_same_values(engine):
    torch.manual_seed(0)
    linear = nn.Linear(24, 10)
    x = torch.randn(3, 5, 24) * 2
    scale, zero_point = input_qparams(x.min(), x.max())
    fused = StaticInt8Linear(linear, scale, zero_point)
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:  # the fused fbgemm op raises "not implemented for this packed parameter type" here
        other = StaticInt8Linear(linear, scale, zero_point)
        got = other(x)
        state = other.state_dict()
    finally:
        torch.backends.quantized.engine = before
    assert fused._reference is None and other._reference is not None
    torch.testing.assert_close(got, fused(x), atol=1e-4, rtol=1e-4)
    assert state["weight"].dtype == torch.qint8 and size_bytes(other) == size_bytes(fused)


def test_static_int8_linear_equals_fake_quantization_on_in_range_inputs():
    torch.manual_seed(0)
    linear = nn.Linear(24, 10)
    x = torch.randn(3, 5, 24)  # (B, T, C)
    scale, zero_point = input_qparams(x.min(), x.max())
    weight = linear.weight.detach()
    w_scale = weight.abs().amax(1) / 127.5  # torch.ao's symmetric qint8 per-row scale
    fake_w = torch.fake_quantize_per_channel_affine(
        weight, w_scale, torch.zeros(10, dtype=torch.int32), 0, -128, 127)
    fake_x = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 127)
    expected = nn.functional.linear(fake_x, fake_w, linear.bias.detach())
    got = StaticInt8Linear(linear, scale, zero_point)(x)
    assert got.dtype == torch.float32 and got.shape == (3, 5, 10)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_state_dict_stores_int8_weights():
    module = StaticInt8Linear(nn.Linear(64, 64), 0.05, 10)
    state = module.state_dict()
    assert state["weight"].dtype == torch.qint8
    assert set(state) == {"weight", "bias", "scale", "zero_point"}
    float_bytes = size_bytes(nn.Linear(64, 64))
    assert size_bytes(module) < 0.5 * float_bytes


def test_channel_ranges_is_the_per_channel_min_and_max_and_removes_its_hooks():
    model = nn.Sequential(nn.Linear(4, 3))
    batches = [torch.tensor([[1.0, -2.0, 0.0, 5.0]]), torch.tensor([[3.0, 1.0, -1.0, 4.0]])]
    found = channel_ranges(model, ["0"], batches)["0"]
    torch.testing.assert_close(found.min, torch.tensor([1.0, -2.0, -1.0, 4.0]))
    torch.testing.assert_close(found.max, torch.tensor([3.0, 1.0, 0.0, 5.0]))
    torch.testing.assert_close(found.absmax, torch.tensor([3.0, 2.0, 1.0, 5.0]))
    assert not model[0]._forward_pre_hooks


def test_quantize_float_output_converts_every_linear_and_stays_close(gpt, batches):
    quantized, report = quantize_float_output(gpt, FloatOutputConfig(), batches)
    assert len(report.converted) == 2 * 6  # q, k, v, out, fc_in, fc_out in 2 blocks
    assert all(type(quantized.get_submodule(n)) is StaticInt8Linear for n in report.converted)
    assert type(gpt.blocks[0].mlp.fc_in) is nn.Linear  # the float model is untouched
    with torch.no_grad():
        ref, got = gpt(batches[0])[0], quantized(batches[0])[0]  # logits
    cosine = nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0)
    assert float(cosine) > 0.99
    assert "float outputs" in report.label and report.family == "static (float outputs)"


def test_bad_config_values_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="granularity='group' is not supported"):
        FloatOutputConfig(granularity="group")
    with pytest.raises(ValueError, match="names 'embeddings'"):
        FloatOutputConfig(targets=("embeddings",))


def test_bad_calls_are_refused(gpt, batches):
    from quantbook.methods.static import StaticConfig

    with pytest.raises(TypeError, match="expected a FloatOutputConfig"):
        quantize_float_output(gpt, StaticConfig(), batches)
    with pytest.raises(ValueError, match="batches is empty"):
        quantize_float_output(gpt, FloatOutputConfig(), [])
    broken = make_gpt()
    with torch.no_grad():
        broken.blocks[0].mlp.fc_in.weight[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_float_output(broken, FloatOutputConfig(), batches)
    with pytest.raises(ValueError, match="already quantized"):
        quantized, _ = quantize_float_output(gpt, FloatOutputConfig(), batches)
        quantize_float_output(quantized, FloatOutputConfig(), batches)


def test_a_scale_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="scale=0.0 must be a positive"):
        StaticInt8Linear(nn.Linear(4, 4), 0.0, 0)
