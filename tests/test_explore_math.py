"""Tests for quantbook.explore_math against hand-computed values, PyTorch's fake quantization and
the signal-processing results the chapter quotes (6.02 dB per bit, +1.76 dB for a sine)."""

import math

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from quantbook import affine  # noqa: E402
from quantbook import explore_math as em  # noqa: E402

pytestmark = pytest.mark.usefixtures("draft_figures")  # structure, not pixels


def gaussian(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def qparams_of(scale, zero_point, spec):
    qmin, qmax = affine.qrange(spec.bits, spec.scheme)
    return affine.QParams(torch.tensor(scale, dtype=torch.float32),
                          torch.tensor(zero_point, dtype=torch.int32), spec, qmin, qmax)


# ----------------------------------------------------------------------------- weights, specs


def test_weight_matrices_copies_the_named_parameters():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    got = em.weight_matrices(model, ["1.weight", "0.weight"])
    assert list(got) == ["1.weight", "0.weight"]
    assert torch.equal(got["0.weight"], model[0].weight.detach())
    assert not got["0.weight"].requires_grad
    got["0.weight"].zero_()  # a copy: the model is untouched
    assert model[0].weight.abs().sum() > 0


def test_weight_matrices_names_the_missing_parameter():
    with pytest.raises(ValueError, match=r"names=\['2.weight'\] are not parameters of the model"):
        em.weight_matrices(nn.Sequential(nn.Linear(4, 3)), ["2.weight"])


def test_make_spec_passes_group_size_only_for_groups():
    assert em.make_spec(4, "symmetric", "channel").group_size is None
    assert em.make_spec(4, "symmetric", "group", group_size=16).group_size == 16
    assert em.make_spec(8, "asymmetric", "tensor", range_method="mse").range_method == "mse"


# ----------------------------------------------------------------------------- error model


def test_predicted_sqnr_hand_computed():
    spec = em.make_spec(8, "symmetric", "tensor")
    x = torch.tensor([1.0, -1.0, 1.0, -1.0])  # mean square 1
    expected = 10 * math.log10(1 / (0.1**2 / 12))  # 30.79 dB
    assert em.predicted_sqnr_db(x, qparams_of(0.1, 0, spec)) == pytest.approx(expected, rel=1e-6)


def test_predicted_sqnr_averages_the_squared_scales():
    spec = em.make_spec(8, "symmetric", "channel")
    x = torch.ones(2, 3)
    qp = affine.QParams(torch.tensor([0.1, 0.2]), torch.zeros(2, dtype=torch.int32), spec, -128,
                        127)
    noise = (0.1**2 + 0.2**2) / 2 / 12
    assert em.predicted_sqnr_db(x, qp) == pytest.approx(10 * math.log10(1 / noise), rel=1e-6)


def test_predicted_sqnr_rejects_clipped_ranges():
    spec = em.make_spec(8, "symmetric", "tensor", range_method="percentile")
    with pytest.raises(ValueError, match=r"range_method='percentile' clips values.*'minmax'"):
        em.predicted_sqnr_db(torch.ones(3), qparams_of(0.1, 0, spec))
    assert math.isnan(em.quant_error(gaussian(64), spec).predicted_sqnr_db)


def test_uniform_data_gets_six_db_per_bit():
    x = torch.rand(200_000, generator=torch.Generator().manual_seed(1)) * 2 - 1  # U(-1, 1)
    for bits in (6, 8):
        error = em.quant_error(x, em.make_spec(bits, "symmetric", "tensor"))
        theory = bits * em.DB_PER_BIT + em.offset_db(math.sqrt(3), bits)
        assert error.sqnr_db == pytest.approx(theory, abs=0.1)
        # the same model in closed form, with this sample's own peak-to-rms ratio
        peak_to_rms = float(x.abs().max() / x.pow(2).mean().sqrt())
        closed_form = bits * em.DB_PER_BIT + em.offset_db(peak_to_rms, bits)
        assert error.predicted_sqnr_db == pytest.approx(closed_form, abs=1e-4)
    assert em.offset_db(math.sqrt(3), 8) == pytest.approx(20 * math.log10(255 / 256))


def test_full_scale_sine_gets_the_textbook_1_76_db():
    t = torch.arange(100_000, dtype=torch.float64)
    sine = torch.sin(2 * math.pi * t / 997.3).float()  # not commensurate with the grid
    measured = em.quant_error(sine, em.make_spec(8, "symmetric", "tensor")).sqnr_db
    # 0.14 dB short: a sine lingers near its peaks, so the outermost bins hold more than their
    # share of values, with errors near half a step, which the uniform-noise model ignores
    assert measured == pytest.approx(6.02 * 8 + 1.76, abs=0.2)
    level_correction = 20 * math.log10(1 - 2.0**-8)  # 2**b - 1 steps, not 2**b
    assert em.offset_db(math.sqrt(2), 8) - level_correction == pytest.approx(1.7609, abs=1e-4)


def test_offset_db_errors():
    with pytest.raises(ValueError, match=r"peak_to_rms=0.5 must be >= 1"):
        em.offset_db(0.5, 8)
    with pytest.raises(ValueError, match=r"bits=9 is not supported"):
        em.offset_db(2.0, 9)


def test_quant_error_matches_torch_fake_quantization():
    x = gaussian(64, 48)
    spec = em.make_spec(8, "asymmetric", "channel")
    qp = affine.choose_qparams(x, spec)
    reference = torch.fake_quantize_per_channel_affine(x, qp.scale, qp.zero_point, 0, 0, 255)
    noise = (x.double() - reference.double()).pow(2).sum()
    error = em.quant_error(x, spec)
    assert error.sqnr_db == pytest.approx(float(10 * torch.log10(x.double().pow(2).sum() / noise)))
    assert error.max_abs_error == pytest.approx(float((x - reference).abs().max()))


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(2, 8), scheme=st.sampled_from(affine.SCHEMES),
       granularity=st.sampled_from(affine.GRANULARITIES), seed=st.integers(0, 2**16))
