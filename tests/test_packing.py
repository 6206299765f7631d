"""Tests for quantbook.packing against numpy.packbits, hand-computed bytes and packed modules."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from quantbook.affine import QuantSpec, dequantize, fake_quantize, quantize_tensor
from quantbook.methods.packed import PackedEmbedding, PackedLinear
from quantbook.packing import (
    from_unsigned,
    pack,
    packed_bytes,
    storage_bytes,
    to_unsigned,
    unpack,
)


def reference_pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Independent reference: spell every code as `bits` bits, LSB first, then numpy.packbits."""
    c = codes.reshape(-1).numpy().astype(np.int64)
    bitstream = ((c[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return torch.from_numpy(np.packbits(bitstream, bitorder="little"))


def test_hand_computed_bytes():
    # 3 bits: 1,2,3,4,5,6,7,0 -> word 0b000_111_110_101_100_011_010_001 -> bytes D1 58 1F
    assert pack(torch.tensor([1, 2, 3, 4, 5, 6, 7, 0]), 3).tolist() == [0xD1, 0x58, 0x1F]
    assert pack(torch.tensor([0, 1, 2, 3]), 2).tolist() == [0b11_10_01_00]
    assert pack(torch.tensor([1, 2, 15]), 4).tolist() == [0x21, 0x0F]
    assert pack(torch.tensor([200, 7]), 8).tolist() == [200, 7]
    assert pack(torch.tensor([1]), 5).tolist() == [1]


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), numel=st.integers(0, 200), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_identity_and_size(bits, numel, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (numel,), generator=gen, dtype=torch.int32)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.ndim == 1
    assert packed.numel() == packed_bytes(numel, bits) == math.ceil(numel * bits / 8)
    assert torch.equal(packed, reference_pack(codes, bits))
    unpacked = unpack(packed, bits, numel)
    assert unpacked.dtype == torch.int32 and torch.equal(unpacked, codes)


@pytest.mark.parametrize("bits", range(2, 9))
def test_matrix_round_trip_and_extremes(bits):
    codes = torch.randint(0, 2**bits, (1536, 384), dtype=torch.int32)
    codes[0, :8] = 2**bits - 1  # all ones: must not overflow into neighbours
    packed = pack(codes, bits)
    assert packed.numel() == 1536 * 384 * bits // 8
    assert torch.equal(unpack(packed, bits, codes.numel()).reshape(1536, 384), codes)


def test_unpack_ignores_trailing_bytes():
    codes = torch.tensor([5, 1, 7])
    packed = torch.cat([pack(codes, 3), torch.tensor([255, 255], dtype=torch.uint8)])
    assert unpack(packed, 3, 3).tolist() == [5, 1, 7]


def test_to_and_from_unsigned():
    signed = torch.arange(-8, 8)
    assert to_unsigned(signed, 4, "symmetric").tolist() == list(range(16))
    assert to_unsigned(torch.arange(16), 4, "asymmetric").tolist() == list(range(16))
    assert from_unsigned(torch.arange(16), 4, "symmetric").tolist() == list(range(-8, 8))
    assert from_unsigned(torch.arange(16), 4, "asymmetric").tolist() == list(range(16))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_quantize_pack_unpack_dequantize(bits, scheme):
    x = torch.randn(12, 20)
    spec = QuantSpec(bits=bits, scheme=scheme, granularity="group", group_size=4)
    codes, qp = quantize_tensor(x, spec)
    packed = pack(to_unsigned(codes, bits, scheme), bits)
    restored = from_unsigned(unpack(packed, bits, codes.numel()), bits, scheme).reshape(12, 20)
    assert torch.equal(dequantize(restored, qp), fake_quantize(x, qp))


def test_errors():
    with pytest.raises(ValueError, match=r"bits=1 is not supported: choose 2\.\.8"):
        pack(torch.tensor([0, 1]), 1)
    with pytest.raises(TypeError, match=r"bits=3\.0 must be an int"):
        pack(torch.tensor([0, 1]), 3.0)
    msg = r"codes out of range for bits=3: found -1\.\.2, expected 0\.\.7; .*to_unsigned"
    with pytest.raises(ValueError, match=msg):
        pack(torch.tensor([0, -1, 2]), 3)
    with pytest.raises(ValueError, match=r"found 0\.\.16, expected 0\.\.15"):
        pack(torch.tensor([0, 16]), 4)
    with pytest.raises(TypeError, match=r"codes has dtype torch\.float32; expected integer codes"):
        pack(torch.tensor([0.0, 1.0]), 4)
    msg = r"packed buffer too short: 9 codes of 3 bits need 4 bytes, got 3"
    with pytest.raises(ValueError, match=msg):
        unpack(pack(torch.arange(8), 3), 3, 9)
    with pytest.raises(TypeError, match=r"packed must be a uint8 tensor, got torch\.int32"):
        unpack(torch.zeros(3, dtype=torch.int32), 3, 8)
    with pytest.raises(ValueError, match=r"numel=-1 must be a non-negative int"):
        packed_bytes(-1, 4)
    with pytest.raises(ValueError, match=r"scheme='signed' is unknown"):
        to_unsigned(torch.tensor([0]), 4, "signed")


def test_packed_bytes_hand_computed():
    assert packed_bytes(0, 4) == 0
    assert packed_bytes(1, 2) == 1  # a quarter of a byte still takes one
    assert packed_bytes(8, 3) == 3
    assert packed_bytes(9, 3) == 4  # 27 bits
    assert packed_bytes(786_432, 4) == 393_216
    for bad in (1.5, -1, True):
        with pytest.raises(ValueError, match=r"numel=.* must be a non-negative int"):
            packed_bytes(bad, 4)
    with pytest.raises(ValueError, match=r"bits=9 is not supported"):
        packed_bytes(8, 9)


@pytest.mark.parametrize("shape, spec, expected", [
    # the docstring's example: 128 bytes of 4-bit codes + 4 float32 scales
    ((4, 64), QuantSpec(bits=4, scheme="symmetric", granularity="channel"), 128 + 4 * 4),
    ((4, 64), QuantSpec(bits=4, scheme="asymmetric", granularity="channel"), 128 + 4 * 5),
    ((4, 64), QuantSpec(bits=8, scheme="symmetric", granularity="tensor"), 256 + 4),
    ((4, 64), QuantSpec(bits=3, scheme="symmetric", granularity="group", group_size=16),
     96 + 16 * 4),
    ((4, 64), QuantSpec(bits=2, scheme="asymmetric", granularity="group", group_size=32),
     64 + 8 * 5),
    ((6, 5), QuantSpec(bits=3, scheme="symmetric", granularity="channel", axis=1),
     12 + 5 * 4),  # 90 bits -> 12 bytes; channels along axis 1
    ((3, 5), QuantSpec(bits=3, scheme="asymmetric", granularity="tensor"), 6 + 5),  # 45 bits
    # the book's GPT, attention and FFN at 4 bits per channel (the predicted_size_bytes example)
    ((128, 128), QuantSpec(bits=4, scheme="symmetric", granularity="channel"), 8192 + 512),
])
def test_storage_bytes_hand_computed(shape, spec, expected):
    assert storage_bytes(shape, spec) == expected


@pytest.mark.parametrize("spec", [
    QuantSpec(bits=4, scheme="symmetric", granularity="channel"),
    QuantSpec(bits=3, scheme="asymmetric", granularity="group", group_size=8),
    QuantSpec(bits=8, scheme="asymmetric", granularity="tensor"),
    QuantSpec(bits=2, scheme="symmetric", granularity="group", group_size=24),
])
def test_storage_bytes_is_what_packed_modules_store(spec):
    torch.manual_seed(0)
    layer = PackedLinear.from_linear(nn.Linear(48, 20, bias=False), spec)
    table = PackedEmbedding.from_embedding(nn.Embedding(30, 24), spec)
    for module, shape in ((layer, (20, 48)), (table, (30, 24))):
        stored = sum(t.numel() * t.element_size() for t in module.state_dict().values())
        assert storage_bytes(shape, spec) == stored


def test_storage_bytes_refuses_groups_that_do_not_divide_the_row():
    spec = QuantSpec(bits=4, scheme="symmetric", granularity="group", group_size=16)
    with pytest.raises(ValueError, match=r"group_size=16 does not divide the last dim of shape "
                                         r"\(4, 30\) \(30\): choose a divisor of 30"):
        storage_bytes((4, 30), spec)
