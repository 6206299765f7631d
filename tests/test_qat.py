"""QAT: the fake-quantized forward against torchao's, the straight-through gradient, packing."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_gpt
from torch import nn

from quantbook import affine
from quantbook.methods.packed import PackedLinear
from quantbook.methods.qat import (
    FakeQuantLinear,
    QATConfig,
    convert_qat,
    load_qat,
    prepare_qat,
    save_qat,
    train_qat,
)

TARGETS = ("attention", "ffn", "head")


def spec(bits=2, group_size=32):
    return affine.QuantSpec(bits=bits, scheme="symmetric", granularity="group",
                            group_size=group_size)


def small_config(**overrides):
    settings = dict(bits=2, group_size=16, steps=4, warmup=1, batch_size=2, targets=TARGETS)
    return QATConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(0)
    return torch.randint(0, 64, (600,))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_forward_matches_torchao_fake_quantizer(bits):
    qat = pytest.importorskip("torchao.quantization.qat")
    from torchao.quantization import quantize_

    torch.manual_seed(bits)
    linear = nn.Linear(64, 16)
    theirs = nn.Sequential(copy.deepcopy(linear))
    dtype = {2: torch.int2, 3: torch.int3, 4: torch.int4}[bits]
    weight_config = qat.IntxFakeQuantizeConfig(dtype, group_size=32, is_symmetric=True)
    quantize_(theirs, qat.QATConfig(weight_config=weight_config, step="prepare"))
    ours = FakeQuantLinear.from_linear(linear, spec(bits))
    x = torch.randn(8, 64)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_straight_through_gradient_is_the_float_linears():
    torch.manual_seed(0)
    linear = nn.Linear(64, 8)
    fake = FakeQuantLinear.from_linear(linear, spec())
    x = torch.randn(5, 64)
    fake(x).pow(2).sum().backward()
    expected = F.linear(x, affine.fake_quantize(linear.weight.detach(), affine.choose_qparams(
        linear.weight.detach(), spec())), linear.bias)
    assert torch.allclose(fake(x), expected)
    # d/dW of sum(y^2) with y = x W_q^T + b is 2 y^T x, as if W_q were W
    assert torch.allclose(fake.weight.grad, 2 * expected.detach().T @ x, atol=1e-4)


def test_prepare_train_convert(ids):
    model = make_gpt()
    config = small_config()
    prepared, report = prepare_qat(model, config)
    assert prepared.training and len(report.converted) == 13
    assert isinstance(prepared.blocks[0].attn.q_proj, FakeQuantLinear)
    before = copy.deepcopy(prepared.lm_head.weight.detach())
    history = train_qat(prepared, ids, config, evaluate=lambda m: 1.0, eval_every=2)
    assert len(history.train_loss) == 4 and history.eval_step == [2, 4]
    assert not torch.equal(before, prepared.lm_head.weight.detach())
    packed, converted = convert_qat(prepared, config)
    assert converted.label == "QAT int2 group16" and converted.family == "QAT (quantbook)"
    assert isinstance(packed.lm_head, PackedLinear)
    x = ids[:16][None]
    prepared.eval()
    with torch.no_grad():  # packing reproduces the training-time forward pass
        assert torch.allclose(packed(x)[0], prepared(x)[0], atol=1e-5)
    assert not model.training and model.lm_head.weight.equal(make_gpt().lm_head.weight)


def test_training_lowers_the_loss(ids):
    model = make_gpt()
    config = small_config(steps=30, lr=3e-3, min_lr=3e-4, warmup=3, batch_size=8)
    prepared, _ = prepare_qat(model, config)
    history = train_qat(prepared, ids, config)
    first, last = history.train_loss[:5], history.train_loss[-5:]
    assert sum(last) / 5 < sum(first) / 5


def test_save_and_load_round_trip(tmp_path, ids):
    model = make_gpt()
    config = small_config(steps=1)
    prepared, _ = prepare_qat(model, config)
    train_qat(prepared, ids, config)
    packed, _ = convert_qat(prepared, config)
    path = save_qat(packed, config, tmp_path / "qat.safetensors", {"ppl": 1.5})
    loaded, loaded_config, metrics = load_qat(model, path)
    assert loaded_config == config and metrics == {"ppl": 1.5}
    x = ids[:16][None]
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], packed(x)[0])
    with pytest.raises(FileNotFoundError, match="make qat"):
        load_qat(model, tmp_path / "missing.safetensors")


def test_model_not_in_train_mode(ids):
    config = small_config()
    prepared, _ = prepare_qat(make_gpt(), config)
    prepared.eval()
    with pytest.raises(ValueError, match=r"eval mode: .*call prepared.train\(\)"):
        train_qat(prepared, ids, config)


def test_model_not_prepared(ids):
    with pytest.raises(ValueError, match="no FakeQuantLinear: call prepare_qat"):
        train_qat(make_gpt().train(), ids, small_config())
    with pytest.raises(ValueError, match="no FakeQuantLinear"):
        convert_qat(make_gpt(), small_config())


def test_diverging_training(ids):
    config = small_config(steps=2)
    prepared, _ = prepare_qat(make_gpt(), config)
    with torch.no_grad():
        prepared.ln_f.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="training diverged; lower lr"):
        train_qat(prepared, ids, config)


def test_too_little_text():
    config = small_config()
    prepared, _ = prepare_qat(make_gpt(), config)
    with pytest.raises(ValueError, match="more than block_size"):
        train_qat(prepared, torch.arange(10), config)


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_outside_2_to_8(bits):
    with pytest.raises(ValueError, match=f"bits={bits} is not supported: choose 2..8"):
        QATConfig(bits=bits)


def test_group_size_and_schedule_errors():
    with pytest.raises(ValueError, match="group_size=24 does not divide"):
        prepare_qat(make_gpt(), small_config(group_size=24))
    with pytest.raises(ValueError, match="warmup=9 is out of range"):
        QATConfig(steps=5, warmup=9)
    with pytest.raises(ValueError, match="0 < min_lr <= lr"):
        QATConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(TypeError, match="expected a QATConfig"):
        prepare_qat(make_gpt(), object())
    model = make_gpt()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        prepare_qat(model, small_config())
