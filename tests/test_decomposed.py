"""The LLM.int8() decomposition: equal to plain static int8 without outliers, better with."""

import math

import pytest
import torch
from conftest import make_gpt
from torch import nn

from quantbook.methods.decomposed import (
    DecomposedLinear,
    DecompositionConfig,
    outlier_columns,
    quantize_decomposed,
)
from quantbook.methods.float_output import StaticInt8Linear, input_qparams


def test_outlier_columns_are_the_channels_above_the_threshold():
    found = outlier_columns(torch.tensor([0.5, 7.0, 6.0, 30.0]), threshold=6.0)
    assert found.tolist() == [1, 3]


def test_no_outlier_columns_equals_the_plain_static_linear():
    torch.manual_seed(0)
    linear, x = nn.Linear(16, 8), torch.randn(2, 5, 16)
    scale, zero_point = input_qparams(x.min(), x.max())
    plain = StaticInt8Linear(linear, scale, zero_point)(x)
    empty = torch.zeros(0, dtype=torch.long)
    torch.testing.assert_close(DecomposedLinear(linear, empty, scale, zero_point)(x), plain)


def test_float_columns_remove_the_error_of_a_planted_outlier():
    torch.manual_seed(0)
    linear, x = nn.Linear(16, 8), torch.randn(64, 16)
    x[:, 3] *= 80.0  # one outlier channel
    reference = linear(x).detach()
    scale, zero_point = input_qparams(x.min(), x.max())
    plain = StaticInt8Linear(linear, scale, zero_point)(x)
    rest = torch.cat([x[:, :3], x[:, 4:]], dim=1)
    scale, zero_point = input_qparams(rest.min(), rest.max())
    decomposed = DecomposedLinear(linear, torch.tensor([3]), scale, zero_point)(x)
    plain_error = (plain - reference).pow(2).mean()
    assert (decomposed - reference).pow(2).mean() < plain_error / 20


def test_quantize_decomposed_keeps_the_outlier_columns_in_float(batches):
    model = make_gpt()
    with torch.no_grad():
        model.blocks[0].ln_1.weight[2] = 200.0  # q, k, v inputs get an outlier in channel 2
    quantized, report = quantize_decomposed(model, DecompositionConfig(), batches)
    assert len(report.converted) == 12
    query = quantized.blocks[0].attn.q_proj
    assert type(query) is DecomposedLinear and 2 in query.outliers.tolist()
    assert type(quantized.blocks[1].mlp.fc_out) in (StaticInt8Linear, DecomposedLinear)
    with torch.no_grad():
        ref, got = model(batches[0])[0], quantized(batches[0])[0]
    assert float(nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0)) > 0.99


@pytest.mark.parametrize("threshold", [0, -1.0, math.inf, math.nan, True])
def test_bad_thresholds_are_refused(threshold):
    with pytest.raises(ValueError, match="threshold=.* is not supported: choose a positive"):
        DecompositionConfig(threshold=threshold)


def test_a_threshold_that_marks_every_column_is_refused(gpt, batches):
    with pytest.raises(ValueError, match="marks every input column"):
        quantize_decomposed(gpt, DecompositionConfig(threshold=1e-6), batches)


def test_no_calibration_batches_are_refused(gpt):
    with pytest.raises(ValueError, match="batches is empty"):
        quantize_decomposed(gpt, DecompositionConfig(), [])
