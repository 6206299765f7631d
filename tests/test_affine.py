"""Tests for quantbook.affine against PyTorch's kernels and observers and hand-computed values."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

from quantbook.affine import (
    QParams,
    QuantSpec,
    choose_qparams,
    dequantize,
    fake_quantize,
    qrange,
    quantize,
    quantize_tensor,
    sqnr_db,
)

# torch warns that quantized dtypes (quint8/qint8 tensors) are deprecated; we only read
# them back with int_repr() as a reference. The observers may warn that torch.ao moves to torchao.
QUANTIZED_DTYPE_WARNING = "ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning"
AO_WARNING = "ignore:torch.ao.quantization is deprecated:DeprecationWarning"


def spec_of(bits=8, scheme="asymmetric", granularity="tensor", **kw):
    return QuantSpec(bits=bits, scheme=scheme, granularity=granularity, **kw)


def qparams_of(scale, zero_point, spec):
    qmin, qmax = qrange(spec.bits, spec.scheme)
    scale = torch.as_tensor(scale, dtype=torch.float32)
    zero_point = torch.as_tensor(zero_point, dtype=torch.int32)
    return QParams(scale, zero_point, spec, qmin, qmax)


def tie_heavy(scale: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Values k+0.5 steps away (and one float ulp either side), plus plain Gaussian ones."""
    x = (torch.randint(-300, 300, (n,), generator=gen).float() + 0.5) * scale
    inf = torch.tensor(float("inf"))
    return torch.cat([x, x.nextafter(inf), x.nextafter(-inf), torch.randn(n, generator=gen)])


def near_tie(x, scale, zero_point):
    """Where x / scale lies within 1e-3 of a rounding tie (kernels may round either way)."""
    t = x.double() / scale.double() + zero_point.double()
    return ((t - t.floor()) - 0.5).abs() < 1e-3


# ----------------------------------------------------------------------------- ranges, specs


def test_qrange_hand_computed():
    assert qrange(8, "symmetric") == (-128, 127)
    assert qrange(8, "asymmetric") == (0, 255)
    assert qrange(4, "symmetric") == (-8, 7)
    assert qrange(2, "asymmetric") == (0, 3)
    assert qrange(3, "symmetric") == (-4, 3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"bits": 1}, ValueError, r"bits=1 is not supported: choose 2\.\.8"),
        ({"bits": 9}, ValueError, r"bits=9 is not supported: choose 2\.\.8"),
        ({"bits": 4.0}, TypeError, r"bits=4\.0 must be an int: choose 2\.\.8"),
        ({"bits": True}, TypeError, r"bits=True must be an int"),
        ({"scheme": "sym"}, ValueError, r"scheme='sym' is unknown: choose one of symmetric, asym"),
        ({"granularity": "row"}, ValueError, r"granularity='row' is unknown: .*tensor, channel"),
        ({"range_method": "kl"}, ValueError, r"range_method='kl' is unknown: .*minmax, percentile"),
        ({"granularity": "group"}, ValueError, r"group_size=None is invalid for granularity='gr"),
        ({"granularity": "group", "group_size": 0}, ValueError, r"group_size=0 is invalid"),
        ({"granularity": "group", "group_size": -4}, ValueError, r"positive int such as"),
        ({"group_size": 32}, ValueError, r"group_size=32 is only used with granularity='group'"),
        ({"percentile": 0}, ValueError, r"percentile=0 must be in \(50, 100\]"),
        ({"percentile": 100.5}, ValueError, r"percentile=100\.5 must be in \(50, 100\]"),
        ({"axis": 1.0}, TypeError, r"axis=1\.0 must be an int"),
    ],
)
def test_spec_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        QuantSpec(**kwargs)


def test_qrange_errors():
    with pytest.raises(ValueError, match=r"bits=1 is not supported: choose 2\.\.8"):
        qrange(1, "symmetric")
    with pytest.raises(ValueError, match=r"scheme='signed' is unknown"):
        qrange(8, "signed")


