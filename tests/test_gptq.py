"""GPTQ against RTN, against itself at other block sizes, and against torchao's loop."""

import inspect
import textwrap

import pytest
import torch
from conftest import make_gpt

from quantbook import affine, measure
from quantbook.methods.gptq import (
    GPTQConfig,
    collect_hessians,
    gptq_quantize_weight,
    quantize_gptq,
    stages,
)
from quantbook.methods.packed import PackedLinear
from quantbook.methods.weight_only import WeightOnlyConfig, quantize_weight_only

TARGETS = ("attention", "ffn", "head")


def spec(bits=3, scheme="symmetric", group_size=32):
    return affine.QuantSpec(bits=bits, scheme=scheme, granularity="group", group_size=group_size)


def correlated_inputs(seed=1, n=512, cols=64):
    torch.manual_seed(seed)
    return torch.randn(n, cols) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols))


def output_error(X, W, codes, qparams):
    return float((X @ (W - affine.dequantize(codes, qparams)).T).pow(2).mean())


@pytest.fixture(scope="module")
def tiny():
    model = make_gpt()
    torch.manual_seed(0)
    return model, [torch.randint(0, 64, (4, 16)) for _ in range(4)]


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("seed", range(5))
def test_identity_hessian_without_damping_is_rtn(scheme, seed):
    torch.manual_seed(seed)
    W = torch.randn(16, 64) * torch.rand(1, 64) * 3
    codes, qparams, _ = gptq_quantize_weight(W, torch.eye(64), spec(3, scheme), damp=0.0)
    rtn_codes, rtn_qparams = affine.quantize_tensor(W, spec(3, scheme))
    assert torch.equal(codes, rtn_codes)
    assert torch.equal(qparams.scale, rtn_qparams.scale)


@pytest.mark.parametrize("seed", range(4))
def test_gptq_beats_rtn_on_correlated_inputs_and_codes_stay_on_the_grid(seed):
    X = correlated_inputs(seed)
    W = torch.randn(16, 64)
    H = 2 * X.T @ X / X.shape[0]
    codes, qparams, _ = gptq_quantize_weight(W, H, spec())
    assert int(codes.min()) >= -4 and int(codes.max()) <= 3  # int3 symmetric grid
    rtn = output_error(X, W, *affine.quantize_tensor(W, spec()))
    assert output_error(X, W, codes, qparams) < 0.8 * rtn
    ordered = gptq_quantize_weight(W, H, spec(), act_order=True)
    assert output_error(X, W, ordered[0], ordered[1]) < rtn


def test_lazy_batch_updates_do_not_change_the_codes():
    X = correlated_inputs()
    W = torch.randn(16, 64)
    H = 2 * X.T @ X / X.shape[0]
    full = gptq_quantize_weight(W, H, spec(), block_size=64)[0]
    for block_size in (32, 8, 1):
        assert torch.equal(gptq_quantize_weight(W, H, spec(), block_size=block_size)[0], full)


def test_per_channel_groups_spanning_blocks():
    X = correlated_inputs(cols=96)
    W = torch.randn(8, 96)
    H = 2 * X.T @ X / X.shape[0]
    channel = affine.QuantSpec(bits=4, scheme="symmetric", granularity="channel", axis=0)
    codes, qparams, _ = gptq_quantize_weight(W, H, channel, block_size=64)
    assert qparams.scale.shape == (8,)
    assert output_error(X, W, codes, qparams) < output_error(
        X, W, *affine.quantize_tensor(W, channel))


def test_matches_torchao_gptq_loop_with_its_cuda_check_removed():
    """torchao.prototype.gptq asserts CUDA; its loop itself runs on the CPU unchanged."""
    api = pytest.importorskip("torchao.prototype.gptq.api")
    from torchao.prototype.gptq import GPTQConfig as TorchaoGPTQConfig
    from torchao.quantization import Int8WeightOnlyConfig, PerRow

    source = textwrap.dedent(inspect.getsource(api.gptq_quantize))
    cuda_check = 'assert device.type == "cuda", "GPTQ only supports CUDA currently"'
    assert cuda_check in source  # the one line that stops it on the CPU
    namespace = dict(vars(api))
    exec(source.replace(cuda_check, "pass").replace("torch.cuda.synchronize()", "pass"),
         namespace)
    X = correlated_inputs(cols=128)
    W = torch.randn(32, 128) * 0.1
    H = 2 * X.T @ X / X.shape[0]
    base = Int8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False)
    config = TorchaoGPTQConfig(step="convert", base_config=base, gptq_quantize_block_size=128)
    theirs = namespace["gptq_quantize"](H.clone(), W.clone(), config)
    channel = affine.QuantSpec(bits=8, scheme="symmetric", granularity="channel", axis=0)
    codes, qparams, _ = gptq_quantize_weight(W, H, channel, damp=0.01, block_size=128)
    assert torch.equal(theirs.qdata.int(), codes)
    assert torch.allclose(theirs.scale.float().flatten(), qparams.scale, rtol=1e-6)
    assert not torch.equal(codes, affine.quantize_tensor(W, channel)[0])  # not plain RTN


