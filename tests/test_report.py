"""Tests for quantbook.methods.report: the report text, the no-op guard, the float-module list."""

import pytest
from torch import nn

from quantbook.methods.report import QuantReport, float_leaf_modules, require_converted


def test_summary_counts_and_abbreviates_names():
    report = QuantReport(
        method="weight-only int4 group32",
        converted=tuple(f"layer.{i}" for i in range(6)),
        skipped=(("conv", "Conv2d is not nn.Linear or nn.Embedding"),),
        float_modules=("ln",),
    )
    assert report.summary(max_names=2).splitlines() == [
        "weight-only int4 group32: 6 modules converted",
        "  converted: layer.0, layer.1, ... (+4 more)",
        "  skipped (1): conv (Conv2d is not nn.Linear or nn.Embedding)",
        "  float (1): ln",
    ]


def test_summary_of_an_empty_report_has_one_line():
    assert QuantReport("m", converted=()).summary() == "m: 0 modules converted"


def test_report_is_frozen():
    report = QuantReport("m", converted=("a",))
    with pytest.raises(AttributeError):
        report.method = "other"


def test_require_converted_raises_on_nothing_and_names_targets():
    with pytest.raises(ValueError, match=r"int4 converted no module for targets=\('ffn',\).*"
                                         r"list_targets\(model\)"):
        require_converted([], method="int4", targets=["ffn"])
    with pytest.raises(ValueError, match="converted no module"):
        require_converted(iter(()), method="int4", targets=("ffn",))  # any iterable
    require_converted(["fc"], method="int4", targets=("ffn",))  # no error


def test_float_leaf_modules_lists_direct_parameter_owners():
    class WithTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(nn.init.zeros_(nn.Linear(2, 2).weight))
            self.body = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.LayerNorm(2))

    model = WithTable()
    assert float_leaf_modules(model, exclude=()) == ("", "body.0", "body.2")
    assert float_leaf_modules(model, exclude=["body.0"]) == ("", "body.2")