def test_minmax_error_is_at_most_half_a_step(bits, scheme, granularity, seed):
    x = gaussian(8, 32, seed=seed)
    spec = em.make_spec(bits, scheme, granularity, group_size=16)
    error = em.quant_error(x, spec)
    largest_step = float(affine.choose_qparams(x, spec).scale.max())
    # float32 rounding of x / scale and of the dequantized value adds a few ulps of |x|
    ulps = 4 * torch.finfo(torch.float32).eps * float(x.abs().max())
    assert error.max_abs_error <= largest_step / 2 + ulps


def test_error_sweep_rises_with_bits_and_fits_six_db_per_bit():
    x = gaussian(256, 64)
    errors = em.error_sweep(x, "symmetric", "channel")
    sqnr = [e.sqnr_db for e in errors]
    assert len(errors) == len(em.BITS) and sqnr == sorted(sqnr)
    slope, _ = em.fit_db_per_bit(em.BITS[3:], sqnr[3:])
    assert slope == pytest.approx(6.1, abs=0.2)


def test_fit_db_per_bit_hand_computed_and_errors():
    assert em.fit_db_per_bit([4, 8], [20.0, 44.0]) == pytest.approx((6.0, -4.0))
    assert em.fit_db_per_bit([2, 3, 4], [1.0, 7.0, 13.0]) == pytest.approx((6.0, -11.0))
    with pytest.raises(ValueError, match=r"at least two distinct bit widths.*bits=\[4, 4\]"):
        em.fit_db_per_bit([4, 4], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"one SQNR per bit width.*and 1 SQNR values"):
        em.fit_db_per_bit([4, 5], [1.0])


# ----------------------------------------------------------------------------- grid and plots


def with_outlier():
    x = gaussian(16, 64) * 0.05
    x[5, 37] = 2.0  # the largest |x|: row 5, group 1 of 32
    return x


@pytest.mark.parametrize(
    "granularity, numel, label",
    [("tensor", 16 * 64, "whole matrix"), ("channel", 64, "row 5"),
     ("group", 32, "row 5, columns 32..63")],
)
def test_grid_slice_picks_the_slice_of_the_largest_value(granularity, numel, label):
    x = with_outlier()
    spec = em.make_spec(4, "asymmetric", granularity)
    qp = affine.choose_qparams(x, spec)
    values, levels, got_label = em.grid_slice(x, qp)
    assert values.numel() == numel and got_label == label
    assert bool((values == 2.0).any())
    steps = levels.diff()
    assert len(levels) == 16 and torch.allclose(steps, steps[0].expand_as(steps))
    assert bool((levels == 0).any())  # zero is a level exactly
    half = steps[0] / 2  # the zero point is rounded, so the ends may move by half a step
    assert levels.min() <= values.min() + half and values.max() <= levels.max() + half


def test_grid_slice_needs_a_2d_weight_with_channels_first():
    x = gaussian(4, 8)
    with pytest.raises(ValueError, match=r"needs a 2-D weight with channels on axis 0.*axis=1"):
        em.grid_slice(x, affine.choose_qparams(x, affine.QuantSpec(granularity="channel", axis=1)))
    with pytest.raises(ValueError, match=r"x has shape \(32,\)"):
        em.grid_slice(gaussian(32), affine.choose_qparams(gaussian(32), affine.QuantSpec()))