def test_from_codes_round_trips_rtn():
    linear = torch.nn.Linear(64, 8)
    codes, qparams = affine.quantize_tensor(linear.weight.detach(), spec(3, "asymmetric"))
    packed = PackedLinear.from_codes(linear, codes, qparams)
    reference = PackedLinear.from_linear(linear, spec(3, "asymmetric"))
    assert torch.equal(packed.packed, reference.packed)
    assert torch.equal(packed.zero_point, reference.zero_point)
    assert torch.equal(packed.weight, affine.dequantize(codes, qparams))


def test_quantize_gptq_packs_the_bytes_of_rtn(tiny):
    model, batches = tiny
    config = GPTQConfig(bits=3, group_size=16, targets=TARGETS)
    quantized, report = quantize_gptq(model, config, batches)
    rtn, _ = quantize_weight_only(model, WeightOnlyConfig(
        bits=3, granularity="group", group_size=16, targets=TARGETS))
    assert report.label == "GPTQ int3 group16" and len(report.converted) == 13
    assert all(isinstance(quantized.get_submodule(n), PackedLinear) for n in report.converted)
    assert measure.size_bytes(quantized) == measure.size_bytes(rtn)
    assert not quantized.training and model.blocks[0].attn.q_proj.weight.dtype == torch.float32
    x = batches[0]
    with torch.no_grad():
        assert quantized(x)[0].shape == model(x)[0].shape


def test_sequential_and_one_pass_use_the_right_inputs(tiny):
    model, batches = tiny
    names = ["blocks.1.mlp.fc_in"]
    H = collect_hessians(model, names, batches)[names[0]]
    assert H.shape == (32, 32) and torch.allclose(H, H.T)
    one_pass, _ = quantize_gptq(model, GPTQConfig(bits=4, group_size=16, sequential=False,
                                                  modules=tuple(names)), batches)
    assert isinstance(one_pass.get_submodule(names[0]), PackedLinear)


def test_hessians_skip_padded_positions():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    batch = torch.ones(1, 3, 4)
    batch[0, 2] = 100.0  # a padded position with a huge activation
    from quantbook.methods.gptq import InputHooks

    seen = []
    hooks = InputHooks(model, ["0"], lambda name, x: seen.append(x))
    hooks.mask = torch.tensor([[1, 1, 0]])
    with torch.no_grad():
        model(batch)
    assert seen[0].shape == (2, 4) and float(seen[0].max()) == 1.0


def test_stages_group_by_block():
    names = ["blocks.0.attn.q_proj", "blocks.0.mlp.fc_in", "blocks.1.attn.q_proj", "lm_head",
             "encoder.layer.3.output.dense"]
    assert stages(names) == [names[:2], [names[2]], [names[3]], [names[4]]]


def test_no_calibration_batches(tiny):
    with pytest.raises(ValueError, match="batches is empty"):
        quantize_gptq(tiny[0], GPTQConfig(targets=TARGETS), [])


def test_singular_hessian_without_damping():
    H = torch.zeros(64, 64)
    H[:32, :32] = 1.0  # rank one on the first half: not positive definite
    with pytest.raises(ValueError, match="singular or not positive definite .*damp > 0"):
        gptq_quantize_weight(torch.randn(8, 64), H, spec(), damp=0.0)
    gptq_quantize_weight(torch.randn(8, 64), H, spec(), damp=0.01)  # damping fixes it


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_outside_2_to_8(bits):
    with pytest.raises(ValueError, match=f"bits={bits} is not supported: choose 2..8"):
        GPTQConfig(bits=bits)


def test_group_size_must_divide_the_rows(tiny):
    with pytest.raises(ValueError, match="group_size=24 does not divide"):
        quantize_gptq(tiny[0], GPTQConfig(group_size=24, targets=TARGETS), tiny[1])
    with pytest.raises(ValueError, match="group_size=24 does not divide"):
        gptq_quantize_weight(torch.randn(4, 64), torch.eye(64), spec(group_size=24))


def test_nan_weights_and_hessians(tiny):
    model = make_gpt()
    with torch.no_grad():
        model.blocks[0].mlp.fc_in.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_gptq(model, GPTQConfig(targets=TARGETS), tiny[1])
    H = torch.eye(64)
    H[0, 0] = float("nan")
    with pytest.raises(ValueError, match="H holds NaN"):
        gptq_quantize_weight(torch.randn(4, 64), H, spec())


def test_bad_settings():
    with pytest.raises(ValueError, match="damp=-0.1 is not supported"):
        GPTQConfig(damp=-0.1)
    with pytest.raises(ValueError, match="block_size=0 is not supported"):
        GPTQConfig(block_size=0)
    with pytest.raises(ValueError, match=r"H has shape \(3, 3\)"):
        gptq_quantize_weight(torch.randn(4, 64), torch.eye(3), spec())
    with pytest.raises(TypeError, match="expected a GPTQConfig"):
        quantize_gptq(make_gpt(), WeightOnlyConfig(), [])


def test_torchao_gptq_int4_path_needs_mslk():
    """What the chapter says about torchao's 4-bit GPTQ on this CPU."""
    gptq_api = pytest.importorskip("torchao.prototype.gptq")
    from torchao.quantization import Int4WeightOnlyConfig

    with pytest.raises((ImportError, ValueError), match="mslk"):
        gptq_api.GPTQConfig(step="observe", base_config=Int4WeightOnlyConfig(group_size=32))
