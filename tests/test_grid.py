"""Tests for quantbook.grid against hand-computed values and PyTorch's MinMaxObserver."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantbook import affine, grid, ranges
from quantbook.quiet import silence_known_noise


def test_qrange_hand_computed():
    assert grid.qrange(8, "symmetric") == (-128, 127)
    assert grid.qrange(8, "asymmetric") == (0, 255)
    assert grid.qrange(4, "symmetric") == (-8, 7)
    assert grid.qrange(3, "asymmetric") == (0, 7)
    assert grid.qrange(2, "symmetric") == (-2, 1)


@pytest.mark.parametrize("bits, error, match", [
    (1, ValueError, r"bits=1 is not supported: choose 2\.\.8"),
    (9, ValueError, r"bits=9 is not supported: choose 2\.\.8"),
    (0, ValueError, r"bits=0 is not supported"),
    (True, TypeError, r"bits=True must be an int: choose 2\.\.8"),
    (4.0, TypeError, r"bits=4\.0 must be an int"),
    ("4", TypeError, r"bits='4' must be an int"),
    (None, TypeError, r"bits=None must be an int"),
])
def test_check_bits(bits, error, match):
    with pytest.raises(error, match=match):
        grid.check_bits(bits)
    with pytest.raises(error, match=match):
        grid.qrange(bits, "symmetric")


def test_check_bits_accepts_2_to_8():
    for bits in range(2, 9):
        grid.check_bits(bits)


def test_check_choice():
    grid.check_choice("scheme", "symmetric", grid.SCHEMES)
    with pytest.raises(ValueError, match=r"scheme='Symmetric' is unknown: choose one of "
                                         r"symmetric, asymmetric"):
        grid.check_choice("scheme", "Symmetric", grid.SCHEMES)
    with pytest.raises(ValueError, match=r"scheme='signed' is unknown"):
        grid.qrange(8, "signed")


def test_check_group_size_names_the_dimension_and_near_divisors():
    grid.check_group_size(16, 32, "the row")
    grid.check_group_size(32, 32, "the row")
    # divisors of 32 nearest to 24: 16 and 32 (8 away), 8 (16 away), 4 (20 away)
    with pytest.raises(ValueError, match=r"group_size=24 does not divide the row \(32\): choose a "
                                         r"divisor of 32, e\.g\. \[4, 8, 16, 32\]"):
        grid.check_group_size(24, 32, "the row")
    # 384 = 2^7 * 3: divisors nearest to 100 are 96, 128, 64, 48
    with pytest.raises(ValueError, match=r"e\.g\. \[48, 64, 96, 128\]"):
        grid.check_group_size(100, 384, "x")
    with pytest.raises(ValueError, match=r"group_size=5 does not divide x \(7\): choose a divisor "
                                         r"of 7, e\.g\. \[1, 7\]"):
        grid.check_group_size(5, 7, "x")


@pytest.mark.parametrize("group_size", [0, -4, None])
def test_check_group_size_refuses_a_size_that_is_not_positive(group_size):
    with pytest.raises(ValueError, match=rf"group_size={group_size} .*positive"):
        grid.check_group_size(group_size, 32, "the row")


@pytest.mark.parametrize("x, error, match", [
    ([1.0], TypeError, r"x must be a torch\.Tensor, got list"),
    (torch.tensor([1, 2]), TypeError, r"x has dtype torch\.int64; quantization needs a "
                                      r"floating-point tensor: convert it with x\.float\(\)"),
    (torch.empty(0, 3), ValueError, r"x is empty \(shape \(0, 3\)\): nothing to quantize"),
    (torch.tensor([float("nan"), float("inf"), float("-inf"), 1.0]), ValueError,
     r"x contains 1 NaN and 2 inf values: find their source, or replace them with "
     r"torch\.nan_to_num\(x\)"),
])
def test_check_float_tensor(x, error, match):
    with pytest.raises(error, match=match):
        grid.check_float_tensor(x)


def test_check_float_tensor_uses_the_given_name():
    with pytest.raises(TypeError, match=r"weight has dtype torch\.int32.*weight\.float\(\)"):
        grid.check_float_tensor(torch.zeros(2, dtype=torch.int32), name="weight")
    grid.check_float_tensor(torch.zeros(2, dtype=torch.float16))


def test_scale_zero_point_hand_computed():
    lo, hi = torch.tensor(-1.0), torch.tensor(3.0)
    scale, zero_point = grid.scale_zero_point(lo, hi, 0, 255, "asymmetric")
    # scale = 4 / 255; zero_point = 0 - round(-1 / (4 / 255)) = round(63.75) = 64
    assert scale.item() == pytest.approx(4 / 255) and zero_point.item() == 64
    assert scale.dtype == torch.float32 and zero_point.dtype == torch.int32
    scale, zero_point = grid.scale_zero_point(lo, hi, -8, 7, "symmetric")
    assert scale.item() == pytest.approx(3 / 7.5) and zero_point.item() == 0  # max|x| / 7.5
    # an all-positive range is widened to hold 0: [0, 2] at 8 bits
    scale, zero_point = grid.scale_zero_point(torch.tensor(1.0), torch.tensor(2.0), 0, 255,
                                              "asymmetric")
    assert scale.item() == pytest.approx(2 / 255) and zero_point.item() == 0
    # an all-zero range gets the smallest scale, never 0
    scale, _ = grid.scale_zero_point(torch.tensor(0.0), torch.tensor(0.0), 0, 255, "asymmetric")
    assert scale.item() == grid.EPS


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@settings(max_examples=60, deadline=None)
@given(low=st.floats(-100, 100, width=32), width=st.floats(0, 100, width=32),
       bits=st.integers(2, 8), scheme=st.sampled_from(["symmetric", "asymmetric"]))
def test_scale_zero_point_matches_minmax_observer(low, width, bits, scheme):
    with warnings.catch_warnings():
        silence_known_noise()
        from torch.ao.quantization import MinMaxObserver
    x = torch.tensor([low, low + width], dtype=torch.float32)
    qmin, qmax = grid.qrange(bits, scheme)
    dtype, qscheme = ((torch.qint8, torch.per_tensor_symmetric) if scheme == "symmetric"
                      else (torch.quint8, torch.per_tensor_affine))
    observer = MinMaxObserver(dtype=dtype, qscheme=qscheme, quant_min=qmin, quant_max=qmax)
    observer(x)
    ref_scale, ref_zero_point = observer.calculate_qparams()
    scale, zero_point = grid.scale_zero_point(x.min(), x.max(), qmin, qmax, scheme)
    assert torch.equal(scale, ref_scale.reshape(()))
    assert torch.equal(zero_point, ref_zero_point.int().reshape(()))


def test_scale_zero_point_refuses_an_unknown_scheme():
    with pytest.raises(ValueError, match=r"scheme='sym' is unknown"):
        grid.scale_zero_point(torch.tensor(-1.0), torch.tensor(3.0), -128, 127, "sym")


def test_affine_and_ranges_use_the_grid():
    # the grid is re-exported by affine (its API since chapter 01) and shared with ranges
    for name in ("qrange", "scale_zero_point", "check_bits", "check_group_size", "EPS"):
        assert getattr(affine, name) is getattr(grid, name)
    assert ranges.scale_zero_point is grid.scale_zero_point
