"""Tests for quantbook.methods.packed against affine.fake_quantize and PyTorch's kernels."""

import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from quantbook import affine
from quantbook.measure import size_bytes
from quantbook.methods.packed import PackedEmbedding, PackedLinear
from quantbook.methods.weight_only import WeightOnlyConfig

SCHEMES = ("symmetric", "asymmetric")


def spec_of(bits, scheme="symmetric", granularity="channel", group_size=None):
    return affine.QuantSpec(bits=bits, scheme=scheme, granularity=granularity, axis=0,
                            group_size=group_size)


def linear(in_features, out_features, seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def reference_weight(weight, spec):
    """The fake-quantized weight through quantbook.affine (unpacked, int32 codes)."""
    weight = weight.detach()
    return affine.fake_quantize(weight, affine.choose_qparams(weight, spec))


# ------------------------------------------------------------------ PackedLinear


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("granularity, group_size", [("tensor", None), ("channel", None),
                                                     ("group", 16)])
def test_packed_linear_matches_fake_quantized_linear(bits, scheme, granularity, group_size):
    layer = linear(48, 24, seed=bits)
    spec = spec_of(bits, scheme, granularity, group_size)
    packed = PackedLinear.from_linear(layer, spec)
    x = torch.randn(5, 48)
    expected = F.linear(x, reference_weight(layer.weight, spec), layer.bias)
    assert torch.equal(packed.weight, reference_weight(layer.weight, spec))
    torch.testing.assert_close(packed(x), expected, rtol=0, atol=1e-6)
    assert packed.packed.numel() == -(-48 * 24 * bits // 8)  # ceil: bits per weight, no more


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_packed_weight_matches_pytorch_observer_and_fake_quantize(bits, scheme):
    from torch.ao.quantization import PerChannelMinMaxObserver

    layer = linear(64, 32, seed=10 + bits)
    qmin, qmax = affine.qrange(bits, scheme)
    dtype, qscheme = ((torch.qint8, torch.per_channel_symmetric) if scheme == "symmetric"
                      else (torch.quint8, torch.per_channel_affine))
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=dtype, qscheme=qscheme,
                                        quant_min=qmin, quant_max=qmax)
    observer(layer.weight.detach())
    scale, zero_point = observer.calculate_qparams()
    expected = torch.fake_quantize_per_channel_affine(
        layer.weight.detach(), scale, zero_point.int(), 0, qmin, qmax)
    packed = PackedLinear.from_linear(layer, spec_of(bits, scheme))
    assert torch.equal(packed.weight, expected)


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(2, 8), scheme=st.sampled_from(SCHEMES), rows=st.integers(1, 9),
       groups=st.integers(1, 4), group_size=st.sampled_from([1, 3, 8]),
       granularity=st.sampled_from(["tensor", "channel", "group"]), seed=st.integers(0, 99))
def test_packed_linear_any_shape(bits, scheme, rows, groups, group_size, granularity, seed):
    cols = groups * group_size  # odd sizes: the bitstream need not end on a byte boundary
    layer = linear(cols, rows, seed=seed, bias=False)
    spec = spec_of(bits, scheme, granularity, group_size if granularity == "group" else None)
    packed = PackedLinear.from_linear(layer, spec)
    assert torch.equal(packed.weight, reference_weight(layer.weight, spec))
    assert packed.bias is None