@pytest.mark.parametrize(
    "x, error, match",
    [
        (
            torch.tensor([1.0, float("nan"), float("nan"), float("inf")]),
            ValueError,
            r"x contains 2 NaN and 1 inf values: .*torch\.nan_to_num\(x\)",
        ),
        (torch.tensor([1, 2, 3]), TypeError, r"dtype torch\.int64; .*convert it with x\.float\(\)"),
        (torch.tensor([True, False]), TypeError, r"dtype torch\.bool; .*x\.float\(\)"),
        (torch.empty(0, 4), ValueError, r"x is empty \(shape \(0, 4\)\)"),
        ([1.0, 2.0], TypeError, r"x must be a torch\.Tensor, got list"),
    ],
)
def test_tensor_errors(x, error, match):
    with pytest.raises(error, match=match):
        choose_qparams(x, QuantSpec())


def test_axis_and_group_errors():
    with pytest.raises(ValueError, match=r"axis=2 is out of range for a tensor with 2 dims"):
        choose_qparams(torch.randn(4, 6), spec_of(granularity="channel", axis=2))
    with pytest.raises(ValueError, match=r"axis=0 is out of range for a tensor with 0 dims"):
        choose_qparams(torch.tensor(1.0), spec_of(granularity="channel"))
    msg = (r"group_size=100 does not divide the last dim of shape \(4, 384\) \(384\): choose a "
           r"divisor of 384, e\.g\. \[48, 64, 96, 128\]")
    with pytest.raises(ValueError, match=msg):
        choose_qparams(torch.randn(4, 384), spec_of(granularity="group", group_size=100))
    with pytest.raises(ValueError, match=r"a 0-dim tensor has no last dim to split into groups: "
                                         r"use granularity='tensor'"):
        choose_qparams(torch.tensor(1.0), spec_of(granularity="group", group_size=1))


def test_qparams_validation_and_shape_mismatch():
    spec = spec_of(granularity="channel")
    with pytest.raises(TypeError, match=r"scale must be a float32 tensor, got torch\.float64"):
        QParams(torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.int32), spec, 0, 255)
    with pytest.raises(TypeError, match=r"zero_point must be an int32 tensor, got torch\.int64"):
        QParams(torch.ones(3), torch.zeros(3, dtype=torch.int64), spec, 0, 255)
    with pytest.raises(ValueError, match=r"scale has 0 dims but granularity='channel' needs 1"):
        qparams_of(1.0, 0, spec)
    with pytest.raises(ValueError, match=r"scale must be positive and finite"):
        qparams_of([1.0, 0.0, 1.0], [0, 0, 0], spec)
    qp = choose_qparams(torch.randn(3, 5), spec)
    msg = r"shape \(4, 5\) needs qparams of shape \(4,\) .*got \(3,\)"
    with pytest.raises(ValueError, match=msg):
        quantize(torch.randn(4, 5), qp)
    with pytest.raises(TypeError, match=r"codes must be an integer tensor, got torch\.float32"):
        dequantize(torch.zeros(3, 5), qp)


# ----------------------------------------------------------------------- hand-computed values


def test_round_half_to_even_hand_computed():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, 3.51])
    sym = quantize(x, qparams_of(1.0, 0, spec_of(scheme="symmetric")))
    assert sym.tolist() == [0, 2, 2, 0, -2, -2, 3, 4]
    asym = quantize(x, qparams_of(1.0, 10, spec_of()))
    assert asym.tolist() == [10, 12, 12, 10, 8, 8, 13, 14]
    assert sym.dtype == torch.int32


def test_choose_qparams_hand_computed():
    # range [-1, 3] -> scale 4/255, zero_point = 0 - round(-1 / (4/255)) = round(63.75) = 64
    qp = choose_qparams(torch.tensor([-1.0, 0.5, 3.0]), QuantSpec())
    assert qp.scale.item() == pytest.approx(4 / 255) and qp.zero_point.item() == 64
    assert (qp.qmin, qp.qmax) == (0, 255)
    # symmetric 4-bit: scale = max|x| / ((7 - -8) / 2) = 3 / 7.5 = 0.4
    qp = choose_qparams(torch.tensor([-1.0, 3.0]), spec_of(bits=4, scheme="symmetric"))
    assert qp.scale.item() == pytest.approx(0.4) and qp.zero_point.item() == 0
    codes = quantize(torch.tensor([-1.0, 3.0, -4.0]), qp)
    assert codes.tolist() == [-2, 7, -8]  # -2.5 -> -2 (half to even), 7.5 clamps to 7


