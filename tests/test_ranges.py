"""Tests for quantbook.ranges against torch/numpy reductions and quantization-error checks."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantbook.affine import QuantSpec, choose_qparams, qrange, scale_zero_point, sqnr_db
from quantbook.ranges import minmax_range, mse_range, percentile_range


def torch_mse(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, scheme: str):
    """Per-row quantization MSE of x (rows, n) using torch's own fake-quantize kernel."""
    qmin, qmax = qrange(bits, scheme)
    scale, zero_point = scale_zero_point(lo, hi, qmin, qmax, scheme)
    x_hat = torch.fake_quantize_per_channel_affine(x, scale, zero_point, 0, qmin, qmax)
    return (x - x_hat).pow(2).mean(dim=1)


@pytest.mark.parametrize("dim", [None, 0, 1, -1, 2])
def test_minmax_matches_amin_amax(dim):
    x = torch.randn(3, 4, 5)
    lo, hi = minmax_range(x, dim)
    ref_lo = x.min() if dim is None else x.amin(dim)
    ref_hi = x.max() if dim is None else x.amax(dim)
    assert torch.equal(lo, ref_lo) and torch.equal(hi, ref_hi)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    percentile=st.floats(50.5, 100.0),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_percentile_matches_torch_quantile_and_numpy(shape, percentile, seed, data):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    dim = data.draw(st.none() | st.integers(-len(shape), len(shape) - 1))
    lo, hi = percentile_range(x, dim, percentile)
    q = torch.tensor([1 - percentile / 100, percentile / 100], dtype=torch.float64)
    ref = torch.quantile(x.double(), q, dim=dim)
    assert torch.allclose(lo.double(), ref[0], atol=1e-5)
    assert torch.allclose(hi.double(), ref[1], atol=1e-5)
    ref_np = np.percentile(x.numpy(), [100 - percentile, percentile], axis=dim)
    assert np.allclose(hi.numpy(), ref_np[1], atol=1e-5)
    assert lo.shape == hi.shape == ref[0].shape


def test_percentile_hand_computed():
    x = torch.arange(101.0)  # the p-th percentile of 0..100 is p
    assert percentile_range(x, percentile=99) == (torch.tensor(1.0), torch.tensor(99.0))
    lo, hi = percentile_range(x, percentile=99.5)  # interpolates between 99 and 100
    assert (lo.item(), hi.item()) == (0.5, 99.5)
    assert percentile_range(x, percentile=100) == minmax_range(x)


def test_percentile_clips_an_outlier():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    x[123] = 100.0
    lo, hi = percentile_range(x, percentile=99.9)
    mm_lo, mm_hi = minmax_range(x)
    assert mm_hi == 100.0 and 2.5 < hi < 4.0 and mm_lo < lo < -2.5
    # per-tensor quantization error of the bulk drops by orders of magnitude
    codes_pct = choose_qparams(x, QuantSpec(bits=4, range_method="percentile"))
    codes_mm = choose_qparams(x, QuantSpec(bits=4))
    assert codes_pct.scale < codes_mm.scale / 10


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric"])
def test_mse_range_beats_minmax_on_gaussian(bits, scheme):
    x = torch.randn(32, 512, generator=torch.Generator().manual_seed(bits))
    mse_lo, mse_hi = mse_range(x, dim=1, bits=bits, scheme=scheme)
    mm_lo, mm_hi = minmax_range(x, dim=1)
    err_mse = torch_mse(x, mse_lo, mse_hi, bits, scheme)
    err_mm = torch_mse(x, mm_lo, mm_hi, bits, scheme)
    assert (err_mse <= err_mm).all()
    assert err_mse.mean() < 0.8 * err_mm.mean()  # clipping the tails pays at 3-4 bits
    assert ((mse_hi < mm_hi) & (mse_lo > mm_lo)).float().mean() > 0.9
    # the same through choose_qparams, per tensor, measured with torch's kernel
    x_flat = x.flatten()
    sqnr = {}
    for method in ("mse", "minmax"):
        qp = choose_qparams(x_flat, QuantSpec(bits=bits, scheme=scheme, range_method=method))
        x_hat = torch.fake_quantize_per_tensor_affine(
            x_flat, qp.scale.item(), qp.zero_point.item(), qp.qmin, qp.qmax
        )
        sqnr[method] = sqnr_db(x_flat, x_hat)
    assert sqnr["mse"] > sqnr["minmax"] + 1.0


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 40),
    bits=st.integers(2, 8),
    scheme=st.sampled_from(["asymmetric", "symmetric"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_mse_range_never_worse_than_minmax(rows, cols, bits, scheme, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen) ** 3  # heavy tails
    mse_lo, mse_hi = mse_range(x, dim=1, bits=bits, scheme=scheme, n_grid=20)
    mm_lo, mm_hi = minmax_range(x, dim=1)
    # the range shrinks towards zero
    assert (mse_lo.abs() <= mm_lo.abs()).all() and (mse_hi.abs() <= mm_hi.abs()).all()
    err_mse = torch_mse(x, mse_lo, mse_hi, bits, scheme)
    err_mm = torch_mse(x, mm_lo, mm_hi, bits, scheme)
    assert (err_mse <= err_mm * (1 + 1e-6)).all()


def test_mse_keeps_the_full_range_of_uniform_data_at_8_bits():
    x = torch.rand(4, 4096, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lo, hi = mse_range(x, dim=1, bits=8, scheme="asymmetric")
    mm_lo, mm_hi = minmax_range(x, dim=1)
    assert torch.allclose(lo, mm_lo, rtol=0.02) and torch.allclose(hi, mm_hi, rtol=0.02)


def test_range_errors():
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"dim=2 is out of range for a tensor with 2 dims"):
        minmax_range(x, 2)
    with pytest.raises(ValueError, match=r"percentile=101 must be in \(50, 100\]"):
        percentile_range(x, 1, 101)
    with pytest.raises(ValueError, match=r"percentile=10 must be in \(50, 100\]"):
        percentile_range(x, 1, 10)
    with pytest.raises(TypeError, match=r"percentile='99' must be a number"):
        percentile_range(x, 1, "99")
    with pytest.raises(ValueError, match=r"n_grid=0 must be a positive int"):
        mse_range(x, 1, 4, "symmetric", n_grid=0)
    with pytest.raises(ValueError, match=r"bits=1 is not supported: choose 2\.\.8"):
        mse_range(x, 1, 1, "symmetric")
    with pytest.raises(ValueError, match=r"scheme='both' is unknown: choose one of symmetric"):
        mse_range(x, 1, 4, "both")
    with pytest.raises(TypeError, match=r"dtype torch\.int32; .*x\.float\(\)"):
        minmax_range(torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"x contains 1 NaN and 0 inf values"):
        percentile_range(torch.tensor([1.0, float("nan")]))