def test_plot_grid_draws_every_level_and_counts_those_near_the_mean():
    x = with_outlier()
    fig, error = em.plot_grid(x, em.make_spec(4, "symmetric", "tensor"), "w")
    ax = fig.axes[0]
    lines = ax.collections[0]
    assert len(lines.get_segments()) == 16
    levels = em.grid_slice(x, affine.choose_qparams(x, em.make_spec(4, "symmetric", "tensor")))[1]
    inside = int(((levels - x.mean()).abs() <= 2 * x.std()).sum())
    assert f"{inside} of 16 levels within ±2σ" in ax.get_title()
    assert f"SQNR {error.sqnr_db:.1f} dB" in ax.get_title()
    plt.close(fig)


def test_plot_sqnr_vs_bits_and_plot_ranges_draw_what_they_are_given():
    fig = em.plot_sqnr_vs_bits({"a": [1, 2, 3], "b": [2, 3, 4]}, "t", predicted={"a": [1, 2, 3]},
                               bits=[2, 3, 4])
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels.count("a") == 1 and "uniform-noise model" in labels and len(labels) == 4
    plt.close(fig)
    fig = em.plot_ranges(gaussian(500), {"min-max": (-3.0, 3.0), "clip": (-1.0, 1.0)}, "t")
    assert sorted(line.get_xdata()[0] for line in fig.axes[0].get_lines()) == [-3, -1, 1, 3]
    plt.close(fig)


# ----------------------------------------------------------------------------- explorers


def test_explorer_recomputes_on_every_control():
    matrices = {"a": with_outlier(), "b": gaussian(8, 32, seed=3)}
    box = em.explorer(matrices, bits=4, scheme="symmetric", granularity="tensor")
    (matrix, bits), (scheme, granularity) = box.children[0].children, box.children[1].children
    assert box.children[2] is box.image and isinstance(box.image, widgets.Image)
    assert box.image.tooltip.startswith(em.GRID_WHAT) and "4-bit symmetric per tensor" in \
        box.image.tooltip
    assert (bits.min, bits.max, list(scheme.options)) == (2, 8, ["symmetric", "asymmetric"])
    assert box.error == em.quant_error(matrices["a"], em.make_spec(4, "symmetric", "tensor"))
    bits.value = 6
    granularity.value = "group"
    scheme.value = "asymmetric"
    matrix.value = "b"
    spec = em.make_spec(6, "asymmetric", "group")
    assert box.error == em.quant_error(matrices["b"], spec)
    assert "6-bit asymmetric per group" in box.image.tooltip
    assert not plt.get_fignums()  # every figure was closed after display


def test_explorer_needs_matrices():
    with pytest.raises(ValueError, match=r"matrices is empty"):
        em.explorer({})
    with pytest.raises(ValueError, match=r"matrix='c' is not a key of matrices: choose one of "
                                         r"\['a'\]"):
        em.explorer({"a": gaussian(8, 32)}, matrix="c")


def test_explorer_starts_at_the_chosen_matrix():
    box = em.explorer({"a": with_outlier(), "b": gaussian(8, 32, seed=3)}, bits=3, matrix="b")
    assert box.children[0].children[0].value == "b"
    assert box.error == em.quant_error(gaussian(8, 32, seed=3), em.make_spec(3, "symmetric",
                                                                           "tensor"))


def test_static_explorer_has_one_precomputed_view_per_bit_width():
    box = em.static_explorer(with_outlier(), "w", "symmetric", "channel", bits=[2, 5])
    slider, stack = box.children
    assert list(slider.options) == ["2 bits", "5 bits"]
    assert len(stack.children) == 2 and all(isinstance(v, widgets.Image) for v in stack.children)
    assert all(bytes(v.value).startswith(b"\x89PNG") for v in stack.children)
    assert (slider.value, stack.selected_index) == ("2 bits", 0)
    assert [v.tooltip.split(": ")[0] for v in stack.children] == [em.GRID_WHAT + ". 2-bit "
                                                                   "symmetric per channel",
                                                                   em.GRID_WHAT + ". 5-bit "
                                                                   "symmetric per channel"]


def test_static_explorer_starts_at_the_chosen_bit_width():
    box = em.static_explorer(with_outlier(), "w", "symmetric", "tensor", bits=[2, 4, 8],
                             start_bits=4)
    slider, stack = box.children
    assert (slider.value, stack.selected_index) == ("4 bits", 1)
    descending = em.static_explorer(with_outlier(), "w", "symmetric", "tensor", bits=[8, 4, 2],
                                    start_bits=4)
    assert list(descending.children[0].options) == ["2 bits", "4 bits", "8 bits"]  # ascending
    assert descending.children[0].value == "4 bits"
    with pytest.raises(ValueError, match=r"start_bits=3 is not one of bits=\[2, 4, 8\]"):
        em.static_explorer(with_outlier(), "w", "symmetric", "tensor", bits=[2, 4, 8],
                           start_bits=3)