def test_qparams_shapes_and_dtypes():
    x = torch.randn(6, 8, 12)
    assert choose_qparams(x, QuantSpec()).scale.shape == ()
    assert choose_qparams(x, spec_of(granularity="channel", axis=1)).scale.shape == (8,)
    qp = choose_qparams(x, spec_of(granularity="group", group_size=4))
    assert qp.scale.shape == qp.zero_point.shape == (48, 3)
    assert qp.scale.dtype == torch.float32 and qp.zero_point.dtype == torch.int32


def test_sqnr_db_hand_computed():
    ref = torch.tensor([1.0, 1.0])
    assert sqnr_db(ref, torch.tensor([1.0, 0.0])) == pytest.approx(10 * math.log10(2))
    assert sqnr_db(ref, ref.clone()) == math.inf
    with pytest.raises(ValueError, match=r"reference shape \(2,\) != approx shape \(3,\)"):
        sqnr_db(ref, torch.zeros(3))


# ---------------------------------------------------------------- bit-exact against PyTorch


@pytest.mark.parametrize(
    "scheme, zero_point",
    [("asymmetric", 0), ("asymmetric", 77), ("asymmetric", 255), ("symmetric", 0)],
)
def test_matches_fake_quantize_per_tensor_affine(scheme, zero_point):
    gen = torch.Generator().manual_seed(zero_point)
    spec = spec_of(scheme=scheme)
    for scale in torch.rand(20, generator=gen) * 0.1 + 1e-4:
        x = tie_heavy(scale, 1000, gen)
        qp = qparams_of(scale, zero_point, spec)
        ref = torch.fake_quantize_per_tensor_affine(x, scale.item(), zero_point, qp.qmin, qp.qmax)
        assert torch.equal(fake_quantize(x, qp), ref)


@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_matches_fake_quantize_per_channel_affine(scheme, axis):
    gen = torch.Generator().manual_seed(axis + 5)
    scale = 0.01 * (1 + torch.rand(7, generator=gen))
    x = torch.stack([tie_heavy(s, 100, gen) for s in scale])  # (7, 400): ties of each channel
    x = x if axis == 0 else x.T.contiguous()  # channels on `axis`
    qmin, qmax = qrange(8, scheme)
    zp = torch.randint(qmin, qmax + 1, (7,), generator=gen).int()
    zp = zp if scheme == "asymmetric" else torch.zeros(7, dtype=torch.int32)
    qp = QParams(scale, zp, spec_of(scheme=scheme, granularity="channel", axis=axis), qmin, qmax)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zp, axis % 2, qmin, qmax)
    assert torch.equal(fake_quantize(x, qp), ref)


def test_group_matches_fake_quantize_per_channel_on_groups():
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
    qp = choose_qparams(x, spec_of(bits=4, granularity="group", group_size=8))
    groups = x.reshape(-1, 8)  # (24, 8): one channel per group
    ref = torch.fake_quantize_per_channel_affine(
        groups, qp.scale.flatten(), qp.zero_point.flatten(), 0, qp.qmin, qp.qmax
    )
    assert torch.equal(fake_quantize(x, qp), ref.reshape(6, 32))