@pytest.mark.parametrize("scheme", SCHEMES)
def test_state_dict_holds_exactly_the_packed_bytes_and_round_trips(scheme):
    layer = linear(64, 16)
    spec = spec_of(3, scheme, "group", 16)
    packed = PackedLinear.from_linear(layer, spec)
    state = packed.state_dict()
    expected = {"packed": (torch.uint8, (64 * 16 * 3 // 8,)), "scale": (torch.float32, (16, 4)),
                "bias": (torch.float32, (16,))}
    if scheme == "asymmetric":
        expected["zero_point"] = (torch.uint8, (16, 4))
    assert {k: (v.dtype, tuple(v.shape)) for k, v in state.items()} == expected

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = PackedLinear(64, 16, spec, bias=True)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(3, 64)
    assert torch.equal(fresh(x), packed(x))


def test_cache_weight_is_opt_in_not_saved_and_reset_by_load():
    layer = linear(32, 8)
    spec = spec_of(4)
    cached = PackedLinear.from_linear(layer, spec, cache_weight=True)
    plain = PackedLinear.from_linear(layer, spec)
    x = torch.randn(2, 32)
    assert torch.equal(cached(x), plain(x))
    assert cached._cached_weight is not None and plain._cached_weight is None
    assert set(cached.state_dict()) == {"packed", "scale", "bias"}
    other = PackedLinear.from_linear(linear(32, 8, seed=1), spec)
    cached.load_state_dict(other.state_dict())
    assert torch.equal(cached(x), other(x))  # not the stale cache


def test_constructor_checks_the_spec_against_the_shape():
    with pytest.raises(ValueError, match=r"group_size=16 does not divide the inputs of each row "
                                         r"\(30\): choose a divisor of 30, e\.g\. "
                                         r"\[5, 6, 10, 15\]"):
        PackedLinear(30, 8, spec_of(4, "symmetric", "group", 16))
    spec = affine.QuantSpec(bits=4, scheme="symmetric", granularity="channel", axis=1)
    with pytest.raises(ValueError, match="axis=1 is not supported: packed weights use axis=0"):
        PackedLinear(32, 8, spec)


def test_extra_repr_shows_the_settings():
    packed = PackedLinear.from_linear(linear(32, 8), spec_of(4, "asymmetric", "group", 16))
    assert repr(packed) == (
        "PackedLinear(in_features=32, out_features=8, bias=True, bits=4, scheme=asymmetric, "
        "granularity=group, group_size=16)"
    )


@pytest.mark.parametrize("bits", range(2, 9))
def test_size_reflects_bits(bits):
    layer = linear(384, 1536)
    weight_bytes = 384 * 1536 * 4
    packed = PackedLinear.from_linear(layer, spec_of(bits))
    side_bytes = 1536 * 4 + 1536 * 4  # float32 scale per channel + float32 bias
    overhead = size_bytes(packed) - (384 * 1536 * bits // 8 + side_bytes)
    assert 0 < overhead < 4000  # zip records, names and pickle metadata of three tensors
    ratio = (size_bytes(packed) - side_bytes) / weight_bytes
    assert ratio == pytest.approx(bits / 32, abs=0.002)
    if bits == 4:  # the whole quantized layer, scales and bias included
        assert size_bytes(packed) <= 0.16 * weight_bytes


def test_group32_scales_cost_one_bit_per_weight():
    layer = linear(384, 1536)
    packed = PackedLinear.from_linear(layer, spec_of(4, "symmetric", "group", 32))
    expected = 384 * 1536 // 2 + 1536 * 12 * 4 + 1536 * 4  # codes + scales + bias
    assert 0 < size_bytes(packed) - expected < 4000
    assert size_bytes(packed) / (384 * 1536 * 4) == pytest.approx(5 / 32 + 1 / 384, abs=0.002)


# ------------------------------------------------------------------ PackedEmbedding


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("granularity, group_size, dim", [
    ("channel", None, 24), ("group", 8, 24), ("tensor", None, 24),
    ("channel", None, 5),  # 5 * bits is not a whole number of bytes: the table path
])
def test_packed_embedding_matches_fake_quantized_table(bits, scheme, granularity, group_size,
                                                       dim):
    torch.manual_seed(bits)
    table = nn.Embedding(30, dim, padding_idx=0)
    spec = spec_of(bits, scheme, granularity, group_size)
    packed = PackedEmbedding.from_embedding(table, spec)
    indices = torch.tensor([[0, 7, 29, 7], [3, 3, 1, 28]])
    expected = F.embedding(indices, reference_weight(table.weight, spec))
    assert torch.equal(packed(indices), expected)
    assert packed.padding_idx == 0 and packed(indices).shape == (2, 4, dim)


def test_packed_embedding_rejects_out_of_range_indices_like_nn_embedding():
    packed = PackedEmbedding.from_embedding(nn.Embedding(4, 8), spec_of(4))
    for bad in ([4], [-1]):
        with pytest.raises(IndexError, match=r"indices range over .* outside this table's 0..3"):
            packed(torch.tensor(bad))
    assert packed(torch.zeros(0, dtype=torch.long)).shape == (0, 8)


def test_packed_embedding_rejects_max_norm():
    with pytest.raises(ValueError, match="max_norm=1.0 renormalizes the table"):
        PackedEmbedding.from_embedding(nn.Embedding(4, 8, max_norm=1.0), spec_of(4))


def test_from_constructors_reject_other_modules():
    with pytest.raises(TypeError, match="linear is a Embedding: expected nn.Linear"):
        PackedLinear.from_linear(nn.Embedding(4, 8), spec_of(4))
    with pytest.raises(TypeError, match="embedding is a Linear: expected nn.Embedding"):
        PackedEmbedding.from_embedding(nn.Linear(4, 8), spec_of(4))


def test_packed_linear_refuses_integer_inputs():
    source = linear(8, 4)
    packed = PackedLinear.from_linear(source, spec_of(4))
    with pytest.raises(TypeError, match=r"x has dtype torch\.int64: PackedLinear multiplies float "
                                        r"activations by its dequantized weight; pass floats "
                                        r"\(token ids go through an embedding first\)"):
        packed(torch.ones(2, 8, dtype=torch.long))
    with pytest.raises(TypeError, match=r"x has dtype list"):
        packed([[1.0] * 8])
    x = torch.randn(2, 8, dtype=torch.float64)  # other float dtypes compute in that dtype
    weight = reference_weight(source.weight, spec_of(4)).double()
    torch.testing.assert_close(packed(x), F.linear(x, weight, source.bias.double()))


def test_packed_embedding_refuses_float_indices():
    packed = PackedEmbedding.from_embedding(nn.Embedding(10, 8), spec_of(4))
    with pytest.raises(TypeError, match=r"indices has dtype torch\.float32: PackedEmbedding looks "
                                        r"up rows by integer index, as nn\.Embedding does; pass "
                                        r"token ids as a LongTensor"):
        packed(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"indices has dtype torch\.int16"):
        packed(torch.tensor([1, 2], dtype=torch.int16))
    as_int32 = packed(torch.tensor([[1, 9]], dtype=torch.int32))
    assert torch.equal(as_int32, packed(torch.tensor([[1, 9]])))  # int32 ids, as nn.Embedding


def test_a_config_instead_of_a_spec_is_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"spec is a WeightOnlyConfig: expected an "
                                        r"affine\.QuantSpec.*config\.spec\(\)"):
        PackedLinear.from_linear(linear(8, 4), WeightOnlyConfig())
