"""Tests for quantbook.methods.torchao_weight_only: same settings, same weights as ours."""

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from quantbook.gpt import GPT, GPTConfig
from quantbook.measure import size_bytes
from quantbook.methods.torchao_weight_only import (
    TorchaoWeightOnlyConfig,
    quantize_torchao_weight_only,
    torchao_config,
)
from quantbook.methods.weight_only import WeightOnlyConfig, quantize_weight_only

ALL_GROUPS = ("attention", "ffn", "embeddings", "head")


def tiny_gpt(seed=0, n_embd=32):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=n_embd)
    return GPT(config).eval()


def dequantized(module):
    weight = module.weight
    return weight.dequantize() if hasattr(weight, "dequantize") else weight


@pytest.mark.parametrize("bits, scheme, granularity, group_size", [
    (8, "symmetric", "channel", None),  # Int8WeightOnlyConfig(PerRow())
    (8, "symmetric", "tensor", None),  # Int8WeightOnlyConfig(PerTensor())
    (8, "asymmetric", "channel", None),  # IntxWeightOnlyConfig(int8, ASYMMETRIC)
    (4, "symmetric", "group", 16),  # IntxWeightOnlyConfig(int4, PerGroup(16))
    (3, "asymmetric", "channel", None),
])
def test_torchao_weights_equal_ours(bits, scheme, granularity, group_size):
    model = tiny_gpt()
    before = copy.deepcopy(model.state_dict())
    settings = dict(bits=bits, scheme=scheme, granularity=granularity, group_size=group_size,
                    targets=ALL_GROUPS)
    theirs, their_report = quantize_torchao_weight_only(model, TorchaoWeightOnlyConfig(**settings))
    ours, our_report = quantize_weight_only(model, WeightOnlyConfig(**settings))

    assert their_report.converted == our_report.converted
    assert their_report.label == f"torchao {our_report.label}"
    assert their_report.family == "weight-only (torchao)"
    assert their_report.float_modules == our_report.float_modules
    assert not theirs.training
    for name in our_report.converted:
        torch.testing.assert_close(dequantized(theirs.get_submodule(name)),
                                   ours.get_submodule(name).weight, rtol=0, atol=1e-7)
    ids = torch.randint(0, 40, (2, 16))
    torch.testing.assert_close(theirs(ids)[0], ours(ids)[0], rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy


def test_torchao_stores_one_byte_per_code_and_ours_packs():
    model = tiny_gpt(n_embd=128)  # big enough for the weights to dominate the file
    sizes = {}
    for bits in (8, 4, 2):
        theirs, _ = quantize_torchao_weight_only(model, TorchaoWeightOnlyConfig(bits=bits))
        ours, _ = quantize_weight_only(model, WeightOnlyConfig(bits=bits))
        sizes[bits] = size_bytes(theirs), size_bytes(ours)
        codes = theirs.blocks[0].mlp.fc_in.weight.qdata
        assert codes.dtype == torch.int8 and codes.shape == (512, 128)  # unpacked
    assert sizes[4][0] == pytest.approx(sizes[8][0], rel=0.01)  # int4 = int8 in torchao
    assert sizes[2][0] == pytest.approx(sizes[8][0], rel=0.01)
    # ours at 8 bits: the same codes, minus torchao's int8 zero_point per channel
    assert sizes[8][1] == pytest.approx(sizes[8][0], rel=0.03)
    assert sizes[4][1] < 0.75 * sizes[4][0] and sizes[2][1] < sizes[4][1]  # smaller below


def test_torchao_state_dict_loads_into_a_torchao_model():
    model = tiny_gpt()
    config = TorchaoWeightOnlyConfig(bits=4, granularity="group", group_size=16)
    theirs, _ = quantize_torchao_weight_only(model, config)
    fresh, _ = quantize_torchao_weight_only(tiny_gpt(seed=1), config)
    fresh.load_state_dict(theirs.state_dict())
    ids = torch.randint(0, 40, (1, 16))
    assert torch.equal(fresh(ids)[0], theirs(ids)[0])


def test_torchao_config_types():
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig

    ao = torchao_config(TorchaoWeightOnlyConfig(bits=8))
    assert isinstance(ao, Int8WeightOnlyConfig) and not ao.set_inductor_config
    ao = torchao_config(TorchaoWeightOnlyConfig(bits=4, granularity="group", group_size=32))
    assert isinstance(ao, IntxWeightOnlyConfig) and ao.weight_dtype == torch.int4
    assert ao.granularity.group_size == 32
    assert TorchaoWeightOnlyConfig().bits == 8  # torchao's default is int8, ours int4
    assert TorchaoWeightOnlyConfig(bits=4, granularity="group", group_size=32).label == (
        "torchao weight-only int4 group32")


def test_settings_torchao_cannot_express_raise():
    with pytest.raises(ValueError, match=r"granularity='tensor' with bits=4, scheme='symmetric' "
                                         r"is not supported by torchao's IntxWeightOnlyConfig: use "
                                         r"granularity='channel' or 'group'"):
        TorchaoWeightOnlyConfig(bits=4, granularity="tensor")
    with pytest.raises(ValueError, match=r"range_method='mse' has no torchao weight-only "
                                         r"equivalent: use range_method='minmax'"):
        TorchaoWeightOnlyConfig(range_method="mse")
    with pytest.raises(ValueError, match=r"bits=9 is not supported: choose 2\.\.8"):
        TorchaoWeightOnlyConfig(bits=9)
    with pytest.raises(ValueError, match=r"group_size=24 does not divide the row length of module "
                                         r"'blocks\.0\.attn\.q_proj' \(32\)"):
        quantize_torchao_weight_only(tiny_gpt(), TorchaoWeightOnlyConfig(
            bits=4, granularity="group", group_size=24))
    with pytest.raises(TypeError, match=r"config is a WeightOnlyConfig: expected a "
                                        r"TorchaoWeightOnlyConfig"):
        quantize_torchao_weight_only(tiny_gpt(), WeightOnlyConfig(bits=8))


@pytest.mark.parametrize("config", [WeightOnlyConfig(range_method="mse"),
                                    WeightOnlyConfig(bits=4, granularity="tensor")])
def test_torchao_config_refuses_what_torchao_cannot_express(config):
    with pytest.raises((ValueError, TypeError), match=r"torchao"):
        torchao_config(config)


def test_torchao_on_a_model_without_the_group_raises():
    with pytest.raises(TypeError, match="model is a Sequential"):
        quantize_torchao_weight_only(nn.Sequential(nn.Linear(4, 4)))
    _, report = quantize_torchao_weight_only(nn.Sequential(nn.Linear(4, 4)),
                                             TorchaoWeightOnlyConfig(modules=("0",)))
    assert report.converted == ("0",)


def test_import_is_torchao_free_and_first_call_writes_nothing_to_stderr():
    # a fresh interpreter, so that torchao's import-time log lines would show
    script = textwrap.dedent(
        """
        import sys
        from quantbook.gpt import GPT, GPTConfig
        from quantbook.methods import TorchaoWeightOnlyConfig, quantize_torchao_weight_only
        assert "torchao" not in sys.modules, "import quantbook.methods imported torchao"
        model = GPT(GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=8))
        quantize_torchao_weight_only(model, TorchaoWeightOnlyConfig(bits=4))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
