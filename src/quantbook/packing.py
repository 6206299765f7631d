"""Dense bit-packing of low-bit codes into bytes.

``numel`` codes of ``bits`` bits take exactly ``ceil(numel * bits / 8)`` bytes: the codes are
laid end to end in a little-endian bitstream (code ``i`` occupies bits ``i*bits`` to
``(i+1)*bits - 1``, counting from the least significant bit of byte 0). Example for
``bits=3``: codes ``1, 2, 3, 4, 5, 6, 7, 0`` become the 24-bit word
``0b000_111_110_101_100_011_010_001`` (code 0 in the lowest bits), stored as the 3 bytes
``0xD1, 0x58, 0x1F``.

Codes are *unsigned*, in ``[0, 2**bits)``. Signed symmetric codes in
``[-2**(bits-1), 2**(bits-1))`` are shifted by ``2**(bits-1)`` first: ``to_unsigned`` does that
(and does nothing for asymmetric codes), ``from_unsigned`` undoes it.
"""

import math
from collections.abc import Sequence

import torch

from quantbook.affine import QuantSpec
from quantbook.grid import SCHEMES, check_bits, check_choice, check_group_size


def packed_bytes(numel: int, bits: int) -> int:
    """Bytes needed for ``numel`` codes of ``bits`` bits: ``ceil(numel * bits / 8)``."""
    check_bits(bits)
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel={numel!r} must be a non-negative int")
    return (numel * bits + 7) // 8


def _check_codes(codes: object, name: str = "codes") -> None:
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(
            f"{name} has dtype {codes.dtype}; expected integer codes: "
            "use affine.quantize, or convert with .round().to(torch.int32)"
        )


def to_unsigned(codes: torch.Tensor, bits: int, scheme: str) -> torch.Tensor:
    """Shift codes into ``[0, 2**bits)``: symmetric ones by ``+2**(bits-1)`` (int32).

    Example: 4-bit symmetric codes ``-8, 0, 7`` become ``0, 8, 15``.
    """
    check_bits(bits)
    check_choice("scheme", scheme, SCHEMES)
    _check_codes(codes)
    offset = 2 ** (bits - 1) if scheme == "symmetric" else 0
    return codes.to(torch.int32) + offset


def from_unsigned(codes: torch.Tensor, bits: int, scheme: str) -> torch.Tensor:
    """Inverse of ``to_unsigned`` (int32)."""
    check_bits(bits)
    check_choice("scheme", scheme, SCHEMES)
    _check_codes(codes)
    offset = 2 ** (bits - 1) if scheme == "symmetric" else 0
    return codes.to(torch.int32) - offset


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (any shape, flattened) into a 1-D uint8 tensor, densely.

    Args:
        codes: integer tensor with values in ``[0, 2**bits)``.
        bits: code width, 2..8.

    Returns:
        uint8 tensor of ``packed_bytes(codes.numel(), bits)`` bytes.
    """
    check_bits(bits)
    _check_codes(codes)
    flat = codes.reshape(-1).to(torch.int64)
    numel = flat.numel()
    if numel:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= 2**bits:
            raise ValueError(
                f"codes out of range for bits={bits}: found {lo}..{hi}, expected "
                f"0..{2**bits - 1}; shift signed codes with to_unsigned(codes, bits, scheme)"
            )
    if bits == 8:
        return flat.to(torch.uint8)
    pad = -numel % 8
    groups = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, 8)  # (n_words, 8 codes)
    shifts = torch.arange(8, device=flat.device) * bits
    words = (groups << shifts).sum(dim=1)  # (n_words,): 8 codes = `bits` bytes, < 2**56
    byte_shifts = torch.arange(bits, device=flat.device) * 8
    packed = ((words[:, None] >> byte_shifts) & 0xFF).to(torch.uint8)  # (n_words, bits)
    return packed.reshape(-1)[: packed_bytes(numel, bits)]


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of ``pack``: the first ``numel`` codes (1-D int32) of a packed buffer.

    Args:
        packed: 1-D uint8 tensor from ``pack`` (extra trailing bytes are ignored).
        bits: code width used by ``pack``.
        numel: how many codes to read.
    """
    nbytes = packed_bytes(numel, bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {getattr(packed, 'dtype', packed)!r}")
    if packed.ndim != 1:
        raise ValueError(f"packed must be 1-D, got shape {tuple(packed.shape)}: flatten it")
    if packed.numel() < nbytes:
        raise ValueError(
            f"packed buffer too short: {numel} codes of {bits} bits need {nbytes} bytes, "
            f"got {packed.numel()}: check numel and bits"
        )
    if bits == 8:
        return packed[:numel].to(torch.int32)
    flat = packed[:nbytes].to(torch.int64)
    pad = -nbytes % bits
    groups = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, bits)  # (n_words, bits bytes)
    byte_shifts = torch.arange(bits, device=flat.device) * 8
    words = (groups << byte_shifts).sum(dim=1)  # (n_words,)
    shifts = torch.arange(8, device=flat.device) * bits
    codes = (words[:, None] >> shifts) & (2**bits - 1)  # (n_words, 8 codes)
    return codes.reshape(-1)[:numel].to(torch.int32)


def storage_bytes(shape: Sequence[int], spec: QuantSpec) -> int:
    """Bytes to store a weight of ``shape``: packed codes plus one scale (float32) per slice.

    Asymmetric slices also store a zero point, one byte each (it lies in ``[0, 2**bits)``).
    Channels lie along ``spec.axis``; groups along the last dimension. Example: a (4, 64)
    weight at 4 bits, symmetric, per channel: 128 bytes of codes + 4 * 4 of scales = 144.
    """
    numel = math.prod(shape)
    if spec.granularity == "tensor":
        n_slices = 1
    elif spec.granularity == "channel":
        n_slices = shape[spec.axis]
    else:
        check_group_size(spec.group_size, shape[-1], f"the last dim of shape {tuple(shape)}")
        n_slices = numel // spec.group_size
    per_slice = 4 + (1 if spec.scheme == "asymmetric" else 0)
    return packed_bytes(numel, spec.bits) + n_slices * per_slice
