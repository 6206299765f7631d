"""Tests for quantbook.methods.torchao_activation against hand-written int8 references."""

import copy
import warnings

import pytest
import torch
from torch import nn

from quantbook.methods.torchao_activation import (
    TorchaoDynamicConfig,
    TorchaoStaticConfig,
    calibrate_input_absmax,
    quantize_torchao_dynamic,
    quantize_torchao_static,
)
from quantbook.targets import list_targets


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(5))


def symmetric_fake_quant(x: torch.Tensor, dim: int) -> torch.Tensor:
    """int8 symmetric fake quantization with one scale per slice along ``dim`` (amax / 127.5).

    Like torchao, codes are ``round(x * (1 / scale))``: multiplying by the reciprocal can round
    a value that sits on a half step differently from ``x / scale``.
    """
    scale = x.abs().amax(dim=dim, keepdim=True) / 127.5
    scale = scale.clamp(min=torch.finfo(torch.float32).eps)
    return torch.clamp(torch.round(x * (1.0 / scale)), -128, 127) * scale


def test_dynamic_converts_targets_and_stays_close(gpt, ids):
    before = copy.deepcopy(gpt.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q, report = quantize_torchao_dynamic(
            gpt, TorchaoDynamicConfig(targets=("attention", "ffn", "head")))
        with torch.no_grad():
            out, reference = q(ids)[0], gpt(ids)[0]
    assert caught == []
    targets = list_targets(gpt)
    assert sorted(report.converted) == sorted(targets["attention"] + targets["ffn"] + ["lm_head"])
    assert type(q.lm_head.weight).__name__ == "Int8Tensor"
    assert (report.label, report.family) == ("torchao int8 dynamic", "dynamic (torchao)")
    assert not q.training
    assert all(torch.equal(before[k], v) for k, v in gpt.state_dict().items())
    assert (out - reference).abs().max() < 0.05 * reference.abs().max()


def test_dynamic_linear_matches_per_token_per_row_reference():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(48, 16)).eval()
    q, report = quantize_torchao_dynamic(model, TorchaoDynamicConfig(modules=("0",)))
    assert report.converted == ("0",)
    x = torch.randn(2, 5, 48) * torch.linspace(0.1, 4, 5)[None, :, None]  # tokens of varied range
    w_hat = symmetric_fake_quant(model[0].weight.detach(), dim=1)  # one scale per output row
    x_hat = symmetric_fake_quant(x, dim=-1)  # one scale per token
    with torch.no_grad():
        torch.testing.assert_close(q(x), x_hat @ w_hat.T + model[0].bias, rtol=1e-4, atol=1e-4)


def test_static_uses_calibrated_absmax_scale(gpt, ids):
    batches = [torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(s))
               for s in range(2)]
    stats = calibrate_input_absmax(gpt, ["blocks.0.mlp.fc_in"], batches)
    absmax, ndim = stats["blocks.0.mlp.fc_in"]
    assert ndim == 3 and absmax > 0
    q, report = quantize_torchao_static(gpt, TorchaoStaticConfig(), batches)
    weight = q.blocks[0].mlp.fc_in.weight
    assert float(weight.act_quant_scale.flatten()[0]) == pytest.approx(absmax / 127)
    assert weight.act_quant_scale.shape == (1, 1, 1)  # as many dims as the (B, T, C) input
    assert len(report.converted) == 12
    assert (report.label, report.family) == ("torchao int8 static", "static (torchao)")
    with torch.no_grad():
        out, reference = q(ids)[0], gpt(ids)[0]
    assert (out - reference).abs().max() < 0.05 * reference.abs().max()


def test_static_matches_a_per_tensor_activation_reference():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Embedding(50, 48), nn.Linear(48, 16)).eval()
    calibration = [torch.randint(0, 50, (3, 5)), torch.randint(0, 50, (2, 7))]
    q, report = quantize_torchao_static(model, TorchaoStaticConfig(modules=("1",)), calibration)
    assert report.converted == ("1",)
    with torch.no_grad():
        absmax = max(float(model[0](b).abs().max()) for b in calibration)
        x = model[0](torch.randint(0, 50, (2, 5))) * 1.5  # beyond the calibrated range: clamped
        scale = absmax / 127  # one fixed symmetric scale for every activation
        x_hat = torch.clamp(torch.round(x * (1.0 / scale)), -128, 127) * scale
        w_hat = symmetric_fake_quant(model[1].weight.detach(), dim=1)
        torch.testing.assert_close(q[1](x), x_hat @ w_hat.T + model[1].bias, rtol=1e-4,
                                   atol=1e-4)


def test_errors(gpt):
    with pytest.raises(ValueError, match=r"torchao int8 dynamic would convert no module \(ln_f: "
                                         r"a LayerNorm: torchao int8 dynamic converts Linear\)"):
        quantize_torchao_dynamic(gpt, TorchaoDynamicConfig(modules=("ln_f",)))
    mha = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match=r"\(0\.out_proj: inside nn\.MultiheadAttention"):
        quantize_torchao_dynamic(mha, TorchaoDynamicConfig(modules=("0.out_proj",)))
    with pytest.raises(ValueError, match=r"modules \['lm_head'\] never ran during calibration: "
                                         r"their scale would be a guess"):
        calibrate_input_absmax(gpt, ["lm_head"], [])
    with pytest.raises(TypeError, match=r"config is a TorchaoDynamicConfig: expected a "
                                        r"TorchaoStaticConfig"):
        quantize_torchao_static(gpt, TorchaoDynamicConfig(), [])
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'bits'"):
        TorchaoDynamicConfig(bits=8)
    with pytest.raises(ValueError, match=r"batches is empty"):
        quantize_torchao_static(gpt, TorchaoStaticConfig(), [])


def test_package_exports_the_functions_not_the_submodule():
    import importlib

    import quantbook.methods as methods

    importlib.import_module("quantbook.methods.torchao_activation")  # as bench.py does
    from quantbook.methods import quantize_torchao_dynamic as exported_dynamic
    from quantbook.methods import quantize_torchao_static as exported_static

    assert callable(exported_dynamic) and exported_dynamic is quantize_torchao_dynamic
    assert callable(exported_static) and exported_static.__name__ == "quantize_torchao_static"
    assert "torchao_activation" not in methods.__all__
    assert not callable(getattr(methods, "torchao_activation", None))