@pytest.mark.filterwarnings(QUANTIZED_DTYPE_WARNING)
def test_matches_quantize_per_tensor():
    gen = torch.Generator().manual_seed(1)
    for scale in torch.rand(10, generator=gen) * 0.1 + 1e-4:
        # symmetric (zero_point 0): every torch kernel agrees, ties included
        x = tie_heavy(scale, 1000, gen)
        qp = qparams_of(scale, 0, spec_of(scheme="symmetric"))
        ref = torch.quantize_per_tensor(x, scale.item(), 0, torch.qint8).int_repr().int()
        assert torch.equal(quantize(x, qp), ref)
        # asymmetric: torch uses a fused multiply-add here, which may round a value within
        # float precision of a tie the other way; everything else must agree exactly
        x = torch.randn(20_000, generator=gen) * scale * 50
        qp = qparams_of(scale, 100, spec_of())
        ref = torch.quantize_per_tensor(x, scale.item(), 100, torch.quint8).int_repr().int()
        ours = quantize(x, qp)
        differ = ours != ref
        assert not (differ & ~near_tie(x, scale, torch.tensor(100))).any()
        assert ((ours - ref).abs() <= 1).all() and differ.sum() <= 5


@pytest.mark.filterwarnings(QUANTIZED_DTYPE_WARNING)
@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric"])
def test_matches_quantize_per_channel(scheme):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(16, 500, generator=gen)
    qp = choose_qparams(x, spec_of(scheme=scheme, granularity="channel"))
    dtype = torch.qint8 if scheme == "symmetric" else torch.quint8
    ref = torch.quantize_per_channel(x, qp.scale.double(), qp.zero_point.long(), 0, dtype)
    ours = quantize(x, qp)
    differ = ours != ref.int_repr().int()
    assert not (differ & ~near_tie(x, qp.scale[:, None], qp.zero_point[:, None])).any()
    assert differ.sum() <= 5
    if scheme == "symmetric":
        assert not differ.any()


def _observer_cases():
    for bits in (4, 8):
        for scheme in ("asymmetric", "symmetric"):
            yield bits, scheme


@pytest.mark.filterwarnings(AO_WARNING)
@pytest.mark.parametrize("bits, scheme", list(_observer_cases()))
@pytest.mark.parametrize("shift", [0.0, 3.0, -3.0])  # mixed sign, all positive, all negative
def test_minmax_matches_minmax_observer(bits, scheme, shift):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(64, 48, generator=gen) + shift
    qmin, qmax = qrange(bits, scheme)
    dtype, qscheme = (
        (torch.qint8, torch.per_tensor_symmetric)
        if scheme == "symmetric"
        else (torch.quint8, torch.per_tensor_affine)
    )
    obs = MinMaxObserver(dtype=dtype, qscheme=qscheme, quant_min=qmin, quant_max=qmax)
    obs(x)
    ref_scale, ref_zp = obs.calculate_qparams()
    qp = choose_qparams(x, spec_of(bits=bits, scheme=scheme))
    assert torch.equal(qp.scale, ref_scale.reshape(()))
    assert torch.equal(qp.zero_point, ref_zp.int().reshape(()))

    qscheme = torch.per_channel_symmetric if scheme == "symmetric" else torch.per_channel_affine
    for axis in (0, 1):
        obs = PerChannelMinMaxObserver(
            ch_axis=axis, dtype=dtype, qscheme=qscheme, quant_min=qmin, quant_max=qmax
        )
        obs(x)
        ref_scale, ref_zp = obs.calculate_qparams()
        qp = choose_qparams(x, spec_of(bits=bits, scheme=scheme, granularity="channel", axis=axis))
        assert torch.equal(qp.scale, ref_scale)
        assert torch.equal(qp.zero_point, ref_zp.int())


# ------------------------------------------------------------------- properties (hypothesis)


