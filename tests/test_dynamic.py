"""Tests for quantbook.methods.dynamic against torch's kernels, observers and choose_qparams."""

import copy
import warnings

import pytest
import torch
from conftest import FakeCudaModel
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from quantbook.gpt import GPT, GPTConfig
from quantbook.measure import size_bytes
from quantbook.methods.dynamic import (
    DynamicConfig,
    dynamic_activation_qparams,
    quantize_dynamic,
)
from quantbook.quiet import silence_known_noise
from quantbook.targets import list_targets

with warnings.catch_warnings():
    silence_known_noise()
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.quantization import default_dynamic_qconfig
    from torch.ao.quantization import quantize_dynamic as torch_quantize_dynamic


def tiny_gpt(vocab_size=64, n_embd=32) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=n_embd)
    return GPT(config).eval()


@pytest.fixture(scope="module")
def gpt():
    return tiny_gpt()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))


class MHAModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x)[0]


def quiet_call(fn, *args, **kwargs):
    """Call fn and return (result, warnings raised during the call)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, caught


def test_converts_exactly_the_targeted_linears(gpt, ids):
    (q, report), caught = quiet_call(quantize_dynamic, gpt, DynamicConfig())
    expected = list_targets(gpt)["attention"] + list_targets(gpt)["ffn"]
    assert caught == []
    assert report.converted == tuple(expected)
    assert report.skipped == ()
    assert (report.label, report.family) == ("dynamic int8 per-tensor", "dynamic (eager)")
    assert not q.training
    converted = {n for n, m in q.named_modules() if isinstance(m, nnqd.Linear)}
    assert converted == set(expected)
    assert type(q.lm_head) is nn.Linear  # "head" not targeted by default
    assert {"lm_head", "tok_emb", "blocks.0.ln_1"} <= set(report.float_modules)
    assert q(ids)[0].shape == gpt(ids)[0].shape


def test_input_model_untouched(gpt, ids):
    before = copy.deepcopy(gpt.state_dict())
    logits = gpt(ids)[0]
    quantize_dynamic(gpt, DynamicConfig(embeddings_bits=4, granularity="channel"))
    assert all(torch.equal(before[k], v) for k, v in gpt.state_dict().items())
    assert type(gpt.blocks[0].attn.q_proj) is nn.Linear and type(gpt.tok_emb) is nn.Embedding
    assert torch.equal(gpt(ids)[0], logits)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_weights_match_symmetric_int8_reference(gpt, granularity):
    q, _ = quantize_dynamic(gpt, DynamicConfig(granularity=granularity))
    w = gpt.blocks[0].mlp.fc_in.weight.detach()  # (out, in)
    qw = q.blocks[0].mlp.fc_in.weight()
    if granularity == "tensor":
        assert qw.qscheme() == torch.per_tensor_affine
        scale = w.abs().max() / 127.5  # MinMaxObserver, qint8 symmetric: amax / ((127+128)/2)
        reference = torch.fake_quantize_per_tensor_affine(w, float(scale), 0, -128, 127)
    else:
        assert qw.qscheme() == torch.per_channel_affine
        assert qw.q_per_channel_scales().shape == (w.shape[0],)
        scale = w.abs().amax(dim=1) / 127.5  # (out,)
        zero = torch.zeros(w.shape[0], dtype=torch.int32)
        reference = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)
    torch.testing.assert_close(qw.dequantize(), reference, rtol=0, atol=1e-6)


def test_dynamic_linear_output_matches_fake_quant_reference():
    lin = nn.Sequential(nn.Linear(24, 8)).eval()
    q, _ = quantize_dynamic(lin, DynamicConfig(modules=("0",)))
    w = q[0].weight().dequantize()
    for shift in (0.0, 3.0, -5.0):  # batches of different range get different activation qparams
        x = torch.randn(5, 24, generator=torch.Generator().manual_seed(2)) * 2 + shift
        scale, zero_point = dynamic_activation_qparams(x, reduce_range=True)
        x_hat = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 127)
        torch.testing.assert_close(q(x), x_hat @ w.T + q[0].bias(), rtol=0, atol=1e-5)


def test_activation_qparams_worked_example():
    scale, zero_point = dynamic_activation_qparams(torch.tensor([-1.0, 3.0]))
    assert scale == pytest.approx(4 / 127) and zero_point == 32
    assert dynamic_activation_qparams(torch.zeros(3)) == (0.1, 0)


@settings(max_examples=200, deadline=None)
@given(
    low=st.floats(-1e4, 1e4, allow_nan=False, width=32),
    width=st.floats(0, 1e4, allow_nan=False, width=32),
    tiny=st.booleans(),
    reduce_range=st.booleans(),
)
def test_activation_qparams_match_torch(low, width, tiny, reduce_range):
    x = torch.tensor([low, low + width, low + width / 3], dtype=torch.float32)
    if tiny:
        x = x * 1e-9  # exercises ATen's small-scale adjustment
    expected = torch._choose_qparams_per_tensor(x, reduce_range=reduce_range)
    assert dynamic_activation_qparams(x, reduce_range) == expected


@pytest.mark.parametrize("engine", [e for e in ("qnnpack", "onednn")
                                    if e in torch.backends.quantized.supported_engines])
def test_float16_is_refused_where_the_engine_lacks_it(gpt, engine):
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with pytest.raises(ValueError, match=rf"dtype='float16' needs the x86 or fbgemm engine, "
                                             rf"and the engine in use is '{engine}'"):
            quantize_dynamic(gpt, DynamicConfig(dtype="float16"))
    finally:
        torch.backends.quantized.engine = before


def test_float16_variant(gpt, ids):
    (q, report), caught = quiet_call(quantize_dynamic, gpt, DynamicConfig(dtype="float16"))
    assert caught == [] and report.label == "dynamic float16"
    layer = q.blocks[1].attn.v_proj
    assert type(layer) is nnqd.Linear and layer._packed_params.dtype == torch.float16
    x = torch.randn(3, 32)
    reference = x @ gpt.blocks[1].attn.v_proj.weight.half().float().T + layer.bias()
    torch.testing.assert_close(layer(x), reference, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("bits", "dtype"), [(8, torch.quint8), (4, torch.quint4x2)])
def test_embeddings_converted_and_shrink(bits, dtype):
    model = tiny_gpt(vocab_size=512, n_embd=64)
    (q, report), caught = quiet_call(quantize_dynamic, model,
                                     DynamicConfig(embeddings_bits=bits))
    assert caught == []
    assert {"tok_emb", "pos_emb"} <= set(report.converted)
    assert report.label == f"dynamic int8 per-tensor, embeddings {bits}-bit"
    emb = q.tok_emb
    assert type(emb) is nnq.Embedding and emb.dtype == dtype
    assert emb.weight().qscheme() == torch.per_channel_affine_float_qparams
    idx = torch.tensor([[0, 5, 511], [7, 7, 1]])
    out = emb(idx)
    assert out.shape == (2, 3, 64)  # torch 2.13 alone would return 28 of 64 values for 4 bits
    # the lookup returns rows of the dequantized table (4-bit rows keep fp16 scale and offset)
    torch.testing.assert_close(out, emb.weight().dequantize()[idx], rtol=0, atol=2e-3)
    step = (model.tok_emb.weight.amax(1) - model.tok_emb.weight.amin(1)) / (2**bits - 1)
    assert (out - model.tok_emb(idx)).abs().max() <= step.max() / 2 + 2e-3
    float_size, q_size = size_bytes(model.tok_emb), size_bytes(emb)
    assert q_size < float_size * (0.3 if bits == 8 else 0.18)


def test_four_bit_embedding_is_half_the_eight_bit_table():
    model = tiny_gpt(vocab_size=512, n_embd=64)
    size = {b: size_bytes(quantize_dynamic(model, DynamicConfig(embeddings_bits=b))[0]
                          .tok_emb) for b in (8, 4)}
    data = 512 * 64  # bytes of 8-bit codes
    assert size[8] - size[4] == pytest.approx(data / 2, rel=0.05)


def test_refuses_a_model_off_the_cpu():
    # torch 2.13's x86 kernels would fail deep inside with "Could not run
    # 'quantized::linear_dynamic' ... 'CUDA' backend"; a buffer claiming CUDA stands in for a GPU
    with pytest.raises(ValueError, match=r"dynamic int8 per-tensor: the model has tensors on "
                                         r"cuda, but this method runs on cpu only: quantize "
                                         r"model\.cpu\(\); on a GPU use a torchao method"):
        quantize_dynamic(FakeCudaModel(), DynamicConfig(modules=("fc",)))
    with pytest.raises(ValueError, match=r"tensors on the meta device \(shapes without data\)"):
        quantize_dynamic(tiny_gpt().to("meta"), DynamicConfig())


def test_multihead_attention_is_not_silently_left_float():
    model = MHAModel().eval()
    with warnings.catch_warnings():
        silence_known_noise()
        plain = torch_quantize_dynamic(model, {nn.Linear: default_dynamic_qconfig})
    # PyTorch's own API: out_proj is a NonDynamicallyQuantizableLinear and silently stays float
    assert type(plain.mha.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    with pytest.raises(ValueError, match=r"dynamic int8 per-tensor would convert no module "
                                         r"\(mha\.out_proj: inside nn\.MultiheadAttention, "
                                         r"whose forward reads out_proj\.weight directly"):
        quantize_dynamic(model, DynamicConfig(modules=("mha.out_proj",)))


def test_exclude_keeps_modules_float(gpt):
    q, report = quantize_dynamic(gpt, DynamicConfig(
        modules=("blocks.0.mlp.fc_in", "blocks.0.mlp.fc_out", "blocks.0.ln_1", "tok_emb"),
        exclude=("blocks.0.mlp.fc_out",)))
    assert report.converted == ("blocks.0.mlp.fc_in",)
    assert report.skipped == (
        ("blocks.0.mlp.fc_out", "excluded: kept in float on request"),
        ("blocks.0.ln_1", "a LayerNorm: dynamic int8 per-tensor converts Linear"),
        ("tok_emb", "a Embedding: dynamic int8 per-tensor converts Linear; set "
                    "embeddings_bits=8 or 4 to quantize embedding tables"))
    assert type(q.blocks[0].mlp.fc_out) is nn.Linear


def test_an_embedding_without_embeddings_bits_names_the_setting(gpt):
    with pytest.raises(ValueError, match=r"tok_emb: .*set embeddings_bits=8 or 4"):
        quantize_dynamic(gpt, DynamicConfig(modules=("tok_emb",)))


def test_nothing_converted_raises(gpt):
    with pytest.raises(ValueError, match=r"dynamic int8 per-tensor would convert no module "
                                         r"\(blocks\.0\.ln_1: a LayerNorm: dynamic int8 "
                                         r"per-tensor converts Linear\)"):
        quantize_dynamic(gpt, DynamicConfig(modules=("blocks.0.ln_1",)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"granularity": "group"}, r"granularity='group' is not supported"),
        ({"dtype": "int4"}, r"dtype='int4' is not supported"),
        ({"dtype": "float16", "granularity": "channel"}, r"needs dtype='int8'"),
        ({"embeddings_bits": 2}, r"embeddings_bits=2 is not supported: choose None, 8 or 4"),
        ({"embeddings_bits": True}, r"embeddings_bits=True is not supported"),
        ({"targets": ("ffn", "embeddings")}, r"set embeddings_bits=8 or 4"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicConfig(**kwargs)


def test_name_errors(gpt):
    with pytest.raises(ValueError, match=r"modules names \['blocks\.9\.mlp'\].*named_modules"):
        quantize_dynamic(gpt, DynamicConfig(modules=("blocks.9.mlp",)))
    with pytest.raises(ValueError, match=r"exclude names \['lm_haed'\]"):
        quantize_dynamic(gpt, DynamicConfig(exclude=("lm_haed",)))
    with pytest.raises(TypeError, match=r"config is a dict: expected a DynamicConfig"):
        quantize_dynamic(gpt, {"granularity": "tensor"})
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'modules'"):
        quantize_dynamic(gpt, DynamicConfig(), modules=["blocks.0.mlp.fc_in"])  # the old call


def test_targets_string_becomes_tuple_and_labels():
    assert DynamicConfig(targets="ffn").targets == ("ffn",)
    assert DynamicConfig(granularity="channel").label == "dynamic int8 per-channel"
    assert DynamicConfig(dtype="float16").label == "dynamic float16"
    assert DynamicConfig(embeddings_bits=4).label == "dynamic int8 per-tensor, embeddings 4-bit"
    assert DynamicConfig().kinds == (nn.Linear,)
    assert DynamicConfig(embeddings_bits=8).kinds == (nn.Linear, nn.Embedding)
