"""The integer grid: code ranges, the scale and zero point of a range, and input checks.

The lowest layer of the math. :mod:`quantbook.affine` (quantize and dequantize) and
:mod:`quantbook.ranges` (which range to cover) both build on it, so neither imports the other
for these basics.
"""

import torch

SCHEMES = ("symmetric", "asymmetric")
EPS = torch.finfo(torch.float32).eps  # smallest scale, as in torch's observers
TINY = torch.finfo(torch.float32).tiny


def check_bits(bits: int) -> None:
    """Raise ``TypeError`` / ``ValueError`` unless ``bits`` is an int in 2..8."""
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise TypeError(f"bits={bits!r} must be an int: choose 2..8")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits} is not supported: choose 2..8")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is unknown: choose one of {', '.join(choices)}")


def check_group_size(group_size: int, length: int, where: str) -> None:
    """Raise ``ValueError`` unless ``group_size`` divides ``length`` (the row being grouped).

    Args:
        group_size: elements per group.
        length: the length of the dimension split into groups.
        where: what that dimension is, for the message, e.g. ``"in_features of 'fc_in'"``.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r} is not supported: pass a positive int "
                         "such as 32")
    if length % group_size:
        divisors = [d for d in range(1, length + 1) if length % d == 0]
        near = sorted(sorted(divisors, key=lambda d: abs(d - group_size))[:4])
        raise ValueError(
            f"group_size={group_size} does not divide {where} ({length}): choose a divisor "
            f"of {length}, e.g. {near}"
        )


def check_float_tensor(x: object, name: str = "x") -> None:
    """Raise unless ``x`` is a non-empty floating-point tensor of finite values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} has dtype {x.dtype}; quantization needs a floating-point tensor: "
            f"convert it with {name}.float()"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): nothing to quantize")
    if not bool(torch.isfinite(x).all()):
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} inf values: find their source, or "
            f"replace them with torch.nan_to_num({name})"
        )


def qrange(bits: int, scheme: str) -> tuple[int, int]:
    """Integer code range ``(qmin, qmax)``.

    Symmetric codes are signed (like ``torch.qint8``), asymmetric ones unsigned (``torch.quint8``).
    Example: ``qrange(4, "symmetric") == (-8, 7)``, ``qrange(4, "asymmetric") == (0, 15)``.
    """
    check_bits(bits)
    check_choice("scheme", scheme, SCHEMES)
    if scheme == "symmetric":
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def scale_zero_point(
    lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, scheme: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` mapping the range ``[lo, hi]`` (widened to hold 0) onto codes.

    Same float32 ops as torch's ``MinMaxObserver``. Example: ``lo=-1, hi=3``, 8-bit
    asymmetric gives ``scale = 4/255`` and ``zero_point = 0 - round(-1 / scale) = 64``.
    """
    check_choice("scheme", scheme, SCHEMES)
    lo_neg = torch.minimum(lo, torch.zeros_like(lo)).float()
    hi_pos = torch.maximum(hi, torch.zeros_like(hi)).float()
    eps = torch.tensor(EPS, dtype=torch.float32, device=lo.device)
    if scheme == "symmetric":
        scale = torch.maximum(-lo_neg, hi_pos) / (float(qmax - qmin) / 2)
        scale = torch.maximum(scale, eps)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    scale = torch.maximum((hi_pos - lo_neg) / float(qmax - qmin), eps)
    zero_point = qmin - torch.round(lo_neg / scale).to(torch.int32)
    return scale, zero_point.clamp(qmin, qmax)
