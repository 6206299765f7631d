"""Per-embedding-group scales: K=1 is plain static int8, K>=2 isolates an outlier channel."""

import pytest
import torch
from conftest import make_gpt
from torch import nn

from quantbook.methods import METHODS, quantize
from quantbook.methods.float_output import ChannelRange, StaticInt8Linear, input_qparams
from quantbook.methods.peg import PEGConfig, PEGLinear, peg_groups, quantize_peg


def outlier_layer() -> tuple[nn.Linear, torch.Tensor]:
    """A Linear and its input, whose channel 5 spans a range 100 times the others'."""
    torch.manual_seed(0)
    linear, x = nn.Linear(24, 8), torch.randn(256, 24)
    x[:, 5] *= 100.0
    return linear, x


def peg(linear: nn.Linear, x: torch.Tensor, groups: int) -> PEGLinear:
    """A PEGLinear calibrated on ``x`` itself."""
    found = ChannelRange(x.amin(0), x.amax(0))
    columns = peg_groups(found, groups)
    qparams = [input_qparams(found.min[c].min(), found.max[c].max()) for c in columns]
    return PEGLinear(linear, columns, qparams)


def test_groups_sort_channels_by_range_into_equal_sizes():
    found = ChannelRange(torch.tensor([0.0, -4.0, 0.0, -1.0]), torch.tensor([1.0, 5.0, 2.0, 2.0]))
    assert [c.tolist() for c in peg_groups(found, 2)] == [[0, 2], [1, 3]]
    assert [len(c) for c in peg_groups(ChannelRange(torch.zeros(7), torch.ones(7)), 3)] == [3, 2, 2]


def test_one_group_is_the_per_tensor_static_linear():
    linear, x = outlier_layer()
    scale, zero_point = input_qparams(x.min(), x.max())
    plain = StaticInt8Linear(linear, scale, zero_point)
    one = peg(linear, x, groups=1)
    assert (one.parts[0].scale, one.parts[0].zero_point) == (scale, zero_point)
    assert torch.equal(one.parts[0].weight_bias()[0].int_repr(), plain.weight_bias()[0].int_repr())
    assert torch.equal(one(x), plain(x))


def test_groups_share_the_whole_linears_weight_codes():
    linear, x = outlier_layer()
    plain = StaticInt8Linear(linear, *input_qparams(x.min(), x.max()))
    codes = plain.weight_bias()[0].int_repr()  # (out, in)
    three = peg(linear, x, groups=3)
    for g, part in enumerate(three.parts):
        columns = getattr(three, f"columns_{g}")
        assert torch.equal(part.weight_bias()[0].int_repr(), codes[:, columns])
    assert three.parts[0].weight_bias()[1] is not None and three.parts[1].weight_bias()[1] is None


def test_groups_isolate_an_outlier_channel():
    linear, x = outlier_layer()
    reference = linear(x).detach()

    def error(groups: int) -> float:  # mean squared error relative to the output's power
        got = peg(linear, x, groups)(x)
        return float((got - reference).pow(2).mean() / reference.pow(2).mean())

    errors = [error(k) for k in (1, 2, 4, 8)]
    assert errors[0] > 2e-3  # one range 100 times the others' leaves them a coarse grid
    assert errors == sorted(errors, reverse=True) and errors[1] < 0.6 * errors[0]
    assert errors[3] < errors[0] / 4  # the coarse grid shrinks to the outlier's group
    last = peg(linear, x, groups=2).columns_1.tolist()
    assert 5 in last and len(last) == 12  # the wide channel in the last, equal-size group


@pytest.mark.parametrize("groups", [0, -1, 2.5, True, "3"])
def test_bad_groups_are_refused(groups):
    with pytest.raises(ValueError, match=f"n_groups={groups!r} is not supported: choose a whole"):
        PEGConfig(n_groups=groups)


def test_more_groups_than_input_columns_is_refused(gpt, batches):
    with pytest.raises(ValueError, match=r"n_groups=33 exceeds the in_features of .* \(32\): "
                                         "choose n_groups of at most 32"):
        quantize_peg(gpt, PEGConfig(n_groups=33), batches)


def test_quantize_peg_has_the_method_shape(gpt, batches):
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    quantized, report = quantize(gpt, PEGConfig(n_groups=2), batches)
    assert METHODS[PEGConfig] == (quantize_peg, True)
    assert len(report.converted) == 2 * 6 and report.label == "PEG (2 groups), static int8"
    assert all(type(quantized.get_submodule(n)) is PEGLinear for n in report.converted)
    assert not any(type(m) is nn.Linear for m in quantized.blocks.modules())
    assert not quantized.training
    assert type(gpt.blocks[0].mlp.fc_in) is nn.Linear  # the input model is untouched
    assert all(torch.equal(v, before[k]) for k, v in gpt.state_dict().items())
    with torch.no_grad():
        ref, got = gpt(batches[0])[0], quantized(batches[0])[0]
    assert float(nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0)) > 0.99


def test_bad_calls_are_refused(gpt, batches):
    from quantbook.methods.float_output import FloatOutputConfig

    with pytest.raises(TypeError, match="expected a PEGConfig"):
        quantize_peg(gpt, FloatOutputConfig(), batches)
    with pytest.raises(ValueError, match="batches is empty"):
        quantize_peg(gpt, PEGConfig(), [])
    with pytest.raises(ValueError, match="calibrates on data: pass batches"):
        quantize(gpt, PEGConfig())
    with pytest.raises(ValueError, match="already quantized"):
        quantized, _ = quantize_peg(make_gpt(), PEGConfig(), batches)
        quantize_peg(quantized, PEGConfig(), batches)


def test_layer_sqnr_grows_with_the_groups():
    from quantbook.explore_outliers import peg_layer_sqnr

    linear, x = outlier_layer()
    sqnr = peg_layer_sqnr(x, linear, (1, 2, 8))
    assert sqnr[1] < sqnr[2] < sqnr[8] and sqnr[8] > sqnr[1] + 6