@st.composite
def tensor_and_spec(draw):
    bits = draw(st.integers(2, 8))
    scheme = draw(st.sampled_from(["asymmetric", "symmetric"]))
    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    range_method = draw(st.sampled_from(["minmax", "minmax", "percentile", "mse"]))
    shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    kw = {}
    if granularity == "channel":
        kw["axis"] = draw(st.integers(-len(shape), len(shape) - 1))
    if granularity == "group":
        kw["group_size"] = draw(st.sampled_from([d for d in range(1, 7) if shape[-1] % d == 0]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    magnitude = draw(st.sampled_from([1e-6, 1.0, 1e4]))
    x = torch.randn(shape, generator=gen) * magnitude + draw(st.sampled_from([0.0, magnitude]))
    spec = QuantSpec(bits, scheme, granularity, range_method=range_method, **kw)
    return x, spec


def per_element(t, spec, shape):
    """Expand per-tensor / per-channel / per-group qparams to one value per element."""
    if spec.granularity == "tensor":
        return t.expand(shape)
    if spec.granularity == "channel":
        view = [1] * len(shape)
        view[spec.axis] = -1
        return t.reshape(view).expand(shape)
    return t.repeat_interleave(spec.group_size, dim=-1).reshape(shape)


@settings(max_examples=100, deadline=None)
@given(tensor_and_spec())
def test_properties(case):
    x, spec = case
    codes, qp = quantize_tensor(x, spec)
    qmin, qmax = qrange(spec.bits, spec.scheme)
    assert codes.dtype == torch.int32 and codes.shape == x.shape
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    assert not spec.scheme == "symmetric" or bool((qp.zero_point == 0).all())
    x_hat = dequantize(codes, qp)
    assert x_hat.dtype == torch.float32 and torch.isfinite(x_hat).all()
    # error at most scale / 2 wherever x is inside the representable range
    scale = per_element(qp.scale, spec, x.shape)
    zero_point = per_element(qp.zero_point, spec, x.shape)
    lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    inside = (x >= lo) & (x <= hi)
    error_ok = (x - x_hat).abs() <= scale / 2 + 1e-6 * (x.abs() + scale)
    assert error_ok[inside].all()
    if spec.range_method == "minmax":  # the grid covers [min, max] to within half a step
        assert error_ok.all()
    # fake quantization is idempotent with the same qparams
    assert torch.equal(fake_quantize(x_hat, qp), x_hat)
    assert torch.equal(fake_quantize(x, qp), x_hat)


@settings(max_examples=30, deadline=None)
@given(
    c=st.floats(1e-30, 1e30) | st.floats(-1e30, -1e-30) | st.just(0.0),
    bits=st.integers(2, 8),
    scheme=st.sampled_from(["asymmetric", "symmetric"]),
    range_method=st.sampled_from(["minmax", "percentile", "mse"]),
)
def test_constant_tensors_round_trip_exactly(c, bits, scheme, range_method):
    x = torch.full((3, 4), c)
    for gran, kw in [("tensor", {}), ("channel", {}), ("group", {"group_size": 2})]:
        spec = QuantSpec(bits, scheme, gran, range_method=range_method, **kw)
        codes, qp = quantize_tensor(x, spec)
        assert torch.isfinite(qp.scale).all()
        assert torch.equal(dequantize(codes, qp), x.float())


def test_constant_rows_inside_random_tensor_round_trip():
    x = torch.randn(4, 16)
    x[1] = 0.3  # torch's MinMaxObserver scale 0.3/255 would give 0.29999998 back
    x[2] = -7.1
    x[3] = 0.0
    for scheme in ("asymmetric", "symmetric"):
        qp = choose_qparams(x, spec_of(bits=4, scheme=scheme, granularity="channel"))
        assert torch.equal(fake_quantize(x, qp)[1:], x[1:])


def test_half_precision_input_matches_float32():
    x = torch.randn(8, 16).half()
    spec = spec_of(bits=4, granularity="channel")
    codes, qp = quantize_tensor(x, spec)
    ref_codes, ref_qp = quantize_tensor(x.float(), spec)
    assert torch.equal(codes, ref_codes) and torch.equal(qp.scale, ref_qp.scale)


@pytest.mark.parametrize("bits", [4, 5, 6, 7, 8])
def test_sqnr_of_uniform_data(bits):
    # Uniform data over the full grid: SQNR = 20 log10(2**b - 1), i.e. about 6.02 b dB
    x = torch.rand(100_000, generator=torch.Generator().manual_seed(bits)) * 2 - 1
    x_hat = fake_quantize(x, choose_qparams(x, spec_of(bits=bits)))
    measured = sqnr_db(x, x_hat)
    assert measured == pytest.approx(20 * math.log10(2**bits - 1), abs=0.1)
    assert measured == pytest.approx(6.02 * bits, abs=0.6)
